"""What every carrier's bidirectional media stream has in common, and the per-carrier wires.

Twilio (``providers/twilio_stream.py``), Telnyx (``providers/telnyx/stream.py``) and Plivo
(``providers/plivo/stream.py``) all open a WebSocket to us and exchange JSON text frames carrying
base64 G.711 mu-law at 8 kHz. They differ in names and in how they play what we send:

============  ===================  ======================  =========================
              Twilio               Telnyx                  Plivo
============  ===================  ======================  =========================
start         ``start.callSid``    ``start.call_control_id``  ``start.callId``
caller audio  ``media.payload``    ``media.payload``       ``media.payload``
audio out     ``media``            ``media``               ``playAudio``
played        ``mark`` echo        ``mark`` echo           ``checkpoint`` → ``playedStream``
flush         ``clear``            ``clear``               ``clearAudio`` → ``clearedAudio``
end           ``stop``             ``stop``                socket closes
credential    ``<Parameter>``      URL query               URL query
============  ===================  ======================  =========================

A ``StreamWire`` is one column of that table: it parses the carrier's frames into the few things the
media engine acts on (``StreamKind``) and builds its outbound frames (``OutboundFrames``). The
engine (``calls.media``) is the same for all three.

Pacing: all three carriers queue what they receive and play it in order (reference/protocols.md
§4-§6), so we send *ahead* of playback -- bounded by ``send_ahead_seconds`` (well under the 2 s the
carriers' queues would let a clear discard) -- which absorbs scheduling jitter on our side without the
caller hearing it, several 20 ms frames to a media message (``calls/media/playback.py``).
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlencode, urlsplit

if TYPE_CHECKING:
    from providers.settings import ProviderSettings

#: Largest inbound frame we parse (fact sheet §5.1: the upstream WS server's max frame is 64 KB).
MAX_INBOUND_FRAME_BYTES = 64 * 1024
#: Carrier ids (CallSid, call_control_id, CallUUID, stream ids): letters, digits and ``_-:.``, never
#: markup or quotes.
CARRIER_ID_PATTERN = re.compile(r"^[A-Za-z0-9_:.-]{1,128}$")
#: Our call ids are UUIDs.
CALL_ID_PATTERN = re.compile(r"^[0-9a-fA-F-]{32,36}$")
#: Query parameters of a stream URL that carries the per-call credential (Telnyx, Plivo).
CALL_ID_PARAMETER = "callId"
TOKEN_PARAMETER = "token"  # noqa: S105 - a parameter name, not a secret
MULAW_8K = "audio/x-mulaw;rate=8000"


class MalformedFrame(ValueError):
    """A frame that is not valid JSON / not a media-stream message: ignored without ending the call."""


class StreamKind(enum.StrEnum):
    """What a carrier frame means to the engine."""

    CONNECTED = "connected"
    START = "start"
    MEDIA = "media"
    PLAYED = "played"  # a mark/checkpoint we sent has been reached
    DTMF = "dtmf"
    STOP = "stop"
    CLEARED = "cleared"  # the carrier confirms a flush (Plivo)
    ERROR = "error"  # the carrier reports a stream error (Telnyx)


@dataclass(frozen=True)
class StreamStart:
    """The fields of a ``start`` we use. ``call_id`` is our call id when the stream URL carries it;
    ``media_problem`` says why the announced audio format is not the mu-law 8 kHz we asked for."""

    stream_id: str
    carrier_call_id: str
    token: str | None
    call_id: str | None = None
    custom_parameters: dict[str, str] = field(default_factory=dict)
    media_problem: str | None = None


def parse_frame(text: str) -> dict[str, Any]:
    """Decode one text frame; raises ``MalformedFrame`` for anything that is not a JSON object with a
    string ``event`` (the envelope all three carriers use)."""
    try:
        message = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise MalformedFrame("not JSON") from exc
    if not isinstance(message, dict) or not isinstance(message.get("event"), str):
        raise MalformedFrame("not a media stream message")
    return message


def carrier_id(value: Any) -> str | None:
    return value if isinstance(value, str) and CARRIER_ID_PATTERN.match(value) else None


def our_call_id(value: Any) -> str | None:
    return value if isinstance(value, str) and CALL_ID_PATTERN.match(value) else None


def media_payload(message: dict[str, Any]) -> str | None:
    """The base64 mu-law payload of a ``media`` message, validated; None when malformed.

    Only the inbound track carries the caller (all three stream only that track as we request them).
    The validated base64 text is returned unchanged so it can be forwarded without re-encoding.
    """
    media = message.get("media")
    if not isinstance(media, dict):
        return None
    track = media.get("track")
    if track is not None and track not in ("inbound", "inbound_track"):
        return None
    payload = media.get("payload")
    if not isinstance(payload, str) or not payload:
        return None
    try:
        base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return None
    return payload


def nested_name(message: dict[str, Any], key: str) -> str | None:
    """``message[key].name`` when it is a non-empty string (Twilio and Telnyx marks)."""
    inner = message.get(key)
    name = inner.get("name") if isinstance(inner, dict) else None
    return name if isinstance(name, str) and name else None


def nested_digit(message: dict[str, Any]) -> str | None:
    """The digit of a ``dtmf`` message (``0-9``, ``*``, ``#``), else None (all three carriers)."""
    dtmf = message.get("dtmf")
    digit = dtmf.get("digit") if isinstance(dtmf, dict) else None
    if isinstance(digit, str) and len(digit) == 1 and digit in "0123456789*#":
        return digit
    return None


def mulaw_format_problem(encoding: Any, sample_rate: Any, accepted: tuple[str, ...]) -> str | None:
    """None when a start's announced format is mu-law 8 kHz (or not announced at all)."""
    if encoding is None and sample_rate is None:
        return None
    if not isinstance(encoding, str) or encoding.strip().lower() not in accepted:
        return f"unsupported media encoding {str(encoding)[:40]!r} (expected mu-law)"
    try:
        rate = int(sample_rate) if sample_rate is not None else 8000
    except (TypeError, ValueError):
        rate = 0
    if rate != 8000:
        return f"unsupported sample rate {str(sample_rate)[:12]!r} (expected 8000)"
    return None


def query_start(stream_id: Any, carrier_call_id: Any, query: Mapping[str, str], media_format: Any, *,
                encoding_key: str, rate_key: str, encodings: tuple[str, ...]) -> StreamStart | None:
    """A ``start`` of a carrier that connects to the URL as given (Telnyx, Plivo): its ids, our call id
    and token from the URL query, and whether its announced format is mu-law 8 kHz. None when an id
    is missing or not id-shaped."""
    stream_id, carrier_call_id = carrier_id(stream_id), carrier_id(carrier_call_id)
    if stream_id is None or carrier_call_id is None:
        return None
    token = query.get(TOKEN_PARAMETER) or None
    media_format = media_format if isinstance(media_format, dict) else {}
    return StreamStart(
        stream_id=stream_id, carrier_call_id=carrier_call_id, token=token if isinstance(token, str) else None,
        call_id=our_call_id(query.get(CALL_ID_PARAMETER)),
        media_problem=mulaw_format_problem(media_format.get(encoding_key), media_format.get(rate_key), encodings),
    )


class OutboundFrames:
    """Pre-built JSON for one stream's outbound messages (sent 50 times a second, so no json.dumps
    per media frame: the fixed parts are encoded once and the base64 payload needs no escaping)."""

    def __init__(self, *, media_prefix: str, media_suffix: str, mark_prefix: str, mark_suffix: str, clear: str):
        self._media_prefix, self._media_suffix = media_prefix, media_suffix
        self._mark_prefix, self._mark_suffix = mark_prefix, mark_suffix
        self._clear = clear

    def media(self, mulaw: bytes) -> str:
        return self._media_prefix + base64.b64encode(mulaw).decode("ascii") + self._media_suffix

    def media_b64(self, payload_b64: str) -> str:
        return self._media_prefix + payload_b64 + self._media_suffix

    def mark(self, name: str) -> str:
        return self._mark_prefix + json.dumps(name) + self._mark_suffix

    def clear(self) -> str:
        return self._clear


class StreamWire:
    """One carrier's media-stream protocol (see the module docstring's table)."""

    carrier: ClassVar[str] = ""
    #: Wire event name -> what it means; anything else is ignored.
    kinds: ClassVar[Mapping[str, StreamKind]] = {}
    #: How far ahead of the carrier's playback we may send audio (0: paced at real time).
    send_ahead_seconds: ClassVar[float] = 0.0

    def kind(self, message: dict[str, Any]) -> StreamKind | None:
        return self.kinds.get(message["event"])

    def parse_start(self, message: dict[str, Any], query: Mapping[str, str]) -> StreamStart | None:
        raise NotImplementedError

    def media_payload(self, message: dict[str, Any]) -> str | None:
        return media_payload(message)

    def played_name(self, message: dict[str, Any]) -> str | None:
        return nested_name(message, "mark")

    def dtmf(self, message: dict[str, Any]) -> tuple[str, str] | None:
        """``(digit, sequence number)`` of a caller key press."""
        digit = nested_digit(message)
        if digit is None:
            return None
        sequence = message.get("sequenceNumber", message.get("sequence_number"))
        return digit, str(sequence) if isinstance(sequence, str | int) and not isinstance(sequence, bool) else ""

    def outbound(self, start: StreamStart) -> OutboundFrames:
        raise NotImplementedError


def stream_url(settings: ProviderSettings) -> str | None:
    """``wss://{publicUrl host}{streamPath}``: the origin of ``publicUrl`` (https -> wss, http -> ws)
    plus ``streaming.streamPath``. None when no public URL is known (the carrier cannot reach us)."""
    if not settings.public_url:
        return None
    parts = urlsplit(settings.public_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{settings.streaming.stream_path}"


def credential_stream_url(settings: ProviderSettings, call_id: str, token: str) -> str:
    """The stream URL with our call id and its token in the query (Telnyx, Plivo: both connect to the
    URL as given). Raises ``ValueError`` without a public URL."""
    url = stream_url(settings)
    if url is None:
        raise ValueError("a media stream needs publicUrl")
    return f"{url}?{urlencode({CALL_ID_PARAMETER: call_id, TOKEN_PARAMETER: token})}"


def streaming_possible(settings: ProviderSettings) -> bool:
    """A call can be offered a media stream: streaming enabled, a public URL, and something to speak
    over it -- the realtime model, or telephony TTS (without TTS the call keeps the carrier's voice)."""
    if not settings.streaming.enabled or stream_url(settings) is None:
        return False
    if settings.streaming.realtime:
        return True
    from providers.tts import telephony_tts_problem

    return telephony_tts_problem(settings) is None
