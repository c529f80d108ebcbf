"""Telnyx Call Control v2 vocabulary: event types, hang-up causes, directions, voices, command ids
and our ``client_state`` (fact sheet §3.2; protocols.md §5)."""


import base64
import binascii
from datetime import datetime
from typing import Any

from providers.base import (
    EventType,
)

API_VERSION_PATH = "/v2"

# (connect, read) seconds for every REST request.
REQUEST_TIMEOUT = (5.0, 15.0)
# A command that timed out or got a 5xx is sent once more with the same command_id (idempotent).
COMMAND_ATTEMPTS = 2
#: Looking our call up among the connection's active calls (after a lost dial reply): the page size
#: (Telnyx list endpoints take 1..250) and how many pages to read before giving up (5,000 calls).
ACTIVE_CALLS_PAGE_SIZE = 250
ACTIVE_CALLS_MAX_PAGES = 20
COMMAND_ID_PREFIX = "voicecall"

DEFAULT_VOICE = "female"
DEFAULT_SPEAK_LANGUAGE = "en-US"
DEFAULT_TRANSCRIPTION_LANGUAGE = "en"
# Voices Telnyx's speak command accepts without an engine prefix (``service_level: basic``).
BASIC_VOICES = frozenset({"male", "female"})
# Engine-qualified voice names (protocols §5 "Speak").
VOICE_ENGINE_PREFIXES = ("AWS.Polly.", "Azure.", "Telnyx.", "ElevenLabs.", "Polly.")

# Telnyx error code for a command sent to a call that has ended (HTTP 422).
CALL_ENDED_ERROR_CODES = frozenset({"90018"})
CALL_ENDED_TEXT = "already ended"

# Webhook event_type → normalized event (fact sheet §3.2). Types not listed are acknowledged and ignored.
EVENT_TYPES: dict[str, EventType] = {
    "call.initiated": EventType.INITIATED,
    "call.ringing": EventType.RINGING,
    "call.answered": EventType.ANSWERED,
    "call.bridged": EventType.ACTIVE,
    "call.speak.started": EventType.SPEAKING,
    "call.speak.ended": EventType.SPOKEN,
    "call.transcription": EventType.SPEECH,
    "call.dtmf.received": EventType.DTMF,
    "call.hangup": EventType.ENDED,
    # Our media stream (providers/telnyx/stream.py): started / stopped are ledger entries, a failed
    # stream makes the call fall back to Telnyx speech and transcription.
    "streaming.started": EventType.STREAM_STARTED,
    "streaming.stopped": EventType.STREAM_STOPPED,
    "streaming.failed": EventType.STREAM_FAILED,
}

# call.speak.ended statuses that mean the speech did not finish because the call is gone.
SPEAK_INTERRUPTED_STATUSES = frozenset({"call_hangup"})

# call.hangup payload.hangup_cause → end reason (fact sheet §3.2, plus protocols §5 causes).
HANGUP_CAUSES: dict[str, str] = {
    "normal_clearing": "completed",
    "normal_unspecified": "completed",
    "unspecified": "completed",
    "originator_cancel": "hangup-bot",
    "call_rejected": "busy",
    "user_busy": "busy",
    "no_answer": "no-answer",
    "no_user_response": "no-answer",
    "timeout": "no-answer",
    "destination_out_of_order": "failed",
    "network_out_of_order": "failed",
    "service_unavailable": "failed",
    "recovery_on_timer_expire": "failed",
    "not_found": "failed",
    "machine_detected": "voicemail",
    "fax_detected": "voicemail",
    "user_hangup": "hangup-user",
    "subscriber_absent": "hangup-user",
    "time_limit": "timeout",
}
UNKNOWN_HANGUP_CAUSE_REASON = "completed"

# What the event ledger keeps of a webhook (envelope, then data.payload): enough to follow the call,
# not the caller's name, custom SIP headers or our own client_state.
LEDGER_ENVELOPE = ("id", "event_type", "occurred_at", "record_type")
LEDGER_PAYLOAD = (
    "call_control_id", "call_leg_id", "call_session_id", "direction", "from", "to", "state", "status",
    "hangup_cause", "hangup_source", "sip_hangup_cause", "digit", "digits", "transcription_data",
    "transcription", "is_final", "confidence", "stream_id", "failure_reason",
)

# payload.direction → our direction.
DIRECTIONS: dict[str, str] = {
    "incoming": "inbound",
    "inbound": "inbound",
    "outgoing": "outbound",
    "outbound": "outbound",
}




# send_dtmf: each digit's tone length; our pause characters -> Telnyx's (w = 0.5 s, W = 1 s).
DTMF_DURATION_MS = 250
DTMF_TRANSLATION = str.maketrans({",": "W", "p": "W", "P": "W"})


def telnyx_dtmf(digits: str) -> str:
    return digits.translate(DTMF_TRANSLATION)


def encode_client_state(call_id: str) -> str:
    """``client_state`` is base64 on the wire; we put our call id in it (fact sheet §3.2)."""
    return base64.b64encode(call_id.encode()).decode()


def decode_client_state(value: Any) -> str | None:
    """Our call id from ``client_state``; the raw value when it is not valid base64 text (later
    upstream behaviour), None when absent."""
    if not isinstance(value, str) or not value.strip():
        return None
    value = value.strip()
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return value
    return decoded.strip() or value


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# --- the provider --------------------------------------------------------------------------------


def _telnyx_speaks(voice: str) -> bool:
    """A voice name Telnyx's speak command accepts (basic voices and engine-prefixed ones)."""
    return voice in BASIC_VOICES or voice.startswith(VOICE_ENGINE_PREFIXES)

