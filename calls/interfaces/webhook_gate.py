"""Pre-auth gate for the carrier webhook (fact sheet §4.1 steps 2-6), in front of Django.

Only requests for ``serve.path`` are guarded; every other path passes through untouched. In order:

1. path: exactly ``serve.path`` (a trailing ``/`` is tolerated); anything that merely starts with it
   (``/voice/webhook-evil``, ``/voice/webhook/x``) is ``404`` so no prefix variant reaches a route
   (``streaming.streamPath`` and WebSocket upgrades excepted: the media stream has its own rules);
2. method: POST only, else ``405``;
3. signature headers (``provider.required_signature_headers``) present, else ``401`` — decided from
   the headers alone, before the body is read (skipped with ``skipSignatureVerification``);
4. a declared ``Content-Length`` over 64 KB is ``413`` at once;
5. per-client in-flight cap (``webhookSecurity.maxInFlightPerIp``, 8), keyed by the client IP
   resolved with the trusted-proxy rules (``providers.security.stream_client_ip``): the slot is taken
   when the headers have arrived, held through the body and the signature check and released by the
   view once the signature verifies (``calls.interfaces.limits``); over the cap a request waits
   briefly for a slot, then ``429``;
6. the body is read with a 64 KB cap (``413`` as soon as it is exceeded, nothing more buffered) and
   a 5 s deadline (``408``), then handed to the webhook view (``direct_view``: without Django's
   middleware stack, which does nothing for it and costs a dozen thread hand-offs under ASGI).

The Django view repeats the cheap checks as a second line (``calls.interfaces.webhooks``).

Daphne note: Twisted (under daphne) buffers a whole request body before the ASGI application is
even called, so an ASGI middleware alone cannot refuse a request before its body arrives nor time
out a stalled body. ``install_daphne_early_gate`` therefore applies steps 1-4 and 6 at the Twisted
level as well (a subclass of daphne's request class, installed through ``voicecall_site.compat``
when the ASGI module is loaded by daphne). Step 5 runs in the ASGI gate, which holds the slot until the response is sent. Under an ASGI
server that streams bodies (uvicorn, hypercorn) the ASGI gate alone does all six steps.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from calls import metrics
from calls.config import ConfigError, VoiceCallConfig, get_config
from calls.interfaces.limits import (
    GATE_SLOT_KEY,
    MAX_BODY_BYTES,
    SLOT_WAIT_S,
    InFlightLimiter,
    Slot,
    drop_connection_slot,
    hold_for_connection,
    take_connection_slot,
    webhook_limiter,
)
from providers import provider_class
from providers.security import ForwardingTrust, header, stream_client_ip
from voicecall_site import compat

logger = logging.getLogger(__name__)

BODY_READ_TIMEOUT_S = 5.0
SLOT_POLL_S = 0.01  # how often a request over the per-client cap looks for a free slot
# After a refusal at the Twisted level the rest of the upload is read and discarded (never buffered)
# for at most this long, so the client gets to read the response instead of a connection reset.
REJECT_DRAIN_S = 2.0

STATUS_TEXT: dict[int, str] = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Payload Too Large",
    429: "Too Many Requests",
}



@dataclass(frozen=True)
class HeadVerdict:
    """What the request line and headers alone decide: not ours, refused (``status``), or go on."""

    guarded: bool
    status: int | None = None
    reason: str = ""
    canonical_path: str | None = None  # serve.path, when the request spelled it with a trailing "/"


def check_head(
    *, method: str, path: str, headers: Mapping[str, str], content_length: int | None, config: VoiceCallConfig
) -> HeadVerdict:
    """Steps 1-4 of the module docstring. ``path`` is the decoded request path without the query."""
    webhook = config.serve.path.rstrip("/") or "/"
    candidate = path.rstrip("/") or "/"
    if candidate != webhook:
        if webhook != "/" and path.startswith(webhook) and candidate != config.streaming.stream_path.rstrip("/"):
            return HeadVerdict(True, 404, "path is not exactly serve.path")
        return HeadVerdict(False)
    canonical = config.serve.path if path != config.serve.path else None
    if method.upper() != "POST":
        return HeadVerdict(True, 405, "method not allowed", canonical)
    if not config.skip_signature_verification:
        required = provider_class(config.provider).required_signature_headers
        if required and not any(all(header(headers, name) for name in names) for names in required):
            return HeadVerdict(True, 401, "signature headers missing", canonical)
    if content_length is not None and content_length > MAX_BODY_BYTES:
        return HeadVerdict(True, 413, "declared body over 64 KB", canonical)
    return HeadVerdict(True, None, "", canonical)


def _parse_length(value: str | None) -> int | None:
    """Content-Length as an int; -1 for a malformed value (refused with 400)."""
    if value is None or value.strip() == "":
        return None
    value = value.strip()
    return int(value) if value.isdigit() else -1


def _current_config() -> VoiceCallConfig | None:
    try:
        return get_config()
    except ConfigError:
        return None  # a broken config is reported by Django/`voicecall setup`, not here


# --------------------------------------------------------------------------------------------------
# The ASGI middleware
# --------------------------------------------------------------------------------------------------


class _BodyTooLarge(Exception):
    pass


class _BodyTimeout(Exception):
    pass


class _ClientGone(Exception):
    pass


async def _read_body(receive, *, limit: int, timeout: float) -> bytes:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    chunks: list[bytes] = []
    size = 0
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise _BodyTimeout
        try:
            message = await asyncio.wait_for(receive(), remaining)
        except TimeoutError:
            raise _BodyTimeout from None
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"") or b""
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _respond(send, status: int) -> None:
    body = STATUS_TEXT.get(status, "Error").encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _scope_headers(scope: Mapping[str, Any]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers") or ():
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    return headers


class WebhookGate:
    """ASGI middleware around the HTTP application: steps 1-6 for ``serve.path`` (module docstring)."""

    def __init__(self, app, *, limiter: InFlightLimiter | None = None, webhook_view=None) -> None:
        self.app = app
        self.limiter = limiter  # None: the process's limiter, capped by the config in force
        # Serves a request that passed the gate, from its scope and body (``direct_view.DirectView``:
        # the webhook without Django's middleware stack); None: ``app`` serves it.
        self.webhook_view = webhook_view

    async def __call__(self, scope, receive, send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        config = _current_config()
        if config is None:
            await self.app(scope, receive, send)
            return
        headers = _scope_headers(scope)
        length = _parse_length(headers.get("content-length"))
        verdict = check_head(
            method=scope.get("method", ""), path=scope.get("path", ""), headers=headers,
            content_length=length, config=config,
        )
        if not verdict.guarded:
            await self.app(scope, receive, send)
            return
        if verdict.status is None and length == -1:
            verdict = HeadVerdict(True, 400, "malformed Content-Length")
        if verdict.status is not None:
            _log_refusal(verdict.status, verdict.reason, config)
            await _respond(send, verdict.status)
            return

        # Under daphne the Twisted request took the slot when the headers arrived; else take it now.
        slot = take_connection_slot(scope.get("client"))
        if slot is None:
            remote = (scope.get("client") or (None,))[0]
            client_ip = stream_client_ip(
                remote, headers, ForwardingTrust.for_request(config.provider_settings.webhook_trust, remote)
            )
            limiter = self.limiter or webhook_limiter(config.webhook_security.max_in_flight_per_ip)
            slot = await _wait_for_slot(limiter, client_ip)
            if slot is None:
                _log_refusal(429, f"more than {limiter.max_per_key} unverified requests in flight", config)
                await _respond(send, 429)
                return
        try:
            try:
                body = await _read_body(receive, limit=MAX_BODY_BYTES, timeout=BODY_READ_TIMEOUT_S)
            except _BodyTooLarge:
                _log_refusal(413, "body over 64 KB", config)
                await _respond(send, 413)
                return
            except _BodyTimeout:
                _log_refusal(408, "body not received within 5 s", config)
                await _respond(send, 408)
                return
            except _ClientGone:
                return
            scope = {**scope, GATE_SLOT_KEY: slot}
            if verdict.canonical_path:
                scope["path"] = verdict.canonical_path  # raw_path keeps what was signed
            if self.webhook_view is not None:
                await self.webhook_view(scope, body, send)
                return
            delivered = False

            async def replay_receive():
                nonlocal delivered
                if not delivered:
                    delivered = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay_receive, send)
        finally:
            slot.release()  # usually released already, by the view once the signature verified


async def _wait_for_slot(limiter: InFlightLimiter, client_ip: str) -> Slot | None:
    """A slot for ``client_ip``, waiting up to ``SLOT_WAIT_S`` for one to be released."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SLOT_WAIT_S
    while (slot := limiter.slot_for(client_ip)) is None:
        if loop.time() >= deadline:
            return None
        await asyncio.sleep(SLOT_POLL_S)
    return slot


