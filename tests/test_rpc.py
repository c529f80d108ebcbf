"""JSON-RPC 2.0 at POST /rpc: auth, every method, bad params, batches, and the polling continue.

Replies from "the caller" are mock carrier speech events posted to the real webhook endpoint.
"""

from __future__ import annotations

import json
import stat
import threading
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection, connections, transaction
from django.test import Client
from django.utils import timezone

from calls import services
from calls.models import Call, ContinueOperation, TranscriptEntry
from calls.services import operations as continue_operations
from tests.factories import AnsweredCallFactory
from tests.fakes.polling import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "test-rpc-token-0123456789"
WEBHOOK = "/voice/webhook"


@pytest.fixture(autouse=True)
def rpc_config(configure):
    return configure(rpc={"token": TOKEN}, transcriptTimeoutMs=20000)


def rpc_post(client, body, *, token: str | None = TOKEN):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token is not None else {}
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return client.post("/rpc", data=data, content_type="application/json", **headers)


def rpc(client, method, params=None, *, request_id=1):
    response = rpc_post(client, {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}})
    assert response.status_code == 200
    document = response.json()
    assert document["jsonrpc"] == "2.0" and document["id"] == request_id
    return document


def say(client, call, text, event_id):
    """The caller speaks: a final mock speech event through the webhook."""
    body = {"events": [{"id": event_id, "type": "call.speech", "callId": str(call.id), "transcript": text,
                        "isFinal": True}]}
    assert client.post(WEBHOOK, data=json.dumps(body), content_type="application/json").status_code == 200


def wait_for(predicate, timeout=10.0, what="condition"):
    return wait_until(predicate, timeout, what=what)


def pending_turn(call):
    return wait_for(lambda: Call.objects.get(id=call.id).pending_turn_token, what="the turn to start listening")


# ------------------------------------------------------------------------------------------------
# Auth and HTTP
# ------------------------------------------------------------------------------------------------


def test_request_without_token_is_401_and_places_no_call(client):
    body = {"jsonrpc": "2.0", "id": 1, "method": "voicecall.initiate",
            "params": {"to": "+15550001111", "message": "hi"}}
    response = rpc_post(client, body, token=None)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert Call.objects.count() == 0


def test_request_with_wrong_token_is_401_and_places_no_call(client):
    body = {"jsonrpc": "2.0", "id": 1, "method": "voicecall.initiate",
            "params": {"to": "+15550001111", "message": "hi"}}
    assert rpc_post(client, body, token=TOKEN + "x").status_code == 401
    assert rpc_post(client, body, token="").status_code == 401
    response = client.post("/rpc", data=json.dumps(body), content_type="application/json",
                           HTTP_AUTHORIZATION=f"Basic {TOKEN}")
    assert response.status_code == 401
    assert Call.objects.count() == 0
    assert TOKEN not in response.content.decode()


