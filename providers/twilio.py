"""Twilio Programmable Voice: REST through the official SDK, TwiML replies, signed form webhooks.

Sources: OpenClaw fact sheet §3.1 (requests, parsing, TwiML policy), §4.2-4.4 (URL the carrier
signed, signature, replay keys), §6.1 (Polly voices), §7.2 (rejected callers); protocols.md §1
(X-Twilio-Signature), §2 (voice request parameters, call statuses, status callbacks, REST, pointing
the SDK at a local fake), §3 (TwiML). This module covers Twilio *without* a media stream.

How a call is driven
--------------------
* Outbound: ``Calls.json`` create with ``Url=<webhook>?callId=<ours>`` and a ``StatusCallback`` with
  ``&type=status``. Twilio fetches ``Url`` when the callee answers; that first reply speaks the
  initial message itself (``speaks_initial_message_in_reply``): a notify call gets
  ``<Say>`` + ``<Pause length=notifyHangupDelaySec>`` + ``<Hangup/>`` so the message is always heard
  in full and Twilio hangs up (its ``completed`` callback ends our call); a conversation gets
  ``<Say>`` + ``<Gather>`` + ``<Redirect>``.
* Listening is ``<Gather input="speech" timeout="120">`` followed by a ``<Redirect>`` back to us, so a
  silent caller is listened to again instead of the call falling off the end of the document.
* Live changes (speak, listen, DTMF) replace the executing TwiML with a REST update
  (``Calls/{sid}.json`` ``Twiml=``); Twilio error 21220 ("call is not in-progress") right after
  answer is transient and retried briefly.
* Every URL we put into TwiML carries ``callId`` and a fresh nonce ``n``. Twilio sends identical
  parameters on every fetch of the same URL (nothing per request is signed), so without the nonce
  the second pass through a ``<Redirect>`` loop would look like a replay of the first.
* ``continue`` turns carry a token in the ``<Gather action>`` query (``turnToken``); services only
  let a final transcript with the pending token answer the turn.
* Inbound: Twilio sends no separate "answered" callback, so the first inbound request yields
  ``call.initiated`` and ``call.answered``. An accepted caller hears the greeting in the reply; a
  rejected one gets ``<Reject/>`` and is also hung up by REST once (services own the "once").
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import requests
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import SIGNATURE_HEADER
from twilio.rest import Client
from twilio.twiml.voice_response import VoiceResponse

from providers import twilio_stream
from providers.base import (
    CallSnapshot,
    EventType,
    NormalizedEvent,
    OutboundCallRequest,
    ParsedWebhook,
    PlacedCall,
    Provider,
    ProviderCallStatus,
    ProviderError,
    VerifyResult,
    WebhookParseError,
    WebhookReply,
    request_may_have_arrived,
)
from providers.security import (
    ForwardingTrust,
    has_form_body,
    header,
    twilio_replay_key,
    url_port_variants,
    verification_url,
    verify_twilio_signature,
)
from providers.settings import configured_voice

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Protocol tables
# --------------------------------------------------------------------------------------------------

# CallStatus of a voice request / status callback -> our event (fact sheet §3.1). "queued" and any
# unknown status yield no event. Terminal statuses end the call with the reason in END_REASONS.
STATUS_EVENTS: dict[str, EventType] = {
    "initiated": EventType.INITIATED,
    "ringing": EventType.RINGING,
    "in-progress": EventType.ANSWERED,
}
# Terminal CallStatus -> end reason (fact sheet §2.8; Twilio's statuses, protocols.md §2).
END_REASONS: dict[str, str] = {
    "completed": "completed",
    "failed": "failed",
    "busy": "busy",
    "no-answer": "no-answer",
    "canceled": "hangup-bot",
}
# Direction parameter -> ours (protocols.md §2: outbound-api for REST calls, outbound-dial for <Dial>).
DIRECTIONS: dict[str, str] = {"inbound": "inbound", "outbound-api": "outbound", "outbound-dial": "outbound"}
# Status callbacks requested when placing a call (protocols.md §2 "Status callbacks").
STATUS_CALLBACK_EVENTS: tuple[str, ...] = ("initiated", "ringing", "answered", "completed")

# OpenAI voice names -> Amazon Polly voices for <Say> (fact sheet §6.1, `src/voice-mapping.ts`).
POLLY_VOICES: dict[str, str] = {
    "alloy": "Polly.Joanna",
    "echo": "Polly.Matthew",
    "fable": "Polly.Amy",
    "onyx": "Polly.Brian",
    "nova": "Polly.Salli",
    "shimmer": "Polly.Kimberly",
}
DEFAULT_POLLY_VOICE = "Polly.Joanna"
PASS_THROUGH_VOICE_PREFIXES = ("Polly.", "Google.")
DEFAULT_LANGUAGE = "en-US"

# Our DTMF alphabet (services: 0-9 * # , w W p P) -> Twilio <Play digits> (0-9 * # and `w` = 0.5 s).
DTMF_PAUSES: dict[str, str] = {",": "w", "p": "w", "P": "w", "w": "w", "W": "ww"}

# <Gather> (fact sheet §3.1 "Later Twilio details"; protocols.md §3).
GATHER_TIMEOUT_S = 120
GATHER_SPEECH_TIMEOUT = "auto"
DEFAULT_SPEECH_CONFIDENCE = 0.9  # when a SpeechResult comes without Confidence (fact sheet §3.1)

# REST behaviour.
REST_TIMEOUT_S = 15.0
TWIML_MAX_CHARS = 4000  # Twilio refuses longer inline TwiML (protocols.md §2 "Create call")
NOT_FOUND_CODE = 20404  # "The requested resource was not found": the call is gone, i.e. already ended
NOT_IN_PROGRESS_CODE = 21220  # "Call is not in-progress. Cannot redirect." transient just after answer
NOT_IN_PROGRESS_RETRY_DELAYS_S = (0.25, 0.5, 1.0)
MAX_RING_TIMEOUT_S = 600  # `Timeout` of Calls.json: ring seconds, max 600

XML_CONTENT_TYPE = "application/xml"

# Query parameters of the URLs we hand to Twilio.
Q_CALL_ID = "callId"
Q_TYPE = "type"
Q_TURN_TOKEN = "turnToken"  # noqa: S105 - a query parameter name, not a secret
Q_FLOW = "flow"
Q_NONCE = "n"
TYPE_STATUS = "status"


# --------------------------------------------------------------------------------------------------
# TwiML and URLs (pure functions)
# --------------------------------------------------------------------------------------------------


def polly_voice(voice: str | None) -> str:
    """The <Say voice> for a configured TTS voice (fact sheet §6.1)."""
    voice = (voice or "").strip()
    if voice.startswith(PASS_THROUGH_VOICE_PREFIXES):
        return voice
    return POLLY_VOICES.get(voice.lower(), DEFAULT_POLLY_VOICE)


def twilio_digits(digits: str) -> str:
    """Our DTMF string in Twilio's <Play digits> alphabet (pauses become `w`)."""
    return "".join(DTMF_PAUSES.get(ch, ch) for ch in digits)


