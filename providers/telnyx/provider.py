"""The Telnyx adapter: Call Control v2 REST commands, verified webhooks, event mapping. The package
docstring (``providers/telnyx/__init__.py``) has the wire facts and decisions."""


import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlencode

import requests
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
    ledger_view,
    request_may_have_arrived,
)
from providers.media_stream import credential_stream_url
from providers.settings import configured_voice
from providers.telnyx.signatures import (
    PUBLIC_KEY_ENV,
    REASON_NO_PUBLIC_KEY,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    load_public_key,
    verify_signature,
)
from providers.telnyx.stream import stream_request_fields
from providers.telnyx.wire import (
    ACTIVE_CALLS_MAX_PAGES,
    ACTIVE_CALLS_PAGE_SIZE,
    API_VERSION_PATH,
    CALL_ENDED_ERROR_CODES,
    CALL_ENDED_TEXT,
    COMMAND_ATTEMPTS,
    COMMAND_ID_PREFIX,
    DEFAULT_SPEAK_LANGUAGE,
    DEFAULT_TRANSCRIPTION_LANGUAGE,
    DEFAULT_VOICE,
    DIRECTIONS,
    DTMF_DURATION_MS,
    EVENT_TYPES,
    HANGUP_CAUSES,
    LEDGER_ENVELOPE,
    LEDGER_PAYLOAD,
    REQUEST_TIMEOUT,
    SPEAK_INTERRUPTED_STATUSES,
    UNKNOWN_HANGUP_CAUSE_REASON,
    _parse_time,
    _telnyx_speaks,
    _text,
    decode_client_state,
    encode_client_state,
    telnyx_dtmf,
)

logger = logging.getLogger(__name__)


