"""What every service module shares: the messages of the interface, ``ServiceError``, finding a
call, the snapshot a provider is given, and the state-machine steps taken under a row lock.

Messages are part of the interface: the CLI, RPC and the agent tool return them verbatim and the
tests reuse them, so they live in one place.
"""

from __future__ import annotations

import logging
import re

from django.db import transaction
from django.utils import timezone

from calls.config import VoiceCallConfig, get_config
from calls.models import (
    Call,
)
from calls.services.call_updates import forget_call, publish_call_update
from calls.state import CONNECTED_STATES, END_REASONS, CallState, next_state
from providers import get_provider
from providers.base import (
    CallSnapshot,
    Provider,
)

logger = logging.getLogger(__name__)

CALL_NOT_FOUND = "Call not found"
CALL_NOT_CONNECTED = "Call not connected"
CALL_HAS_ENDED = "Call has ended"
MAX_CONCURRENT_CALLS = "Maximum concurrent calls ({limit}) reached"
TO_REQUIRED = "to required"
MESSAGE_REQUIRED = "message required"
INVALID_NUMBER = "{field} must be an E.164 number like +15551234567"
FROM_NOT_CONFIGURED = "fromNumber not configured"
INVALID_MODE = "mode must be notify or conversation"
ALREADY_WAITING = "Already waiting for transcript"
TRANSCRIPT_TIMEOUT = "Timed out waiting for transcript after {ms}ms"
CALL_ENDED_WHILE_WAITING = "Call ended: {reason}"
INVALID_DIGITS = "digits may only contain digits, *, #, comma, w, p"
DIGITS_REQUIRED = "digits required"
MAX_SPOKEN_TEXT_CHARS = 4000  # one utterance; longer text is refused, not truncated or buffered
TEXT_TOO_LONG = "message is longer than {limit} characters"
DIAL_UNCONFIRMED = "the carrier did not confirm the dial ({error}); not redialed, waiting for its callbacks"
DIAL_UNCONFIRMED_KEY = "dialUnconfirmedAt"  # metadata: a dial whose reply was lost
DIAL_NEVER_CONFIRMED = "the carrier never confirmed the dial within staleCallReaperSeconds; not redialed"
PLACEMENT_EXPIRED = (
    "not dialed within outbound.placementTimeoutSeconds ({seconds} s) of being requested; never dialed"
)
PLACEMENT_INTERRUPTED = "placement was interrupted after dialing began; not redialed to avoid a duplicate call"

DEFAULT_INBOUND_GREETING = "Hello! How can I help you today?"
MOCK_DEFAULT_FROM = "+15550000000"
E164 = re.compile(r"^\+[1-9]\d{1,14}$")
DTMF_DIGITS = re.compile(r"^[0-9*#wWpP,]+$")
# A notify call whose message was delivered ends normally: "completed", as the carrier reports when
# its own TwiML hangs up. An operator's or agent's explicit end is "hangup-bot".
NOTIFY_END_REASON = CallState.COMPLETED.value
END_REQUESTED_KEY = "endRequested"  # metadata: the reason of a hang-up we asked the carrier for
# metadata: the nonce of the call's media-stream token; set when the call was offered a media stream
# (the media layer mints it), so the stream -- not the carrier -- speaks and listens on that call.
STREAM_TOKEN_NONCE_KEY = "streamTokenNonce"  # noqa: S105 - a metadata key name, not a secret
STREAM_FAILED_KEY = "streamFailed"  # metadata: the carrier reported the stream could not be set up
STREAM_FAILED = "Media stream failed: {reason}; the call falls back to the carrier's own speech"


def expects_stream(call: Call) -> bool:
    """The call was offered a media stream that has not failed: its greeting and listening belong to
    the stream (the consumer claims the greeting when the stream starts), not to carrier speech."""
    metadata = call.metadata or {}
    return bool(metadata.get(STREAM_TOKEN_NONCE_KEY)) and not metadata.get(STREAM_FAILED_KEY)


class ServiceError(Exception):
    """A request that cannot be carried out; ``str(err)`` is the message shown to the caller."""


def snapshot(call: Call, config: VoiceCallConfig | None = None) -> CallSnapshot:
    config = config or get_config()
    return CallSnapshot(
        call_id=str(call.id),
        provider=call.provider,
        provider_call_id=call.provider_call_id,
        direction=call.direction,
        state=call.state,
        mode=call.mode,
        from_number=call.from_number,
        to_number=call.to_number,
        initial_message=None if call.initial_message_delivered else (call.initial_message or None),
        pending_turn_token=call.pending_turn_token or None,
        is_terminal=call.is_terminal,
        webhook_url=config.webhook_url(),
        metadata=dict(call.metadata or {}),
    )


def epoch_ms(dt) -> int | None:
    return int(dt.timestamp() * 1000) if dt else None


def masked(number: str | None) -> str:
    """A phone number as logs show it: the country-code end and the last two digits
    (``+1555•••••67``); who was called stays in the database, not in log files."""
    number = (number or "").strip()
    if len(number) <= 5:
        return "•" * len(number)
    return number[:4] + "•" * (len(number) - 6) + number[-2:]


def spoken_text(message: str | None) -> str:
    """The text of one utterance: trimmed, required, and at most ``MAX_SPOKEN_TEXT_CHARS`` long (so
    synthesis, transcripts and stream queues stay bounded whatever an agent sends)."""
    message = (message or "").strip()
    if not message:
        raise ServiceError(MESSAGE_REQUIRED)
    if len(message) > MAX_SPOKEN_TEXT_CHARS:
        raise ServiceError(TEXT_TOO_LONG.format(limit=MAX_SPOKEN_TEXT_CHARS))
    return message


def carrier(config: VoiceCallConfig | None = None) -> Provider:
    """The configured carrier's adapter, given the plain settings it works from."""
    return get_provider((config or get_config()).provider_settings)


def find_call(call_id: str) -> Call | None:
    if not call_id:
        return None
    return Call.objects.by_any_id(str(call_id).strip()).first()


def require_call(call_id: str) -> Call:
    call = find_call(call_id)
    if call is None:
        raise ServiceError(CALL_NOT_FOUND)
    return call


def require_connected(call: Call) -> None:
    if call.is_terminal:
        raise ServiceError(CALL_HAS_ENDED)
    if not call.provider_call_id or call.state not in {s.value for s in CONNECTED_STATES}:
        raise ServiceError(CALL_NOT_CONNECTED)


def transition(call: Call, target: str) -> bool:
    new_state = next_state(call.state, target)
    if new_state == call.state:
        return False
    call.state = new_state
    return True


def finalize(call: Call, reason: str, *, error: str | None = None) -> None:
    """End a call in its terminal state (fact sheet §2.3 finalizeCall). Caller holds the row lock."""
    if reason not in END_REASONS:
        reason = CallState.COMPLETED.value
    if call.is_terminal:
        return
    call.state = reason
    call.end_reason = reason
    call.ended_at = timezone.now()
    call.pending_turn_token = ""
    call.pending_turn_started_at = None
    if error:
        call.last_error = error[:2000]
    call.save()
    call_id = str(call.id)
    transaction.on_commit(lambda: (publish_call_update(call_id), forget_call(call_id)))
