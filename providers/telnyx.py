"""Telnyx Call Control v2: REST commands, Ed25519 webhook verification and event mapping.

References: OpenClaw fact sheet §3.2 (operations and event mapping), §4.3 (signature checks), §4.4
(replay keys); protocols.md §5 (endpoints, webhook envelope, Ed25519 signatures) and §9 (vectors).

Wire shapes
-----------
* REST: ``{apiBaseUrl}/v2``, ``Authorization: Bearer <apiKey>``, JSON in and out. Commands answer
  ``{"data": {"result": "ok"}}``; errors are ``{"errors": [{"code", "title", "detail"}]}``.
* Webhooks: ``{"data": {"id", "event_type", "occurred_at", "payload": {...}}, "meta": {...}}``,
  signed with Ed25519 over ``f"{telnyx-timestamp}|{raw body}"``. Our reply is a plain ``OK``: Telnyx
  takes no commands in a webhook response.

Decisions (where the fact sheet is silent or we deliberately differ)
--------------------------------------------------------------------
* Every command carries a ``command_id``; Telnyx ignores a second command with the same id on the
  same call. Ids are deterministic where a retry must not act twice (dial, answer, hang-up, reject)
  and fresh per request for speech and transcription (each is a new utterance or turn). A command
  that fails with a timeout, a connection error or a 5xx is retried once with the same id.
* The event dedupe key is ``data.id``, so a redelivery of one event (new timestamp, new signature,
  hence a new request key) is still applied once. Events without an id fall back to the request key.
* ``call.speak.ended`` with ``status: call_hangup`` means the far end hung up mid-sentence: it yields
  no ``call.spoken`` (the ``call.hangup`` that follows ends the call with the carrier's cause), so
  we never send a hang-up or a transcription request into a dead call.
* Hang-up causes documented by Telnyx but absent from the OpenClaw table are mapped explicitly
  (``timeout`` → no-answer, ``time_limit`` → timeout, ``not_found`` → failed); unknown causes end
  the call ``completed`` with a warning, as upstream.
* The voice is the configured TTS voice only when it is one Telnyx understands (``male``/``female``
  or an engine-qualified name such as ``AWS.Polly.Joanna-Neural``); an OpenAI voice name like
  ``alloy`` falls back to ``female`` instead of failing every speak command.
* ``stop_listening`` is best effort: a failure is logged, never raised, because it runs after the
  caller's reply was already received.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote

import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

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
)
from providers.security import header
from providers.settings import configured_voice

logger = logging.getLogger(__name__)

# --- protocol tables -----------------------------------------------------------------------------

API_VERSION_PATH = "/v2"
SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"
PUBLIC_KEY_ENV = "TELNYX_PUBLIC_KEY"
# The official SDK rejects |now - timestamp| > 300 s; exactly 300 s passes (protocols §5).
TIMESTAMP_TOLERANCE_SECONDS = 300
ED25519_KEY_BYTES = 32
ED25519_SIGNATURE_BYTES = 64

# (connect, read) seconds for every REST request.
REQUEST_TIMEOUT = (5.0, 15.0)
# A command that timed out or got a 5xx is sent once more with the same command_id (idempotent).
COMMAND_ATTEMPTS = 2
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

# payload.direction → our direction.
DIRECTIONS: dict[str, str] = {
    "incoming": "inbound",
    "inbound": "inbound",
    "outgoing": "outbound",
    "outbound": "outbound",
}

# Verification failure reasons (logged by the webhook view; never contain key material).
REASON_NO_PUBLIC_KEY = (
    "Missing telnyx.publicKey: set telnyx.publicKey (or TELNYX_PUBLIC_KEY) to the public key from "
    "Telnyx Mission Control (Keys & Credentials > Public Key), or skipSignatureVerification for local development"
)
REASON_BAD_PUBLIC_KEY = (
    "telnyx.publicKey is not an Ed25519 public key (expected base64 of the raw 32-byte key, base64 DER "
    "SPKI, base64url or PEM)"
)
REASON_MISSING_HEADERS = f"missing {SIGNATURE_HEADER} or {TIMESTAMP_HEADER} header"
REASON_BAD_TIMESTAMP = f"{TIMESTAMP_HEADER} is not an integer number of seconds"
REASON_BAD_SIGNATURE_ENCODING = f"{SIGNATURE_HEADER} is not a base64 Ed25519 signature"
REASON_SIGNATURE_MISMATCH = "signature does not match"
REASON_TIMESTAMP_TOO_OLD = "Timestamp too old"
REASON_TIMESTAMP_IN_FUTURE = "Timestamp too far in the future"

_TIMESTAMP_RE = re.compile(r"^[0-9]{1,12}$")
_BASE64_CHARS_RE = re.compile(r"^[A-Za-z0-9+/_-]+={0,2}$")


# --- key and signature decoding ------------------------------------------------------------------


def _b64decode_any(text: str) -> bytes | None:
    """Decode standard base64 or base64url, padding optional; None when it is neither."""
    compact = "".join(text.split())
    if not compact or not _BASE64_CHARS_RE.match(compact):
        return None
    if any(c in compact for c in "+/") and any(c in compact for c in "-_"):
        return None  # one alphabet or the other, never a mix
    unpadded = compact.rstrip("=")
    padded = unpadded + "=" * (-len(unpadded) % 4)
    try:
        if "-" in padded or "_" in padded:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return None


def _raw_key_from_spki(der_or_pem: bytes, *, pem: bool) -> bytes | None:
    try:
        key = (
            serialization.load_pem_public_key(der_or_pem)
            if pem
            else serialization.load_der_public_key(der_or_pem)
        )
    except (ValueError, TypeError):
        return None
    if not isinstance(key, Ed25519PublicKey):
        return None
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_public_key(text: str) -> VerifyKey:
    """An Ed25519 verify key from any spelling of reference §4.3: base64 of the raw 32-byte key,
    base64 of a DER SubjectPublicKeyInfo, either in base64url, or a PEM block. Raises ValueError."""
    text = (text or "").strip()
    if not text:
        raise ValueError(REASON_NO_PUBLIC_KEY)
    if "-----BEGIN" in text:
        raw = _raw_key_from_spki(text.encode(), pem=True)
    else:
        decoded = _b64decode_any(text)
        if decoded is None:
            raw = None
        elif len(decoded) == ED25519_KEY_BYTES:
            raw = decoded
        else:
            raw = _raw_key_from_spki(decoded, pem=False)
    if raw is None or len(raw) != ED25519_KEY_BYTES:
        raise ValueError(REASON_BAD_PUBLIC_KEY)
    return VerifyKey(raw)


def decode_signature(value: str) -> bytes | None:
    """The 64 signature bytes of a base64 or base64url header value; None when malformed."""
    decoded = _b64decode_any(value or "")
    if decoded is None or len(decoded) != ED25519_SIGNATURE_BYTES:
        return None
    return decoded


def replay_key(timestamp: str, signature: bytes, body: bytes) -> str:
    """OC §4.4: ``telnyx:`` + sha256(timestamp \\n canonical base64 signature \\n raw body). The
    signature is re-encoded as standard base64 so its base64url spelling is the same replay."""
    canonical = base64.b64encode(signature).decode()
    material = f"{timestamp}\n{canonical}\n".encode() + body
    return "telnyx:" + hashlib.sha256(material).hexdigest()


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


class TelnyxProvider(Provider):
    """Telnyx Call Control v2 adapter. ``clock`` (seconds since the epoch) is injectable for tests."""

    name = "telnyx"
    required_signature_headers = ((SIGNATURE_HEADER, TIMESTAMP_HEADER),)
    uses_turn_tokens = False
    answers_inbound_by_rest = True
    speaks_initial_message_in_reply = False
    reports_playback_end = True
    supports_dtmf = False  # as upstream: outbound DTMF is Twilio/mock only (fact sheet §8.6)

    def __init__(self, settings, *, clock: Callable[[], float] = time.time):
        super().__init__(settings)
        self.clock = clock
        telnyx = settings.telnyx
        self.api_base = telnyx.api_base_url.rstrip("/") + API_VERSION_PATH
        self._api_key = telnyx.api_key or ""
        self._connection_id = telnyx.connection_id or ""
        self._verify_key: VerifyKey | None = None
        self._key_problem: str | None = None
        public_key = telnyx.public_key or os.environ.get(PUBLIC_KEY_ENV, "")
        if not public_key:
            self._key_problem = REASON_NO_PUBLIC_KEY
        else:
            try:
                self._verify_key = load_public_key(public_key)
            except ValueError as exc:
                self._key_problem = str(exc)
        if self._key_problem and not settings.skip_signature_verification:
            # Not fatal here (the CLI and status still work), but every webhook will be refused.
            logger.error("telnyx webhooks will be rejected: %s", self._key_problem)
        self._session = requests.Session()
        self._session.headers.update({"Accept": "application/json", "Content-Type": "application/json"})

    # --- webhooks -------------------------------------------------------------------------------
    def verify_webhook(self, request) -> VerifyResult:
        """Ed25519 over ``"{timestamp}|{raw body}"`` (protocols §5), then the ±300 s window.

        Order as upstream (fact sheet §4.3): key configured, headers present, timestamp an integer,
        signature valid, then freshness. Fails closed when the public key is missing or unusable.
        """
        if self._verify_key is None:
            return VerifyResult(ok=False, reason=self._key_problem or REASON_NO_PUBLIC_KEY)
        signature_text = header(request, SIGNATURE_HEADER)
        timestamp = (header(request, TIMESTAMP_HEADER) or "").strip()
        if not signature_text or not timestamp:
            return VerifyResult(ok=False, reason=REASON_MISSING_HEADERS)
        if not _TIMESTAMP_RE.match(timestamp):
            return VerifyResult(ok=False, reason=REASON_BAD_TIMESTAMP)
        signature = decode_signature(signature_text)
        if signature is None:
            return VerifyResult(ok=False, reason=REASON_BAD_SIGNATURE_ENCODING)
        try:
            self._verify_key.verify(timestamp.encode() + b"|" + request.body, signature)
        except BadSignatureError:
            return VerifyResult(ok=False, reason=REASON_SIGNATURE_MISMATCH)
        skew = self.clock() - int(timestamp)
        if skew > TIMESTAMP_TOLERANCE_SECONDS:
            return VerifyResult(ok=False, reason=REASON_TIMESTAMP_TOO_OLD)
        if skew < -TIMESTAMP_TOLERANCE_SECONDS:
            return VerifyResult(ok=False, reason=REASON_TIMESTAMP_IN_FUTURE)
        return VerifyResult(ok=True, request_key=replay_key(timestamp, signature, request.body))

    def parse_webhook(self, request, request_key: str) -> ParsedWebhook:
        """One Telnyx envelope → at most one event. No ``data.event_type`` or an event type we do
        not map → no events (still 200); a body that is not a JSON object → ``WebhookParseError``."""
        try:
            document = json.loads(request.body or b"")
        except (ValueError, UnicodeDecodeError) as exc:
            raise WebhookParseError("body is not JSON") from exc
        if not isinstance(document, dict):
            raise WebhookParseError("body must be a JSON object")
        reply = WebhookReply(content_type="text/plain", body="OK")
        data = document.get("data")
        if not isinstance(data, dict):
            return ParsedWebhook(events=[], reply=reply)
        event_type = data.get("event_type")
        if not isinstance(event_type, str) or not event_type:
            return ParsedWebhook(events=[], reply=reply)
        event = self._event_from_data(data, event_type, request_key)
        return ParsedWebhook(events=[event] if event else [], reply=reply)

    def _event_from_data(self, data: Mapping[str, Any], event_type: str, request_key: str) -> NormalizedEvent | None:
        kind = EVENT_TYPES.get(event_type)
        if kind is None:
            logger.debug("telnyx event %s ignored", event_type)
            return None
        payload = data.get("payload")
        payload = payload if isinstance(payload, dict) else {}
        provider_call_id = _text(payload.get("call_control_id"))
        call_id = decode_client_state(payload.get("client_state"))
        if not provider_call_id and not call_id:
            return None
        event_id = data.get("id")
        dedupe_key = f"telnyx:evt:{event_id}" if isinstance(event_id, str) and event_id else f"{request_key}:0"
        direction = payload.get("direction")
        fields: dict[str, Any] = {
            "type": kind,
            "dedupe_key": dedupe_key,
            "call_id": call_id,
            "provider_call_id": provider_call_id,
            "timestamp": _parse_time(data.get("occurred_at")),
            "direction": DIRECTIONS.get(direction.lower()) if isinstance(direction, str) else None,
            "from_number": _text(payload.get("from")),
            "to_number": _text(payload.get("to")),
            "raw": dict(data),
        }
        if kind == EventType.SPEECH:
            fields.update(self._transcription_fields(payload))
        elif kind == EventType.DTMF:
            fields["digits"] = _text(payload.get("digit")) or _text(payload.get("digits"))
        elif kind == EventType.ENDED:
            fields["reason"] = self._end_reason(payload.get("hangup_cause"))
        elif kind == EventType.SPOKEN and _text(payload.get("status")) in SPEAK_INTERRUPTED_STATUSES:
            return None  # (_text: a non-string status, e.g. a list, is unhashable: found by fuzzing)
        return NormalizedEvent(**fields)

    @staticmethod
    def _transcription_fields(payload: Mapping[str, Any]) -> dict[str, Any]:
        data = payload.get("transcription_data")
        data = data if isinstance(data, dict) else {}
        transcript = data.get("transcript")
        if not isinstance(transcript, str):
            legacy = payload.get("transcription")
            transcript = legacy if isinstance(legacy, str) else ""
        is_final = data.get("is_final", payload.get("is_final", True))
        confidence = data.get("confidence", payload.get("confidence"))
        return {
            "transcript": transcript,
            "is_final": is_final is not False,
            "confidence": float(confidence) if isinstance(confidence, int | float) else None,
        }

    @staticmethod
    def _end_reason(cause: Any) -> str:
        key = cause.strip().lower() if isinstance(cause, str) else ""
        reason = HANGUP_CAUSES.get(key)
        if reason is None:
            logger.warning("telnyx hangup cause %r not mapped; ending the call %s", key[:40], UNKNOWN_HANGUP_CAUSE_REASON)
            return UNKNOWN_HANGUP_CAUSE_REASON
        return reason

    # --- commands -------------------------------------------------------------------------------
    def initiate_call(self, request: OutboundCallRequest) -> PlacedCall:
        """``POST /calls``. The command_id is derived from our call id, so a retried dial after a
        lost response is not a second phone call."""
        if not self._connection_id:
            raise ProviderError("telnyx.connectionId is not configured")
        body = {
            "connection_id": self._connection_id,
            "to": request.to_number,
            "from": request.from_number,
            "webhook_url": request.webhook_url,
            "webhook_url_method": "POST",
            "client_state": encode_client_state(request.call_id),
            "timeout_secs": request.ring_timeout_seconds,
            "command_id": self._command_id("dial", request.call_id),
        }
        data = self._request("POST", "/calls", body)
        call_control_id = data.get("call_control_id") if isinstance(data, dict) else None
        if not isinstance(call_control_id, str) or not call_control_id:
            raise ProviderError("Telnyx dial response had no call_control_id")
        return PlacedCall(provider_call_id=call_control_id)

    def answer_call(self, call: CallSnapshot) -> None:
        """Answer an accepted inbound leg (sent on ``call.initiated``); the deterministic command_id
        makes a second answer of the same call a no-op at Telnyx."""
        self._action(
            call.provider_call_id,
            "answer",
            {
                "command_id": self._command_id("answer", call.call_id),
                "client_state": encode_client_state(call.call_id),
            },
        )

    def play_tts(self, call: CallSnapshot, text: str, *, listen_after: bool, turn_token: str | None) -> None:
        """``speak``. Only speaks: listening starts when ``call.speak.ended`` arrives (services call
        ``start_listening`` on ``call.spoken``), so the bot never transcribes itself."""
        voice, language = self._voice_and_language()
        self._action(
            call.provider_call_id,
            "speak",
            {"command_id": self._command_id("speak"), "payload": text, "voice": voice, "language": language},
        )

    def start_listening(self, call: CallSnapshot, *, turn_token: str | None) -> None:
        """``transcription_start``: Telnyx then posts ``call.transcription`` webhooks."""
        self._action(
            call.provider_call_id,
            "transcription_start",
            {"command_id": self._command_id("listen"), "language": self._transcription_language()},
        )

    def stop_listening(self, call: CallSnapshot) -> None:
        """``transcription_stop``, best effort (an ended or unknown call is already silent)."""
        if not call.provider_call_id:
            return
        try:
            self._action(
                call.provider_call_id,
                "transcription_stop",
                {"command_id": self._command_id("unlisten")},
                tolerate_ended=True,
            )
        except ProviderError as exc:
            logger.warning("telnyx transcription_stop for call %s failed: %s", call.call_id, exc)

    def hangup_call(self, call: CallSnapshot) -> None:
        """``hangup``. A call Telnyx no longer knows (404) or that already ended (422, code 90018)
        counts as hung up."""
        self._action(
            call.provider_call_id,
            "hangup",
            {"command_id": self._command_id("hangup", call.call_id)},
            tolerate_ended=True,
        )

    def reject_inbound(self, provider_call_id: str) -> None:
        """Hang up a parked inbound leg that policy rejected; it was never answered."""
        self._action(
            provider_call_id,
            "hangup",
            {"command_id": self._command_id("reject", provider_call_id)},
            tolerate_ended=True,
        )

    def get_call_status(self, provider_call_id: str) -> ProviderCallStatus:
        """``GET /calls/{id}``: ``data.is_alive`` decides (fact sheet §2.7); 404 is terminal; a
        missing flag or a failed request is "unknown" (the call is kept and left to its timers)."""
        try:
            data = self._request("GET", f"/calls/{self._path_id(provider_call_id)}", None, tolerate_not_found=True)
        except ProviderError as exc:
            logger.warning("telnyx status of %s unavailable: %s", provider_call_id, exc)
            return ProviderCallStatus(status="unknown", is_terminal=False, is_unknown=True)
        if data is None:
            return ProviderCallStatus(status="not-found", is_terminal=True, end_reason="completed")
        is_alive = data.get("is_alive") if isinstance(data, dict) else None
        state = data.get("state") if isinstance(data, dict) else None
        status = state.lower() if isinstance(state, str) and state else "unknown"
        if not isinstance(is_alive, bool):
            return ProviderCallStatus(status=status, is_terminal=False, is_unknown=True)
        if is_alive:
            return ProviderCallStatus(status=status, is_terminal=False)
        return ProviderCallStatus(status=status if state else "ended", is_terminal=True, end_reason="completed")

    # --- REST plumbing --------------------------------------------------------------------------
    @staticmethod
    def _command_id(kind: str, stable_id: str | None = None) -> str:
        return f"{COMMAND_ID_PREFIX}-{kind}-{stable_id or uuid.uuid4().hex}"

    @staticmethod
    def _path_id(call_control_id: str) -> str:
        # Telnyx ids look like "v3:AbC-123_x"; they go into the path as they are (":" is legal there).
        return quote(call_control_id, safe=":-_.~")

    def _voice_and_language(self) -> tuple[str, str]:
        tts = self.settings.effective_tts() or {}
        voice = configured_voice(tts, prefer=("telnyx",), accept=_telnyx_speaks) or DEFAULT_VOICE
        language = tts.get("locale") or tts.get("language")
        return voice, language if isinstance(language, str) and language else DEFAULT_SPEAK_LANGUAGE

    def _transcription_language(self) -> str:
        tts = self.settings.effective_tts() or {}
        language = tts.get("language") or tts.get("locale")
        if isinstance(language, str) and language:
            return language.split("-", 1)[0].lower()
        return DEFAULT_TRANSCRIPTION_LANGUAGE

    def _action(
        self, call_control_id: str | None, action: str, body: dict[str, Any], *, tolerate_ended: bool = False
    ) -> None:
        if not call_control_id:
            raise ProviderError(f"Telnyx {action}: the call has no call_control_id yet")
        path = f"/calls/{self._path_id(call_control_id)}/actions/{action}"
        self._request("POST", path, body, tolerate_not_found=tolerate_ended, tolerate_ended=tolerate_ended)

    def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        *,
        tolerate_not_found: bool = False,
        tolerate_ended: bool = False,
    ) -> dict[str, Any] | None:
        """One REST call; returns ``data`` (None for a tolerated 404/ended). Timeouts, connection
        errors and 5xx are retried once (same body, so the same command_id) and then raised as
        retryable ``ProviderError``s; other errors are not retryable. Messages never carry the key."""
        if not self._api_key:
            raise ProviderError("telnyx.apiKey is not configured")
        url = self.api_base + path
        last_error: ProviderError | None = None
        for _attempt in range(COMMAND_ATTEMPTS):
            try:
                response = self._session.request(
                    method,
                    url,
                    json=body,
                    headers={"Authorization": f"Bearer {self._api_key}"},
                    timeout=REQUEST_TIMEOUT,
                )
            except requests.Timeout:
                last_error = ProviderError(f"Telnyx API timeout: {method} {path}", retryable=True)
                continue
            except requests.RequestException as exc:
                last_error = ProviderError(
                    f"Telnyx API unreachable: {method} {path} ({type(exc).__name__})", retryable=True
                )
                continue
            status = response.status_code
            if 200 <= status < 300:
                return self._data_of(response)
            errors = self._errors_of(response)
            if status == 404 and tolerate_not_found:
                return None
            if tolerate_ended and status == 422 and self._says_call_ended(errors):
                return None
            message = self._scrub(f"Telnyx API error: {status} {self._describe(errors)}".strip())
            if status >= 500 or status == 429:
                last_error = ProviderError(message, retryable=True, status=status)
                if status == 429:
                    break  # rate limited: let the caller's backoff decide when to try again
                continue
            raise ProviderError(message, retryable=False, status=status)
        assert last_error is not None
        raise last_error

    @staticmethod
    def _data_of(response: requests.Response) -> dict[str, Any] | None:
        if not response.content:
            return {}
        try:
            document = response.json()
        except ValueError:
            return {}
        data = document.get("data") if isinstance(document, dict) else None
        return data if isinstance(data, dict) else {}

    @staticmethod
    def _errors_of(response: requests.Response) -> list[dict[str, Any]]:
        try:
            document = response.json()
        except ValueError:
            return []
        errors = document.get("errors") if isinstance(document, dict) else None
        return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []

    @staticmethod
    def _says_call_ended(errors: list[dict[str, Any]]) -> bool:
        for error in errors:
            if str(error.get("code", "")) in CALL_ENDED_ERROR_CODES:
                return True
            text = f"{error.get('title', '')} {error.get('detail', '')}".lower()
            if CALL_ENDED_TEXT in text:
                return True
        return False

    @staticmethod
    def _describe(errors: list[dict[str, Any]]) -> str:
        parts = []
        for error in errors[:3]:
            code = error.get("code")
            title = error.get("title") or error.get("detail") or ""
            parts.append(f"{code}: {title}" if code else str(title))
        return "; ".join(p for p in parts if p)[:300]

    def _scrub(self, message: str) -> str:
        return message.replace(self._api_key, "***") if self._api_key else message
