"""The realtime bridge: one carrier media stream <-> one speech-to-speech model session.

With ``realtime.enabled`` the stream consumer (``calls.media.consumer``) hands a started stream to a
``RealtimeBridge`` instead of STT + TTS. The carrier side is the same engine for every carrier (the
stream wire, ``Playback``'s pacing, marks and clear); the model side is ``providers/realtime.py``.

* **Caller audio** goes to the model as the carrier's base64 mu-law text, untouched (``audio/pcmu``).
* **Model audio** (``response.output_audio.delta``, mu-law) is cut into 20 ms frames and played like
  any utterance: one live utterance per model response, with a progress mark every
  ``PROGRESS_EVERY_FRAMES`` frames, so we know what the caller has *heard* (the carrier confirms it),
  not just what was sent.
* **Our speech** (the greeting, ``speak`` / ``continue`` from any process) is a ``response.create``
  asking the model to say exactly that text; its transcript line is the one the domain recorded.
* **Barge-in**: ``speech_started`` while our audio is still playing clears the carrier's buffer at
  once, truncates the model's item at the heard position (``conversation.item.truncate``,
  ``audio_end_ms``), and the bot line keeps only the heard part, marked interrupted. The model's
  server VAD cancels its own response.
* **Transcripts**: caller lines from input transcription (they complete a waiting ``continue``; the
  text auto-responder never runs in realtime mode), bot lines from the output transcript, with the
  turn latency -- caller speech end to the first frame of the answer on the socket -- on the bot line.
* **Ending**: the ``end_call`` tool (the model says goodbye first; we let that play out, then hang up
  through the carrier, or hand the model the refusal to speak), the provider closing the session or
  failing to open it (the call ends, ``lastError`` says why), no caller audio for ``idleHangupMs``
  (then a 2 s grace).

Decision: barge-in applies to every line here, the outbound intro included -- the model's own VAD
stops generating when the caller talks, so the rest of an intro would never arrive anyway.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from calls.media import control as streams
from calls.media.dbthreads import db
from calls.media.playback import Playback, Utterance
from providers import realtime as rt

logger = logging.getLogger(__name__)

PROGRESS_EVERY_FRAMES = 5  # 100 ms: the truncation point is within 100 ms of what was heard
IDLE_GRACE_S = 2.0
GOODBYE_WAIT_S = 10.0  # the longest we let a goodbye play before hanging up anyway
IDLE_CHECK_S = 0.5
UNANNOUNCED = "(a response not yet announced)"
UNANNOUNCED_RETRY_S = 1.0


@dataclass(eq=False)
class ModelTurn:
    """One model response: its audio on our playback, its transcript, the line it becomes."""

    response_id: str
    utterance: Utterance
    entry_id: int | None = None  # set when it speaks a line we recorded (greeting, speak)
    item_id: str = ""
    transcript: list[str] = field(default_factory=list)
    received_frames: int = 0
    speech_stopped_at: float | None = None  # the caller turn it answers ended then (loop time)
    settled: bool = False  # its line is written: played out, or cut by the caller


class RealtimeBridge:
    def __init__(self, consumer: Any, settings: rt.RealtimeSettings, *, idle_hangup_ms: int):
        self.consumer = consumer
        self.call_id: str = consumer.session.call_id
        self.playback: Playback = consumer.playback
        self.session = rt.RealtimeSession(settings, self, label=f"call {self.call_id}")
        self.idle_s = idle_hangup_ms / 1000
        self.loop = asyncio.get_running_loop()
        self.last_media_at = self.loop.time()
        self.turns: dict[str, ModelTurn] = {}  # by response id, until response.done
        self.unsettled: dict[str, ModelTurn] = {}  # by utterance id, until played out or cut
        # Lines asked for, by tag: the tag is the ``response.create``'s event id and its response's
        # metadata, so the response -- or the API's refusal -- names the line it belongs to.
        self.scripted: dict[str, tuple[int | None, str]] = {}
        # One response at a time (the API refuses a response.create while one is active): lines wait
        # here while the model speaks; ``active`` is the response in progress, ``requested`` ours sent.
        self.waiting_says: list[str] = []
        self.active: str | None = None
        self.requested: str | None = None
        self.speech_stopped_at: float | None = None
        self.ending = False
        self.closed = False
        self._watchdog: asyncio.Task | None = None

    # --- lifecycle (called by the consumer) ------------------------------------------------------
    def start(self, greeting_text: str | None, greeting_entry: int | None) -> None:
        self.session.start()
        if greeting_text:
            self.say(greeting_text, greeting_entry)
        self._watchdog = self.loop.create_task(self._idle_watchdog())

    def push(self, payload_b64: str) -> None:
        self.last_media_at = self.loop.time()
        self.session.push(payload_b64)

    def say(self, text: str, entry_id: int | None) -> None:
        """Have the model speak ``text`` (queued until the session is open and the model is quiet)."""
        tag = f"say-{uuid.uuid4().hex[:16]}"
        self.scripted[tag] = (entry_id, text)
        self.waiting_says.append(tag)
        self._next_say()

    def _next_say(self) -> None:
        if self.waiting_says and self.active is None and self.requested is None:
            self.requested = self.waiting_says.pop(0)
            self.session.send(rt.say_exactly(self.scripted[self.requested][1], tag=self.requested))

    async def on_refused(self, event_id: str, code: str) -> None:
        """The API refused one of our events: a line asked for while the model had begun an answer of
        its own goes back to the front of the queue, to be said after that answer."""
        if event_id and event_id == self.requested:
            self.requested = None
            if code == "conversation_already_has_active_response":
                # The model's answer is under way (its response.created is still coming): wait for it
                # to be done, or -- should it never be announced -- try again in a second.
                self.waiting_says.insert(0, event_id)
                if self.active is None:
                    self.active = UNANNOUNCED
                    self.loop.call_later(UNANNOUNCED_RETRY_S, self._unannounced_gone)
                return
            logger.warning("call %s: the model refused a line (%s)", self.call_id, code[:60])
            self._next_say()

    def _unannounced_gone(self) -> None:
        if self.active == UNANNOUNCED and not self.closed:
            self.active = None
            self._next_say()

    async def close(self) -> list[int]:
        """The stream is gone: end the session. Returns the lines asked for but never answered."""
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        await self.session.close()
        for turn in list(self.unsettled.values()):  # still playing when the stream went: cut where heard
            self._settle(turn, heard_frames=turn.utterance.heard)
        unanswered = [entry for entry, _ in self.scripted.values() if entry]
        self.scripted.clear()
        return unanswered

    # --- model -> us (RealtimeListener) ----------------------------------------------------------
    async def on_response_created(self, response_id: str, tag: str) -> None:
        utterance = Utterance(id=uuid.uuid4().hex[:12], text="", entry_id=None, initial=False)
        turn = ModelTurn(response_id, utterance, speech_stopped_at=self.speech_stopped_at)
        self.speech_stopped_at = None
        self.active = response_id
        if tag and tag in self.scripted:  # one of our lines; the model's own answers carry no tag
            if tag == self.requested:
                self.requested = None
            turn.entry_id, text = self.scripted.pop(tag)
            utterance.entry_id, turn.transcript = turn.entry_id, [text]
        self.turns[response_id] = turn
        self.unsettled[utterance.id] = turn
        try:
            self.playback.enqueue_live(utterance)
        except (OverflowError, RuntimeError) as exc:
            logger.warning("call %s: model audio not played: %s", self.call_id, exc)
            turn.settled = True
            self.unsettled.pop(utterance.id, None)

    async def on_audio(self, response_id: str, item_id: str, delta_b64: str) -> None:
        turn = self.turns.get(response_id)
        if turn is None or turn.settled:
            return
        try:
            audio = base64.b64decode(delta_b64, validate=True)
        except (binascii.Error, ValueError):
            return
        turn.item_id = turn.item_id or item_id
        turn.received_frames += len(audio) / 160
        self.playback.feed(turn.utterance, audio)

    async def on_audio_done(self, response_id: str, item_id: str) -> None:
        turn = self.turns.get(response_id)
        if turn is not None and not turn.settled:
            self.playback.finish(turn.utterance)

    async def on_bot_transcript_delta(self, response_id: str, item_id: str, delta: str) -> None:
        turn = self.turns.get(response_id)
        if turn is not None and turn.entry_id is None and delta:
            turn.transcript.append(delta)

    async def on_bot_transcript(self, response_id: str, item_id: str, text: str) -> None:
        turn = self.turns.get(response_id)
        if turn is not None and turn.entry_id is None and text:
            turn.transcript = [text]

    async def on_response_done(self, response_id: str, status: str) -> None:
        turn = self.turns.pop(response_id, None)
        if turn is None:
            return
        if self.active == response_id:
            self.active = None
        self._next_say()
        if not turn.utterance.done and not turn.settled:
            self.playback.finish(turn.utterance)
        if not turn.settled and turn.received_frames == 0:  # nothing to play (a tool call): done now
            self._settle(turn)

    def on_played(self, utterance: Utterance) -> None:
        """The carrier confirmed an utterance's last frame played: its line is written, whole."""
        turn = self.unsettled.get(utterance.id)
        if turn is not None:
            self._settle(turn)

    async def on_speech_started(self) -> None:
        """The caller talks: if our audio is still playing, clear it and cut the model's item at what
        the caller heard (the model generates faster than real time, so this is usually long after
        its response was done)."""
        if self.playback.closed or not self.playback.playing:
            return
        dropped = self.playback.clear()
        await self.consumer._send_text(self.playback.frames.clear())
        logger.info("call %s: barge-in, %d utterance(s) cut", self.call_id, len(dropped))
        for utterance in dropped:
            turn = self.unsettled.get(utterance.id)
            if turn is None:
                continue
            if turn.item_id:
                self.session.send(rt.truncate(turn.item_id, utterance.heard * 20))
            self._settle(turn, heard_frames=utterance.heard)

    def _settle(self, turn: ModelTurn, heard_frames: int | None = None) -> None:
        """Write the turn's line: whole (played out), or -- ``heard_frames`` -- cut to the heard part."""
        if turn.settled:
            return
        turn.settled = True
        self.unsettled.pop(turn.utterance.id, None)
        text = "".join(turn.transcript).strip()
        heard_text = None if heard_frames is None else _heard_part(text, heard_frames, turn.received_frames)
        latency, call_id = self._latency_ms(turn), self.call_id
        if turn.entry_id is not None:
            self.consumer._job(lambda: db(streams.settle_bot_line)(
                call_id=call_id, entry_id=turn.entry_id, heard_text=heard_text, latency_ms=latency))
        elif heard_text if heard_frames is not None else text:
            line, interrupted = (heard_text, True) if heard_frames is not None else (text, False)
            self.consumer._job(lambda: db(streams.record_bot_line)(
                call_id=call_id, text=line, interrupted=interrupted, latency_ms=latency))

    async def on_speech_stopped(self) -> None:
        self.speech_stopped_at = self.loop.time()

    async def on_caller_transcript(self, item_id: str, text: str) -> None:
        session, sid = self.consumer.session, self.consumer.stream_sid
        self.consumer._job(lambda: db(streams.record_caller_speech)(
            call_id=session.call_id, call_sid=session.provider_call_id, stream_sid=sid, item_id=item_id, text=text))

    async def on_function_call(self, call_id: str, name: str, arguments: str) -> None:
        if name != rt.END_CALL_TOOL:
            self.session.send(rt.function_output(call_id, {"error": f"unknown tool {name[:40]}"}))
            return
        if self.ending:
            return
        self.ending = True
        self.loop.create_task(self._end_call_tool(call_id))

    async def on_closed(self, reason: str) -> None:
        if self.closed or self.ending:
            return
        self.ending = True
        logger.warning("call %s: %s; ending the call", self.call_id, reason)
        self._end(f"Realtime voice: {reason}")

    # --- helpers ---------------------------------------------------------------------------------
    async def _end_call_tool(self, tool_call_id: str) -> None:
        """The model asked to hang up after saying goodbye: let the goodbye play, then end the call."""
        deadline = self.loop.time() + GOODBYE_WAIT_S
        while self.playback.playing and not self.playback.closed and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        refusal = await db(streams.end_call_from_stream)(self.call_id)
        if refusal is not None and not self.closed:
            self.ending = False
            self.session.send(rt.function_output(tool_call_id, {"error": refusal}))
            self.session.send({"type": "response.create"})

    async def _idle_watchdog(self) -> None:
        while not self.closed:
            await asyncio.sleep(IDLE_CHECK_S)
            if self.loop.time() - self.last_media_at < self.idle_s:
                continue
            await asyncio.sleep(IDLE_GRACE_S)
            if self.closed or self.loop.time() - self.last_media_at < self.idle_s:
                continue
            seconds = self.idle_s
            logger.info("call %s: no caller audio for %.0f s; ending the call", self.call_id, seconds)
            self.ending = True
            self._end(f"Realtime voice: no audio from the caller for {seconds:g} s (realtime.idleHangupMs)")
            return

    def _end(self, error: str) -> None:
        call_id = self.call_id
        self.consumer._job(lambda: db(streams.end_call_from_stream)(call_id, error=error))

    @staticmethod
    def _latency_ms(turn: ModelTurn) -> int | None:
        if turn.speech_stopped_at is None or turn.utterance.first_sent_at is None:
            return None
        return max(0, int((turn.utterance.first_sent_at - turn.speech_stopped_at) * 1000))


def _heard_part(text: str, heard_frames: int, received_frames: float) -> str:
    """The words of ``text`` the caller heard, in proportion to the audio played (the transcript has
    no timing, so this is an estimate, cut at a word boundary)."""
    if not text or received_frames <= 0:
        return ""
    share = min(1.0, heard_frames / received_frames)
    words = text.split()
    return " ".join(words[: int(len(words) * share)])


def settings_from(config) -> rt.RealtimeSettings:
    """``realtime.providers.openai`` of the config as the session's settings (``RealtimeUnavailable``
    without a key)."""
    return rt.realtime_settings(config.realtime.providers.openai.model_dump(), config.realtime.instructions)
