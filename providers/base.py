"""The provider interface: what every carrier adapter (Twilio, Telnyx, Plivo, mock) offers.

Reference: OpenClaw voice-call fact sheet §2.4 (normalized events) and §3 (common interface).

Providers translate between a carrier's wire format and these plain types. They never touch the
ORM: the webhook view hands them the request, they hand back ``NormalizedEvent``s, and
``calls.services`` applies those. Responses that depend on the call (TwiML for a notify call,
Plivo XML for a pending utterance) are rendered from a ``CallSnapshot`` that services build.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from providers.security import WebhookRequest
    from providers.settings import ProviderSettings


class EventType(enum.StrEnum):
    INITIATED = "call.initiated"
    RINGING = "call.ringing"
    ANSWERED = "call.answered"
    ACTIVE = "call.active"
    SPEAKING = "call.speaking"
    SPOKEN = "call.spoken"  # the carrier finished playing our speech (Telnyx call.speak.ended)
    SPEECH = "call.speech"
    SILENCE = "call.silence"
    DTMF = "call.dtmf"
    ENDED = "call.ended"
    ERROR = "call.error"
    # The carrier's own reports about our media stream (Telnyx streaming.*, Plivo stream callbacks):
    # kept in the ledger; a failed stream makes the call fall back to carrier speech.
    STREAM_STARTED = "call.stream.started"
    STREAM_STOPPED = "call.stream.stopped"
    STREAM_FAILED = "call.stream.failed"


@dataclass(frozen=True)
class NormalizedEvent:
    """One thing that happened on a call, in carrier-neutral terms.

    ``dedupe_key`` is what makes a delivery idempotent: it is stored in the unique column of the
    event ledger, so a second delivery of the same key changes nothing, in any process.
    ``call_id`` is our internal id when the carrier echoed it back (query string, client_state);
    ``provider_call_id`` is the carrier's id. ``previous_provider_call_id`` lets a carrier upgrade a
    provisional id (Plivo RequestUUID → CallUUID).
    """

    type: EventType
    dedupe_key: str
    call_id: str | None = None
    provider_call_id: str | None = None
    previous_provider_call_id: str | None = None
    timestamp: datetime | None = None
    turn_token: str | None = None
    direction: str | None = None  # "inbound" | "outbound"
    from_number: str | None = None
    to_number: str | None = None
    text: str | None = None  # call.speaking
    transcript: str | None = None  # call.speech
    is_final: bool = True
    confidence: float | None = None
    duration_ms: int | None = None  # call.silence
    digits: str | None = None  # call.dtmf
    reason: str | None = None  # call.ended: one of the terminal states
    error: str | None = None  # call.error
    retryable: bool = False
    raw: dict[str, Any] = field(default_factory=dict)  # the carrier payload, stored in the ledger


@dataclass(frozen=True)
class CallSnapshot:
    """What a provider may know about one of our calls (read from the DB by services)."""

    call_id: str
    provider: str
    provider_call_id: str | None
    direction: str
    state: str
    mode: str
    from_number: str
    to_number: str
    initial_message: str | None  # still to be spoken
    pending_turn_token: str | None
    is_terminal: bool
    webhook_url: str
    metadata: dict[str, Any] = field(default_factory=dict)
    # Set only on the snapshot a webhook reply is rendered from, when the call is to be connected to
    # our media stream: the token its <Stream> must present (calls.media.control mints it).
    stream_token: str | None = None


@dataclass(frozen=True)
class OutboundCallRequest:
    call_id: str
    to_number: str
    from_number: str
    mode: str  # notify | conversation
    initial_message: str | None
    webhook_url: str  # the public URL the carrier should call back, without our query parameters
    ring_timeout_seconds: int
    notify_hangup_delay_seconds: int
    voice: str | None = None
    language: str | None = None
    # Set when the call is to be connected to our media stream (a carrier that requests it with the
    # dial): the token the stream must present (calls.media.control mints it).
    stream_token: str | None = None


@dataclass(frozen=True)
class PlacedCall:
    provider_call_id: str
    status: str = "initiated"


@dataclass(frozen=True)
class ProviderCallStatus:
    """A carrier's view of a call, for the reaper and for restoring calls after a restart."""

    status: str  # the carrier's word, lower-cased, or "not-found" / "unknown"
    is_terminal: bool
    is_unknown: bool = False
    end_reason: str | None = None


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    reason: str = ""
    request_key: str | None = None  # stable hash of the authenticated material: the replay key
    # Other replay keys naming the same request (a Plivo request signed both V3 and V2): stored
    # with it, so a copy that presents only the other signature is still a replay.
    equivalent_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class WebhookReply:
    status: int = 200
    content_type: str = "text/plain"
    body: str = "OK"
    # When the reply itself speaks (TwiML <Say>, Plivo <Speak>), services record the utterance.
    spoken_text: str | None = None
    delivers_initial_message: bool = False  # the spoken text is the call's pending initial message
    listens: bool = False  # the reply also listens for the caller (Gather / GetInput)


@dataclass(frozen=True)
class ParsedWebhook:
    events: list[NormalizedEvent]
    # When the answer depends on the call, the provider renders it from the snapshot after the events
    # were applied (see Provider.render_reply); otherwise ``reply`` is returned as is.
    reply: WebhookReply | None = None


class ProviderError(Exception):
    """A carrier REST call failed. ``retryable``: nothing happened at the carrier (5xx, 429, a
    connection that never opened) and Celery may try again. ``ambiguous``: the request may have
    reached the carrier and been carried out (a reply lost to a read timeout or a dropped
    connection); a request that creates something (a dial) must then never be repeated."""

    def __init__(self, message: str, *, retryable: bool = False, status: int | None = None,
                 ambiguous: bool = False):
        super().__init__(message)
        self.retryable = retryable and not ambiguous
        self.status = status
        self.ambiguous = ambiguous


