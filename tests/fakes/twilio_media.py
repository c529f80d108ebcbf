"""Twilio's side of a bidirectional media stream (``<Connect><Stream>``), for tests.

Speaks the Media Streams WebSocket protocol (reference/protocols.md §4): sends ``connected``,
``start`` (with ``customParameters``), 20 ms ``media`` frames (base64 mu-law), ``dtmf``, ``stop``;
receives ``media`` / ``mark`` / ``clear``. Like Twilio it echoes each ``mark`` once the audio queued
before it "has played" (immediately, since our side already paces in real time) and, on ``clear``,
drops nothing it has not played but returns every mark it still holds (``echo_marks=False`` holds
them until then). Everything received is kept in arrival order in ``events``.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.fakes.polling import wait_until

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2


def dominant_byte(frame: bytes) -> int:
    """The most common byte of a frame: identifies a constant-level utterance after resampling."""
    return Counter(frame).most_common(1)[0][0]


class TwilioMediaStream:
    def __init__(self, url: str, *, headers: dict[str, str] | None = None, echo_marks: bool = True) -> None:
        self.url = url
        self.headers = headers or {}
        self.echo_marks = echo_marks
        self.events: list[tuple[str, Any]] = []  # ("media", bytes) | ("mark", name) | ("clear", None) | ("bad", text)
        self.held_marks: list[str] = []
        self.close_code: int | None = None
        self.closed = threading.Event()
        self.sequence = 0
        self.stream_sid = ""
        self._lock = threading.Lock()
        self._ws = None
        self._reader: threading.Thread | None = None

    # --- connection ------------------------------------------------------------------------------
    def connect(self, *, sock: socket.socket | None = None, read: bool = True) -> TwilioMediaStream:
        """Open the socket (raises ``websockets.exceptions.InvalidStatus`` if the upgrade is refused).

        ``read=False`` plays a peer that stops reading: nothing is consumed until ``start_reading()``
        (the client library buffers a few messages, then TCP flow control pushes back on the server).
        """
        self._ws = connect(self.url, sock=sock, additional_headers=self.headers, open_timeout=10,
                           max_size=2**20, max_queue=4, legacy=True)
        if read:
            self.start_reading()
        return self

    def start_reading(self) -> None:
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
        self.closed.wait(10)

    def _read(self) -> None:
        try:
            for raw in self._ws:
                try:
                    message = json.loads(raw)
                except ValueError:
                    self._record(("bad", raw))
                    continue
                event = message.get("event")
                if event == "media":
                    self._record(("media", base64.b64decode(message["media"]["payload"])))
                elif event == "mark":
                    name = message["mark"]["name"]
                    self._record(("mark", name))
                    if self.echo_marks:
                        self._echo_mark(name)
                    else:
                        self.held_marks.append(name)
                elif event == "clear":
                    self._record(("clear", None))
                    for name in self.held_marks:
                        self._echo_mark(name)
                    self.held_marks.clear()
                else:
                    self._record(("bad", raw))
        except ConnectionClosed as exc:
            # No close frame received: RFC 6455's "abnormal closure" (1006), as browsers report it.
            self.close_code = exc.rcvd.code if exc.rcvd is not None else 1006
        finally:
            if self.close_code is None and self._ws is not None and self._ws.protocol.close_rcvd is not None:
                self.close_code = self._ws.protocol.close_rcvd.code
            self.closed.set()

    def _record(self, event: tuple[str, Any]) -> None:
        with self._lock:
            self.events.append(event)

    def _echo_mark(self, name: str) -> None:
        self.send({"event": "mark", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid,
                   "mark": {"name": name}})

    # --- Twilio -> server ------------------------------------------------------------------------
    def _next_seq(self) -> str:
        self.sequence += 1
        return str(self.sequence)

    def send(self, message: dict[str, Any]) -> None:
        try:
            self._ws.send(json.dumps(message))
        except ConnectionClosed:
            pass

    def send_raw(self, data: str | bytes) -> None:
        self._ws.send(data)

    def send_connected(self) -> None:
        self.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})

    def send_start(self, call_sid: str, token: str | None, *, stream_sid: str = "MZ" + "a" * 32,
                   extra_params: dict[str, str] | None = None) -> None:
        self.stream_sid = stream_sid
        params = dict(extra_params or {})
        if token is not None:
            params["token"] = token
        self.send({
            "event": "start", "sequenceNumber": self._next_seq(), "streamSid": stream_sid,
            "start": {"accountSid": ACCOUNT_SID, "streamSid": stream_sid, "callSid": call_sid,
                      "tracks": ["inbound"], "customParameters": params,
                      "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
        })

    def send_media(self, frames: int, byte: int = 0x35) -> None:
        """``frames`` 20 ms frames of caller audio (160 mu-law bytes each)."""
        for index in range(frames):
            payload = base64.b64encode(bytes([byte]) * 160).decode()
            self.send({"event": "media", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid,
                       "media": {"track": "inbound", "chunk": str(index + 1), "timestamp": str(index * 20),
                                 "payload": payload}})

    def send_dtmf(self, digit: str) -> None:
        self.send({"event": "dtmf", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid,
                   "dtmf": {"track": "inbound_track", "digit": digit}})

    def send_stop(self, call_sid: str) -> None:
        self.send({"event": "stop", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid,
                   "stop": {"accountSid": ACCOUNT_SID, "callSid": call_sid}})

    # --- what arrived ----------------------------------------------------------------------------
    def snapshot(self) -> list[tuple[str, Any]]:
        with self._lock:
            return list(self.events)

    def media_frames(self) -> list[bytes]:
        return [data for kind, data in self.snapshot() if kind == "media"]

    def marks(self) -> list[str]:
        return [data for kind, data in self.snapshot() if kind == "mark"]

    def clears(self) -> int:
        return sum(1 for kind, _ in self.snapshot() if kind == "clear")

    def speech_frames(self, level_byte: int | None = None) -> list[bytes]:
        """Media frames that are not silence (optionally: only those of one utterance)."""
        frames = [f for f in self.media_frames() if dominant_byte(f) not in (0xFF, 0x7F)]
        if level_byte is None:
            return frames
        return [f for f in frames if dominant_byte(f) == level_byte]

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
        return wait_until(predicate, timeout, interval=0.01, what=what,
                          detail=lambda: f"received {len(self.events)} frames, close code {self.close_code}")

    def wait_closed(self, timeout: float = 20.0) -> int | None:
        if not self.closed.wait(timeout):
            raise AssertionError("socket was not closed")
        return self.close_code
