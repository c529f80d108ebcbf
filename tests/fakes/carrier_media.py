"""The carrier's side of a bidirectional media stream that queues what it is sent, for tests and the
media bench: Telnyx and Plivo here, Twilio in ``tests/fakes/twilio_media.py`` on the same base.

All three carriers *queue* the audio we send and play it in order in real time (reference/protocols.md
§4 "Outbound media is buffered and played in order", §5 "Telnyx media-streaming WebSocket", §6 "Plivo
audio-stream WebSocket"). So does this fake: a player thread takes one 20 ms frame off the queue per
20 ms on a deadline clock, and a mark (Twilio, Telnyx) or checkpoint (Plivo) we queued is answered only
when the player reaches it -- when the audio before it has actually played. A clear (Twilio and Telnyx
``clear``, Plivo ``clearAudio``) empties the queue: Twilio and Telnyx return the marks it still held at
once, Plivo drops its checkpoints and answers ``clearedAudio``.

What arrived and what played is recorded: ``received`` (every frame, in order), ``played`` (the
frames the caller heard, with the time each started), ``max_queued_s`` (the most audio ever waiting
in the queue: how far ahead of playback the server sent). The carriers' own frame shapes:

* Telnyx: ``connected``, ``start`` (``stream_id`` at the top, ``start.call_control_id``,
  ``start.client_state``, ``start.media_format`` PCMU 8000), ``media`` (``media.track`` ``inbound``,
  ``chunk``, ``timestamp``, ``payload``), ``dtmf``, ``mark``, ``stop``; ``sequence_number`` strings.
* Plivo: ``start`` (``start.callId``, ``start.streamId``, ``start.accountId``, ``start.tracks``,
  ``start.mediaFormat`` ``audio/x-mulaw`` 8000), ``media``, ``dtmf``, ``playedStream``,
  ``clearedAudio``; ``sequenceNumber`` numbers; no stop message (the socket just closes).
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.fakes.polling import wait_until

FRAME_BYTES = 160  # 20 ms of mu-law at 8 kHz
FRAME_SECONDS = 0.020
PLIVO_ACCOUNT_ID = "MA" + "0123456789ABCDEFGH"


class QueuedCarrierStream:
    """The carrier-neutral part: socket, reader, real-time player, records. Subclasses speak a dialect."""

    #: wire event names of our outbound frames
    audio_event = ""
    mark_event = ""
    clear_event = ""
    #: messages the client library buffers before TCP flow control pushes back on the server
    client_max_queue = 64

    def __init__(self, url: str, *, headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.headers = headers or {}
        self.received: list[tuple[str, Any]] = []  # ("media", bytes) | ("mark", name) | ("clear", None) | ("bad", raw)
        self.played: list[tuple[float, bytes]] = []
        self.answered_marks: list[str] = []
        self.first_audio_at: float | None = None
        self.max_queued_s = 0.0
        self.close_code: int | None = None
        self.closed = threading.Event()
        self.sequence = 0
        self.stream_id = str(uuid.uuid4())
        self._queue: deque[tuple[str, Any]] = deque()  # ("audio", frame) | ("mark", name)
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._ws = None

    # --- connection ------------------------------------------------------------------------------
    def connect(self, *, sock=None, read: bool = True):
        """Open the socket (raises ``websockets.exceptions.InvalidStatus`` if the upgrade is refused).

        ``read=False`` plays a peer that stops reading: nothing is consumed until ``start_reading()``
        (the client library buffers a few messages, then TCP flow control pushes back on the server).
        """
        self._ws = connect(self.url, sock=sock, additional_headers=self.headers, open_timeout=10,
                           max_size=2**20, max_queue=self.client_max_queue, legacy=True)
        threading.Thread(target=self._play, daemon=True).start()
        if read:
            self.start_reading()
        return self

    def start_reading(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
        self.closed.wait(10)

    def send(self, message: dict[str, Any]) -> None:
        try:
            self._ws.send(json.dumps(message))
        except ConnectionClosed:
            pass

    def send_raw(self, data: str | bytes) -> None:
        self._ws.send(data)

    def _next_seq(self) -> int:
        self.sequence += 1
        return self.sequence

    # --- server -> carrier -----------------------------------------------------------------------
    def _read(self) -> None:
        try:
            for raw in self._ws:
                try:
                    message = json.loads(raw)
                    event = message["event"]
                except (ValueError, KeyError, TypeError):
                    self._record(("bad", raw))
                    continue
                if event == self.audio_event:
                    self._on_audio(base64.b64decode(message["media"]["payload"]))
                elif event == self.mark_event:
                    name = self.mark_name_of(message)
                    self._record(("mark", name))
                    with self._lock:
                        self._queue.append(("mark", name))
                    self._wakeup.set()
                elif event == self.clear_event:
                    self._record(("clear", None))
                    with self._lock:
                        held = [item for kind, item in self._queue if kind == "mark"]
                        self._queue.clear()
                    self.on_clear(held)
                else:
                    self._record(("bad", raw))
        except ConnectionClosed as exc:
            self.close_code = exc.rcvd.code if exc.rcvd is not None else 1006
        finally:
            if self.close_code is None and self._ws is not None and self._ws.protocol.close_rcvd is not None:
                self.close_code = self._ws.protocol.close_rcvd.code
            self.closed.set()
            self._wakeup.set()

    def _on_audio(self, audio: bytes) -> None:
        self._record(("media", audio))
        if self.first_audio_at is None:
            self.first_audio_at = time.monotonic()
        with self._lock:
            for start in range(0, len(audio), FRAME_BYTES):
                self._queue.append(("audio", audio[start:start + FRAME_BYTES]))
            queued = sum(1 for kind, _ in self._queue if kind == "audio") * FRAME_SECONDS
            self.max_queued_s = max(self.max_queued_s, queued)
        self._wakeup.set()

    def _play(self) -> None:
        """Play the queue in real time; answer a mark when the player reaches it."""
        next_at = None
        while not self.closed.is_set():
            with self._lock:
                item = self._queue.popleft() if self._queue else None
            if item is None:
                next_at = None  # idle: the next audio starts playing when it arrives
                self._wakeup.wait(0.05)
                self._wakeup.clear()
                continue
            kind, value = item
            if kind == "mark":
                if next_at is not None and next_at > time.monotonic():
                    time.sleep(next_at - time.monotonic())  # the audio before it has finished playing
                self.answered_marks.append(value)
                self.answer_mark(value)
                continue
            now = time.monotonic()
            next_at = now if next_at is None or next_at < now - FRAME_SECONDS else next_at
            if next_at > now:
                time.sleep(next_at - now)
            with self._lock:
                self.played.append((next_at, value))
            next_at += FRAME_SECONDS

    def _record(self, event: tuple[str, Any]) -> None:
        with self._lock:
            self.received.append(event)

    # --- dialect hooks ---------------------------------------------------------------------------
    def mark_name_of(self, message: dict[str, Any]) -> str:
        raise NotImplementedError

    def answer_mark(self, name: str) -> None:
        raise NotImplementedError

    def on_clear(self, held_marks: list[str]) -> None:
        raise NotImplementedError

    # --- what arrived ----------------------------------------------------------------------------
    def snapshot(self) -> list[tuple[str, Any]]:
        with self._lock:
            return list(self.received)

    def media_frames(self) -> list[bytes]:
        """The audio that arrived, 20 ms frame by 20 ms frame (a message may carry several)."""
        return [data[start:start + FRAME_BYTES] for kind, data in self.snapshot() if kind == "media"
                for start in range(0, len(data), FRAME_BYTES)]

    def played_frames(self) -> list[bytes]:
        with self._lock:
            return [frame for _, frame in self.played]

    def marks(self) -> list[str]:
        return [data for kind, data in self.snapshot() if kind == "mark"]

    def clears(self) -> int:
        return sum(1 for kind, _ in self.snapshot() if kind == "clear")

    def queued_audio_s(self) -> float:
        with self._lock:
            return sum(1 for kind, _ in self._queue if kind == "audio") * FRAME_SECONDS

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
        return wait_until(predicate, timeout, interval=0.01, what=what,
                          detail=lambda: f"received {len(self.received)} frames, close code {self.close_code}")

    def wait_closed(self, timeout: float = 20.0) -> int | None:
        if not self.closed.wait(timeout):
            raise AssertionError("socket was not closed")
        return self.close_code


class TelnyxMediaStream(QueuedCarrierStream):
    """Telnyx Call Control media streaming, ``stream_bidirectional_mode: rtp``, PCMU."""

    audio_event, mark_event, clear_event = "media", "mark", "clear"

    def mark_name_of(self, message: dict[str, Any]) -> str:
        return message["mark"]["name"]

    def answer_mark(self, name: str) -> None:
        self.send({"event": "mark", "sequence_number": str(self._next_seq()), "stream_id": self.stream_id,
                   "mark": {"name": name}})

    def on_clear(self, held_marks: list[str]) -> None:
        for name in held_marks:  # Telnyx returns pending marks at once on a clear
            self.answered_marks.append(name)
            self.answer_mark(name)

    def send_connected(self) -> None:
        self.send({"event": "connected", "version": "1.0.0"})

    def start_message(self, call_control_id: str, client_state: str | None = None, *,
                      encoding: str = "PCMU", sample_rate: int = 8000) -> dict[str, Any]:
        return {
            "event": "start", "sequence_number": str(self._next_seq()), "stream_id": self.stream_id,
            "start": {"user_id": str(uuid.UUID(int=7)), "call_control_id": call_control_id,
                      "client_state": client_state,
                      "media_format": {"encoding": encoding, "sample_rate": sample_rate, "channels": 1}},
        }

    def send_start(self, call_control_id: str, client_state: str | None = None, **media_format: Any) -> None:
        self.send(self.start_message(call_control_id, client_state, **media_format))

    def send_media(self, frames: int, byte: int = 0x35) -> None:
        for index in range(frames):
            self.send({"event": "media", "sequence_number": str(self._next_seq()), "stream_id": self.stream_id,
                       "media": {"track": "inbound", "chunk": str(index + 1), "timestamp": str(index * 20),
                                 "payload": base64.b64encode(bytes([byte]) * FRAME_BYTES).decode()}})

    def send_dtmf(self, digit: str) -> None:
        self.send({"event": "dtmf", "sequence_number": str(self._next_seq()), "stream_id": self.stream_id,
                   "dtmf": {"digit": digit}})

    def send_stop(self, call_control_id: str) -> None:
        self.send({"event": "stop", "sequence_number": str(self._next_seq()), "stream_id": self.stream_id,
                   "stop": {"user_id": str(uuid.UUID(int=7)), "call_control_id": call_control_id}})


class PlivoMediaStream(QueuedCarrierStream):
    """Plivo Audio Streaming, ``bidirectional="true"``, ``contentType="audio/x-mulaw;rate=8000"``."""

    audio_event, mark_event, clear_event = "playAudio", "checkpoint", "clearAudio"

    def mark_name_of(self, message: dict[str, Any]) -> str:
        return message["name"]

    def answer_mark(self, name: str) -> None:
        self.send({"event": "playedStream", "sequenceNumber": self._next_seq(), "streamId": self.stream_id,
                   "name": name})

    def on_clear(self, held_marks: list[str]) -> None:
        # Queued checkpoints go with the audio; Plivo confirms the flush.
        self.send({"event": "clearedAudio", "sequenceNumber": self._next_seq(), "streamId": self.stream_id})

    def start_message(self, call_uuid: str, *, encoding: str = "audio/x-mulaw", sample_rate: int = 8000,
                      extra_headers: str | None = None) -> dict[str, Any]:
        return {
            "event": "start", "sequenceNumber": self._next_seq(),
            "start": {"callId": call_uuid, "streamId": self.stream_id, "accountId": PLIVO_ACCOUNT_ID,
                      "tracks": ["inbound"], "mediaFormat": {"encoding": encoding, "sampleRate": sample_rate}},
            "extra_headers": extra_headers,
        }

    def send_start(self, call_uuid: str, **fields: Any) -> None:
        self.send(self.start_message(call_uuid, **fields))

    def send_media(self, frames: int, byte: int = 0x35) -> None:
        for index in range(frames):
            self.send({"event": "media", "sequenceNumber": self._next_seq(), "streamId": self.stream_id,
                       "media": {"track": "inbound", "timestamp": str(index * 20), "chunk": index + 1,
                                 "payload": base64.b64encode(bytes([byte]) * FRAME_BYTES).decode()}})

    def send_dtmf(self, digit: str) -> None:
        self.send({"event": "dtmf", "sequenceNumber": self._next_seq(), "streamId": self.stream_id,
                   "dtmf": {"track": "inbound", "digit": digit, "timestamp": str(int(time.time() * 1000))}})
