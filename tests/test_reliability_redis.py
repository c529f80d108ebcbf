"""Redis restarted in the middle of a call: the service reconnects and nothing in flight is lost.

Real processes: daphne and a Celery worker on a private Redis (``redis-server`` started by the test
with no persistence, so a restart forgets everything, as a crashed cache would), the fake Telnyx, and
this test process running ``continue`` turns whose waiter listens on Redis pub/sub
(``calls.services.call_updates``). Redis carries both the Celery tasks (daphne → worker: ``start_listening`` after
each prompt) and the "call changed" notifications (daphne → the waiting ``continue``).

What must hold: a turn that is waiting when Redis dies still gets the caller's reply (its waiter
falls back to re-checking the database); after the restart daphne publishes tasks again, the worker
consumes them again and a new turn is woken through pub/sub again; every webhook is applied once and
the call's record matches what the carrier saw.
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager

import pytest
from django.db import connections

from calls import services
from calls.models import Call, CallEvent
from calls.services import call_updates as notify
from calls.services import turns
from tests.conftest import free_port, run_cli, wait_until
from tests.fakes.telnyx import FakeTelnyx
from tests.test_telnyx_calls import CALLEE, telnyx_document

WAIT = 45.0


@pytest.fixture
def waiters(monkeypatch) -> list[dict]:
    """Record, for every ``continue`` waiter, whether it listened on Redis pub/sub."""
    seen: list[dict] = []
    real = turns.call_update_waiter

    @contextmanager
    def spying(call_id: str):
        with real(call_id) as waiter:
            record = {"subscribed": waiter._pubsub is not None, "fell_back": False}
            seen.append(record)
            real_wait = waiter.wait

            def wait(timeout: float) -> None:
                real_wait(timeout)
                if record["subscribed"] and waiter._pubsub is None:
                    record["fell_back"] = True  # its subscription died: re-checking the database

            waiter.wait = wait
            yield waiter

    monkeypatch.setattr(turns, "call_update_waiter", spying)
    return seen


def _continue_in_thread(call_id: str, prompt: str) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run() -> None:
        try:
            result["transcript"] = services.continue_call(call_id, prompt, timeout_ms=30000)
        except services.ServiceError as exc:
            result["error"] = str(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
@pytest.mark.real_worker
def test_redis_restart_mid_call_loses_no_call_and_continue_still_returns_the_reply(
    tmp_path, start_daphne, start_worker, configure, settings, monkeypatch, private_redis, waiters
):
    with FakeTelnyx.running() as fake:
        port = free_port()
        env = {"REDIS_URL": private_redis.url, "CELERY_BROKER_URL": private_redis.url}
        document = telnyx_document(fake, serve={"port": port})
        start_daphne(document, port=port, extra_env=env)
        config_path = tmp_path / "voicecall.json5"
        start_worker(config_path, env)
        configure(document)
        # This process waits on the same Redis as daphne publishes to.
        settings.REDIS_URL = private_redis.url
        monkeypatch.setattr(notify, "_redis_client", None)

        placed = run_cli(config_path, "call", "--to", CALLEE, "--message", "Hi, it is the garage.",
                         "--mode", "conversation", "--json", extra_env=env)
        assert placed.returncode == 0, placed.stderr
        call_id = json.loads(placed.stdout)["callId"]
        wait_until(lambda: Call.objects.filter(id=call_id, transcript__speaker="user").exists(), timeout=WAIT)
        call = Call.objects.get(id=call_id)
        leg = fake.calls[call.provider_call_id]

        # A turn with Redis up: woken through pub/sub.
        assert services.continue_call(call_id, "Can you bring the car in?", timeout_ms=30000) == (
            "Tomorrow at three works for me.")
        assert waiters[-1] == {"subscribed": True, "fell_back": False}

        # A turn that is waiting when Redis dies. The waiter's subscription breaks; the caller's reply
        # arrives while Redis is still down (daphne applies it; its notification cannot be sent).
        leg.replies.clear()
        listening_before = len(fake.commands_for("transcription_start", leg.call_control_id))
        thread, result = _continue_in_thread(call_id, "Which day suits you?")
        wait_until(lambda: len(fake.commands_for("transcription_start", leg.call_control_id)) > listening_before,
                   timeout=WAIT)
        assert waiters[-1]["subscribed"] is True
        private_redis.kill()
        wait_until(lambda: waiters[-1]["fell_back"], timeout=WAIT)
        fake.emit(leg, "call.transcription", transcription_data={
            "transcript": "Let me check my calendar.", "is_final": True, "confidence": 0.9})
        thread.join(timeout=WAIT)
        assert result == {"transcript": "Let me check my calendar."}  # found by the database re-check
        fake.wait_for(fake.idle, timeout=WAIT)
        assert fake.deliveries[-1].status == 200  # webhooks are still applied while Redis is down

        # Redis comes back, empty. daphne publishes the next start_listening task again, the worker
        # (reconnected) runs it, the reply is applied, and a new waiter is woken through pub/sub.
        private_redis.start()
        leg.replies.append("Friday morning is fine.")
        assert services.continue_call(call_id, "And Friday?", timeout_ms=30000) == "Friday morning is fine."
        assert waiters[-1] == {"subscribed": True, "fell_back": False}

        services.end_call(call_id)
        fake.wait_for(fake.idle, timeout=WAIT)

    call.refresh_from_db()
    assert (call.state, call.end_reason) == ("hangup-bot", "hangup-bot")
    assert list(call.transcript.order_by("id").values_list("speaker", "text")) == [
        ("bot", "Hi, it is the garage."), ("user", "Yes, I can hear you."),
        ("bot", "Can you bring the car in?"), ("user", "Tomorrow at three works for me."),
        ("bot", "Which day suits you?"), ("user", "Let me check my calendar."),
        ("bot", "And Friday?"), ("user", "Friday morning is fine."),
    ]
    # Every webhook the carrier sent was accepted and is in the ledger exactly once.
    deliveries = fake.deliveries_of(call_control_id=leg.call_control_id)
    assert all(d.status == 200 for d in deliveries)
    assert sorted(CallEvent.objects.filter(call=call).values_list("dedupe_key", flat=True)) == sorted(
        f"telnyx:evt:{d.event_id}" for d in deliveries)
    assert len(fake.commands_for("dial")) == 1
