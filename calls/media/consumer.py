"""The media-stream endpoint: one Channels consumer per WebSocket at ``streaming.streamPath``.

One engine for every carrier with media streams: the configured provider's ``StreamWire``
(``providers/media_stream.py``: Twilio, Telnyx, Plivo) turns its frames into start / media / played /
DTMF / stop and builds our audio, mark and clear frames; everything else here is carrier-neutral.

What a socket goes through (OpenClaw fact sheet §5):

1. **Admission** (§5.2, ``calls.media.admission``). Over ``streaming.maxConnections`` the upgrade is
   refused (daphne answers a refused upgrade with HTTP 403 -- it has no way to send upstream's 503).
   A new socket is *pending* until a valid ``start``: over the pending caps it is accepted and
   closed with 1013; a pending socket without a valid ``start`` within ``preStartTimeoutMs`` is
   closed with 1008. **All these caps are per daphne process**; only "one stream per call" is
   cluster-wide (the lease in ``calls.media.control``).
2. **start**: the carrier's call id (or our call id from the stream URL) must belong to a live call
   of this carrier, the ``token`` must match the one minted for it (timing-safe) and the announced
   audio must be mu-law 8 kHz; a call that already has a live stream anywhere is refused. All
   refusals close with 1008, before any call audio is sent. On success the consumer joins the call's
   channel-layer group, takes the lease and claims the pending initial message in one database trip,
   starts playing that greeting itself at once -- its TTS request left as soon as the token checked out,
   in parallel with the group join and that trip, and is dropped if another path spoke the greeting
   meanwhile (the only case where a synthesis is wasted) -- and opens the realtime STT session once
   that greeting's first frame is out, at most ``STT_AFTER_GREETING_MAX_S`` later (it queues the
   caller's audio until it is connected; many starts at once then spend the loop on first audio) --
   or, with ``realtime.enabled``, hands the stream to a ``calls.media.realtime.RealtimeBridge``
   (the model speaks and listens; same playback and marks).
3. **Frames**: ``media`` goes to STT untouched (mu-law in, no transcoding), ``dtmf`` becomes a
   ``call.dtmf`` event, a played mark (Plivo: checkpoint) confirms an utterance played, ``stop`` (or,
   on Plivo, the socket closing) ends the stream. Frames over 64 KB, binary frames, malformed JSON
   and malformed base64 are ignored (counted) -- they never end the call.
4. **Speech out** (``calls.media.playback``): a per-stream FIFO of utterances, deadline-paced 20 ms
   frames and marks (sent up to ``send_ahead_seconds`` ahead of playback to carriers that queue).
   When the peer stops reading (send buffer over ``MAX_SEND_BUFFER_BYTES``) the socket is closed with
   1013 and the reason recorded on the call.
5. **Barge-in**: when STT reports the caller started speaking, the queue is dropped and ``clear`` sent;
   utterances that had not played are marked ``interrupted`` in the transcript. Not during the intro
   of an outbound conversation (then the caller's speech is ignored, as upstream does).
6. **Disconnect** (``stop`` or close): the lease is released; after ``DISCONNECT_GRACE_S`` without a new
   stream for the call, the call is ended (``hangup-bot``).

The event loop never blocks: ORM work goes through ``database_sync_to_async`` on a small dedicated
thread pool (so one slow query cannot stall every stream) and never per frame -- per stream, DB
jobs run one at a time in order on a bounded job queue (``StreamJobs``), which also carries the final
clean-up, so it survives the consumer. The lease refresh every ``LEASE_REFRESH_SECONDS`` is one Redis
script or one ``UPDATE`` of the lease row.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer

from calls import metrics
from calls.config import get_config
from calls.media import control as streams
from calls.media.admission import ADMISSION, client_ip
from calls.media.dbthreads import db
from calls.media.playback import Playback, Utterance
from calls.media.playback import discard as playback_discard
from calls.media.playback import prefetch as playback_prefetch
from calls.media.realtime import PROGRESS_EVERY_FRAMES, RealtimeBridge
from calls.media.realtime import settings_from as realtime_settings_from
from providers import stream_wire
from providers.media_stream import MAX_INBOUND_FRAME_BYTES, MalformedFrame, StreamKind, parse_frame
from providers.realtime import RealtimeUnavailable
from providers.stt import FinalTranscript, RealtimeTranscriber, SttUnavailable, stt_settings
from providers.tts import TelephonySynthesizer, TtsUnavailable
from voicecall_site import compat

logger = logging.getLogger(__name__)

# WebSocket close codes (RFC 6455 §7.4.1) used by upstream for the same situations (§5.2-§5.4).
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008  # missing call id, unknown call / bad token, bad audio format, duplicate stream, start timeout
CLOSE_TRY_AGAIN = 1013  # too many pending sockets; send buffer exceeded
MAX_QUEUED_JOBS = 256  # a stream's pending ORM jobs (marks, DTMF, transcripts): far above any real backlog
STT_AFTER_GREETING_MAX_S = 1.0  # the transcription session waits at most this long for the greeting's first frame

BACKPRESSURE = "Backpressure: send buffer exceeded"

_probe_warning_logged = False



_background: set[asyncio.Task] = set()


def _spawn(coro: Awaitable[Any], name: str) -> asyncio.Task:
    """A task that may outlive its consumer (kept referenced until done)."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


