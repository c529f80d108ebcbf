"""A local fake of OpenAI's speech endpoints: streamed TTS and realtime transcription.

* ``POST /v1/audio/speech`` (reference/protocols.md §8 "OpenAI TTS"): ``Authorization: Bearer``,
  JSON ``model``/``input``/``voice``/``response_format``. For ``response_format: "pcm"`` the body is
  raw 24 kHz s16le mono PCM sent with chunked transfer encoding, ``CHUNK_MS`` per chunk. The audio
  is a constant level per text (``level_for(text)``), so a test can tell utterances apart by their
  mu-law bytes after our resampling; its length is ``tts_ms`` (or ``tts_ms_for[text]``).
  ``hold_after_first_chunk`` keeps the response open after its first chunk until ``release()``:
  that is how a test proves playback starts before synthesis ends. Errors answer in OpenAI's shape.
* ``GET /v1/realtime?intent=transcription`` upgraded to a WebSocket (protocols.md §8 "OpenAI Realtime
  transcription", beta shape): checks the bearer key and ``OpenAI-Beta: realtime=v1``, answers
  ``transcription_session.update`` with ``transcription_session.updated``, and counts the mu-law bytes
  of ``input_audio_buffer.append``. Each time ``audio_per_utterance`` bytes of caller audio arrived
  it "hears" the next line of ``script``: ``input_audio_buffer.speech_started``, one ``…delta`` per
  word, ``…completed``. ``speech_started()`` makes it report speech onset on demand (barge-in) and
  ``drop_sessions()`` closes every socket (reconnect tests).

Runs aiohttp on its own event loop thread; every public method is safe to call from the test thread.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from tests.fakes.aiohttp_server import LoopThreadServer
from tests.fakes.polling import wait_until

API_KEY = "sk-fake-openai-key-0123456789"
PCM_RATE = 24000
CHUNK_MS = 100


def level_for(text: str) -> int:
    """The constant PCM level the fake speaks ``text`` at (distinct per text, never silence)."""
    return 2000 + (zlib.crc32(text.encode()) % 24) * 1000


@dataclass
class SttSession:
    headers: dict[str, str]
    query: str
    updates: list[dict[str, Any]] = field(default_factory=list)
    audio_bytes: int = 0
    ws: web.WebSocketResponse | None = None


class FakeOpenAI(LoopThreadServer):
    name = "fake OpenAI"

    def __init__(self, *, api_key: str = API_KEY) -> None:
        super().__init__()
        self.api_key = api_key
        self.tts_ms = 400
        self.tts_ms_for: dict[str, int] = {}
        self.tts_status: int | None = None  # answer every TTS request with this error status
        self.tts_requests: list[dict[str, Any]] = []
        self.tts_headers: list[dict[str, str]] = []
        self.tts_open = 0  # responses still being written
        self.hold_after_first_chunk = False
        self.script: deque[str] = deque()
        self.audio_per_utterance = 1600  # 200 ms of caller audio per scripted line
        self.sessions: list[SttSession] = []
        self.refuse_stt = 0  # refuse this many realtime connections (HTTP 503) first
        self._lock = threading.Lock()
        self._release = asyncio.Event()

    # --- lifecycle -------------------------------------------------------------------------------
    async def before_stop(self) -> None:
        for session in list(self.sessions):
            if session.ws is not None and not session.ws.closed:
                await session.ws.close()

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1"

    def tts_config(self, **extra: Any) -> dict[str, Any]:
        """The plugin ``tts`` section pointing at this fake."""
        return {"provider": "openai", "providers": {"openai": {"apiKey": self.api_key, "baseUrl": self.http_base, **extra}}}

    def streaming_config(self, **extra: Any) -> dict[str, Any]:
        """``streaming.providers.openai`` pointing at this fake."""
        return {"openai": {"apiKey": self.api_key, "baseUrl": self.ws_base, **extra}}

    # --- test controls ---------------------------------------------------------------------------
    def reset(self) -> None:
        """Back to the defaults (a fake shared by several tests); recorded requests are kept."""
        self.tts_ms = 400
        self.tts_ms_for.clear()
        self.tts_status = None
        self.hold_after_first_chunk = False
        self.script.clear()
        self.audio_per_utterance = 1600
        self.refuse_stt = 0
        self._call(self._reset_release())

    async def _reset_release(self) -> None:
        self._release.clear()

    def release(self) -> None:
        """Let held TTS responses finish."""
        self._loop.call_soon_threadsafe(self._release.set)

    def speech_started(self) -> None:
        """Report caller speech onset on every live transcription socket."""
        self._call(self._broadcast({"type": "input_audio_buffer.speech_started", "audio_start_ms": 0, "item_id": "x"}))

    def drop_sessions(self) -> None:
        async def _drop() -> None:
            for session in list(self.sessions):
                if session.ws is not None and not session.ws.closed:
                    await session.ws.close(code=1011)

        self._call(_drop())

    def live_sessions(self) -> list[SttSession]:
        with self._lock:
            return [s for s in self.sessions if s.ws is not None and not s.ws.closed]

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
        return wait_until(predicate, timeout, what=what)

    # --- server ----------------------------------------------------------------------------------
    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/audio/speech", self._speech)
        app.router.add_get("/v1/realtime", self._realtime)

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    @staticmethod
    def _error(status: int, message: str, kind: str, code: str | None = None) -> web.Response:
        body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        return web.json_response(body, status=status)

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return self._error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        try:
            body = await request.json()
        except ValueError:
            return self._error(400, "We could not parse the JSON body of your request.", "invalid_request_error")
        with self._lock:
            self.tts_requests.append(body)
            self.tts_headers.append(dict(request.headers))
        if self.tts_status:
            return self._error(self.tts_status, "The server had an error.", "server_error")
        if not isinstance(body, dict) or not body.get("input") or not body.get("model") or not body.get("voice"):
            return self._error(400, "Missing required parameter.", "invalid_request_error")
        if body.get("response_format") != "pcm":
            return self._error(400, "The fake only speaks pcm.", "invalid_request_error")
        text = str(body["input"])
        samples = int(PCM_RATE * self.tts_ms_for.get(text, self.tts_ms) / 1000)
        audio = np.full(samples, level_for(text), dtype="<i2").tobytes()
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        self.tts_open += 1
        try:
            chunk = PCM_RATE * 2 * CHUNK_MS // 1000
            for index, offset in enumerate(range(0, len(audio), chunk)):
                await response.write(audio[offset : offset + chunk])
                if index == 0 and self.hold_after_first_chunk:
                    await self._release.wait()
            await response.write_eof()
        finally:
            self.tts_open -= 1
        return response

    async def _realtime(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("intent") != "transcription":
            return self._error(400, "intent=transcription required", "invalid_request_error")
        if not self._authorized(request):
            return self._error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        if self.refuse_stt > 0:
            self.refuse_stt -= 1
            return self._error(503, "Slow down.", "server_error")
        ws = web.WebSocketResponse(max_msg_size=2**22)
        await ws.prepare(request)
        session = SttSession(headers=dict(request.headers), query=request.query_string, ws=ws)
        with self._lock:
            self.sessions.append(session)
        heard = 0
        item = 0
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                continue
            try:
                event = json.loads(message.data)
            except ValueError:
                await ws.send_json({"type": "error", "error": {"type": "invalid_request_error", "code": "bad_json"}})
                continue
            kind = event.get("type")
            if kind == "transcription_session.update":
                session.updates.append(event)
                await ws.send_json({"type": "transcription_session.updated", "session": event.get("session", {})})
            elif kind == "input_audio_buffer.append":
                audio = base64.b64decode(event.get("audio") or "")
                session.audio_bytes += len(audio)
                heard += len(audio)
                if heard >= self.audio_per_utterance and self.script:
                    heard = 0
                    item += 1
                    await self._say(ws, f"item_{id(session)}_{item}", self.script.popleft())
        return ws

    @staticmethod
    async def _say(ws: web.WebSocketResponse, item_id: str, text: str) -> None:
        await ws.send_json({"type": "input_audio_buffer.speech_started", "audio_start_ms": 0, "item_id": item_id})
        await ws.send_json({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 500, "item_id": item_id})
        for word in text.split(" "):
            await ws.send_json({"type": "conversation.item.input_audio_transcription.delta", "item_id": item_id,
                                "content_index": 0, "delta": word + " "})
        await ws.send_json({"type": "conversation.item.input_audio_transcription.completed", "item_id": item_id,
                            "content_index": 0, "transcript": text})

    async def _broadcast(self, event: dict[str, Any]) -> None:
        for session in list(self.sessions):
            if session.ws is not None and not session.ws.closed:
                await session.ws.send_json(event)


@contextlib.contextmanager
def running_fake_openai(**kwargs: Any) -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI(**kwargs).start()
    try:
        yield fake
    finally:
        fake.stop()
