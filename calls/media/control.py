"""Stream control: stream tokens, the one-stream-per-call lease, and control messages.

The Channels consumer that holds a call's media stream (``calls.media.consumer``) owns that
call's audio. Everything else -- the CLI, RPC, admin, Celery tasks, other daphne processes -- reaches
it through the channel layer group of the call (``group_name``), never by sending audio through
Redis (DESIGN.md "Flows"). This module is the control side of that arrangement, and it is what the
domain's stream port (``calls.services.effects.StreamPort``) is bound to (``register``):

* **Stream token** (fact sheet §3.1/§5.3): ``mint_stream_token`` gives the token the ``<Stream>``
  TwiML carries as ``<Parameter name="token">``; ``check_stream_token`` verifies it timing-safe when
  the stream's ``start`` arrives. The token is ``HMAC-SHA256(SECRET_KEY, call id, nonce)`` truncated to
  16 bytes (base64url, like upstream's 16 random bytes); only the random nonce is stored (call
  metadata ``streamTokenNonce``), so the token itself is in no table and no status output, yet every
  process can re-derive it (all processes of a deployment share ``SECRET_KEY``, as Django requires
  for sessions anyway). Minting is idempotent per call: a replayed or repeated webhook gets the
  same token, never a new one.
* **Lease**: at most one live stream per call across the cluster. With ``REDIS_URL`` it is a Redis key
  (``SET NX PX``, refreshed by its owner, compare-and-delete on release); without Redis it is a row of
  ``StreamLease`` (one per live stream: the refresh is one ``UPDATE`` of that row, never of the
  call). Leases expire after ``LEASE_TTL_MS`` if their daphne process dies without releasing them.
* **Control messages** (``speak``, ``ping``) are sent to the call's group on transaction commit,
  each with an ``id`` and a reply channel; the consumer acknowledges. A speech message nobody
  acknowledges within ``ACK_TIMEOUT_S`` is reported (``ServiceError``), not silently dropped. The
  ``hangup`` after an ``end`` is not acknowledged (``close_stream``): the carrier ends the stream of
  a call it hung up anyway, the message only makes the close immediate. The wait is sync code
  (CLI, Celery, RPC threads) blocking on a channel-layer receive via ``async_to_sync``. The
  acknowledgement means "queued for playback": a TTS failure after it is recorded on the call
  (``last_error``, the utterance marked ``interrupted``), not raised to the speaker.
* **The port**: speech on a call with a live stream comes here (``speak_via_stream``; the
  transcript and state are written by ``calls.services.turns``); ``end_call`` closes the stream
  after the carrier hang-up; a webhook reply asks ``stream_token`` for the token its ``<Stream>``
  carries.
* **Recording** what happened on the stream (caller speech, DTMF, played/interrupted utterances)
  goes through ``services.apply_event`` like every carrier event.

Admission caps (``streaming.maxConnections`` …) are enforced per daphne process by the consumer;
only the lease is cluster-wide.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from calls import services
from calls.config import get_config
from calls.models import Call, Speaker, StreamLease, TranscriptEntry
from calls.services import ingest, turns
from calls.services.call_updates import publish_call_update
from calls.services.effects import register_streams
from calls.services.records import STREAM_TOKEN_NONCE_KEY as TOKEN_NONCE_KEY
from calls.services.records import carrier
from calls.state import CallState
from providers.base import EventType, NormalizedEvent
from providers.media_stream import streaming_possible

logger = logging.getLogger(__name__)

GROUP_PREFIX = "voicecall.stream."
LEASE_REDIS_PREFIX = "voicecall:stream-lease:"
RECONNECTS_KEY = "streamReconnects"  # call metadata: streams that came back within the grace period
LEASE_TTL_MS = 15_000
LEASE_REFRESH_SECONDS = 5.0
ACK_TIMEOUT_S = 5.0
DISCONNECT_GRACE_S = 2.0  # fact sheet §5.5: a reconnect within this window keeps the call

# Messages (close reasons are logged; daphne sends only the close code).
UNKNOWN_CALL = "Unknown call"
DUPLICATE_STREAM = "Call already has a live media stream"
STREAM_NOT_ACKNOWLEDGED = "Media stream did not acknowledge {what} within {seconds:g}s (message {id})"
STREAM_COMMAND_FAILED = "Media stream refused {what}: {error}"


class StreamRefused(Exception):
    """A ``start`` that may not attach to a call; ``str(err)`` is the reason logged on close."""


@dataclass(frozen=True)
class AdmittedStream:
    call_id: str
    provider_call_id: str
    direction: str
    mode: str
    # The initial message not yet spoken, as read by the check: the stream may start synthesizing it
    # while it attaches (``attach_stream`` then claims it, or another path spoke it meanwhile).
    pending_greeting: str = ""


def group_name(call_id: str) -> str:
    """The channel-layer group of a call's media stream consumer."""
    return f"{GROUP_PREFIX}{call_id}"


