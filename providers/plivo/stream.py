"""Plivo Audio Streaming, bidirectional: the ``<Stream>`` element and the WebSocket message shapes.

Sources: Plivo "The Stream element" (https://www.plivo.com/docs/voice/xml/the-stream-element/),
"Audio streaming" messages (https://plivo.com/docs/voice/audio-streaming/audio-streaming), the
checkpoint and clearAudio event pages, and the official ``plivo-stream-sdk`` 0.1.1
(``plivo_stream/types.py``), summarised in reference/protocols.md §6.

The answer XML: ``<Stream bidirectional="true" keepCallAlive="true" audioTrack="inbound"
contentType="audio/x-mulaw;rate=8000" statusCallbackUrl="…">wss://…?callId=…&token=…</Stream>``.
Without ``contentType`` Plivo sends linear PCM; without ``keepCallAlive`` the XML moves on (and the
call ends when it runs out). Our call id and its per-call credential travel in the URL query.

Frames from Plivo: ``start`` (``start.callId`` = CallUUID, ``start.streamId``, ``start.mediaFormat``
``{encoding: "audio/x-mulaw", sampleRate: 8000}``), ``media`` (``media.payload``), ``dtmf``
(``dtmf.digit``), ``playedStream`` (``name``: a checkpoint we sent has been reached -- only for audio
that actually played), ``clearedAudio``. There is no stop message: the socket closes, and
``StopStream`` goes to the status callback. ``sequenceNumber`` is a number.

Frames to Plivo: ``playAudio`` (``media.contentType`` ``audio/x-mulaw``, ``media.sampleRate`` 8000,
``media.payload``), ``checkpoint`` (``streamId``, ``name``), ``clearAudio`` (``streamId``; queued
checkpoints are dropped with the audio). Plivo buffers what it gets, so audio is sent ahead of
playback, bounded (``send_ahead_seconds``), and a clear silences the caller at once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from plivo import plivoxml

from providers import media_stream
from providers.media_stream import OutboundFrames, StreamKind, StreamStart

CONTENT_TYPE = media_stream.MULAW_8K
SEND_AHEAD_SECONDS = 1.0


def stream_element(url: str, status_callback_url: str) -> plivoxml.StreamElement:
    """The bidirectional, call-holding ``<Stream>`` of a streamed call."""
    return plivoxml.StreamElement(
        url, bidirectional=True, audioTrack="inbound", keepCallAlive=True, contentType=CONTENT_TYPE,
        statusCallbackUrl=status_callback_url, statusCallbackMethod="POST",
    )


class PlivoStreamWire(media_stream.StreamWire):
    carrier = "plivo"
    kinds = {
        "start": StreamKind.START, "media": StreamKind.MEDIA, "playedStream": StreamKind.PLAYED,
        "dtmf": StreamKind.DTMF, "clearedAudio": StreamKind.CLEARED,
    }
    send_ahead_seconds = SEND_AHEAD_SECONDS

    def parse_start(self, message: dict[str, Any], query: Mapping[str, str]) -> StreamStart | None:
        start = message.get("start")
        if not isinstance(start, dict):
            return None
        return media_stream.query_start(
            start.get("streamId") or message.get("streamId"), start.get("callId"), query,
            start.get("mediaFormat"), encoding_key="encoding", rate_key="sampleRate", encodings=("audio/x-mulaw",))

    def played_name(self, message: dict[str, Any]) -> str | None:
        name = message.get("name")
        return name if isinstance(name, str) and name else None

    def outbound(self, start: StreamStart) -> OutboundFrames:
        sid = json.dumps(start.stream_id)
        return OutboundFrames(
            media_prefix='{"event":"playAudio","media":{"contentType":"audio/x-mulaw","sampleRate":8000,"payload":"',
            media_suffix='"}}',
            mark_prefix='{"event":"checkpoint","streamId":' + sid + ',"name":', mark_suffix="}",
            clear='{"event":"clearAudio","streamId":' + sid + "}",
        )
