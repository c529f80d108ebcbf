"""Admission of media-stream sockets, per daphne process (OpenClaw fact sheet §5.2).

``streaming.maxConnections`` bounds open sockets (pending + active); a socket is *pending* until a
valid ``start``, bounded in total (``maxPendingConnections``) and per client IP
(``maxPendingConnectionsPerIp``, the IP resolved under the trusted-proxy rules). The counters live in
this process: with N processes behind one port the host admits up to N times as many. Only "one
stream per call" is cluster-wide (the lease in ``calls.media.control``).
"""

from __future__ import annotations

from typing import Any

from calls.config import VoiceCallConfig
from providers.security import ForwardingTrust, stream_client_ip


class StreamAdmission:
    """Socket accounting for this daphne process. Only touched from the event loop thread."""

    def __init__(self) -> None:
        self.open = 0
        self.pending = 0
        self.pending_by_ip: dict[str, int] = {}

    def open_socket(self, max_connections: int) -> bool:
        if self.open >= max_connections:
            return False
        self.open += 1
        return True

    def close_socket(self) -> None:
        self.open = max(0, self.open - 1)

    def add_pending(self, ip: str, max_total: int, max_per_ip: int) -> bool:
        if self.pending >= max_total or self.pending_by_ip.get(ip, 0) >= max_per_ip:
            return False
        self.pending += 1
        self.pending_by_ip[ip] = self.pending_by_ip.get(ip, 0) + 1
        return True

    def remove_pending(self, ip: str) -> None:
        self.pending = max(0, self.pending - 1)
        left = self.pending_by_ip.get(ip, 0) - 1
        if left > 0:
            self.pending_by_ip[ip] = left
        else:
            self.pending_by_ip.pop(ip, None)


ADMISSION = StreamAdmission()


def client_ip(scope: dict[str, Any], config: VoiceCallConfig) -> str:
    client = scope.get("client") or (None, None)
    remote = str(client[0]) if client and client[0] else None
    headers = {k.decode("latin1"): v.decode("latin1") for k, v in scope.get("headers") or []}
    return stream_client_ip(remote, headers, ForwardingTrust.for_request(config.provider_settings.webhook_trust, remote))
