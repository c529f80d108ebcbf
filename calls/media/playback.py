"""Speech out on one media stream: a FIFO of utterances, 20 ms frames on the carrier's playout clock, marks.

Synthesis starts when an utterance is queued and audio is sent as soon as the first TTS bytes are
converted, with mu-law silence while synthesis has not produced audio yet. The pacer keeps the
carrier's *playout* clock (``next += 0.020`` per frame on the loop clock, so no drift however long
the call). Every carrier queues what it is sent and plays it in order (Twilio, Telnyx and Plivo:
reference/protocols.md §4-§6), so frames go out up to ``send_ahead`` seconds before they play: a stall
on our side is absorbed by the carrier's queue, and that queue never holds more than ``send_ahead`` of
audio (a clear empties it). Several frames go in one media message (the carriers take any multiple of
20 ms): what is ready when the stream starts goes at once, then the queue is topped up
``REFILL_FRAMES`` at a time -- one message per 100 ms instead of one per 20 ms. A ``mark`` follows
each utterance; it counts as played when the carrier echoes it. Past ``MAX_SEND_BUFFER_BYTES`` sent
but not taken by the peer, the peer is not reading and the stream is closed (fact sheet §5.4).
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from calls import metrics
from providers.audio import FRAME_BYTES, FRAME_SECONDS, silence_frame
from providers.media_stream import OutboundFrames
from providers.tts import TelephonySynthesizer, TtsError

logger = logging.getLogger(__name__)

MAX_BUFFERED_FRAMES = 100  # 2 s of 20 ms frames synthesized ahead of playback, per utterance
FRAME_GAP_SAMPLE_EVERY = 10  # one gap in ten frames feeds the histogram (mean of those ten)
MAX_FRAMES_PER_MESSAGE = 50  # 1 s of audio in one media message at most (Telnyx takes 20 ms to 30 s)
REFILL_FRAMES = 5  # once ahead, the carrier's queue is topped up 100 ms at a time

#: Send-buffer limit before a socket counts as stuck (fact sheet §5.4: 1 MiB). Overridable for
#: links known to be slow (and for the back-pressure test) with VOICECALL_STREAM_MAX_SEND_BUFFER.
MAX_SEND_BUFFER_BYTES = int(os.environ.get("VOICECALL_STREAM_MAX_SEND_BUFFER", str(1024 * 1024)))
PROBE_EVERY_FRAMES = 5  # check the send buffer about every 100 ms of audio (one ioctl)
MAX_PENDING_UTTERANCES = 8  # fact sheet §5.4 (later): the queue rejects more

QUEUE_FULL = f"Telephony TTS queue is full for stream; maxPending={MAX_PENDING_UTTERANCES}"
STREAM_CLOSING = "Media stream is closing"


@dataclass(eq=False)
class Utterance:
    id: str
    text: str
    entry_id: int | None
    initial: bool
    frames: deque[bytes] = field(default_factory=deque)  # mu-law audio not yet sent, 160 bytes (20 ms) each
    done: bool = False  # synthesis finished (or failed)
    error: str | None = None
    sent: int = 0
    mark: str = ""
    task: asyncio.Task | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # audio arrived / synthesis ended
    drained: asyncio.Event = field(default_factory=asyncio.Event)  # buffered audio fell under the bound
    heard: int = 0  # frames the carrier confirmed played (progress marks, then the final mark)
    first_sent_at: float | None = None  # loop time of its first audio frame on the socket
    remainder: bytes = b""  # live audio not yet a whole 20 ms frame
    live: bool = False  # audio fed from elsewhere (the realtime model), not synthesized here

    async def wait_for_audio(self, timeout: float) -> bool:
        """Whether frames (or the end of synthesis) are there, waiting up to ``timeout`` for them."""
        self.changed.clear()
        if self.frames or self.done or timeout <= 0:
            return bool(self.frames or self.done)
        try:
            await asyncio.wait_for(self.changed.wait(), timeout)
        except TimeoutError:
            pass
        return bool(self.frames or self.done)


async def synthesize_into(utterance: Utterance, synthesizer: TelephonySynthesizer) -> None:
    """Synthesize ``utterance.text`` into its 20 ms frames as audio arrives; sets ``done`` (and
    ``error`` on failure) when it ends."""
    try:
        async for frames in synthesizer.frames(utterance.text):
            utterance.frames.extend(frames)
            utterance.changed.set()
            # At most ~2 s of audio ahead of playback: a TTS faster than real time waits here
            # (and its HTTP body with it), so memory does not grow with the text's length.
            while len(utterance.frames) > MAX_BUFFERED_FRAMES:
                utterance.drained.clear()
                await utterance.drained.wait()
    except TtsError as exc:
        utterance.error = str(exc)
    except Exception as exc:  # a vendor/library bug must not take the stream down
        logger.exception("TTS failed")
        utterance.error = f"TTS failed: {type(exc).__name__}"
    finally:
        utterance.done = True
        utterance.changed.set()


def prefetch(synthesizer: TelephonySynthesizer, text: str) -> Utterance:
    """Start synthesizing text that a stream is about to be given (its greeting, while the stream is
    still being attached): queue it with ``Playback.enqueue_prefetched``, or ``discard`` it."""
    utterance = Utterance(id=uuid.uuid4().hex, text=text, entry_id=None, initial=False)
    utterance.task = asyncio.get_running_loop().create_task(synthesize_into(utterance, synthesizer))
    return utterance


def discard(utterance: Utterance | None) -> None:
    """Stop a prefetched utterance's synthesis (None: nothing was prefetched)."""
    if utterance is not None and utterance.task is not None and not utterance.task.done():
        utterance.task.cancel()


