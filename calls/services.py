"""The one place that changes a call.

Every interface — webhook views, the media-stream consumer, Celery tasks, the CLI, the JSON-RPC
endpoint, the agent tool and admin actions — calls these functions. They own transactions and state
changes; providers only translate wire formats (OpenClaw fact sheet §2, §8).

Carrier REST requests never run inside a transaction or on the webhook path: services decide, commit,
and hand the outside work to Celery with ``transaction.on_commit``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from calls.config import VoiceCallConfig, get_config
from calls.models import (
    AllowedCaller,
    Call,
    CallEvent,
    Direction,
    Mode,
    RejectedInboundCall,
    Speaker,
    TranscriptEntry,
    WebhookReceipt,
)
from calls.notify import call_update_waiter, publish_call_update
from calls.state import CONNECTED_STATES, END_REASONS, CallState, next_state
from providers import get_provider
from providers.base import (
    CallSnapshot,
    EventType,
    NormalizedEvent,
    OutboundCallRequest,
    Provider,
    ProviderError,
    WebhookParseError,
    WebhookReply,
)

logger = logging.getLogger(__name__)

# Messages are part of the interface (CLI, RPC and tool return them verbatim; tests reuse them).
CALL_NOT_FOUND = "Call not found"
CALL_NOT_CONNECTED = "Call not connected"
CALL_HAS_ENDED = "Call has ended"
MAX_CONCURRENT_CALLS = "Maximum concurrent calls ({limit}) reached"
TO_REQUIRED = "to required"
MESSAGE_REQUIRED = "message required"
INVALID_NUMBER = "{field} must be an E.164 number like +15551234567"
FROM_NOT_CONFIGURED = "fromNumber not configured"
INVALID_MODE = "mode must be notify or conversation"
ALREADY_WAITING = "Already waiting for transcript"
TRANSCRIPT_TIMEOUT = "Timed out waiting for transcript after {ms}ms"
CALL_ENDED_WHILE_WAITING = "Call ended: {reason}"
INVALID_DIGITS = "digits may only contain digits, *, #, comma, w, p"
DIGITS_REQUIRED = "digits required"
PLACEMENT_INTERRUPTED = "placement was interrupted after dialing began; not redialed to avoid a duplicate call"

DEFAULT_INBOUND_GREETING = "Hello! How can I help you today?"
MOCK_DEFAULT_FROM = "+15550000000"
E164 = re.compile(r"^\+[1-9]\d{1,14}$")
DTMF_DIGITS = re.compile(r"^[0-9*#wWpP,]+$")
# A notify call whose message was delivered ends normally: "completed", as the carrier reports when
# its own TwiML hangs up. An operator's or agent's explicit end is "hangup-bot".
NOTIFY_END_REASON = CallState.COMPLETED.value
RECEIPT_RETENTION = timedelta(hours=24)
END_REQUESTED_KEY = "endRequested"  # metadata: the reason of a hang-up we asked the carrier for


class ServiceError(Exception):
    """A request that cannot be carried out; ``str(err)`` is the message shown to the caller."""


# ------------------------------------------------------------------------------------------------
# Snapshots and serialisation
# ------------------------------------------------------------------------------------------------


def snapshot(call: Call, config: VoiceCallConfig | None = None) -> CallSnapshot:
    config = config or get_config()
    return CallSnapshot(
        call_id=str(call.id),
        provider=call.provider,
        provider_call_id=call.provider_call_id,
        direction=call.direction,
        state=call.state,
        mode=call.mode,
        from_number=call.from_number,
        to_number=call.to_number,
        initial_message=None if call.initial_message_delivered else (call.initial_message or None),
        pending_turn_token=call.pending_turn_token or None,
        is_terminal=call.is_terminal,
        webhook_url=config.webhook_url(),
        metadata=dict(call.metadata or {}),
    )


def _ms(dt) -> int | None:
    return int(dt.timestamp() * 1000) if dt else None


def call_to_dict(call: Call) -> dict[str, Any]:
    """The status ``call`` object (fact sheet §8.7) with the transcript."""
    return {
        "callId": str(call.id),
        "providerCallId": call.provider_call_id,
        "provider": call.provider,
        "direction": call.direction,
        "state": call.state,
        "mode": call.mode,
        "from": call.from_number,
        "to": call.to_number,
        "startedAt": _ms(call.started_at),
        "answeredAt": _ms(call.answered_at),
        "endedAt": _ms(call.ended_at),
        "endReason": call.end_reason or None,
        "lastError": call.last_error or None,
        "metadata": call.metadata or {},
        "transcript": [
            {
                "speaker": entry.speaker,
                "text": entry.text,
                "timestamp": _ms(entry.timestamp),
                "isFinal": entry.is_final,
            }
            for entry in call.transcript.all()
        ],
    }


def find_call(call_id: str) -> Call | None:
    if not call_id:
        return None
    return Call.objects.by_any_id(str(call_id).strip()).first()


def _require_call(call_id: str) -> Call:
    call = find_call(call_id)
    if call is None:
        raise ServiceError(CALL_NOT_FOUND)
    return call


def _require_connected(call: Call) -> None:
    if call.is_terminal:
        raise ServiceError(CALL_HAS_ENDED)
    if not call.provider_call_id or call.state not in {s.value for s in CONNECTED_STATES}:
        raise ServiceError(CALL_NOT_CONNECTED)


# ------------------------------------------------------------------------------------------------
# Outbound calls
# ------------------------------------------------------------------------------------------------


def _capacity_lock() -> None:
    """Serialise the concurrency check across processes (SQLite transactions are IMMEDIATE already)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [0x766F6963])  # "voic"


