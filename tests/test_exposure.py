"""Webhook exposure: ngrok / Tailscale started as subprocesses, `voicecall expose`, and the refusal of
real carriers on local or private webhook URLs.

`ngrok` and `tailscale` are stand-in executables written to tmp_path and put first on PATH: they record
their arguments (and whether NGROK_AUTHTOKEN reached them) and print what the real tools print.
"""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import requests
from django.core.management import CommandError, call_command

from calls.config import VoiceCallConfig, config_from_dict
from calls.management.cli import exposure
from tests.conftest import REPO, child_env, free_port, wait_for_port, write_config

DNS_NAME = "box.tail1234.ts.net"
NODE_ID = "nABC123CNTRL"
NGROK_URL = "https://1a2b-203-0-113-7.ngrok-free.app"

NGROK_STANDIN = r'''
import json, os, signal, sys, time
record = os.environ["STANDIN_RECORD"]
def log(entry):
    with open(record, "a") as f:
        f.write(json.dumps(entry) + "\n")
log({"tool": "ngrok", "argv": sys.argv[1:], "token": os.environ.get("NGROK_AUTHTOKEN")})
def stop(*_):
    log({"tool": "ngrok", "stopped": True})
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
mode = os.environ.get("STANDIN_NGROK", "ok")
def out(entry):
    print(json.dumps(entry), flush=True)
out({"lvl": "info", "msg": "no configuration paths supplied", "t": "2026-01-01T00:00:00Z"})
out({"addr": "127.0.0.1:4040", "lvl": "info", "msg": "starting web service", "obj": "web", "t": "2026-01-01T00:00:00Z"})
if mode == "ok":
    port = sys.argv[2]
    out({"addr": "http://localhost:" + port, "lvl": "info", "msg": "started tunnel", "name": "command_line",
         "obj": "tunnels", "t": "2026-01-01T00:00:01Z", "url": os.environ["STANDIN_NGROK_URL"]})
elif mode == "error":
    out({"err": "authentication failed: The authtoken you specified does not look like a proper ngrok tunnel "
                "authtoken.\n\nERR_NGROK_105\n", "lvl": "eror", "msg": "session closing", "obj": "tunnels.session",
         "t": "2026-01-01T00:00:01Z"})
    sys.exit(1)
while True:
    time.sleep(0.1)
'''

TAILSCALE_STANDIN = r'''
import json, os, sys, time
record = os.environ["STANDIN_RECORD"]
with open(record, "a") as f:
    f.write(json.dumps({"tool": "tailscale", "argv": sys.argv[1:]}) + "\n")
args = sys.argv[1:]
if args[:2] == ["status", "--json"]:
    print(json.dumps({"BackendState": "Running",
                      "Self": {"ID": os.environ["STANDIN_NODE"], "DNSName": os.environ["STANDIN_DNS"] + "."}}))
    sys.exit(0)
behaviour = os.environ.get("STANDIN_TAILSCALE", "ok")
if args and args[0] in ("serve", "funnel") and "off" not in args:
    if behaviour == "hang":
        time.sleep(30)
    if behaviour == "disabled":
        sys.stderr.write("Funnel is not enabled on your tailnet.\nTo enable, visit:\n\n"
                         "         https://login.tailscale.com/f/funnel?node=" + os.environ["STANDIN_NODE"] + "\n")
        sys.exit(1)
    print("Available on the internet:\n\nhttps://" + os.environ["STANDIN_DNS"] + args[4] + "\n|-- proxy " + args[5])
sys.exit(0)
'''