# --------------------------------------------------------------------------------------------------
# Stream token
# --------------------------------------------------------------------------------------------------


def _derive_token(call_id: str, nonce: str) -> str:
    digest = hmac.new(
        settings.SECRET_KEY.encode(), f"voicecall-media-stream|{call_id}|{nonce}".encode(), hashlib.sha256
    ).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode("ascii")


def mint_stream_token(call: Call | str) -> str:
    """The token for this call's ``<Stream>`` TwiML; the same token every time it is asked for."""
    call_id = str(call.id if isinstance(call, Call) else call)
    known = (call.metadata or {}).get(TOKEN_NONCE_KEY) if isinstance(call, Call) else None
    if known:  # a nonce is never replaced: no need to read the row again
        return _derive_token(call_id, known)
    with transaction.atomic():
        locked = Call.objects.select_for_update().get(id=call_id)
        nonce = (locked.metadata or {}).get(TOKEN_NONCE_KEY)
        if not nonce:
            nonce = secrets.token_urlsafe(16)
            locked.metadata = {**(locked.metadata or {}), TOKEN_NONCE_KEY: nonce}
            locked.save(update_fields=["metadata", "updated_at"])
    return _derive_token(call_id, nonce)


def stream_token(provider: Any, call: Call) -> str | None:
    """The token a call's media stream must present, when this call is to be connected to one: a live
    conversation call (notify calls keep the carrier's voice, fact sheet §6.1) on a carrier with media
    streams while streaming is possible (enabled, a public URL, telephony TTS usable); else None.
    Twilio and Plivo carry it in the webhook reply, Telnyx in the dial or answer request."""
    if not provider.media_stream_offer or call.is_terminal or call.mode != "conversation":
        return None
    if not streaming_possible(provider.settings):
        return None
    return mint_stream_token(call)


def check_stream_token(call: Call, token: str | None) -> bool:
    """Timing-safe check of a ``start`` token against the one minted for this call."""
    nonce = (call.metadata or {}).get(TOKEN_NONCE_KEY)
    if not nonce or not token:
        return False
    return hmac.compare_digest(_derive_token(str(call.id), str(nonce)).encode(), str(token).encode())


# --------------------------------------------------------------------------------------------------
# One stream per call: the lease
# --------------------------------------------------------------------------------------------------

_REFRESH_LUA = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_RELEASE_LUA = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
_redis_client = None
_redis_lock = threading.Lock()


def _redis():
    global _redis_client
    if not settings.REDIS_URL:
        return None
    with _redis_lock:
        if _redis_client is None or getattr(_redis_client, "_voicecall_url", None) != settings.REDIS_URL:
            import redis

            _redis_client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=3)
            _redis_client._voicecall_url = settings.REDIS_URL
        return _redis_client


def _lease_key(call_id: str) -> str:
    return f"{LEASE_REDIS_PREFIX}{call_id}"


def _lease_expiry():
    return timezone.now() + timedelta(milliseconds=LEASE_TTL_MS)