class TelnyxProvider(Provider):
    """Telnyx Call Control v2 adapter. ``clock`` (seconds since the epoch) is injectable for tests."""

    name = "telnyx"
    required_signature_headers = ((SIGNATURE_HEADER, TIMESTAMP_HEADER),)
    uses_turn_tokens = False
    answers_inbound_by_rest = True
    speaks_initial_message_in_reply = False
    reports_playback_end = True
    supports_dtmf = True  # beyond upstream (fact sheet §8.6: Twilio/mock only): actions/send_dtmf
    media_stream_offer = "request"  # stream_url on the dial and on the inbound answer (telnyx/stream.py)

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
        """Ed25519 over ``"{timestamp}|{raw body}"`` (protocols §5), then the ±300 s window."""
        return verify_signature(self._verify_key, self._key_problem, request, self.clock())

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
            "raw": {**ledger_view(data, LEDGER_ENVELOPE), "payload": ledger_view(payload, LEDGER_PAYLOAD)},
        }
        if kind == EventType.SPEECH:
            fields.update(self._transcription_fields(payload))
        elif kind == EventType.DTMF:
            fields["digits"] = _text(payload.get("digit")) or _text(payload.get("digits"))
        elif kind == EventType.ENDED:
            fields["reason"] = self._end_reason(payload.get("hangup_cause"))
        elif kind == EventType.STREAM_FAILED:
            fields["error"] = (_text(payload.get("failure_reason")) or "streaming.failed")[:300]
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
        if request.stream_token:
            body.update(self._stream_fields(request.call_id, request.stream_token))
        data = self._request("POST", "/calls", body, creates=True)
        call_control_id = data.get("call_control_id") if isinstance(data, dict) else None
        if not isinstance(call_control_id, str) or not call_control_id:
            raise ProviderError("Telnyx dial response had no call_control_id")
        return PlacedCall(provider_call_id=call_control_id)

    def answer_call(self, call: CallSnapshot) -> None:
        """Answer an accepted inbound leg (sent on ``call.initiated``); the deterministic command_id
        makes a second answer of the same call a no-op at Telnyx. A streamed call's answer also
        connects it to our media stream."""
        body = {
            "command_id": self._command_id("answer", call.call_id),
            "client_state": encode_client_state(call.call_id),
        }
        if call.stream_token:
            body.update(self._stream_fields(call.call_id, call.stream_token))
        self._action(call.provider_call_id, "answer", body)

    def _stream_fields(self, call_id: str, token: str) -> dict[str, str]:
        return stream_request_fields(credential_stream_url(self.settings, call_id, token))

    def send_dtmf(self, call: CallSnapshot, digits: str) -> None:
        """``send_dtmf`` (Call Control v2): Telnyx plays the digits into the call. Our pause
        characters (``w``, ``p``, ``,``) become Telnyx's ``w`` (0.5 s); ``W`` stays (1 s)."""
        self._action(
            call.provider_call_id,
            "send_dtmf",
            {"command_id": self._command_id("dtmf"), "digits": telnyx_dtmf(digits),
             "duration_millis": DTMF_DURATION_MS},
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

    def find_placed_call(self, call_id: str) -> str | None:
        """Our call among the connection's active calls: ``GET /connections/{id}/active_calls``
        (Telnyx "List all active calls for given connection"; ``page[number]``/``page[size]``, the
        ``meta.total_pages`` the official SDK pages by). Each entry carries the ``client_state`` we
        dialed with, i.e. our call id, so the match is exact. A call that has already ended is no
        longer listed: then its callbacks (``call.hangup``) are all there is."""
        if not self._connection_id:
            return None
        path = f"/connections/{quote(self._connection_id, safe='')}/active_calls"
        for page in range(1, ACTIVE_CALLS_MAX_PAGES + 1):
            query = urlencode({"page[number]": page, "page[size]": ACTIVE_CALLS_PAGE_SIZE})
            document = self._request("GET", f"{path}?{query}", None, tolerate_not_found=True, whole=True)
            entries = document.get("data") if isinstance(document, dict) else None
            if not isinstance(entries, list) or not entries:
                return None
            for entry in entries:
                if not isinstance(entry, dict) or decode_client_state(entry.get("client_state")) != call_id:
                    continue
                call_control_id = entry.get("call_control_id")
                if isinstance(call_control_id, str) and call_control_id:
                    return call_control_id
            meta = document.get("meta") if isinstance(document.get("meta"), dict) else {}
            total_pages = meta.get("total_pages")
            if not isinstance(total_pages, int) or page >= total_pages:
                return None
        logger.warning("telnyx: more than %s pages of active calls; call %s not found in them",
                       ACTIVE_CALLS_MAX_PAGES, call_id)
        return None

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
        creates: bool = False,
        whole: bool = False,
    ) -> dict[str, Any] | None:
        """One REST call; returns ``data`` (the whole document when ``whole``: lists and their
        ``meta``; None for a tolerated 404/ended). Timeouts, connection
        errors and 5xx are retried once (same body, so the same command_id) and then raised as
        retryable ``ProviderError``s; other errors are not retryable. A request that ``creates``
        something (the dial) is never re-sent after it may have arrived (a read timeout, a connection
        dropped after sending): Telnyx may have dialed, so that is an ``ambiguous`` error at once.
        Messages never carry the key."""
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
            except requests.RequestException as exc:
                if isinstance(exc, requests.Timeout):
                    message = f"Telnyx API timeout: {method} {path}"
                else:
                    message = f"Telnyx API unreachable: {method} {path} ({type(exc).__name__})"
                if creates and request_may_have_arrived(exc):
                    raise ProviderError(message + " after the request was sent (it may have been carried out)",
                                        ambiguous=True) from exc
                last_error = ProviderError(message, retryable=True)
                continue
            status = response.status_code
            if 200 <= status < 300:
                return self._document_of(response) if whole else self._data_of(response)
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
    def _document_of(response: requests.Response) -> dict[str, Any]:
        if not response.content:
            return {}
        try:
            document = response.json()
        except ValueError:
            return {}
        return document if isinstance(document, dict) else {}

    @classmethod
    def _data_of(cls, response: requests.Response) -> dict[str, Any]:
        data = cls._document_of(response).get("data")
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
