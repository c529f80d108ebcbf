"""The CLI's way into a running Voicecall server: JSON-RPC over ``http://{serve.bind}:{serve.port}/rpc``.

Live-call commands (call, start, continue, speak, dtmf, end) go through the server that owns the
call's live state — its mock callee, its in-memory channel layer, its media-stream sockets — instead
of acting from a short-lived CLI process (fact sheet §9.3, later builds; §14 "CLI/RPC should call
into the running service"). Only "nobody is listening" (connection refused, connect timeout, unknown
host) counts as unreachable and lets the CLI act directly; a server that answers with an error —
wrong token, bad params, a refused call — is a real failure and is never retried directly, so a
request is not carried out twice.
"""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3.exceptions

from calls.config import VoiceCallConfig
from calls.interfaces.rpc_auth import rpc_token

CONNECT_TIMEOUT_SECONDS = 2.0
DEFAULT_READ_TIMEOUT_SECONDS = 30.0
RING_GRACE_SECONDS = 15.0
CONTINUE_POLL_SECONDS = 0.5
METHOD_NOT_FOUND = -32601
WILDCARD_BINDS = {"0.0.0.0", "::", ""}  # noqa: S104 - mapping a wildcard bind to loopback, not binding


class ServerUnreachable(Exception):
    """No server is listening at the RPC URL: the caller may act directly instead."""


class RpcError(Exception):
    """The server answered with an error: ``code`` is the JSON-RPC code (or HTTP status)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def rpc_url(config: VoiceCallConfig) -> str:
    host = config.serve.bind
    if host in WILDCARD_BINDS:
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{config.serve.port}/rpc"


def _connect_failed(exc: requests.ConnectionError) -> bool:
    """True when the TCP connection was never made (so the server never saw the request)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError)


@dataclass
class RpcClient:
    url: str
    token: Callable[[], str]  # resolved only once a server answers, so a CLI run without one creates no file
    connect_timeout: float = CONNECT_TIMEOUT_SECONDS
    _probed: bool = field(default=False, repr=False)

    @classmethod
    def for_config(cls, config: VoiceCallConfig) -> RpcClient:
        return cls(url=rpc_url(config), token=lambda: rpc_token(config))

    _ids = itertools.count(1)

    def _probe(self) -> None:
        """Fail fast with ``ServerUnreachable`` when nothing accepts connections at the RPC address."""
        if self._probed:
            return
        parts = urlsplit(self.url)
        try:
            with socket.create_connection((parts.hostname, parts.port or 80), timeout=self.connect_timeout):
                pass
        except OSError as exc:  # refused, timed out, unknown host, unreachable network
            raise ServerUnreachable(f"no Voicecall server at {self.url}") from exc
        self._probed = True

    def call(self, method: str, params: dict[str, Any], *, timeout: float = DEFAULT_READ_TIMEOUT_SECONDS) -> Any:
        self._probe()
        body = {"jsonrpc": "2.0", "id": next(self._ids), "method": method,
                "params": {k: v for k, v in params.items() if v is not None}}
        try:
            response = requests.post(
                self.url, json=body, headers={"Authorization": f"Bearer {self.token()}"},
                timeout=(self.connect_timeout, timeout),
            )
        except requests.ConnectionError as exc:
            if _connect_failed(exc):
                raise ServerUnreachable(f"no Voicecall server at {self.url}") from exc
            raise RpcError(-1, f"connection to {self.url} failed during {method}: {type(exc).__name__}") from exc
        except requests.Timeout as exc:
            raise RpcError(-1, f"{method} got no answer from {self.url} within {timeout:.0f}s") from exc
        if response.status_code == 401:
            raise RpcError(401, f"the server at {self.url} refused the RPC token (HTTP 401); check rpc.token, "
                                "VOICECALL_RPC_TOKEN or var/rpc-token")
        try:
            document = response.json()
        except ValueError:
            raise RpcError(response.status_code,
                           f"{self.url} answered HTTP {response.status_code} without JSON-RPC") from None
        if not isinstance(document, dict):
            raise RpcError(-1, f"{self.url} answered an unexpected document")
        if "error" in document:
            error = document["error"] or {}
            raise RpcError(int(error.get("code", -1)), str(error.get("message", "RPC error")))
        return document.get("result")

    def continue_call(self, call_id: str, message: str, *, transcript_timeout_ms: int) -> dict[str, Any]:
        """``continue`` by ``continue.start`` + ``continue.result`` polling; a server without those
        methods gets the blocking ``voicecall.continue`` (fact sheet §9.3)."""
        params = {"callId": call_id, "message": message}
        try:
            started = self.call("voicecall.continue.start", params)
        except RpcError as exc:
            if exc.code != METHOD_NOT_FOUND:
                raise
            return self.call("voicecall.continue", params, timeout=transcript_timeout_ms / 1000 + 40)
        deadline = time.monotonic() + started["pollTimeoutMs"] / 1000
        while True:
            result = self.call("voicecall.continue.result", {"operationId": started["operationId"]})
            if result["status"] == "completed":
                return result["result"]
            if result["status"] == "failed":
                raise RpcError(-32000, result.get("error") or "continue failed")
            if time.monotonic() >= deadline:
                raise RpcError(-1, f"continue did not finish within {started['pollTimeoutMs']} ms")
            time.sleep(CONTINUE_POLL_SECONDS)

    @staticmethod
    def initiate_timeout(config: VoiceCallConfig) -> float:
        """call/start may wait on the carrier: max(30 s, ring timeout + grace), as the fact sheet says."""
        return max(DEFAULT_READ_TIMEOUT_SECONDS, config.ring_timeout_ms / 1000 + RING_GRACE_SECONDS)
