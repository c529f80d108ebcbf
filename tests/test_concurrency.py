"""Concurrent duplicate deliveries of one event must have exactly one effect (on PostgreSQL in CI)."""

import threading

import pytest
from django.db import connections

from calls import services
from calls.config import get_config
from calls.models import CallEvent, RejectedInboundCall, TranscriptEntry
from providers import get_provider
from providers.base import EventType, NormalizedEvent
from tests.factories import AnsweredCallFactory

pytestmark = pytest.mark.django_db(transaction=True)

THREADS = 8


def deliver_concurrently(events_per_thread):
    barrier = threading.Barrier(len(events_per_thread))
    errors: list[BaseException] = []

    def worker(events):
        try:
            barrier.wait()
            services.process_events(get_provider(get_config().provider_settings), events)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(events,)) for events in events_per_thread]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return errors


def test_duplicate_speech_deliveries_append_one_transcript_line():
    call = AnsweredCallFactory()
    event = NormalizedEvent(type=EventType.SPEECH, dedupe_key="dup-speech", call_id=str(call.id), transcript="yes")
    errors = deliver_concurrently([[event]] * THREADS)
    assert errors == []
    assert CallEvent.objects.filter(dedupe_key="dup-speech").count() == 1
    assert TranscriptEntry.objects.filter(call=call, speaker="user").count() == 1


def test_concurrent_first_events_of_one_inbound_call_create_one_record(configure):
    configure(inboundPolicy="open")
    events = [[NormalizedEvent(type=EventType.INITIATED, dedupe_key=f"in-{i}", provider_call_id="mock-race",
                               direction="inbound", from_number="+15551230000", to_number="+15550000000")]
              for i in range(THREADS)]
    errors = deliver_concurrently(events)
    assert errors == []
    from calls.models import Call

    assert Call.objects.filter(provider_call_id="mock-race").count() == 1
    assert CallEvent.objects.filter(provider_call_id="mock-race").count() == THREADS


def test_concurrent_rejected_inbound_deliveries_hang_up_once():
    events = [[NormalizedEvent(type=EventType.INITIATED, dedupe_key=f"rej-{i}", provider_call_id="mock-spam",
                               direction="inbound", from_number="+15559990000")] for i in range(THREADS)]
    errors = deliver_concurrently(events)
    assert errors == []
    row = RejectedInboundCall.objects.get(provider_call_id="mock-spam")
    assert row.hangup_attempted is True
    assert RejectedInboundCall.objects.count() == 1
