"""A local fake of the OpenAI Realtime API (GA protocol), for speech-to-speech calls.

``GET /v1/realtime?model=…`` upgraded to a WebSocket with ``Authorization: Bearer <key>`` (a beta
``OpenAI-Beta`` header is refused: it would select the old schema). It answers ``session.update``
with ``session.updated`` and plays a model driven by the audio it receives:

* **Server VAD**: every ``audio_per_turn`` bytes of caller mu-law (``input_audio_buffer.append``)
  it "hears" the next line of ``script``: ``input_audio_buffer.speech_started``, ``…speech_stopped``,
  ``…committed``, ``conversation.item.input_audio_transcription.completed``; then it answers on its
  own (``create_response``) with the next of ``replies`` (default ``"You said: <line>"``) -- or, when
  the line is in ``hang_up_on``, with ``"Goodbye!"`` followed by an ``end_call`` function call.
* **Responses**: ``response.created``, ``response.output_audio.delta`` (base64 mu-law at a constant
  level per text, ``level_byte(text)``, in 100 ms chunks, faster than real time), ``…output_audio.done``,
  ``…output_audio_transcript.delta`` / ``.done``, ``response.done``. A client ``response.create``
  whose instructions ask to say a text word for word gets exactly that text.
* **Barge-in**: ``barge_in()`` reports ``speech_started`` and cancels the response in progress
  (``response.done`` with status ``cancelled``), as ``interrupt_response`` does.
* A ``response.create`` while a response is active gets the API's ``error``
  (``conversation_already_has_active_response``, naming the event id) and is counted
  (``refused_creates``); ``announce_after`` keeps an answer active that long before its
  ``response.created``, the window in which a client cannot know the model has begun.
* ``conversation.item.truncate`` is recorded (``truncations``) and answered with
  ``conversation.item.truncated``; ``function_call_output`` items are recorded (``tool_outputs``).
* ``close_sessions()`` closes every socket from the server side; ``refuse`` answers upgrades 503.

Every event sent (``sent``) and received (``received``) is kept, so a test can check both against the
official SDK's models (``openai.types.realtime``). Runs aiohttp on its own loop thread.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.aiohttp_server import LoopThreadServer

API_KEY = "sk-fake-realtime-key-0123456789"
SAY_MARKER = "word for word, and nothing else: "
CHUNK_BYTES = 800  # 100 ms of mu-law


def level_byte(text: str) -> int:
    """The mu-law byte the fake speaks ``text`` at (distinct per text; never 0xFF/0x7F silence)."""
    return 0x10 + zlib.crc32(text.encode()) % 0x60


@dataclass
class RealtimeConnection:
    headers: dict[str, str]
    query: dict[str, str]
    ws: web.WebSocketResponse
    session: dict[str, Any] = field(default_factory=dict)
    audio_bytes: int = 0
    heard: int = 0
    response: asyncio.Task | None = None
    audio_sent_ms: dict[str, int] = field(default_factory=dict)  # item id -> ms of audio sent


class FakeRealtime(LoopThreadServer):
    name = "fake realtime"

    def __init__(self, *, api_key: str = API_KEY) -> None:
        super().__init__()
        self.api_key = api_key
        self.script: deque[str] = deque()
        self.replies: deque[str] = deque()
        self.hang_up_on: set[str] = set()
        self.audio_per_turn = 1600  # 200 ms of caller audio per scripted line
        self.reply_ms = 600
        self.reply_ms_for: dict[str, int] = {}
        self.refuse = False
        self.connections: list[RealtimeConnection] = []
        self.sent: list[dict[str, Any]] = []
        self.received: list[dict[str, Any]] = []
        self.truncations: list[dict[str, Any]] = []
        self.tool_outputs: list[dict[str, Any]] = []
        self.said: list[str] = []  # texts clients asked to be said word for word
        self.refused_creates = 0  # response.create while a response was active
        self.announce_after = 0.0  # seconds an answer to the caller is active before response.created
        # For bench/realtime_bench.py (perf_counter, CLOCK_MONOTONIC: comparable across processes):
        self.timing = False
        self.frame_times: dict[bytes, float] = {}  # first 8 bytes of a caller frame -> when it arrived
        self.first_delta_times: list[tuple[str, float]] = []  # (text, when its first audio delta left)
        self.barge_times: list[float] = []  # when speech_started of a barge_in() left
        self._lock = threading.Lock()

    # --- lifecycle -------------------------------------------------------------------------------
    async def before_stop(self) -> None:
        await self._close_all(1001)

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1"

    def realtime_config(self, **extra: Any) -> dict[str, Any]:
        """The ``realtime`` config section pointing at this fake."""
        return {"enabled": True, "instructions": "You are the dentist's assistant.",
                "providers": {"openai": {"apiKey": self.api_key, "baseUrl": self.ws_base}}, **extra}

    def reset(self) -> None:
        self.script.clear()
        self.replies.clear()
        self.hang_up_on.clear()
        self.audio_per_turn = 1600
        self.reply_ms = 600
        self.reply_ms_for.clear()
        self.refuse = False
        self.announce_after = 0.0
        self.refused_creates = 0

    # --- test controls ---------------------------------------------------------------------------
    def barge_in(self) -> None:
        """The caller starts talking over the model (server VAD): speech_started, response cancelled."""
        self._call(self._barge_in())

    def close_sessions(self) -> None:
        self._call(self._close_all(1000))

    def live(self) -> list[RealtimeConnection]:
        return [c for c in self.connections if not c.ws.closed]

    def sent_of(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.sent if e["type"] == kind]

    def received_of(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.received if e.get("type") == kind]

    # --- server ----------------------------------------------------------------------------------
    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/realtime", self._realtime)

    async def _realtime(self, request: web.Request) -> web.StreamResponse:
        if self.refuse:
            return web.json_response({"error": {"type": "server_error", "message": "overloaded"}}, status=503)
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": {"type": "invalid_request_error", "code": "invalid_api_key",
                                                "message": "Incorrect API key provided"}}, status=401)
        if "OpenAI-Beta" in request.headers or not request.query.get("model"):
            return web.json_response({"error": {"type": "invalid_request_error",
                                                "message": "GA clients send a model and no beta header"}}, status=400)
        ws = web.WebSocketResponse(max_msg_size=2**22)
        await ws.prepare(request)
        conn = RealtimeConnection(dict(request.headers), dict(request.query), ws)
        self.connections.append(conn)
        await self._send(conn, {"type": "session.created", "session": {"type": "realtime", "id": "sess_" + uuid.uuid4().hex,
                                                                        "model": request.query["model"]}})
        try:
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                event = json.loads(message.data)
                if event.get("type") != "input_audio_buffer.append":
                    with self._lock:
                        self.received.append(event)
                await self._handle(conn, event)
        finally:
            if conn.response is not None:
                conn.response.cancel()
        return ws

    async def _send(self, conn: RealtimeConnection, event: dict[str, Any]) -> None:
        event = {"event_id": "event_" + uuid.uuid4().hex[:20], **event}
        with self._lock:
            self.sent.append(event)
        if not conn.ws.closed:
            await conn.ws.send_str(json.dumps(event))

    async def _handle(self, conn: RealtimeConnection, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "session.update":
            conn.session = event.get("session") or {}
            await self._send(conn, {"type": "session.updated", "session": conn.session})
        elif kind == "input_audio_buffer.append":
            with self._lock:
                self.received.append({"type": kind, "audio": f"<{len(base64.b64decode(event['audio']))} bytes>"})
            audio = base64.b64decode(event.get("audio") or "")
            if self.timing:
                now = time.perf_counter()
                for start in range(0, len(audio), 160):
                    self.frame_times.setdefault(audio[start:start + 8], now)
            count = len(audio)
            conn.audio_bytes += count
            conn.heard += count
            if conn.heard >= self.audio_per_turn and self.script:
                conn.heard = 0
                await self._caller_turn(conn, self.script.popleft())
        elif kind == "response.create":
            if conn.response is not None and not conn.response.done():
                await self._send(conn, {"type": "error", "error": {
                    "type": "invalid_request_error", "code": "conversation_already_has_active_response",
                    "message": "Conversation already has an active response in progress",
                    "event_id": event.get("event_id")}})
                self.refused_creates += 1
                return
            response = event.get("response") or {}
            instructions = str(response.get("instructions") or "")
            text = instructions.split(SAY_MARKER, 1)[1] if SAY_MARKER in instructions else "Okay."
            if SAY_MARKER in instructions:
                self.said.append(text)
            self._respond(conn, text, metadata=response.get("metadata"))
        elif kind == "conversation.item.truncate":
            self.truncations.append({**event, "audio_sent_ms": conn.audio_sent_ms.get(event.get("item_id"), 0)})
            await self._send(conn, {"type": "conversation.item.truncated", "item_id": event.get("item_id"),
                                    "content_index": event.get("content_index", 0),
                                    "audio_end_ms": event.get("audio_end_ms", 0)})
        elif kind == "conversation.item.create":
            item = event.get("item") or {}
            if item.get("type") == "function_call_output":
                self.tool_outputs.append(item)

    async def _caller_turn(self, conn: RealtimeConnection, line: str) -> None:
        item_id = "item_" + uuid.uuid4().hex[:16]
        await self._send(conn, {"type": "input_audio_buffer.speech_started", "audio_start_ms": 0, "item_id": item_id})
        await self._send(conn, {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 200, "item_id": item_id})
        await self._send(conn, {"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": None})
        await self._send(conn, {"type": "conversation.item.input_audio_transcription.completed", "item_id": item_id,
                                "content_index": 0, "transcript": line,
                                "usage": {"type": "duration", "seconds": 0.2}})
        if line in self.hang_up_on:
            self._respond(conn, "Goodbye!", tool="end_call")
        else:
            self._respond(conn, self.replies.popleft() if self.replies else f"You said: {line}",
                          announce_after=self.announce_after)

    def _respond(self, conn: RealtimeConnection, text: str, tool: str | None = None,
                 metadata: dict[str, str] | None = None, announce_after: float = 0.0) -> None:
        if conn.response is not None and not conn.response.done():
            conn.response.cancel()
        conn.response = asyncio.get_running_loop().create_task(
            self._response(conn, text, tool, metadata, announce_after))

    async def _response(self, conn: RealtimeConnection, text: str, tool: str | None,
                        metadata: dict[str, str] | None = None, announce_after: float = 0.0) -> None:
        if announce_after:  # the response is active (a response.create is refused) before it is announced
            await asyncio.sleep(announce_after)
        response_id = "resp_" + uuid.uuid4().hex[:16]
        item_id = "item_" + uuid.uuid4().hex[:16]
        common = {"response_id": response_id, "item_id": item_id, "output_index": 0, "content_index": 0}
        status = "completed"
        meta = {"metadata": metadata} if metadata else {}
        await self._send(conn, {"type": "response.created", "response": {
            "id": response_id, "object": "realtime.response", "status": "in_progress", "output": [], **meta}})
        try:
            audio = bytes([level_byte(text)]) * (self.reply_ms_for.get(text, self.reply_ms) * 8)
            chunks = [audio[i:i + CHUNK_BYTES] for i in range(0, len(audio), CHUNK_BYTES)]
            words = text.split(" ")
            said = 0
            for index, chunk in enumerate(chunks):
                if index == 0 and self.timing:
                    self.first_delta_times.append((text, time.perf_counter()))
                await self._send(conn, {"type": "response.output_audio.delta", **common,
                                        "delta": base64.b64encode(chunk).decode()})
                conn.audio_sent_ms[item_id] = conn.audio_sent_ms.get(item_id, 0) + len(chunk) // 8
                # The transcript keeps pace with the audio, word by word, as the real model's does.
                upto = round(len(words) * (index + 1) / len(chunks))
                if upto > said:
                    delta = " ".join(words[said:upto]) + (" " if upto < len(words) else "")
                    await self._send(conn, {"type": "response.output_audio_transcript.delta", **common,
                                            "delta": delta})
                    said = upto
                await asyncio.sleep(0.01)  # 100 ms of audio every 10 ms: ten times real time
            await self._send(conn, {"type": "response.output_audio.done", **common})
            await self._send(conn, {"type": "response.output_audio_transcript.done", **common, "transcript": text})
            if tool:
                await self._send(conn, {"type": "response.function_call_arguments.done", "response_id": response_id,
                                        "item_id": "item_" + uuid.uuid4().hex[:16], "output_index": 1,
                                        "call_id": "call_" + uuid.uuid4().hex[:16], "name": tool, "arguments": "{}"})
        except asyncio.CancelledError:
            status = "cancelled"
        await self._send(conn, {"type": "response.done", "response": {
            "id": response_id, "object": "realtime.response", "status": status, "output": [], **meta}})

    async def _barge_in(self) -> None:
        for conn in self.live():
            if self.timing:
                self.barge_times.append(time.perf_counter())
            await self._send(conn, {"type": "input_audio_buffer.speech_started", "audio_start_ms": 0,
                                    "item_id": "item_" + uuid.uuid4().hex[:16]})
            if conn.response is not None and not conn.response.done():
                conn.response.cancel()

    async def _close_all(self, code: int) -> None:
        for conn in list(self.connections):
            if not conn.ws.closed:
                await conn.ws.close(code=code)


@contextlib.contextmanager
def running_fake_realtime(**kwargs: Any) -> Iterator[FakeRealtime]:
    fake = FakeRealtime(**kwargs).start()
    try:
        yield fake
    finally:
        fake.stop()
