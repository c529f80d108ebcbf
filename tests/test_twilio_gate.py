"""The webhook's pre-auth gate (calls/interfaces/webhook_gate.py): against a real daphne with raw sockets, and the
ASGI middleware on its own (for servers that stream request bodies)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode, urlsplit

import pytest
import requests
from django.db import connection, transaction

import calls.interfaces.webhook_gate as asgi_gate
from calls.interfaces.limits import InFlightLimiter
from calls.interfaces.webhook_gate import WebhookGate
from calls.models import Call, CallEvent, WebhookReceipt
from providers.security import twilio_replay_key
from tests.conftest import REPO, RunningServer, child_env, free_port, wait_for_port, wait_until, write_config
from tests.factories import AnsweredCallFactory
from tests.fakes.twilio import PUBLIC_ORIGIN, PUBLIC_URL, FakeTwilio, running_fake_twilio, twilio_config

PUBLIC_HOST = "voice.example.test"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeTwilio]:
    with running_fake_twilio() as fake:
        yield fake


def _launch_daphne(directory, fake: FakeTwilio, log_name: str) -> RunningServer:
    """A daphne for Twilio behind a tunnel at ``PUBLIC_URL`` (tasks inline), on a free port."""
    port = free_port()
    config_path = write_config(directory, twilio_config(fake, serve={"port": port}))
    log = directory / log_name
    proc = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "voicecall_site.asgi:application"],
        cwd=REPO, env=child_env(config_path, {"VOICECALL_CELERY_EAGER": "1"}), stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    running = RunningServer(proc, port, log)
    wait_for_port(port, proc=proc)
    return running


@pytest.fixture(scope="module")
def server(django_db_setup, tmp_path_factory, fake) -> Iterator[RunningServer]:
    """One daphne for the module, configured for Twilio behind a tunnel at ``PUBLIC_URL``."""
    running = _launch_daphne(tmp_path_factory.mktemp("twilio-gate"), fake, "daphne.log")
    fake.tunnel[PUBLIC_ORIGIN] = running.base_url
    yield running
    running.stop()


def request_head(method: str = "POST", target: str = "/voice/webhook", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {PUBLIC_HOST}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1])


def exchange(port: int, head: bytes, *body_parts: bytes, timeout: float = 20) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        for part in body_parts:
            sock.sendall(part)
        return read_status(sock)


SIGNED = {"X-Twilio-Signature": "c2lnbmF0dXJl", "Content-Type": "application/x-www-form-urlencoded"}


# --- against daphne ------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["/voice/webhook-evil", "/voice/webhook/extra", "/voice/webhookx?callId=1"])
def test_paths_that_only_start_with_the_webhook_path_are_not_found(server, target):
    assert exchange(server.port, request_head(target=target, headers={**SIGNED, "Content-Length": "0"})) == 404


def test_get_on_the_webhook_is_method_not_allowed(server):
    assert exchange(server.port, request_head("GET", headers={"X-Twilio-Signature": "x"})) == 405


def test_missing_signature_header_is_refused_before_the_body_is_sent(server):
    head = request_head(headers={"Content-Type": "application/x-www-form-urlencoded", "Content-Length": "5000"})
    assert exchange(server.port, head) == 401  # answered with no body byte sent


def test_declared_body_over_64_kb_is_refused_before_it_is_sent(server):
    assert exchange(server.port, request_head(headers={**SIGNED, "Content-Length": str(64 * 1024 + 1)})) == 413


def test_streamed_body_over_64_kb_is_refused(server):
    chunk = b"A" * 8192
    framed = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(request_head(headers={**SIGNED, "Transfer-Encoding": "chunked"}))
        for _ in range(12):  # 96 KB, never terminated: only the cap can answer this
            sock.sendall(framed)
        assert read_status(sock) == 413


def test_stalled_body_is_timed_out_with_408(server):
    head = request_head(headers={**SIGNED, "Content-Length": "200"})
    assert exchange(server.port, head, b"CallSid=CA1&", timeout=30) == 408


@pytest.mark.django_db(transaction=True)
def test_webhook_keeps_the_public_host_and_other_hosts_are_refused(server, fake):
    call = AnsweredCallFactory(provider="twilio", provider_call_id="CA" + "b" * 32)
    fake_call = fake.add_live_call(sid=call.provider_call_id)
    url = f"{PUBLIC_URL}?callId={call.id}&type=status"
    params = fake.voice_params(fake_call, "ringing")
    wrong_host = fake.post(url, params, headers={"Host": "attacker.example"})
    assert wrong_host.status_code == 400  # Django's ALLOWED_HOSTS: only the publicUrl host was added
    assert fake.post(url, params).status_code == 200
    assert CallEvent.objects.filter(call=call).count() == 1


@pytest.mark.django_db(transaction=True)
def test_forged_signature_through_daphne_is_refused_and_records_nothing(server, fake):
    call = AnsweredCallFactory(provider="twilio", provider_call_id="CA" + "c" * 32)
    fake_call = fake.add_live_call(sid=call.provider_call_id)
    url = f"{PUBLIC_URL}?callId={call.id}&type=status"
    params = fake.voice_params(fake_call, "completed")
    forged = fake.post(url, params, signature=FakeTwilio(auth_token="stolen_guess_token").sign(url, params))
    assert forged.status_code == 401
    assert not CallEvent.objects.exists() and not WebhookReceipt.objects.exists()
    call.refresh_from_db()
    assert not call.is_terminal


@pytest.mark.django_db(transaction=True)
def test_trailing_slash_reaches_the_webhook_and_is_verified_as_signed(server, fake):
    call = AnsweredCallFactory(provider="twilio", provider_call_id="CA" + "d" * 32)
    fake_call = fake.add_live_call(sid=call.provider_call_id)
    url = f"{PUBLIC_URL}/?callId={call.id}&type=status"
    assert fake.post(url, fake.voice_params(fake_call, "completed")).status_code == 200
    call.refresh_from_db()
    assert call.end_reason == "completed"


def _waiting_on_locks() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # statistics views are cached per transaction
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


def _post_to(base_url: str, fake: FakeTwilio, url: str, params) -> int:
    """The delivery ``fake.post`` makes, to a chosen daphne (a carrier egress address is one IP)."""
    parts = urlsplit(url)
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Host": parts.netloc,
               "X-Twilio-Signature": fake.sign(url, params)}
    local = base_url + parts.path + "?" + parts.query
    return requests.post(local, data=urlencode(params).encode(), headers=headers, timeout=60).status_code


@pytest.fixture
def second_server(server, fake, tmp_path) -> Iterator[RunningServer]:
    """Another daphne process on the same database and config: a scaled-out deployment."""
    running = _launch_daphne(tmp_path, fake, "daphne-2.log")
    yield running
    running.stop()


def test_dribbling_bodies_from_one_client_hold_at_most_eight_slots(server):
    """The per-client cap exists against slow unauthenticated clients: a slot is taken when the
    headers arrive, so nine clients still sending their bodies cannot all be admitted."""
    head = request_head(headers={**SIGNED, "Content-Length": "400"})
    dribblers = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(8)]
    try:
        for sock in dribblers:
            sock.sendall(head + b"CallSid=CA1&")  # headers and a first part of the body, then silence
        assert exchange(server.port, head, b"CallSid=CA2&", timeout=30) == 429  # after its short wait
    finally:
        for sock in dribblers:
            sock.close()


@pytest.mark.django_db(transaction=True)
def test_verified_copies_of_one_webhook_from_one_client_are_never_refused(server, fake):
    """Twelve verified copies held on the receipt's row lock: past the per-client cap of eight, and
    none refused -- a verified request gives its client's slot back."""
    if connection.vendor != "postgresql":
        pytest.skip("holds requests in flight with a PostgreSQL row lock")
    call = AnsweredCallFactory(provider="twilio", provider_call_id="CA" + "e" * 32)
    fake_call = fake.add_live_call(sid=call.provider_call_id)
    url = f"{PUBLIC_URL}?callId={call.id}&type=status"
    params = fake.voice_params(fake_call, "completed")
    signature = fake.sign(url, params)
    with ThreadPoolExecutor(max_workers=12) as pool:
        with transaction.atomic():
            # An uncommitted receipt with this request's key: every copy blocks on its unique index.
            WebhookReceipt.objects.create(request_key=twilio_replay_key(url, params, signature), provider="twilio")
            held = [pool.submit(fake.post, url, params) for _ in range(12)]
            wait_until(lambda: _waiting_on_locks() >= 12, timeout=30, interval=0.05)
            transaction.set_rollback(True)
        statuses = [f.result(timeout=60).status_code for f in held]
    assert statuses == [200] * 12
    assert CallEvent.objects.filter(call=call).count() == 1  # one applied, eleven were replays
    assert Call.objects.get(id=call.id).end_reason == "completed"


