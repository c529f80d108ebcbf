"""The operator console in admin: placing a call, the live page's data and controls, the dashboard,
and the live page's WebSocket (staff only)."""

from __future__ import annotations

import json
import time

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.urls import reverse
from django.utils import timezone

from calls import services
from calls.interfaces import console
from calls.models import Call, ContinueOperation, TranscriptEntry
from calls.services import operations
from tests.factories import AnsweredCallFactory, CallFactory, TranscriptEntryFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def staff(admin_client):
    return admin_client


def post_json(client, url, body):
    return client.post(url, data=json.dumps(body), content_type="application/json")


def test_place_a_call_from_the_form_lands_on_its_live_page(staff):
    response = staff.post(reverse("admin:calls_call_add"), {"to": "+15550001111", "message": "Hello there",
                                                           "mode": "conversation"})
    call = Call.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("admin:calls_call_change", args=[call.id])
    assert (call.to_number, call.initial_message, call.mode, call.direction) == (
        "+15550001111", "Hello there", "conversation", "outbound")
    page = staff.get(response["Location"]).content.decode()
    assert 'id="vc-speak"' in page and "End call" in page and "Send DTMF" in page


@pytest.mark.parametrize(("fields", "error"), [
    ({"to": "12345", "message": "Hi", "mode": "notify"}, "to must be an E.164 number like +15551234567"),
    ({"to": "+15550001111", "message": "", "mode": "notify"}, "This field is required."),
])
def test_place_form_shows_validation_errors_and_places_nothing(staff, fields, error):
    response = staff.post(reverse("admin:calls_call_add"), fields)
    assert response.status_code == 200 and error in response.content.decode()
    assert not Call.objects.exists()


def test_place_form_reports_the_concurrency_limit(staff, configure):
    configure(maxConcurrentCalls=1)
    AnsweredCallFactory()
    response = staff.post(reverse("admin:calls_call_add"), {"to": "+15550001111", "message": "Hi", "mode": "notify"})
    assert "Maximum concurrent calls (1) reached" in response.content.decode()
    assert Call.objects.count() == 1


def test_live_json_has_state_transcript_with_interruptions_and_events(staff):
    call = AnsweredCallFactory()
    TranscriptEntryFactory(call=call, speaker="bot", text="Let me explain", interrupted=True, latency_ms=None)
    TranscriptEntryFactory(call=call, speaker="user", text="Stop", latency_ms=420)
    state = staff.get(reverse("admin:calls_call_live", args=[call.id])).json()
    assert state["state"] == "listening" and state["terminal"] is False
    assert [(line["speaker"], line["text"], line["interrupted"], line["latencyMs"]) for line in state["transcript"]] == [
        ("bot", "Let me explain", True, None), ("user", "Stop", False, 420)]


def test_controls_speak_dtmf_and_end_through_services(staff):
    call = AnsweredCallFactory()
    url = reverse("admin:calls_call_control", args=[call.id])
    assert post_json(staff, url, {"action": "speak", "message": "One moment"}).json() == {"success": True}
    assert post_json(staff, url, {"action": "dtmf", "digits": "12#"}).json() == {"success": True}
    bad = post_json(staff, url, {"action": "dtmf", "digits": "x"})
    assert bad.status_code == 400 and bad.json() == {"error": services.INVALID_DIGITS}
    assert post_json(staff, url, {"action": "end"}).json() == {"success": True}
    assert Call.objects.get(id=call.id).state == "hangup-bot"
    ended = post_json(staff, url, {"action": "speak", "message": "Too late"})
    assert ended.json() == {"error": services.CALL_HAS_ENDED}
    assert list(TranscriptEntry.objects.filter(call=call).values_list("text", flat=True)) == ["One moment"]


