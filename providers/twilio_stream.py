"""Twilio Media Streams: the ``<Connect><Stream>`` TwiML and the WebSocket message shapes.

Sources: Twilio "Media Streams - WebSocket Messages"
(https://www.twilio.com/docs/voice/media-streams/websocket-messages), TwiML ``<Stream>``
(https://www.twilio.com/docs/voice/twiml/stream), summarised in reference/protocols.md §3-§4; the
stream URL and token rules follow the OpenClaw fact sheet §3.1 ("Stream TwiML") and §5.

Wire facts this module encodes:

* Every frame is a JSON **text** frame. Twilio sends ``connected``, ``start``, ``media``, ``mark``,
  ``dtmf`` and ``stop``; ``sequenceNumber``, ``chunk`` and ``timestamp`` are strings.
* Audio both ways is raw G.711 mu-law, 8000 Hz, mono, base64 in ``media.payload``. Twilio sends 20 ms
  = 160-byte frames; we send 160-byte frames too (``providers/audio.py``).
* We may send ``media``, ``mark`` and ``clear`` (bidirectional ``<Connect><Stream>`` only). Extra or
  unknown fields make Twilio fail the stream (error 31951), so outbound frames carry exactly the
  documented keys. A ``mark`` comes back when the audio queued before it has played -- or when a
  ``clear`` discarded it.
* Twilio strips query strings from the stream URL, so per-call data (our stream token) travels as a
  ``<Parameter>`` and arrives in ``start.customParameters``.

The TwiML hook for the Twilio provider: when a streaming call's webhook is answered with a stream,
the provider returns ``stream_reply(self.settings, call.stream_token)`` (the token is minted by
``calls.media.control.mint_stream_token`` and carried on the ``CallSnapshot``); ``streaming_possible``
says whether a stream can be offered at all (otherwise the provider keeps its ``<Say>``/``<Gather>``).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

if TYPE_CHECKING:
    from providers.base import WebhookReply
    from providers.settings import ProviderSettings

#: The ``<Parameter>`` name carrying our per-call token (fact sheet §3.1).
TOKEN_PARAMETER = "token"  # noqa: S105 - a parameter name, not a secret
#: A Twilio SID is two letters and 32 hex digits; we accept a little more but never markup or quotes.
SID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: Largest inbound frame we parse (fact sheet §5.1: the upstream WS server's max frame is 64 KB).
MAX_INBOUND_FRAME_BYTES = 64 * 1024


@dataclass(frozen=True)
class StreamStart:
    """The fields of a ``start`` message we use."""

    stream_sid: str
    call_sid: str
    token: str | None
    custom_parameters: dict[str, str] = field(default_factory=dict)


class MalformedFrame(ValueError):
    """A frame that is not valid JSON / not a Twilio message: ignored without ending the call."""


# --------------------------------------------------------------------------------------------------
# TwiML
# --------------------------------------------------------------------------------------------------


def stream_url(settings: ProviderSettings) -> str | None:
    """``wss://{publicUrl host}{streamPath}``: the origin of ``publicUrl`` (https -> wss, http -> ws)
    plus ``streaming.streamPath``. None when no public URL is known (Twilio cannot reach us)."""
    if not settings.public_url:
        return None
    parts = urlsplit(settings.public_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{settings.streaming.stream_path}"


def streaming_possible(settings: ProviderSettings) -> bool:
    """A call can be offered a media stream: streaming enabled, a public URL, and telephony TTS that
    can speak over it (without TTS the call keeps Twilio's own ``<Say>`` voice)."""
    if not settings.streaming.enabled or stream_url(settings) is None:
        return False
    from providers.tts import telephony_tts_problem

    return telephony_tts_problem(settings) is None


def stream_twiml(url: str, token: str) -> str:
    """``<Response><Connect><Stream url=…><Parameter name="token" value=…/></Stream></Connect></Response>``.

    ``<Connect>`` makes the stream bidirectional and blocks the call's TwiML until we close the socket.
    """
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<Response><Connect><Stream url="{_attr(url)}">'
        f'<Parameter name="{_attr(TOKEN_PARAMETER)}" value="{_attr(token)}" />'
        "</Stream></Connect></Response>"
    )


