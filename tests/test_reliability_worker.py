"""A Celery worker SIGKILLed while its ``place_call`` task is waiting for the carrier's dial answer.

Real processes: daphne and Celery workers on a private Redis broker (so the broker can be watched
and nobody else's tasks mix in), the fake Telnyx holding the ``POST /v2/calls`` request open
(``dial_gate``) while the test kills the worker that sent it. Redis then hands the unacknowledged task
to the next worker once the (lowered) visibility timeout has passed.

A phone call must never be dialed twice: the carrier receives at most one create-call request, and
the database agrees with the carrier — the call is either placed once (the carrier's id stored, the
call carried through) or marked failed with the "not redialed" error. When the carrier completes the
held dial after all, that leg is not left ringing: it is hung up (a bug these tests found: the late
leg's webhooks only attached its id to the failed call; ``apply_event`` now queues
``hang_up_stray_leg``). The last test checks that rule in-process, so it runs without Redis too.

Redelivery needs the broker's visibility timeout to pass: ``VOICECALL_BROKER_VISIBILITY_TIMEOUT``
(``voicecall_site/settings.py``) is lowered to a few seconds here.
"""

from __future__ import annotations

import json
import re
import signal
import time

import pytest

from calls import services
from calls.models import Call
from providers import get_provider
from providers.base import OutboundCallRequest
from tests.conftest import PrivateRedis, free_port, run_cli, wait_until
from tests.factories import CallFactory
from tests.fakes.telnyx import FakeTelnyx
from tests.test_telnyx_calls import CALLEE, OUR_NUMBER, WEBHOOK_PATH, telnyx_document

pytestmark = pytest.mark.django_db(transaction=True)

VISIBILITY_TIMEOUT_SECONDS = 2
WAIT = 45.0


def _stack(fake: FakeTelnyx, redis: PrivateRedis, tmp_path, start_daphne):
    port = free_port()
    env = {"REDIS_URL": redis.url, "CELERY_BROKER_URL": redis.url,
           "VOICECALL_BROKER_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT_SECONDS)}
    document = telnyx_document(fake, serve={"port": port})
    start_daphne(document, port=port, extra_env=env)
    return tmp_path / "voicecall.json5", env


def _place_and_kill_the_dialing_worker(fake: FakeTelnyx, config_path, env, start_worker) -> tuple[str, float]:
    """Queue a notify call; kill the worker once its dial reached the (held) carrier."""
    fake.dial_gate.clear()
    worker = start_worker(config_path, env)
    placed = run_cli(config_path, "call", "--to", CALLEE, "--message", "Your parcel is at the door.",
                     "--mode", "notify", "--json", extra_env=env)
    assert placed.returncode == 0, placed.stderr
    call_id = json.loads(placed.stdout)["callId"]
    wait_until(fake.dial_received.is_set, timeout=WAIT)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)
    taken_at = time.monotonic()
    call = Call.objects.get(id=call_id)
    assert call.metadata.get("dialClaimedAt") and not call.provider_call_id  # killed mid-dial
    return call_id, taken_at


def _start_after_visibility_timeout(start_worker, config_path, env, taken_at: float):
    """Redis re-offers the dead worker's task to a worker that starts after the visibility timeout."""
    time.sleep(max(0.0, taken_at + VISIBILITY_TIMEOUT_SECONDS + 0.5 - time.monotonic()))
    return start_worker(config_path, env)


def _redelivered_place_call_result(tmp_path, index: int) -> str:
    """What the restarted worker's run of the redelivered ``place_call`` returned (from its log)."""
    log = tmp_path / f"worker-{index}.log"

    def result() -> str | None:
        match = re.search(r"Task calls\.tasks\.place_call\[[^\]]+\] succeeded in [^:]+: '([a-z-]+)'", log.read_text())
        return match.group(1) if match else None

    return wait_until(result, timeout=WAIT)


