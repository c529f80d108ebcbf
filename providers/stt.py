"""Realtime speech-to-text for media streams: an OpenAI-compatible realtime transcription session.

Protocol (reference/protocols.md §8 "OpenAI Realtime transcription", beta shape; OpenClaw fact sheet
§5.6 for the reference implementation we follow):

* Connect ``{baseUrl}/realtime?intent=transcription`` (``baseUrl`` default ``wss://api.openai.com/v1``)
  with ``Authorization: Bearer <key>`` and ``OpenAI-Beta: realtime=v1``; connect timeout 10 s.
* On open send ``transcription_session.update`` with ``input_audio_format: "g711_ulaw"`` (so Twilio's
  mu-law is forwarded untouched, no transcoding), the model, and ``server_vad`` turn detection
  (``threshold`` = ``vadThreshold`` default 0.5, ``prefix_padding_ms`` 300, ``silence_duration_ms`` =
  ``silenceDurationMs`` default 800; an explicit 0 is honoured).
* Audio goes up as ``input_audio_buffer.append`` (base64). Frames that arrive while the socket is
  (re)connecting are queued (bounded: the newest ``MAX_QUEUED_FRAMES``) and sent once it is open.
* Server events used: ``input_audio_buffer.speech_started`` (caller started talking: barge-in),
  ``conversation.item.input_audio_transcription.delta`` (partial), ``…completed`` (final),
  ``…failed`` / ``error`` (logged).
* A dropped session reconnects with exponential backoff from 1 s, at most ``MAX_RECONNECTS`` times in
  a row (a successful session resets the count); after that transcription stops for this stream and
  speech output keeps working.

Config: ``streaming.providers.openai`` {``baseUrl``, ``apiKey`` (env ``OPENAI_API_KEY``), ``model``
(default ``gpt-4o-transcribe``), ``silenceDurationMs``, ``vadThreshold``, ``language``}. The key never
reaches a log line or an error message.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import websockets
from websockets.asyncio.client import connect

if TYPE_CHECKING:
    from providers.settings import ProviderSettings

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "wss://api.openai.com/v1"
REALTIME_PATH = "/realtime?intent=transcription"
DEFAULT_MODEL = "gpt-4o-transcribe"
DEFAULT_SILENCE_MS = 800
DEFAULT_VAD_THRESHOLD = 0.5
PREFIX_PADDING_MS = 300
CONNECT_TIMEOUT_S = 10.0
MAX_RECONNECTS = 5
BACKOFF_START_S = 1.0
MAX_QUEUED_FRAMES = 500  # 10 s of 20 ms frames
MAX_FRAMES_PER_APPEND = 10  # frames batched into one append when audio backs up
SUPPORTED_PROVIDERS = ("openai",)

# Server event types (beta realtime transcription API).
EV_SPEECH_STARTED = "input_audio_buffer.speech_started"
EV_DELTA = "conversation.item.input_audio_transcription.delta"
EV_COMPLETED = "conversation.item.input_audio_transcription.completed"
EV_FAILED = "conversation.item.input_audio_transcription.failed"
EV_ERROR = "error"

UNSUPPORTED_PROVIDER = "streaming.provider {name} is not supported (only openai realtime transcription)"
MISSING_KEY = "streaming.providers.openai.apiKey is not set (or set OPENAI_API_KEY)"


class SttUnavailable(Exception):
    """Streaming transcription is not configured; the stream runs without speech input."""


@dataclass(frozen=True)
class SttSettings:
    url: str
    api_key: str = field(repr=False)
    model: str = DEFAULT_MODEL
    silence_duration_ms: int = DEFAULT_SILENCE_MS
    vad_threshold: float = DEFAULT_VAD_THRESHOLD
    language: str | None = None


def stt_settings(settings: ProviderSettings, env: Mapping[str, str] | None = None) -> SttSettings:
    env = os.environ if env is None else env
    streaming = settings.streaming
    name = (streaming.provider or "openai").strip().lower()
    if name not in SUPPORTED_PROVIDERS:
        raise SttUnavailable(UNSUPPORTED_PROVIDER.format(name=name))
    section = dict(streaming.providers.get("openai") or {})
    api_key = section.get("apiKey") or (env.get("OPENAI_API_KEY") or "").strip()
    if not isinstance(api_key, str) or not api_key:
        raise SttUnavailable(MISSING_KEY)
    base = str(section.get("baseUrl") or DEFAULT_BASE_URL).rstrip("/")
    silence = section.get("silenceDurationMs")
    threshold = section.get("vadThreshold")
    return SttSettings(
        url=base + REALTIME_PATH,
        api_key=api_key,
        model=str(section.get("model") or DEFAULT_MODEL),
        # `is not None`, not `or`: an explicit 0 is a valid setting (fact sheet §5.6).
        silence_duration_ms=int(silence) if silence is not None else DEFAULT_SILENCE_MS,
        vad_threshold=float(threshold) if threshold is not None else DEFAULT_VAD_THRESHOLD,
        language=section.get("language") or None,
    )


def session_update(settings: SttSettings) -> dict[str, Any]:
    transcription: dict[str, Any] = {"model": settings.model}
    if settings.language:
        transcription["language"] = settings.language
    return {
        "type": "transcription_session.update",
        "session": {
            "input_audio_format": "g711_ulaw",
            "input_audio_transcription": transcription,
            "turn_detection": {
                "type": "server_vad",
                "threshold": settings.vad_threshold,
                "prefix_padding_ms": PREFIX_PADDING_MS,
                "silence_duration_ms": settings.silence_duration_ms,
            },
        },
    }


@dataclass(frozen=True)
class FinalTranscript:
    text: str
    item_id: str


Callback = Callable[..., Awaitable[None]]


def append_message(frames_b64: list[str]) -> str:
    """``input_audio_buffer.append`` for these base64 frames. One frame (a live stream's normal
    case) is spliced into the message text as it is -- base64 needs no JSON escaping; a backlog of
    several (each with its own padding) is joined as audio and encoded once."""
    if len(frames_b64) == 1:
        audio = frames_b64[0]
    else:
        audio = base64.b64encode(b"".join(base64.b64decode(f) for f in frames_b64)).decode("ascii")
    return '{"type":"input_audio_buffer.append","audio":"' + audio + '"}'


class RealtimeTranscriber:
    """One realtime transcription session for one media stream.

    ``push(payload_b64)`` never blocks (called for every inbound frame on the event loop); callbacks
    are awaited in order on the session's reader task: ``on_speech_start()``,
    ``on_partial(text)``, ``on_final(FinalTranscript)``.
    """

    def __init__(
        self,
        settings: SttSettings,
        *,
        on_speech_start: Callback,
        on_final: Callback,
        on_partial: Callback | None = None,
        label: str = "",
    ):
        self.settings = settings
        self._on_speech_start = on_speech_start
        self._on_final = on_final
        self._on_partial = on_partial
        self.label = label
        self.ready = asyncio.Event()
        self._queue: deque[str] = deque(maxlen=MAX_QUEUED_FRAMES)  # base64 frames
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closed = False
        self._partials: dict[str, str] = {}
        self.dropped_frames = 0
        self.sessions = 0

    def start(self, *, not_before: asyncio.Event | None = None, at_most_after_s: float = 0.0) -> None:
        """Open the session (and reopen it when it drops) until ``close()``. With ``not_before``, the
        connection waits for that event, or ``at_most_after_s`` seconds, whichever comes first; the
        audio pushed meanwhile is queued and sent once the session is up."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(
                self._run(not_before, at_most_after_s), name=f"stt {self.label}")

    def push(self, payload_b64: str) -> None:
        """Queue one base64 mu-law frame as it arrived (the caller validated it): a live stream's
        frames go on to the vendor in the same base64 text, never decoded and re-encoded."""
        if self._closed:
            return
        if len(self._queue) == self._queue.maxlen:
            self.dropped_frames += 1
        self._queue.append(payload_b64)
        self._wakeup.set()

    async def close(self) -> None:
        self._closed = True
        self._wakeup.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # closing never raises
                await self._task

    # --- session loop --------------------------------------------------------------------------
    async def _run(self, not_before: asyncio.Event | None = None, at_most_after_s: float = 0.0) -> None:
        if not_before is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(not_before.wait(), at_most_after_s)
        failures = 0
        delay = BACKOFF_START_S
        while not self._closed:
            try:
                await self._session()
                failures, delay = 0, BACKOFF_START_S  # the session ran: a later drop starts afresh
            except asyncio.CancelledError:
                raise
            except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
                failures += 1
                self.ready.clear()
                if failures > MAX_RECONNECTS:
                    logger.warning("realtime transcription for %s gave up after %d attempts: %s",
                                   self.label, failures, type(exc).__name__)
                    return
                logger.info("realtime transcription for %s unavailable (%s); retrying in %.0fs",
                            self.label, type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay *= 2
                continue
            if not self._closed:
                # The vendor closed a working session: reconnect promptly.
                self.ready.clear()
                await asyncio.sleep(0.05)

    async def _session(self) -> None:
        headers = {"Authorization": f"Bearer {self.settings.api_key}", "OpenAI-Beta": "realtime=v1"}
        async with connect(
            self.settings.url, additional_headers=headers, open_timeout=CONNECT_TIMEOUT_S,
            max_size=2**22, compression=None,
        ) as ws:
            self.sessions += 1
            await ws.send(json.dumps(session_update(self.settings)))
            self.ready.set()
            sender = asyncio.get_running_loop().create_task(self._send_audio(ws))
            try:
                async for raw in ws:
                    await self._handle(raw)
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):  # the socket is gone anyway
                    await sender

    async def _send_audio(self, ws) -> None:
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            batch = []
            while self._queue and len(batch) < MAX_FRAMES_PER_APPEND:
                batch.append(self._queue.popleft())
            try:
                await ws.send(append_message(batch))
            except websockets.exceptions.ConnectionClosed:
                # Not sent: keep the audio for the next session.
                self._queue.extendleft(reversed(batch))
                raise

    async def _handle(self, raw: str | bytes) -> None:
        try:
            event = json.loads(raw)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        if kind == EV_SPEECH_STARTED:
            await self._on_speech_start()
        elif kind == EV_DELTA:
            item = str(event.get("item_id") or "")
            self._partials[item] = self._partials.get(item, "") + str(event.get("delta") or "")
            if self._on_partial is not None:
                await self._on_partial(self._partials[item])
        elif kind == EV_COMPLETED:
            item = str(event.get("item_id") or "")
            self._partials.pop(item, None)
            text = str(event.get("transcript") or "").strip()
            if text:
                await self._on_final(FinalTranscript(text=text, item_id=item))
        elif kind in (EV_FAILED, EV_ERROR):
            error = event.get("error") if isinstance(event.get("error"), dict) else {}
            logger.warning("realtime transcription for %s reported %s (%s)", self.label, kind,
                           error.get("code") or error.get("type") or "no code")
