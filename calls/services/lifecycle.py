"""A call's life from our side: initiate, place (at most one dial), fail, end, and the hang-ups
that follow from policy (notify done, max duration, rejected inbound caller, a stray carrier leg).

Carrier REST requests never run inside a transaction: the row is locked, the decision committed,
then the request is made (fact sheet §2.3, §8.1, §8.5).
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import timedelta

from django.db import connection, transaction
from django.utils import timezone

from calls.config import get_config
from calls.models import (
    Call,
    Direction,
    Mode,
    RejectedInboundCall,
)
from calls.services.call_updates import publish_call_update
from calls.services.effects import Effect, after_commit, stream_port
from calls.services.records import (
    CALL_NOT_CONNECTED,
    DIAL_UNCONFIRMED,
    DIAL_UNCONFIRMED_KEY,
    E164,
    END_REQUESTED_KEY,
    FROM_NOT_CONFIGURED,
    INVALID_MODE,
    INVALID_NUMBER,
    MAX_CONCURRENT_CALLS,
    MOCK_DEFAULT_FROM,
    NOTIFY_END_REASON,
    PLACEMENT_EXPIRED,
    PLACEMENT_INTERRUPTED,
    TO_REQUIRED,
    ServiceError,
    carrier,
    epoch_ms,
    finalize,
    find_call,
    masked,
    require_call,
    snapshot,
    spoken_text,
)
from calls.state import CallState
from providers.base import (
    CallSnapshot,
    OutboundCallRequest,
    PlacedCall,
    Provider,
    ProviderError,
)
from providers.settings import configured_voice

logger = logging.getLogger(__name__)


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
    message = spoken_text(message) if (message or "").strip() else ""

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
        call_id = str(call.id)
        after_commit(Effect.PLACE_CALL, call_id)
        transaction.on_commit(lambda: publish_call_update(call_id))
    logger.info("call %s to %s queued (%s)", call.id, masked(to), mode)
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
        if call.metadata.get(DIAL_UNCONFIRMED_KEY):
            return "unconfirmed"  # already waiting for the carrier's callbacks; never redialed
        if call.metadata.get("dialClaimedAt"):
            finalize(call, CallState.FAILED.value, error=PLACEMENT_INTERRUPTED)
            return "interrupted"
        deadline = config.outbound.placement_timeout_seconds
        if timezone.now() - call.started_at > timedelta(seconds=deadline):
            finalize(call, CallState.FAILED.value, error=PLACEMENT_EXPIRED.format(seconds=deadline))
            logger.warning("call %s not dialed: placement deadline of %s s passed", call.id, deadline)
            return "expired"
        call.metadata = {**call.metadata, "dialClaimedAt": epoch_ms(timezone.now())}
        call.save(update_fields=["metadata", "updated_at"])

    provider = carrier(config)
    # A carrier that requests the media stream with the dial (Telnyx) gets the stream's credential now.
    token = _requested_stream_token(provider, call, config)
    request = OutboundCallRequest(
        call_id=str(call.id),
        to_number=call.to_number,
        from_number=call.from_number,
        mode=call.mode,
        initial_message=call.initial_message or None,
        webhook_url=config.webhook_url(),
        ring_timeout_seconds=max(1, config.ring_timeout_ms // 1000),
        notify_hangup_delay_seconds=config.outbound.notify_hangup_delay_sec,
        voice=configured_voice(config.effective_tts()),  # carriers' native speech (fact sheet §6.1)
        stream_token=token,
    )
    confirmed_by = ""
    try:
        placed = provider.initiate_call(request)
    except ProviderError as exc:
        found = _look_up_placed_call(provider, str(call.id)) if exc.ambiguous else None
        if found:
            placed, confirmed_by = PlacedCall(provider_call_id=found), "lookup"
        elif exc.ambiguous:
            # The carrier may have dialed (its reply was lost) and its API could not show the call:
            # dialing again could ring the callee twice. The claim stays, so nothing redials; the
            # carrier's callbacks carry our call id and bind its leg to this record (ingest), and
            # the reaper ends the call if none come.
            with transaction.atomic():
                locked = Call.objects.select_for_update().get(id=call.id)
                if locked.provider_call_id:  # a callback beat the timeout and bound the leg already
                    locked.metadata = {**locked.metadata, "dialConfirmedBy": "callback"}
                    locked.save(update_fields=["metadata", "updated_at"])
                    return "placed"
                locked.metadata = {**locked.metadata, DIAL_UNCONFIRMED_KEY: epoch_ms(timezone.now())}
                locked.last_error = DIAL_UNCONFIRMED.format(error=exc)[:2000]
                locked.save(update_fields=["metadata", "last_error", "updated_at"])
            logger.warning("call %s: dial not confirmed by the carrier (%s); waiting for its callbacks", call.id, exc)
            publish_call_update(str(call.id))
            return "unconfirmed"
        elif exc.retryable:
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
        else:
            fail_call(str(call.id), str(exc))
            return "failed"

    hang_up_now = False
    with transaction.atomic():
        locked = Call.objects.select_for_update().get(id=call.id)
        # A carrier callback may have beaten the REST response and already stored the final id
        # (Plivo: CallUUID arriving before we stored the provisional RequestUUID): keep it.
        if not locked.provider_call_id:
            locked.provider_call_id = placed.provider_call_id
        elif confirmed_by:
            confirmed_by = "callback"
        if confirmed_by:
            locked.metadata = {**locked.metadata, "dialConfirmedBy": confirmed_by}
        locked.last_error = ""
        locked.save(update_fields=["provider_call_id", "metadata", "last_error", "updated_at"])
        # Ended (e.g. by the operator) while the carrier request was in flight: hang the new leg up.
        hang_up_now = locked.is_terminal
    publish_call_update(str(call.id))
    if hang_up_now:
        safe_hangup(provider, snapshot(locked, config))
    logger.info("call %s placed as %s", call.id, placed.provider_call_id)
    return "placed"


def bind_unconfirmed_dial(call_id: str) -> bool:
    """Look a dial whose reply was lost up at the carrier once more and, when it lists the call,
    bind that leg to the record (the reaper then ends it through the carrier, so no leg of ours is
    left ringing unmanaged). False when the carrier shows nothing (or cannot be asked)."""
    found = _look_up_placed_call(carrier(get_config()), call_id)
    if not found:
        return False
    with transaction.atomic():
        locked = Call.objects.select_for_update().filter(id=call_id).first()
        if locked is None or locked.is_terminal:
            return False
        if not locked.provider_call_id:
            locked.provider_call_id = found
            locked.metadata = {**{k: v for k, v in locked.metadata.items() if k != DIAL_UNCONFIRMED_KEY},
                               "dialConfirmedBy": "lookup"}
            locked.save(update_fields=["provider_call_id", "metadata", "updated_at"])
    publish_call_update(call_id)
    return True


def _look_up_placed_call(provider: Provider, call_id: str) -> str | None:
    """Ask the carrier for the call a lost dial reply may have created (a read, never a dial)."""
    try:
        found = provider.find_placed_call(call_id)
    except ProviderError as exc:
        logger.warning("call %s: looking the dial up at the carrier failed: %s", call_id, exc)
        return None
    if found:
        logger.info("call %s: the carrier lists the dial whose reply was lost", call_id)
    return found


def fail_call(call_id: str, error: str) -> None:
    """Mark a call failed with the carrier's error (placement retries exhausted, bad number...)."""
    with transaction.atomic():
        call = Call.objects.select_for_update().filter(id=call_id).first()
        if call is None or call.is_terminal:
            return
        finalize(call, CallState.FAILED.value, error=error)
    logger.warning("call %s failed: %s", call_id, error)





