"""The carrier webhook endpoint at ``serve.path`` (fact sheet §4.1 pipeline).

Order: POST only → signature headers present → per-IP in-flight cap → body size cap → signature
verification → replay check → parse → one transaction → answer. No outbound HTTP happens here:
carrier commands triggered by an event leave the domain after commit (``calls.services.effects``).

Under daphne the ASGI gate (``webhook_gate``) has done the cheap checks and hands the view the
request's per-client slot; the view repeats the checks as a second line (under another server, or
the test client) and takes a slot itself only when none was handed on. It releases the slot as soon
as the signature verifies (``calls.interfaces.limits``).
"""

from __future__ import annotations

import dataclasses
import logging

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from calls import metrics, services
from calls.config import get_config
from calls.interfaces.limits import (
    GATE_SLOT_KEY,
    MAX_BODY_BYTES,
    SLOT_WAIT_S,
    VERIFIED_IN_FLIGHT,
    VERIFIED_LIMIT,
    VERIFIED_WAIT_S,
    Slot,
    webhook_limiter,
)
from providers.base import WebhookParseError
from providers.security import (
    ForwardingTrust,
    WebhookRequest,
    header,
    redact_url,
    skip_mode_replay_key,
    stream_client_ip,
)

logger = logging.getLogger(__name__)



def _wire_path(request: HttpRequest) -> str:
    """The path as sent on the wire (ASGI ``raw_path``, still percent-encoded): the URL a carrier
    signed. ``request.path`` is decoded, so it is only the fallback (WSGI / the test client)."""
    scope = getattr(request, "scope", None)
    raw = scope.get("raw_path") if isinstance(scope, dict) else None
    return raw.decode("latin-1") if raw else request.path


def webhook_request_from(request: HttpRequest, body: bytes = b"") -> WebhookRequest:
    return WebhookRequest(
        method=request.method or "",
        path=_wire_path(request),
        query_string=request.META.get("QUERY_STRING", ""),
        headers={k: v for k, v in request.headers.items()},
        body=body,
        remote_addr=request.META.get("REMOTE_ADDR") or None,
        scheme=request.scheme or "http",
        host=request.META.get("HTTP_HOST"),
    )


def _plain(status: int, text: str) -> HttpResponse:
    return HttpResponse(text, status=status, content_type="text/plain")


@csrf_exempt
def carrier_webhook(request: HttpRequest) -> HttpResponse:
    config = get_config()
    provider = services.carrier(config)
    if request.method != "POST":
        return _plain(405, "Method Not Allowed")
    head = webhook_request_from(request)
    if not config.skip_signature_verification and provider.required_signature_headers:
        if not any(all(header(head, name) for name in names) for names in provider.required_signature_headers):
            logger.warning("%s webhook rejected: signature headers missing", provider.name)
            return _plain(401, "Unauthorized")
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return _plain(400, "Bad Request")
    if declared > MAX_BODY_BYTES:
        return _plain(413, "Payload Too Large")
    # Keyed like the ASGI gate: the client IP under the trusted-proxy rules, so clients behind one
    # trusted proxy do not share a single bucket.
    trust = ForwardingTrust.for_request(config.provider_settings.webhook_trust, head.remote_addr)
    remote = stream_client_ip(head.remote_addr, head.headers, trust)
    scope = getattr(request, "scope", None)
    slot = scope.get(GATE_SLOT_KEY) if isinstance(scope, dict) else None
    if not isinstance(slot, Slot):  # not behind the ASGI gate (the test client, WSGI): take one here
        limiter = webhook_limiter(config.webhook_security.max_in_flight_per_ip)
        if not limiter.acquire_waiting(remote, SLOT_WAIT_S):
            return _plain(429, "Too Many Requests")
        slot = Slot(limiter, remote)
    try:
        body = request.body
        if len(body) > MAX_BODY_BYTES:
            return _plain(413, "Payload Too Large")
        wr = dataclasses.replace(head, body=body)
        equivalent_keys: tuple[str, ...] = ()
        if config.skip_signature_verification:
            request_key = skip_mode_replay_key(provider.name, wr.method, wr.path + "?" + wr.query_string, body)
        else:
            verdict = provider.verify_webhook(wr)
            if not verdict.ok or not verdict.request_key:
                logger.warning(
                    "%s webhook rejected (%s): %s",
                    provider.name,
                    redact_url(wr.path + ("?" + wr.query_string if wr.query_string else "")),
                    verdict.reason or "no request key",
                )
                metrics.WEBHOOKS.labels(provider.name, "rejected_signature").inc()
                return _plain(401, "Unauthorized")
            request_key, equivalent_keys = verdict.request_key, verdict.equivalent_keys
        # Verified (or exempt): the client's slot is for unverified requests only. A carrier's burst
        # from one address is never refused for it; verified work queues for the process instead.
        slot.release()
        if not VERIFIED_LIMIT.acquire(timeout=VERIFIED_WAIT_S):
            logger.warning("%s webhook refused with 503: %d verified requests in process", provider.name,
                           VERIFIED_IN_FLIGHT)
            metrics.WEBHOOKS.labels(provider.name, "unavailable").inc()
            return _plain(503, "Service Unavailable")
        try:
            result = services.process_webhook(provider, wr, request_key, equivalent_keys=equivalent_keys)
        except WebhookParseError as exc:
            logger.warning("%s webhook body rejected: %s", provider.name, exc)
            metrics.WEBHOOKS.labels(provider.name, "rejected_body").inc()
            return _plain(400, "Bad Request")
        finally:
            VERIFIED_LIMIT.release()
        if result.replay:
            logger.info("%s webhook replay acknowledged without side effects", provider.name)
        metrics.WEBHOOKS.labels(provider.name, "replay" if result.replay else "accepted").inc()
        reply = result.reply
        return HttpResponse(reply.body, status=reply.status, content_type=reply.content_type)
    finally:
        slot.release()