@pytest.mark.django_db(transaction=True)
def test_a_burst_of_signed_callbacks_from_one_address_is_all_accepted_across_processes(
    server, second_server, fake
):
    """24 concurrent status callbacks from one carrier address over two daphne processes, then 40
    concurrent copies of one accepted callback: every one 2xx, every effect exactly once."""
    calls = [AnsweredCallFactory(provider="twilio", provider_call_id="CA" + f"{n:032x}") for n in range(24)]
    deliveries = []
    for call in calls:
        fake_call = fake.add_live_call(sid=call.provider_call_id)
        deliveries.append((f"{PUBLIC_URL}?callId={call.id}&type=status", fake.voice_params(fake_call, "completed")))
    targets = [server.base_url, second_server.base_url]
    with ThreadPoolExecutor(max_workers=24) as pool:
        statuses = list(pool.map(lambda n: _post_to(targets[n % 2], fake, *deliveries[n]), range(24)))
    assert statuses == [200] * 24
    assert CallEvent.objects.filter(call__in=calls).count() == 24
    assert set(Call.objects.filter(id__in=[c.id for c in calls]).values_list("end_reason", flat=True)) == {"completed"}

    url, params = deliveries[0]
    with ThreadPoolExecutor(max_workers=40) as pool:
        copies = list(pool.map(lambda n: _post_to(targets[n % 2], fake, url, params), range(40)))
    assert copies == [200] * 40
    assert CallEvent.objects.filter(call=calls[0]).count() == 1


