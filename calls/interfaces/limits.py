"""Admission of carrier webhooks (OpenClaw fact sheet §4.1 step 5), one set of limits per process.

Two limits, for two different threats:

* **Per client, before verification** (``webhookSecurity.maxInFlightPerIp``, default 8). A slot is
  taken when the request's headers have arrived -- under daphne in Twisted, before the body
  (``webhook_gate``) -- held through the body read and the signature check, and released the moment
  the signature verifies. So a client dribbling unsigned bodies holds at most that many slots,
  while a carrier's burst of signed callbacks from one egress address passes: each holds its slot
  for a millisecond. A request over the cap waits up to ``SLOT_WAIT_S`` for a slot to free (a burst
  rides through) and is refused with 429 only then.
* **Process-wide, after verification** (``VERIFIED_IN_FLIGHT``). Verified requests are never
  refused for their address; they queue for up to ``VERIFIED_WAIT_S`` when the process is busy
  (503 only past that), because carriers do not retry status callbacks.

A ``Slot`` is released once, whoever releases it first: the view after verification, the gate
after the response, or Twisted when the connection is lost before the request was handed on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from providers.security import UNKNOWN_CLIENT

MAX_BODY_BYTES = 64 * 1024  # a carrier callback is a few KB; anything near this is not one
IN_FLIGHT_PER_IP = 8  # default of webhookSecurity.maxInFlightPerIp
SLOT_WAIT_S = 2.5  # how long a request over the per-client cap waits for a slot before 429
VERIFIED_IN_FLIGHT = 64  # verified webhooks processed at once by one process
VERIFIED_WAIT_S = 10.0  # how long a verified webhook queues for the process-wide limit before 503
#: ASGI scope key under which the gate hands the request's ``Slot`` to the view.
GATE_SLOT_KEY = "voicecall.webhook_slot"


class TooManyInFlight(Exception):
    """Raised by `InFlightLimiter.slot`; interfaces answer 429 Too Many Requests."""

    def __init__(self, key: str) -> None:
        super().__init__(f"too many in-flight requests for {key}")
        self.key = key


class Slot:
    """One request's hold on its client's bucket; ``release`` is idempotent and thread-safe."""

    def __init__(self, limiter: InFlightLimiter, key: str) -> None:
        self.limiter, self.key = limiter, key
        self._released = False
        self._lock = threading.Lock()

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self.limiter.release(self.key)


class InFlightLimiter:
    """OC §4.1 step 5: at most `max_per_key` concurrent requests per key (the client IP). Thread-safe;
    per process (each daphne/gunicorn process has its own counts). A missing key shares the
    `UNKNOWN_CLIENT` bucket."""

    def __init__(self, max_per_key: int = IN_FLIGHT_PER_IP) -> None:
        if max_per_key < 1:
            raise ValueError("max_per_key must be at least 1")
        self.max_per_key = max_per_key
        self._counts: dict[str, int] = {}
        self._freed = threading.Condition()

    def acquire(self, key: str | None) -> bool:
        """Take a slot now, or say there is none (never waits)."""
        key = key or UNKNOWN_CLIENT
        with self._freed:
            count = self._counts.get(key, 0)
            if count >= self.max_per_key:
                return False
            self._counts[key] = count + 1
            return True

    def acquire_waiting(self, key: str | None, timeout: float) -> bool:
        """Take a slot, waiting up to ``timeout`` seconds for one to be released (threads only)."""
        deadline = time.monotonic() + timeout
        with self._freed:
            while not self.acquire(key):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._freed.wait(remaining)
            return True

    def release(self, key: str | None) -> None:
        key = key or UNKNOWN_CLIENT
        with self._freed:
            count = self._counts.get(key, 0) - 1
            if count > 0:
                self._counts[key] = count
            else:
                self._counts.pop(key, None)
            self._freed.notify_all()

    def in_flight(self, key: str | None) -> int:
        with self._freed:
            return self._counts.get(key or UNKNOWN_CLIENT, 0)

    def slot_for(self, key: str | None) -> Slot | None:
        """A ``Slot`` when one is free now, else None."""
        return Slot(self, key or UNKNOWN_CLIENT) if self.acquire(key) else None

    @contextmanager
    def slot(self, key: str | None) -> Iterator[None]:
        if not self.acquire(key):
            raise TooManyInFlight(key or UNKNOWN_CLIENT)
        try:
            yield
        finally:
            self.release(key)


#: The process's per-client webhook limiter (its cap follows webhookSecurity.maxInFlightPerIp).
WEBHOOK_LIMITER = InFlightLimiter()
#: The process-wide bound on verified webhooks being processed.
VERIFIED_LIMIT = threading.BoundedSemaphore(VERIFIED_IN_FLIGHT)


def webhook_limiter(max_per_ip: int) -> InFlightLimiter:
    """The process's limiter with its cap set from the config in force."""
    WEBHOOK_LIMITER.max_per_key = max_per_ip
    return WEBHOOK_LIMITER


# Slots taken by daphne's Twisted request (headers received) and handed to the ASGI gate once the
# body is complete; keyed by the connection's (client host, client port), which the scope carries.
_connection_slots: dict[tuple[str, int], Slot] = {}
_connection_slots_lock = threading.Lock()


def hold_for_connection(client: tuple[str, int], slot: Slot) -> None:
    with _connection_slots_lock:
        previous = _connection_slots.pop(client, None)
        _connection_slots[client] = slot
    if previous is not None:  # a kept-alive connection's earlier request never reached the gate
        previous.release()


def take_connection_slot(client: tuple[str, int] | None) -> Slot | None:
    if not client:
        return None
    with _connection_slots_lock:
        return _connection_slots.pop((str(client[0]), int(client[1])), None)


def drop_connection_slot(client: tuple[str, int], slot: Slot) -> None:
    """The connection went away before the request was handed on: give the slot back."""
    with _connection_slots_lock:
        if _connection_slots.get(client) is slot:
            _connection_slots.pop(client, None)
    slot.release()
