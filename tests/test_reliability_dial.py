"""Exactly one dial, whatever the carrier's create-call request suffers (OpenClaw fact sheet §2.3).

Per carrier, against its local fake and a real daphne serving our webhook: the create-call reply is
lost (held past the client's read timeout), the connection drops after the request, the carrier
answers 5xx, or 429. A lost reply or a dropped connection is ambiguous -- the carrier may have
dialed -- so it is never repeated: the carrier's callbacks, which carry our call id, bind its leg
to our record. An error answer created nothing, so the placement is retried. Either way the
callee's phone rings once, and our record ends up holding that one leg. Where the carrier's API
shows our id on its calls (Telnyx: ``client_state`` in the connection's active calls) the leg is
looked up at once; the reaper asks again before it gives a never-confirmed dial up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from calls import services
from calls.models import Call
from providers import twilio as twilio_module
from providers.plivo import provider as plivo_provider
from providers.telnyx import provider as telnyx_provider
from tests.conftest import free_port, wait_until
from tests.fakes.faults import CREATE_FAULTS, CREATED_WITHOUT_REPLY, LOSE_REPLY
from tests.fakes.plivo import FakePlivo
from tests.fakes.telnyx import FakeTelnyx
from tests.fakes.twilio import PUBLIC_ORIGIN, running_fake_twilio, twilio_config
from voicecall_site.celery import app as celery_app

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

EAGER = {"VOICECALL_CELERY_EAGER": "1"}
CALLEE = "+15550002000"
OUR_NUMBER = "+15550001000"
READ_TIMEOUT_S = 0.5  # the client's; a lost reply is held for 2 s (tests/fakes/faults.py)


@dataclass
class Carrier:
    fake: Any
    legs: Any  # () -> carrier ids of the calls the fake has created

    def create_requests(self) -> int:
        fake = self.fake
        if isinstance(fake, FakeTelnyx):
            return len(fake.commands_for("dial"))
        if isinstance(fake, FakePlivo):
            return len(fake.rest_of("make_call"))
        return len(fake.creates())


@pytest.fixture
def retries_inline():
    """Eager Celery re-runs a retried placement inline only when errors are not propagated."""
    previous = celery_app.conf.task_eager_propagates
    celery_app.conf.task_eager_propagates = False
    yield
    celery_app.conf.task_eager_propagates = previous


@pytest.fixture(params=["twilio", "telnyx", "plivo"])
def carrier(request, start_daphne, configure, monkeypatch, retries_inline):
    port = free_port()
    local = f"http://127.0.0.1:{port}/voice/webhook"
    common = {"fromNumber": OUR_NUMBER, "outbound": {"notifyHangupDelaySec": 0}, "maxConcurrentCalls": 5}
    if request.param == "twilio":
        monkeypatch.setattr(twilio_module, "REST_TIMEOUT_S", READ_TIMEOUT_S)
        with running_fake_twilio() as fake:
            document = twilio_config(fake, **common)
            server = start_daphne(document, port=port, extra_env=EAGER)
            fake.tunnel[PUBLIC_ORIGIN] = server.base_url
            configure({**document, "serve": {"port": port}})
            yield Carrier(fake, lambda: list(fake.calls))
    elif request.param == "telnyx":
        monkeypatch.setattr(telnyx_provider, "REQUEST_TIMEOUT", (2.0, READ_TIMEOUT_S))
        with FakeTelnyx.running() as fake:
            document = {"provider": "telnyx", "publicUrl": local, **common,
                        "telnyx": {"apiKey": fake.api_key, "connectionId": fake.connection_id,
                                   "publicKey": fake.public_key, "apiBaseUrl": fake.base_url}}
            start_daphne(document, port=port, extra_env=EAGER)
            configure({**document, "serve": {"port": port}})
            yield Carrier(fake, lambda: list(fake.calls))
    else:
        monkeypatch.setattr(plivo_provider, "REQUEST_TIMEOUT", (2.0, READ_TIMEOUT_S))
        with FakePlivo.running() as fake:
            document = {"provider": "plivo", "publicUrl": local, **common,
                        "plivo": {"authId": fake.auth_id, "authToken": fake.auth_token, "apiBaseUrl": fake.base_url}}
            start_daphne(document, port=port, extra_env=EAGER)
            configure({**document, "serve": {"port": port}})
            yield Carrier(fake, lambda: [c.call_uuid for c in fake.calls.values()])


@pytest.mark.parametrize("fault", CREATE_FAULTS)
def test_a_faulted_create_call_request_rings_the_callee_exactly_once(carrier, fault):
    carrier.fake.create_faults.inject(fault)
    finds_by_our_id = isinstance(carrier.fake, FakeTelnyx)  # its active-calls list shows our client_state
    if finds_by_our_id:
        carrier.fake.callback_gate.clear()  # so it is the lookup, not a racing callback, that binds the leg
    call = services.initiate_call(to=CALLEE, message="Your parcel is here", mode="notify")
    if finds_by_our_id:
        carrier.fake.callback_gate.set()

    (leg,) = wait_until(carrier.legs, what="the carrier's call")
    # Our record ends up holding that leg: from the create reply, or -- when the reply was lost --
    # from the carrier's callbacks, which carry our call id.
    wait_until(lambda: Call.objects.get(id=call.id).provider_call_id == leg, what="the leg bound to our call",
               detail=lambda: f"{Call.objects.get(id=call.id).provider_call_id!r} != {leg!r}")
    wait_until(lambda: Call.objects.get(id=call.id).is_terminal, what="the notify call to finish")
    assert carrier.legs() == [leg]  # one phone call, never a second dial
    assert carrier.create_requests() == (1 if fault in CREATED_WITHOUT_REPLY else 2)
    finished = Call.objects.get(id=call.id)
    assert finished.state == "completed"
    if fault in CREATED_WITHOUT_REPLY:
        assert finished.metadata.get("dialConfirmedBy") == ("lookup" if finds_by_our_id else "callback")


@pytest.fixture
def telnyx(start_daphne, configure, monkeypatch, retries_inline):
    monkeypatch.setattr(telnyx_provider, "REQUEST_TIMEOUT", (2.0, READ_TIMEOUT_S))
    port = free_port()
    with FakeTelnyx.running() as fake:
        document = {"provider": "telnyx", "publicUrl": f"http://127.0.0.1:{port}/voice/webhook",
                    "fromNumber": OUR_NUMBER, "outbound": {"notifyHangupDelaySec": 0},
                    "telnyx": {"apiKey": fake.api_key, "connectionId": fake.connection_id,
                               "publicKey": fake.public_key, "apiBaseUrl": fake.base_url}}
        start_daphne(document, port=port, extra_env=EAGER)
        configure({**document, "serve": {"port": port}})
        yield fake


def test_a_lost_dial_reply_whose_lookup_fails_waits_for_the_callbacks_and_never_redials(telnyx):
    telnyx.create_faults.inject(LOSE_REPLY)
    telnyx.callback_gate.clear()
    telnyx.fail_next("active_calls", 503)
    telnyx.fail_next("active_calls", 503)  # the lookup's retry too
    call = services.initiate_call(to=CALLEE, message="Your parcel is here", mode="notify")

    waiting = Call.objects.get(id=call.id)
    assert waiting.provider_call_id is None and "not redialed" in waiting.last_error
    assert len(telnyx.commands_for("active_calls")) == 2
    telnyx.callback_gate.set()
    (leg,) = telnyx.calls
    wait_until(lambda: Call.objects.get(id=call.id).is_terminal, what="the notify call to finish")
    finished = Call.objects.get(id=call.id)
    assert (finished.provider_call_id, finished.state) == (leg, "completed")
    assert finished.metadata.get("dialConfirmedBy") == "callback"
    assert len(telnyx.commands_for("dial")) == 1


def test_the_reaper_finds_an_unconfirmed_dial_at_the_carrier_and_hangs_it_up(telnyx):
    """No callback ever came (they cannot reach us) and the first lookup failed: the reaper asks
    the carrier again before giving up, binds the leg it lists and ends it through the carrier --
    nothing of ours is left ringing unmanaged, and nothing is dialed again."""
    telnyx.answer_outbound = False
    telnyx.create_faults.inject(LOSE_REPLY)
    telnyx.callback_gate.clear()
    telnyx.fail_next("active_calls", 503)
    telnyx.fail_next("active_calls", 503)
    call = services.initiate_call(to=CALLEE, message="Your parcel is here", mode="conversation")
    (leg,) = telnyx.calls
    telnyx.calls[leg].alive, telnyx.calls[leg].state = True, "bridging"  # still ringing at the carrier
    Call.objects.filter(id=call.id).update(started_at=timezone.now() - timedelta(hours=1))

    assert services.reap_stale_calls()["stale"] == 1
    reaped = Call.objects.get(id=call.id)
    assert (reaped.provider_call_id, reaped.state) == (leg, "hangup-bot")
    assert reaped.metadata.get("dialConfirmedBy") == "lookup"
    assert [c.call_control_id for c in telnyx.commands_for("hangup")] == [leg]
    assert len(telnyx.commands_for("dial")) == 1


def test_the_reaper_fails_an_unconfirmed_dial_the_carrier_does_not_list(telnyx):
    telnyx.create_faults.inject(LOSE_REPLY)
    telnyx.callback_gate.clear()
    telnyx.fail_next("active_calls", 503)
    telnyx.fail_next("active_calls", 503)
    call = services.initiate_call(to=CALLEE, message="Your parcel is here", mode="notify")
    (leg,) = telnyx.calls
    telnyx.calls[leg].alive = False  # it ended at the carrier; its callbacks never reached us
    Call.objects.filter(id=call.id).update(started_at=timezone.now() - timedelta(hours=1))

    services.reap_stale_calls()
    reaped = Call.objects.get(id=call.id)
    assert (reaped.provider_call_id, reaped.state) == (None, "failed")
    assert not telnyx.commands_for("hangup") and len(telnyx.commands_for("dial")) == 1
