"""The Plivo adapter: REST commands, webhook verification, event mapping and Plivo XML replies.
The package docstring (``providers/plivo/__init__.py``) has the wire shapes and decisions."""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
import logging
import zlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import requests
from plivo import plivoxml

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
from providers.plivo.signatures import (
    V2_NONCE_HEADER,
    V2_SIGNATURE_HEADER,
    V3_NONCE_HEADER,
    V3_SIGNATURE_HEADER,
    url_without_query,
    verify_signature,
)
from providers.plivo.stream import stream_element
from providers.plivo.wire import (
    ACCOUNT_PATH,
    ANSWERED_STATUSES,
    BAD_TRANSFER_PAYLOAD,
    CALL_ID_PARAM,
    CALL_STATUS_END_REASONS,
    DEFAULT_LANGUAGE,
    DIRECTIONS,
    DTMF_TRANSLATION,
    FLOW_PARAM,
    HANGUP_SOURCE_END_REASONS,
    KEEPALIVE_WAIT_SECONDS,
    LEDGER_PARAMS,
    LISTEN_EXECUTION_TIMEOUT_SECONDS,
    MAX_TRANSFER_PAYLOAD_BYTES,
    MAX_TRANSFER_URL_CHARS,
    OUR_PARAMS,
    PROVIDER_PARAM,
    REQUEST_TIMEOUT,
    RINGING_STATUSES,
    SPEECH_CONFIDENCE_FIELD,
    SPEECH_FIELDS,
    START_APP_EVENT,
    STREAM_EVENTS,
    TIME_LIMIT_MARGIN_SECONDS,
    TRANSFER_KEY_LABEL,
    TRANSFER_PARAMS,
    TRANSFER_PAYLOAD_VERSION,
    TURN_TOKEN_PARAM,
    UNKNOWN_HANGUP_END_REASON,
    XML_CONTENT_TYPE,
    Flow,
    _b64url,
    _unb64url,
    _xml_text,
    dial_number,
    normalize_number,
)
from providers.security import (
    ForwardingTrust,
    WebhookRequest,
    has_form_body,
    header,
    url_port_variants,
    verification_url,
)

logger = logging.getLogger(__name__)


