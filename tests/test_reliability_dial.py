"""Exactly one dial, whatever the carrier's create-call request suffers (OpenClaw fact sheet §2.3).

Per carrier, against its local fake and a real daphne serving our webhook: the create-call reply is
lost (held past the client's read timeout), the connection drops after the request, the carrier
answers 5xx, or 429. A lost reply or a dropped connection is ambiguous -- the carrier may have
dialed -- so it is never repeated: the carrier's callbacks, which carry our call id, bind its leg
to our record. An error answer created nothing, so the placement is retried. Either way the
callee's phone rings once, and our record ends up holding that one leg.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from calls import services
from calls.models import Call
from providers import twilio as twilio_module
from providers.plivo import provider as plivo_provider
from providers.telnyx import provider as telnyx_provider
from tests.conftest import free_port, wait_until
from tests.fakes.faults import CREATE_FAULTS, CREATED_WITHOUT_REPLY
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
    call = services.initiate_call(to=CALLEE, message="Your parcel is here", mode="notify")

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
        assert finished.metadata.get("dialConfirmedBy") == "callback"
