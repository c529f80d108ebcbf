"""Twilio's side of a bidirectional media stream (``<Connect><Stream>``), for tests and the media bench.

Speaks the Media Streams WebSocket protocol (reference/protocols.md §4): sends ``connected``,
``start`` (with ``customParameters``), 20 ms ``media`` frames (base64 mu-law), ``dtmf``, ``stop``;
receives ``media`` / ``mark`` / ``clear``. Like Twilio it *buffers* the audio it is sent and plays it
in order in real time (§4: "Outbound media is buffered and played in order"; Twilio's warning 31931
is about more than ten minutes of it waiting), on the player of ``tests/fakes/carrier_media.py``:
it echoes each ``mark`` once the audio queued before it has played, and a ``clear`` empties the
buffer and returns every mark still pending. ``echo_marks=False`` plays a Twilio whose marks never
come back until a ``clear``. Everything received is kept in arrival order (``received``).
"""

from __future__ import annotations

import base64
from collections import Counter
from typing import Any

from tests.fakes.carrier_media import QueuedCarrierStream

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2


def dominant_byte(frame: bytes) -> int:
    """The most common byte of a frame: identifies a constant-level utterance after resampling."""
    return Counter(frame).most_common(1)[0][0]


class TwilioMediaStream(QueuedCarrierStream):
    audio_event, mark_event, clear_event = "media", "mark", "clear"
    client_max_queue = 4

    def __init__(self, url: str, *, headers: dict[str, str] | None = None, echo_marks: bool = True) -> None:
        super().__init__(url, headers=headers)
        self.echo_marks = echo_marks
        self.held_marks: list[str] = []
        self.stream_sid = ""

    # --- dialect hooks ---------------------------------------------------------------------------
    def mark_name_of(self, message: dict[str, Any]) -> str:
        return message["mark"]["name"]

    def answer_mark(self, name: str) -> None:
        if self.echo_marks:
            self._echo_mark(name)
        else:
            self.held_marks.append(name)

    def on_clear(self, held_marks: list[str]) -> None:
        # Twilio returns every pending mark on a clear: those it held back and those still queued.
        for name in self.held_marks + held_marks:
            self._echo_mark(name)
        self.held_marks.clear()

    def _echo_mark(self, name: str) -> None:
        self.send({"event": "mark", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid,
                   "mark": {"name": name}})

    # --- Twilio -> server ------------------------------------------------------------------------
    def _next_seq(self) -> str:
        self.sequence += 1
        return str(self.sequence)

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
    def speech_frames(self, level_byte: int | None = None) -> list[bytes]:
        """Media frames that are not silence (optionally: only those of one utterance)."""
        frames = [f for f in self.media_frames() if dominant_byte(f) not in (0xFF, 0x7F)]
        if level_byte is None:
            return frames
        return [f for f in frames if dominant_byte(f) == level_byte]
