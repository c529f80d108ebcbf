"""The voice_call agent tool: the Python function, POST /tools/voice_call, its schema and SKILL.md."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connections
from django.test import Client

from calls import services
from calls.config import PROVIDER_ENV_FALLBACKS
from calls.interfaces import tool
from calls.models import Call
from tests.factories import AnsweredCallFactory

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "tool-token-9876543210"
SKILL = Path(__file__).resolve().parent.parent / "skills" / "voice-call" / "SKILL.md"


@pytest.fixture(autouse=True)
def tool_config(configure):
    return configure(rpc={"token": TOKEN}, transcriptTimeoutMs=20000)


def post_tool(client, arguments, *, token: str | None = TOKEN):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token is not None else {}
    data = arguments if isinstance(arguments, bytes) else json.dumps(arguments)
    return client.post("/tools/voice_call", data=data, content_type="application/json", **headers)


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.02)
    raise AssertionError("timed out")


# ------------------------------------------------------------------------------------------------
# The function
# ------------------------------------------------------------------------------------------------


def test_initiate_call_places_a_call():
    result = tool.voice_call({"action": "initiate_call", "to": " +15550001111 ", "message": " Hello ",
                              "mode": "conversation"})
    assert result["initiated"] is True
    call = Call.objects.get(id=result["callId"])
    assert (call.to_number, call.initial_message, call.mode) == ("+15550001111", "Hello", "conversation")
    assert call.provider_call_id == f"mock-{call.id}"


def test_initiate_call_uses_the_configured_number(configure):
    configure(rpc={"token": TOKEN}, toNumber="+15550002222")
    result = tool.voice_call({"action": "initiate_call", "message": "hi"})
    assert Call.objects.get(id=result["callId"]).to_number == "+15550002222"


@pytest.mark.parametrize(("arguments", "error"), [
    ({"action": "initiate_call", "to": "+15550001111"}, "message required"),
    ({"action": "initiate_call", "message": "hi"}, "to required"),
    ({"action": "continue_call", "callId": "x"}, "callId and message required"),
    ({"action": "speak_to_user", "message": "hi"}, "callId and message required"),
    ({"action": "send_dtmf", "callId": "x"}, "callId and digits required"),
    ({"action": "end_call"}, "callId required"),
    ({"action": "get_status", "callId": "  "}, "callId required"),
    ({"mode": "status"}, "sid required for status"),
    ({"mode": "call", "message": "hi"}, "to required for call"),
    ({"message": "hi"}, "to required for call"),
    ({"mode": "notify"}, tool.LEGACY_MODE_INVALID),
    ({"action": "fly"}, "unknown action: fly (expected one of initiate_call, continue_call, speak_to_user, "
                        "send_dtmf, end_call, get_status)"),
    ({"action": "end_call", "callId": 7}, "callId must be a string"),
    ({"action": "end_call", "callID": "x"}, "unknown argument(s): callID (allowed: action, callId, message, to, "
                                            "mode, digits, sid)"),
    ({"action": "initiate_call", "to": "555", "message": "hi"}, "to must be an E.164 number like +15551234567"),
    ({"action": "initiate_call", "to": "+15550001111", "message": "hi", "mode": "chat"},
     "mode must be notify or conversation"),
])
def test_bad_arguments_come_back_as_error_objects(arguments, error):
    assert tool.voice_call(arguments) == {"error": error}
    assert Call.objects.count() == 0


def test_arguments_that_are_not_an_object_are_an_error():
    assert tool.voice_call(["initiate_call"]) == {"error": tool.ARGUMENTS_NOT_OBJECT}


def test_unexpected_exceptions_become_an_error_object_and_are_logged(monkeypatch, caplog):
    def boom(call_id):
        raise RuntimeError("database exploded")

    monkeypatch.setattr(services, "get_status", boom)
    result = tool.voice_call({"action": "get_status", "callId": "x"})
    assert result == {"error": tool.UNEXPECTED_ERROR}
    assert "database exploded" in caplog.text


def test_speak_dtmf_status_and_end_on_a_live_call():
    call = AnsweredCallFactory()
    call_id = str(call.id)
    assert tool.voice_call({"action": "speak_to_user", "callId": call_id, "message": "Hold on"}) == {"success": True}
    assert tool.voice_call({"action": "send_dtmf", "callId": call_id, "digits": "1#"}) == {"success": True}
    status = tool.voice_call({"action": "get_status", "callId": call.provider_call_id})
    assert status["found"] is True
    assert [e["text"] for e in status["call"]["transcript"]] == ["Hold on"]
    assert tool.voice_call({"action": "end_call", "callId": call_id}) == {"success": True}
    assert tool.voice_call({"action": "speak_to_user", "callId": call_id, "message": "hi"}) == {
        "error": services.CALL_HAS_ENDED}
    assert tool.voice_call({"action": "get_status", "callId": "nobody"}) == {"found": False}


def test_legacy_form_places_calls_and_looks_them_up():
    placed = tool.voice_call({"to": "+15550004444", "message": "Legacy hello"})
    assert placed["initiated"] is True
    status = tool.voice_call({"mode": "status", "sid": placed["callId"]})
    assert status["found"] is True and status["call"]["to"] == "+15550004444"


def test_continue_call_returns_what_the_caller_said(client):
    call = AnsweredCallFactory()
    outcome = {}

    def run():
        try:
            outcome["result"] = tool.voice_call({"action": "continue_call", "callId": str(call.id),
                                                 "message": "Which day suits you?"})
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    wait_for(lambda: Call.objects.get(id=call.id).pending_turn_token)
    body = {"events": [{"id": "r1", "type": "call.speech", "callId": str(call.id), "transcript": "Friday",
                        "isFinal": True}]}
    client.post("/voice/webhook", data=json.dumps(body), content_type="application/json")
    thread.join(timeout=15)
    assert outcome["result"] == {"success": True, "transcript": "Friday"}


# ------------------------------------------------------------------------------------------------
# HTTP
# ------------------------------------------------------------------------------------------------


def test_http_tool_needs_the_token_and_does_nothing_without_it(client):
    arguments = {"action": "initiate_call", "to": "+15550001111", "message": "hi"}
    assert post_tool(client, arguments, token=None).status_code == 401
    assert post_tool(client, arguments, token="wrong").status_code == 401
    assert Call.objects.count() == 0


def test_http_tool_runs_actions_and_returns_errors_as_json(client):
    response = post_tool(client, {"action": "initiate_call", "to": "+15550001111", "message": "hi"})
    assert response.status_code == 200
    call_id = response.json()["callId"]
    assert Call.objects.filter(id=call_id).exists()
    status = post_tool(client, {"action": "get_status", "callId": call_id}).json()
    assert status["call"]["callId"] == call_id
    error = post_tool(client, {"action": "end_call"})
    assert (error.status_code, error.json()) == (200, {"error": "callId required"})


def test_http_tool_rejects_bodies_that_are_not_json_objects(client):
    assert post_tool(client, b"{oops").json() == {"error": "body is not valid JSON"}
    response = post_tool(client, [1, 2])
    assert (response.status_code, response.json()) == (400, {"error": tool.ARGUMENTS_NOT_OBJECT})


def test_http_tool_never_answers_500(client, monkeypatch):
    monkeypatch.setattr(services, "end_call", lambda call_id: 1 / 0)
    response = post_tool(client, {"action": "end_call", "callId": "x"})
    assert (response.status_code, response.json()) == (200, {"error": tool.UNEXPECTED_ERROR})


def test_http_tool_is_csrf_exempt():
    response = post_tool(Client(enforce_csrf_checks=True), {"action": "get_status", "callId": "x"})
    assert response.json() == {"found": False}


# ------------------------------------------------------------------------------------------------
# Schema and SKILL.md
# ------------------------------------------------------------------------------------------------


def test_schema_is_served_in_openai_function_format(client):
    schema = client.get("/tools/voice_call/schema").json()
    assert schema["type"] == "function"
    function = schema["function"]
    assert function["name"] == "voice_call" and function["description"]
    parameters = function["parameters"]
    assert parameters["type"] == "object" and parameters["additionalProperties"] is False
    assert parameters["properties"]["action"]["enum"] == [
        "initiate_call", "continue_call", "speak_to_user", "send_dtmf", "end_call", "get_status"]
    assert all(spec["type"] == "string" and spec["description"] for spec in parameters["properties"].values())


def test_cli_prints_the_same_schema(capsys):
    call_command("voicecall", "tool-schema", "--json")
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(tool.TOOL_SCHEMA))


def _table_names(markdown: str, heading: str) -> set[str]:
    """Backticked names in the first column of the table under ``## <heading>``."""
    section = markdown.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([^`]+)` \|", section, flags=re.MULTILINE))


def test_skill_doc_lists_exactly_the_schema_actions_and_parameters():
    doc = SKILL.read_text()
    properties = tool.TOOL_SCHEMA["function"]["parameters"]["properties"]
    assert _table_names(doc, "Actions") == set(properties["action"]["enum"])
    assert _table_names(doc, "Parameters") == set(properties)
    for value in properties["mode"]["enum"]:
        assert f"`{value}`" in doc


def test_skill_doc_explains_every_validation_message_and_carrier_env_var():
    doc = SKILL.read_text()
    for message in tool.VALIDATION_MESSAGES:
        assert f"| `{message}` |" in doc, message
    for message in (services.CALL_NOT_FOUND, services.CALL_NOT_CONNECTED, services.CALL_HAS_ENDED,
                    services.ALREADY_WAITING, services.INVALID_DIGITS, services.INVALID_MODE,
                    services.TEXT_TOO_LONG.format(limit=services.MAX_SPOKEN_TEXT_CHARS)):
        assert f"`{message}`" in doc, message
    for fallbacks in PROVIDER_ENV_FALLBACKS.values():
        for _path, env_var in fallbacks:
            assert f"`{env_var}`" in doc, env_var