def claim_lease(call_id: str, owner: str, stream_sid: str = "") -> bool:
    """Take (or renew) the call's stream lease for ``owner``; False when another live stream has it."""
    client = _redis()
    if client is not None:
        if client.set(_lease_key(call_id), owner, nx=True, px=LEASE_TTL_MS):
            return True
        return bool(client.eval(_REFRESH_LUA, 1, _lease_key(call_id), owner, LEASE_TTL_MS))
    with transaction.atomic():
        lease = StreamLease.objects.select_for_update().filter(call_id=call_id).first()
        if lease is None:
            if not Call.objects.filter(id=call_id).exists():
                return False
            # A concurrent first claim of the same call loses on the primary key, as it should.
            try:
                with transaction.atomic():
                    StreamLease.objects.create(call_id=call_id, owner=owner, stream_sid=stream_sid,
                                               expires_at=_lease_expiry())
            except IntegrityError:
                return False
            return True
        if lease.owner != owner and lease.expires_at > timezone.now():
            return False
        lease.owner, lease.expires_at = owner, _lease_expiry()
        lease.stream_sid = stream_sid or lease.stream_sid
        lease.save()
    return True


def refresh_lease(call_id: str, owner: str) -> bool:
    """Extend ``owner``'s lease; False when it was lost (expired and taken by another stream).
    One statement either way: a Redis script, or one ``UPDATE`` of the lease row."""
    client = _redis()
    if client is not None:
        return bool(client.eval(_REFRESH_LUA, 1, _lease_key(call_id), owner, LEASE_TTL_MS))
    return StreamLease.objects.filter(call_id=call_id, owner=owner).update(expires_at=_lease_expiry()) == 1


def release_lease(call_id: str, owner: str) -> None:
    """Give the lease up (only if ``owner`` still holds it)."""
    client = _redis()
    if client is not None:
        client.eval(_RELEASE_LUA, 1, _lease_key(call_id), owner)
        return
    StreamLease.objects.filter(call_id=call_id, owner=owner).delete()


def has_live_stream(call_id: str) -> bool:
    """Whether some process holds a live media stream for this call right now."""
    client = _redis()
    if client is not None:
        return bool(client.exists(_lease_key(str(call_id))))
    return StreamLease.objects.filter(call_id=call_id, expires_at__gt=timezone.now()).exists()


def check_start(*, call_sid: str, token: str | None, call_id: str | None = None) -> AdmittedStream:
    """A ``start`` may attach to its call: a live call of this carrier with the right token -- found
    by our call id when the stream URL carries it (then the carrier's id in ``start`` must be the
    call's, once we know it), else by the carrier's call id. Raises ``StreamRefused`` (one message
    for "no such call", "ended" and "bad token": a prober learns nothing)."""
    config = get_config()
    if call_id:
        call = Call.objects.filter(provider=config.provider, id=call_id).first()
        if call is not None and call.provider_call_id and call.provider_call_id != call_sid:
            call = None
    else:
        call = Call.objects.filter(provider=config.provider, provider_call_id=call_sid).first()
    if call is None or call.is_terminal or not check_stream_token(call, token):
        raise StreamRefused(UNKNOWN_CALL)
    return AdmittedStream(
        call_id=str(call.id), provider_call_id=call_sid, direction=call.direction, mode=call.mode,
        pending_greeting="" if call.initial_message_delivered else (call.initial_message or ""),
    )


def take_lease(call_id: str, owner: str, stream_sid: str) -> None:
    """Make ``owner`` the call's one live stream; ``StreamRefused`` if another stream holds it."""
    if not claim_lease(call_id, owner, stream_sid):
        raise StreamRefused(DUPLICATE_STREAM)


def attach_stream(call_id: str, owner: str, stream_sid: str, *, speak_greeting: bool) -> turns.StreamGreeting | None:
    """Everything a started stream needs from the database, in one trip off the event loop: take the
    call's lease (``StreamRefused`` if another stream holds it) and, when the stream can speak,
    claim the pending greeting for it to play at once."""
    take_lease(call_id, owner, stream_sid)
    if not speak_greeting:
        return None
    try:
        return turns.claim_stream_greeting(call_id)
    except Exception:
        release_lease(call_id, owner)
        raise


def detach_stream(call_id: str, owner: str, greeting: turns.StreamGreeting | None) -> None:
    """A stream that went away while it attached: the lease goes back, and an unplayed greeting with it."""
    release_lease(call_id, owner)
    if greeting is not None:
        turns.withdraw_stream_greeting(call_id, greeting.entry_id)


def keep_lease(call_id: str, owner: str, stream_sid: str) -> bool:
    """The owner's periodic refresh; a lease that lapsed but nobody took is taken again."""
    return refresh_lease(call_id, owner) or claim_lease(call_id, owner, stream_sid)


