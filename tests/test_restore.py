"""Restoring live calls after a restart (fact sheet §2.7): re-checked with the carrier."""

from datetime import timedelta

import pytest
from django.utils import timezone

from calls import services
from calls.models import Call
from providers.base import ProviderError
from providers.mock import MockProvider
from tests.factories import AnsweredCallFactory, CallFactory

pytestmark = pytest.mark.django_db


def test_restore_sorts_live_calls_by_what_the_carrier_says(configure, monkeypatch):
    configure(maxDurationSeconds=300)
    live = AnsweredCallFactory(provider_call_id="mock-live-1")
    ended = AnsweredCallFactory(provider_call_id="mock-ended-1")  # the mock carrier reports it terminal
    queued = CallFactory(state="initiated")
    interrupted = CallFactory(state="initiated", metadata={"dialClaimedAt": 1})
    too_old = AnsweredCallFactory(provider_call_id="mock-old-1")
    Call.objects.filter(id=too_old.id).update(started_at=timezone.now() - timedelta(seconds=301))
    unknown = AnsweredCallFactory(provider_call_id="mock-flaky-1")
    finished = CallFactory(state="completed", provider_call_id="mock-done-1")
    real_status = MockProvider.get_call_status

    def flaky(self, provider_call_id):
        if "flaky" in provider_call_id:
            raise ProviderError("carrier unreachable", retryable=True)
        return real_status(self, provider_call_id)

    monkeypatch.setattr(MockProvider, "get_call_status", flaky)
    summary = services.restore_calls()
    states = dict(Call.objects.values_list("id", "state"))
    assert states[live.id] == "listening"
    assert states[ended.id] == "completed"
    assert states[queued.id] == "initiated"
    assert states[interrupted.id] == "failed"
    assert states[too_old.id] == "timeout"
    assert states[unknown.id] == "listening"
    assert states[finished.id] == "completed"
    assert summary == {"checked": 6, "resumed": 3, "timedOut": 1, "closed": 1, "failed": 1}


def test_restore_command_prints_the_summary():
    import io
    import json

    from django.core.management import call_command

    AnsweredCallFactory(provider_call_id="mock-ended-2")
    out = io.StringIO()
    call_command("voicecall", "restore", "--json", stdout=out)
    assert json.loads(out.getvalue()) == {"checked": 1, "resumed": 0, "timedOut": 0, "closed": 1, "failed": 0}