@pytest.mark.slow
@pytest.mark.real_worker
def test_worker_killed_mid_dial_redelivery_after_the_carrier_answered_does_not_dial_again(
    tmp_path, start_daphne, start_worker, private_redis
):
    with FakeTelnyx.running() as fake:
        config_path, env = _stack(fake, private_redis, tmp_path, start_daphne)
        call_id, taken_at = _place_and_kill_the_dialing_worker(fake, config_path, env, start_worker)

        # The carrier places the call although nobody is left to read its answer; its webhooks tell us
        # the call's id (client_state carries ours).
        fake.dial_gate.set()
        call = wait_until(lambda: Call.objects.filter(id=call_id, provider_call_id__isnull=False).first(), timeout=WAIT)
        _start_after_visibility_timeout(start_worker, config_path, env, taken_at)

        assert _redelivered_place_call_result(tmp_path, 1) == "already-placed"
        done = wait_until(lambda: Call.objects.filter(id=call_id, state="completed").first(), timeout=WAIT)
        assert len(fake.commands_for("dial")) == 1
        assert len(fake.calls) == 1
        assert done.provider_call_id == call.provider_call_id
        assert [c.action for c in fake.commands_for(call_control_id=done.provider_call_id)] == ["speak", "hangup"]
        assert list(done.transcript.values_list("text", flat=True)) == ["Your parcel is at the door."]


@pytest.mark.slow
@pytest.mark.real_worker
def test_worker_killed_mid_dial_redelivery_before_the_carrier_answered_fails_the_call_and_hangs_up_the_late_leg(
    tmp_path, start_daphne, start_worker, private_redis
):
    with FakeTelnyx.running() as fake:
        config_path, env = _stack(fake, private_redis, tmp_path, start_daphne)
        call_id, taken_at = _place_and_kill_the_dialing_worker(fake, config_path, env, start_worker)

        # The task is redelivered while the carrier still sits on the dial: we cannot know whether it
        # will place the call, so the call is failed, never dialed a second time.
        _start_after_visibility_timeout(start_worker, config_path, env, taken_at)
        assert _redelivered_place_call_result(tmp_path, 1) == "interrupted"
        failed = Call.objects.get(id=call_id)
        assert (failed.state, failed.last_error) == ("failed", services.PLACEMENT_INTERRUPTED)
        assert len(fake.commands_for("dial")) == 1

        # Then the carrier places it after all: that leg is hung up, not left ringing with nobody on it.
        fake.dial_gate.set()
        (leg,) = wait_until(lambda: list(fake.calls.values()), timeout=WAIT)
        wait_until(lambda: fake.commands_for("hangup", leg.call_control_id), timeout=WAIT)
        fake.wait_for(lambda: not leg.alive, timeout=WAIT)
        assert len(fake.commands_for("dial")) == 1
        assert fake.commands_for("speak") == []
        ended = Call.objects.get(id=call_id)
        assert (ended.state, ended.last_error) == ("failed", services.PLACEMENT_INTERRUPTED)
        assert ended.provider_call_id == leg.call_control_id  # the ledger knows which leg it was


def test_a_carrier_leg_that_turns_up_for_a_call_we_already_failed_is_hung_up_once(client, configure):
    """The same rule without worker processes (runs on every database, no Redis needed): the carrier's
    webhooks for a leg of a call that was failed before its id was stored lead to one hang-up."""
    with FakeTelnyx.running() as fake:
        config = configure(telnyx_document(fake))
        call = CallFactory(provider="telnyx", from_number=OUR_NUMBER, to_number=CALLEE, mode="notify",
                           metadata={"dialClaimedAt": 1})
        services.fail_call(str(call.id), services.PLACEMENT_INTERRUPTED)
        # The carrier places the dial anyway; its webhooks (to a URL nobody serves here) are replayed
        # below through the real view, signed as Telnyx signed them.
        leg_id = get_provider(config.provider_settings).initiate_call(OutboundCallRequest(
            call_id=str(call.id), to_number=CALLEE, from_number=OUR_NUMBER, mode="notify", initial_message="Hi",
            webhook_url=f"http://127.0.0.1:{free_port()}/voice/webhook", ring_timeout_seconds=30,
            notify_hangup_delay_seconds=0)).provider_call_id
        fake.wait_for(fake.idle)
        for delivery in fake.deliveries_of(call_control_id=leg_id):
            for _ in range(2):  # and Telnyx's retry of each
                response = client.post(WEBHOOK_PATH, data=delivery.body, content_type="application/json",
                                       headers=fake.sign(delivery.body, delivery.timestamp))
                assert response.status_code == 200

        assert len(fake.commands_for("hangup", leg_id)) == 1
        assert fake.calls[leg_id].alive is False
        assert fake.commands_for("speak") == []
        ended = Call.objects.get(id=call.id)
        assert (ended.state, ended.last_error, ended.provider_call_id) == (
            "failed", services.PLACEMENT_INTERRUPTED, leg_id)