def initiate_call(*, to: str | None, message: str | None, mode: str | None = None) -> Call:
    """Persist a new outbound call (state ``initiated``) and queue its placement (fact sheet §8.1)."""
    config = get_config()
    to = (to or "").strip() or (config.to_number or "")
    if not to:
        raise ServiceError(TO_REQUIRED)
    if not E164.match(to):
        raise ServiceError(INVALID_NUMBER.format(field="to"))
    mode = (mode or "").strip() or config.outbound.default_mode
    if mode not in Mode.values:
        raise ServiceError(INVALID_MODE)
    from_number = config.from_number or (MOCK_DEFAULT_FROM if config.provider == "mock" else "")
    if not from_number:
        raise ServiceError(FROM_NOT_CONFIGURED)
    message = (message or "").strip()

    with transaction.atomic():
        _capacity_lock()
        live = Call.objects.live().count()
        if live >= config.max_concurrent_calls:
            raise ServiceError(MAX_CONCURRENT_CALLS.format(limit=config.max_concurrent_calls))
        call = Call.objects.create(
            provider=config.provider,
            direction=Direction.OUTBOUND,
            mode=mode,
            from_number=from_number,
            to_number=to,
            initial_message=message,
            metadata={"mode": mode},
        )
        from calls import tasks

        call_id = str(call.id)
        transaction.on_commit(lambda: tasks.place_call.delay(call_id))
        transaction.on_commit(lambda: publish_call_update(call_id))
    logger.info("call %s to %s queued (%s)", call.id, to, mode)
    return call