class StreamJobs:
    """One stream's ORM work: run one job at a time, in order, off the event loop.

    Bounded (``MAX_QUEUED_JOBS``): a stream whose database work falls that far behind drops new
    jobs (counted and logged) rather than grow without limit. The final clean-up (``finish``) is
    always taken, and the runner -- a task that may outlive the consumer -- ends after it.
    """

    def __init__(self, label: str, limit: int | None = None):
        self.limit = limit or MAX_QUEUED_JOBS
        self.dropped = 0
        self._queue: deque[Callable[[], Awaitable[Any]]] = deque()
        self._final: Callable[[], Awaitable[Any]] | None = None
        self._finishing = False
        self._wakeup = asyncio.Event()
        self.task = _spawn(self._run(), label)

    def add(self, factory: Callable[[], Awaitable[Any]]) -> bool:
        if self._finishing:
            return False
        if len(self._queue) >= self.limit:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                logger.warning("media stream job queue full (%d): %d job(s) dropped", self.limit, self.dropped)
            return False
        self._queue.append(factory)
        self._wakeup.set()
        return True

    def finish(self, factory: Callable[[], Awaitable[Any]]) -> None:
        self._final, self._finishing = factory, True
        self._wakeup.set()

    async def _run(self) -> None:
        while True:
            while self._queue:
                await self._run_one(self._queue.popleft())
            if self._finishing:
                if self._final is not None:
                    await self._run_one(self._final)
                return
            self._wakeup.clear()
            await self._wakeup.wait()

    @staticmethod
    async def _run_one(factory: Callable[[], Awaitable[Any]]) -> None:
        try:
            await factory()
        except Exception:  # one failed write must not stop the stream's later writes
            logger.exception("media stream job failed")


@dataclass
class StreamCounters:
    media_in: int = 0
    oversize: int = 0
    malformed: int = 0
    binary: int = 0