# --------------------------------------------------------------------------------------------------
# Control messages to the consumer (sent on commit, acknowledged)
# --------------------------------------------------------------------------------------------------


def _layers():
    from channels.layers import DEFAULT_CHANNEL_LAYER, channel_layers, get_channel_layer

    return DEFAULT_CHANNEL_LAYER, channel_layers, get_channel_layer()


async def _wait_for_ack(layer, reply_channel: str, message_id: str, timeout: float) -> dict[str, Any] | None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return None
        try:
            reply = await asyncio.wait_for(layer.receive(reply_channel), remaining)
        except TimeoutError:
            return None
        if isinstance(reply, dict) and reply.get("id") == message_id:
            return reply


@contextlib.asynccontextmanager
async def _command_layer():
    """The channel layer for one command from a sync caller. With channels-redis a private instance
    (its connections closed after): one instance's ``receive`` must stay on one event loop, and sync
    callers in different threads (Celery, RPC) each bring their own loop. The in-memory layer only
    works through the shared instance."""
    alias, registry, shared = _layers()
    private = hasattr(shared, "close_pools")
    layer = registry.make_backend(alias) if private else shared
    try:
        yield layer
    finally:
        if private:
            await layer.close_pools()


async def _round_trip(call_id: str, payload: dict[str, Any], timeout: float) -> dict[str, Any] | None:
    """group_send + wait for the ack on a fresh reply channel."""
    async with _command_layer() as layer:
        reply_channel = await layer.new_channel("voicecall-ack.")
        await layer.group_send(group_name(call_id), {**payload, "reply_channel": reply_channel})
        return await _wait_for_ack(layer, reply_channel, payload["id"], timeout)


async def _send_unacknowledged(call_id: str, payload: dict[str, Any]) -> None:
    async with _command_layer() as layer:
        await layer.group_send(group_name(call_id), {**payload, "reply_channel": None})


def _send_on_commit(call_id: str, payload: dict[str, Any]) -> None:
    """Send ``payload`` without waiting for an ack: at once outside a transaction, else on commit
    (no consumer ever acts on a change that rolls back)."""
    if connection.in_atomic_block:
        transaction.on_commit(lambda: async_to_sync(_send_unacknowledged)(call_id, payload))
    else:
        async_to_sync(_send_unacknowledged)(call_id, payload)


@dataclass(frozen=True)
class CommandResult:
    """What became of one control message: ``ack`` is the consumer's reply, None when nobody answered
    within the timeout; ``deferred`` when it was queued inside an open transaction (it leaves at
    commit; nobody can wait for it here)."""

    id: str
    ack: dict[str, Any] | None
    deferred: bool = False
    timeout: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.ack and self.ack.get("ok"))


def send_stream_command(call_id: str, message: dict[str, Any], *, timeout: float | None = None) -> CommandResult:
    """Send ``message`` to the call's stream consumer once the current transaction has committed and
    wait for its acknowledgement.

    Called outside a transaction (the normal case: services commit first) the message goes right
    away; inside one it is queued with ``transaction.on_commit`` so no consumer ever acts on a change
    that rolls back, and the result says ``deferred``.
    """
    message_id = uuid.uuid4().hex
    payload = {**message, "id": message_id}
    if _layers()[2] is None:
        return CommandResult(id=message_id, ack=None)
    if connection.in_atomic_block:
        _send_on_commit(call_id, payload)
        return CommandResult(id=message_id, ack=None, deferred=True)
    ack = async_to_sync(_round_trip)(call_id, payload, timeout or ACK_TIMEOUT_S)
    if ack is None:
        logger.warning("media stream of call %s did not acknowledge %s %s", call_id, message.get("type"), message_id)
    return CommandResult(id=message_id, ack=ack, timeout=timeout or ACK_TIMEOUT_S)


