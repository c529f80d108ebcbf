"""Making the webhook reachable by the carrier: ``publicUrl``, an ngrok tunnel, or Tailscale.

Fact sheet §4.6 (OpenClaw ``src/runtime.ts``, ``src/tunnel.ts``, ``src/webhook/tailscale.ts``).
``voicecall serve`` picks the public webhook URL in this order:

1. ``publicUrl`` when set (nothing is started);
2. ``tunnel.provider``:
   * ``ngrok`` — ``ngrok http <port> --log stdout --log-format json [--domain D]`` runs for the life of
     the server; the public URL is the ``url`` of the ``"started tunnel"`` JSON log line (30 s to
     appear), plus ``serve.path``. ``tunnel.ngrokAuthToken`` is handed over in the ``NGROK_AUTHTOKEN``
     environment variable, which the ngrok agent reads — never on a command line, where ``ps`` shows
     it (upstream runs ``ngrok config add-authtoken``; same effect, minus the exposure);
   * ``tailscale-serve`` / ``tailscale-funnel`` — ``tailscale serve|funnel --bg --yes --set-path <path>
     http://127.0.0.1:<port><path>`` (10 s), URL ``https://<MagicDNS name><path>`` with the name from
     ``tailscale status --json`` (``Self.DNSName``); removed on stop with ``tailscale <mode> off <path>``;
3. the legacy ``tailscale.mode`` (``serve`` | ``funnel``) with ``tailscale.path``;
4. otherwise the local listener URL.

A tunnel that fails (binary missing, error, timeout) is reported and falls through to the local URL,
as upstream does. Twilio, Telnyx and Plivo then refuse to start when the resulting host is local or
private (``refusal_reason``): they could never deliver a webhook there.

``voicecall expose`` (``expose_route``) manages just the Tailscale route, printing the fact sheet §9.3
shape ``{ok, mode, path, localUrl, publicUrl, hint?}``.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from calls.config import VoiceCallConfig
from providers.security import is_local_or_private_host

logger = logging.getLogger(__name__)

NGROK_STARTUP_TIMEOUT_SECONDS = 30.0
TAILSCALE_TIMEOUT_SECONDS = 10.0
TAILSCALE_HELPER_TIMEOUT_SECONDS = 5.0  # status --json and route removal
STOP_GRACE_SECONDS = 2.0
REAL_CARRIERS = ("twilio", "telnyx", "plivo")
TUNNEL_TAILSCALE_MODES = {"tailscale-serve": "serve", "tailscale-funnel": "funnel"}
TAILSCALE_ENABLE_URL = "https://login.tailscale.com/f/{mode}?node={node}"
TAILSCALE_DISABLED_NOTE = (
    "Tailscale {mode} may be disabled on your tailnet; enable it in the admin console, then run this again."
)


class ExposureError(Exception):
    """A tunnel could not be started; the message says why (never containing a secret)."""


@dataclass
class Exposure:
    """Where the carrier reaches the webhook, and how to take that away again."""

    webhook_url: str
    source: str  # "publicUrl" | "ngrok" | "tailscale-serve" | "tailscale-funnel" | "local"
    error: str | None = None  # why a configured tunnel is not in use
    _stoppers: list[Callable[[], None]] = field(default_factory=list, repr=False)

    @property
    def is_tunnel(self) -> bool:
        return self.source not in ("publicUrl", "local")

    def stop(self) -> None:
        """Tear the tunnel/route down. Safe to call more than once."""
        while self._stoppers:
            stopper = self._stoppers.pop()
            try:
                stopper()
            except Exception as exc:  # teardown is best effort; the server is stopping anyway
                logger.warning("tunnel teardown step failed: %s", exc)


# ------------------------------------------------------------------------------------------------
# ngrok
# ------------------------------------------------------------------------------------------------


def _terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_GRACE_SECONDS)


def _ngrok_url_from(line: str) -> tuple[str | None, str | None]:
    """(public URL, error) from one ngrok JSON log line; both ``None`` for anything else."""
    try:
        entry = json.loads(line)
    except ValueError:
        # Plain-text output: only ngrok's error codes (ERR_NGROK_nnn) matter here.
        return (None, line[:500]) if "ERR_NGROK" in line else (None, None)
    if not isinstance(entry, dict):
        return None, None
    url = entry.get("url")
    if isinstance(url, str) and url.startswith(("https://", "http://")) and (
        entry.get("msg") == "started tunnel" or entry.get("addr")
    ):
        return url.rstrip("/"), None
    if entry.get("lvl") in ("eror", "crit") or "ERR_NGROK" in line:
        return None, str(entry.get("err") or entry.get("msg") or "ngrok reported an error")[:500]
    return None, None


def public_paths(config: VoiceCallConfig) -> tuple[str, ...] | None:
    """The paths a tunnel may publish: the webhook (with and without a trailing slash) and, when
    streaming, the media-stream path. None with ``tunnel.exposeAllPaths`` (publish everything)."""
    if config.tunnel.expose_all_paths:
        return None
    webhook = config.serve.path.rstrip("/") or "/"
    paths = [webhook, webhook + "/"] if webhook != "/" else ["/"]
    if config.live_audio:
        paths.append(config.streaming.stream_path)
    return tuple(dict.fromkeys(paths))


def ngrok_policy(paths: tuple[str, ...]) -> dict[str, Any]:
    """An ngrok Traffic Policy (agent ``--traffic-policy-file``) that answers 404 at ngrok's edge
    for every path but ``paths``: the rest of the server is never reachable through the tunnel."""
    allowed = ", ".join(json.dumps(p) for p in paths)
    return {"on_http_request": [{
        "name": "voicecall: only the carrier paths",
        "expressions": [f"!(req.url.path in [{allowed}])"],
        "actions": [{"type": "deny", "config": {"status_code": 404}}],
    }]}


def start_ngrok(
    *, port: int, path: str, auth_token: str | None = None, domain: str | None = None,
    timeout: float = NGROK_STARTUP_TIMEOUT_SECONDS, only_paths: tuple[str, ...] | None = None,
    policy_dir: Path | None = None,
) -> tuple[str, subprocess.Popen]:
    """Start ngrok; return (public webhook URL, the running process). Raises ``ExposureError``.
    With ``only_paths`` the tunnel carries only those paths (a Traffic Policy written to
    ``policy_dir``)."""
    args = ["ngrok", "http", str(port), "--log", "stdout", "--log-format", "json"]
    if domain:
        args += ["--domain", domain]
    if only_paths is not None:
        policy_file = (policy_dir or Path(".")) / "ngrok-traffic-policy.json"
        policy_file.write_text(json.dumps(ngrok_policy(only_paths), indent=2))
        args += ["--traffic-policy-file", str(policy_file)]
    env = {**os.environ}
    if auth_token:
        env["NGROK_AUTHTOKEN"] = auth_token
    try:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, text=True, bufsize=1)
    except FileNotFoundError:
        raise ExposureError("ngrok is not installed (not found on PATH); install it from "
                            "https://ngrok.com/download or set publicUrl") from None
    except OSError as exc:
        raise ExposureError(f"ngrok could not be started: {exc.strerror or type(exc).__name__}") from None

    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:  # keeps reading for the tunnel's whole life so ngrok never blocks on a full pipe
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, name="ngrok-log", daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _terminate(proc)
            raise ExposureError(f"ngrok startup timed out ({timeout:g}s) without reporting a public URL")
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        if line is None:
            code = proc.wait()
            raise ExposureError(f"ngrok exited unexpectedly with code {code}")
        url, error = _ngrok_url_from(line.strip())
        if url:
            return url + path, proc
        if error:
            _terminate(proc)
            raise ExposureError(f"ngrok error: {error}")


# ------------------------------------------------------------------------------------------------
# Tailscale
# ------------------------------------------------------------------------------------------------


def _tailscale(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["tailscale", *args], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)
    except FileNotFoundError:
        raise ExposureError("tailscale is not installed (not found on PATH); install it from "
                            "https://tailscale.com/download or set publicUrl") from None
    except subprocess.TimeoutExpired:
        raise ExposureError(f"tailscale {args[0]} timed out after {timeout:g}s") from None


def tailscale_self(timeout: float = TAILSCALE_HELPER_TIMEOUT_SECONDS) -> tuple[str, str | None]:
    """(MagicDNS name without the trailing dot, node id) from ``tailscale status --json``."""
    result = _tailscale(["status", "--json"], timeout)
    if result.returncode != 0:
        raise ExposureError(f"tailscale status failed with code {result.returncode}: "
                            f"{(result.stderr or result.stdout).strip()[:300]}")
    try:
        me = json.loads(result.stdout).get("Self") or {}
    except (ValueError, AttributeError):
        raise ExposureError("tailscale status --json did not return JSON") from None
    dns_name = str(me.get("DNSName") or "").rstrip(".")
    if not dns_name:
        raise ExposureError("could not get the Tailscale DNS name; is Tailscale running and logged in?")
    return dns_name, (str(me["ID"]) if me.get("ID") else None)


def start_tailscale_route(*, mode: str, path: str, local_url: str,
                          timeout: float = TAILSCALE_TIMEOUT_SECONDS) -> str:
    """Route ``https://<name><path>`` to ``local_url``; return that public URL. Raises ``ExposureError``."""
    dns_name, _ = tailscale_self()
    result = _tailscale([mode, "--bg", "--yes", "--set-path", path, local_url], timeout)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()[:500]
        raise ExposureError(f"tailscale {mode} failed with code {result.returncode}" + (f": {detail}" if detail else ""))
    return f"https://{dns_name}{path}"