class PlivoProvider(Provider):
    name = "plivo"
    required_signature_headers = (
        (V3_SIGNATURE_HEADER, V3_NONCE_HEADER),
        (V2_SIGNATURE_HEADER, V2_NONCE_HEADER),
    )
    uses_turn_tokens = True  # the GetInput action URL carries the turn token (see module docstring)
    answers_inbound_by_rest = False  # Plivo answers when our answer XML runs
    speaks_initial_message_in_reply = True
    supports_dtmf = True
    reports_playback_end = False
    media_stream_offer = "reply"  # <Stream> in the answer XML (providers/plivo/stream.py)

    def __init__(self, settings):
        super().__init__(settings)
        plivo_cfg = settings.plivo
        if not plivo_cfg.auth_id or not plivo_cfg.auth_token:
            raise ValueError("plivo.authId and plivo.authToken are required for provider plivo")
        self._auth_token = plivo_cfg.auth_token
        self._api_base = plivo_cfg.api_base_url.rstrip("/") + ACCOUNT_PATH.format(
            auth_id=quote(plivo_cfg.auth_id, safe="")
        )
        self._transfer_key = hmac.new(self._auth_token.encode(), TRANSFER_KEY_LABEL, hashlib.sha256).digest()
        self._http = requests.Session()
        self._http.auth = (plivo_cfg.auth_id, plivo_cfg.auth_token)
        self._http.headers.update({"Accept": "application/json", "User-Agent": "voicecall-plivo"})

    # --- webhooks: verification -------------------------------------------------------------------
    def verify_webhook(self, request: WebhookRequest) -> VerifyResult:
        return verify_signature(
            request, self._auth_token, self._candidate_urls(request), allow_v2=self.settings.plivo.allow_v2_signatures
        )

    def _public_request_url(self, request: WebhookRequest) -> str:
        trust = ForwardingTrust.for_request(self.settings.webhook_trust, request.remote_addr)
        return verification_url(request, trust, self.settings.public_url)

    def _candidate_urls(self, request: WebhookRequest) -> list[str]:
        return url_port_variants(
            self._public_request_url(request), public_url=self.settings.public_url, host_header=header(request, "Host")
        )

    # --- webhooks: parsing and replies ------------------------------------------------------------
    def parse_webhook(self, request: WebhookRequest, request_key: str) -> ParsedWebhook:
        """Events from a Plivo callback; transfer flows answer from their signed payload and emit
        nothing (fact sheet §3.3). Raises ``WebhookParseError`` for bodies Plivo never sends."""
        params = self._body_params(request)
        query = dict(request.query_params)
        flow = self._flow(query)
        if flow in TRANSFER_PARAMS:
            payload = self._read_transfer_payload(query, flow)
            return ParsedWebhook(events=[], reply=self._transfer_reply(request, payload))
        if flow == Flow.KEEPALIVE:
            return ParsedWebhook(events=[], reply=self._xml(self._keep_alive(plivoxml.ResponseElement(), request,
                                                                             query.get(CALL_ID_PARAM))))
        return ParsedWebhook(events=self._events(params, query, request_key, flow))

    def render_reply(self, request: WebhookRequest, parsed: ParsedWebhook, call: CallSnapshot | None) -> WebhookReply:
        if parsed.reply is not None:
            return parsed.reply
        flow = self._flow(dict(request.query_params))
        if flow == Flow.ANSWER:
            return self._answer_reply(request, call)
        if flow == Flow.GETINPUT:
            call_id = call.call_id if call else dict(request.query_params).get(CALL_ID_PARAM)
            if call is not None and call.is_terminal:
                return self._xml(plivoxml.ResponseElement())
            return self._xml(self._keep_alive(plivoxml.ResponseElement(), request, call_id))
        return self._xml(plivoxml.ResponseElement())  # ring, hangup, unknown flows: nothing to run

    def rejected_reply(self, request: WebhookRequest) -> WebhookReply:
        """An inbound caller that policy rejected: ``<Response><Hangup/></Response>``."""
        return self._xml(plivoxml.ResponseElement().add(plivoxml.HangupElement()))

    @staticmethod
    def _flow(query: Mapping[str, str]) -> Flow | None:
        value = (query.get(FLOW_PARAM) or "").strip()
        if not value:
            return Flow.ANSWER  # an application's answer URL without our parameters (inbound)
        try:
            return Flow(value)
        except ValueError:
            return None

    @staticmethod
    def _body_params(request: WebhookRequest) -> dict[str, str]:
        if request.method.upper() != "POST" or not request.body:
            return {}
        if not has_form_body(request):
            raise WebhookParseError("Plivo callbacks are form-encoded")
        try:
            text = request.body.decode("utf-8")
            pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True) if text.strip() else []
        except (UnicodeDecodeError, ValueError) as exc:
            raise WebhookParseError("body is not a form") from exc
        params: dict[str, str] = {}
        for key, value in pairs:
            params.setdefault(key, value)
        return params

    def _events(self, params: Mapping[str, str], query: Mapping[str, str], request_key: str,
                flow: Flow | None) -> list[NormalizedEvent]:
        """Fact sheet §3.3 mapping. Order: ringing, answered, digits, speech, ended; a hang-up callback
        yields only ``call.ended``."""
        call_uuid = (params.get("CallUUID") or "").strip() or None
        request_uuid = (params.get("RequestUUID") or params.get("ALegRequestUUID") or "").strip() or None
        provider_call_id = call_uuid or request_uuid
        call_id = (query.get(CALL_ID_PARAM) or "").strip() or None
        if not provider_call_id and not call_id:
            return []
        common: dict[str, Any] = {
            "call_id": call_id,
            "provider_call_id": provider_call_id,
            "previous_provider_call_id": request_uuid if call_uuid and request_uuid != call_uuid else None,
            "direction": DIRECTIONS.get((params.get("Direction") or "").strip().lower()),
            "from_number": normalize_number(params.get("From")),
            "to_number": normalize_number(params.get("To")),
            "turn_token": (query.get(TURN_TOKEN_PARAM) or "").strip() or None,
            "raw": ledger_view(dict(params), LEDGER_PARAMS),
        }
        lifecycle_key = f"plivo:{provider_call_id or call_id}"
        status = (params.get("CallStatus") or "").strip().lower()
        events: list[NormalizedEvent] = []

        def add(kind: EventType, dedupe_key: str, **fields: Any) -> None:
            events.append(NormalizedEvent(type=kind, dedupe_key=dedupe_key, **common, **fields))

        if flow == Flow.STREAM:
            return self._stream_events(params, common, lifecycle_key)
        if flow == Flow.HANGUP:
            # The hang-up callback only ends the call (upstream: unknown statuses end it "failed").
            reason = CALL_STATUS_END_REASONS.get(status, UNKNOWN_HANGUP_END_REASON)
            if reason == "completed":
                source = (params.get("HangupSource") or "").strip().lower()
                reason = HANGUP_SOURCE_END_REASONS.get(source, reason)
            add(EventType.ENDED, f"{lifecycle_key}:{EventType.ENDED}", reason=reason)
            return events
        if status in RINGING_STATUSES:
            add(EventType.RINGING, f"{lifecycle_key}:{EventType.RINGING}")
        answered_by_app = (params.get("Event") or "").strip().lower() == START_APP_EVENT and call_uuid
        if status in ANSWERED_STATUSES or answered_by_app:
            add(EventType.ANSWERED, f"{lifecycle_key}:{EventType.ANSWERED}")
        digits = (params.get("Digits") or "").strip()
        if digits:
            add(EventType.DTMF, f"{request_key}:dtmf", digits=digits)
        transcript = next((params[f].strip() for f in SPEECH_FIELDS if (params.get(f) or "").strip()), None)
        if transcript:
            add(EventType.SPEECH, f"{request_key}:speech", transcript=transcript, is_final=True,
                confidence=self._confidence(params.get(SPEECH_CONFIDENCE_FIELD)))
        if status in CALL_STATUS_END_REASONS:
            add(EventType.ENDED, f"{lifecycle_key}:{EventType.ENDED}", reason=CALL_STATUS_END_REASONS[status])
        return events

    @staticmethod
    def _stream_events(params: Mapping[str, str], common: dict[str, Any], lifecycle_key: str) -> list[NormalizedEvent]:
        """The ``<Stream>`` status callback: started / stopped / dropped, for the ledger (a dropped
        stream that never played the greeting makes the call fall back to Plivo speech)."""
        what = STREAM_EVENTS.get((params.get("Event") or "").strip().lower())
        if what is None:
            return []
        kind = {"started": EventType.STREAM_STARTED, "stopped": EventType.STREAM_STOPPED,
                "failed": EventType.STREAM_FAILED}[what]
        stream_id = (params.get("StreamID") or params.get("StreamId") or "").strip()[:64]
        error = (params.get("Error") or params.get("Reason") or "").strip()[:300] or "Plivo dropped the stream"
        return [NormalizedEvent(type=kind, dedupe_key=f"{lifecycle_key}:stream:{stream_id}:{what}",
                                error=error if what == "failed" else None, **common)]

    @staticmethod
    def _confidence(value: str | None) -> float | None:
        try:
            return float(value) if value not in (None, "") else None
        except ValueError:
            return None

    def _answer_reply(self, request: WebhookRequest, call: CallSnapshot | None) -> WebhookReply:
        """The first XML of a call (fact sheet §3.3, §8.2). Notify: speak, wait, hang up. Conversation:
        speak the pending message inside ``<GetInput>`` and keep the call alive."""
        if call is None or call.is_terminal:
            return self._xml(plivoxml.ResponseElement().add(plivoxml.HangupElement()))
        response = plivoxml.ResponseElement()
        language = self._language(call)
        message = _xml_text(call.initial_message or "").strip() or None
        if call.mode != "conversation":
            if message:
                response.add(plivoxml.SpeakElement(message, language=language))
                delay = self.settings.notify_hangup_delay_sec
                if delay > 0:
                    response.add(plivoxml.WaitElement(length=delay))
            response.add(plivoxml.HangupElement())
            return self._xml(response, spoken_text=message, delivers_initial_message=bool(message))
        if call.stream_token:
            return self._xml(self._stream_reply(request, call))
        get_input = self._get_input(request, call.call_id, language, call.pending_turn_token)
        if message:
            get_input.add(plivoxml.SpeakElement(message, language=language))
        response.add(get_input)
        self._keep_alive(response, request, call.call_id)
        return self._xml(response, spoken_text=message, delivers_initial_message=bool(message), listens=True)

    def _stream_reply(self, request: WebhookRequest, call: CallSnapshot) -> plivoxml.ResponseElement:
        """A streamed conversation: ``<Stream>`` holds the call while our socket is open (the stream
        claims and speaks the greeting); should the socket drop, the keep-alive after it parks the
        call so the media layer's reconnect grace -- not the end of this document -- decides."""
        base = self._reply_base(request)
        url = credential_stream_url(self.settings, call.call_id, call.stream_token)
        response = plivoxml.ResponseElement()
        response.add(stream_element(url, self._callback_url(base, Flow.STREAM, call.call_id)))
        return self._keep_alive(response, request, call.call_id)

    def _transfer_reply(self, request: WebhookRequest, payload: dict[str, Any]) -> WebhookReply:
        """XML for ``xml-speak`` / ``xml-listen`` from the signed payload. The utterance was recorded
        when it was handed to Plivo (``services._speak_now``), so the reply claims no spoken text."""
        call_id, language = payload["c"], payload.get("l") or DEFAULT_LANGUAGE
        text = _xml_text(payload.get("s") or "").strip()
        response = plivoxml.ResponseElement()
        speak = plivoxml.SpeakElement(text, language=language) if text else None
        if payload.get("g"):
            get_input = self._get_input(request, call_id, language, payload.get("t"))
            if speak is not None:
                get_input.add(speak)
            response.add(get_input)
        elif speak is not None:
            response.add(speak)
        return self._xml(self._keep_alive(response, request, call_id))

    def _get_input(self, request: WebhookRequest, call_id: str, language: str,
                   turn_token: str | None) -> plivoxml.GetInputElement:
        extra = {TURN_TOKEN_PARAM: turn_token} if turn_token else {}
        action = self._callback_url(self._reply_base(request), Flow.GETINPUT, call_id, **extra)
        return plivoxml.GetInputElement(
            action=action, method="POST", input_type="speech",
            execution_timeout=LISTEN_EXECUTION_TIMEOUT_SECONDS, language=language, redirect=False,
        )

    def _keep_alive(self, response: plivoxml.ResponseElement, request: WebhookRequest,
                    call_id: str | None) -> plivoxml.ResponseElement:
        response.add(plivoxml.WaitElement(length=KEEPALIVE_WAIT_SECONDS))
        url = self._callback_url(self._reply_base(request), Flow.KEEPALIVE, call_id)
        response.add(plivoxml.RedirectElement(url, method="POST"))
        return response

    def _reply_base(self, request: WebhookRequest) -> str:
        """Callback base inside a reply: ``publicUrl``'s origin + this request's path, or the
        reconstructed URL (fact sheet §3.3 "Callback base URL")."""
        return url_without_query(self._public_request_url(request))

    @staticmethod
    def _language(call: CallSnapshot) -> str:
        language = (call.metadata or {}).get("language")
        return language if isinstance(language, str) and language.strip() else DEFAULT_LANGUAGE

    @staticmethod
    def _xml(response: plivoxml.ResponseElement, **speech: Any) -> WebhookReply:
        return WebhookReply(status=200, content_type=XML_CONTENT_TYPE, body=response.to_string(False), **speech)

    @staticmethod
    def _callback_url(base: str, flow: Flow, call_id: str | None, **extra: str) -> str:
        """``base`` with our parameters: ``provider=plivo&flow=…&callId=…`` (+ extra)."""
        parts = urlsplit(base)
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in OUR_PARAMS]
        query += [(PROVIDER_PARAM, "plivo"), (FLOW_PARAM, flow.value)]
        if call_id:
            query.append((CALL_ID_PARAM, call_id))
        query += [(k, v) for k, v in extra.items() if v]
        return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))

    # --- signed transfer payloads -----------------------------------------------------------------
    def _sign_transfer(self, body: str) -> str:
        mac = hmac.new(self._transfer_key, f"{TRANSFER_PAYLOAD_VERSION}.{body}".encode(), hashlib.sha256).digest()
        return _b64url(mac)

    def transfer_payload(self, payload: dict[str, Any]) -> str:
        """Encode and sign a transfer payload (``v1.<body>.<mac>``)."""
        raw = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        body = _b64url(zlib.compress(raw, 9))
        return f"{TRANSFER_PAYLOAD_VERSION}.{body}.{self._sign_transfer(body)}"

    def _read_transfer_payload(self, query: Mapping[str, str], flow: Flow) -> dict[str, Any]:
        value = query.get(TRANSFER_PARAMS[flow]) or ""
        version, _, rest = value.partition(".")
        body, _, mac = rest.partition(".")
        if version != TRANSFER_PAYLOAD_VERSION or not body or not mac:
            raise WebhookParseError(BAD_TRANSFER_PAYLOAD)
        try:
            offered = _unb64url(mac)
        except (binascii.Error, ValueError) as exc:
            raise WebhookParseError(BAD_TRANSFER_PAYLOAD) from exc
        if not hmac.compare_digest(_unb64url(self._sign_transfer(body)), offered):
            raise WebhookParseError(BAD_TRANSFER_PAYLOAD)
        try:
            inflater = zlib.decompressobj()
            raw = inflater.decompress(_unb64url(body), MAX_TRANSFER_PAYLOAD_BYTES)
            payload = json.loads(raw)
        except (binascii.Error, ValueError, zlib.error) as exc:
            raise WebhookParseError(BAD_TRANSFER_PAYLOAD) from exc
        if (
            not isinstance(payload, dict)
            or payload.get("f") != flow.value
            or not isinstance(payload.get("c"), str)
            or payload["c"] != query.get(CALL_ID_PARAM)
        ):
            raise WebhookParseError(BAD_TRANSFER_PAYLOAD)
        return payload

    def _transfer_url(self, call: CallSnapshot, flow: Flow, *, text: str | None, listen: bool,
                      turn_token: str | None) -> str:
        payload: dict[str, Any] = {"c": call.call_id, "f": flow.value, "l": self._language(call), "g": listen}
        if text:
            payload["s"] = text
        if turn_token:
            payload["t"] = turn_token
        url = self._callback_url(call.webhook_url, flow, call.call_id,
                                 **{TRANSFER_PARAMS[flow]: self.transfer_payload(payload)})
        if len(url) > MAX_TRANSFER_URL_CHARS:
            raise ProviderError(f"Plivo speak failed: text too long for an XML transfer URL ({len(text or '')} chars)")
        return url

    # --- REST ---------------------------------------------------------------------------------------
    def _request(self, operation: str, method: str, path: str, *, json_body: dict[str, Any] | None = None,
                 params: dict[str, str] | None = None, allow_not_found: bool = False,
                 creates: bool = False) -> dict[str, Any] | None:
        """One REST call. 5xx, 429, timeouts and connection errors are retryable ``ProviderError``s;
        404 is ``None`` when ``allow_not_found``. For a request that ``creates`` something (make
        call), a timeout or dropped connection after the request went out is ``ambiguous``, never
        retryable: Plivo may have dialed. Messages never carry the token or the URL."""
        try:
            response = self._http.request(method, self._api_base + path, json=json_body, params=params,
                                          timeout=REQUEST_TIMEOUT)
        except requests.RequestException as exc:
            ambiguous = creates and request_may_have_arrived(exc)
            what = "request timed out" if isinstance(exc, requests.Timeout) else "API unreachable"
            if ambiguous:
                what += " after the request was sent (it may have been carried out)"
            raise ProviderError(f"Plivo {operation} failed: {what}", retryable=True, ambiguous=ambiguous) from exc
        if response.status_code == 404 and allow_not_found:
            return None
        if response.status_code >= 400:
            retryable = response.status_code >= 500 or response.status_code == 429
            raise ProviderError(
                f"Plivo {operation} failed: HTTP {response.status_code} {self._error_detail(response)}".rstrip(),
                retryable=retryable, status=response.status_code,
            )
        if response.status_code == 204 or not response.content:
            return {}
        try:
            document = response.json()
        except ValueError:
            return {}
        return document if isinstance(document, dict) else {"items": document}

    def _error_detail(self, response: requests.Response) -> str:
        try:
            document = response.json()
        except ValueError:
            detail = response.text
        else:
            detail = document.get("error") if isinstance(document, dict) else document
            detail = detail if isinstance(detail, str) else json.dumps(detail)
        detail = " ".join(str(detail or "").split())[:200]
        return detail.replace(self._auth_token, "***") if self._auth_token else detail

    def initiate_call(self, request: OutboundCallRequest) -> PlacedCall:
        """``POST /Call/`` (fact sheet §3.3); the RequestUUID is the provisional carrier id."""
        base = request.webhook_url
        body = {
            "from": dial_number(request.from_number),
            "to": dial_number(request.to_number),
            "answer_url": self._callback_url(base, Flow.ANSWER, request.call_id),
            "answer_method": "POST",
            "ring_url": self._callback_url(base, Flow.RING, request.call_id),
            "ring_method": "POST",
            "hangup_url": self._callback_url(base, Flow.HANGUP, request.call_id),
            "hangup_method": "POST",
            "hangup_on_ring": request.ring_timeout_seconds,
            "ring_timeout": request.ring_timeout_seconds,
            "time_limit": self.settings.max_duration_seconds + TIME_LIMIT_MARGIN_SECONDS,
        }
        document = self._request("make call", "POST", "/Call/", json_body=body, creates=True) or {}
        request_uuid = document.get("request_uuid")
        if isinstance(request_uuid, list):
            request_uuid = request_uuid[0] if request_uuid else None
        if not isinstance(request_uuid, str) or not request_uuid:
            raise ProviderError("Plivo make call failed: no request_uuid in the response")
        return PlacedCall(provider_call_id=request_uuid)

    def hangup_call(self, call: CallSnapshot) -> None:
        """``DELETE /Call/{id}/``; when Plivo has no such call, the id is a RequestUUID (or the call is
        gone): ``DELETE /Request/{id}/``, 404 tolerated."""
        provider_call_id = call.provider_call_id
        if not provider_call_id:
            return
        if self._request("hang up", "DELETE", f"/Call/{quote(provider_call_id, safe='')}/",
                         allow_not_found=True) is None:
            self._request("cancel", "DELETE", f"/Request/{quote(provider_call_id, safe='')}/", allow_not_found=True)

    def reject_inbound(self, provider_call_id: str) -> None:
        self._request("hang up", "DELETE", f"/Call/{quote(provider_call_id, safe='')}/", allow_not_found=True)

    def _transfer(self, call: CallSnapshot, url: str, operation: str) -> None:
        if not call.provider_call_id:
            raise ProviderError(f"Plivo {operation} failed: the call has no CallUUID yet")
        body = {"legs": "aleg", "aleg_url": url, "aleg_method": "POST"}
        self._request(operation, "POST", f"/Call/{quote(call.provider_call_id, safe='')}/", json_body=body)

    def play_tts(self, call: CallSnapshot, text: str, *, listen_after: bool, turn_token: str | None) -> None:
        """Transfer the A-leg to ``flow=xml-speak`` carrying the text (and, to listen after, the turn)."""
        url = self._transfer_url(call, Flow.XML_SPEAK, text=text, listen=listen_after, turn_token=turn_token)
        self._transfer(call, url, "speak")

    def start_listening(self, call: CallSnapshot, *, turn_token: str | None) -> None:
        """Transfer the A-leg to ``flow=xml-listen`` (a ``<GetInput>`` carrying the turn token)."""
        url = self._transfer_url(call, Flow.XML_LISTEN, text=None, listen=True, turn_token=turn_token)
        self._transfer(call, url, "listen")

    def stop_listening(self, call: CallSnapshot) -> None:
        return None  # <GetInput> ends by itself

    def send_dtmf(self, call: CallSnapshot, digits: str) -> None:
        if not call.provider_call_id:
            raise ProviderError("Plivo DTMF failed: the call has no CallUUID yet")
        body = {"digits": digits.translate(DTMF_TRANSLATION), "leg": "aleg"}
        self._request("DTMF", "POST", f"/Call/{quote(call.provider_call_id, safe='')}/DTMF/", json_body=body)

    def get_call_status(self, provider_call_id: str) -> ProviderCallStatus:
        """Live call, else call detail record (ended), else queue; nowhere ⇒ terminal ``not-found``."""
        path = f"/Call/{quote(provider_call_id, safe='')}/"
        live = self._request("status", "GET", path, params={"status": "live"}, allow_not_found=True)
        if live is not None:
            return ProviderCallStatus(status=str(live.get("call_status") or "in-progress").strip().lower(),
                                      is_terminal=False)
        record = self._request("status", "GET", path, allow_not_found=True)
        if record is not None:
            status = str(record.get("call_status") or record.get("call_state") or "completed")
            status = status.strip().lower().replace("_", "-")
            return ProviderCallStatus(status=status, is_terminal=True,
                                      end_reason=CALL_STATUS_END_REASONS.get(status, "completed"))
        queued = self._request("status", "GET", path, params={"status": "queued"}, allow_not_found=True)
        if queued is not None:
            return ProviderCallStatus(status="queued", is_terminal=False)
        return ProviderCallStatus(status="not-found", is_terminal=True, end_reason="completed")
