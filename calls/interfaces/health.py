"""``GET /readyz``: may a load balancer send this process traffic?

``/healthz`` (``calls.interfaces.pages``) only says the process is up. ``/readyz`` also checks what serving a
call needs and answers ``503`` naming every failing component:

* ``database`` — a ``SELECT 1`` on the default connection;
* ``channelLayer`` — a message sent to and received from a fresh channel (in-memory or Redis);
* ``broker`` — a connection to the Celery broker (not needed, and reported so, when tasks run inline);
* ``draining`` — the process is being stopped: ``voicecall serve`` creates ``var/draining`` when it gets
  SIGTERM/SIGINT (and removes it when it starts), an operator may ``touch var/draining`` to take a
  machine out of rotation, and ``set_draining(True)`` flags just this process.

Failure details never carry credentials (URL user-info is masked).
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse

logger = logging.getLogger(__name__)

DRAIN_FLAG_FILENAME = "draining"
PROBE_TIMEOUT_SECONDS = 2.0
EAGER_BROKER_NOTE = "not used: tasks run inline (eager mode)"
_CREDENTIALS_IN_URL = re.compile(r"://[^@/\s]+@")

_draining = False


def drain_flag() -> Path:
    return Path(settings.VAR_DIR) / DRAIN_FLAG_FILENAME


def set_draining(on: bool) -> None:
    """Mark this process as draining (or not)."""
    global _draining
    _draining = on


def is_draining() -> bool:
    return _draining or drain_flag().exists()


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    return _CREDENTIALS_IN_URL.sub("://***@", text)[:300]


def check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def check_channel_layer() -> None:
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer configured")

    async def round_trip() -> None:
        channel = await layer.new_channel("readyz.")
        await layer.send(channel, {"type": "readyz.probe"})
        message = await layer.receive(channel)
        if message.get("type") != "readyz.probe":
            raise RuntimeError("channel layer returned a different message")

    async def probe() -> None:
        await asyncio.wait_for(round_trip(), PROBE_TIMEOUT_SECONDS)

    async_to_sync(probe)()


def check_broker() -> str | None:
    # The project's Celery app (voicecall_site/__init__.py creates it before Django is set up).
    from celery import current_app as app

    if app.conf.task_always_eager:
        return EAGER_BROKER_NOTE
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=PROBE_TIMEOUT_SECONDS)


CHECKS = {
    "database": check_database,
    "channelLayer": check_channel_layer,
    "broker": check_broker,
}


def readiness() -> tuple[bool, dict[str, str], list[str]]:
    checks: dict[str, str] = {}
    failing: list[str] = []
    for name, check in CHECKS.items():
        try:
            note = check()
        except Exception as exc:  # any failure means "not ready"; the reason is reported, not raised
            checks[name] = _describe(exc)
            failing.append(name)
            logger.warning("readiness check %s failed: %s", name, checks[name])
        else:
            checks[name] = note or "ok"
    if is_draining():
        checks["draining"] = "process is shutting down"
        failing.append("draining")
    return not failing, checks, failing


def readyz(request: HttpRequest) -> JsonResponse:
    ready, checks, failing = readiness()
    body = {"ready": ready, "checks": checks}
    if not ready:
        body["failing"] = failing
    return JsonResponse(body, status=200 if ready else 503)
