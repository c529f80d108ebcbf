"""`manage.py voicecall ...`: the JSON shapes of fact sheet §9.3, readable text, clear errors."""

import io
import json

import pytest
from django.core.management import CommandError, call_command

from calls.models import Call
from tests.conftest import run_cli, write_config
from tests.factories import AnsweredCallFactory, CallFactory, TranscriptEntryFactory

pytestmark = pytest.mark.django_db


def cli(*args):
    out = io.StringIO()
    call_command("voicecall", *args, stdout=out)
    return out.getvalue()


def test_call_prints_the_call_id(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        out = json.loads(cli("call", "--to", "+15550001111", "--message", "Hi", "--mode", "notify", "--json"))
    call = Call.objects.get(id=out["callId"])
    assert out == {"callId": str(call.id)}
    assert call.mode == "notify" and call.provider_call_id == f"mock-{call.id}"


def test_call_defaults_to_conversation_like_openclaw():
    out = json.loads(cli("call", "--to", "+15550001111", "--message", "Hi", "--json"))
    assert Call.objects.get(id=out["callId"]).mode == "conversation"


def test_call_without_to_and_no_default_is_an_error():
    with pytest.raises(CommandError, match="Missing --to and no toNumber configured"):
        cli("call", "--message", "Hi", "--json")


def test_start_requires_to():
    with pytest.raises(CommandError, match="to required"):
        cli("start", "--message", "Hi")


def test_status_of_unknown_call():
    assert json.loads(cli("status", "--call-id", "does-not-exist", "--json")) == {"found": False}
    assert cli("status", "--call-id", "does-not-exist") .strip() == "Call not found."


def test_status_shows_the_record_and_transcript():
    call = AnsweredCallFactory()
    TranscriptEntryFactory(call=call, speaker="bot", text="Hello there")
    shown = json.loads(cli("status", "--call-id", str(call.id), "--json"))
    assert shown["found"] is True and shown["call"]["callId"] == str(call.id)
    assert shown["call"]["transcript"][0]["text"] == "Hello there"
    text = cli("status", "--call-id", str(call.id))
    assert str(call.id) in text and "bot: Hello there" in text


def test_status_without_id_lists_live_calls_only():
    live = AnsweredCallFactory()
    CallFactory(state="completed")
    shown = json.loads(cli("status", "--json"))
    assert [c["callId"] for c in shown["calls"]] == [str(live.id)]


def test_speak_dtmf_end_shapes():
    call = AnsweredCallFactory()
    assert json.loads(cli("speak", "--call-id", str(call.id), "--message", "Hold on", "--json")) == {"success": True}
    assert json.loads(cli("dtmf", "--call-id", str(call.id), "--digits", "12#", "--json")) == {"success": True}
    assert json.loads(cli("end", "--call-id", str(call.id), "--json")) == {"success": True}
    assert Call.objects.get(id=call.id).state == "hangup-bot"


def test_errors_are_one_clear_line():
    call = CallFactory(state="completed", provider_call_id="mock-x")
    with pytest.raises(CommandError, match=r"^Call has ended$"):
        cli("speak", "--call-id", str(call.id), "--message", "Hi")
    with pytest.raises(CommandError, match="digits may only contain"):
        cli("dtmf", "--call-id", str(AnsweredCallFactory().id), "--digits", "abc")


def test_latency_shape():
    AnsweredCallFactory(metadata={"lastTurnLatencyMs": 900, "lastTurnListenWaitMs": 700})
    report = json.loads(cli("latency", "--json"))
    # the OpenClaw shape, plus the auto-responder turns (caller final → reply text → reply handed over)
    assert set(report) == {"recordsScanned", "turnLatency", "listenWait", "replyModel", "replyTotal"}
    assert report["turnLatency"]["p50Ms"] == 900 and report["listenWait"]["p95Ms"] == 700
    assert "p50 900 ms" in cli("latency")


def test_tail_prints_the_ledger():
    call = AnsweredCallFactory()
    TranscriptEntryFactory(call=call, speaker="user", text="I am here")
    lines = cli("tail", "--since", "5", "--max-seconds", "0.3", "--json").strip().splitlines()
    records = [json.loads(line) for line in lines]
    assert records[-1]["kind"] == "transcript" and records[-1]["text"] == "I am here"


def test_setup_reports_a_mock_installation_ok(tmp_path, monkeypatch):
    monkeypatch.setenv("VOICECALL_CONFIG", str(write_config(tmp_path, {"provider": "mock"})))
    report = json.loads(cli("setup", "--json"))
    assert report["ok"] is True
    assert {c["id"] for c in report["checks"]} == {"plugin-enabled", "provider", "provider-config",
                                                   "webhook-exposure", "mode"}


@pytest.mark.slow
def test_setup_fails_with_one_line_per_failing_check(tmp_path):
    config = write_config(tmp_path, {"provider": "twilio", "fromNumber": "+15550000000",
                                     "twilio": {"accountSid": "AC" + "0" * 32, "authToken": "sekrit-token-123"},
                                     "publicUrl": "https://192.168.1.5/voice/webhook"})
    result = run_cli(config, "setup")
    assert result.returncode == 1
    assert "Voice Call setup: needs attention" in result.stdout
    assert "FAIL webhook-exposure: publicUrl host 192.168.1.5 is local or private" in result.stdout
    assert "sekrit-token-123" not in result.stdout + result.stderr


@pytest.mark.slow
def test_bad_config_exits_non_zero_naming_the_key(tmp_path):
    config = write_config(tmp_path, {"provider": "mock", "serve": {"port": -1}})
    result = run_cli(config, "status", "--json")
    assert result.returncode == 1
    assert "serve.port: must be an integer > 0" in result.stderr


def test_setup_warns_about_forwarding_trust_without_proxies_and_a_missing_shared_secret_key(settings):
    from calls.config import config_from_dict
    from calls.management.cli.setup_checks import deployment_warnings

    open_trust = config_from_dict({"provider": "mock", "webhookSecurity": {"trustForwardingHeaders": True}}, env={})
    pinned = config_from_dict({"provider": "mock", "webhookSecurity": {
        "trustForwardingHeaders": True, "trustedProxyIPs": ["10.0.0.5"]}}, env={})
    settings.REDIS_URL = "redis://127.0.0.1:6379/0"  # scaled out: several hosts share one database
    warnings = deployment_warnings(open_trust, environ={})
    assert len(warnings) == 2
    assert "trustedProxyIPs" in warnings[0] and "DJANGO_SECRET_KEY" in warnings[1]
    assert deployment_warnings(pinned, environ={"DJANGO_SECRET_KEY": "shared"}) == []