def speak_via_stream(call: Call, text: str, *, listen_after: bool, turn_token: str | None) -> int | None:
    """The stream port's ``speak``: record the utterance, hand it to the consumer holding the socket
    (TTS over the stream), and require its acknowledgement.

    The transcript entry is written first so the consumer can mark it ``interrupted`` on barge-in; if
    the consumer never acknowledges, the entry is removed and the failure reported (``ServiceError``).
    """
    call_id = str(call.id)
    utterance = turns.begin_stream_utterance(call_id, text, turn_token=turn_token)
    result = send_stream_command(
        call_id,
        {"type": "stream.speak", "text": text, "entry_id": utterance.entry_id, "initial": utterance.initial},
    )
    if result.deferred:
        return utterance.entry_id
    error = None
    if result.ack is None:
        error = STREAM_NOT_ACKNOWLEDGED.format(what="speech", seconds=result.timeout, id=result.id)
    elif not result.ok:
        error = STREAM_COMMAND_FAILED.format(what="speech", error=result.ack.get("error") or "unknown error")
    turns.settle_stream_utterance(call_id, utterance.entry_id, error=error, listen_after=listen_after)
    return utterance.entry_id


def ping_stream(call_id: str, *, timeout: float | None = None) -> float | None:
    """Round-trip seconds to the consumer holding the call's stream, or None when nobody answers
    (an operator's liveness check; the benchmark's control-plane baseline)."""
    started = time.perf_counter()
    result = send_stream_command(call_id, {"type": "stream.ping"}, timeout=timeout)
    return time.perf_counter() - started if result.ok else None


def close_stream(call_id: str) -> bool:
    """Tell the consumer of an ended call to close its socket now, without its reconnect grace; True
    when a stream was live to be told.

    Not acknowledged: the carrier hang-up already happened and every carrier stops the stream of a
    call it ended, so the message only makes the close immediate. Waiting for an ack made ``end``
    wait the whole ack timeout whenever the carrier's own close won the race (the consumer, already
    cleaning up, never handles the message), and then cancel a channel-layer receive.
    """
    if _layers()[2] is None or not has_live_stream(call_id):
        return False
    _send_on_commit(call_id, {"type": "stream.hangup", "id": uuid.uuid4().hex})
    return True


# --------------------------------------------------------------------------------------------------
# What happened on the stream (called by the consumer through database_sync_to_async)
# --------------------------------------------------------------------------------------------------


def _apply(build: Callable[[str], NormalizedEvent]) -> ingest.EventOutcome:
    """Apply a stream event built for this carrier (``build`` gets its name, for the dedupe key)."""
    provider = carrier()
    with transaction.atomic():
        return ingest.apply_event(provider, build(provider.name))


def record_caller_speech(*, call_id: str, call_sid: str, stream_sid: str, item_id: str, text: str) -> bool:
    """A final transcript from the stream's STT: a ``call.speech`` event carrying the call's pending
    turn token (read under the row lock), so a waiting ``continue`` gets it. True when recorded."""
    provider = carrier()
    with transaction.atomic():
        call = Call.objects.select_for_update().filter(id=call_id).first()
        if call is None or call.is_terminal:
            return False
        event = NormalizedEvent(
            type=EventType.SPEECH,
            dedupe_key=f"{provider.name}:stream:{stream_sid}:speech:{item_id or uuid.uuid4().hex}",
            call_id=call_id,
            provider_call_id=call_sid,
            transcript=text,
            is_final=True,
            turn_token=call.pending_turn_token or None,
            raw={"streamSid": stream_sid, "itemId": item_id},
        )
        # A caller utterance no ``continue`` waits for goes to the auto-responder (apply_event queues it).
        outcome = ingest.apply_event(provider, event)
    return bool(outcome.user_transcript)


def record_dtmf(*, call_id: str, call_sid: str, stream_sid: str, sequence: str, digit: str) -> None:
    _apply(lambda carrier_name: NormalizedEvent(
        type=EventType.DTMF,
        dedupe_key=f"{carrier_name}:stream:{stream_sid}:dtmf:{sequence or uuid.uuid4().hex}",
        call_id=call_id,
        provider_call_id=call_sid,
        digits=digit,
        raw={"streamSid": stream_sid, "sequenceNumber": sequence},
    ))


def record_utterance_played(*, call_id: str, call_sid: str, stream_sid: str, mark: str, text: str) -> None:
    """The carrier reached an utterance's mark (Twilio/Telnyx mark echo, Plivo ``playedStream``): its
    audio has played (``call.spoken`` in the ledger)."""
    _apply(lambda carrier_name: NormalizedEvent(
        type=EventType.SPOKEN,
        dedupe_key=f"{carrier_name}:stream:{stream_sid}:mark:{mark}",
        call_id=call_id,
        provider_call_id=call_sid,
        text=text[:500],
        raw={"streamSid": stream_sid, "mark": mark},
    ))