def _write_tool(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def standins(tmp_path, monkeypatch):
    """Stand-in ngrok and tailscale first on PATH; returns a reader of what they recorded."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _write_tool(bin_dir, "ngrok", NGROK_STANDIN)
    _write_tool(bin_dir, "tailscale", TAILSCALE_STANDIN)
    record = tmp_path / "standin-record.jsonl"
    record.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STANDIN_RECORD", str(record))
    monkeypatch.setenv("STANDIN_NGROK_URL", NGROK_URL)
    monkeypatch.setenv("STANDIN_DNS", DNS_NAME)
    monkeypatch.setenv("STANDIN_NODE", NODE_ID)

    class Recorded:
        bin = bin_dir

        def entries(self, tool: str | None = None) -> list[dict]:
            rows = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
            return [r for r in rows if tool is None or r["tool"] == tool]

        def argv(self, tool: str) -> list[list[str]]:
            return [r["argv"] for r in self.entries(tool) if "argv" in r]

    return Recorded()


def wait_until(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def cfg(**data):
    return config_from_dict({"provider": "mock", **data}, env={})


def carrier(provider: str, **data):
    """A real-carrier config without credentials (the schema only; exposure needs none)."""
    return VoiceCallConfig.model_validate({"provider": provider, **data})


# ------------------------------------------------------------------------------------------------
# ngrok
# ------------------------------------------------------------------------------------------------


def test_ngrok_tunnel_url_comes_from_its_json_log_and_the_token_stays_off_the_command_line(standins):
    config = cfg(serve={"port": 4567}, tunnel={"provider": "ngrok", "ngrokAuthToken": "ngrok-secret-1",
                                               "ngrokDomain": "calls.example.com"})
    result = exposure.start_exposure(config)
    try:
        assert (result.source, result.webhook_url, result.error) == ("ngrok", NGROK_URL + "/voice/webhook", None)
        (entry,) = standins.entries("ngrok")
        assert entry["argv"][:-1] == ["http", "4567", "--log", "stdout", "--log-format", "json",
                                      "--domain", "calls.example.com", "--traffic-policy-file"]
        assert entry["token"] == "ngrok-secret-1"
        # Only the webhook is published: every other path is denied at ngrok's edge.
        policy = json.loads(Path(entry["argv"][-1]).read_text())
        (rule,) = policy["on_http_request"]
        assert rule["expressions"] == ['!(req.url.path in ["/voice/webhook", "/voice/webhook/"])']
        assert rule["actions"] == [{"type": "deny", "config": {"status_code": 404}}]
    finally:
        result.stop()
    assert {"tool": "ngrok", "stopped": True} in standins.entries("ngrok")
    result.stop()  # idempotent


def test_the_tunnel_publishes_the_stream_path_too_and_everything_only_when_asked(standins):
    streaming = carrier("twilio", serve={"port": 4567}, tunnel={"provider": "ngrok"}, streaming={"enabled": True})
    assert exposure.public_paths(streaming) == ("/voice/webhook", "/voice/webhook/", "/voice/stream")
    everything = cfg(serve={"port": 4567}, tunnel={"provider": "ngrok", "exposeAllPaths": True})
    assert exposure.public_paths(everything) is None
    result = exposure.start_exposure(everything)
    try:
        (entry,) = standins.entries("ngrok")
        assert "--traffic-policy-file" not in entry["argv"]
    finally:
        result.stop()


def test_tailscale_routes_the_media_stream_path_when_streaming(standins):
    result = exposure.start_exposure(carrier("twilio", serve={"port": 4567}, tunnel={"provider": "tailscale-funnel"},
                                             streaming={"enabled": True}))
    routes = [argv for argv in standins.argv("tailscale") if "--set-path" in argv]
    assert [argv[4:] for argv in routes] == [["/voice/webhook", "http://127.0.0.1:4567/voice/webhook"],
                                            ["/voice/stream", "http://127.0.0.1:4567/voice/stream"]]
    result.stop()
    assert [argv for argv in standins.argv("tailscale") if "off" in argv][-2:] == [
        ["funnel", "off", "/voice/stream"], ["funnel", "off", "/voice/webhook"]]


def test_ngrok_error_is_reported_and_falls_back_to_the_local_url(standins, monkeypatch):
    monkeypatch.setenv("STANDIN_NGROK", "error")
    result = exposure.start_exposure(cfg(serve={"port": 4567}, tunnel={"provider": "ngrok"}))
    assert result.source == "local"
    assert result.webhook_url == "http://127.0.0.1:4567/voice/webhook"
    assert result.error.startswith("ngrok error: authentication failed")


def test_ngrok_that_never_reports_a_url_times_out_and_is_killed(standins, monkeypatch):
    monkeypatch.setenv("STANDIN_NGROK", "silent")
    with pytest.raises(exposure.ExposureError, match=r"ngrok startup timed out \(0.5s\)"):
        exposure.start_ngrok(port=4567, path="/voice/webhook", timeout=0.5)
    # the stand-in was terminated (it records SIGTERM) rather than left running
    wait_until(lambda: {"tool": "ngrok", "stopped": True} in standins.entries("ngrok"), what="ngrok to stop")


def test_missing_ngrok_binary_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    result = exposure.start_exposure(cfg(tunnel={"provider": "ngrok"}))
    assert result.source == "local"
    assert "ngrok is not installed (not found on PATH)" in result.error


# ------------------------------------------------------------------------------------------------
# Tailscale
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("provider", "mode"), [("tailscale-serve", "serve"), ("tailscale-funnel", "funnel")])
def test_tailscale_tunnel_routes_the_webhook_path_and_removes_it_on_stop(standins, provider, mode):
    result = exposure.start_exposure(cfg(serve={"port": 4567}, tunnel={"provider": provider}))
    assert (result.source, result.webhook_url) == (provider, f"https://{DNS_NAME}/voice/webhook")
    assert standins.argv("tailscale") == [
        ["status", "--json"],
        [mode, "--bg", "--yes", "--set-path", "/voice/webhook", "http://127.0.0.1:4567/voice/webhook"],
    ]
    result.stop()
    assert standins.argv("tailscale")[-1] == [mode, "off", "/voice/webhook"]


def test_legacy_tailscale_mode_uses_tailscale_path(standins):
    result = exposure.start_exposure(cfg(serve={"port": 4567}, tailscale={"mode": "serve", "path": "/hooks/voice"}))
    assert result.webhook_url == f"https://{DNS_NAME}/hooks/voice"
    assert standins.argv("tailscale")[-1] == ["serve", "--bg", "--yes", "--set-path", "/hooks/voice",
                                              "http://127.0.0.1:4567/voice/webhook"]
    result.stop()


def test_tailscale_that_hangs_times_out_with_a_clear_error(standins, monkeypatch):
    monkeypatch.setenv("STANDIN_TAILSCALE", "hang")
    result = exposure.start_exposure(cfg(tunnel={"provider": "tailscale-serve"}), tailscale_timeout=0.5)
    assert result.source == "local"
    assert result.error == "tailscale serve timed out after 0.5s"


def test_missing_tailscale_binary_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    result = exposure.start_exposure(cfg(tunnel={"provider": "tailscale-funnel"}))
    assert "tailscale is not installed (not found on PATH)" in result.error


# ------------------------------------------------------------------------------------------------
# Refusing unreachable webhook URLs
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://127.0.0.1:3334/voice/webhook", "https://192.168.1.20/voice/webhook",
                                 "https://localhost/voice/webhook", "https://[fd00::1]/voice/webhook"])
def test_real_carriers_refuse_local_or_private_webhook_urls(url):
    config = carrier("twilio", publicUrl=url)
    reason = exposure.refusal_reason(config, exposure.start_exposure(config))
    assert reason.startswith(f"refusing to start: the webhook URL {url} is local or private")


def test_public_urls_and_the_mock_carrier_are_allowed():
    public = carrier("plivo", publicUrl="https://voice.example.com/voice/webhook")
    assert exposure.refusal_reason(public, exposure.start_exposure(public)) is None
    mock = cfg()
    assert exposure.refusal_reason(mock, exposure.start_exposure(mock)) is None


def test_refusal_mentions_why_the_tunnel_failed(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    config = carrier("telnyx", tunnel={"provider": "ngrok"})
    reason = exposure.refusal_reason(config, exposure.start_exposure(config))
    assert "telnyx can never reach it" in reason
    assert "ngrok is not installed" in reason


def test_exposed_config_copy_keeps_the_document_form_and_is_private(tmp_path):
    source = tmp_path / "openclaw.json5"
    source.write_text("{plugins: {entries: {'voice-call': {config: {provider: 'mock', // comment\n}}}}}")
    target = exposure.write_exposed_config(source, "https://x.example/voice/webhook", tmp_path / "out.json")
    document = json.loads(target.read_text())
    assert document["plugins"]["entries"]["voice-call"]["config"] == {
        "provider": "mock", "publicUrl": "https://x.example/voice/webhook"}
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


# ------------------------------------------------------------------------------------------------
# `voicecall serve` and `voicecall expose` as real processes / commands
# ------------------------------------------------------------------------------------------------

TWILIO = {"provider": "twilio", "fromNumber": "+15550000000",
          "twilio": {"accountSid": "AC00000000000000000000000000000000", "authToken": "twilio-secret-xyz"}}


def run_cli(args, env, timeout=60):
    return subprocess.run([sys.executable, "manage.py", "voicecall", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.django_db(transaction=True)
def test_serve_refuses_a_real_carrier_on_a_private_url(tmp_path):
    port = free_port()
    config_path = write_config(tmp_path, {**TWILIO, "serve": {"port": port},
                                          "publicUrl": "http://10.1.2.3/voice/webhook"})
    result = run_cli(["serve", "--no-worker"], child_env(config_path, {"VOICECALL_VAR_DIR": str(tmp_path)}))
    assert result.returncode == 1
    assert "refusing to start: the webhook URL http://10.1.2.3/voice/webhook is local or private" in result.stderr
    assert "twilio-secret-xyz" not in result.stderr + result.stdout
    assert not (tmp_path / "voicecall.exposed.json").exists()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_serve_starts_ngrok_hands_its_url_to_the_server_and_tears_it_down(standins, tmp_path):
    port = free_port()
    config_path = write_config(tmp_path, {**TWILIO, "serve": {"port": port}, "tunnel": {"provider": "ngrok"}})
    var_dir = tmp_path / "var"
    (var_dir).mkdir()
    (var_dir / "draining").touch()  # left over from a previous run: serve clears it
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "manage.py", "voicecall", "serve", "--no-worker"], cwd=REPO,
                            env=child_env(config_path, {"VOICECALL_VAR_DIR": str(var_dir)}),
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc=proc)
        # The server's processes know the tunnel URL as publicUrl: they accept its Host.
        public_host = NGROK_URL.removeprefix("https://")
        response = requests.get(f"http://127.0.0.1:{port}/healthz", headers={"Host": public_host}, timeout=5)
        assert response.status_code == 200
        # ready: database, in-memory channel layer and the filesystem broker all answer, and the
        # stale drain flag is gone
        ready = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert (ready.status_code, ready.json()["checks"]) == (200, {"database": "ok", "channelLayer": "ok",
                                                                     "broker": "ok"})
        exposed = json.loads((var_dir / "voicecall.exposed.json").read_text())
        assert exposed["publicUrl"] == NGROK_URL + "/voice/webhook"
        assert standins.argv("ngrok") == [["http", str(port), "--log", "stdout", "--log-format", "json",
                                           "--traffic-policy-file", str(var_dir / "ngrok-traffic-policy.json")]]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert {"tool": "ngrok", "stopped": True} in standins.entries("ngrok")
    assert not (var_dir / "draining").exists()
    output = (tmp_path / "serve.log").read_text()
    assert f"carrier webhooks to {NGROK_URL}/voice/webhook via ngrok" in output
    assert "twilio-secret-xyz" not in output


def test_expose_funnel_prints_the_reference_shape(standins, configure):
    configure(serve={"port": 4567})
    out = io.StringIO()
    call_command("voicecall", "expose", "--mode", "funnel", "--json", stdout=out)
    assert json.loads(out.getvalue()) == {
        "ok": True, "mode": "funnel", "path": "/voice/webhook",
        "localUrl": "http://127.0.0.1:4567/voice/webhook",
        "publicUrl": f"https://{DNS_NAME}/voice/webhook",
    }
    assert standins.argv("tailscale")[-1] == ["funnel", "--bg", "--yes", "--set-path", "/voice/webhook",
                                              "http://127.0.0.1:4567/voice/webhook"]


def test_expose_options_override_path_port_and_serve_path(standins):
    out = io.StringIO()
    call_command("voicecall", "expose", "--mode", "serve", "--path", "/pub", "--port", "9000",
                 "--serve-path", "/voice/webhook", "--json", stdout=out)
    result = json.loads(out.getvalue())
    assert (result["publicUrl"], result["localUrl"]) == (f"https://{DNS_NAME}/pub", "http://127.0.0.1:9000/voice/webhook")


def test_expose_off_removes_serve_and_funnel_routes(standins):
    out = io.StringIO()
    call_command("voicecall", "expose", "--mode", "off", "--json", stdout=out)
    assert json.loads(out.getvalue()) == {"ok": True, "mode": "off", "path": "/voice/webhook"}
    assert standins.argv("tailscale") == [["serve", "off", "/voice/webhook"], ["funnel", "off", "/voice/webhook"]]


def test_expose_on_a_tailnet_without_funnel_gives_the_enable_hint(standins, monkeypatch):
    monkeypatch.setenv("STANDIN_TAILSCALE", "disabled")
    out = io.StringIO()
    with pytest.raises(CommandError, match="tailscale funnel failed with code 1: Funnel is not enabled"):
        call_command("voicecall", "expose", "--mode", "funnel", "--json", stdout=out)
    result = json.loads(out.getvalue())
    assert result["ok"] is False and result["publicUrl"] is None
    assert result["hint"]["enableUrl"] == f"https://login.tailscale.com/f/funnel?node={NODE_ID}"
    assert result["hint"]["note"].startswith("Tailscale funnel may be disabled on your tailnet")
