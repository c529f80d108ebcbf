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

The carrier-neutral parts (frame envelope, payload validation, ``StreamStart``, outbound templates)
are in ``providers/media_stream.py``; this module is Twilio's column of that table.

The TwiML hook for the Twilio provider: when a streaming call's webhook is answered with a stream,
the provider returns ``stream_reply(self.settings, call.stream_token)`` (the token is minted by
``calls.media.control.mint_stream_token`` and carried on the ``CallSnapshot``); ``streaming_possible``
says whether a stream can be offered at all (otherwise the provider keeps its ``<Say>``/``<Gather>``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

from providers import media_stream
from providers.media_stream import (  # noqa: F401 - the Twilio names tests and callers use
    MAX_INBOUND_FRAME_BYTES,
    MalformedFrame,
    StreamKind,
    StreamStart,
    media_payload,
    parse_frame,
    stream_url,
    streaming_possible,
)

if TYPE_CHECKING:
    from providers.base import WebhookReply
    from providers.settings import ProviderSettings

#: The ``<Parameter>`` name carrying our per-call token (fact sheet §3.1).
TOKEN_PARAMETER = media_stream.TOKEN_PARAMETER
SEND_AHEAD_SECONDS = 1.0  # as Telnyx and Plivo: absorbs a stalled loop, and a clear drops at most this


# --------------------------------------------------------------------------------------------------
# TwiML
# --------------------------------------------------------------------------------------------------


def stream_twiml(url: str, token: str, call_id: str | None = None) -> str:
    """``<Response><Connect><Stream url=…><Parameter name="token" value=…/></Stream></Connect></Response>``,
    with our call id as a second ``<Parameter>`` when given (the consumer finds the call by its key
    and joins the call's group while it checks the token).

    ``<Connect>`` makes the stream bidirectional and blocks the call's TwiML until we close the socket.
    """
    call_parameter = (f'<Parameter name="{_attr(media_stream.CALL_ID_PARAMETER)}" value="{_attr(call_id)}" />'
                      if call_id else "")
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<Response><Connect><Stream url="{_attr(url)}">'
        f'<Parameter name="{_attr(TOKEN_PARAMETER)}" value="{_attr(token)}" />'
        f"{call_parameter}</Stream></Connect></Response>"
    )


def _attr(value: str) -> str:
    """An XML attribute value for double quotes (``& < > "`` escaped)."""
    return escape(value, {'"': "&quot;"})


def stream_reply(settings: ProviderSettings, token: str, call_id: str | None = None) -> WebhookReply:
    """The webhook answer that connects a call to our media stream endpoint."""
    from providers.base import WebhookReply

    url = stream_url(settings)
    if url is None:
        raise ValueError("a media stream needs publicUrl")
    return WebhookReply(status=200, content_type="application/xml", body=stream_twiml(url, token, call_id))


# --------------------------------------------------------------------------------------------------
# Twilio -> us
# --------------------------------------------------------------------------------------------------


def parse_start(message: dict[str, Any], query_token: str | None = None) -> StreamStart | None:
    """The ``start`` fields, or None when ``callSid``/``streamSid`` are missing or not SID-shaped.

    The token is ``start.customParameters.token``, else ``?token=`` on the WebSocket URL (§5.3).
    """
    start = message.get("start")
    if not isinstance(start, dict):
        return None
    call_sid = media_stream.carrier_id(start.get("callSid"))
    stream_sid = media_stream.carrier_id(message.get("streamSid") or start.get("streamSid"))
    if call_sid is None or stream_sid is None:
        return None
    raw_params = start.get("customParameters")
    params = {str(k): str(v) for k, v in raw_params.items()} if isinstance(raw_params, dict) else {}
    token = params.get(TOKEN_PARAMETER) or query_token
    media_format = start.get("mediaFormat") if isinstance(start.get("mediaFormat"), dict) else {}
    return StreamStart(
        stream_id=stream_sid, carrier_call_id=call_sid, token=token or None, custom_parameters=params,
        media_problem=media_stream.mulaw_format_problem(
            media_format.get("encoding"), media_format.get("sampleRate"), ("audio/x-mulaw",)),
    )


def mark_name(message: dict[str, Any]) -> str | None:
    return media_stream.nested_name(message, "mark")


def dtmf_digit(message: dict[str, Any]) -> str | None:
    """The digit of a ``dtmf`` message (``0-9``, ``*``, ``#``), else None."""
    return media_stream.nested_digit(message)


# --------------------------------------------------------------------------------------------------
# us -> Twilio
# --------------------------------------------------------------------------------------------------


class OutboundFrames(media_stream.OutboundFrames):
    """``media`` / ``mark`` / ``clear`` with exactly the documented keys (extra keys fail the stream)."""

    def __init__(self, stream_sid: str):
        self.stream_sid = stream_sid
        sid = json.dumps(stream_sid)
        super().__init__(
            media_prefix='{"event":"media","streamSid":' + sid + ',"media":{"payload":"', media_suffix='"}}',
            mark_prefix='{"event":"mark","streamSid":' + sid + ',"mark":{"name":', mark_suffix="}}",
            clear='{"event":"clear","streamSid":' + sid + "}",
        )


class TwilioStreamWire(media_stream.StreamWire):
    """Twilio Media Streams, bidirectional (``<Connect><Stream>``). Twilio buffers the outbound audio
    and plays it in order (reference/protocols.md §4; Twilio's "Media Streams - WebSocket Messages":
    ``clear`` "interrupts and discards any audio that Twilio has buffered", warning 31931 fires past
    ten minutes of it), so we send up to ``send_ahead_seconds`` ahead of playback, as to Telnyx and
    Plivo."""

    carrier = "twilio"
    send_ahead_seconds = SEND_AHEAD_SECONDS
    kinds = {
        "connected": StreamKind.CONNECTED, "start": StreamKind.START, "media": StreamKind.MEDIA,
        "mark": StreamKind.PLAYED, "dtmf": StreamKind.DTMF, "stop": StreamKind.STOP,
    }

    def parse_start(self, message: dict[str, Any], query: Mapping[str, str]) -> StreamStart | None:
        start = parse_start(message, query.get(TOKEN_PARAMETER))
        if start is None:
            return None
        # A callId next to the token (our own <Parameter>, or the URL query) saves a lookup by CallSid.
        call_id = media_stream.our_call_id(start.custom_parameters.get(media_stream.CALL_ID_PARAMETER)
                                           or query.get(media_stream.CALL_ID_PARAMETER))
        return StreamStart(stream_id=start.stream_id, carrier_call_id=start.carrier_call_id, token=start.token,
                           call_id=call_id, custom_parameters=start.custom_parameters,
                           media_problem=start.media_problem)

    def outbound(self, start: StreamStart) -> OutboundFrames:
        return OutboundFrames(start.stream_id)
