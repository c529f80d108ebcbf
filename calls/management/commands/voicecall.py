"""``python manage.py voicecall <command>``: place and steer calls from a terminal.

Every command takes ``--json`` and then prints exactly the JSON shapes of the OpenClaw CLI
(fact sheet §9.3); without it, readable text. Errors exit non-zero with one line on stderr.
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
    help = "Place, steer and inspect voice calls (call, start, continue, speak, dtmf, end, status, tail, latency, setup, serve)."

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
        p = add("serve", "run the server (daphne) with a Celery worker and beat")
        p.add_argument("--no-worker", action="store_true", help="do not start the Celery worker and beat")

    # ------------------------------------------------------------------------------------------
    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        as_json = options.get("json", False)
        handler = getattr(self, f"do_{action}")
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

    # ------------------------------------------------------------------------------------------
    def do_call(self, options) -> tuple[dict, str]:
        config = get_config()
        if not options["to"] and not config.to_number:
            raise services.ServiceError("Missing --to and no toNumber configured")
        message = options["message"]
        if not message and options["action"] == "call":
            raise services.ServiceError(services.MESSAGE_REQUIRED)
        call = services.initiate_call(to=options["to"], message=message, mode=options["mode"])
        return {"callId": str(call.id)}, f"Call {call.id} queued to {call.to_number} ({call.mode})."

    def do_start(self, options) -> tuple[dict, str]:
        if not options["to"]:
            raise services.ServiceError(services.TO_REQUIRED)
        return self.do_call(options)

    def do_continue(self, options) -> tuple[dict, str]:
        transcript = services.continue_call(options["call_id"], options["message"])
        return {"success": True, "transcript": transcript}, f"Caller: {transcript}"

    def do_speak(self, options) -> tuple[dict, str]:
        services.speak(options["call_id"], options["message"])
        return {"success": True}, "Spoken."

    def do_dtmf(self, options) -> tuple[dict, str]:
        services.send_dtmf(options["call_id"], options["digits"])
        return {"success": True}, "Digits sent."

    def do_end(self, options) -> tuple[dict, str]:
        services.end_call(options["call_id"])
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
        from calls.setup_checks import run_setup_checks

        report = run_setup_checks()
        if options["json"]:
            self.stdout.write(json.dumps(report, indent=2))
        else:
            self.stdout.write("Voice Call setup: OK" if report["ok"] else "Voice Call setup: needs attention")
            for check in report["checks"]:
                self.stdout.write(f"{'OK' if check['ok'] else 'FAIL'} {check['id']}: {check['message']}")
        if not report["ok"]:
            sys.exit(1)
        return None

    def do_tail(self, options) -> None:
        from calls.tail import follow_ledger

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

    def do_serve(self, options) -> None:
        config = get_config()
        children: list[subprocess.Popen] = []
        base = [sys.executable, "-m", "celery", "-A", "voicecall_site"]
        env = {**os.environ}
        if not options["no_worker"]:
            children.append(subprocess.Popen([*base, "worker", "--loglevel=INFO", "--pool=threads",
                                              "--concurrency=4", "--without-gossip", "--without-mingle"], env=env))
            children.append(subprocess.Popen([*base, "beat", "--loglevel=INFO",
                                              "-s", str(Path(settings.VAR_DIR) / "celerybeat-schedule")], env=env))
        daphne = subprocess.Popen([sys.executable, "-m", "daphne", "-b", config.serve.bind, "-p",
                                   str(config.serve.port), "voicecall_site.asgi:application"], env=env)
        children.append(daphne)
        self.stdout.write(f"Voicecall listening on http://{config.serve.bind}:{config.serve.port} "
                          f"(webhook {config.serve.path}, provider {config.provider})")

        def stop(*_):
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
        return None