def test_continue_control_starts_a_turn_whose_reply_is_polled(staff, monkeypatch):
    call = AnsweredCallFactory()
    monkeypatch.setattr(operations, "start_continue",
                        lambda **kw: ContinueOperation.objects.create(call_ref=kw["call_id"], message=kw["message"],
                                                                      poll_timeout_ms=1000,
                                                                      deadline_at=timezone.now()))
    started = post_json(staff, reverse("admin:calls_call_control", args=[call.id]), {"action": "continue",
                                                                                   "message": "Does five work?"})
    operation_id = started.json()["operationId"]
    ContinueOperation.objects.filter(id=operation_id).update(status="completed", transcript="Five is fine")
    result = staff.get(reverse("admin:calls_call_continue_result", args=[call.id, operation_id])).json()
    assert result["result"] == {"success": True, "transcript": "Five is fine"}


def test_control_refuses_unknown_actions_and_anonymous_users(client, staff):
    call = AnsweredCallFactory()
    url = reverse("admin:calls_call_control", args=[call.id])
    assert post_json(staff, url, {"action": "dial_again"}).status_code == 400
    anonymous = post_json(client, url, {"action": "end"})
    assert anonymous.status_code == 302 and "/login/" in anonymous["Location"]  # admin's login
    assert not Call.objects.get(id=call.id).is_terminal


def test_dashboard_counts_active_calls_outcomes_answer_rate_and_latency(staff):
    AnsweredCallFactory(metadata={"turnLatenciesMs": [400, 800]})
    CallFactory(state="completed", provider_call_id="mock-1", answered_at=timezone.now())
    CallFactory(state="no-answer", provider_call_id="mock-2")
    data = console.dashboard_data()
    assert data["active"] == 1 and data["answered"] == 1 and data["outboundEnded"] == 2
    assert data["answerRate"] == 0.5 and data["turnLatency"] == {"p50": 400, "p95": 800, "count": 2}
    today = timezone.now().date().isoformat()
    assert data["perDay"][today] == {"live": 1, "completed": 1, "no-answer": 1}
    page = staff.get(reverse("admin:calls_call_changelist")).content.decode()
    assert "Place a call" in page and page.count('class="vc-chart"') == 3 and 'class="vc-bar"' in page


# --- the live page's WebSocket ---------------------------------------------------------------------


def _connect(call, user=None):
    from channels.auth import AuthMiddlewareStack
    from channels.routing import URLRouter
    from django.contrib.auth.models import AnonymousUser
    from django.urls import path

    from calls.interfaces.live import LiveCallConsumer

    class FixedUser:
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            return await self.app({**scope, "user": user or AnonymousUser()}, receive, send)

    app = FixedUser(URLRouter([path("admin/calls/call/<uuid:call_id>/live/ws", LiveCallConsumer.as_asgi())]))
    assert AuthMiddlewareStack  # the production route wraps the consumer in the session stack (asgi.py)
    return WebsocketCommunicator(app, f"/admin/calls/call/{call.id}/live/ws")


def test_live_socket_refuses_anonymous_and_non_staff_users(django_user_model):
    call = AnsweredCallFactory()

    async def refused(user) -> bool:
        communicator = _connect(call, user)
        connected, _ = await communicator.connect()
        await communicator.disconnect()  # the consumer finishes; nothing is left running
        return connected

    for user in (None, django_user_model.objects.create_user("visitor", password="pw")):
        assert async_to_sync(refused)(user) is False


def test_live_socket_sends_the_state_and_every_change(django_user_model):
    operator = django_user_model.objects.create_user("operator", password="pw", is_staff=True)
    call = AnsweredCallFactory()

    async def scenario():
        communicator = _connect(call, operator)
        connected, _ = await communicator.connect()
        assert connected
        first = await communicator.receive_json_from(timeout=10)
        assert first["state"] == "listening" and first["transcript"] == []
        from channels.db import database_sync_to_async

        await database_sync_to_async(services.speak)(str(call.id), "Hello from the console")
        deadline = time.monotonic() + 20
        while True:
            update = await communicator.receive_json_from(timeout=10)
            if update["transcript"] or time.monotonic() > deadline:
                break
        await communicator.disconnect()
        return update

    update = async_to_sync(scenario)()
    assert [line["text"] for line in update["transcript"]] == ["Hello from the console"]
