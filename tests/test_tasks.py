"""Celery tasks are thin; placement retries carrier hiccups and gives up cleanly."""

from datetime import timedelta

import pytest
from django.utils import timezone

from calls import services, tasks
from calls.models import Call
from providers.base import PlacedCall, ProviderError
from providers.mock import MockProvider
from tests.factories import CallFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _retries_run_inline():
    """Eager apply() re-runs a retried task inline only when errors are not propagated."""
    from voicecall_site.celery import app

    previous = app.conf.task_eager_propagates
    app.conf.task_eager_propagates = False
    yield
    app.conf.task_eager_propagates = previous


def test_place_call_retries_carrier_5xx_then_succeeds(monkeypatch):
    attempts = []

    def flaky(self, request):
        attempts.append(request.call_id)
        if len(attempts) < 3:
            raise ProviderError("Twilio API error: 503", retryable=True, status=503)
        return PlacedCall(provider_call_id="mock-after-retries")

    monkeypatch.setattr(MockProvider, "initiate_call", flaky)
    call = CallFactory()
    tasks.place_call.apply(args=(str(call.id),))
    call.refresh_from_db()
    assert len(attempts) == 3
    assert call.provider_call_id == "mock-after-retries" and call.state == "initiated"
    assert call.metadata["dialAttempts"] == 2


def test_place_call_marks_the_call_failed_when_retries_run_out(monkeypatch):
    attempts = []

    def down(self, request):
        attempts.append(1)
        raise ProviderError("carrier timeout", retryable=True)

    monkeypatch.setattr(MockProvider, "initiate_call", down)
    call = CallFactory()
    tasks.place_call.apply(args=(str(call.id),))
    call.refresh_from_db()
    assert len(attempts) == tasks.PLACE_CALL_MAX_RETRIES + 1
    assert call.state == "failed" and call.last_error == "carrier timeout"


def test_a_rejected_number_fails_without_retry(monkeypatch):
    attempts = []

    def refuse(self, request):
        attempts.append(1)
        raise ProviderError("invalid To number", retryable=False, status=400)

    monkeypatch.setattr(MockProvider, "initiate_call", refuse)
    call = CallFactory()
    tasks.place_call.apply(args=(str(call.id),))
    assert attempts == [1]
    assert Call.objects.get(id=call.id).state == "failed"


def test_reaper_task_is_scheduled_every_30_seconds():
    from django.conf import settings

    entry = settings.CELERY_BEAT_SCHEDULE["reap-stale-calls"]
    assert entry == {"task": "calls.tasks.reap_stale_calls", "schedule": 30.0}
    assert tasks.reap_stale_calls.name == entry["task"]


def test_a_placement_older_than_its_deadline_is_never_dialed(monkeypatch, configure):
    """A placement queued while no worker ran must not ring someone's phone hours later."""
    configure(outbound={"placementTimeoutSeconds": 60})
    dials = []
    monkeypatch.setattr(MockProvider, "initiate_call", lambda self, request: dials.append(request) or PlacedCall("x"))
    call = CallFactory()
    Call.objects.filter(id=call.id).update(started_at=timezone.now() - timedelta(seconds=61))
    tasks.place_call.apply(args=(str(call.id),))
    call.refresh_from_db()
    assert dials == []
    assert call.state == "failed" and call.provider_call_id is None
    assert call.last_error == services.PLACEMENT_EXPIRED.format(seconds=60)


def test_a_placement_within_its_deadline_is_dialed(monkeypatch, configure):
    configure(outbound={"placementTimeoutSeconds": 60})
    monkeypatch.setattr(MockProvider, "initiate_call", lambda self, request: PlacedCall("mock-in-time"))
    call = CallFactory()
    Call.objects.filter(id=call.id).update(started_at=timezone.now() - timedelta(seconds=50))
    tasks.place_call.apply(args=(str(call.id),))
    assert Call.objects.get(id=call.id).provider_call_id == "mock-in-time"


def test_an_ambiguous_dial_failure_is_never_retried_and_waits_for_callbacks(monkeypatch):
    """A lost reply may mean the carrier dialed: a retry could ring the callee twice."""
    attempts = []

    def lost_reply(self, request):
        attempts.append(1)
        raise ProviderError("read timed out after the request was sent", retryable=True, ambiguous=True)

    monkeypatch.setattr(MockProvider, "initiate_call", lost_reply)
    call = CallFactory()
    tasks.place_call.apply(args=(str(call.id),))
    call.refresh_from_db()
    assert attempts == [1]
    assert call.state == "initiated" and call.provider_call_id is None
    assert call.metadata["dialClaimedAt"] and call.metadata["dialUnconfirmedAt"]
    assert "did not confirm the dial" in call.last_error
    tasks.place_call.apply(args=(str(call.id),))  # a redelivered task does not dial either
    assert attempts == [1] and Call.objects.get(id=call.id).state == "initiated"
