"""The bearer token that guards ``POST /rpc`` and ``POST /tools/voice_call``.

Where the token comes from, first match wins:

1. config ``rpc.token``;
2. env ``VOICECALL_RPC_TOKEN`` (also applied by the config loader; read here again so a config built
   in Python without env still honours it);
3. ``var/rpc-token``: generated once (``secrets.token_urlsafe(32)``, file mode 600) by whichever
   process needs it first — the server on its first request to ``/rpc`` or ``/tools/voice_call``,
   ``manage.py ensure_admin`` (which prints where it is), or the CLI once it finds a server. Creation is atomic (``O_EXCL``), so concurrent processes
   agree on one token.

The token is compared in constant time and never logged or echoed. A request without the right token
is answered ``401`` before its body is read, so nothing is done.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from django.conf import settings
from django.http import HttpRequest, JsonResponse

from calls.config import VoiceCallConfig, get_config

TOKEN_ENV_VAR = "VOICECALL_RPC_TOKEN"  # noqa: S105 - the variable name, not a token
TOKEN_FILENAME = "rpc-token"  # noqa: S105 - a file name, not a token
BEARER_PREFIX = "bearer "


def token_file() -> Path:
    return Path(settings.VAR_DIR) / TOKEN_FILENAME


def configured_token(config: VoiceCallConfig | None = None) -> str | None:
    """The token from config or env, or ``None`` when the generated file is used."""
    config = config or get_config()
    return config.rpc.token or os.environ.get(TOKEN_ENV_VAR, "").strip() or None


def ensure_token_file() -> str:
    """Read ``var/rpc-token``, creating it (mode 600) if it does not exist yet."""
    path = token_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
    token = ""
    for _ in range(50):  # another process may have created it a moment ago and be mid-write
        token = path.read_text().strip()
        if token:
            break
        import time

        time.sleep(0.01)
    if not token:
        raise RuntimeError(f"{path} is empty; delete it to generate a new RPC token")
    return token


def rpc_token(config: VoiceCallConfig | None = None) -> str:
    """The token this installation expects (and the CLI sends)."""
    return configured_token(config) or ensure_token_file()


def token_source(config: VoiceCallConfig | None = None) -> str:
    """Where the token comes from, for humans (never the token itself)."""
    config = config or get_config()
    if config.rpc.token:
        return "config rpc.token"
    if os.environ.get(TOKEN_ENV_VAR, "").strip():
        return f"${TOKEN_ENV_VAR}"
    ensure_token_file()
    return f"{token_file()} (cat {token_file()})"


def bearer_ok(request: HttpRequest) -> bool:
    """Whether the request carries ``Authorization: Bearer <the token>`` (constant-time compare)."""
    supplied = request.headers.get("Authorization", "")
    if not supplied.lower().startswith(BEARER_PREFIX):
        return False
    given = supplied[len(BEARER_PREFIX):].strip().encode()
    expected = rpc_token().encode()
    return bool(given) and hmac.compare_digest(given, expected)


def unauthorized(body: dict) -> JsonResponse:
    response = JsonResponse(body, status=401)
    response["WWW-Authenticate"] = 'Bearer realm="voicecall"'
    return response