def request_may_have_arrived(exc: BaseException) -> bool:
    """Whether a failed HTTP request may still have been received and acted on by the server.

    Only a failure to open the connection (refused, DNS, connect timeout) proves it was not; a read
    timeout or a connection dropped after the request was written leaves it unknown.
    """
    import requests
    from urllib3.exceptions import NameResolutionError, NewConnectionError

    if isinstance(exc, requests.ConnectTimeout):
        return False
    if isinstance(exc, requests.Timeout):
        return True
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, NewConnectionError | NameResolutionError | ConnectionRefusedError):
            return False
        reason = getattr(current, "reason", None)
        nested = current.args[0] if current.args and isinstance(current.args[0], BaseException) else None
        current = reason if isinstance(reason, BaseException) else nested or current.__cause__ or current.__context__
    return isinstance(exc, requests.ConnectionError | OSError)


def ledger_view(source: Any, keep: tuple[str, ...]) -> dict[str, Any]:
    """The part of a carrier payload kept in the event ledger: the fields an operator needs to follow
    a call, never caller names, geodata or headers (each carrier lists its ``keep``)."""
    if not isinstance(source, dict):
        return {}
    return {k: source[k] for k in keep if k in source}


class WebhookParseError(ValueError):
    """The body is not what this carrier sends: answered with 400, nothing recorded."""


class Provider:
    """Base class of carrier adapters. Subclasses set ``name`` and override what they support."""

    name: ClassVar[str] = ""
    #: headers that must be present before the body is even read (pre-auth gate, §4.1 step 4);
    #: each inner tuple is one acceptable set (Plivo accepts V3 or V2 headers).
    required_signature_headers: ClassVar[tuple[tuple[str, ...], ...]] = ()
    #: whether each `continue` turn carries a token echoed back by the carrier (Twilio Gather URL)
    uses_turn_tokens: ClassVar[bool] = False
    #: Telnyx must answer inbound legs by REST; Twilio/Plivo answer through the webhook reply
    answers_inbound_by_rest: ClassVar[bool] = False
    #: whether the first webhook reply itself speaks the initial message (Twilio TwiML <Say>, Plivo
    #: <Speak>), so services must not also speak it by REST on answer
    speaks_initial_message_in_reply: ClassVar[bool] = False
    supports_dtmf: ClassVar[bool] = False
    #: the carrier reports when playback ends (``call.spoken``): a notify call hangs up that long
    #: after the end of the message instead of after the speak request, and a conversation starts
    #: listening only then, so the bot does not transcribe itself (Telnyx)
    reports_playback_end: ClassVar[bool] = False
    #: how a call is connected to our media stream (``streaming.enabled``): ``"reply"`` -- the
    #: webhook reply carries it (Twilio ``<Connect><Stream>``, Plivo ``<Stream>``); ``"request"`` --
    #: the dial and the inbound answer request it (Telnyx ``stream_url``); ``""`` -- never (mock).
    media_stream_offer: ClassVar[str] = ""

    def __init__(self, settings: ProviderSettings):
        self.settings = settings

    # --- webhooks -------------------------------------------------------------------------------
    def verify_webhook(self, request: WebhookRequest) -> VerifyResult:
        raise NotImplementedError

    def parse_webhook(self, request: WebhookRequest, request_key: str) -> ParsedWebhook:
        raise NotImplementedError

    def render_reply(
        self, request: WebhookRequest, parsed: ParsedWebhook, call: CallSnapshot | None
    ) -> WebhookReply:
        """The HTTP answer to a webhook after its events were applied (default: parsed.reply or OK)."""
        return parsed.reply or WebhookReply()

    def rejected_reply(self, request: WebhookRequest) -> WebhookReply:
        """The answer to a webhook of an inbound call that policy rejected."""
        return WebhookReply()

    # --- commands (called from Celery tasks / services, never on the webhook hot path) -----------
    def initiate_call(self, request: OutboundCallRequest) -> PlacedCall:
        raise NotImplementedError

    def hangup_call(self, call: CallSnapshot) -> None:
        raise NotImplementedError

    def answer_call(self, call: CallSnapshot) -> None:
        return None

    def play_tts(self, call: CallSnapshot, text: str, *, listen_after: bool, turn_token: str | None) -> None:
        raise NotImplementedError

    def start_listening(self, call: CallSnapshot, *, turn_token: str | None) -> None:
        raise NotImplementedError

    def stop_listening(self, call: CallSnapshot) -> None:
        return None

    def send_dtmf(self, call: CallSnapshot, digits: str) -> None:
        raise ProviderError(f"{self.name} does not support outbound DTMF")

    def get_call_status(self, provider_call_id: str) -> ProviderCallStatus:
        return ProviderCallStatus(status="unknown", is_terminal=False, is_unknown=True)

    def find_placed_call(self, call_id: str) -> str | None:
        """The carrier's id of the call we dialed as ``call_id``, found by our own id, after a dial
        whose reply was lost. None when the carrier lists no such call -- or cannot be asked: only a
        carrier whose API shows our id on its calls overrides this (a match on numbers and times
        could bind someone else's call). A read, safe to repeat; raises ``ProviderError``."""
        return None

    def reject_inbound(self, provider_call_id: str) -> None:
        """Hang up an inbound call that policy rejected (no call record exists)."""
        raise NotImplementedError