def safe_hangup(provider: Provider, call: CallSnapshot) -> str | None:
    try:
        provider.hangup_call(call)
    except ProviderError as exc:
        logger.warning("hang-up of call %s failed: %s", call.call_id, exc)
        return str(exc)
    return None


def end_call(call_id: str, *, reason: str = CallState.HANGUP_BOT.value) -> None:
    """Hang up (fact sheet §8.5). Ending an ended call succeeds; a carrier error leaves it live."""
    call = require_call(call_id)
    if call.is_terminal:
        return
    config = get_config()
    if not call.provider_call_id:
        with transaction.atomic():
            locked = Call.objects.select_for_update().get(id=call.id)
            if not locked.provider_call_id and not locked.metadata.get("dialClaimedAt"):
                # Never dialed: cancel it here; place_call sees the terminal state and won't dial.
                finalize(locked, reason)
                return
        raise ServiceError(CALL_NOT_CONNECTED)
    # The carrier's own hang-up report (Telnyx call.hangup, a Twilio status callback) can land before
    # the request below returns; recording the reason first lets that report end the call with it.
    _set_end_requested(str(call.id), reason)
    error = safe_hangup(carrier(config), snapshot(call, config))
    if error:
        _set_end_requested(str(call.id), None)
        raise ServiceError(error)
    with transaction.atomic():
        locked = Call.objects.select_for_update().get(id=call.id)
        finalize(locked, reason)
    # The media layer's consumer holding this call's socket (any process) closes it now.
    if config.live_audio:
        stream_port().close(str(call.id))


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
            finalize(locked, CallState.TIMEOUT.value, error="max duration reached; carrier hang-up failed")
    return True


def reject_inbound_call(provider_name: str, provider_call_id: str) -> bool:
    """Hang up a rejected inbound call exactly once, whatever the carrier retries."""
    provider = carrier()
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
    error = safe_hangup(carrier(config), snapshot(call, config))
    logger.warning("call %s had ended (%s) when its carrier leg %s appeared; hung it up%s", call_id,
                   call.end_reason, call.provider_call_id, f" (failed: {error})" if error else "")
    return error is None


def answer_inbound_call(call_id: str) -> None:
    call = find_call(call_id)
    if call is None or call.is_terminal:
        return
    config = get_config()
    provider = carrier(config)
    call_snapshot = snapshot(call, config)
    token = _requested_stream_token(provider, call, config)
    if token:
        call_snapshot = dataclasses.replace(call_snapshot, stream_token=token)
    provider.answer_call(call_snapshot)


def _requested_stream_token(provider, call: Call, config) -> str | None:
    """The media-stream token of a call whose carrier requests the stream itself (Telnyx: on the dial
    and on the inbound answer), or None when this call gets no stream."""
    if not config.live_audio or provider.media_stream_offer != "request":
        return None
    return stream_port().stream_token(provider, call)