def stop_tailscale_route(*, mode: str, path: str) -> None:
    try:
        _tailscale([mode, "off", path], TAILSCALE_HELPER_TIMEOUT_SECONDS)
    except ExposureError as exc:
        logger.warning("removing the tailscale %s route %s failed: %s", mode, path, exc)


# ------------------------------------------------------------------------------------------------
# What `voicecall serve` uses
# ------------------------------------------------------------------------------------------------


def start_exposure(config: VoiceCallConfig, *, ngrok_timeout: float = NGROK_STARTUP_TIMEOUT_SECONDS,
                   tailscale_timeout: float = TAILSCALE_TIMEOUT_SECONDS) -> Exposure:
    """Decide the public webhook URL, starting the configured tunnel if there is one."""
    if config.public_url:
        return Exposure(webhook_url=config.public_url, source="publicUrl")
    port, path = config.serve.port, config.serve.path
    local = Exposure(webhook_url=config.webhook_url(), source="local")
    tunnel = config.tunnel.provider
    try:
        if tunnel == "ngrok":
            url, proc = start_ngrok(port=port, path=path, auth_token=config.tunnel.ngrok_auth_token,
                                    domain=config.tunnel.ngrok_domain, timeout=ngrok_timeout,
                                    only_paths=public_paths(config), policy_dir=_state_dir())
            logger.info("ngrok tunnel active: %s", url)
            return Exposure(webhook_url=url, source="ngrok", _stoppers=[lambda: _terminate(proc)])
        if tunnel in TUNNEL_TAILSCALE_MODES:
            mode = TUNNEL_TAILSCALE_MODES[tunnel]
            exposure = _tailscale_exposure(mode, path, f"http://127.0.0.1:{port}{path}", tunnel, tailscale_timeout)
            if config.live_audio:  # Tailscale routes by path: the media stream needs its own
                stream = config.streaming.stream_path
                start_tailscale_route(mode=mode, path=stream, local_url=f"http://127.0.0.1:{port}{stream}",
                                      timeout=tailscale_timeout)
                exposure._stoppers.append(lambda: stop_tailscale_route(mode=mode, path=stream))
            return exposure
        if config.tailscale.mode != "off":
            mode = config.tailscale.mode
            return _tailscale_exposure(mode, config.tailscale.path, f"http://127.0.0.1:{port}{path}",
                                       f"tailscale-{mode}", tailscale_timeout)
    except ExposureError as exc:
        logger.error("webhook exposure failed, falling back to %s: %s", local.webhook_url, exc)
        local.error = str(exc)
    return local


