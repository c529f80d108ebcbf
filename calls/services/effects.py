"""The one door through which side effects leave the domain.

Services decide and commit; what must happen afterwards -- dial, hang up, speak the greeting, listen,
answer with the auto-responder -- is *recorded* here with ``after_commit``, and runs only once the
transaction that decided it has committed (never for one that rolls back). Who carries an effect out
is registered by the layer that owns the machinery: ``calls/tasks.py`` registers a Celery task for
each ``Effect``; the media layer registers the ``StreamPort`` that speaks on, mints tokens for and
closes live media streams. So no domain module imports tasks or media code, and a test or another
deployment can register other handlers.

An effect without a registered handler is an error, not a silent drop (``NoHandler``).

The port is a transactional outbox: ``after_commit`` writes a ``PendingEffect`` row in the caller's
transaction and dispatches it once that commits. A dispatch that fails (the broker is down) leaves
the row pending -- the request that decided it still succeeds -- and ``dispatch_pending`` (a beat
task every ``REDISPATCH_EVERY_SECONDS``) sends it again once the broker is back, with what is left of
its countdown. Handlers are idempotent (a dial claim, a greeting claim, a reply claim), so the rare
second dispatch -- dispatched, but the mark did not commit -- changes nothing.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Protocol

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from calls.models import PendingEffect

logger = logging.getLogger(__name__)

#: An undispatched row younger than this may still be on its way (its on-commit hook runs now).
REDISPATCH_AFTER_SECONDS = 5.0
#: How often beat runs ``dispatch_pending`` (voicecall_site/settings.py schedules it).
REDISPATCH_EVERY_SECONDS = 10.0
DISPATCHED_RETENTION = timedelta(days=1)


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


class DispatchFailed(Exception):
    """A handler could not hand the effect on (the broker is unreachable); the outbox keeps it."""


def register(effect: Effect, handler: Handler) -> None:
    _handlers[Effect(effect)] = handler


def dispatch(effect: Effect, *args: Any, delay: float | None = None) -> None:
    """Hand ``effect`` to its handler now, without an outbox row (callers outside any transaction
    that may simply fail loudly, such as a Celery task scheduling its own follow-up)."""
    handler = _handlers.get(Effect(effect))
    if handler is None:
        raise NoHandler(f"no handler registered for effect {effect}")
    handler(args, delay)


def after_commit(effect: Effect, *args: Any, delay: float | None = None) -> None:
    """Record ``effect`` in the outbox, in the current transaction (its own when there is none); it
    is dispatched when that commits and re-dispatched by beat until a dispatch succeeds."""
    effect = Effect(effect)  # an unknown effect is a bug here, not at dispatch time
    # Inside the caller's transaction the row needs no savepoint of its own (it commits or rolls
    # back with the decision); outside one, this block is its transaction.
    with transaction.atomic(savepoint=False):
        row = PendingEffect.objects.create(effect=str(effect), args=list(args), delay_seconds=delay)
        transaction.on_commit(lambda: _send(row.id, effect, row.args, delay))


def _dispatch_row(row_id: int, *, remaining_delay: float | None = None) -> bool:
    """Re-send one stale outbox row (beat), unless it was dispatched meanwhile."""
    row = PendingEffect.objects.filter(id=row_id, dispatched_at__isnull=True).first()
    if row is None:
        return False
    return _send(row_id, Effect(row.effect), row.args, remaining_delay)


def _send(row_id: int, effect: Effect, args: list[Any], delay: float | None) -> bool:
    """Dispatch one outbox row and mark it; a failure (broker down) is logged and left for beat."""
    try:
        dispatch(effect, *args, delay=delay)
    except DispatchFailed as exc:  # the broker is down: beat re-sends it
        PendingEffect.objects.filter(id=row_id).update(attempts=F("attempts") + 1, last_error=str(exc)[:2000])
        logger.warning("effect %s%s not dispatched (%s); it stays in the outbox and is re-sent by beat",
                       effect, tuple(args), type(exc).__name__)
        return False
    PendingEffect.objects.filter(id=row_id).update(dispatched_at=timezone.now(), attempts=F("attempts") + 1)
    return True


def dispatch_pending(*, older_than_seconds: float = REDISPATCH_AFTER_SECONDS, limit: int = 500) -> int:
    """Re-send outbox rows still undispatched after ``older_than_seconds`` (their on-commit dispatch
    failed, or its process died); a countdown resumes with what is left of it. Returns how many
    were sent."""
    now = timezone.now()
    stale = PendingEffect.objects.filter(
        dispatched_at__isnull=True, created_at__lt=now - timedelta(seconds=older_than_seconds)
    ).order_by("id")[:limit]
    sent = 0
    for row_id, created_at, delay in stale.values_list("id", "created_at", "delay_seconds"):
        remaining = None
        if delay:
            remaining = max(0.0, delay - (now - created_at).total_seconds()) or None
        if _dispatch_row(row_id, remaining_delay=remaining):
            sent += 1
    if sent:
        logger.info("outbox: %d pending effect(s) re-dispatched", sent)
    return sent


def prune_dispatched(*, older_than: timedelta = DISPATCHED_RETENTION) -> int:
    """Forget dispatched outbox rows after ``older_than`` (the retention job calls this)."""
    deleted, _ = PendingEffect.objects.filter(dispatched_at__lt=timezone.now() - older_than).delete()
    return deleted


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
