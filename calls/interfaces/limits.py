"""The per-client in-flight cap for carrier webhooks (OpenClaw fact sheet §4.1 step 5): one limiter
per process, shared by the ASGI gate and the Django view, so a request holds exactly one slot."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from providers.security import UNKNOWN_CLIENT


class TooManyInFlight(Exception):
    """Raised by `InFlightLimiter.slot`; interfaces answer 429 Too Many Requests."""

    def __init__(self, key: str) -> None:
        super().__init__(f"too many in-flight requests for {key}")
        self.key = key


class InFlightLimiter:
    """OC §4.1 step 5: at most `max_per_key` concurrent requests per key (the socket address), 429
    beyond. Thread-safe; per process (each daphne/gunicorn process has its own counts). A missing key
    shares the `UNKNOWN_CLIENT` bucket."""

    def __init__(self, max_per_key: int = 8) -> None:
        if max_per_key < 1:
            raise ValueError("max_per_key must be at least 1")
        self.max_per_key = max_per_key
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str | None) -> bool:
        key = key or UNKNOWN_CLIENT
        with self._lock:
            count = self._counts.get(key, 0)
            if count >= self.max_per_key:
                return False
            self._counts[key] = count + 1
            return True

    def release(self, key: str | None) -> None:
        key = key or UNKNOWN_CLIENT
        with self._lock:
            count = self._counts.get(key, 0) - 1
            if count > 0:
                self._counts[key] = count
            else:
                self._counts.pop(key, None)

    def in_flight(self, key: str | None) -> int:
        with self._lock:
            return self._counts.get(key or UNKNOWN_CLIENT, 0)

    @contextmanager
    def slot(self, key: str | None) -> Iterator[None]:
        if not self.acquire(key):
            raise TooManyInFlight(key or UNKNOWN_CLIENT)
        try:
            yield
        finally:
            self.release(key)


MAX_BODY_BYTES = 64 * 1024  # a carrier callback is a few KB; anything near this is not one
IN_FLIGHT_PER_IP = 8
#: The process's webhook limiter; the gate marks a request that holds a slot with ``GATE_SLOT_KEY``
#: in its ASGI scope so the view does not take a second one.
WEBHOOK_LIMITER = InFlightLimiter(max_per_key=IN_FLIGHT_PER_IP)
GATE_SLOT_KEY = "voicecall.webhook_slot"
