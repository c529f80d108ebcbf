"""Plivo's wire vocabulary: our callback flows and query parameters, call statuses and hang-up
mapping, speech fields, numbers, XML text and the transfer-payload encoding (fact sheet §3.3,
protocols.md §6)."""

from __future__ import annotations

import base64
import enum
import re

# --- protocol tables -----------------------------------------------------------------------------

ACCOUNT_PATH = "/v1/Account/{auth_id}"
# (connect, read) seconds for every REST request.
REQUEST_TIMEOUT = (5.0, 15.0)

XML_CONTENT_TYPE = "text/xml"


class Flow(enum.StrEnum):
    """Our ``flow`` query parameter: which Plivo request this is (fact sheet §3.3)."""

    ANSWER = "answer"
    RING = "ring"
    HANGUP = "hangup"
    GETINPUT = "getinput"
    XML_SPEAK = "xml-speak"
    XML_LISTEN = "xml-listen"
    KEEPALIVE = "keepalive"
    STREAM = "stream"  # the <Stream> statusCallbackUrl (StartStream / StopStream / DroppedStream)


# Query parameters we put on every URL handed to Plivo (stripped from a base URL before adding ours).
PROVIDER_PARAM, FLOW_PARAM, CALL_ID_PARAM, TURN_TOKEN_PARAM = "provider", "flow", "callId", "turnToken"
# Transfer flows and the query parameter that carries their signed payload.
TRANSFER_PARAMS: dict[Flow, str] = {Flow.XML_SPEAK: "say", Flow.XML_LISTEN: "listen"}
OUR_PARAMS = frozenset({PROVIDER_PARAM, FLOW_PARAM, CALL_ID_PARAM, TURN_TOKEN_PARAM, *TRANSFER_PARAMS.values()})

# CallStatus (protocols §6 "Callback parameters") → normalized event / end reason.
RINGING_STATUSES = frozenset({"ringing"})
ANSWERED_STATUSES = frozenset({"in-progress"})
CALL_STATUS_END_REASONS: dict[str, str] = {
    "completed": "completed",
    "busy": "busy",
    "no-answer": "no-answer",
    "failed": "failed",
    "timeout": "no-answer",  # the ring timeout expired
    "cancel": "hangup-bot",  # we cancelled the request before answer
    "canceled": "hangup-bot",
    "machine": "voicemail",
    "hangup": "completed",
    "answer": "completed",  # CDR call_state of an answered call that ended normally
}
UNKNOWN_HANGUP_END_REASON = "failed"
# HangupSource of a call that ended "completed" → a more precise end reason [values unverified].
# "API Request" is our own DELETE: the bot hung up, whichever of our write and this callback lands first.
HANGUP_SOURCE_END_REASONS: dict[str, str] = {"api request": "hangup-bot"}
# Stream status callback ``Event`` -> what it says about our media stream [values from Plivo's
# <Stream> docs: StartStream, StopStream, DroppedStream].
STREAM_EVENTS: dict[str, str] = {"startstream": "started", "stopstream": "stopped", "droppedstream": "failed"}
START_APP_EVENT = "startapp"  # Event=StartApp on the answer URL ⇒ the call is answered (§3.3)
# First non-empty of these is the caller's final speech (fact sheet §3.3).
SPEECH_FIELDS = ("Speech", "Transcription", "TranscriptionText", "SpeechResult", "RecognizedSpeech", "Text")
SPEECH_CONFIDENCE_FIELD = "SpeechConfidenceScore"
# What the event ledger keeps of a callback: enough to follow the call, not caller names or geodata.
LEDGER_PARAMS = (
    "CallUUID", "RequestUUID", "ALegRequestUUID", "CallStatus", "Direction", "From", "To", "Event",
    "HangupCause", "HangupSource", "Duration", "BillDuration", "Digits", "StreamID", "Error", *SPEECH_FIELDS, SPEECH_CONFIDENCE_FIELD,
)
DIRECTIONS: dict[str, str] = {"inbound": "inbound", "outbound": "outbound"}

# XML parameters.
DEFAULT_LANGUAGE = "en-US"
KEEPALIVE_WAIT_SECONDS = 300
LISTEN_EXECUTION_TIMEOUT_SECONDS = 30  # 5 to 60 s, counted after the nested <Speak> (protocols §6)
TIME_LIMIT_MARGIN_SECONDS = 60

# DTMF characters Plivo does not know → its pause characters (w = 0.5 s, W = 1 s).
DTMF_TRANSLATION = str.maketrans({",": "W", "p": "W", "P": "W"})

# Signed transfer payloads.
TRANSFER_PAYLOAD_VERSION = "v1"
TRANSFER_KEY_LABEL = b"voicecall:plivo:transfer-url:v1"
MAX_TRANSFER_URL_CHARS = 8000
MAX_TRANSFER_PAYLOAD_BYTES = 64 * 1024

# Characters XML 1.0 cannot carry (lxml refuses them): dropped from spoken text.
BAD_TRANSFER_PAYLOAD = "transfer payload missing, malformed or not signed by us"


# --- small wire helpers --------------------------------------------------------------------------

_XML_INVALID = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_PHONE_LIKE = re.compile(r"\+?[\d\s().-]+")


def normalize_number(value: str | None) -> str | None:
    """A callback number as E.164: Plivo sends ``14155550100``; SIP URIs and words are kept."""
    value = (value or "").strip()
    if not value:
        return None
    if value.lower().startswith("sip:") or not _PHONE_LIKE.fullmatch(value):
        return value
    digits = re.sub(r"\D", "", value)
    return "+" + digits if digits else value


def dial_number(value: str) -> str:
    """A number as Plivo takes it: digits only (country code, no ``+``); SIP URIs unchanged."""
    value = value.strip()
    if value.lower().startswith("sip:"):
        return value
    return re.sub(r"\D", "", value)


def _xml_text(text: str) -> str:
    return _XML_INVALID.sub("", text)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

