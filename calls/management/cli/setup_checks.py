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
    mode = ("realtime voice (media stream + realtime model)" if config.realtime.enabled
            else "streaming" if config.streaming.enabled else "carrier speech (no media stream)")
    checks.append(_check("mode", True, mode))
    return {"ok": all(c["ok"] for c in checks), "checks": checks, "warnings": deployment_warnings(config)}


def deployment_warnings(config, environ=None) -> list[str]:
    """What works but is probably not what a production deployment wants (setup prints WARN lines)."""
    import os

    from django.conf import settings

    environ = os.environ if environ is None else environ
    warnings: list[str] = []
    security = config.webhook_security
    if (security.trust_forwarding_headers or security.allowed_hosts) and not security.trusted_proxy_ips:
        warnings.append(
            "webhookSecurity trusts X-Forwarded-* headers from any client (trustForwardingHeaders or allowedHosts "
            "without trustedProxyIPs): list your proxy's or tunnel's addresses in trustedProxyIPs"
        )
    scaled_out = bool(settings.REDIS_URL) or settings.DATABASES["default"]["ENGINE"] != "django.db.backends.sqlite3"
    if scaled_out and not (environ.get("DJANGO_SECRET_KEY") or "").strip():
        warnings.append(
            "DJANGO_SECRET_KEY is not set, so this host uses its own generated var/django-secret-key: with several "
            "hosts each derives different media-stream tokens and sessions; set the same DJANGO_SECRET_KEY on all"
        )
    if config.provider == "plivo" and config.plivo.allow_v2_signatures:
        warnings.append("plivo.allowV2Signatures is on: V2-only requests are accepted, and V2 signs neither body nor query")
    return warnings


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
