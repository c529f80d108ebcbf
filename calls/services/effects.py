"""The one door through which side effects leave the domain.

Services decide and commit; what must happen afterwards -- dial, hang up, speak the greeting, listen,
answer with the auto-responder -- is *recorded* here with ``after_commit``, and runs only once the
transaction that decided it has committed (never for one that rolls back). Who carries an effect out
is registered by the layer that owns the machinery: ``calls/tasks.py`` registers a Celery task for
each ``Effect``; the media layer registers the ``StreamPort`` that speaks on, mints tokens for and
closes live media streams. So no domain module imports tasks or media code, and a test or another
deployment can register other handlers.

An effect without a registered handler is an error, not a silent drop (``NoHandler``).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from typing import Any, Protocol

from django.db import transaction

logger = logging.getLogger(__name__)


class Effect(enum.StrEnum):
    PLACE_CALL = "place_call"
    DELIVER_INITIAL_MESSAGE = "deliver_initial_message"
    START_LISTENING = "start_listening"
    HANG_UP_AFTER_NOTIFY = "hang_up_after_notify"
    ENFORCE_MAX_DURATION = "enforce_max_duration"
    REJECT_INBOUND_CALL = "reject_inbound_call"
    HANG_UP_STRAY_LEG = "hang_up_stray_leg"
    ANSWER_INBOUND_CALL = "answer_inbound_call"
    GENERATE_REPLY = "generate_reply"


#: ``handler(args, delay_seconds)``: carry the effect out (or queue it), at once or after the delay.
Handler = Callable[[tuple[Any, ...], float | None], None]

_handlers: dict[Effect, Handler] = {}


class NoHandler(RuntimeError):
    """An effect was recorded but nothing registered to carry it out (a wiring bug)."""


def register(effect: Effect, handler: Handler) -> None:
    _handlers[Effect(effect)] = handler


def dispatch(effect: Effect, *args: Any, delay: float | None = None) -> None:
    """Carry ``effect`` out now (outside a transaction, or from an on-commit hook)."""
    handler = _handlers.get(Effect(effect))
    if handler is None:
        raise NoHandler(f"no handler registered for effect {effect}")
    handler(args, delay)


def after_commit(effect: Effect, *args: Any, delay: float | None = None) -> None:
    """Record ``effect``: it is dispatched when the current transaction commits (at once when there
    is none, as Django's ``on_commit`` does)."""
    transaction.on_commit(lambda: dispatch(effect, *args, delay=delay))


# --------------------------------------------------------------------------------------------------
# Live media streams
# --------------------------------------------------------------------------------------------------


class StreamPort(Protocol):
    """What the domain asks of the media layer. Synchronous: called from request threads, Celery
    workers and the CLI, never from the event loop."""

    def has_live_stream(self, call_id: str) -> bool: ...

    def speak(self, call: Any, text: str, *, listen_after: bool, turn_token: str | None) -> int | None:
        """Speak on the call's live stream; records the utterance and returns its transcript line id.
        ``ServiceError`` when refused."""

    def stream_token(self, provider: Any, call: Any) -> str | None:
        """The token a webhook reply's stream must present, or None when this call gets no stream."""

    def close(self, call_id: str) -> bool: ...


class NoStreams:
    """The port before (or without) a media layer: no call ever has a live stream."""

    def has_live_stream(self, call_id: str) -> bool:
        return False

    def speak(self, call: Any, text: str, *, listen_after: bool, turn_token: str | None) -> int | None:
        raise NoHandler("no media layer registered to speak on a stream")

    def stream_token(self, provider: Any, call: Any) -> str | None:
        return None

    def close(self, call_id: str) -> bool:
        return False


_streams: StreamPort = NoStreams()


def register_streams(port: StreamPort) -> None:
    global _streams
    _streams = port


def stream_port() -> StreamPort:
    return _streams
