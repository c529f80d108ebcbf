"""Telnyx media streaming over WebSocket (Call Control v2), bidirectional RTP mode.

Sources: Telnyx "Stream call media over WebSocket" (AsyncAPI,
https://developers.telnyx.com/api-reference/websockets/stream-call-media-over-websocket) and
"Streaming start" (https://developers.telnyx.com/api-reference/call-commands/streaming-start),
summarised in reference/protocols.md §5 ("Telnyx media-streaming WebSocket").

Requesting the stream: the same ``stream_*`` fields go on ``POST /v2/calls`` (outbound) and on
``actions/answer`` (inbound): ``stream_url`` (``wss://<publicUrl host><streamPath>?callId=…&token=…``:
our call id and its per-call credential travel in the URL query, which Telnyx connects to as given),
``stream_track: "inbound_track"`` (only the caller), ``stream_bidirectional_mode: "rtp"`` and
``stream_bidirectional_codec: "PCMU"`` (we send raw mu-law back, no MP3).

Frames from Telnyx: ``connected``; ``start`` with ``stream_id`` at the top level and
``start.call_control_id`` / ``start.client_state`` / ``start.media_format`` (``encoding`` ``PCMU``,
``sample_rate`` 8000); ``media`` with ``media.payload`` (base64 RTP payload = mu-law bytes) and
``media.track``; ``dtmf`` (``dtmf.digit``); ``mark`` (a mark we sent, once the audio before it has
played, or at once when a ``clear`` discarded it); ``error``; ``stop``. ``sequence_number`` is a
string.

Frames to Telnyx: ``{"event":"media","media":{"payload":…}}`` (20 ms to 30 s of audio per message;
Telnyx queues what it gets and plays it in order), ``{"event":"mark","mark":{"name":…}}`` and
``{"event":"clear"}``. Because Telnyx queues, audio is sent ahead of playback, bounded
(``send_ahead_seconds``), so a ``clear`` silences the caller at once and little is buffered.

Webhooks ``streaming.started`` / ``streaming.stopped`` / ``streaming.failed`` are mapped in
``providers/telnyx/wire.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from providers import media_stream
from providers.media_stream import OutboundFrames, StreamKind, StreamStart

STREAM_TRACK = "inbound_track"
BIDIRECTIONAL_MODE = "rtp"
BIDIRECTIONAL_CODEC = "PCMU"
SEND_AHEAD_SECONDS = 1.0


def stream_request_fields(stream_url: str) -> dict[str, str]:
    """The ``stream_*`` fields of a dial or answer command that connect the call to us."""
    return {
        "stream_url": stream_url,
        "stream_track": STREAM_TRACK,
        "stream_bidirectional_mode": BIDIRECTIONAL_MODE,
        "stream_bidirectional_codec": BIDIRECTIONAL_CODEC,
    }


class TelnyxStreamWire(media_stream.StreamWire):
    carrier = "telnyx"
    kinds = {
        "connected": StreamKind.CONNECTED, "start": StreamKind.START, "media": StreamKind.MEDIA,
        "mark": StreamKind.PLAYED, "dtmf": StreamKind.DTMF, "stop": StreamKind.STOP, "error": StreamKind.ERROR,
    }
    send_ahead_seconds = SEND_AHEAD_SECONDS

    def parse_start(self, message: dict[str, Any], query: Mapping[str, str]) -> StreamStart | None:
        start = message.get("start")
        if not isinstance(start, dict):
            return None
        return media_stream.query_start(
            message.get("stream_id") or start.get("stream_id"), start.get("call_control_id"), query,
            start.get("media_format"), encoding_key="encoding", rate_key="sample_rate",
            encodings=("pcmu", "audio/x-mulaw"))

    def outbound(self, start: StreamStart) -> OutboundFrames:
        return OutboundFrames(
            media_prefix='{"event":"media","media":{"payload":"', media_suffix='"}}',
            mark_prefix='{"event":"mark","mark":{"name":', mark_suffix="}}",
            clear='{"event":"clear"}',
        )
