"""Celery tasks: a thin interface over ``calls.services`` (each task is one service call).

The module also registers each task as the handler of its domain effect
(``calls.services.effects``): services record an effect after commit, and it is queued here. Task
names stay ``calls.tasks.<name>``: messages already in a broker keep routing across upgrades.
"""

from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import task_failure
from kombu.exceptions import OperationalError

from calls import metrics, services
from calls.services import effects
from calls.services.effects import Effect
from providers.base import ProviderError

logger = logging.getLogger(__name__)

PLACE_CALL_MAX_RETRIES = 4


@shared_task(bind=True, max_retries=PLACE_CALL_MAX_RETRIES, acks_late=True)
def place_call(self, call_id: str) -> str:
    """Dial a queued call. Carrier 5xx/timeouts retry with exponential backoff (1, 2, 4, 8 s); once
    retries are exhausted the call is marked failed with the carrier's error."""
    try:
        return services.place_call(call_id)
    except ProviderError as exc:
        if self.request.retries >= self.max_retries:
            services.fail_call(call_id, str(exc))
            return "failed"
        raise self.retry(exc=exc, countdown=2**self.request.retries) from exc


@shared_task
def deliver_initial_message(call_id: str) -> None:
    try:
        services.deliver_initial_message(call_id)
    except services.ServiceError as exc:
        logger.warning("initial message of call %s not delivered: %s", call_id, exc)


@shared_task
def start_listening(call_id: str) -> None:
    try:
        services.start_listening(call_id)
    except ProviderError as exc:
        logger.warning("listening on call %s not started: %s", call_id, exc)


@shared_task
def hang_up_after_notify(call_id: str) -> None:
    services.hang_up_after_notify(call_id)


@shared_task
def enforce_max_duration(call_id: str) -> None:
    services.enforce_max_duration(call_id)


@shared_task
def reject_inbound_call(provider_name: str, provider_call_id: str) -> None:
    services.reject_inbound_call(provider_name, provider_call_id)


@shared_task
def hang_up_stray_leg(call_id: str) -> None:
    services.hang_up_stray_leg(call_id)


@shared_task
def answer_inbound_call(call_id: str) -> None:
    try:
        services.answer_inbound_call(call_id)
    except ProviderError as exc:
        logger.warning("answering inbound call %s failed: %s", call_id, exc)


@shared_task
def reap_stale_calls() -> dict:
    return services.reap_stale_calls()


@shared_task
def prune_old_records() -> dict:
    """Retention (config ``retention``); beat runs it hourly."""
    return services.prune_old_records()


@shared_task
def dispatch_pending_effects() -> int:
    """Re-send the outbox rows whose dispatch failed (broker down at commit); beat runs it."""
    return effects.dispatch_pending()


@shared_task
def generate_reply(call_id: str, user_entry_id: int) -> None:
    try:
        services.generate_reply(call_id, user_entry_id)
    except services.ServiceError as exc:
        logger.warning("auto-reply on call %s not spoken: %s", call_id, exc)


@task_failure.connect
def _count_task_failure(sender=None, **_kwargs) -> None:
    metrics.TASK_FAILURES.labels(getattr(sender, "name", "unknown")).inc()


def _queue(task) -> effects.Handler:
    def handler(args: tuple, delay: float | None) -> None:
        try:
            if delay:
                task.apply_async(args, countdown=delay)
            else:
                task.delay(*args)
        except (OperationalError, ConnectionError, OSError) as exc:
            # The broker is unreachable (kombu retried already): the outbox row stays pending.
            raise effects.DispatchFailed(str(exc)) from exc

    return handler


def register_effect_handlers() -> None:
    """Every effect the domain records is queued as its Celery task (``calls.apps`` calls this)."""
    for effect, task in {
        Effect.PLACE_CALL: place_call,
        Effect.DELIVER_INITIAL_MESSAGE: deliver_initial_message,
        Effect.START_LISTENING: start_listening,
        Effect.HANG_UP_AFTER_NOTIFY: hang_up_after_notify,
        Effect.ENFORCE_MAX_DURATION: enforce_max_duration,
        Effect.REJECT_INBOUND_CALL: reject_inbound_call,
        Effect.HANG_UP_STRAY_LEG: hang_up_stray_leg,
        Effect.ANSWER_INBOUND_CALL: answer_inbound_call,
        Effect.GENERATE_REPLY: generate_reply,
    }.items():
        effects.register(effect, _queue(task))