def test_get_is_not_allowed(client):
    assert client.get("/rpc", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 405


def test_csrf_is_not_required():
    strict = Client(enforce_csrf_checks=True)
    assert rpc_post(strict, {"jsonrpc": "2.0", "id": 1, "method": "voicecall.status"}).status_code == 200


def test_token_from_environment_is_accepted(client, configure, monkeypatch):
    configure(rpc={})
    monkeypatch.setenv("VOICECALL_RPC_TOKEN", "env-token-abc")
    ok = rpc_post(client, {"jsonrpc": "2.0", "id": 1, "method": "voicecall.status"}, token="env-token-abc")
    assert ok.status_code == 200
    assert rpc_post(client, {"jsonrpc": "2.0", "id": 1, "method": "voicecall.status"}).status_code == 401


def test_token_is_generated_once_into_var_with_mode_600(client, configure, settings, tmp_path, monkeypatch):
    configure(rpc={})
    monkeypatch.delenv("VOICECALL_RPC_TOKEN", raising=False)
    settings.VAR_DIR = tmp_path
    assert rpc_post(client, {"jsonrpc": "2.0", "id": 1, "method": "voicecall.status"}, token="guess").status_code == 401
    token_file = tmp_path / "rpc-token"
    token = token_file.read_text().strip()
    assert len(token) >= 32
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert rpc_post(client, {"jsonrpc": "2.0", "id": 1, "method": "voicecall.status"}, token=token).status_code == 200
    assert token_file.read_text().strip() == token  # not regenerated


def test_ensure_admin_says_where_the_token_is_without_printing_it(configure, settings, tmp_path, monkeypatch, capsys):
    configure(rpc={})
    monkeypatch.delenv("VOICECALL_RPC_TOKEN", raising=False)
    settings.VAR_DIR = tmp_path
    call_command("ensure_admin")
    out = capsys.readouterr().out
    token = (tmp_path / "rpc-token").read_text().strip()
    assert "RPC token (for /rpc and /tools/voice_call" in out
    assert str(tmp_path / "rpc-token") in out
    assert token not in out


# ------------------------------------------------------------------------------------------------
# JSON-RPC envelope
# ------------------------------------------------------------------------------------------------


def test_unparseable_body_is_a_parse_error(client):
    response = rpc_post(client, b"{not json")
    assert response.status_code == 200
    assert response.json() == {"jsonrpc": "2.0", "id": None,
                               "error": {"code": -32700, "message": "Parse error: body is not valid JSON"}}


@pytest.mark.parametrize("body", [
    {"id": 1, "method": "voicecall.status"},                      # no jsonrpc member
    {"jsonrpc": "1.0", "id": 1, "method": "voicecall.status"},    # wrong version
    {"jsonrpc": "2.0", "id": 1, "method": 42},                    # method not a string
    '"just a string"',                                          # valid JSON, not an object
])
def test_malformed_request_is_an_invalid_request(client, body):
    document = rpc_post(client, body).json()
    assert document["error"]["code"] == -32600


def test_unknown_method_is_method_not_found(client):
    document = rpc(client, "voicecall.explode")
    assert document["error"] == {"code": -32601, "message": "Method not found: voicecall.explode"}


def test_positional_params_are_invalid_params(client):
    response = rpc_post(client, {"jsonrpc": "2.0", "id": 7, "method": "voicecall.end", "params": ["abc"]})
    assert response.json()["error"]["code"] == -32602


def test_non_string_param_is_invalid_params(client):
    document = rpc(client, "voicecall.speak", {"callId": 5, "message": "hi"})
    assert document["error"] == {"code": -32602, "message": "callId must be a string"}


@pytest.mark.parametrize(("method", "params", "message"), [
    ("voicecall.initiate", {"to": "+15550001111"}, "message required"),
    ("voicecall.initiate", {"message": "hello"}, "to required"),
    ("voicecall.start", {"message": "hello"}, "to required"),
    ("voicecall.continue", {"callId": "x"}, "callId and message required"),
    ("voicecall.continue.start", {"message": "hi"}, "callId and message required"),
    ("voicecall.continue.result", {}, "operationId required"),
    ("voicecall.speak", {"callId": "x", "message": "   "}, "callId and message required"),
    ("voicecall.dtmf", {"callId": "x"}, "callId and digits required"),
    ("voicecall.end", {}, "callId required"),
])
def test_missing_params_are_invalid_params_with_clear_messages(client, method, params, message):
    document = rpc(client, method, params)
    assert document["error"] == {"code": -32602, "message": message}
    assert Call.objects.count() == 0


def test_service_error_is_returned_verbatim_with_the_application_code(client):
    document = rpc(client, "voicecall.initiate", {"to": "5550001111", "message": "hi"})
    expected = services.INVALID_NUMBER.format(field="to")
    assert document["error"] == {"code": -32000, "message": expected, "data": {"error": expected}}


def test_unexpected_exception_is_an_internal_error_without_details(client, monkeypatch):
    def boom(call_id=None):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(services, "get_status", boom)
    document = rpc(client, "voicecall.status", {"callId": "x"})
    assert document["error"] == {"code": -32603, "message": "Internal error"}


def test_batch_answers_each_request_and_skips_notifications(client):
    call = AnsweredCallFactory()
    body = [
        {"jsonrpc": "2.0", "id": "a", "method": "voicecall.status", "params": {"callId": str(call.id)}},
        {"jsonrpc": "2.0", "id": "b", "method": "voicecall.nope"},
        {"jsonrpc": "2.0", "method": "voicecall.speak", "params": {"callId": str(call.id), "message": "note"}},
        {"jsonrpc": "2.0", "id": "c", "method": "voicecall.end", "params": {}},
        17,
    ]
    responses = rpc_post(client, body).json()
    assert [r["id"] for r in responses] == ["a", "b", "c", None]
    assert responses[0]["result"]["found"] is True
    assert responses[1]["error"]["code"] == -32601
    assert responses[2]["error"] == {"code": -32602, "message": "callId required"}
    assert responses[3]["error"]["code"] == -32600
    # the notification ran although nobody was told
    assert list(TranscriptEntry.objects.filter(call=call).values_list("text", flat=True)) == ["note"]


def test_empty_batch_is_an_invalid_request(client):
    assert rpc_post(client, []).json()["error"]["code"] == -32600


def test_batch_of_notifications_gets_no_body(client):
    call = AnsweredCallFactory()
    response = rpc_post(client, [{"jsonrpc": "2.0", "method": "voicecall.end", "params": {"callId": str(call.id)}}])
    assert response.status_code == 204 and response.content == b""
    assert Call.objects.get(id=call.id).state == "hangup-bot"


# ------------------------------------------------------------------------------------------------
# Methods
# ------------------------------------------------------------------------------------------------


def test_initiate_queues_and_places_the_call(client):
    document = rpc(client, "voicecall.initiate", {"to": " +15550001111 ", "message": "Your table is ready",
                                                  "mode": "notify"})
    result = document["result"]
    assert result["initiated"] is True
    call = Call.objects.get(id=result["callId"])
    assert (call.to_number, call.mode, call.initial_message) == ("+15550001111", "notify", "Your table is ready")
    assert call.provider_call_id == f"mock-{call.id}"


def test_initiate_defaults_to_the_configured_number(client, configure):
    configure(rpc={"token": TOKEN}, toNumber="+15550002222")
    result = rpc(client, "voicecall.initiate", {"message": "hi"})["result"]
    assert Call.objects.get(id=result["callId"]).to_number == "+15550002222"


def test_start_needs_only_a_number(client):
    result = rpc(client, "voicecall.start", {"to": "+15550003333", "mode": "conversation"})["result"]
    call = Call.objects.get(id=result["callId"])
    assert result["initiated"] is True
    assert (call.mode, call.initial_message) == ("conversation", "")


def test_concurrency_limit_is_reported_as_a_service_error(client):
    AnsweredCallFactory()
    document = rpc(client, "voicecall.start", {"to": "+15550003333"})
    assert document["error"]["message"] == "Maximum concurrent calls (1) reached"


def test_speak_says_the_message_on_the_call(client):
    call = AnsweredCallFactory()
    assert rpc(client, "voicecall.speak", {"callId": str(call.id), "message": "One moment"})["result"] == {"success": True}
    assert list(call.transcript.values_list("speaker", "text")) == [("bot", "One moment")]


def test_speak_on_unknown_call_is_call_not_found(client):
    document = rpc(client, "voicecall.speak", {"callId": "nope", "message": "hi"})
    assert document["error"]["message"] == services.CALL_NOT_FOUND


def test_dtmf_sends_digits_and_validates_them(client):
    call = AnsweredCallFactory()
    assert rpc(client, "voicecall.dtmf", {"callId": str(call.id), "digits": "12#w3"})["result"] == {"success": True}
    document = rpc(client, "voicecall.dtmf", {"callId": str(call.id), "digits": "12x"})
    assert document["error"]["message"] == services.INVALID_DIGITS


def test_end_hangs_up_by_carrier_id_too(client):
    call = AnsweredCallFactory()
    assert rpc(client, "voicecall.end", {"callId": call.provider_call_id})["result"] == {"success": True}
    call.refresh_from_db()
    assert (call.state, call.end_reason) == ("hangup-bot", "hangup-bot")


def test_status_finds_calls_by_either_id_and_lists_live_calls(client):
    call = AnsweredCallFactory()
    by_ours = rpc(client, "voicecall.status", {"callId": str(call.id)})["result"]
    assert by_ours["found"] is True and by_ours["call"]["callId"] == str(call.id)
    by_sid = rpc(client, "voicecall.status", {"sid": call.provider_call_id})["result"]
    assert by_sid["call"]["state"] == "listening"
    assert rpc(client, "voicecall.status", {"callId": "unknown"})["result"] == {"found": False}
    listing = rpc(client, "voicecall.status")["result"]
    assert [c["callId"] for c in listing["calls"]] == [str(call.id)]


def row_lock_is_free(call):
    def check() -> bool:
        try:
            with transaction.atomic():
                Call.objects.select_for_update(nowait=True).get(id=call.id)
        except DatabaseError:
            return False
        return True

    return check


def idle_in_transaction() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND state LIKE 'idle in transaction%%'")
        return cursor.fetchone()[0]


def test_blocking_continue_returns_the_callers_reply_without_holding_a_transaction(client):
    call = AnsweredCallFactory()
    outcome = {}

    def run():
        try:
            outcome["document"] = rpc(Client(), "voicecall.continue", {"callId": str(call.id), "message": "Tuesday?"})
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    pending_turn(call)
    # While it waits, the call row is not locked and no connection sits in an open transaction. (The
    # turn's short transactions -- the prompt being spoken -- may still be running right after the
    # turn is pending, so these are waited for; a transaction held through the wait never ends.)
    wait_for(row_lock_is_free(call), what="the call row unlocked")
    if connection.vendor == "postgresql":
        wait_for(lambda: idle_in_transaction() == 0, what="no session idle in a transaction")
    assert thread.is_alive()  # still waiting for the reply
    say(client, call, "Tuesday works", "reply-1")
    thread.join(timeout=15)
    assert not thread.is_alive()
    assert outcome["document"]["result"] == {"success": True, "transcript": "Tuesday works"}
    call.refresh_from_db()
    assert call.metadata["turnCount"] == 1


def test_polled_continue_completes_once_and_is_then_forgotten(client):
    call = AnsweredCallFactory()
    started = rpc(client, "voicecall.continue.start", {"callId": str(call.id), "message": "Shall I book it?"})["result"]
    assert started["status"] == "pending"
    assert started["pollTimeoutMs"] == 20000 + 8000 + 30000
    operation_id = started["operationId"]
    pending_turn(call)
    assert rpc(client, "voicecall.continue.result", {"operationId": operation_id})["result"] == started
    say(client, call, "Yes please", "reply-2")
    result = wait_for(
        lambda: (r := rpc(client, "voicecall.continue.result", {"operationId": operation_id})["result"])["status"]
        != "pending" and r,
        what="the operation to finish",
    )
    assert result == {"operationId": operation_id, "status": "completed",
                      "result": {"success": True, "transcript": "Yes please"}}
    again = rpc(client, "voicecall.continue.result", {"operationId": operation_id})
    assert again["error"]["message"] == continue_operations.OPERATION_NOT_FOUND
    assert ContinueOperation.objects.count() == 0


def test_polled_continue_on_a_call_that_does_not_exist_fails_with_the_service_message(client):
    started = rpc(client, "voicecall.continue.start", {"callId": "ghost", "message": "hello?"})["result"]
    result = wait_for(
        lambda: (r := rpc(client, "voicecall.continue.result", {"operationId": started["operationId"]})["result"])
        ["status"] != "pending" and r,
        what="the operation to fail",
    )
    assert result == {"operationId": started["operationId"], "status": "failed", "error": services.CALL_NOT_FOUND}


def test_polled_continue_reports_the_call_ending_while_waiting(client):
    call = AnsweredCallFactory()
    started = rpc(client, "voicecall.continue.start", {"callId": str(call.id), "message": "Hello?"})["result"]
    pending_turn(call)
    body = {"events": [{"id": "end-1", "type": "call.ended", "callId": str(call.id), "reason": "hangup-user"}]}
    client.post(WEBHOOK, data=json.dumps(body), content_type="application/json")
    result = wait_for(
        lambda: (r := rpc(client, "voicecall.continue.result", {"operationId": started["operationId"]})["result"])
        ["status"] != "pending" and r,
        what="the operation to fail",
    )
    assert result["status"] == "failed"
    assert result["error"] == services.CALL_ENDED_WHILE_WAITING.format(reason="hangup-user")


def test_unknown_or_malformed_operation_id_is_not_found(client):
    for operation_id in ("not-a-uuid", "6f1c1d9e-93c4-4f7e-9d0c-2b1c7f1f0a11"):
        document = rpc(client, "voicecall.continue.result", {"operationId": operation_id})
        assert document["error"] == {"code": -32000, "message": "operation not found",
                                     "data": {"error": "operation not found"}}


def test_finished_operations_are_deleted_five_minutes_after_completion(client):
    old = timezone.now() - timedelta(minutes=6)
    stale = ContinueOperation.objects.create(call_ref="x", message="m", status="completed", transcript="t",
                                             poll_timeout_ms=1000, deadline_at=old, completed_at=old)
    fresh = ContinueOperation.objects.create(call_ref="x", message="m", status="completed", transcript="t",
                                             poll_timeout_ms=1000, deadline_at=old,
                                             completed_at=timezone.now() - timedelta(minutes=4))
    document = rpc(client, "voicecall.continue.result", {"operationId": str(stale.id)})
    assert document["error"]["message"] == "operation not found"
    assert list(ContinueOperation.objects.values_list("id", flat=True)) == [fresh.id]


def test_pending_operation_past_its_deadline_is_reported_lost(client):
    lost = ContinueOperation.objects.create(call_ref="x", message="m", poll_timeout_ms=1000,
                                            deadline_at=timezone.now() - timedelta(seconds=1))
    result = rpc(client, "voicecall.continue.result", {"operationId": str(lost.id)})["result"]
    assert result == {"operationId": str(lost.id), "status": "failed", "error": continue_operations.OPERATION_LOST}
    assert not ContinueOperation.objects.exists()


@pytest.mark.slow
def test_polled_continue_started_on_one_server_process_is_answered_by_another(start_daphne, tmp_path):
    import requests

    document = {"provider": "mock", "mock": {"autoAnswer": False}, "rpc": {"token": TOKEN},
                "transcriptTimeoutMs": 20000}
    env = {"VOICECALL_CELERY_EAGER": "1", "VOICECALL_VAR_DIR": str(tmp_path)}
    first, second = start_daphne(document, extra_env=env), start_daphne(document, extra_env=env)
    call = AnsweredCallFactory()

    def remote(server, method, params):
        response = requests.post(f"{server.base_url}/rpc", timeout=10, headers={"Authorization": f"Bearer {TOKEN}"},
                                 json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        return response.json()["result"]

    started = remote(first, "voicecall.continue.start", {"callId": str(call.id), "message": "Still there?"})
    pending_turn(call)
    assert remote(second, "voicecall.continue.result", {"operationId": started["operationId"]})["status"] == "pending"
    speech = {"events": [{"id": "x-1", "type": "call.speech", "callId": str(call.id), "transcript": "I am",
                          "isFinal": True}]}
    assert requests.post(f"{second.base_url}{WEBHOOK}", json=speech, timeout=10).status_code == 200
    result = wait_for(
        lambda: (r := remote(second, "voicecall.continue.result", {"operationId": started["operationId"]}))
        ["status"] != "pending" and r,
        what="the operation to finish",
    )
    assert result["result"] == {"success": True, "transcript": "I am"}