def _log_refusal(status: int, reason: str, config: VoiceCallConfig | None) -> None:
    level = logging.WARNING if status in (401, 408, 413, 429) else logging.INFO
    provider = config.provider if config is not None else "carrier"
    logger.log(level, "%s webhook refused with %s: %s", provider, status, reason)
    metrics.WEBHOOKS.labels(provider, f"refused_{status}").inc()


# --------------------------------------------------------------------------------------------------
# The same gate one layer down, for daphne (Twisted buffers bodies before calling the ASGI app)
# --------------------------------------------------------------------------------------------------


def _discard(_data: bytes) -> None:
    return None


def _make_gated_request(base: type) -> type:
    from twisted.internet import reactor

    class GatedWebRequest(base):  # type: ignore[misc, valid-type]
        """daphne's request, refusing webhook requests from their head and capping/timing the body.

        Hooks are Twisted's ``Request.gotLength`` (called once the headers are parsed, before any
        body byte) and ``handleContentChunk``. A refused request never reaches daphne's ``process``.
        """

        _gate_config: VoiceCallConfig | None = None
        _gate_limit: int | None = None
        _gate_received = 0
        _gate_timer = None
        _gate_rejected = False
        _gate_slot: Slot | None = None
        _gate_wanted: tuple | None = None  # (limiter, client ip, connection, deadline) while waiting
        _gate_slot_timer = None
        _gate_received_args: tuple | None = None  # requestReceived, held until a slot is free

        def gotLength(self, length):
            verdict = self._gate_head(length)
            if verdict is not None and verdict.status is not None:
                self.content = io.BytesIO()
                self._gate_reject(verdict.status, verdict.reason)
                return
            if verdict is not None:
                self._gate_take_slot()
                if self._gate_rejected:
                    return
            if verdict is not None and length != 0:
                self._gate_limit = MAX_BODY_BYTES
                self._gate_timer = reactor.callLater(BODY_READ_TIMEOUT_S, self._gate_body_timeout)
            super().gotLength(length)

        def handleContentChunk(self, data):
            if self._gate_rejected:
                return
            if self._gate_limit is not None:
                self._gate_received += len(data)
                if self._gate_received > self._gate_limit:
                    self._gate_reject(413, "body over 64 KB")
                    return
            super().handleContentChunk(data)

        def requestReceived(self, command, path, version):
            self._gate_cancel_timer()
            if self._gate_rejected:
                return
            if self._gate_wanted is not None:  # over the per-client cap: wait for a slot first
                self._gate_received_args = (command, path, version)
                return
            super().requestReceived(command, path, version)

        def connectionLost(self, reason):
            self._gate_cancel_timer()
            self._gate_stop_waiting()
            self._gate_give_back()
            super().connectionLost(reason)

        # --- the per-client slot, from the headers on ------------------------------------------
        def _gate_take_slot(self) -> None:
            address = self.getClientAddress()
            host, port = str(getattr(address, "host", "") or ""), int(getattr(address, "port", 0) or 0)
            headers = {
                name.decode("latin-1"): b",".join(values).decode("latin-1")
                for name, values in self.requestHeaders.getAllRawHeaders()
            }
            config = self._gate_config
            trust = ForwardingTrust.for_request(config.provider_settings.webhook_trust, host or None)
            client_ip = stream_client_ip(host or None, headers, trust)
            limiter = webhook_limiter(config.webhook_security.max_in_flight_per_ip)
            slot = limiter.slot_for(client_ip)
            if slot is not None:
                self._gate_hold(slot, (host, port))
                return
            self._gate_wanted = (limiter, client_ip, (host, port), reactor.seconds() + SLOT_WAIT_S)
            self._gate_slot_timer = reactor.callLater(SLOT_POLL_S, self._gate_retry_slot)

        def _gate_hold(self, slot: Slot, connection: tuple[str, int]) -> None:
            self._gate_slot = slot
            hold_for_connection(connection, slot)

        def _gate_retry_slot(self) -> None:
            self._gate_slot_timer = None
            if self._gate_wanted is None or self._gate_rejected:
                return
            limiter, client_ip, connection, deadline = self._gate_wanted
            slot = limiter.slot_for(client_ip)
            if slot is None:
                if reactor.seconds() >= deadline:
                    self._gate_wanted = None
                    self._gate_reject(429, f"more than {limiter.max_per_key} unverified requests in flight")
                    return
                self._gate_slot_timer = reactor.callLater(SLOT_POLL_S, self._gate_retry_slot)
                return
            self._gate_wanted = None
            self._gate_hold(slot, connection)
            if self._gate_received_args is not None:  # the body is in: hand the request on now
                args, self._gate_received_args = self._gate_received_args, None
                base.requestReceived(self, *args)

        def _gate_stop_waiting(self) -> None:
            self._gate_wanted = None
            if self._gate_slot_timer is not None and self._gate_slot_timer.active():
                self._gate_slot_timer.cancel()
            self._gate_slot_timer = None

        def _gate_give_back(self) -> None:
            if self._gate_slot is not None:
                address = self.getClientAddress()
                drop_connection_slot((str(getattr(address, "host", "")), int(getattr(address, "port", 0) or 0)),
                                     self._gate_slot)

        # --- helpers ----------------------------------------------------------------------------
        def _gate_head(self, length: int | None) -> HeadVerdict | None:
            """The head verdict for a guarded request, None for any other (or when Twisted's
            request line is not where this version keeps it: the ASGI gate still checks)."""
            config = self._gate_config = _current_config()
            request_line = compat.twisted_request_line(self)
            if config is None or request_line is None:
                return None
            command, target = request_line
            if (self.requestHeaders.getRawHeaders(b"Upgrade") or [b""])[0].lower() == b"websocket":
                return None  # the media-stream socket has its own admission rules (calls.media.consumer)
            path = unquote(target.split(b"?", 1)[0].decode("latin-1"))
            headers = {
                name.decode("latin-1"): b",".join(values).decode("latin-1")
                for name, values in self.requestHeaders.getAllRawHeaders()
            }
            verdict = check_head(
                method=command.decode("latin-1"), path=path, headers=headers, content_length=length, config=config
            )
            return verdict if verdict.guarded else None

        def _gate_body_timeout(self) -> None:
            self._gate_timer = None
            if not self._gate_rejected:
                self._gate_reject(408, "body not received within 5 s")

        def _gate_cancel_timer(self) -> None:
            if self._gate_timer is not None and self._gate_timer.active():
                self._gate_timer.cancel()
            self._gate_timer = None

        def _gate_reject(self, status: int, reason: str) -> None:
            _log_refusal(status, reason, self._gate_config)
            self._gate_rejected = True
            self._gate_cancel_timer()
            self._gate_stop_waiting()
            self._gate_give_back()
            channel, transport = self.channel, self.channel.transport
            text = STATUS_TEXT.get(status, "Error").encode()
            transport.write(
                b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (status, text, len(text), text)
            )
            channel.dataReceived = _discard  # the rest of the upload is dropped, never buffered
            try:
                transport.loseWriteConnection()  # FIN after the response; keep draining input
            except AttributeError:
                transport.loseConnection()
            reactor.callLater(REJECT_DRAIN_S, _abort_if_open, transport)

    return GatedWebRequest


def _abort_if_open(transport) -> None:
    if getattr(transport, "connected", False):
        transport.abortConnection()


def install_daphne_early_gate() -> bool:
    """Use the gated request class in daphne's HTTP factory (``voicecall_site.compat``); only under
    daphne, idempotent. Returns whether the gate is active."""
    return compat.install_daphne_request_class(_make_gated_request)
