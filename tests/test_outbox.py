"""The transactional outbox behind the effects port (``calls.services.effects``): an effect decided in
a transaction is written with it, dispatched after commit, kept when the broker is down at that
moment and re-sent by beat once -- never lost, never sent for a transaction that rolled back."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from calls.models import PendingEffect
from calls.services import effects
from calls.services.effects import Effect

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def handled(monkeypatch) -> dict:
    """A stand-in handler for one effect: records what it is handed, or fails like a dead broker."""
    state = {"calls": [], "broker_up": True}

    def handler(args: tuple, delay: float | None) -> None:
        if not state["broker_up"]:
            raise effects.DispatchFailed("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        state["calls"].append((args, delay))

    monkeypatch.setitem(effects._handlers, Effect.START_LISTENING, handler)
    return state


def test_an_effect_is_written_with_its_transaction_and_dispatched_after_commit(handled):
    with transaction.atomic():
        effects.after_commit(Effect.START_LISTENING, "call-1")
        assert handled["calls"] == []  # not before commit
        assert PendingEffect.objects.get().dispatched_at is None
    assert handled["calls"] == [(("call-1",), None)]
    row = PendingEffect.objects.get()
    assert row.dispatched_at is not None and row.attempts == 1


def test_an_effect_of_a_rolled_back_transaction_is_never_dispatched(handled):
    with pytest.raises(RuntimeError), transaction.atomic():
        effects.after_commit(Effect.START_LISTENING, "call-1")
        raise RuntimeError("the decision is undone")
    assert handled["calls"] == [] and not PendingEffect.objects.exists()
    assert effects.dispatch_pending(older_than_seconds=0) == 0


def test_a_broker_outage_at_commit_keeps_the_effect_until_beat_resends_it_once(handled):
    handled["broker_up"] = False
    effects.after_commit(Effect.START_LISTENING, "call-1")  # the request that decided it still succeeds
    row = PendingEffect.objects.get()
    assert row.dispatched_at is None and row.attempts == 1 and "Connection refused" in row.last_error

    assert effects.dispatch_pending(older_than_seconds=0) == 0  # still down: kept again
    handled["broker_up"] = True
    assert effects.dispatch_pending(older_than_seconds=0) == 1
    assert effects.dispatch_pending(older_than_seconds=0) == 0
    assert handled["calls"] == [(("call-1",), None)]
    assert PendingEffect.objects.get().attempts == 3


def test_a_fresh_undispatched_row_is_left_to_its_own_on_commit_hook(handled):
    handled["broker_up"] = False
    effects.after_commit(Effect.START_LISTENING, "call-1")
    handled["broker_up"] = True
    assert effects.dispatch_pending() == 0  # younger than REDISPATCH_AFTER_SECONDS
    assert handled["calls"] == []


def test_a_resent_countdown_keeps_only_what_is_left_of_it(handled):
    handled["broker_up"] = False
    effects.after_commit(Effect.START_LISTENING, "call-1", delay=300)
    PendingEffect.objects.update(created_at=timezone.now() - timedelta(seconds=100))
    handled["broker_up"] = True
    assert effects.dispatch_pending(older_than_seconds=0) == 1
    ((args, delay),) = handled["calls"]
    assert args == ("call-1",) and 199 <= delay <= 200


def test_an_unknown_effect_is_refused_when_recorded():
    with pytest.raises(ValueError):
        effects.after_commit("dial_twice", "call-1")
    assert not PendingEffect.objects.exists()


def test_dispatched_rows_are_pruned_after_a_day(handled):
    effects.after_commit(Effect.START_LISTENING, "old")
    effects.after_commit(Effect.START_LISTENING, "new")
    PendingEffect.objects.filter(args=["old"]).update(dispatched_at=timezone.now() - timedelta(days=2))
    assert effects.prune_dispatched() == 1
    assert list(PendingEffect.objects.values_list("args", flat=True)) == [["new"]]
