"""The whole embedded stack: daphne + a real Celery worker + the CLI, on the mock carrier's scripted
callee. This is what `make run` + `voicecall call` shows a newcomer."""

import json
import threading

import pytest
import requests
from django.db import connections

from calls import services
from calls.models import Call, TranscriptEntry
from tests.conftest import run_cli, wait_until
from tests.factories import AnsweredCallFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CALLEE = {"autoAnswer": True, "answerAfterMs": 100, "replyAfterMs": 100,
          "replies": ["Yes, that works for me.", "Thanks, that is all.", "Goodbye."]}


@pytest.mark.real_worker
def test_notify_and_conversation_calls_through_cli_worker_and_daphne(tmp_path, start_daphne, start_worker):
    start_daphne({"provider": "mock", "mock": CALLEE, "maxConcurrentCalls": 5,
                  "outbound": {"notifyHangupDelaySec": 0}})
    config_path = tmp_path / "voicecall.json5"
    start_worker(config_path)

    placed = run_cli(config_path, "call", "--to", "+15550001111", "--message", "Hi", "--mode", "notify", "--json")
    assert placed.returncode == 0, placed.stderr
    call_id = json.loads(placed.stdout)["callId"]
    wait_until(lambda: Call.objects.get(id=call_id).state == "completed")
    status = run_cli(config_path, "status", "--call-id", call_id, "--json")
    shown = json.loads(status.stdout)
    assert shown["found"] is True
    assert shown["call"]["state"] == "completed" and shown["call"]["endReason"] == "completed"
    assert [(t["speaker"], t["text"]) for t in shown["call"]["transcript"]] == [("bot", "Hi")]

    placed = run_cli(config_path, "call", "--to", "+15550002222", "--message", "Can we meet at five?",
                     "--mode", "conversation", "--json")
    call_id = json.loads(placed.stdout)["callId"]
    # The callee answers the greeting first; wait for that so the turn below is unambiguous.
    wait_until(lambda: TranscriptEntry.objects.filter(call_id=call_id, speaker="user").exists())
    turn = run_cli(config_path, "continue", "--call-id", call_id, "--message", "Does five work?", "--json")
    assert turn.returncode == 0, turn.stderr
    assert json.loads(turn.stdout) == {"success": True, "transcript": "Thanks, that is all."}
    call = Call.objects.get(id=call_id)
    assert call.metadata["turnCount"] == 1 and isinstance(call.metadata["lastTurnLatencyMs"], int)
    assert run_cli(config_path, "end", "--call-id", call_id, "--json").returncode == 0
    assert Call.objects.get(id=call_id).state == "hangup-bot"


def test_continue_returns_a_reply_applied_by_another_process(start_daphne, configure):
    """The waiter is this test process; the caller's reply is applied by the daphne process."""
    server = start_daphne({"provider": "mock", "mock": {"autoAnswer": False}})
    configure(serve={"port": server.port})
    call = AnsweredCallFactory()
    result: dict = {}

    def wait_for_reply():
        try:
            result["transcript"] = services.continue_call(str(call.id), "What time?", timeout_ms=20000)
        except services.ServiceError as exc:  # surfaced by the assertion below
            result["error"] = str(exc)
        finally:
            connections.close_all()

    waiter = threading.Thread(target=wait_for_reply)
    waiter.start()
    token = wait_until(lambda: Call.objects.get(id=call.id).pending_turn_token)
    response = requests.post(f"{server.base_url}/voice/webhook", timeout=10, json={"event": {
        "id": "reply-1", "type": "call.speech", "callId": str(call.id), "transcript": "At noon", "turnToken": token}})
    assert response.status_code == 200
    waiter.join(timeout=30)
    assert result == {"transcript": "At noon"}
    assert Call.objects.get(id=call.id).pending_turn_token == ""


def test_continue_fails_when_the_call_ends_while_waiting(start_daphne, configure):
    server = start_daphne({"provider": "mock", "mock": {"autoAnswer": False}})
    configure(serve={"port": server.port})
    call = AnsweredCallFactory()
    result: dict = {}

    def wait_for_reply():
        try:
            services.continue_call(str(call.id), "Hello?", timeout_ms=20000)
        except services.ServiceError as exc:
            result["error"] = str(exc)
        finally:
            connections.close_all()

    waiter = threading.Thread(target=wait_for_reply)
    waiter.start()
    wait_until(lambda: Call.objects.get(id=call.id).pending_turn_token)
    requests.post(f"{server.base_url}/voice/webhook", timeout=10, json={"event": {
        "id": "end-1", "type": "call.ended", "callId": str(call.id), "reason": "hangup-user"}})
    waiter.join(timeout=30)
    assert result == {"error": "Call ended: hangup-user"}
