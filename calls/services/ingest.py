"""Carrier events into the ledger: dedupe, find or create the call, transition, transcript, and the
webhook reply rendered in the same transaction (fact sheet §2.4, §2.5, §4.1, §7.1).

A ``CallEvent`` row's unique ``dedupe_key`` and a ``WebhookReceipt``'s unique request key are what
make a second delivery -- from any process, after any restart -- a no-op.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import re
import uuid
from dataclasses import dataclass, field
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
from calls.services.call_updates import publish_call_update
from calls.services.effects import Effect, after_commit, stream_port
from calls.services.records import (
    DEFAULT_INBOUND_GREETING,
    DIAL_UNCONFIRMED_KEY,
    END_REQUESTED_KEY,
    STREAM_FAILED,
    STREAM_FAILED_KEY,
    expects_stream,
    finalize,
    masked,
    snapshot,
    transition,
)
from calls.services.responder import queue_auto_reply
from calls.state import CallState
from providers.base import (
    EventType,
    NormalizedEvent,
    Provider,
    WebhookParseError,
    WebhookReply,
)

logger = logging.getLogger(__name__)


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


# What a progress event (initiated, ringing, answered, ...) changes on the call row.
STATE_FIELDS = ["state", "updated_at"]
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


def insert_unless_present(model, unique_field: str, values: dict[str, Any]) -> int | None:
    """``INSERT ... ON CONFLICT (unique_field) DO NOTHING RETURNING id`` (PostgreSQL, SQLite 3.35+):
    the new row's id, or None when a row with that unique value exists -- one statement, where a
    savepoint around ``create`` and its ``IntegrityError`` cost three."""
    fields = [model._meta.get_field(name) for name in values]
    table = connection.ops.quote_name(model._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    params = [f.get_db_prep_save(values[f.name], connection) for f in fields]
    conflict = connection.ops.quote_name(model._meta.get_field(unique_field).column)
    placeholders = ", ".join(["%s"] * len(fields))
    returning = connection.ops.quote_name("id")
    # Identifiers come from the model's metadata, quoted; every value is a query parameter.
    sql = f"INSERT INTO {table} ({columns}) VALUES ({placeholders}) ON CONFLICT ({conflict}) DO NOTHING RETURNING {returning}"  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return row[0] if row else None


def apply_event(provider: Provider, event: NormalizedEvent) -> EventOutcome:
    """Apply one carrier event exactly once: dedupe, find or create the call, transition, transcript.

    Runs inside the caller's transaction (``process_events``); the ledger row's unique
    ``dedupe_key`` is what makes a second delivery — from any process, after any restart — a no-op.
    """
    event = storable_event(event)
    config = get_config()
    outcome = EventOutcome()
    # The call is locked before the ledger row is written, so the row is written with it (one
    # statement instead of an insert and an update) and duplicates of one event queue on the call.
    call = _find_call_for_event(provider.name, event)
    ledger_id = insert_unless_present(CallEvent, "dedupe_key", {
        "provider": provider.name,
        "type": event.type.value,
        "dedupe_key": event.dedupe_key[:200],
        "provider_call_id": event.provider_call_id or "",
        "payload": _event_payload(event),
        "received_at": timezone.now(),
        "call": call.id if call is not None else None,
    })
    if ledger_id is None:
        outcome.duplicate = True
        return outcome

    if call is None:
        call = _register_unknown_call(provider, event, outcome)
        if call is None:
            outcome.ignored = True
            return outcome
        CallEvent.objects.filter(id=ledger_id).update(call=call)
    outcome.call = call

    if (
        event.provider_call_id
        and event.provider_call_id != call.provider_call_id
        and (not call.provider_call_id or event.previous_provider_call_id == call.provider_call_id)
    ):
        stray_leg = call.is_terminal and not call.provider_call_id and event.type not in LEG_GONE_EVENTS
        call.provider_call_id = event.provider_call_id
        update = ["provider_call_id", "updated_at"]
        if (call.metadata or {}).get(DIAL_UNCONFIRMED_KEY) and not call.is_terminal:
            # The dial whose reply was lost did ring: its callback bound the leg to this record.
            call.metadata = {k: v for k, v in call.metadata.items() if k != DIAL_UNCONFIRMED_KEY}
            call.metadata["dialConfirmedBy"] = "callback"
            call.last_error = ""
            update += ["metadata", "last_error"]
        call.save(update_fields=update)
        if stray_leg:
            # We ended this call before we ever learned its carrier id (a dial whose worker died was
            # failed, not redialed; placement retries ran out after a timeout), yet the carrier placed
            # it after all. Hang that leg up rather than leave the callee listening to silence.
            after_commit(Effect.HANG_UP_STRAY_LEG, str(call.id))

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
    config = get_config()
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
        after_commit(Effect.REJECT_INBOUND_CALL, provider.name, event.provider_call_id)
        outcome.rejected = True
        logger.info("inbound call %s from %s rejected by policy %s", event.provider_call_id, masked(event.from_number),
                    config.inbound_policy)
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


def _apply_to_call(
    provider: Provider, config: VoiceCallConfig, call: Call, event: NormalizedEvent, outcome: EventOutcome
) -> None:
    call_id = str(call.id)
    if call.is_terminal:
        return
    kind = event.type
    # Progress events write only what they change (a status callback is the commonest request).
    if kind == EventType.INITIATED:
        if transition(call, CallState.INITIATED.value):
            call.save(update_fields=STATE_FIELDS)
        if call.direction == Direction.INBOUND and provider.answers_inbound_by_rest:
            after_commit(Effect.ANSWER_INBOUND_CALL, call_id)
    elif kind == EventType.RINGING:
        if transition(call, CallState.RINGING.value):
            call.save(update_fields=STATE_FIELDS)
    elif kind == EventType.ANSWERED:
        changed = transition(call, CallState.ANSWERED.value)
        first_answer = call.answered_at is None
        if first_answer:
            call.answered_at = timezone.now()
        if changed or first_answer:
            call.save(update_fields=[*STATE_FIELDS, "answered_at"])
        if first_answer:
            after_commit(Effect.ENFORCE_MAX_DURATION, call_id, delay=config.max_duration_seconds)
            # A streamed call's greeting is claimed by its stream when it starts, and the stream listens.
            if not provider.speaks_initial_message_in_reply and not expects_stream(call):
                _speak_or_listen(call)
    elif kind == EventType.ACTIVE:
        if transition(call, CallState.ACTIVE.value):
            call.save(update_fields=STATE_FIELDS)
    elif kind == EventType.SPEAKING:
        if transition(call, CallState.SPEAKING.value):
            call.save(update_fields=STATE_FIELDS)
    elif kind == EventType.SPOKEN:
        if provider.reports_playback_end:
            if call.mode == Mode.NOTIFY and call.initial_message_delivered:
                delay = config.outbound.notify_hangup_delay_sec
                after_commit(Effect.HANG_UP_AFTER_NOTIFY, call_id, delay=delay)
            elif call.mode == Mode.CONVERSATION and not expects_stream(call):
                after_commit(Effect.START_LISTENING, call_id)
    elif kind == EventType.SPEECH:
        _apply_speech(provider, call, event, outcome)
    elif kind == EventType.ENDED:
        # A hang-up we requested ends with our reason, whichever of us finalizes first (end_call).
        requested = (call.metadata or {}).get(END_REQUESTED_KEY)
        finalize(call, requested or event.reason or CallState.COMPLETED.value)
    elif kind == EventType.ERROR:
        if not event.retryable:
            finalize(call, CallState.ERROR.value, error=event.error or "unknown error")
        else:
            call.last_error = (event.error or "")[:2000]
            call.save(update_fields=["last_error", "updated_at"])
    elif kind == EventType.STREAM_FAILED:
        _stream_failed(call, event)
    # call.silence, call.dtmf and the stream's started/stopped reports are kept in the ledger only.


def _speak_or_listen(call: Call) -> None:
    """A call the carrier speaks on: say the pending greeting, or (a conversation) start listening."""
    if call.initial_message and not call.initial_message_delivered:
        after_commit(Effect.DELIVER_INITIAL_MESSAGE, str(call.id))
    elif call.mode == Mode.CONVERSATION:
        after_commit(Effect.START_LISTENING, str(call.id))


def _stream_failed(call: Call, event: NormalizedEvent) -> None:
    """The carrier could not connect the call's media stream: the call goes on with carrier speech
    (the carrier speaks the greeting and then listens with its own recognition). A stream that was
    live and dropped is the media layer's business (its reconnect grace ends the call): once the
    stream has claimed the greeting, this only records the error."""
    if not expects_stream(call):
        return
    reason = (event.error or "no reason given")[:300]
    call.metadata = {**(call.metadata or {}), STREAM_FAILED_KEY: True}
    call.last_error = STREAM_FAILED.format(reason=reason)[:2000]
    call.save(update_fields=["metadata", "last_error", "updated_at"])
    logger.warning("call %s: media stream failed (%s); using carrier speech", call.id, reason)
    if call.answered_at is not None and call.initial_message and not call.initial_message_delivered:
        after_commit(Effect.DELIVER_INITIAL_MESSAGE, str(call.id))


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
    config = get_config()
    if not token and not config.realtime.enabled:  # a realtime model answers the caller itself
        queue_auto_reply(config, call, entry)
    if token:
        call.pending_turn_token = ""
        call.pending_turn_started_at = None
    transition(call, CallState.LISTENING.value)
    call.save()


def process_events(provider: Provider, events: list[NormalizedEvent]) -> list[EventOutcome]:
    with transaction.atomic():
        return [apply_event(provider, event) for event in events]


@dataclass
class WebhookResult:
    reply: WebhookReply
    replay: bool = False
    outcomes: list[EventOutcome] = field(default_factory=list)


def process_webhook(
    provider: Provider, request, request_key: str, *, equivalent_keys: tuple[str, ...] = ()
) -> WebhookResult:
    """A verified webhook: replay check, parse, apply every event, render the reply — one transaction.

    A request whose key (or one of its ``equivalent_keys``: the same request under another signature
    version) was seen before -- any process, any time in the retention window -- gets the stored
    reply and changes nothing. Raises ``WebhookParseError`` for bodies the carrier would never send.
    """
    keys = [request_key[:200], *(k[:200] for k in equivalent_keys if k and k != request_key)]
    if len(keys) > 1:
        # Only another version's key may have been stored (a V2-only copy of a V3-signed request):
        # the receipt insert below could not see that one.
        previous = WebhookReceipt.objects.filter(request_key__in=keys).first()
        if previous is not None:
            return WebhookResult(_stored_reply(previous), replay=True)
    config = get_config()
    parsed = provider.parse_webhook(request, request_key)
    with transaction.atomic():
        receipt_id = insert_unless_present(WebhookReceipt, "request_key", {
            "request_key": keys[0], "provider": provider.name, "status_code": 200, "content_type": "text/plain",
            "body": "", "received_at": timezone.now(),
        })
        if receipt_id is None:  # a replay, or a concurrent delivery of the same request got there first
            previous = WebhookReceipt.objects.filter(request_key__in=keys).first()
            return WebhookResult(_stored_reply(previous) if previous else WebhookReply(), replay=True)
        outcomes = [apply_event(provider, event) for event in parsed.events]
        call = next((o.call for o in reversed(outcomes) if o.call is not None), None)
        if any(o.rejected for o in outcomes):
            reply = provider.rejected_reply(request)
        else:
            # ``call`` is the row-locked instance every event was applied to: already current.
            call_snapshot = snapshot(call, config) if call else None
            # A call to be connected to a media stream carries the token its stream must present
            # (minted once per call by the media layer; a replay never gets here).
            if call is not None and config.live_audio and provider.media_stream_offer == "reply":
                token = stream_port().stream_token(provider, call)
                if token:
                    call_snapshot = dataclasses.replace(call_snapshot, stream_token=token)
            reply = provider.render_reply(request, parsed, call_snapshot)
            if call is not None and reply.spoken_text:
                _record_reply_speech(call, reply)
        WebhookReceipt.objects.filter(id=receipt_id).update(
            status_code=reply.status, content_type=reply.content_type, body=reply.body
        )
        for key in keys[1:]:
            WebhookReceipt.objects.get_or_create(
                request_key=key,
                defaults={"provider": provider.name, "status_code": reply.status,
                          "content_type": reply.content_type, "body": reply.body},
            )
    return WebhookResult(reply, outcomes=outcomes)


def _stored_reply(receipt: WebhookReceipt) -> WebhookReply:
    return WebhookReply(status=receipt.status_code, content_type=receipt.content_type, body=receipt.body)


def _record_reply_speech(call: Call, reply: WebhookReply) -> None:
    """The carrier reply itself speaks (TwiML <Say>, Plivo <Speak>): record it like any utterance."""
    call = Call.objects.select_for_update().get(id=call.id)
    TranscriptEntry.objects.create(call=call, speaker=Speaker.BOT, text=reply.spoken_text or "")
    if reply.delivers_initial_message:
        call.initial_message_delivered = True
    transition(call, CallState.LISTENING.value if reply.listens else CallState.SPEAKING.value)
    call.save()