def place_call(call_id: str) -> str:
    """Dial a queued call at the carrier, at most once (the ``place_call`` task body).

    A dial "claim" is committed before the carrier request. If a worker dies between the request and
    storing the carrier's id, redelivery finds the claim and marks the call failed instead of dialing
    again: a duplicate real phone call is worse than a failed one. Returns what happened.
    """
    config = get_config()
    with transaction.atomic():
        call = Call.objects.select_for_update().filter(id=call_id).first()
        if call is None:
            return "missing"
        if call.provider_call_id or call.is_terminal:
            return "already-placed" if call.provider_call_id else "ended"
        if call.metadata.get("dialClaimedAt"):
            _finalize(call, CallState.FAILED.value, error=PLACEMENT_INTERRUPTED)
            return "interrupted"
        call.metadata = {**call.metadata, "dialClaimedAt": _ms(timezone.now())}
        call.save(update_fields=["metadata", "updated_at"])

    provider = get_provider(config)
    request = OutboundCallRequest(
        call_id=str(call.id),
        to_number=call.to_number,
        from_number=call.from_number,
        mode=call.mode,
        initial_message=call.initial_message or None,
        webhook_url=config.webhook_url(),
        ring_timeout_seconds=max(1, config.ring_timeout_ms // 1000),
        notify_hangup_delay_seconds=config.outbound.notify_hangup_delay_sec,
        voice=voice_hint(config),
    )
    try:
        placed = provider.initiate_call(request)
    except ProviderError as exc:
        if exc.retryable:
            # The carrier said no (or never answered): nothing was dialed, so a retry may dial.
            with transaction.atomic():
                locked = Call.objects.select_for_update().get(id=call.id)
                metadata = dict(locked.metadata)
                metadata.pop("dialClaimedAt", None)
                metadata["dialAttempts"] = metadata.get("dialAttempts", 0) + 1
                locked.metadata = metadata
                locked.last_error = str(exc)
                locked.save(update_fields=["metadata", "last_error", "updated_at"])
            raise
        fail_call(str(call.id), str(exc))
        return "failed"

    hang_up_now = False
    with transaction.atomic():
        locked = Call.objects.select_for_update().get(id=call.id)
        # A carrier callback may have beaten the REST response and already stored the final id
        # (Plivo: CallUUID arriving before we stored the provisional RequestUUID): keep it.
        if not locked.provider_call_id:
            locked.provider_call_id = placed.provider_call_id
        locked.last_error = ""
        locked.save(update_fields=["provider_call_id", "last_error", "updated_at"])
        # Ended (e.g. by the operator) while the carrier request was in flight: hang the new leg up.
        hang_up_now = locked.is_terminal
    publish_call_update(str(call.id))
    if hang_up_now:
        _safe_hangup(provider, snapshot(locked, config))
    logger.info("call %s placed as %s", call.id, placed.provider_call_id)
    return "placed"


def fail_call(call_id: str, error: str) -> None:
    """Mark a call failed with the carrier's error (placement retries exhausted, bad number...)."""
    with transaction.atomic():
        call = Call.objects.select_for_update().filter(id=call_id).first()
        if call is None or call.is_terminal:
            return
        _finalize(call, CallState.FAILED.value, error=error)
    logger.warning("call %s failed: %s", call_id, error)


def voice_hint(config: VoiceCallConfig) -> str | None:
    """The configured TTS voice, passed to carriers' native speech (fact sheet §6.1)."""
    tts = config.effective_tts() or {}
    provider_name = tts.get("provider") or "openai"
    provider_cfg = (tts.get("providers") or {}).get(provider_name) or tts.get(provider_name) or {}
    if isinstance(provider_cfg, dict):
        return provider_cfg.get("voice") or provider_cfg.get("voiceId")
    return None


# ------------------------------------------------------------------------------------------------
# Events from carriers
# ------------------------------------------------------------------------------------------------


@dataclass
class EventOutcome:
    duplicate: bool = False
    ignored: bool = False
    rejected: bool = False
    call: Call | None = None
    user_transcript: str | None = None
    consumed_by_turn: bool = False


def inbound_allowed(from_number: str | None, config: VoiceCallConfig | None = None) -> bool:
    """Inbound policy (fact sheet §7.1): digits-only exact match; anonymous callers never match."""
    config = config or get_config()
    policy = config.inbound_policy
    if policy == "open":
        return True
    if policy not in ("allowlist", "pairing"):
        return False
    caller = re.sub(r"\D", "", from_number or "")
    if not caller:
        return False
    allowed = {re.sub(r"\D", "", n) for n in config.allow_from}
    allowed |= {re.sub(r"\D", "", n) for n in AllowedCaller.objects.filter(enabled=True).values_list("number", flat=True)}
    allowed.discard("")
    return caller in allowed


def _find_call_for_event(provider_name: str, event: NormalizedEvent) -> Call | None:
    if event.call_id:
        try:
            call = Call.objects.select_for_update().filter(id=uuid.UUID(event.call_id)).first()
        except ValueError:
            call = None
        if call is not None:
            return call
    for provider_call_id in (event.provider_call_id, event.previous_provider_call_id):
        if provider_call_id:
            call = (
                Call.objects.select_for_update()
                .filter(provider=provider_name, provider_call_id=provider_call_id)
                .first()
            )
            if call is not None:
                return call
    return None


def _event_payload(event: NormalizedEvent) -> dict[str, Any]:
    payload = {
        k: v
        for k, v in {
            "transcript": event.transcript,
            "isFinal": event.is_final if event.type == EventType.SPEECH else None,
            "confidence": event.confidence,
            "digits": event.digits,
            "reason": event.reason,
            "error": event.error,
            "text": event.text,
            "turnToken": event.turn_token,
            "direction": event.direction,
            "from": event.from_number,
            "to": event.to_number,
        }.items()
        if v is not None
    }
    if event.raw:
        payload["raw"] = event.raw
    return payload


# Events that say the carrier's leg is already gone (nothing left to hang up).
LEG_GONE_EVENTS = frozenset({EventType.ENDED, EventType.ERROR})
# Column limits of the ledger (calls/models.py).
PROVIDER_CALL_ID_MAX = 128
DEDUPE_KEY_MAX = 200


def _storable(value: Any) -> Any:
    """``value`` as PostgreSQL text/jsonb can hold it: NUL characters dropped, lone surrogates
    replaced, non-finite floats (JSON ``NaN``/``Infinity``, which Python's parser accepts) as null."""
    if isinstance(value, str):
        if "\x00" in value:
            value = value.replace("\x00", "")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = value.encode("utf-8", "replace").decode("utf-8")
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {_storable(str(k)): _storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(v) for v in value]
    return value


def storable_event(event: NormalizedEvent) -> NormalizedEvent:
    """The event as the ledger can store it (found by fuzzing: a NUL or a lone surrogate in a field,
    or ``NaN`` in a payload, made PostgreSQL fail the whole webhook with a 500).

    Text is cleaned, an over-long dedupe key keeps its prefix plus a hash (truncation alone would
    merge distinct events), and a carrier call id longer than its column is refused with
    ``WebhookParseError`` (400, nothing recorded): cutting an id would point it at the wrong call.
    """
    changes = {
        f.name: _storable(getattr(event, f.name))
        for f in dataclasses.fields(event)
        if f.name not in ("type", "timestamp", "is_final", "retryable")
    }
    for name in ("provider_call_id", "previous_provider_call_id"):
        value = changes[name]
        if isinstance(value, str) and len(value) > PROVIDER_CALL_ID_MAX:
            raise WebhookParseError(f"{name} is longer than {PROVIDER_CALL_ID_MAX} characters")
    key = str(changes["dedupe_key"])
    if len(key) > DEDUPE_KEY_MAX:
        key = key[: DEDUPE_KEY_MAX - 65] + "#" + hashlib.sha256(key.encode()).hexdigest()
    changes["dedupe_key"] = key
    return dataclasses.replace(event, **changes)


def apply_event(provider: Provider, event: NormalizedEvent) -> EventOutcome:
    """Apply one carrier event exactly once: dedupe, find or create the call, transition, transcript.

    Runs inside the caller's transaction (``process_events``); the ledger row's unique
    ``dedupe_key`` is what makes a second delivery — from any process, after any restart — a no-op.
    """
    event = storable_event(event)
    config = provider.config
    outcome = EventOutcome()
    try:
        with transaction.atomic():
            ledger = CallEvent.objects.create(
                provider=provider.name,
                type=event.type.value,
                dedupe_key=event.dedupe_key[:200],
                provider_call_id=event.provider_call_id or "",
                payload=_event_payload(event),
            )
    except IntegrityError:
        outcome.duplicate = True
        return outcome

    call = _find_call_for_event(provider.name, event)
    if call is None:
        call = _register_unknown_call(provider, event, outcome)
        if call is None:
            outcome.ignored = True
            return outcome
    ledger.call = call
    ledger.save(update_fields=["call"])
    outcome.call = call

    if (
        event.provider_call_id
        and event.provider_call_id != call.provider_call_id
        and (not call.provider_call_id or event.previous_provider_call_id == call.provider_call_id)
    ):
        stray_leg = call.is_terminal and not call.provider_call_id and event.type not in LEG_GONE_EVENTS
        call.provider_call_id = event.provider_call_id
        call.save(update_fields=["provider_call_id", "updated_at"])
        if stray_leg:
            # We ended this call before we ever learned its carrier id (a dial whose worker died was
            # failed, not redialed; placement retries ran out after a timeout), yet the carrier placed
            # it after all. Hang that leg up rather than leave the callee listening to silence.
            from calls import tasks

            stray_call_id = str(call.id)
            transaction.on_commit(lambda: tasks.hang_up_stray_leg.delay(stray_call_id))

    _apply_to_call(provider, config, call, event, outcome)
    call_id = str(call.id)
    transaction.on_commit(lambda: publish_call_update(call_id))
    return outcome


def _register_unknown_call(provider: Provider, event: NormalizedEvent, outcome: EventOutcome) -> Call | None:
    """A first event for a call we have no record of: an inbound caller, or an outbound call placed
    outside Voicecall (auto-registered, fact sheet §2.5 step 3)."""
    if not event.provider_call_id or not event.direction:
        return None
    if event.type in (EventType.ENDED, EventType.ERROR):
        return None
    if RejectedInboundCall.objects.filter(provider=provider.name, provider_call_id=event.provider_call_id).exists():
        outcome.rejected = True
        return None
    config = provider.config
    if event.direction == Direction.INBOUND and not inbound_allowed(event.from_number, config):
        try:
            with transaction.atomic():
                RejectedInboundCall.objects.create(
                    provider=provider.name,
                    provider_call_id=event.provider_call_id,
                    from_number=(event.from_number or "")[:32],
                )
        except IntegrityError:
            outcome.rejected = True
            return None
        from calls import tasks

        provider_call_id = event.provider_call_id
        transaction.on_commit(lambda: tasks.reject_inbound_call.delay(provider.name, provider_call_id))
        outcome.rejected = True
        logger.info("inbound call %s from %s rejected by policy %s", provider_call_id, event.from_number, config.inbound_policy)
        return None

    inbound = event.direction == Direction.INBOUND
    route = config.number_route(event.to_number or "") if inbound else None
    greeting = ((route.inbound_greeting if route else None) or config.inbound_greeting or DEFAULT_INBOUND_GREETING)
    try:
        with transaction.atomic():
            call = Call.objects.create(
                provider=provider.name,
                provider_call_id=event.provider_call_id,
                direction=Direction.INBOUND if inbound else Direction.OUTBOUND,
                state=CallState.RINGING.value,
                mode=Mode.CONVERSATION if inbound else config.outbound.default_mode,
                from_number=(event.from_number or "")[:32],
                to_number=(event.to_number or config.from_number or "")[:32],
                initial_message=greeting if inbound else "",
                metadata={"autoRegistered": not inbound, **({"numberRouteKey": event.to_number} if route else {})},
            )
    except IntegrityError:
        # Another delivery created it concurrently: use that one.
        call = Call.objects.select_for_update().get(provider=provider.name, provider_call_id=event.provider_call_id)
    return call


def _transition(call: Call, target: str) -> bool:
    new_state = next_state(call.state, target)
    if new_state == call.state:
        return False
    call.state = new_state
    return True


def _finalize(call: Call, reason: str, *, error: str | None = None) -> None:
    """End a call in its terminal state (fact sheet §2.3 finalizeCall). Caller holds the row lock."""
    if reason not in END_REASONS:
        reason = CallState.COMPLETED.value
    if call.is_terminal:
        return
    call.state = reason
    call.end_reason = reason
    call.ended_at = timezone.now()
    call.pending_turn_token = ""
    call.pending_turn_started_at = None
    if error:
        call.last_error = error[:2000]
    call.save()
    call_id = str(call.id)
    transaction.on_commit(lambda: publish_call_update(call_id))


def _apply_to_call(
    provider: Provider, config: VoiceCallConfig, call: Call, event: NormalizedEvent, outcome: EventOutcome
) -> None:
    from calls import tasks

    call_id = str(call.id)
    if call.is_terminal:
        return
    kind = event.type
    if kind == EventType.INITIATED:
        _transition(call, CallState.INITIATED.value)
        call.save()
        if call.direction == Direction.INBOUND and provider.answers_inbound_by_rest:
            transaction.on_commit(lambda: tasks.answer_inbound_call.delay(call_id))
    elif kind == EventType.RINGING:
        if _transition(call, CallState.RINGING.value):
            call.save()
    elif kind == EventType.ANSWERED:
        _transition(call, CallState.ANSWERED.value)
        first_answer = call.answered_at is None
        if first_answer:
            call.answered_at = timezone.now()
        call.save()
        if first_answer:
            transaction.on_commit(
                lambda: tasks.enforce_max_duration.apply_async((call_id,), countdown=config.max_duration_seconds)
            )
            if call.initial_message and not call.initial_message_delivered and not provider.speaks_initial_message_in_reply:
                transaction.on_commit(lambda: tasks.deliver_initial_message.delay(call_id))
            elif call.mode == Mode.CONVERSATION and not provider.speaks_initial_message_in_reply:
                transaction.on_commit(lambda: tasks.start_listening.delay(call_id))
    elif kind == EventType.ACTIVE:
        if _transition(call, CallState.ACTIVE.value):
            call.save()
    elif kind == EventType.SPEAKING:
        if _transition(call, CallState.SPEAKING.value):
            call.save()
    elif kind == EventType.SPOKEN:
        if provider.reports_playback_end:
            if call.mode == Mode.NOTIFY and call.initial_message_delivered:
                delay = config.outbound.notify_hangup_delay_sec
                transaction.on_commit(lambda: tasks.hang_up_after_notify.apply_async((call_id,), countdown=delay))
            elif call.mode == Mode.CONVERSATION:
                transaction.on_commit(lambda: tasks.start_listening.delay(call_id))
    elif kind == EventType.SPEECH:
        _apply_speech(provider, call, event, outcome)
    elif kind == EventType.ENDED:
        # A hang-up we requested ends with our reason, whichever of us finalizes first (end_call).
        requested = (call.metadata or {}).get(END_REQUESTED_KEY)
        _finalize(call, requested or event.reason or CallState.COMPLETED.value)
    elif kind == EventType.ERROR:
        if not event.retryable:
            _finalize(call, CallState.ERROR.value, error=event.error or "unknown error")
        else:
            call.last_error = (event.error or "")[:2000]
            call.save(update_fields=["last_error", "updated_at"])
    # call.silence and call.dtmf are kept in the ledger only: they change no state.


def _apply_speech(provider: Provider, call: Call, event: NormalizedEvent, outcome: EventOutcome) -> None:
    text = (event.transcript or "").strip()
    if not event.is_final or not text:
        return
    token = call.pending_turn_token
    if token and provider.uses_turn_tokens and event.turn_token != token:
        # A stale Gather callback (or a forged one without the token) must not answer this turn.
        logger.info("speech for call %s ignored: turn token does not match the pending turn", call.id)
        outcome.ignored = True
        return
    latency_ms = None
    if token and call.pending_turn_started_at:
        latency_ms = int((timezone.now() - call.pending_turn_started_at).total_seconds() * 1000)
    entry = TranscriptEntry.objects.create(
        call=call, speaker=Speaker.USER, text=text, is_final=True, turn_token=token, latency_ms=latency_ms
    )
    outcome.user_transcript = text
    outcome.consumed_by_turn = bool(token)
    call.metadata = {**(call.metadata or {}), "userTurns": int((call.metadata or {}).get("userTurns", 0)) + 1}
    if not token:
        _queue_auto_reply(provider.config, call, entry)
    if token:
        call.pending_turn_token = ""
        call.pending_turn_started_at = None
    _transition(call, CallState.LISTENING.value)
    call.save()


def process_events(provider: Provider, events: list[NormalizedEvent]) -> list[EventOutcome]:
    with transaction.atomic():
        return [apply_event(provider, event) for event in events]


@dataclass
class WebhookResult:
    reply: WebhookReply
    replay: bool = False
    outcomes: list[EventOutcome] = field(default_factory=list)


def process_webhook(provider: Provider, request, request_key: str) -> WebhookResult:
    """A verified webhook: replay check, parse, apply every event, render the reply — one transaction.

    A request whose key was seen before (any process, any time in the last day) gets the stored reply
    and changes nothing. Raises ``WebhookParseError`` for bodies the carrier would never send.
    """
    previous = WebhookReceipt.objects.filter(request_key=request_key).first()
    if previous is not None:
        return WebhookResult(_stored_reply(previous), replay=True)
    parsed = provider.parse_webhook(request, request_key)
    with transaction.atomic():
        try:
            with transaction.atomic():
                receipt = WebhookReceipt.objects.create(request_key=request_key[:200], provider=provider.name)
        except IntegrityError:
            previous = WebhookReceipt.objects.filter(request_key=request_key).first()
            return WebhookResult(_stored_reply(previous) if previous else WebhookReply(), replay=True)
        outcomes = [apply_event(provider, event) for event in parsed.events]
        call = next((o.call for o in reversed(outcomes) if o.call is not None), None)
        if any(o.rejected for o in outcomes):
            reply = provider.rejected_reply(request)
        else:
            if call is not None:
                call.refresh_from_db()
            call_snapshot = snapshot(call, provider.config) if call else None
            # Media streams (calls/streams.py): a call to be connected to a media stream carries the
            # token its <Stream> must present (minted once per call; a replay never gets here).
            if call is not None and provider.config.streaming.enabled:
                from calls import streams

                call_snapshot = streams.with_stream_token(provider, call, call_snapshot)
            reply = provider.render_reply(request, parsed, call_snapshot)
            if call is not None and reply.spoken_text:
                _record_reply_speech(call, reply)
        receipt.status_code = reply.status
        receipt.content_type = reply.content_type
        receipt.body = reply.body
        receipt.save(update_fields=["status_code", "content_type", "body"])
    return WebhookResult(reply, outcomes=outcomes)


def _stored_reply(receipt: WebhookReceipt) -> WebhookReply:
    return WebhookReply(status=receipt.status_code, content_type=receipt.content_type, body=receipt.body)


def _record_reply_speech(call: Call, reply: WebhookReply) -> None:
    """The carrier reply itself speaks (TwiML <Say>, Plivo <Speak>): record it like any utterance."""
    call = Call.objects.select_for_update().get(id=call.id)
    TranscriptEntry.objects.create(call=call, speaker=Speaker.BOT, text=reply.spoken_text or "")
    if reply.delivers_initial_message:
        call.initial_message_delivered = True
    _transition(call, CallState.LISTENING.value if reply.listens else CallState.SPEAKING.value)
    call.save()


# ------------------------------------------------------------------------------------------------
# Speaking, listening, turns
# ------------------------------------------------------------------------------------------------


def _speak_now(call: Call, text: str, *, listen_after: bool, turn_token: str | None) -> None:
    """Hand text to the carrier and record it. Raises ServiceError if the carrier refused."""
    config = get_config()
    provider = get_provider(config)
    # Media streams (calls/streams.py): a call whose Twilio media stream is live speaks through the
    # consumer holding the socket (TTS over the stream, acknowledged), never through play_tts.
    if config.streaming.enabled:
        from calls import streams

        if streams.has_live_stream(str(call.id)):
            streams.speak_via_stream(call, text, listen_after=listen_after, turn_token=turn_token)
            return
    with transaction.atomic():
        locked = Call.objects.select_for_update().get(id=call.id)
        if locked.is_terminal:
            raise ServiceError(CALL_HAS_ENDED)
        _transition(locked, CallState.SPEAKING.value)
        locked.save()
    try:
        provider.play_tts(snapshot(locked, config), text, listen_after=listen_after, turn_token=turn_token)
    except ProviderError as exc:
        with transaction.atomic():
            locked = Call.objects.select_for_update().get(id=call.id)
            _transition(locked, CallState.LISTENING.value)
            locked.last_error = str(exc)[:2000]
            locked.save()
        raise ServiceError(str(exc)) from exc
    with transaction.atomic():
        locked = Call.objects.select_for_update().get(id=call.id)
        TranscriptEntry.objects.create(call=locked, speaker=Speaker.BOT, text=text, turn_token=turn_token or "")
        if listen_after:
            _transition(locked, CallState.LISTENING.value)
            locked.save()
    publish_call_update(str(call.id))


def speak(call_id: str, message: str) -> None:
    """Say something on a live call without waiting for a reply (fact sheet §8.3)."""
    message = (message or "").strip()
    if not message:
        raise ServiceError(MESSAGE_REQUIRED)
    call = _require_call(call_id)
    _require_connected(call)
    listen = call.mode == Mode.CONVERSATION
    _speak_now(call, message, listen_after=listen, turn_token=call.pending_turn_token or None)


def deliver_initial_message(call_id: str) -> bool:
    """Speak the pending greeting/notification once the call is answered (fact sheet §8.2)."""
    config = get_config()
    with transaction.atomic():
        call = Call.objects.select_for_update().filter(id=call_id).first()
        if call is None or call.is_terminal or call.initial_message_delivered or not call.initial_message:
            return False
        # Claimed before speaking so concurrent deliveries (a retried task) never speak it twice.
        call.initial_message_delivered = True
        call.save(update_fields=["initial_message_delivered", "updated_at"])
    conversation = call.mode == Mode.CONVERSATION
    try:
        _speak_now(call, call.initial_message, listen_after=conversation, turn_token=None)
    except ServiceError:
        with transaction.atomic():
            Call.objects.filter(id=call_id).update(initial_message_delivered=False)
        raise
    if not conversation and not get_provider(config).reports_playback_end:
        from calls import tasks

        tasks.hang_up_after_notify.apply_async((str(call.id),), countdown=config.outbound.notify_hangup_delay_sec)
    return True


def start_listening(call_id: str) -> None:
    call = find_call(call_id)
    if call is None or call.is_terminal or not call.provider_call_id:
        return
    provider = get_provider()
    provider.start_listening(snapshot(call), turn_token=call.pending_turn_token or None)
    with transaction.atomic():
        locked = Call.objects.select_for_update().get(id=call.id)
        if _transition(locked, CallState.LISTENING.value):
            locked.save()


def continue_call(call_id: str, message: str, *, timeout_ms: int | None = None) -> str:
    """Speak, listen, and return the caller's next final reply of this turn (fact sheet §8.4).

    Works when the reply's webhook lands on another process: the turn token lives on the call row,
    whichever process applies the matching speech event records it, and this waiter wakes on the
    cross-process notification (or its safety re-check of the database).
    """
    message = (message or "").strip()
    if not message:
        raise ServiceError(MESSAGE_REQUIRED)
    config = get_config()
    timeout_ms = timeout_ms or config.transcript_timeout_ms
    call = _require_call(call_id)
    _require_connected(call)
    token = uuid.uuid4().hex
    started = timezone.now()
    with transaction.atomic():
        locked = Call.objects.select_for_update().get(id=call.id)
        if locked.is_terminal:
            raise ServiceError(CALL_HAS_ENDED)
        if locked.pending_turn_token:
            raise ServiceError(ALREADY_WAITING)
        locked.pending_turn_token = token
        locked.pending_turn_started_at = started
        locked.save(update_fields=["pending_turn_token", "pending_turn_started_at", "updated_at"])
    try:
        _speak_now(locked, message, listen_after=True, turn_token=token)
        listen_started = timezone.now()
        transcript = _wait_for_turn(str(call.id), token, timeout_ms)
    finally:
        _clear_turn(str(call.id), token)
    finished = timezone.now()
    with transaction.atomic():
        locked = Call.objects.select_for_update().get(id=call.id)
        metadata = dict(locked.metadata or {})
        metadata["turnCount"] = int(metadata.get("turnCount", 0)) + 1
        metadata["lastTurnLatencyMs"] = int((finished - started).total_seconds() * 1000)
        metadata["lastTurnListenWaitMs"] = int((finished - listen_started).total_seconds() * 1000)
        metadata["lastTurnCompletedAt"] = _ms(finished)
        metadata.setdefault("turnLatenciesMs", []).append(metadata["lastTurnLatencyMs"])
        metadata["turnLatenciesMs"] = metadata["turnLatenciesMs"][-50:]
        locked.metadata = metadata
        locked.save(update_fields=["metadata", "updated_at"])
    get_provider(config).stop_listening(snapshot(locked, config))
    return transcript


def _clear_turn(call_id: str, token: str) -> None:
    with transaction.atomic():
        Call.objects.filter(id=call_id, pending_turn_token=token).update(
            pending_turn_token="", pending_turn_started_at=None
        )


def _wait_for_turn(call_id: str, token: str, timeout_ms: int) -> str:
    deadline = time.monotonic() + timeout_ms / 1000
    with call_update_waiter(call_id) as waiter:
        while True:
            entry = (
                TranscriptEntry.objects.filter(call_id=call_id, speaker=Speaker.USER, turn_token=token, is_final=True)
                .order_by("id")
                .first()
            )
            if entry is not None:
                return entry.text
            call = Call.objects.filter(id=call_id).only("state", "end_reason").first()
            if call is None or call.is_terminal:
                raise ServiceError(CALL_ENDED_WHILE_WAITING.format(reason=call.end_reason if call else "missing"))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServiceError(TRANSCRIPT_TIMEOUT.format(ms=timeout_ms))
            waiter.wait(remaining)


def send_dtmf(call_id: str, digits: str) -> None:
    digits = (digits or "").strip()
    if not digits:
        raise ServiceError(DIGITS_REQUIRED)
    if not DTMF_DIGITS.match(digits):
        raise ServiceError(INVALID_DIGITS)
    call = _require_call(call_id)
    _require_connected(call)
    provider = get_provider()
    if not provider.supports_dtmf:
        raise ServiceError(f"{provider.name} does not support outbound DTMF")
    try:
        provider.send_dtmf(snapshot(call), digits)
    except ProviderError as exc:
        raise ServiceError(str(exc)) from exc


# ------------------------------------------------------------------------------------------------
# The auto-responder (fact sheet §7.3)
# ------------------------------------------------------------------------------------------------


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


def _queue_auto_reply(config: VoiceCallConfig, call: Call, entry: TranscriptEntry) -> None:
    if responder_settings(config, call) is None:
        return
    from calls import tasks

    call_id, entry_id = str(call.id), entry.id
    transaction.on_commit(lambda: tasks.generate_reply.delay(call_id, entry_id))


def _newest_user_entry_id(call_id: str) -> int | None:
    return (
        TranscriptEntry.objects.filter(call_id=call_id, speaker=Speaker.USER, is_final=True)
        .order_by("-id")
        .values_list("id", flat=True)
        .first()
    )


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
    call.refresh_from_db()
    if call.is_terminal:
        return None
    _speak_now(call, spoken, listen_after=True, turn_token=None)
    total_ms = int((timezone.now() - entry.timestamp).total_seconds() * 1000)
    with transaction.atomic():
        locked = Call.objects.select_for_update().get(id=call.id)
        bot_entry = locked.transcript.filter(speaker=Speaker.BOT).order_by("-id").first()
        if bot_entry is not None:
            bot_entry.latency_ms = total_ms
            bot_entry.save(update_fields=["latency_ms"])
        metadata = dict(locked.metadata or {})
        replies = metadata.get("replyLatencies", [])[-49:]
        replies.append({"llmMs": llm_ms, "totalMs": total_ms, "fallback": bool(error)})
        metadata["replyLatencies"] = replies
        locked.metadata = metadata
        locked.save(update_fields=["metadata", "updated_at"])
    return spoken


# ------------------------------------------------------------------------------------------------
# Ending calls
# ------------------------------------------------------------------------------------------------


def _safe_hangup(provider: Provider, call: CallSnapshot) -> str | None:
    try:
        provider.hangup_call(call)
    except ProviderError as exc:
        logger.warning("hang-up of call %s failed: %s", call.call_id, exc)
        return str(exc)
    return None


def end_call(call_id: str, *, reason: str = CallState.HANGUP_BOT.value) -> None:
    """Hang up (fact sheet §8.5). Ending an ended call succeeds; a carrier error leaves it live."""
    call = _require_call(call_id)
    if call.is_terminal:
        return
    config = get_config()
    if not call.provider_call_id:
        with transaction.atomic():
            locked = Call.objects.select_for_update().get(id=call.id)
            if not locked.provider_call_id and not locked.metadata.get("dialClaimedAt"):
                # Never dialed: cancel it here; place_call sees the terminal state and won't dial.
                _finalize(locked, reason)
                return
        raise ServiceError(CALL_NOT_CONNECTED)
    # The carrier's own hang-up report (Telnyx call.hangup, a Twilio status callback) can land before
    # the request below returns; recording the reason first lets that report end the call with it.
    _set_end_requested(str(call.id), reason)
    error = _safe_hangup(get_provider(config), snapshot(call, config))
    if error:
        _set_end_requested(str(call.id), None)
        raise ServiceError(error)
    with transaction.atomic():
        locked = Call.objects.select_for_update().get(id=call.id)
        _finalize(locked, reason)
    # Media streams (calls/streams.py): the consumer holding this call's socket closes it now.
    if config.streaming.enabled:
        from calls import streams

        streams.close_stream(str(call.id))


def _set_end_requested(call_id: str, reason: str | None) -> None:
    with transaction.atomic():
        locked = Call.objects.select_for_update().get(id=call_id)
        metadata = dict(locked.metadata or {})
        if reason:
            metadata[END_REQUESTED_KEY] = reason
        else:
            metadata.pop(END_REQUESTED_KEY, None)
        locked.metadata = metadata
        locked.save(update_fields=["metadata", "updated_at"])


def hang_up_after_notify(call_id: str) -> None:
    call = find_call(call_id)
    if call is None or call.is_terminal:
        return
    try:
        end_call(call_id, reason=NOTIFY_END_REASON)
    except ServiceError as exc:
        logger.warning("notify hang-up of %s failed: %s", call_id, exc)


def enforce_max_duration(call_id: str) -> bool:
    config = get_config()
    call = find_call(call_id)
    if call is None or call.is_terminal or call.answered_at is None:
        return False
    if timezone.now() - call.answered_at < timedelta(seconds=config.max_duration_seconds):
        return False
    try:
        end_call(call_id, reason=CallState.TIMEOUT.value)
    except ServiceError:
        with transaction.atomic():
            locked = Call.objects.select_for_update().get(id=call.id)
            _finalize(locked, CallState.TIMEOUT.value, error="max duration reached; carrier hang-up failed")
    return True


def reject_inbound_call(provider_name: str, provider_call_id: str) -> bool:
    """Hang up a rejected inbound call exactly once, whatever the carrier retries."""
    provider = get_provider()
    with transaction.atomic():
        row = (
            RejectedInboundCall.objects.select_for_update()
            .filter(provider=provider_name, provider_call_id=provider_call_id)
            .first()
        )
        if row is None or row.hangup_attempted:
            return False
        row.hangup_attempted = True
        row.save(update_fields=["hangup_attempted"])
    try:
        provider.reject_inbound(provider_call_id)
    except ProviderError as exc:
        RejectedInboundCall.objects.filter(pk=row.pk).update(hangup_error=str(exc)[:2000])
        logger.warning("hang-up of rejected inbound call %s failed: %s", provider_call_id, exc)
    return True


def hang_up_stray_leg(call_id: str) -> bool:
    """Hang up the carrier leg of a call that had already ended when the leg turned up (see
    ``apply_event``). The call keeps its terminal state and reason; a failed hang-up is logged."""
    call = find_call(call_id)
    if call is None or not call.is_terminal or not call.provider_call_id:
        return False
    config = get_config()
    error = _safe_hangup(get_provider(config), snapshot(call, config))
    logger.warning("call %s had ended (%s) when its carrier leg %s appeared; hung it up%s", call_id,
                   call.end_reason, call.provider_call_id, f" (failed: {error})" if error else "")
    return error is None


def answer_inbound_call(call_id: str) -> None:
    call = find_call(call_id)
    if call is None or call.is_terminal:
        return
    get_provider().answer_call(snapshot(call))


def reap_stale_calls() -> dict[str, int]:
    """End calls stuck before answer past ``staleCallReaperSeconds`` and answered calls past
    ``maxDurationSeconds`` (fact sheet §10). A live conversation is never reaped for staleness."""
    config = get_config()
    now = timezone.now()
    reaped = {"stale": 0, "maxDuration": 0}
    if config.stale_call_reaper_seconds > 0:
        cutoff = now - timedelta(seconds=config.stale_call_reaper_seconds)
        stale = Call.objects.filter(
            state__in=[CallState.INITIATED.value, CallState.RINGING.value],
            answered_at__isnull=True,
            started_at__lt=cutoff,
        )
        for call in stale:
            if call.state == CallState.INITIATED.value and not call.provider_call_id and not call.metadata.get("dialClaimedAt"):
                # Still queued for placement (e.g. no worker running): fail it rather than dial late.
                fail_call(str(call.id), "not placed within staleCallReaperSeconds")
            else:
                try:
                    end_call(str(call.id), reason=CallState.HANGUP_BOT.value)
                except ServiceError:
                    with transaction.atomic():
                        locked = Call.objects.select_for_update().get(id=call.id)
                        _finalize(locked, CallState.HANGUP_BOT.value, error="reaped; carrier hang-up failed")
            reaped["stale"] += 1
    overdue = Call.objects.live().filter(
        answered_at__lt=now - timedelta(seconds=config.max_duration_seconds)
    )
    for call in overdue:
        if enforce_max_duration(str(call.id)):
            reaped["maxDuration"] += 1
    WebhookReceipt.objects.filter(received_at__lt=now - RECEIPT_RETENTION).delete()
    if reaped["stale"] or reaped["maxDuration"]:
        logger.info("reaper ended %s stale and %s over-long calls", reaped["stale"], reaped["maxDuration"])
    return reaped


def restore_calls() -> dict[str, int]:
    """After a restart, re-check every live call with its carrier (fact sheet §2.7).

    Calls past ``maxDurationSeconds`` are timed out (and hung up, errors ignored); calls the carrier
    reports ended are closed with its reason; calls the carrier still has, or cannot tell us about,
    stay live (the reaper and max-duration timer look after them). A call whose dial began but whose
    carrier id was never stored is failed, never redialed. Nothing is lost from the ledger: events
    and transcripts are already in the database.
    """
    config = get_config()
    provider = get_provider(config)
    now = timezone.now()
    summary = {"checked": 0, "resumed": 0, "timedOut": 0, "closed": 0, "failed": 0}
    for call in Call.objects.live():
        summary["checked"] += 1
        call_id = str(call.id)
        if not call.provider_call_id:
            if call.metadata.get("dialClaimedAt"):
                fail_call(call_id, PLACEMENT_INTERRUPTED)
                summary["failed"] += 1
            else:
                summary["resumed"] += 1  # still queued: place_call is idempotent
            continue
        if now - call.started_at > timedelta(seconds=config.max_duration_seconds):
            # Marked and saved first, then hung up (§2.7 order): the carrier's hang-up report can
            # land before the request returns and must not end the call "completed" instead.
            with transaction.atomic():
                locked = Call.objects.select_for_update().get(id=call.id)
                _finalize(locked, CallState.TIMEOUT.value)
            _safe_hangup(provider, snapshot(call, config))
            summary["timedOut"] += 1
            continue
        try:
            status = provider.get_call_status(call.provider_call_id)
        except ProviderError as exc:
            logger.info("restore: status of call %s unknown (%s); keeping it", call_id, exc)
            summary["resumed"] += 1
            continue
        if status.is_terminal:
            with transaction.atomic():
                locked = Call.objects.select_for_update().get(id=call.id)
                _finalize(locked, status.end_reason or CallState.COMPLETED.value)
            summary["closed"] += 1
        else:
            summary["resumed"] += 1
            if call.answered_at:
                from calls import tasks

                remaining = config.max_duration_seconds - (now - call.answered_at).total_seconds()
                tasks.enforce_max_duration.apply_async((call_id,), countdown=max(0, int(remaining) + 1))
    logger.info("restore: %s", summary)
    return summary


# ------------------------------------------------------------------------------------------------
# Status and reports
# ------------------------------------------------------------------------------------------------


def get_status(call_id: str | None = None) -> dict[str, Any]:
    """``{found, call}`` for one call (internal or carrier id), or ``{found, calls}`` for live calls."""
    if call_id:
        call = find_call(call_id)
        if call is None:
            return {"found": False}
        return {"found": True, "call": call_to_dict(call)}
    calls = Call.objects.live().prefetch_related("transcript")
    return {"found": True, "calls": [call_to_dict(c) for c in calls]}


def _percentile(sorted_values: list[int], p: float) -> int | None:
    """Nearest-rank percentile (fact sheet §9.3: ``ceil(p/100·n)-1``)."""
    import math

    if not sorted_values:
        return None
    index = max(0, math.ceil(p / 100 * len(sorted_values)) - 1)
    return sorted_values[index]


def _summary(values: list[int]) -> dict[str, Any]:
    values = sorted(values)
    if not values:
        return {"count": 0, "minMs": None, "maxMs": None, "avgMs": None, "p50Ms": None, "p95Ms": None}
    return {
        "count": len(values),
        "minMs": values[0],
        "maxMs": values[-1],
        "avgMs": round(sum(values) / len(values)),
        "p50Ms": _percentile(values, 50),
        "p95Ms": _percentile(values, 95),
    }


def latency_report(last: int = 200) -> dict[str, Any]:
    """Turn latency over the newest ``last`` calls (fact sheet §9.3 ``latency``)."""
    calls = list(Call.objects.order_by("-started_at")[: max(1, last)])
    turn, listen, reply_llm, reply_total = [], [], [], []
    for call in calls:
        md = call.metadata or {}
        for reply in md.get("replyLatencies", []) if isinstance(md.get("replyLatencies"), list) else []:
            if isinstance(reply, dict) and isinstance(reply.get("totalMs"), int):
                reply_total.append(reply["totalMs"])
                reply_llm.append(int(reply.get("llmMs") or 0))
        if isinstance(md.get("lastTurnLatencyMs"), int):
            turn.append(md["lastTurnLatencyMs"])
        if isinstance(md.get("lastTurnListenWaitMs"), int):
            listen.append(md["lastTurnListenWaitMs"])
    return {
        "recordsScanned": len(calls),
        "turnLatency": _summary(turn),
        "listenWait": _summary(listen),
        # auto-responder turns: caller's final words → reply text (model) and → reply handed to the carrier
        "replyModel": _summary(reply_llm),
        "replyTotal": _summary(reply_total),
    }