class MediaStreamConsumer(AsyncWebsocketConsumer):
    """One carrier media stream. See the module docstring for the lifecycle."""

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        self.cleaned = False
        self.config = get_config()
        limits = self.config.streaming
        self.owner = uuid.uuid4().hex
        self.client_ip = client_ip(self.scope, self.config)
        self.counters = StreamCounters()
        self.holds_socket = self.pending = self.closing = self.starting = self.call_ended = False
        self.session: streams.AdmittedStream | None = None
        self.stream_sid = ""
        self.prestart_task: asyncio.Task | None = None
        self.lease_task: asyncio.Task | None = None
        self.playback: Playback | None = None
        self.stt: RealtimeTranscriber | None = None
        self.jobs: StreamJobs | None = None
        self.bridge: RealtimeBridge | None = None
        self.realtime = self.config.realtime.enabled
        self.tts_problem = ""
        try:
            self.wire = stream_wire(self.config.provider)
        except ValueError as exc:  # the config schema refuses streaming for this provider already
            logger.warning("media stream refused: %s", exc)
            await self.close()
            return
        if not ADMISSION.open_socket(limits.max_connections):
            logger.warning("media stream from %s refused: %d connections open", self.client_ip, ADMISSION.open)
            await self.close()  # before accept: daphne refuses the upgrade (HTTP 403)
            return
        self.holds_socket = True
        if not ADMISSION.add_pending(self.client_ip, limits.max_pending_connections, limits.max_pending_connections_per_ip):
            logger.warning("media stream from %s closed: too many pending media stream connections", self.client_ip)
            await self.accept()
            await self._close(CLOSE_TRY_AGAIN, "Too many pending media stream connections")
            return
        self.pending = True
        await self.accept()
        self.prestart_task = asyncio.get_running_loop().create_task(
            self._prestart_timeout(limits.pre_start_timeout_ms / 1000)
        )

    async def _prestart_timeout(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if self.session is None and not self.closing:
            logger.info("media stream from %s closed: start timeout", self.client_ip)
            await self._close(CLOSE_POLICY, "Start timeout")

    async def _close(self, code: int, reason: str = "") -> None:
        if self.closing:
            return
        self.closing = True
        # 1008/1013 through the compat shim under daphne (its ASGI close refuses them); other servers
        # take the code through ASGI.
        if code != CLOSE_NORMAL and compat.send_close_code(self.base_send, code, reason):
            return
        await self.close(code=code, reason=reason or None)

    def _release_pending(self) -> None:
        if self.pending:
            self.pending = False
            ADMISSION.remove_pending(self.client_ip)

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels' dispatch, without its ``aclose_old_connections()`` before every handler: that is
        a hop to a database thread and back for each of a call's 50 inbound frames a second. This
        consumer never uses the ORM on the event loop -- its database work runs through ``db()``
        (``database_sync_to_async``, which closes stale connections in its own thread)."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    # --- inbound frames ----------------------------------------------------------------------------
    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is None:
            self.counters.binary += 1  # every carrier's stream is JSON text frames
            return
        if len(text_data) > MAX_INBOUND_FRAME_BYTES or (
            len(text_data) > MAX_INBOUND_FRAME_BYTES // 4 and len(text_data.encode()) > MAX_INBOUND_FRAME_BYTES
        ):
            self.counters.oversize += 1
            return
        try:
            message = parse_frame(text_data)
        except MalformedFrame:
            self.counters.malformed += 1
            return
        kind = self.wire.kind(message)
        if kind is StreamKind.MEDIA:
            listener = self.bridge or self.stt
            if self.session is not None and listener is not None:
                payload = self.wire.media_payload(message)
                if payload is None:
                    self.counters.malformed += 1
                    return
                self.counters.media_in += 1
                listener.push(payload)
        elif kind is StreamKind.START:
            await self._on_start(message)
        elif kind is StreamKind.PLAYED:
            self._on_mark(message)
        elif kind is StreamKind.DTMF:
            self._on_dtmf(message)
        elif kind is StreamKind.STOP:
            if self.session is not None:
                logger.info("media stream %s of call %s stopped", self.stream_sid, self.session.call_id)
            await self._close(CLOSE_NORMAL)
        elif kind is StreamKind.ERROR:
            logger.warning("media stream %s reported an error: %s", self.stream_sid or "(not started)",
                           str(message.get("payload") or message.get("error") or "")[:200])
        elif kind is not None:  # connected, cleared: nothing to do
            logger.debug("media stream from %s: %s", self.client_ip, kind)

    async def _on_start(self, message: dict[str, Any]) -> None:
        if self.session is not None or self.starting or self.closing:
            return  # one start per socket
        query = {k: v[0] for k, v in parse_qs((self.scope.get("query_string") or b"").decode("latin1")).items()}
        start = self.wire.parse_start(message, query)
        if start is None:
            logger.warning("media stream from %s closed: missing call id", self.client_ip)
            await self._close(CLOSE_POLICY, "Missing call id")
            return
        if start.media_problem:
            logger.warning("media stream %s from %s closed: %s", start.stream_id, self.client_ip, start.media_problem)
            await self._close(CLOSE_POLICY, start.media_problem)
            return
        self.starting = True
        synthesizer = None
        group = None
        greeting = None
        outbound = self.wire.outbound(start)
        early: Utterance | None = None  # the greeting, synthesizing while the stream attaches

        async def check_then_prefetch() -> streams.AdmittedStream:
            nonlocal synthesizer, early
            admitted = await db(streams.check_start)(
                call_sid=start.carrier_call_id, token=start.token, call_id=start.call_id)
            if not self.realtime:  # after the check: a refused start costs nothing more
                try:
                    synthesizer = TelephonySynthesizer.from_settings(self.config.provider_settings)
                except TtsUnavailable as exc:
                    self.tts_problem = str(exc)
            if synthesizer is not None and admitted.pending_greeting:
                # The TTS request leaves now, in parallel with the group join and the lease + claim
                # trip; at 128 simultaneous starts that takes the vendor's first byte off the path.
                early = playback_prefetch(synthesizer, admitted.pending_greeting)
            return admitted

        try:
            if start.call_id:
                # Our call id came with the stream: join its group while the token is checked (one
                # Redis round trip off the start path). Both are awaited, so a refusal can undo the join.
                group = streams.group_name(start.call_id)
                session, joined = await asyncio.gather(
                    check_then_prefetch(), self.channel_layer.group_add(group, self.channel_name),
                    return_exceptions=True)
                for outcome in (session, joined):
                    if isinstance(outcome, BaseException):
                        raise outcome
            else:
                session = await check_then_prefetch()
            # Join the call's group before taking the lease: once the lease says "live stream", a
            # speak from any process must find us in the group.
            if group is None:
                group = streams.group_name(session.call_id)
                await self.channel_layer.group_add(group, self.channel_name)
            greeting = await db(streams.attach_stream)(
                session.call_id, self.owner, start.stream_id, speak_greeting=self.realtime or synthesizer is not None
            )
        except BaseException as exc:
            playback_discard(early)
            if not isinstance(exc, streams.StreamRefused):
                raise
            logger.warning("media stream %s for %s refused: %s", start.stream_id, start.carrier_call_id, exc)
            if group is not None:
                await self.channel_layer.group_discard(group, self.channel_name)
            await self._close(CLOSE_POLICY, str(exc))
            return
        finally:
            self.starting = False
        if early is not None and (self.closing or greeting is None or greeting.text != early.text):
            # The socket went away meanwhile, or another path spoke the greeting (or it changed).
            playback_discard(early)
            early = None
        if self.closing:  # the socket went away (or timed out) while we checked: give it all back
            await self.channel_layer.group_discard(group, self.channel_name)
            await db(streams.detach_stream)(session.call_id, self.owner, greeting)
            return
        self.session = session
        self.stream_sid = start.stream_id
        self._release_pending()
        if self.prestart_task is not None:
            self.prestart_task.cancel()
        self.jobs = StreamJobs(f"stream-jobs {session.call_id}")
        if synthesizer is None and not self.realtime:
            logger.warning("media stream of call %s has no speech output: %s", session.call_id, self.tts_problem)
        global _probe_warning_logged
        probe = compat.send_buffer_probe(self.base_send)
        if probe is None and not _probe_warning_logged:
            _probe_warning_logged = True
            logger.warning("media streams: no send-buffer probe for this server; back-pressure is not detected")
        self.playback = Playback(
            outbound,
            self._send_text,
            synthesizer,
            on_failed=self._utterance_failed,
            on_stuck=self._send_buffer_stuck,
            probe=probe,
            send_ahead=self.wire.send_ahead_seconds,
            progress_every=PROGRESS_EVERY_FRAMES if self.realtime else 0,
        )
        if self.realtime:
            self._start_bridge(greeting)
        elif early is not None:
            # Straight to this socket's playback: no channel-layer round trip, no wait for STT (the
            # transcriber queues the caller's audio until its session is up).
            early.entry_id, early.initial = greeting.entry_id, greeting.initial
            self.playback.enqueue_prefetched(early)
        elif greeting is not None:
            self.playback.enqueue(Utterance(id=uuid.uuid4().hex, text=greeting.text, entry_id=greeting.entry_id,
                                            initial=greeting.initial))
        if not self.realtime:
            self._start_stt()
        self.lease_task = asyncio.get_running_loop().create_task(self._keep_lease())
        logger.info("%s media stream %s attached to call %s", self.wire.carrier, start.stream_id, session.call_id)
        metrics.LIVE_STREAMS.inc()
        self.counted_live = True

    def _start_bridge(self, greeting) -> None:
        """Realtime voice: the model speaks and listens; the greeting is its first response."""
        session = self.session
        try:
            settings = realtime_settings_from(self.config)
        except RealtimeUnavailable as exc:
            logger.warning("media stream of call %s cannot reach the realtime model: %s", session.call_id, exc)
            error = f"Realtime voice: {exc}"
            self._job(lambda: db(streams.end_call_from_stream)(session.call_id, error=error))
            return
        self.bridge = RealtimeBridge(self, settings, idle_hangup_ms=self.config.realtime.idle_hangup_ms)
        self.bridge.start(greeting.text if greeting else None, greeting.entry_id if greeting else None)

    def _start_stt(self) -> None:
        session = self.session
        try:
            self.stt = RealtimeTranscriber(
                stt_settings(self.config.provider_settings),
                on_speech_start=self._on_speech_start,
                on_final=self._on_final_transcript,
                on_partial=self._on_partial_transcript,
                label=f"call {session.call_id}",
            )
            # A greeting about to play goes first: its first frame before the transcription
            # handshake (caller audio queues meanwhile), so that many streams starting at once each
            # hear audio sooner. A greeting that never starts holds the session back at most 1 s.
            first_audio = self.playback.first_audio if self.playback is not None and self.playback.playing else None
            self.stt.start(not_before=first_audio, at_most_after_s=STT_AFTER_GREETING_MAX_S)
        except SttUnavailable as exc:
            logger.warning("media stream of call %s has no speech input: %s", session.call_id, exc)

    def _on_mark(self, message: dict[str, Any]) -> None:
        name = self.wire.played_name(message)
        if self.session is None or self.playback is None or name is None:
            return
        utterance = self.playback.on_mark(name)
        if utterance is None:
            return  # not ours, a progress mark, or echoed after a clear
        if self.bridge is not None:
            self.bridge.on_played(utterance)
        session, sid = self.session, self.stream_sid
        self._job(lambda: db(streams.record_utterance_played)(
            call_id=session.call_id, call_sid=session.provider_call_id, stream_sid=sid, mark=name, text=utterance.text
        ))

    def _on_dtmf(self, message: dict[str, Any]) -> None:
        pressed = self.wire.dtmf(message)
        if self.session is None or pressed is None:
            return
        digit, seq = pressed
        session, sid = self.session, self.stream_sid
        self._job(lambda: db(streams.record_dtmf)(
            call_id=session.call_id, call_sid=session.provider_call_id, stream_sid=sid, sequence=seq, digit=digit
        ))

    # --- jobs (ORM work, in order, off the loop) --------------------------------------------------------
    def _job(self, factory: Callable[[], Awaitable[Any]]) -> None:
        if self.jobs is not None:
            self.jobs.add(factory)

    async def _keep_lease(self) -> None:
        session = self.session
        while not self.closing:
            await asyncio.sleep(streams.LEASE_REFRESH_SECONDS)
            try:
                held = await db(streams.keep_lease)(session.call_id, self.owner, self.stream_sid)
            except Exception:
                logger.exception("media stream lease refresh failed for call %s", session.call_id)
                continue
            if not held:
                logger.warning("media stream %s lost call %s to another stream", self.stream_sid, session.call_id)
                await self._close(CLOSE_POLICY, streams.DUPLICATE_STREAM)
                return

    # --- speech out -------------------------------------------------------------------------------
    async def _send_text(self, text: str) -> None:
        await self.send(text_data=text)

    def _utterance_failed(self, utterance: Utterance) -> None:
        error = utterance.error or "Telephony stream playback failed: no audio was sent"
        logger.warning("utterance on call %s not played: %s", self.session.call_id, error)
        call_id = self.session.call_id
        ids = [utterance.entry_id] if utterance.entry_id else []
        self._job(lambda: db(streams.mark_interrupted)(call_id=call_id, entry_ids=ids))
        self._job(lambda: db(streams.record_stream_error)(call_id=call_id, error=error))

    async def _send_buffer_stuck(self) -> None:
        logger.warning("media stream %s closed: backpressure, send buffer exceeded", self.stream_sid)
        call_id = self.session.call_id
        self._job(lambda: db(streams.record_stream_error)(call_id=call_id, error=BACKPRESSURE))
        await self._close(CLOSE_TRY_AGAIN, BACKPRESSURE)

    # --- speech in --------------------------------------------------------------------------------
    async def _on_speech_start(self) -> None:
        playback = self.playback
        if playback is None or self.closing:
            return
        if playback.intro_active:
            logger.info("call %s: caller speech during the intro ignored (no barge-in)", self.session.call_id)
            return
        dropped = playback.clear()
        if not dropped:
            return
        await self._send_text(playback.frames.clear())
        ids = [u.entry_id for u in dropped if u.entry_id]
        call_id = self.session.call_id
        logger.info("call %s: barge-in, %d utterance(s) dropped", call_id, len(dropped))
        self._job(lambda: db(streams.mark_interrupted)(call_id=call_id, entry_ids=ids))

    async def _on_final_transcript(self, final: FinalTranscript) -> None:
        if self.session is None:
            return
        if self.playback is not None and self.playback.intro_active:
            logger.info("call %s: transcript during the intro ignored", self.session.call_id)
            return
        session, sid = self.session, self.stream_sid
        self._job(lambda: db(streams.record_caller_speech)(
            call_id=session.call_id, call_sid=session.provider_call_id, stream_sid=sid,
            item_id=final.item_id, text=final.text,
        ))

    async def _on_partial_transcript(self, text: str) -> None:
        logger.debug("call %s partial transcript: %s", self.session.call_id if self.session else "?",
                      text.replace("\n", " ")[:200])

    # --- control messages from other processes (channel layer group of the call) ------------------
    async def _ack(self, event: dict[str, Any], ok: bool, error: str | None = None) -> None:
        reply_channel = event.get("reply_channel")
        if reply_channel:
            await self.channel_layer.send(reply_channel, {"type": "stream.ack", "id": event.get("id"), "ok": ok, "error": error})

    async def stream_speak(self, event: dict[str, Any]) -> None:
        if self.playback is None or self.closing:
            return  # not acknowledged: the sender reports it (a closing stream cannot speak)
        if self.realtime:
            if self.bridge is None:
                await self._ack(event, False, "the realtime model session is not available")
                return
            self.bridge.say(str(event.get("text") or ""), event.get("entry_id"))
            await self._ack(event, True)
            return
        if self.playback.synthesizer is None:
            await self._ack(event, False, self.tts_problem)
            return
        utterance = Utterance(
            id=str(event.get("id") or uuid.uuid4().hex), text=str(event.get("text") or ""),
            entry_id=event.get("entry_id"), initial=bool(event.get("initial")),
        )
        try:
            self.playback.enqueue(utterance)
        except (OverflowError, RuntimeError) as exc:
            await self._ack(event, False, str(exc))
            return
        await self._ack(event, True)

    async def stream_ping(self, event: dict[str, Any]) -> None:
        """Liveness check from any process (``streams.ping_stream``)."""
        if not self.closing:
            await self._ack(event, True)

    async def stream_hangup(self, event: dict[str, Any]) -> None:
        """The call was ended elsewhere (carrier hang-up done): close without the reconnect grace."""
        self.call_ended = True
        await self._ack(event, True)
        await self._close(CLOSE_NORMAL)

    # --- the end -----------------------------------------------------------------------------------
    async def __call__(self, scope, receive, send) -> None:
        # Clean up even when the application dies (a channel-layer error, a bug): the admission
        # slots, the lease and the call's grace hang-up must not leak with it.
        self.cleaned = True  # nothing to clean before websocket_connect ran
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self.cleaned:
                logger.warning("media stream consumer ended without a disconnect; cleaning up")
                await self._cleanup(1011)

    async def disconnect(self, code: int) -> None:
        await self._cleanup(code)

    async def _cleanup(self, code: int) -> None:
        if self.cleaned:
            return
        self.cleaned = True
        self.closing = True
        self._release_pending()
        if self.holds_socket:
            self.holds_socket = False
            ADMISSION.close_socket()
        for task in (self.prestart_task, self.lease_task):
            if task is not None:
                task.cancel()
        session = self.session
        if session is None:
            return
        if getattr(self, "counted_live", False):
            self.counted_live = False
            metrics.LIVE_STREAMS.dec()
        dropped = self.playback.close() if self.playback is not None else []
        # Give the lease back first, so a reconnecting stream (any process) can take the call over.
        try:
            await db(streams.release_lease)(session.call_id, self.owner)
        except Exception:  # the lease then simply expires (LEASE_TTL_MS)
            logger.exception("lease release failed for call %s", session.call_id)
        if self.stt is not None:
            await self.stt.close()
        unanswered = await self.bridge.close() if self.bridge is not None else []
        try:
            await self.channel_layer.group_discard(streams.group_name(session.call_id), self.channel_name)
        except Exception:  # the layer may be gone at shutdown; the grace still runs
            logger.exception("group_discard failed for call %s", session.call_id)
        ids = [u.entry_id for u in dropped if u.entry_id] + unanswered
        grace = not self.call_ended
        logger.info("media stream %s of call %s closed (code %s; in %d media, %d malformed, %d oversize)",
                    self.stream_sid, session.call_id, code, self.counters.media_in,
                    self.counters.malformed, self.counters.oversize)

        async def finish() -> None:
            if ids:
                await db(streams.mark_interrupted)(call_id=session.call_id, entry_ids=ids)
            if grace:
                await asyncio.sleep(streams.DISCONNECT_GRACE_S)
                await db(streams.end_call_after_stream_loss)(session.call_id)

        self.jobs.finish(finish)  # always taken, however full the queue; the runner stops after it
