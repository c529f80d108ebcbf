"""A speech-to-speech session for one call: the OpenAI Realtime API, GA protocol.

Sources: OpenAI "Realtime API" reference (client and server events, GA) and the "Realtime
conversations" guide, summarised in reference/protocols.md §8 ("OpenAI Realtime conversation, GA
shape"); event names are checked in the tests against the official SDK's models
(``openai.types.realtime``). The beta protocol's names (``response.audio.delta``,
``input_audio_format: "g711_ulaw"``, the ``OpenAI-Beta`` header) are not used.

* Connect ``{baseUrl}/realtime?model={model}`` with ``Authorization: Bearer <key>`` (10 s timeout).
  The URL is logged, never the key.
* ``session.update``: ``type: "realtime"``, instructions, ``audio.input.format`` and
  ``audio.output.format`` ``{type: "audio/pcmu"}`` -- carrier mu-law goes up untouched and the model's
  mu-law comes down ready to send, no resampling either way -- input transcription on, server VAD
  (the model answers a finished caller turn by itself and stops when the caller barges in), the
  voice, and the tools (``end_call``).
* Up: ``input_audio_buffer.append`` (the carrier's base64 text as it arrived), ``response.create``
  (to say a given text: the greeting, a ``speak``), ``conversation.item.truncate`` (after a barge-in,
  at what the caller actually heard), ``conversation.item.create`` with a ``function_call_output``.
* Down, handed to the ``RealtimeListener``: ``input_audio_buffer.speech_started`` /
  ``speech_stopped``, ``conversation.item.input_audio_transcription.completed``,
  ``response.created``, ``response.output_audio.delta`` (base64 mu-law), ``response.output_audio.done``,
  ``response.output_audio_transcript.delta`` / ``.done``, ``response.function_call_arguments.done``,
  ``response.done``, ``error``. A session the server closes is over: the listener hears
  ``on_closed`` (no reconnect -- a new session would not know the conversation).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import websockets
from websockets.asyncio.client import connect

from providers.stt import append_message

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
MAX_QUEUED_FRAMES = 500  # 10 s of 20 ms caller frames while the session connects
MAX_FRAMES_PER_APPEND = 10
MISSING_KEY = "realtime.providers.openai.apiKey is not set (or set OPENAI_API_KEY)"
END_CALL_TOOL = "end_call"
TOOLS = [{
    "type": "function",
    "name": END_CALL_TOOL,
    "description": "Hang up this phone call. Say goodbye to the caller first, then call this.",
    "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
}]
TAG_KEY = "voicecall"  # response metadata key naming the line a response speaks
SAY_EXACTLY = "Say exactly the following to the caller, word for word, and nothing else: {text}"


class RealtimeUnavailable(Exception):
    """The realtime session cannot be configured (no key): the call cannot be bridged."""


@dataclass(frozen=True)
class RealtimeSettings:
    url: str  # {baseUrl}/realtime?model={model}: safe to log
    api_key: str = field(repr=False)
    model: str = "gpt-realtime"
    voice: str = "marin"
    instructions: str = ""


def realtime_settings(section: Mapping[str, Any], instructions: str | None,
                      env: Mapping[str, str] | None = None) -> RealtimeSettings:
    """From ``realtime.providers.openai`` (already validated by the config schema)."""
    env = os.environ if env is None else env
    api_key = section.get("api_key") or (env.get("OPENAI_API_KEY") or "").strip()
    if not api_key:
        raise RealtimeUnavailable(MISSING_KEY)
    model = section.get("model") or "gpt-realtime"
    base = str(section.get("base_url") or "wss://api.openai.com/v1").rstrip("/")
    return RealtimeSettings(url=f"{base}/realtime?model={model}", api_key=api_key, model=model,
                            voice=section.get("voice") or "marin", instructions=instructions or "")


def session_update(settings: RealtimeSettings) -> dict[str, Any]:
    return {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "model": settings.model,
            "instructions": settings.instructions,
            "output_modalities": ["audio"],
            "audio": {
                "input": {
                    "format": {"type": "audio/pcmu"},
                    "transcription": {"model": "gpt-4o-transcribe"},
                    "turn_detection": {"type": "server_vad", "create_response": True, "interrupt_response": True},
                },
                "output": {"format": {"type": "audio/pcmu"}, "voice": settings.voice},
            },
            "tools": TOOLS,
            "tool_choice": "auto",
        },
    }


def say_exactly(text: str, tag: str | None = None) -> dict[str, Any]:
    """``response.create`` that makes the model speak ``text`` (the greeting, a ``speak``). ``tag`` is
    both the event's id (an ``error`` it causes names it) and the response's metadata (its
    ``response.created`` names it)."""
    event: dict[str, Any] = {"type": "response.create", "response": {"instructions": SAY_EXACTLY.format(text=text)}}
    if tag:
        event["event_id"] = tag
        event["response"]["metadata"] = {TAG_KEY: tag}
    return event


def truncate(item_id: str, audio_end_ms: int) -> dict[str, Any]:
    return {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
            "audio_end_ms": max(0, int(audio_end_ms))}


def function_output(call_id: str, output: dict[str, Any]) -> dict[str, Any]:
    return {"type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": call_id, "output": json.dumps(output)}}


class RealtimeListener(Protocol):
    async def on_speech_started(self) -> None: ...
    async def on_speech_stopped(self) -> None: ...
    async def on_caller_transcript(self, item_id: str, text: str) -> None: ...
    async def on_response_created(self, response_id: str, tag: str) -> None: ...
    async def on_refused(self, event_id: str, code: str) -> None: ...
    async def on_audio(self, response_id: str, item_id: str, delta_b64: str) -> None: ...
    async def on_audio_done(self, response_id: str, item_id: str) -> None: ...
    async def on_bot_transcript_delta(self, response_id: str, item_id: str, delta: str) -> None: ...
    async def on_bot_transcript(self, response_id: str, item_id: str, text: str) -> None: ...
    async def on_function_call(self, call_id: str, name: str, arguments: str) -> None: ...
    async def on_response_done(self, response_id: str, status: str) -> None: ...
    async def on_closed(self, reason: str) -> None: ...


class RealtimeSession:
    """One call's session. ``push(payload_b64)`` never blocks; ``send(event)`` queues a client event;
    the listener's callbacks run in order on the session task."""

    def __init__(self, settings: RealtimeSettings, listener: RealtimeListener, *, label: str = ""):
        self.settings = settings
        self.listener = listener
        self.label = label
        self.connected = asyncio.Event()
        self._audio: deque[str] = deque(maxlen=MAX_QUEUED_FRAMES)
        self._events: deque[str] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        self.dropped_frames = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"realtime {self.label}")

    def push(self, payload_b64: str) -> None:
        if self._closing:
            return
        if len(self._audio) == self._audio.maxlen:
            self.dropped_frames += 1
        self._audio.append(payload_b64)
        self._wakeup.set()

    def send(self, event: dict[str, Any]) -> None:
        if not self._closing:
            self._events.append(json.dumps(event))
            self._wakeup.set()

    async def close(self) -> None:
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self) -> None:
        reason = "closed"
        try:
            headers = {"Authorization": f"Bearer {self.settings.api_key}"}
            async with connect(self.settings.url, additional_headers=headers, open_timeout=CONNECT_TIMEOUT_S,
                               max_size=2**22, compression=None) as ws:
                await ws.send(json.dumps(session_update(self.settings)))
                self.connected.set()
                logger.info("realtime session for %s open (%s)", self.label, self.settings.url)
                writer = asyncio.get_running_loop().create_task(self._write(ws))
                try:
                    async for raw in ws:
                        await self._dispatch(raw)
                    reason = f"the realtime provider closed the session (code {ws.close_code})"
                finally:
                    writer.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await writer
        except asyncio.CancelledError:
            raise
        except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
            detail = getattr(getattr(exc, "response", None), "status_code", None)
            reason = (f"the realtime session could not be {'kept' if self.connected.is_set() else 'opened'}: "
                      f"{type(exc).__name__}{f' (HTTP {detail})' if detail else ''}")
        except Exception as exc:  # a listener bug must not leave the call without an ending
            logger.exception("realtime session for %s failed", self.label)
            reason = f"the realtime session failed: {type(exc).__name__}"
        if not self._closing:
            await self.listener.on_closed(reason)

    async def _write(self, ws) -> None:
        while True:
            while not self._audio and not self._events:
                self._wakeup.clear()
                await self._wakeup.wait()
            while self._events:  # control events first: a truncate must not wait behind audio
                await ws.send(self._events.popleft())
            if self._audio:
                batch = [self._audio.popleft() for _ in range(min(len(self._audio), MAX_FRAMES_PER_APPEND))]
                await ws.send(append_message(batch))  # the same append as realtime transcription's

    async def _dispatch(self, raw: str | bytes) -> None:
        try:
            event = json.loads(raw)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        listener = self.listener
        if kind == "response.output_audio.delta":
            await listener.on_audio(str(event.get("response_id") or ""), str(event.get("item_id") or ""),
                                    str(event.get("delta") or ""))
        elif kind == "input_audio_buffer.speech_started":
            await listener.on_speech_started()
        elif kind == "input_audio_buffer.speech_stopped":
            await listener.on_speech_stopped()
        elif kind == "conversation.item.input_audio_transcription.completed":
            text = str(event.get("transcript") or "").strip()
            if text:
                await listener.on_caller_transcript(str(event.get("item_id") or ""), text)
        elif kind == "response.created":
            response = event.get("response") if isinstance(event.get("response"), dict) else {}
            metadata = response.get("metadata") if isinstance(response.get("metadata"), dict) else {}
            await listener.on_response_created(str(response.get("id") or ""), str(metadata.get(TAG_KEY) or ""))
        elif kind == "response.output_audio.done":
            await listener.on_audio_done(str(event.get("response_id") or ""), str(event.get("item_id") or ""))
        elif kind == "response.output_audio_transcript.delta":
            await listener.on_bot_transcript_delta(str(event.get("response_id") or ""),
                                                   str(event.get("item_id") or ""), str(event.get("delta") or ""))
        elif kind == "response.output_audio_transcript.done":
            await listener.on_bot_transcript(str(event.get("response_id") or ""), str(event.get("item_id") or ""),
                                             str(event.get("transcript") or "").strip())
        elif kind == "response.function_call_arguments.done":
            await listener.on_function_call(str(event.get("call_id") or ""), str(event.get("name") or ""),
                                            str(event.get("arguments") or ""))
        elif kind == "response.done":
            response = event.get("response") if isinstance(event.get("response"), dict) else {}
            await listener.on_response_done(str(response.get("id") or ""), str(response.get("status") or ""))
        elif kind == "error":
            error = event.get("error") if isinstance(event.get("error"), dict) else {}
            code = str(error.get("code") or error.get("type") or "no code")[:80]
            logger.warning("realtime session for %s reported an error: %s", self.label, code)
            await listener.on_refused(str(error.get("event_id") or ""), code)
