"""``python manage.py voicecall <command>``: place and steer calls from a terminal.

Every command takes ``--json`` and then prints exactly the JSON shapes of the OpenClaw CLI
(fact sheet §9.3); without it, readable text. Errors exit non-zero with one line on stderr.

Live-call commands (call, start, continue, speak, dtmf, end) are sent to the running server over
JSON-RPC (``calls/rpc_client.py``) and run here directly only when no server is listening; status,
tail, latency, setup, tool-schema and expose always run here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from calls import services
from calls.config import ConfigError, get_config


def _positive_int(value: str) -> int:
    import argparse

    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"Invalid numeric value: {value}")
    return int(value)


class Command(BaseCommand):
    help = ("Place, steer and inspect voice calls (call, start, continue, speak, dtmf, end, status, tail, latency, "
            "setup, serve, expose, tool-schema).")

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)

        def add(name: str, help_text: str):
            p = sub.add_parser(name, help=help_text)
            p.add_argument("--json", action="store_true", help="print JSON")
            return p

        for name, help_text in (("call", "place an outbound call"), ("start", "alias of call; --to required")):
            p = add(name, help_text)
            p.add_argument("--to", "-t", default=None)
            p.add_argument("--message", "-m", default=None)
            p.add_argument("--mode", choices=["notify", "conversation"], default="conversation")
        p = add("continue", "speak, then wait for the caller's reply")
        p.add_argument("--call-id", required=True)
        p.add_argument("--message", "-m", required=True)
        p = add("speak", "say something on a live call")
        p.add_argument("--call-id", required=True)
        p.add_argument("--message", "-m", required=True)
        p = add("dtmf", "send DTMF digits")
        p.add_argument("--call-id", required=True)
        p.add_argument("--digits", required=True)
        p = add("end", "hang up a call")
        p.add_argument("--call-id", required=True)
        p = add("status", "one call (internal or carrier id), or all live calls")
        p.add_argument("--call-id", default=None)
        p = add("tail", "follow the call ledger live")
        p.add_argument("--since", type=int, default=25, help="show the last N entries first")
        p.add_argument("--call-id", default=None)
        p.add_argument("--poll", type=_positive_int, default=250, help="poll interval in ms")
        p.add_argument("--max-seconds", type=float, default=None, help="stop following after this long")
        p = add("latency", "p50/p95 of conversation turn latency")
        p.add_argument("--last", type=_positive_int, default=200)
        add("setup", "check config, credentials and webhook exposure")
        add("restore", "re-check live calls with the carrier after a restart (serve does this at start)")
        p = add("serve", "run the server (daphne) with a Celery worker and beat")
        p.add_argument("--no-worker", action="store_true", help="do not start the Celery worker and beat")
        p.add_argument("--workers", type=_positive_int, default=None,
                       help="daphne processes sharing the port (default: the number of cores with REDIS_URL, "
                            "else 1: the in-memory channel layer of the embedded setup is per process)")
        add("tool-schema", "print the voice_call agent tool's JSON schema (OpenAI function format)")
        p = add("expose", "route the webhook through Tailscale serve/funnel (or remove the route)")
        p.add_argument("--mode", choices=["off", "serve", "funnel"], default="funnel")
        p.add_argument("--path", default=None, help="public path (default tailscale.path)")
        p.add_argument("--port", type=_positive_int, default=None, help="local port (default serve.port)")
        p.add_argument("--serve-path", default=None, help="local webhook path (default serve.path)")

    # ------------------------------------------------------------------------------------------
    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        as_json = options.get("json", False)
        handler = getattr(self, f"do_{action.replace('-', '_')}")
        try:
            if action != "setup":
                get_config()
            result = handler(options)
        except services.ServiceError as exc:
            self._fail(str(exc), as_json)
        except ConfigError as exc:
            self._fail(f"configuration error:\n{exc}", as_json)
        if result is not None:
            self._emit(result, as_json)

    def _fail(self, message: str, as_json: bool) -> None:
        if as_json:
            self.stdout.write(json.dumps({"success": False, "error": message}))
        raise CommandError(message)

    def _emit(self, result: tuple[dict[str, Any], str], as_json: bool) -> None:
        payload, text = result
        self.stdout.write(json.dumps(payload, indent=2) if as_json else text)

    def _live(self, method: str, params: dict[str, Any], direct, *, timeout: float | None = None) -> Any:
        """Run ``method`` on the running server; ``direct()`` here only when none is listening."""
        from calls.management.cli.rpc_client import RpcClient, RpcError, ServerUnreachable

        config = get_config()
        client = RpcClient.for_config(config)
        try:
            if method == "voicecall.continue":
                return client.continue_call(params["callId"], params["message"],
                                            transcript_timeout_ms=config.transcript_timeout_ms)
            return client.call(method, params, timeout=timeout or 30.0)
        except ServerUnreachable:
            return direct()
        except RpcError as exc:
            raise services.ServiceError(str(exc)) from exc

    # ------------------------------------------------------------------------------------------
    def do_call(self, options) -> tuple[dict, str]:
        config = get_config()
        if not options["to"] and not config.to_number:
            raise services.ServiceError("Missing --to and no toNumber configured")
        message = options["message"]
        if not message and options["action"] == "call":
            raise services.ServiceError(services.MESSAGE_REQUIRED)
        from calls.management.cli.rpc_client import RpcClient

        method = "voicecall.initiate" if options["action"] == "call" else "voicecall.start"
        result = self._live(
            method, {"to": options["to"], "message": message, "mode": options["mode"]},
            lambda: {"callId": str(services.initiate_call(to=options["to"], message=message,
                                                          mode=options["mode"]).id)},
            timeout=RpcClient.initiate_timeout(config),
        )
        to = options["to"] or config.to_number
        return {"callId": result["callId"]}, f"Call {result['callId']} queued to {to} ({options['mode']})."

    def do_start(self, options) -> tuple[dict, str]:
        if not options["to"]:
            raise services.ServiceError(services.TO_REQUIRED)
        return self.do_call(options)

    def do_continue(self, options) -> tuple[dict, str]:
        params = {"callId": options["call_id"], "message": options["message"]}
        result = self._live("voicecall.continue", params, lambda: {
            "success": True, "transcript": services.continue_call(options["call_id"], options["message"])})
        return {"success": True, "transcript": result["transcript"]}, f"Caller: {result['transcript']}"

    def do_speak(self, options) -> tuple[dict, str]:
        self._live("voicecall.speak", {"callId": options["call_id"], "message": options["message"]},
                   lambda: services.speak(options["call_id"], options["message"]))
        return {"success": True}, "Spoken."

    def do_dtmf(self, options) -> tuple[dict, str]:
        self._live("voicecall.dtmf", {"callId": options["call_id"], "digits": options["digits"]},
                   lambda: services.send_dtmf(options["call_id"], options["digits"]))
        return {"success": True}, "Digits sent."

    def do_end(self, options) -> tuple[dict, str]:
        self._live("voicecall.end", {"callId": options["call_id"]}, lambda: services.end_call(options["call_id"]))
        return {"success": True}, "Call ended."

    def do_status(self, options) -> tuple[dict, str]:
        status = services.get_status(options["call_id"])
        if not status["found"]:
            return status, "Call not found."
        calls = [status["call"]] if "call" in status else status["calls"]
        if not calls:
            return status, "No live calls."
        lines = []
        for c in calls:
            lines.append(f"{c['callId']}  {c['direction']:<8} {c['state']:<11} {c['from']} -> {c['to']}"
                         f"  provider={c['provider']} id={c['providerCallId'] or '-'}"
                         + (f" endReason={c['endReason']}" if c["endReason"] else ""))
            for entry in c["transcript"] if "call" in status else []:
                lines.append(f"    {entry['speaker']:>4}: {entry['text']}")
        return status, "\n".join(lines)

    def do_latency(self, options) -> tuple[dict, str]:
        report = services.latency_report(options["last"])
        t = report["turnLatency"]
        text = (f"{report['recordsScanned']} calls scanned; turn latency over {t['count']} turns: "
                f"p50 {t['p50Ms']} ms, p95 {t['p95Ms']} ms, min {t['minMs']} ms, max {t['maxMs']} ms")
        return report, text

    def do_setup(self, options) -> tuple[dict, str] | None:
        from calls.management.cli.setup_checks import run_setup_checks

        report = run_setup_checks()
        if options["json"]:
            self.stdout.write(json.dumps(report, indent=2))
        else:
            self.stdout.write("Voice Call setup: OK" if report["ok"] else "Voice Call setup: needs attention")
            for check in report["checks"]:
                self.stdout.write(f"{'OK' if check['ok'] else 'FAIL'} {check['id']}: {check['message']}")
            for warning in report.get("warnings", []):
                self.stdout.write(f"WARN {warning}")
        if not report["ok"]:
            sys.exit(1)
        return None

    def do_tail(self, options) -> None:
        from calls.management.cli.tail import follow_ledger

        for line in follow_ledger(
            since=options["since"],
            call_id=options["call_id"],
            poll_ms=options["poll"],
            max_seconds=options["max_seconds"],
            as_json=options["json"],
        ):
            self.stdout.write(line)
            self.stdout.flush()
        return None

    def do_restore(self, options) -> tuple[dict, str]:
        summary = services.restore_calls()
        return summary, (f"{summary['checked']} live calls checked: {summary['resumed']} resumed, "
                         f"{summary['closed']} closed, {summary['timedOut']} timed out, {summary['failed']} failed")

    def do_serve(self, options) -> None:
        from calls.interfaces.health import drain_flag

        config = get_config()
        env = {**os.environ}
        exposure = self._start_exposure(config, env)
        drain_flag().unlink(missing_ok=True)  # a previous run's flag must not keep this one unready
        # Calls that were live when the previous server stopped are re-checked with the carrier.
        restored = services.restore_calls()
        if restored["checked"]:
            self.stdout.write(f"Restored live calls after restart: {json.dumps(restored)}")
        children: list[subprocess.Popen] = []
        base = [sys.executable, "-m", "celery", "-A", "voicecall_site"]
        if not options["no_worker"]:
            children.append(subprocess.Popen([*base, "worker", "--loglevel=INFO", "--pool=threads",
                                              "--concurrency=4", "--without-gossip", "--without-mingle"], env=env))
            children.append(subprocess.Popen([*base, "beat", "--loglevel=INFO",
                                              "-s", str(Path(settings.VAR_DIR) / "celerybeat-schedule")], env=env))
        workers = options.get("workers") or ((os.cpu_count() or 1) if settings.REDIS_URL else 1)
        children.extend(_start_daphnes(config.serve.bind, config.serve.port, workers, env))
        self.stdout.write(f"Voicecall listening on http://{config.serve.bind}:{config.serve.port} "
                          f"with {workers} daphne process{'es' if workers > 1 else ''} "
                          f"(webhook {config.serve.path}, provider {config.provider}; "
                          f"carrier webhooks to {exposure.webhook_url} via {exposure.source})")
        self.stdout.flush()

        def stop(*_):
            drain_flag().touch()  # /readyz answers 503 from now on
            for child in children:
                if child.poll() is None:
                    child.terminate()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        try:
            while all(child.poll() is None for child in children):
                time.sleep(0.5)
        finally:
            stop()
            for child in children:
                try:
                    child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.kill()
            exposure.stop()
            drain_flag().unlink(missing_ok=True)
        return None

    def _start_exposure(self, config, env: dict[str, str]):
        """Public URL / tunnel for ``serve`` (fact sheet §4.6). Children get the tunnel URL as publicUrl."""
        from calls.config import CONFIG_ENV_VAR, DEFAULT_CONFIG_FILENAME, load_config, set_config
        from calls.management.cli import exposure as exposure_module

        exposure = exposure_module.start_exposure(config)
        if exposure.error:
            self.stderr.write(f"warning: webhook tunnel not started: {exposure.error}")
        reason = exposure_module.refusal_reason(config, exposure)
        if reason:
            exposure.stop()
            raise CommandError(reason)
        if exposure.is_tunnel:
            source = os.environ.get(CONFIG_ENV_VAR, "").strip() or (
                DEFAULT_CONFIG_FILENAME if Path(DEFAULT_CONFIG_FILENAME).is_file() else "")
            target = exposure_module.write_exposed_config(
                Path(source) if source else None, exposure.webhook_url,
                Path(settings.VAR_DIR) / "voicecall.exposed.json")
            set_config(load_config(target))
            env[CONFIG_ENV_VAR] = str(target)
        return exposure

    def do_tool_schema(self, options) -> tuple[dict, str]:
        from calls.interfaces.tool import TOOL_SCHEMA

        return TOOL_SCHEMA, json.dumps(TOOL_SCHEMA, indent=2)

    def do_expose(self, options) -> tuple[dict, str]:
        from calls.management.cli.exposure import expose_route

        config = get_config()
        result = expose_route(mode=options["mode"], path=options["path"] or config.tailscale.path,
                              port=options["port"] or config.serve.port,
                              serve_path=options["serve_path"] or config.serve.path)
        if not result["ok"]:
            self.stdout.write(json.dumps(result, indent=2))
            raise CommandError(result["hint"]["error"])
        if result["mode"] == "off":
            return result, f"Tailscale routes for {result['path']} removed."
        return result, f"Tailscale {result['mode']}: {result['publicUrl']} -> {result['localUrl']}"


def _start_daphnes(bind: str, port: int, count: int, env: dict[str, str]) -> list[subprocess.Popen]:
    """``count`` daphne processes serving one port. One process binds it itself; several get a
    listening socket each, all bound to the port with ``SO_REUSEPORT`` (made here, handed over with
    ``daphne --fd``), so the kernel spreads new connections evenly over them by their address hash
    -- one socket shared by all let whichever process woke first take most (80 of 128 media streams
    on one of two processes, bench/media_bench.py). Each process has its own admission caps and
    answers its own probes."""
    app = "voicecall_site.asgi:application"
    if count == 1:
        return [subprocess.Popen([sys.executable, "-m", "daphne", "-b", bind, "-p", str(port), app], env=env)]
    import socket

    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    reuse_port = hasattr(socket, "SO_REUSEPORT")
    listeners = []
    children = []
    try:
        for _ in range(count if reuse_port else 1):
            listener = socket.socket(family, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            listener.bind((bind, port))
            listener.listen(1024)
            listener.set_inheritable(True)
            listeners.append(listener)
        for index in range(count):
            fd = listeners[index % len(listeners)].fileno()
            children.append(subprocess.Popen([sys.executable, "-m", "daphne", "--fd", str(fd), app], env=env,
                                             pass_fds=(fd,)))
        return children
    finally:
        for listener in listeners:
            listener.close()  # the children hold them now