def with_query(url: str, **params: str | None) -> str:
    """``url`` with ``params`` appended to its query (None values skipped, existing ones kept)."""
    parts = urlsplit(url)
    extra = urlencode([(k, v) for k, v in params.items() if v is not None])
    query = f"{parts.query}&{extra}" if parts.query and extra else (parts.query or extra)
    return urlunsplit(parts._replace(query=query))


def _xml(response: VoiceResponse) -> str:
    return str(response)


def empty_twiml() -> str:
    return _xml(VoiceResponse())


def reject_twiml() -> str:
    """Refuse an inbound call before it is answered (TwiML <Reject>)."""
    response = VoiceResponse()
    response.reject()
    return _xml(response)


def hangup_twiml() -> str:
    response = VoiceResponse()
    response.hangup()
    return _xml(response)


def notify_twiml(text: str | None, *, voice: str, pause_seconds: int) -> str:
    """Say the message, wait ``pause_seconds``, hang up: Twilio ends the call itself, after the
    whole message was heard (never a REST hang-up racing the speech)."""
    response = VoiceResponse()
    if text:
        response.say(text, voice=voice)
    if pause_seconds > 0:
        response.pause(length=pause_seconds)
    response.hangup()
    return _xml(response)


def listen_twiml(text: str | None, *, voice: str, gather_action: str, redirect_url: str, language: str) -> str:
    """Optionally say something, then listen for speech; a silent caller is redirected back to us
    (and listened to again) instead of the call ending when the document runs out."""
    response = VoiceResponse()
    if text:
        response.say(text, voice=voice)
    response.gather(
        input="speech",
        speech_timeout=GATHER_SPEECH_TIMEOUT,
        timeout=GATHER_TIMEOUT_S,
        language=language,
        action=gather_action,
        method="POST",
    )
    response.redirect(redirect_url, method="POST")
    return _xml(response)


