"""The CLI drives live calls through the running server over JSON-RPC, and acts directly only when
no server is listening.

The server is a real daphne process (tasks inline) whose mock carrier plays a scripted callee: it
answers, and replies whenever the bot listens, by POSTing events to the server's own webhook. A call
placed by the short-lived CLI process itself would never be answered (its callee timers die with
it), so a call that gets answered and replies proves the CLI went through the server.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from calls.models import Call, TranscriptEntry
from tests.conftest import REPO, child_env, free_port, write_config
from tests.fakes.polling import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

TOKEN = "cli-rpc-token-24680"
# The callee says its lines in order: one after the greeting, one per turn or utterance it hears.
REPLIES = ["Hello, who is this?", "Tuesday works for me.", "Great.", "Bye."]


def run_cli(args, config_path, tmp_path, *, extra=None, timeout=60):
    env = child_env(config_path, {"VOICECALL_CELERY_EAGER": "1", "VOICECALL_VAR_DIR": str(tmp_path / "cli-var"),
                                  **(extra or {})})
    return subprocess.run([sys.executable, "manage.py", "voicecall", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def wait_for(predicate, timeout=20.0, what="condition"):
    return wait_until(predicate, timeout, what=what)


@pytest.fixture
def server(start_daphne, tmp_path):
    document = {
        "provider": "mock",
        "mock": {"autoAnswer": True, "answerAfterMs": 50, "replyAfterMs": 50, "replies": REPLIES},
        "rpc": {"token": TOKEN},
        "transcriptTimeoutMs": 20000,
    }
    running = start_daphne(document, extra_env={"VOICECALL_CELERY_EAGER": "1",
                                                "VOICECALL_VAR_DIR": str(tmp_path / "server-var")})
    running.config_path = tmp_path / "voicecall.json5"  # written by start_daphne, with the port
    return running


def test_live_call_commands_run_in_the_server(server, tmp_path):
    placed = run_cli(["call", "--to", "+15550001111", "--message", "Hi, about your booking.", "--json"],
                     server.config_path, tmp_path)
    assert placed.returncode == 0, placed.stderr
    call_id = json.loads(placed.stdout)["callId"]

    # The server's callee answers, hears the greeting and replies once.
    wait_for(lambda: TranscriptEntry.objects.filter(call_id=call_id, speaker="user").exists(),
             what="the callee to answer and reply")
    call = Call.objects.get(id=call_id)
    assert call.provider_call_id == f"mock-{call_id}" and call.answered_at is not None

    turn = run_cli(["continue", "--call-id", call_id, "--message", "Is Tuesday at ten okay?", "--json"],
                   server.config_path, tmp_path)
    assert turn.returncode == 0, turn.stderr
    assert json.loads(turn.stdout) == {"success": True, "transcript": REPLIES[1]}
    assert Call.objects.get(id=call_id).metadata["turnCount"] == 1

    spoken = run_cli(["speak", "--call-id", call_id, "--message", "Booked.", "--json"], server.config_path, tmp_path)
    assert json.loads(spoken.stdout) == {"success": True}
    dtmf = run_cli(["dtmf", "--call-id", call_id, "--digits", "1#", "--json"], server.config_path, tmp_path)
    assert json.loads(dtmf.stdout) == {"success": True}
    ended = run_cli(["end", "--call-id", call_id, "--json"], server.config_path, tmp_path)
    assert json.loads(ended.stdout) == {"success": True}
    call.refresh_from_db()
    assert call.state == "hangup-bot"
    bot_lines = list(call.transcript.filter(speaker="bot").values_list("text", flat=True))
    assert bot_lines == ["Hi, about your booking.", "Is Tuesday at ten okay?", "Booked."]
    # No RPC token file was needed: both sides use rpc.token from the config.
    assert not (tmp_path / "cli-var" / "rpc-token").exists()


def test_server_refusals_come_back_as_cli_errors(server, tmp_path):
    result = run_cli(["speak", "--call-id", "no-such-call", "--message", "hi"], server.config_path, tmp_path)
    assert result.returncode == 1
    assert "Call not found" in result.stderr


def test_wrong_token_is_an_error_not_a_silent_local_fallback(server, tmp_path):
    document = json.loads(server.config_path.read_text())
    (tmp_path / "wrong").mkdir()
    wrong = write_config(tmp_path / "wrong", {**document, "rpc": {"token": "not-the-token"}})
    result = run_cli(["call", "--to", "+15550001111", "--message", "hi"], wrong, tmp_path)
    assert result.returncode == 1
    assert "refused the RPC token (HTTP 401)" in result.stderr
    assert "not-the-token" not in result.stderr
    assert Call.objects.count() == 0


def test_without_a_running_server_the_cli_acts_directly(tmp_path):
    config_path = write_config(tmp_path, {"provider": "mock", "mock": {"autoAnswer": False},
                                          "serve": {"port": free_port()}})
    placed = run_cli(["start", "--to", "+15550002222", "--mode", "notify", "--json"], config_path, tmp_path)
    assert placed.returncode == 0, placed.stderr
    call_id = json.loads(placed.stdout)["callId"]
    assert Call.objects.get(id=call_id).provider_call_id == f"mock-{call_id}"
    status = run_cli(["status", "--call-id", call_id, "--json"], config_path, tmp_path)
    assert json.loads(status.stdout)["call"]["callId"] == call_id
    ended = run_cli(["end", "--call-id", call_id, "--json"], config_path, tmp_path)
    assert json.loads(ended.stdout) == {"success": True}
    assert Call.objects.get(id=call_id).state == "hangup-bot"
    # Nothing answered, so no token was needed: none was generated.
    assert not (tmp_path / "cli-var" / "rpc-token").exists()


def test_cli_and_server_agree_on_the_generated_token_file(start_daphne, tmp_path):
    shared_var = tmp_path / "shared-var"
    document = {"provider": "mock", "mock": {"autoAnswer": True, "answerAfterMs": 50, "replyAfterMs": 50}}
    start_daphne(document, extra_env={"VOICECALL_CELERY_EAGER": "1", "VOICECALL_VAR_DIR": str(shared_var)})
    placed = run_cli(["call", "--to", "+15550003333", "--message", "Hi", "--mode", "notify", "--json"],
                     tmp_path / "voicecall.json5", tmp_path, extra={"VOICECALL_VAR_DIR": str(shared_var)})
    assert placed.returncode == 0, placed.stderr
    call_id = json.loads(placed.stdout)["callId"]
    # placed by the server: its callee answers, hears the notification, and the call completes
    wait_for(lambda: Call.objects.get(id=call_id).answered_at, what="the server's callee to answer")
    assert (shared_var / "rpc-token").stat().st_mode & 0o777 == 0o600


def test_client_falls_back_to_blocking_continue_on_a_server_without_polling():
    """An older server (a stand-in speaking JSON-RPC) that lacks voicecall.continue.start."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from calls.management.cli.rpc_client import RpcClient

    seen = []

    class OldServer(BaseHTTPRequestHandler):
        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((request["method"], self.headers["Authorization"]))
            if request["method"] == "voicecall.continue":
                body = {"jsonrpc": "2.0", "id": request["id"], "result": {"success": True, "transcript": "yes"}}
            else:
                body = {"jsonrpc": "2.0", "id": request["id"],
                        "error": {"code": -32601, "message": f"Method not found: {request['method']}"}}
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), OldServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        client = RpcClient(url=f"http://127.0.0.1:{httpd.server_port}/rpc", token=lambda: "t0k")
        assert client.continue_call("c1", "ok?", transcript_timeout_ms=1000) == {"success": True, "transcript": "yes"}
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert seen == [("voicecall.continue.start", "Bearer t0k"), ("voicecall.continue", "Bearer t0k")]