# --- the ASGI middleware on its own --------------------------------------------------------------


def _scope(path: str = "/voice/webhook", headers: dict[str, str] | None = None, client: str = "198.51.100.7"):
    return {
        "type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (
            {"X-Twilio-Signature": "s"} if headers is None else headers).items()],
        "client": (client, 5555),
    }


def _run_gate(scope, messages, *, limiter: InFlightLimiter | None = None, stall: bool = False):
    seen: dict = {"called": False, "sent": []}

    async def app(scope_, receive, send):
        seen["called"], seen["scope"] = True, scope_
        seen["body"] = (await receive())["body"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def main():
        queue: asyncio.Queue = asyncio.Queue()
        for message in messages:
            queue.put_nowait(message)

        async def receive():
            if stall and queue.empty():
                await asyncio.sleep(3600)
            return await queue.get()

        async def send(message):
            seen["sent"].append(message)

        await WebhookGate(app, limiter=limiter or InFlightLimiter(8))(scope, receive, send)

    asyncio.run(main())
    statuses = [m["status"] for m in seen["sent"] if m["type"] == "http.response.start"]
    return seen, statuses[0] if statuses else None


def _body(data: bytes, more: bool = False):
    return {"type": "http.request", "body": data, "more_body": more}


@pytest.fixture
def twilio_in_process(configure):
    return configure(twilio_config(FakeTwilio()))


def test_gate_passes_other_paths_untouched(twilio_in_process):
    seen, status = _run_gate(_scope("/admin/login/", headers={}), [_body(b"")])
    assert status == 200 and seen["called"]


def test_gate_refuses_a_streamed_body_over_the_cap_without_calling_the_app(twilio_in_process):
    chunk = b"x" * 16384
    seen, status = _run_gate(_scope(), [_body(chunk, True) for _ in range(5)] + [_body(b"")])
    assert status == 413 and not seen["called"]


def test_gate_times_out_a_stalled_body(twilio_in_process, monkeypatch):
    monkeypatch.setattr(asgi_gate, "BODY_READ_TIMEOUT_S", 0.05)
    seen, status = _run_gate(_scope(), [_body(b"CallSid=", True)], stall=True)
    assert status == 408 and not seen["called"]


def test_gate_hands_the_whole_body_to_the_app(twilio_in_process):
    seen, status = _run_gate(_scope(), [_body(b"CallSid=CA1&", True), _body(b"CallStatus=ringing")])
    assert status == 200 and seen["body"] == b"CallSid=CA1&CallStatus=ringing"


def test_gate_in_flight_cap_counts_the_client_behind_a_trusted_proxy(configure, monkeypatch):
    monkeypatch.setattr(asgi_gate, "SLOT_WAIT_S", 0.05)  # over the cap a request waits this long, then 429
    configure(twilio_config(FakeTwilio(), webhookSecurity={"trustForwardingHeaders": True,
                                                            "trustedProxyIPs": ["10.0.0.5"]}))
    limiter = InFlightLimiter(2)
    for _ in range(2):
        assert limiter.acquire("198.51.100.7")
    behind_proxy = {"X-Twilio-Signature": "s", "X-Forwarded-For": "198.51.100.7"}
    busy, status = _run_gate(_scope(headers=behind_proxy, client="10.0.0.5"), [_body(b"")], limiter=limiter)
    assert status == 429 and not busy["called"]
    other = {"X-Twilio-Signature": "s", "X-Forwarded-For": "198.51.100.8"}
    _, status = _run_gate(_scope(headers=other, client="10.0.0.5"), [_body(b"")], limiter=limiter)
    assert status == 200
    # an untrusted client cannot pick its bucket with X-Forwarded-For
    _, status = _run_gate(_scope(headers=other, client="198.51.100.7"), [_body(b"")], limiter=limiter)
    assert status == 429
    assert limiter.in_flight("198.51.100.8") == 0  # slots are released after the response


def test_gate_normalises_a_trailing_slash_but_keeps_the_raw_path(twilio_in_process):
    seen, status = _run_gate(_scope("/voice/webhook/"), [_body(b"")])
    assert status == 200 and seen["scope"]["path"] == "/voice/webhook"
    assert seen["scope"]["raw_path"] == b"/voice/webhook/"


def test_gate_skips_the_header_check_in_skip_signature_mode(configure):
    configure(twilio_config(FakeTwilio(), skipSignatureVerification=True))
    _, status = _run_gate(_scope(headers={}), [_body(b"")])
    assert status == 200
    configure(twilio_config(FakeTwilio()))
    _, status = _run_gate(_scope(headers={}), [_body(b"")])
    assert status == 401


def test_stream_path_under_the_webhook_path_is_left_to_the_media_stream(configure):
    config = configure(twilio_config(FakeTwilio(), streaming={"streamPath": "/voice/webhook/stream"}))
    verdict = asgi_gate.check_head(method="GET", path="/voice/webhook/stream", headers={}, content_length=None,
                                   config=config)
    assert verdict.guarded is False
    other = asgi_gate.check_head(method="POST", path="/voice/webhook/other", headers={}, content_length=None,
                                 config=config)
    assert (other.guarded, other.status) == (True, 404)
