"""Speaking and listening on a live call: speak, the greeting, listen, ``continue`` (speak, then wait
for the caller's reply to that turn) and DTMF (fact sheet §8.2-§8.4, §8.6).

Speech goes to the call's live media stream when it has one (through the stream port in
``calls.services.effects``), else to the carrier's own TTS.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from calls import metrics
from calls.config import get_config
from calls.models import (
    Call,
    Direction,
    Mode,
    Speaker,
    TranscriptEntry,
)
from calls.services.call_updates import call_update_waiter, publish_call_update
from calls.services.effects import Effect, after_commit, stream_port
from calls.services.records import (
    ALREADY_WAITING,
    CALL_ENDED_WHILE_WAITING,
    CALL_HAS_ENDED,
    CALL_NOT_CONNECTED,
    DIGITS_REQUIRED,
    DTMF_DIGITS,
    INVALID_DIGITS,
    TRANSCRIPT_TIMEOUT,
    ServiceError,
    carrier,
    epoch_ms,
    expects_stream,
    find_call,
    require_call,
    require_connected,
    snapshot,
    spoken_text,
    transition,
)
from calls.state import PRE_ANSWER_STATES, CallState
from providers.base import (
    ProviderError,
)

logger = logging.getLogger(__name__)


def speak_now(call: Call, text: str, *, listen_after: bool, turn_token: str | None) -> int | None:
    """Hand text to the carrier and record it; returns the transcript line it wrote. Raises
    ServiceError if the carrier (or the live stream) refused."""
    config = get_config()
    provider = carrier(config)
    # A call whose media stream is live speaks through the consumer holding the socket (TTS over the
    # stream, acknowledged), never through the carrier's play_tts.
    if config.live_audio:
        stream = stream_port()
        if stream.has_live_stream(str(call.id)):
            return stream.speak(call, text, listen_after=listen_after, turn_token=turn_token)
    with transaction.atomic():
        locked = Call.objects.select_for_update().get(id=call.id)
        if locked.is_terminal:
            raise ServiceError(CALL_HAS_ENDED)
        transition(locked, CallState.SPEAKING.value)
        locked.save()
    try:
        provider.play_tts(snapshot(locked, config), text, listen_after=listen_after, turn_token=turn_token)
    except ProviderError as exc:
        with transaction.atomic():
            locked = Call.objects.select_for_update().get(id=call.id)
            transition(locked, CallState.LISTENING.value)
            locked.last_error = str(exc)[:2000]
            locked.save()
        raise ServiceError(str(exc)) from exc
    with transaction.atomic():
        locked = Call.objects.select_for_update().get(id=call.id)
        entry = TranscriptEntry.objects.create(call=locked, speaker=Speaker.BOT, text=text, turn_token=turn_token or "")
        if listen_after:
            transition(locked, CallState.LISTENING.value)
            locked.save()
    publish_call_update(str(call.id))
    return entry.id


def connected_call(call_id: str, *, timeout_ms: int | None = None) -> Call:
    """The call, once it is connected. A call still being placed or ringing is waited for, up to
    ``ringTimeoutMs`` (so ``call`` then ``continue`` typed straight away works); the wait wakes on
    the cross-process call-update notification, with the database as the truth. Raises
    ``CALL_NOT_FOUND``, ``CALL_HAS_ENDED`` (also when it ends while we wait) or, when it has not
    connected in time, ``CALL_NOT_CONNECTED``."""
    call = require_call(call_id)
    if call.is_terminal or call.state not in PRE_ANSWER_STATES:
        require_connected(call)
        return call
    timeout_ms = get_config().ring_timeout_ms if timeout_ms is None else timeout_ms
    deadline = time.monotonic() + timeout_ms / 1000
    with call_update_waiter(str(call.id)) as waiter:
        while True:
            call = Call.objects.get(id=call.id)
            if call.is_terminal or call.state not in PRE_ANSWER_STATES:
                require_connected(call)
                return call
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServiceError(CALL_NOT_CONNECTED)
            waiter.wait(remaining)


def speak(call_id: str, message: str) -> None:
    """Say something on a live call without waiting for a reply (fact sheet §8.3)."""
    message = spoken_text(message)
    call = connected_call(call_id)
    listen = call.mode == Mode.CONVERSATION
    speak_now(call, message, listen_after=listen, turn_token=call.pending_turn_token or None)


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
        speak_now(call, call.initial_message, listen_after=conversation, turn_token=None)
    except ServiceError:
        with transaction.atomic():
            Call.objects.filter(id=call_id).update(initial_message_delivered=False)
        raise
    if not conversation and not carrier(config).reports_playback_end:
        after_commit(Effect.HANG_UP_AFTER_NOTIFY, str(call.id), delay=config.outbound.notify_hangup_delay_sec)
    return True


def start_listening(call_id: str) -> None:
    call = find_call(call_id)
    if call is None or call.is_terminal or not call.provider_call_id:
        return
    provider = carrier()
    provider.start_listening(snapshot(call), turn_token=call.pending_turn_token or None)
    with transaction.atomic():
        locked = Call.objects.select_for_update().get(id=call.id)
        if transition(locked, CallState.LISTENING.value):
            locked.save()


def continue_call(call_id: str, message: str, *, timeout_ms: int | None = None) -> str:
    """Speak, listen, and return the caller's next final reply of this turn (fact sheet §8.4).

    Works when the reply's webhook lands on another process: the turn token lives on the call row,
    whichever process applies the matching speech event records it, and this waiter wakes on the
    cross-process notification (or its safety re-check of the database).
    """
    message = spoken_text(message)
    config = get_config()
    timeout_ms = timeout_ms or config.transcript_timeout_ms
    call = connected_call(call_id)
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
        speak_now(locked, message, listen_after=True, turn_token=token)
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
        metrics.TURN_LATENCY.observe((finished - started).total_seconds())
        metadata["lastTurnListenWaitMs"] = int((finished - listen_started).total_seconds() * 1000)
        metadata["lastTurnCompletedAt"] = epoch_ms(finished)
        metadata.setdefault("turnLatenciesMs", []).append(metadata["lastTurnLatencyMs"])
        metadata["turnLatenciesMs"] = metadata["turnLatenciesMs"][-50:]
        locked.metadata = metadata
        locked.save(update_fields=["metadata", "updated_at"])
    if not expects_stream(locked):  # a stream's STT keeps listening; the carrier never started
        carrier(config).stop_listening(snapshot(locked, config))
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
    call = connected_call(call_id)
    provider = carrier()
    if not provider.supports_dtmf:
        raise ServiceError(f"{provider.name} does not support outbound DTMF")
    try:
        provider.send_dtmf(snapshot(call), digits)
    except ProviderError as exc:
        raise ServiceError(str(exc)) from exc


# --------------------------------------------------------------------------------------------------
# Speech on a live media stream: the domain half (the media layer sends the command in between)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamUtterance:
    entry_id: int
    initial: bool  # the intro of an outbound conversation: not interruptible (fact sheet §5.5)


@dataclass(frozen=True)
class StreamGreeting(StreamUtterance):
    """The pending initial message, claimed for the media stream that just attached."""

    text: str


def _is_outbound_intro(call: Call, text: str) -> bool:
    """The first line of an outbound conversation, its initial message: the caller cannot cut it off
    (fact sheet §5.5). ``call`` is row-locked by the caller."""
    return (
        call.direction == Direction.OUTBOUND
        and call.mode == Mode.CONVERSATION
        and bool(call.initial_message)
        and text == call.initial_message
        and not call.transcript.filter(speaker=Speaker.BOT).exists()
    )


def claim_stream_greeting(call_id: str) -> StreamGreeting | None:
    """Claim the call's undelivered initial message for its new media stream, in one transaction:
    marked delivered (so no other path speaks it too), recorded as a bot line, and the call moved
    on as a spoken line moves it (a conversation then listens). None when there is nothing to say.

    The consumer that holds the stream plays it itself (``calls.media.consumer``), so the greeting
    does not go round through the channel layer back to the same socket.
    """
    config = get_config()
    with transaction.atomic():
        locked = Call.objects.select_for_update().filter(id=call_id).first()
        if locked is None or locked.is_terminal or locked.initial_message_delivered or not locked.initial_message:
            return None
        conversation = locked.mode == Mode.CONVERSATION
        initial = _is_outbound_intro(locked, locked.initial_message)
        locked.initial_message_delivered = True
        transition(locked, CallState.SPEAKING.value)
        if conversation:
            transition(locked, CallState.LISTENING.value)
        locked.save(update_fields=["initial_message_delivered", "state", "updated_at"])
        entry = TranscriptEntry.objects.create(call=locked, speaker=Speaker.BOT, text=locked.initial_message)
        if not conversation and not carrier(config).reports_playback_end:
            after_commit(Effect.HANG_UP_AFTER_NOTIFY, call_id, delay=config.outbound.notify_hangup_delay_sec)
    publish_call_update(call_id)
    return StreamGreeting(entry_id=entry.id, initial=initial, text=entry.text)


def withdraw_stream_greeting(call_id: str, entry_id: int) -> None:
    """The stream that claimed the greeting went away before it could play: the line is taken back
    and the greeting stays pending for the next stream (or the carrier) to speak."""
    with transaction.atomic():
        TranscriptEntry.objects.filter(id=entry_id, call_id=call_id, speaker=Speaker.BOT).delete()
        Call.objects.filter(id=call_id, ended_at__isnull=True).update(initial_message_delivered=False)
    publish_call_update(call_id)


def begin_stream_utterance(call_id: str, text: str, *, turn_token: str | None) -> StreamUtterance:
    """Record a bot line about to be spoken on the call's stream and move the call to ``speaking``."""
    with transaction.atomic():
        locked = Call.objects.select_for_update().get(id=call_id)
        if locked.is_terminal:
            raise ServiceError(CALL_HAS_ENDED)
        initial = _is_outbound_intro(locked, text)
        transition(locked, CallState.SPEAKING.value)
        locked.save()
        entry = TranscriptEntry.objects.create(call=locked, speaker=Speaker.BOT, text=text, turn_token=turn_token or "")
    return StreamUtterance(entry_id=entry.id, initial=initial)


def settle_stream_utterance(call_id: str, entry_id: int, *, error: str | None, listen_after: bool) -> None:
    """The stream took the line (``error`` None) or refused it: a refused line is removed from the
    transcript, kept as ``last_error`` and raised as ``ServiceError``."""
    with transaction.atomic():
        locked = Call.objects.select_for_update().get(id=call_id)
        if error:
            TranscriptEntry.objects.filter(id=entry_id).delete()
            locked.last_error = error[:2000]
            transition(locked, CallState.LISTENING.value)
            locked.save()
        elif listen_after and transition(locked, CallState.LISTENING.value):
            locked.save()
    publish_call_update(call_id)
    if error:
        raise ServiceError(error)