def mark_interrupted(*, call_id: str, entry_ids: list[int]) -> int:
    """Bot utterances cut off by barge-in (or never played): the transcript says so."""
    if not entry_ids:
        return 0
    count = TranscriptEntry.objects.filter(call_id=call_id, id__in=entry_ids, speaker=Speaker.BOT).update(
        interrupted=True
    )
    publish_call_update(call_id)
    return count


def record_bot_line(*, call_id: str, text: str, interrupted: bool = False, latency_ms: int | None = None) -> int | None:
    """A line the realtime model said on its own (its answer to the caller): into the transcript,
    with the turn latency (caller speech end -> first audio frame out). None when the call is gone."""
    if not Call.objects.filter(id=call_id).exists():
        return None
    entry = TranscriptEntry.objects.create(call_id=call_id, speaker=Speaker.BOT, text=text[:4000],
                                           interrupted=interrupted, latency_ms=latency_ms)
    publish_call_update(call_id)
    return entry.id


def settle_bot_line(*, call_id: str, entry_id: int, heard_text: str | None, latency_ms: int | None) -> None:
    """A line we asked the realtime model to say (greeting, ``speak``): cut off by the caller, it keeps
    only the part that was heard and is marked interrupted; its latency is stored either way."""
    fields: dict[str, Any] = {}
    if heard_text is not None:
        fields.update(text=heard_text[:4000], interrupted=True)
    if latency_ms is not None:
        fields["latency_ms"] = latency_ms
    if fields:
        TranscriptEntry.objects.filter(id=entry_id, call_id=call_id, speaker=Speaker.BOT).update(**fields)
        publish_call_update(call_id)


def end_call_from_stream(call_id: str, *, error: str | None = None) -> str | None:
    """End the call from its stream (the realtime model's ``end_call`` tool, a closed session, an idle
    caller): the carrier hang-up, as ``end`` does. Returns the refusal message, None when ended."""
    if error:
        record_stream_error(call_id=call_id, error=error)
    return _hang_up(call_id, "hang-up from its stream refused")[1]


def _hang_up(call_id: str, refused: str) -> tuple[bool, str | None]:
    """``services.end_call`` (``hangup-bot``) for a live call: (ended here, the refusal if any)."""
    call = services.find_call(call_id)
    if call is None or call.is_terminal:
        return False, None
    try:
        services.end_call(call_id, reason=CallState.HANGUP_BOT.value)
    except services.ServiceError as exc:
        logger.warning("call %s: %s: %s", call_id, refused, exc)
        return False, str(exc)
    return True, None


def record_stream_error(*, call_id: str, error: str) -> None:
    Call.objects.filter(id=call_id).update(last_error=error[:2000])


def end_call_after_stream_loss(call_id: str) -> bool:
    """After the disconnect grace: end the call (``hangup-bot``) unless a new stream took it over.
    True when the call was ended here."""
    if has_live_stream(call_id):
        with transaction.atomic():
            call = Call.objects.select_for_update().filter(id=call_id).first()
            if call is not None:
                metadata = dict(call.metadata or {})
                metadata[RECONNECTS_KEY] = int(metadata.get(RECONNECTS_KEY) or 0) + 1
                call.metadata = metadata
                call.save(update_fields=["metadata", "updated_at"])
        logger.info("call %s kept: its media stream reconnected within the grace period", call_id)
        return False
    ended, _ = _hang_up(call_id, "lost its media stream; hang-up failed")
    if ended:
        logger.info("call %s ended: media stream closed without reconnect", call_id)
    return ended


class MediaStreams:
    """The domain's stream port (``calls.services.effects.StreamPort``), bound to this module."""

    has_live_stream = staticmethod(has_live_stream)
    speak = staticmethod(speak_via_stream)
    stream_token = staticmethod(stream_token)
    close = staticmethod(close_stream)


def register() -> None:
    """Bind the domain's stream port to the media layer (``calls.apps`` does it at start-up)."""
    register_streams(MediaStreams())
