"""The mock carrier: no network, driven by JSON events, with an optional scripted callee.

Reference: OpenClaw fact sheet §3.4. The webhook body is ``{"event": {...}}`` or
``{"events": [{...}, ...]}`` with camelCase NormalizedEvent fields (``type``, ``callId``,
``providerCallId``, ``transcript``, ``isFinal``, ``turnToken``, ``digits``, ``reason``, ...). Events
without ``type`` or without any call id are dropped; explicit falsy values (``isFinal: false``,
``durationMs: 0``) are kept.

The scripted callee (config ``mock``: ``autoAnswer``, ``answerAfterMs``, ``replyAfterMs``,
``replies``) plays the far end so ``voicecall call`` shows a whole call with no network: it answers
after ``answerAfterMs``, and each time the bot listens it replies with the next scripted line after
``replyAfterMs``; after the last line it hangs up. It talks to us the way a carrier does, by POSTing
events to our own webhook URL.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import uuid
from typing import Any

import requests

from providers.base import (
    CallSnapshot,
    EventType,
    NormalizedEvent,
    OutboundCallRequest,
    ParsedWebhook,
    PlacedCall,
    Provider,
    ProviderCallStatus,
    VerifyResult,
    WebhookParseError,
    WebhookReply,
)

logger = logging.getLogger(__name__)

TERMINAL_MARKERS = ("stale", "ended", "completed")
_FIELD_NAMES = {
    "callId": "call_id",
    "providerCallId": "provider_call_id",
    "previousProviderCallId": "previous_provider_call_id",
    "turnToken": "turn_token",
    "direction": "direction",
    "from": "from_number",
    "to": "to_number",
    "text": "text",
    "transcript": "transcript",
    "isFinal": "is_final",
    "confidence": "confidence",
    "durationMs": "duration_ms",
    "digits": "digits",
    "reason": "reason",
    "error": "error",
    "retryable": "retryable",
}


def _is_uuid(value: str | None) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


class MockProvider(Provider):
    name = "mock"
    supports_dtmf = True

    def __init__(self, settings):
        super().__init__(settings)
        self._timers: dict[str, list[threading.Timer]] = {}
        self._lock = threading.Lock()

    # --- webhooks -------------------------------------------------------------------------------
    def verify_webhook(self, request) -> VerifyResult:
        digest = hashlib.sha256(
            b"\n".join([request.method.encode(), (request.path + "?" + request.query_string).encode(), request.body])
        ).hexdigest()
        return VerifyResult(ok=True, request_key=f"mock:req:{digest}")

    def parse_webhook(self, request, request_key: str) -> ParsedWebhook:
        try:
            document = json.loads(request.body or b"{}")
        except (ValueError, UnicodeDecodeError) as exc:
            raise WebhookParseError("body is not JSON") from exc
        if not isinstance(document, dict):
            raise WebhookParseError("body must be a JSON object")
        raw_events = document.get("events")
        if raw_events is None:
            raw_events = [document["event"]] if "event" in document else []
        if not isinstance(raw_events, list):
            raise WebhookParseError("events must be a list")
        events = []
        for index, raw in enumerate(raw_events):
            event = self._event_from_json(raw, f"{request_key}:{index}")
            if event is not None:
                events.append(event)
        return ParsedWebhook(events=events, reply=WebhookReply(content_type="application/json", body='{"ok":true}'))

    @staticmethod
    def _event_from_json(raw: Any, fallback_key: str) -> NormalizedEvent | None:
        if not isinstance(raw, dict):
            return None
        try:
            event_type = EventType(raw.get("type"))
        except ValueError:
            return None
        if not (raw.get("callId") or raw.get("providerCallId")):
            return None
        fields: dict[str, Any] = {}
        for json_name, attr in _FIELD_NAMES.items():
            if json_name in raw and raw[json_name] is not None:
                fields[attr] = raw[json_name]
        for attr in ("call_id", "provider_call_id", "previous_provider_call_id", "turn_token", "text", "transcript",
                     "digits", "reason", "error", "direction", "from_number", "to_number"):
            if attr in fields:
                fields[attr] = str(fields[attr])
        if "is_final" in fields:
            fields["is_final"] = bool(fields["is_final"])
        # A call the mock carrier created (inbound) is known to us only by its carrier id: a callId
        # that is not one of our UUIDs is the carrier's id.
        if not fields.get("provider_call_id") and not _is_uuid(fields.get("call_id")):
            fields["provider_call_id"] = fields.get("call_id")
        event_id = raw.get("dedupeKey") or raw.get("id")
        dedupe_key = f"mock:{event_id}" if event_id else f"{fallback_key}"
        return NormalizedEvent(type=event_type, dedupe_key=dedupe_key, raw=raw, **fields)

    # --- commands -------------------------------------------------------------------------------
    def initiate_call(self, request: OutboundCallRequest) -> PlacedCall:
        provider_call_id = f"mock-{request.call_id}"
        callee = self.settings.mock
        if callee.auto_answer:
            self._schedule(
                request.call_id,
                callee.answer_after_ms / 1000,
                [
                    {"type": "call.ringing", "callId": request.call_id, "providerCallId": provider_call_id},
                    {"type": "call.answered", "callId": request.call_id, "providerCallId": provider_call_id},
                ],
            )
        return PlacedCall(provider_call_id=provider_call_id)

    def play_tts(self, call: CallSnapshot, text: str, *, listen_after: bool, turn_token: str | None) -> None:
        logger.info("mock call %s says: %s", call.call_id, text[:200])
        if listen_after:
            self.start_listening(call, turn_token=turn_token)

    def start_listening(self, call: CallSnapshot, *, turn_token: str | None) -> None:
        callee = self.settings.mock
        if not callee.auto_answer or call.direction != "outbound":
            return
        turn = int(call.metadata.get("userTurns", 0) or 0)  # how many lines the callee has said
        if turn >= len(callee.replies):
            event = {"type": "call.ended", "callId": call.call_id, "reason": "hangup-user"}
        else:
            event = {"type": "call.speech", "callId": call.call_id, "transcript": callee.replies[turn], "isFinal": True}
            if turn_token:
                event["turnToken"] = turn_token
        self._schedule(call.call_id, callee.reply_after_ms / 1000, [event])

    def hangup_call(self, call: CallSnapshot) -> None:
        with self._lock:
            for timer in self._timers.pop(call.call_id, []):
                timer.cancel()

    def send_dtmf(self, call: CallSnapshot, digits: str) -> None:
        logger.info("mock call %s sends DTMF %s", call.call_id, digits)

    def get_call_status(self, provider_call_id: str) -> ProviderCallStatus:
        if any(marker in provider_call_id for marker in TERMINAL_MARKERS):
            return ProviderCallStatus(status="completed", is_terminal=True, end_reason="completed")
        return ProviderCallStatus(status="in-progress", is_terminal=False)

    def reject_inbound(self, provider_call_id: str) -> None:
        logger.info("mock carrier hangs up rejected inbound call %s", provider_call_id)

    # --- the scripted callee --------------------------------------------------------------------
    def _schedule(self, call_id: str, delay_s: float, events: list[dict[str, Any]]) -> None:
        for event in events:
            event.setdefault("id", f"callee-{uuid.uuid4().hex}")
        timer = threading.Timer(delay_s, self._deliver, args=(call_id, events))
        timer.daemon = True
        with self._lock:
            self._timers.setdefault(call_id, []).append(timer)
        timer.start()

    def _deliver(self, call_id: str, events: list[dict[str, Any]]) -> None:
        url = self.settings.webhook_url
        try:
            response = requests.post(url, json={"events": events}, timeout=10)
            if response.status_code >= 400:
                logger.warning("mock callee event for %s refused: HTTP %s", call_id, response.status_code)
        except requests.RequestException as exc:
            logger.warning("mock callee could not reach %s: %s", url, exc)