def say_then_redirect_twiml(text: str, *, voice: str, redirect_url: str) -> str:
    response = VoiceResponse()
    response.say(text, voice=voice)
    response.redirect(redirect_url, method="POST")
    return _xml(response)


def dtmf_twiml(digits: str, *, redirect_url: str) -> str:
    """Play DTMF tones into the call, then come back to us for what follows (fact sheet §8.6)."""
    response = VoiceResponse()
    response.play(digits=twilio_digits(digits))
    response.redirect(redirect_url, method="POST")
    return _xml(response)


# --------------------------------------------------------------------------------------------------
# The provider
# --------------------------------------------------------------------------------------------------


class TwilioProvider(Provider):
    """Twilio without a media stream: <Say>/<Gather> speech, REST call control, signed webhooks."""

    name = "twilio"
    required_signature_headers = ((SIGNATURE_HEADER,),)
    uses_turn_tokens = True
    speaks_initial_message_in_reply = True
    supports_dtmf = True
    media_stream_offer = "reply"  # <Connect><Stream> in the webhook reply (providers/twilio_stream.py)

    def __init__(self, settings):
        super().__init__(settings)
        self._client: Client | None = None
        self._client_lock = threading.Lock()

    # --- REST client ----------------------------------------------------------------------------
    @property
    def client(self) -> Client:
        """The SDK client, pointed at ``twilio.apiBaseUrl`` (protocols.md §2, local fakes in tests)."""
        with self._client_lock:
            if self._client is None:
                cfg = self.settings.twilio
                if not cfg.account_sid or not cfg.auth_token:
                    raise ProviderError("Twilio accountSid and authToken are required")
                client = Client(
                    cfg.account_sid,
                    cfg.auth_token,
                    region=cfg.region,
                    http_client=TwilioHttpClient(timeout=REST_TIMEOUT_S),
                )
                client.api.base_url = cfg.api_base_url.rstrip("/")
                self._client = client
            return self._client

    def _error(self, action: str, exc: Exception, *, ambiguous_timeout: bool = False) -> ProviderError:
        """A ProviderError whose message names what failed but never a credential."""
        if isinstance(exc, TwilioRestException):
            code = f" (code {exc.code})" if exc.code and exc.code != exc.status else ""
            message = f"Twilio {action} failed: HTTP {exc.status}{code}: {exc.msg}"
            status = exc.status
        elif isinstance(exc, TwilioServiceException):
            message = f"Twilio {action} failed: HTTP {exc.status} (code {exc.code}): {exc.title}"
            status = exc.status
        elif isinstance(exc, requests.RequestException):
            # On create, a read timeout or a connection dropped after the request went out is
            # ambiguous (Twilio may have dialed): never retried, so a retry cannot place a second
            # real call. A connection that never opened sent nothing and may be retried.
            ambiguous = ambiguous_timeout and request_may_have_arrived(exc)
            what = type(exc).__name__ if isinstance(exc, requests.Timeout) else f"API unreachable ({type(exc).__name__})"
            if ambiguous:
                what += " after the request was sent (it may have been carried out)"
            return ProviderError(f"Twilio {action} failed: {what}", retryable=True, ambiguous=ambiguous)
        else:
            message, status = f"Twilio {action} failed: {type(exc).__name__}", None
        token = self.settings.twilio.auth_token
        if token:
            message = message.replace(token, "***")
        retryable = status is not None and (status >= 500 or status == 429)
        return ProviderError(message[:500], retryable=retryable, status=status)

    @staticmethod
    def _code(exc: Exception) -> int | None:
        return getattr(exc, "code", None)

    def _is_not_found(self, exc: Exception) -> bool:
        return getattr(exc, "status", None) == 404 or self._code(exc) == NOT_FOUND_CODE

    def _update_twiml(self, provider_call_id: str, twiml: str, action: str) -> None:
        """Replace the TwiML a live call is executing; 21220 right after answer is retried briefly."""
        if len(twiml) > TWIML_MAX_CHARS:
            raise ProviderError(f"Twilio {action} failed: TwiML longer than {TWIML_MAX_CHARS} characters")
        delays = iter(NOT_IN_PROGRESS_RETRY_DELAYS_S)
        while True:
            try:
                self.client.calls(provider_call_id).update(twiml=twiml)
                return
            except (TwilioException, requests.RequestException) as exc:
                delay = next(delays, None) if self._code(exc) == NOT_IN_PROGRESS_CODE else None
                if delay is None:
                    raise self._error(action, exc) from None
                time.sleep(delay)

    def _complete(self, provider_call_id: str, action: str) -> None:
        """Hang up (``Status=completed``). 404/20404 means the call is already gone: success."""
        try:
            self.client.calls(provider_call_id).update(status="completed")
        except (TwilioException, requests.RequestException) as exc:
            if self._is_not_found(exc):
                logger.info("twilio call %s already ended (404) at %s", provider_call_id, action)
                return
            raise self._error(action, exc) from None

    # --- speech helpers -------------------------------------------------------------------------
    def _voice(self, call: CallSnapshot | None = None) -> str:
        number = call.to_number if call is not None and call.direction == "inbound" else None
        return polly_voice(configured_voice(self.settings.effective_tts(number)))

    def _language(self, call: CallSnapshot | None = None) -> str:
        number = call.to_number if call is not None and call.direction == "inbound" else None
        language = (self.settings.effective_tts(number) or {}).get("language")
        return language if isinstance(language, str) and language.strip() else DEFAULT_LANGUAGE

    @staticmethod
    def _gather_action(call: CallSnapshot, turn_token: str | None) -> str:
        return with_query(
            call.webhook_url,
            **{Q_CALL_ID: call.call_id, Q_FLOW: "gather", Q_TURN_TOKEN: turn_token or None, Q_NONCE: _nonce()},
        )

    @staticmethod
    def _redirect_url(call: CallSnapshot) -> str:
        return with_query(call.webhook_url, **{Q_CALL_ID: call.call_id, Q_FLOW: "redirect", Q_NONCE: _nonce()})

    def _listen(self, call: CallSnapshot, text: str | None, turn_token: str | None) -> str:
        return listen_twiml(
            text,
            voice=self._voice(call),
            gather_action=self._gather_action(call, turn_token),
            redirect_url=self._redirect_url(call),
            language=self._language(call),
        )

    # --- webhooks -------------------------------------------------------------------------------
    def verify_webhook(self, request) -> VerifyResult:
        """X-Twilio-Signature over the URL Twilio requested (fact sheet §4.2-4.4, protocols.md §1).

        The URL is ``publicUrl``'s scheme and host with the request's raw path and query; without a
        ``publicUrl`` it is rebuilt from forwarding headers, which are believed only under the trust
        rules (allowedHosts / trustForwardingHeaders / trustedProxyIPs, or the ngrok loopback rule).
        Port variants are tried because Twilio does not always sign the port. The request key (the
        replay key) hashes only signed material.
        """
        cfg = self.settings
        trust = ForwardingTrust.for_request(cfg.webhook_trust, request.remote_addr)
        url = verification_url(request, trust, cfg.public_url)
        candidates = url_port_variants(url, public_url=cfg.public_url, host_header=header(request, "Host"))
        check = verify_twilio_signature(request, cfg.twilio.auth_token or "", candidates)
        if not check.ok or not check.matched_url:
            return VerifyResult(ok=False, reason=check.reason)
        form = request.form_params if has_form_body(request) else []
        key = twilio_replay_key(check.matched_url, form, header(request, SIGNATURE_HEADER) or "")
        return VerifyResult(ok=True, reason=check.reason, request_key=key)

    def parse_webhook(self, request, request_key: str) -> ParsedWebhook:
        """Form parameters -> events (fact sheet §3.1 ``normalizeEvent``).

        Priority: ``SpeechResult`` -> final ``call.speech`` (with ``Confidence`` and the query
        ``turnToken``); ``Digits`` -> ``call.dtmf``; else ``CallStatus`` via ``STATUS_EVENTS`` /
        ``END_REASONS``. The first inbound request (to the number's Voice URL, so without our
        ``callId``) yields ``call.initiated`` + ``call.answered`` instead.
        """
        params = _params(request)
        query = dict(request.query_params)
        call_sid = (params.get("CallSid") or "").strip()
        if not call_sid:
            raise WebhookParseError("Twilio webhook without CallSid")
        direction = DIRECTIONS.get((params.get("Direction") or "").strip().lower())
        status = (params.get("CallStatus") or "").strip().lower()
        common: dict[str, Any] = {
            "call_id": query.get(Q_CALL_ID) or None,
            "provider_call_id": call_sid,
            "direction": direction,
            "from_number": params.get("From") or None,
            "to_number": params.get("To") or None,
            "turn_token": query.get(Q_TURN_TOKEN) or None,
            "timestamp": _timestamp(params.get("Timestamp")),
            "raw": _safe_raw(params),
        }
        kinds: list[tuple[EventType, dict[str, Any]]] = []
        speech = (params.get("SpeechResult") or "").strip()
        digits = (params.get("Digits") or "").strip()
        if speech:
            kinds.append((EventType.SPEECH, {"transcript": speech, "is_final": True,
                                             "confidence": _confidence(params.get("Confidence"))}))
        elif digits:
            kinds.append((EventType.DTMF, {"digits": digits}))
        elif status in END_REASONS:
            kinds.append((EventType.ENDED, {"reason": END_REASONS[status]}))
        elif direction == "inbound" and not query.get(Q_CALL_ID) and status in ("ringing", "in-progress") \
                and query.get(Q_TYPE) != TYPE_STATUS:
            # The number's Voice URL request (our own URLs always carry callId). Twilio sends no
            # "answered" callback for inbound calls: answering is our TwiML reply.
            kinds.append((EventType.INITIATED, {}))
            kinds.append((EventType.ANSWERED, {}))
        elif status in STATUS_EVENTS:
            kinds.append((STATUS_EVENTS[status], {}))

        events = [
            NormalizedEvent(
                type=kind,
                dedupe_key=request_key if len(kinds) == 1 else f"{request_key}:{kind.value}",
                **common,
                **fields,
            )
            for kind, fields in kinds
        ]
        return ParsedWebhook(events=events)

    def render_reply(self, request, parsed: ParsedWebhook, call: CallSnapshot | None) -> WebhookReply:
        """TwiML for this request, decided from the call after its events were applied.

        Status callback -> empty; ended or unknown call -> hang up / empty; pending initial message
        -> notify (<Say>+<Pause>+<Hangup/>) or greeting + listen; conversation -> keep listening
        with the still-pending turn token; notify with nothing left to say -> pause, hang up.
        """
        if dict(request.query_params).get(Q_TYPE) == TYPE_STATUS:
            return _xml_reply(empty_twiml())
        if call is None:
            return _xml_reply(empty_twiml())
        if call.is_terminal:
            return _xml_reply(hangup_twiml())
        # --- media streams (providers/twilio_stream.py; the token is minted by calls.media.control) ---
        # A live conversation call is connected to our media stream instead of <Say>/<Gather>; the
        # stream consumer speaks the pending greeting once the stream starts (fact sheet §3.1, §5.3).
        if call.stream_token:
            return twilio_stream.stream_reply(self.settings, call.stream_token, call.call_id)
        pause = self.settings.notify_hangup_delay_sec
        if call.initial_message:
            if call.mode == "notify":
                body = notify_twiml(call.initial_message, voice=self._voice(call), pause_seconds=pause)
                return _xml_reply(body, spoken=call.initial_message, delivers=True, listens=False)
            body = self._listen(call, call.initial_message, call.pending_turn_token)
            return _xml_reply(body, spoken=call.initial_message, delivers=True, listens=True)
        if call.mode == "conversation":
            return _xml_reply(self._listen(call, None, call.pending_turn_token))
        return _xml_reply(notify_twiml(None, voice=self._voice(call), pause_seconds=pause))

    def rejected_reply(self, request) -> WebhookReply:
        return _xml_reply(reject_twiml())

    # --- commands -------------------------------------------------------------------------------
    def initiate_call(self, request: OutboundCallRequest) -> PlacedCall:
        """``POST Calls.json`` (fact sheet §3.1 "place call"): URL-driven TwiML, status callbacks."""
        url = with_query(request.webhook_url, **{Q_CALL_ID: request.call_id})
        status_callback = with_query(request.webhook_url, **{Q_CALL_ID: request.call_id, Q_TYPE: TYPE_STATUS})
        try:
            created = self.client.calls.create(
                to=request.to_number,
                from_=request.from_number,
                url=url,
                method="POST",
                status_callback=status_callback,
                status_callback_method="POST",
                status_callback_event=list(STATUS_CALLBACK_EVENTS),
                timeout=min(max(1, request.ring_timeout_seconds), MAX_RING_TIMEOUT_S),
            )
        except (TwilioException, requests.RequestException) as exc:
            raise self._error("create call", exc, ambiguous_timeout=True) from None
        status = "queued" if (created.status or "") == "queued" else "initiated"
        return PlacedCall(provider_call_id=created.sid, status=status)

    def hangup_call(self, call: CallSnapshot) -> None:
        if call.provider_call_id:
            self._complete(call.provider_call_id, "hang up")

    def reject_inbound(self, provider_call_id: str) -> None:
        self._complete(provider_call_id, "hang up rejected caller")

    def play_tts(self, call: CallSnapshot, text: str, *, listen_after: bool, turn_token: str | None) -> None:
        """Speak by replacing the live TwiML (fact sheet §3.1 "speak (no active stream)")."""
        sid = _require_sid(call)
        if listen_after:
            twiml = self._listen(call, text, turn_token)
        else:
            twiml = say_then_redirect_twiml(text, voice=self._voice(call), redirect_url=self._redirect_url(call))
        self._update_twiml(sid, twiml, "speak")

    def start_listening(self, call: CallSnapshot, *, turn_token: str | None) -> None:
        self._update_twiml(_require_sid(call), self._listen(call, None, turn_token), "listen")

    def stop_listening(self, call: CallSnapshot) -> None:
        return None  # a <Gather> ends by itself; the next reply decides what follows

    def send_dtmf(self, call: CallSnapshot, digits: str) -> None:
        self._update_twiml(_require_sid(call), dtmf_twiml(digits, redirect_url=self._redirect_url(call)), "DTMF")

    def get_call_status(self, provider_call_id: str) -> ProviderCallStatus:
        """``GET Calls/{sid}.json`` for the reaper / restore (fact sheet §2.7): 404 is terminal,
        other failures are "unknown" (the call is kept and left to its timers)."""
        try:
            fetched = self.client.calls(provider_call_id).fetch()
        except (TwilioException, requests.RequestException) as exc:
            if self._is_not_found(exc):
                return ProviderCallStatus(status="not-found", is_terminal=True, end_reason="completed")
            logger.warning("twilio status of %s unknown: %s", provider_call_id, self._error("fetch call", exc))
            return ProviderCallStatus(status="unknown", is_terminal=False, is_unknown=True)
        status = (fetched.status or "").lower() or "unknown"
        if status in END_REASONS:
            return ProviderCallStatus(status=status, is_terminal=True, end_reason=END_REASONS[status])
        return ProviderCallStatus(status=status, is_terminal=False, is_unknown=status == "unknown")


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def _nonce() -> str:
    return secrets.token_hex(6)


