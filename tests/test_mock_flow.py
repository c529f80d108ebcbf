"""End-to-end call flows on the mock carrier, driven through the real webhook endpoint."""

import json

import pytest

from calls import services
from calls.models import Call, CallEvent, RejectedInboundCall, TranscriptEntry

pytestmark = pytest.mark.django_db(transaction=True)

WEBHOOK = "/voice/webhook"


def post_events(client, *events):
    return client.post(WEBHOOK, data=json.dumps({"events": list(events)}), content_type="application/json")


def test_notify_call_speaks_the_message_on_answer_and_completes(client):
    call = services.initiate_call(to="+15550001111", message="Your table is ready", mode="notify")
    call.refresh_from_db()
    assert call.provider_call_id == f"mock-{call.id}"  # placed by the (eager) Celery task
    response = post_events(
        client,
        {"id": "e1", "type": "call.ringing", "callId": str(call.id)},
        {"id": "e2", "type": "call.answered", "callId": str(call.id)},
    )
    assert response.status_code == 200
    call.refresh_from_db()
    assert call.state == "completed"
    assert call.end_reason == "completed"
    assert call.answered_at is not None
    assert list(call.transcript.values_list("speaker", "text")) == [("bot", "Your table is ready")]
    assert CallEvent.objects.filter(call=call).count() == 2


def test_replayed_mock_webhook_changes_nothing(client):
    call = services.initiate_call(to="+15550001111", message="Hi", mode="conversation")
    body = {"id": "a1", "type": "call.answered", "callId": str(call.id)}
    post_events(client, body)
    before = (Call.objects.get(id=call.id).state, TranscriptEntry.objects.count(), CallEvent.objects.count())
    again = post_events(client, body)
    assert again.status_code == 200
    after = (Call.objects.get(id=call.id).state, TranscriptEntry.objects.count(), CallEvent.objects.count())
    assert before == after


def test_malformed_body_is_rejected_and_records_nothing(client):
    response = client.post(WEBHOOK, data=b"{not json", content_type="application/json")
    assert response.status_code == 400
    assert CallEvent.objects.count() == 0


def test_get_is_not_allowed(client):
    assert client.get(WEBHOOK).status_code == 405


def test_inbound_caller_rejected_by_default_policy_gets_no_record(client):
    event = {"id": "in1", "type": "call.initiated", "callId": "mock-inbound-1", "direction": "inbound",
             "from": "+15557770000", "to": "+15550000000"}
    post_events(client, event)
    post_events(client, {**event, "id": "in2", "type": "call.ringing"})
    assert Call.objects.count() == 0
    rejected = RejectedInboundCall.objects.get()
    assert rejected.provider_call_id == "mock-inbound-1"
    assert rejected.hangup_attempted is True


def test_allow_listed_inbound_caller_is_greeted(client, configure):
    configure(inboundPolicy="allowlist", allowFrom=["+15557770000"], inboundGreeting="Hi there")
    post_events(client, {"id": "i1", "type": "call.initiated", "callId": "mock-in-2", "direction": "inbound",
                         "from": "+1 (555) 777-0000", "to": "+15550000000"})
    post_events(client, {"id": "i2", "type": "call.answered", "callId": "mock-in-2"})
    call = Call.objects.get(provider_call_id="mock-in-2")
    assert call.direction == "inbound" and call.mode == "conversation"
    assert call.state == "listening"
    assert list(call.transcript.values_list("text", flat=True)) == ["Hi there"]