def _state_dir() -> Path:
    from django.conf import settings

    return Path(settings.VAR_DIR)


def _tailscale_exposure(mode: str, path: str, local_url: str, source: str, timeout: float) -> Exposure:
    url = start_tailscale_route(mode=mode, path=path, local_url=local_url, timeout=timeout)
    logger.info("tailscale %s active: %s", mode, url)
    return Exposure(webhook_url=url, source=source, _stoppers=[lambda: stop_tailscale_route(mode=mode, path=path)])


def refusal_reason(config: VoiceCallConfig, exposure: Exposure) -> str | None:
    """Why a real carrier cannot start with this webhook URL (fact sheet §4.6), or ``None``."""
    if config.provider not in REAL_CARRIERS:
        return None
    host = urlsplit(exposure.webhook_url).hostname or ""
    if host and not is_local_or_private_host(host):
        return None
    reason = (f"refusing to start: the webhook URL {exposure.webhook_url} is local or private, so "
              f"{config.provider} can never reach it. Set publicUrl to your public https URL, or set "
              "tunnel.provider to ngrok, tailscale-serve or tailscale-funnel.")
    if exposure.error:
        reason += f" (The configured tunnel failed: {exposure.error})"
    return reason


def write_exposed_config(source: Path | None, public_url: str, target: Path) -> Path:
    """Copy the config document with ``publicUrl`` set, for the server's child processes.

    The copy keeps the document's form (whole OpenClaw document or inner config) and is written with
    mode 600 because it holds whatever credentials the original holds.
    """
    import json5

    document: dict[str, Any] = json5.loads(source.read_text(encoding="utf-8-sig")) if source else {}
    inner = document
    if "plugins" in document:
        entry = document.setdefault("plugins", {}).setdefault("entries", {}).setdefault("voice-call", {})
        inner = entry.setdefault("config", {})
    inner["publicUrl"] = public_url
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(document, handle, indent=2)
    target.chmod(0o600)
    return target


# ------------------------------------------------------------------------------------------------
# `voicecall expose`
# ------------------------------------------------------------------------------------------------


def expose_route(*, mode: str, path: str, port: int, serve_path: str) -> dict[str, Any]:
    """``voicecall expose --mode serve|funnel|off`` (fact sheet §9.3)."""
    if mode == "off":
        for route_mode in ("serve", "funnel"):
            stop_tailscale_route(mode=route_mode, path=path)
        return {"ok": True, "mode": "off", "path": path}
    local_url = f"http://127.0.0.1:{port}{serve_path}"
    result: dict[str, Any] = {"ok": False, "mode": mode, "path": path, "localUrl": local_url, "publicUrl": None}
    try:
        result["publicUrl"] = start_tailscale_route(mode=mode, path=path, local_url=local_url)
        result["ok"] = True
        return result
    except ExposureError as exc:
        error = str(exc)
    node_id = None
    try:
        _, node_id = tailscale_self()
    except ExposureError:
        pass
    result["hint"] = {
        "note": TAILSCALE_DISABLED_NOTE.format(mode=mode),
        "enableUrl": TAILSCALE_ENABLE_URL.format(mode=mode, node=node_id) if node_id else None,
        "error": error,
    }
    return result
