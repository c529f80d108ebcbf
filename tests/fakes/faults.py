"""Faults a fake carrier injects into its create-call request, the one REST call whose retry could
ring a phone twice. Each fake (Twilio, Telnyx, Plivo) asks ``CreateFaults.next()`` when a create
request arrives and acts on the answer:

* ``lose-reply``: the call is created (and dialed, its callbacks go out) but the reply is held past
  the client's read timeout and never sent -- the carrier's reply got lost;
* ``drop-after-request``: the call is created and the connection is closed without a reply;
* ``5xx`` / ``429``: an error answer, nothing created.
"""

from __future__ import annotations

import threading
from collections import deque

LOSE_REPLY = "lose-reply"
DROP_AFTER_REQUEST = "drop-after-request"
SERVER_ERROR = "5xx"
RATE_LIMITED = "429"
CREATE_FAULTS = (LOSE_REPLY, DROP_AFTER_REQUEST, SERVER_ERROR, RATE_LIMITED)
#: Faults after which the carrier has created the call although the client saw no answer.
CREATED_WITHOUT_REPLY = frozenset({LOSE_REPLY, DROP_AFTER_REQUEST})


class CreateFaults:
    def __init__(self, hold_s: float = 2.0) -> None:
        self.hold_s = hold_s  # how long a lost reply is held (longer than the client's read timeout)
        self._queue: deque[str] = deque()
        self._lock = threading.Lock()

    def inject(self, fault: str) -> None:
        if fault not in CREATE_FAULTS:
            raise ValueError(f"unknown create fault {fault!r} (known: {', '.join(CREATE_FAULTS)})")
        with self._lock:
            self._queue.append(fault)

    def next(self) -> str | None:
        with self._lock:
            return self._queue.popleft() if self._queue else None

    @staticmethod
    def error_status(fault: str | None) -> int | None:
        """The HTTP status a fault answers with instead of creating the call, if it does."""
        return {SERVER_ERROR: 503, RATE_LIMITED: 429}.get(fault or "")

    def withhold_reply(self, fault: str | None, stop: threading.Event | None = None) -> bool:
        """For a created-without-reply fault: wait (``lose-reply``) and say the reply must not be sent."""
        if fault == LOSE_REPLY:
            (stop or threading.Event()).wait(self.hold_s)
        return fault in CREATED_WITHOUT_REPLY
