"""The LLM auto-responder (fact sheet §7.3): answer a caller's final utterance and speak the reply."""

from __future__ import annotations

import logging
import time
from typing import Any

from django.db import transaction
from django.utils import timezone

from calls.config import VoiceCallConfig, get_config
from calls.models import (
    Call,
    Direction,
    Mode,
    Speaker,
    TranscriptEntry,
)
from calls.services.effects import Effect, after_commit
from calls.services.records import find_call
from calls.services.turns import speak_now

logger = logging.getLogger(__name__)


def responder_settings(config: VoiceCallConfig, call: Call) -> dict[str, Any] | None:
    """Model, prompt and timeout for this call, or None when no auto-responder is configured.

    The responder answers inbound callers and outbound conversation calls, and only when a
    ``responseModel`` is configured (globally or on the dialed number's route): without a model
    there is nobody to answer, and a caller should not hear an error fallback on every turn.
    """
    if call.direction != Direction.INBOUND and call.mode != Mode.CONVERSATION:
        return None
    route = config.number_route(call.to_number) if call.direction == Direction.INBOUND else None
    model = (route.response_model if route else None) or config.response_model
    if not model:
        return None
    return {
        "model": model,
        "system_prompt": (route.response_system_prompt if route else None) or config.response_system_prompt,
        "timeout_ms": (route.response_timeout_ms if route else None) or config.response_timeout_ms,
    }


def queue_auto_reply(config: VoiceCallConfig, call: Call, entry: TranscriptEntry) -> None:
    if responder_settings(config, call) is None:
        return
    after_commit(Effect.GENERATE_REPLY, str(call.id), entry.id)


def _newest_user_entry_id(call_id: str) -> int | None:
    return (
        TranscriptEntry.objects.filter(call_id=call_id, speaker=Speaker.USER, is_final=True)
        .order_by("-id")
        .values_list("id", flat=True)
        .first()
    )


REPLIED_TO_KEY = "autoReplyTo"  # call metadata: the newest caller line a reply was spoken for


def _claim_reply(call_id: str, user_entry_id: int) -> bool:
    """Claim the right to speak the reply to ``user_entry_id``, once: a redelivered task (acks-late
    after a worker died) finds the claim and stays silent, so the caller never hears a reply twice."""
    with transaction.atomic():
        locked = Call.objects.select_for_update().get(id=call_id)
        if locked.is_terminal or int((locked.metadata or {}).get(REPLIED_TO_KEY) or 0) >= user_entry_id:
            return False
        locked.metadata = {**(locked.metadata or {}), REPLIED_TO_KEY: user_entry_id}
        locked.save(update_fields=["metadata", "updated_at"])
    return True


def generate_reply(call_id: str, user_entry_id: int) -> str | None:
    """Answer one caller utterance with the model and speak it; returns what was spoken.

    A newer caller utterance supersedes this one: the reply is dropped if, when it is ready, the
    utterance it answers is no longer the newest (only the newest reply is spoken). A model timeout
    or error speaks the configured short fallback and keeps the call going; the error is kept on the
    call (``last_error`` and ``metadata.lastResponderError``) so admin shows it.
    """
    from providers.llm import ChatResponder, ResponderError, Turn, build_messages, extract_spoken

    config = get_config()
    call = find_call(call_id)
    if call is None or call.is_terminal:
        return None
    settings_ = responder_settings(config, call)
    entry = TranscriptEntry.objects.filter(id=user_entry_id, call_id=call.id).first()
    if settings_ is None or entry is None or _newest_user_entry_id(call_id) != user_entry_id:
        return None
    history = [Turn(e.speaker, e.text) for e in call.transcript.filter(id__lt=user_entry_id, is_final=True)]
    responder = ChatResponder(base_url=config.responder.base_url, api_key=config.responder.api_key,
                              model=settings_["model"], timeout_ms=settings_["timeout_ms"])
    messages = build_messages(history=history, utterance=entry.text, caller=call.from_number
                              if call.direction == Direction.INBOUND else call.to_number,
                              system_prompt=settings_["system_prompt"])
    started = time.monotonic()
    error = None
    try:
        spoken = extract_spoken(responder.reply(messages))
    except ResponderError as exc:
        error = str(exc)
        spoken = config.responder.fallback_message
    except Exception as exc:  # a client or library bug must cost the caller one fallback, not the call
        logger.exception("auto-responder for call %s failed unexpectedly", call_id)
        error = f"responder failed: {type(exc).__name__}"
        spoken = config.responder.fallback_message
    llm_ms = int((time.monotonic() - started) * 1000)
    if _newest_user_entry_id(call_id) != user_entry_id:
        logger.info("reply for call %s dropped: the caller spoke again", call_id)
        return None
    if error:
        with transaction.atomic():
            locked = Call.objects.select_for_update().get(id=call.id)
            locked.last_error = f"auto-responder: {error}"[:2000]
            locked.metadata = {**locked.metadata, "lastResponderError": error}
            locked.save(update_fields=["last_error", "metadata", "updated_at"])
        logger.warning("auto-responder for call %s failed: %s", call_id, error)
    if not spoken:
        return None
    if not _claim_reply(call_id, user_entry_id):
        logger.info("reply for call %s to line %s already spoken (task redelivered)", call_id, user_entry_id)
        return None
    call.refresh_from_db()
    spoken_entry_id = speak_now(call, spoken, listen_after=True, turn_token=None)
    total_ms = int((timezone.now() - entry.timestamp).total_seconds() * 1000)
    with transaction.atomic():
        locked = Call.objects.select_for_update().get(id=call.id)
        if spoken_entry_id is not None:
            TranscriptEntry.objects.filter(id=spoken_entry_id, call_id=call.id).update(latency_ms=total_ms)
        metadata = dict(locked.metadata or {})
        replies = metadata.get("replyLatencies", [])[-49:]
        replies.append({"llmMs": llm_ms, "totalMs": total_ms, "fallback": bool(error)})
        metadata["replyLatencies"] = replies
        locked.metadata = metadata
        locked.save(update_fields=["metadata", "updated_at"])
    return spoken