class SendBufferExceeded(Exception):
    pass


class Playback:
    """One stream's outbound audio: FIFO of utterances, deadline-paced 20 ms frames, marks."""

    def __init__(
        self,
        frames: OutboundFrames,
        send: Callable[[str], Awaitable[None]],
        synthesizer: TelephonySynthesizer | None,
        *,
        on_failed: Callable[[Utterance], None],
        on_stuck: Callable[[], Awaitable[None]],
        probe: Callable[[], int] | None,
        send_ahead: float = 0.0,
        progress_every: int = 0,
    ):
        self.frames = frames
        self.send_ahead = max(0.0, send_ahead)
        # A mark every N frames of an utterance, so what the caller heard is known to within N frames
        # (realtime barge-in truncates the model's item there); 0: one mark at the end only.
        self.progress_every = progress_every
        self.progress: dict[str, tuple[Utterance, int]] = {}
        self._send = send
        self.synthesizer = synthesizer
        self._on_failed = on_failed
        self._on_stuck = on_stuck
        self._probe = probe
        self.queue: deque[Utterance] = deque()
        self.awaiting: dict[str, Utterance] = {}  # mark name -> sent utterance not yet confirmed played
        self._pacer: asyncio.Task | None = None
        self._silence = frames.media(silence_frame())
        #: frames per media message once the carrier's queue is full: a top-up of REFILL_FRAMES when
        #: there is room for it ahead, else one (and no more than one progress interval)
        self._refill = max(1, min(REFILL_FRAMES, int(self.send_ahead / FRAME_SECONDS) // 2,
                                  progress_every or REFILL_FRAMES))
        self._max_per_message = min(MAX_FRAMES_PER_MESSAGE, progress_every or MAX_FRAMES_PER_MESSAGE)
        self.closed = False
        self.frames_sent = 0
        self._sampled: tuple[float, int] | None = None  # (playout time, frame number) of the last gap sample
        self._playout_until = 0.0  # loop time at which the carrier has played everything sent so far
        # Set once the first audio frame is on the socket, or the pacer stopped without one.
        self.first_audio = asyncio.Event()

    @property
    def intro_active(self) -> bool:
        """The outbound-conversation intro is queued, playing or not yet confirmed played."""
        return any(u.initial for u in self.queue) or any(u.initial for u in self.awaiting.values())

    def enqueue(self, utterance: Utterance) -> None:
        """Queue text to be synthesized (the streamed-TTS mode)."""
        self._append(utterance)
        utterance.task = asyncio.get_running_loop().create_task(self._synthesize(utterance))
        self._start_pacer()

    def enqueue_prefetched(self, utterance: Utterance) -> None:
        """Queue an utterance whose synthesis ``prefetch`` started (its audio may be there already)."""
        self._append(utterance)
        self._start_pacer()

    def enqueue_live(self, utterance: Utterance) -> None:
        """Queue an utterance whose audio arrives from elsewhere (the realtime model): ``feed`` it,
        then ``finish`` it."""
        utterance.live = True
        self._append(utterance)
        self._start_pacer()

    def feed(self, utterance: Utterance, mulaw: bytes) -> None:
        """Audio for a live utterance, any length: cut into 20 ms frames."""
        data = utterance.remainder + mulaw
        whole = len(data) - len(data) % FRAME_BYTES
        utterance.frames.extend(data[i:i + FRAME_BYTES] for i in range(0, whole, FRAME_BYTES))
        utterance.remainder = data[whole:]
        utterance.changed.set()

    def finish(self, utterance: Utterance, error: str | None = None) -> None:
        if utterance.remainder:
            self.feed(utterance, b"\xff" * (FRAME_BYTES - len(utterance.remainder)))  # pad with silence
        utterance.error = error
        utterance.done = True
        utterance.changed.set()

    def _append(self, utterance: Utterance) -> None:
        if self.closed:
            raise RuntimeError(STREAM_CLOSING)
        if len(self.queue) >= MAX_PENDING_UTTERANCES:
            raise OverflowError(QUEUE_FULL)
        self.queue.append(utterance)

    def _start_pacer(self) -> None:
        if self._pacer is None:
            self._pacer = asyncio.get_running_loop().create_task(self._pace())

    @property
    def playing(self) -> bool:
        """Audio is queued here or sent and not yet confirmed played by the carrier."""
        return bool(self.queue or self.awaiting)

    async def _synthesize(self, utterance: Utterance) -> None:
        await synthesize_into(utterance, self.synthesizer)

    async def _pace(self) -> None:
        """Send the queued utterances' audio, marks after each, while anything is queued.

        ``next_at`` is when the next frame will *play* at the carrier. A message may carry every
        ready frame that will play within ``send_ahead`` (at most ``_max_per_message``); after one,
        the pacer sleeps until there is room for ``_refill`` more. Deadlines, not sleeps:
        ``next_at`` advances by exactly one frame per frame sent, so costs never accumulate into
        drift. A frame sent after it was due plays on arrival (the carrier ran dry): the clock
        restarts from then instead of bursting to catch up.

        When the carrier is about to run dry and the utterance has no audio yet (synthesis starting,
        or slower than real time), we wait for audio up to one frame period past the due time: audio
        arriving in that window goes out at once, otherwise a silence frame keeps the line alive. So
        a fast TTS is heard with no silence queued ahead of it.
        """
        loop = asyncio.get_running_loop()
        ahead = self.send_ahead
        next_at = max(loop.time(), self._playout_until)
        try:
            while self.queue and not self.closed:
                utterance = self.queue[0]
                now = loop.time()
                if next_at < now:
                    next_at = now  # the carrier ran dry: what we send now plays on arrival
                if utterance.frames:
                    room = 1 + int((now + ahead - next_at) / FRAME_SECONDS + 1e-9)
                    if room < 1:  # the utterance before this one filled the carrier's queue
                        await asyncio.sleep(next_at - ahead - now)
                        continue
                    count = min(len(utterance.frames), room, self._max_per_message)
                    popleft = utterance.frames.popleft
                    audio = popleft() if count == 1 else b"".join([popleft() for _ in range(count)])
                    text = self.frames.media(audio)
                    if len(utterance.frames) <= MAX_BUFFERED_FRAMES:
                        utterance.drained.set()
                    if utterance.first_sent_at is None:
                        utterance.first_sent_at = now
                        self.first_audio.set()
                    utterance.sent += count
                elif utterance.done:
                    self.queue.popleft()
                    if utterance.live and not utterance.error and utterance.sent == 0:
                        continue  # a model response without audio (a tool call): nothing to confirm
                    if utterance.error or utterance.sent == 0:
                        self._on_failed(utterance)
                        continue
                    utterance.mark = f"utt-{utterance.id}"
                    self.awaiting[utterance.mark] = utterance
                    await self._send(self.frames.mark(utterance.mark))
                    continue  # the next utterance starts in this same slot
                else:
                    if await utterance.wait_for_audio(next_at + FRAME_SECONDS - loop.time()):
                        continue
                    count, text = 1, self._silence  # keep-alive while synthesis starts (or falls behind)
                    next_at = loop.time()
                await self._send(text)
                before = self.frames_sent
                self.frames_sent += count
                if self.progress_every and text is not self._silence and (
                        utterance.sent // self.progress_every > (utterance.sent - count) // self.progress_every):
                    name = f"utt-{utterance.id}-{utterance.sent}"
                    self.progress[name] = (utterance, utterance.sent)
                    await self._send(self.frames.mark(name))
                if self.frames_sent // FRAME_GAP_SAMPLE_EVERY > before // FRAME_GAP_SAMPLE_EVERY:
                    # The carrier's playout as the caller hears it (a frame sent late plays on
                    # arrival): the mean gap since the last sampled frame, about one in ten.
                    frame = self.frames_sent - self.frames_sent % FRAME_GAP_SAMPLE_EVERY
                    played_at = next_at + (frame - before - 1) * FRAME_SECONDS
                    if self._sampled is not None:
                        sampled_at, sampled_frame = self._sampled
                        metrics.FRAME_GAP.observe((played_at - sampled_at) / (frame - sampled_frame))
                    self._sampled = (played_at, frame)
                if (
                    self._probe is not None
                    and self.frames_sent // PROBE_EVERY_FRAMES > before // PROBE_EVERY_FRAMES
                    and self._probe() > MAX_SEND_BUFFER_BYTES
                ):
                    raise SendBufferExceeded
                next_at += count * FRAME_SECONDS
                self._playout_until = next_at
                if utterance.frames or not utterance.done:
                    # Until there is room ahead for a top-up (or, waiting for audio, until it is due).
                    refill = self._refill if utterance.frames else 1
                    delay = next_at + (refill - 1) * FRAME_SECONDS - ahead - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
        except SendBufferExceeded:
            self._forget_pacer()
            await self._on_stuck()
        finally:
            self.first_audio.set()
            self._forget_pacer()

    def _forget_pacer(self) -> None:
        # A cancelled pacer finishes later than clear() returns: never forget its successor.
        if self._pacer is asyncio.current_task():
            self._pacer = None

    def on_mark(self, name: str) -> Utterance | None:
        """The carrier reached a mark: the utterance it ends has played (returned), or -- a progress
        mark -- the utterance has played that far (None); unknown or cleared marks are ignored."""
        progress = self.progress.pop(name, None)
        if progress is not None:
            utterance, frames = progress
            utterance.heard = max(utterance.heard, frames)
            return None
        utterance = self.awaiting.pop(name, None)
        if utterance is not None:
            utterance.heard = utterance.sent
            for key in [k for k, (u, _) in self.progress.items() if u is utterance]:
                del self.progress[key]
        return utterance

    def clear(self) -> list[Utterance]:
        """Drop everything not yet confirmed played (barge-in, close); returns those utterances."""
        dropped = list(self.awaiting.values()) + list(self.queue)
        self.awaiting.clear()
        self.queue.clear()
        self.progress.clear()
        for utterance in dropped:
            if utterance.task is not None and not utterance.task.done():
                utterance.task.cancel()
        if self._pacer is not None:
            self._pacer.cancel()
            self._pacer = None
        self._playout_until = 0.0  # the carrier discards what it had queued (clear)
        return dropped

    def close(self) -> list[Utterance]:
        self.closed = True
        return self.clear()