def _attr(value: str) -> str:
    """An XML attribute value for double quotes (``& < > "`` escaped)."""
    return escape(value, {'"': "&quot;"})


def stream_reply(settings: ProviderSettings, token: str) -> WebhookReply:
    """The webhook answer that connects a call to our media stream endpoint."""
    from providers.base import WebhookReply

    url = stream_url(settings)
    if url is None:
        raise ValueError("a media stream needs publicUrl")
    return WebhookReply(status=200, content_type="application/xml", body=stream_twiml(url, token))


# --------------------------------------------------------------------------------------------------
# Twilio -> us
# --------------------------------------------------------------------------------------------------


def parse_frame(text: str) -> dict[str, Any]:
    """Decode one text frame; raises ``MalformedFrame`` for anything that is not a JSON object with a
    string ``event``."""
    try:
        message = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise MalformedFrame("not JSON") from exc
    if not isinstance(message, dict) or not isinstance(message.get("event"), str):
        raise MalformedFrame("not a media stream message")
    return message


def parse_start(message: dict[str, Any], query_token: str | None = None) -> StreamStart | None:
    """The ``start`` fields, or None when ``callSid``/``streamSid`` are missing or not SID-shaped.

    The token is ``start.customParameters.token``, else ``?token=`` on the WebSocket URL (§5.3).
    """
    start = message.get("start")
    if not isinstance(start, dict):
        return None
    call_sid = start.get("callSid")
    stream_sid = message.get("streamSid") or start.get("streamSid")
    if not isinstance(call_sid, str) or not SID_PATTERN.match(call_sid):
        return None
    if not isinstance(stream_sid, str) or not SID_PATTERN.match(stream_sid):
        return None
    raw_params = start.get("customParameters")
    params = {str(k): str(v) for k, v in raw_params.items()} if isinstance(raw_params, dict) else {}
    token = params.get(TOKEN_PARAMETER) or query_token
    return StreamStart(stream_sid=stream_sid, call_sid=call_sid, token=token or None, custom_parameters=params)


def media_payload(message: dict[str, Any]) -> str | None:
    """The base64 mu-law payload of a ``media`` message, validated; None when malformed.

    Only the inbound track carries the caller (Twilio streams only that track on ``<Connect>``).
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


def mark_name(message: dict[str, Any]) -> str | None:
    mark = message.get("mark")
    name = mark.get("name") if isinstance(mark, dict) else None
    return name if isinstance(name, str) and name else None


def dtmf_digit(message: dict[str, Any]) -> str | None:
    """The digit of a ``dtmf`` message (``0-9``, ``*``, ``#``), else None."""
    dtmf = message.get("dtmf")
    digit = dtmf.get("digit") if isinstance(dtmf, dict) else None
    if isinstance(digit, str) and len(digit) == 1 and digit in "0123456789*#":
        return digit
    return None


# --------------------------------------------------------------------------------------------------
# us -> Twilio
# --------------------------------------------------------------------------------------------------


class OutboundFrames:
    """Pre-built JSON for one stream's outbound messages (sent 50 times a second, so no json.dumps
    per media frame: the fixed parts are encoded once and the base64 payload needs no escaping)."""

    def __init__(self, stream_sid: str):
        self.stream_sid = stream_sid
        sid = json.dumps(stream_sid)
        self._media_prefix = '{"event":"media","streamSid":' + sid + ',"media":{"payload":"'
        self._clear = '{"event":"clear","streamSid":' + sid + "}"
        self._mark_prefix = '{"event":"mark","streamSid":' + sid + ',"mark":{"name":'

    def media(self, mulaw: bytes) -> str:
        return self._media_prefix + base64.b64encode(mulaw).decode("ascii") + '"}}'

    def media_b64(self, payload_b64: str) -> str:
        return self._media_prefix + payload_b64 + '"}}'

    def mark(self, name: str) -> str:
        return self._mark_prefix + json.dumps(name) + "}}"

    def clear(self) -> str:
        return self._clear
