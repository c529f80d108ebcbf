"""``voicecall setup``: is this installation ready to place real calls? (fact sheet §9.3)"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from calls.config import ConfigError, get_config, set_config


def _check(check_id: str, ok: bool, message: str) -> dict[str, Any]:
    return {"id": check_id, "ok": ok, "message": message}


def run_setup_checks() -> dict[str, Any]:
    checks: list[dict[str, Any]] = []
    set_config(None)  # re-read the file: setup is how users check an edit
    try:
        config = get_config()
    except ConfigError as exc:
        checks.append(_check("provider-config", False, str(exc).replace("\n", "; ")))
        return {"ok": False, "checks": checks}
    checks.append(_check("plugin-enabled", config.enabled, "enabled" if config.enabled else "voice-call is disabled"))
    checks.append(_check("provider", True, config.provider))
    checks.append(_check("provider-config", True, "credentials present"))
    checks.append(_webhook_exposure(config))
    checks.append(_check("mode", True, "streaming" if config.streaming.enabled else "carrier speech (no media stream)"))
    return {"ok": all(c["ok"] for c in checks), "checks": checks}


def _webhook_exposure(config) -> dict[str, Any]:
    from providers.security import is_local_or_private_host

    if config.provider == "mock":
        return _check("webhook-exposure", True, f"mock provider posts to {config.webhook_url()}")
    if config.public_url:
        host = urlsplit(config.public_url).hostname or ""
        if is_local_or_private_host(host):
            return _check("webhook-exposure", False,
                          f"publicUrl host {host} is local or private; {config.provider} cannot reach it")
        return _check("webhook-exposure", True, f"carrier calls {config.public_url}")
    if config.tunnel.provider != "none" or config.tailscale.mode != "off":
        return _check("webhook-exposure", True, f"tunnel {config.tunnel.provider} will expose {config.serve.path}")
    return _check("webhook-exposure", False, "set publicUrl or tunnel.provider so the carrier can reach the webhook")