def _xml_reply(body: str, *, spoken: str | None = None, delivers: bool = False, listens: bool = False) -> WebhookReply:
    return WebhookReply(
        content_type=XML_CONTENT_TYPE,
        body=body,
        spoken_text=spoken,
        delivers_initial_message=delivers,
        listens=listens,
    )


def _require_sid(call: CallSnapshot) -> str:
    if not call.provider_call_id:
        raise ProviderError("Twilio call has no CallSid yet")
    return call.provider_call_id


def _params(request) -> dict[str, str]:
    """Voice request parameters: form-encoded (the default), or a JSON object (bodySHA256 variant)."""
    if has_form_body(request):
        return dict(request.form_params)
    try:
        document = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise WebhookParseError("Twilio webhook body is neither form data nor JSON") from exc
    if not isinstance(document, dict):
        raise WebhookParseError("Twilio webhook JSON body must be an object")
    return {str(k): "" if v is None else str(v) for k, v in document.items()}


def _confidence(value: str | None) -> float:
    try:
        confidence = float(value) if value not in (None, "") else DEFAULT_SPEECH_CONFIDENCE
    except ValueError:
        return DEFAULT_SPEECH_CONFIDENCE
    return confidence if 0.0 <= confidence <= 1.0 else DEFAULT_SPEECH_CONFIDENCE


def _timestamp(value: str | None):
    if not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None


# Parameters kept in the event ledger: what helps an operator, not caller geo data.
_LEDGER_PARAMS = (
    "CallSid", "AccountSid", "CallStatus", "Direction", "From", "To", "SpeechResult", "Confidence",
    "Digits", "SequenceNumber", "CallbackSource", "CallDuration", "SipResponseCode", "ParentCallSid",
)


def _safe_raw(params: dict[str, str]) -> dict[str, str]:
    return {k: params[k] for k in _LEDGER_PARAMS if k in params}

