"""What the fake Twilio records and plays: REST requests, webhook deliveries, the scripted callee and
one fake call's state (tests/fakes/twilio.py serves them)."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field

TERMINAL_STATUSES = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})


@dataclass
class RestRequest:
    method: str
    path: str
    form: list[tuple[str, str]]
    status: int = 0

    def get(self, name: str) -> str | None:
        return next((v for k, v in self.form if k == name), None)

    def getlist(self, name: str) -> list[str]:
        return [v for k, v in self.form if k == name]


@dataclass
class Delivery:
    """One webhook request the fake made to the local server."""

    call_sid: str
    kind: str  # "voice", "status", "gather", "redirect"
    url: str  # the public URL that was signed
    params: list[tuple[str, str]]
    status: int | None = None
    body: str = ""


@dataclass
class Callee:
    answers: bool = True
    replies: list[str] = field(default_factory=list)
    answer_unprompted: bool = False

    def next_reply(self, prompted: bool) -> str | None:
        if (prompted or self.answer_unprompted) and self.replies:
            return self.replies.pop(0)
        return None


@dataclass
class FakeCall:
    sid: str
    direction: str  # "outbound-api" | "inbound"
    from_: str
    to: str
    url: str
    status_callback: str | None = None
    status_callback_events: list[str] = field(default_factory=list)
    timeout: int | None = None
    status: str = "queued"
    spoken: list[str] = field(default_factory=list)
    pauses: list[int] = field(default_factory=list)
    digits_played: list[str] = field(default_factory=list)
    gathers: list[str] = field(default_factory=list)  # <Gather action> URLs, in order
    documents: list[str] = field(default_factory=list)  # every TwiML document executed
    rejected: bool = False
    ended_by: str | None = None  # "twiml", "api", "callee", "no-answer", "error", "document-end"
    sequence: int = 0
    control: queue.Queue = field(default_factory=queue.Queue)  # REST updates: ("twiml", xml) / ("hangup",)
    caller: queue.Queue = field(default_factory=queue.Queue)  # test cues: ("say", text) / ("silence",) / ...
    ended: threading.Event = field(default_factory=threading.Event)
    listening: threading.Event = field(default_factory=threading.Event)

    @property
    def is_over(self) -> bool:
        return self.status in TERMINAL_STATUSES
