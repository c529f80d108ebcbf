"""The broker is down while a carrier webhook decides a follow-up: nothing is lost, nothing doubled.

Real processes on a private Redis broker (``redis-server`` started by the test): daphne serves the
webhook, a Celery worker with embedded beat runs the tasks and re-dispatches the outbox, the fake
Telnyx plays the carrier. An allow-listed caller rings while Redis is stopped: the ``call.initiated``
webhook must still be answered 200 (the carrier would not retry a 5xx sensibly -- and a retry would
be a replay), the decided "answer the call" effect waits in the outbox, and once Redis is back it
runs exactly once: one answer command, one greeting.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from calls.models import Call, PendingEffect
from tests.conftest import REPO, child_env, free_port, wait_until, write_config
from tests.fakes.telnyx import FakeTelnyx
from tests.test_telnyx_calls import OUR_NUMBER, telnyx_document

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.real_worker]

CALLER = "+15557770000"
WAIT = 60.0


def test_a_follow_up_decided_while_the_broker_is_down_runs_once_after_it_returns(
    tmp_path, start_daphne, configure, private_redis
):
    with FakeTelnyx.running() as fake:
        port = free_port()
        env = {"CELERY_BROKER_URL": private_redis.url, "VOICECALL_OUTBOX_REDISPATCH_SECONDS": "1"}
        document = telnyx_document(fake, serve={"port": port}, inboundPolicy="allowlist", allowFrom=[CALLER],
                                   inboundGreeting="Thanks for calling")
        start_daphne(document, port=port, extra_env=env)
        fake.webhook_url = f"http://127.0.0.1:{port}/voice/webhook"
        configure(document)
        config_path = write_config(tmp_path, {**document, "serve": {"port": port}})
        log = (tmp_path / "worker.log").open("w")
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "voicecall_site", "worker", "-B", "--loglevel=INFO",
             "--pool=threads", "--concurrency=2", "--without-gossip", "--without-mingle", "--without-heartbeat",
             "--schedule", str(tmp_path / "beat-schedule")],
            cwd=REPO, env=child_env(config_path, env), stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            private_redis.kill()
            leg = fake.start_inbound(CALLER, OUR_NUMBER)
            (initiated,) = wait_until(lambda: fake.deliveries_of("call.initiated", leg.call_control_id),
                                      timeout=WAIT)
            assert initiated.status == 200  # the webhook succeeded with the broker down
            call = Call.objects.get(provider_call_id=leg.call_control_id)
            pending = PendingEffect.objects.get(effect="answer_inbound_call", args=[str(call.id)])
            assert pending.dispatched_at is None and pending.attempts >= 1
            assert fake.commands_for("answer") == []

            private_redis.start()  # same port; beat re-sends the outbox row, the worker answers
            wait_until(lambda: Call.objects.filter(id=call.id, transcript__speaker="bot").exists(), timeout=WAIT,
                       what="the greeting after the broker came back",
                       detail=lambda: f"{list(PendingEffect.objects.values())} {(tmp_path / 'worker.log').read_text()[-1500:]}")
            wait_until(lambda: not PendingEffect.objects.filter(dispatched_at__isnull=True).exists(), timeout=WAIT)
            assert len(fake.commands_for("answer", leg.call_control_id)) == 1
            assert [c.body["payload"] for c in fake.commands_for("speak", leg.call_control_id)] == ["Thanks for calling"]
            assert list(Call.objects.get(id=call.id).transcript.filter(speaker="bot").values_list("text", flat=True)) == [
                "Thanks for calling"]
        finally:
            worker.terminate()
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()
