"""The carrier webhook served from ASGI without Django's middleware (calls/interfaces/direct_view.py):
what Django would still do for it -- request signals, a released database connection, the
ALLOWED_HOSTS check, a crash turned into a logged 500 -- happens here too."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest
from django.core import signals
from django.db import connection, connections
from django.http import HttpResponse

from calls.interfaces.direct_view import DirectView


def _scope(host: str = "127.0.0.1") -> dict:
    return {"type": "http", "method": "POST", "path": "/voice/webhook", "raw_path": b"/voice/webhook",
            "query_string": b"callId=1", "headers": [(b"host", host.encode()), (b"content-type", b"text/plain")],
            "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000), "scheme": "http"}


def _serve(view, scope: dict, body: bytes = b"") -> list[dict]:
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    asyncio.run(DirectView(view, threads=2)(scope, body, send))
    return sent


class _Signals:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def started(self, **kwargs):
        self.seen.append(("started", threading.current_thread().name))

    def finished(self, **kwargs):
        self.seen.append(("finished", threading.current_thread().name))


@pytest.fixture
def request_signals():
    recorder = _Signals()
    signals.request_started.connect(recorder.started)
    signals.request_finished.connect(recorder.finished)
    yield recorder
    signals.request_started.disconnect(recorder.started)
    signals.request_finished.disconnect(recorder.finished)


@pytest.mark.django_db(transaction=True)
def test_the_view_gets_the_request_and_its_database_connection_is_released_after(request_signals):
    seen: dict = {}

    def view(request):
        seen["body"], seen["query"], seen["host"] = request.body, request.GET["callId"], request.get_host()
        with connection.cursor() as cursor:  # the worker thread's own connection
            cursor.execute("SELECT 1")
        seen["connection"], seen["thread"] = connections["default"], threading.current_thread().name
        return HttpResponse(b"<Response/>", content_type="text/xml")

    sent = _serve(view, _scope(), b"CallSid=CA1")
    assert (seen["body"], seen["query"], seen["host"]) == (b"CallSid=CA1", "1", "127.0.0.1")
    start, body = sent
    assert start["status"] == 200 and body["body"] == b"<Response/>"
    assert (b"content-type", b"text/xml") in start["headers"] and (b"content-length", b"11") in start["headers"]
    # Both signals ran in the view's thread, so request_finished closed (returned) its connection.
    assert request_signals.seen == [("started", seen["thread"]), ("finished", seen["thread"])]
    assert seen["connection"].connection is None


def test_a_host_outside_allowed_hosts_is_a_400_and_the_view_never_runs(request_signals):
    called = []
    sent = _serve(lambda request: called.append(1) or HttpResponse(), _scope(host="attacker.example"))
    assert sent[0]["status"] == 400 and not called
    assert [kind for kind, _ in request_signals.seen] == ["started", "finished"]


def test_a_crashing_view_is_a_logged_500_and_the_request_still_finishes(request_signals, caplog):
    def view(request):
        raise RuntimeError("database went away")

    with caplog.at_level(logging.ERROR, logger="django.request"):
        sent = _serve(view, _scope())
    assert sent[0]["status"] == 500
    assert any("database went away" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)
    assert [kind for kind, _ in request_signals.seen] == ["started", "finished"]
