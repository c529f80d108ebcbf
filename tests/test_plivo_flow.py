"""Whole Plivo calls: a real daphne server serves our webhook, the local fake Plivo
(``tests/fakes/plivo.py``) receives our REST requests and fetches our answer / XML / GetInput /
hang-up URLs the way Plivo does, V3-signed. Services run in this process (eager Celery); the daphne
child runs its Celery tasks inline too (``VOICECALL_CELERY_EAGER=1``)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from calls import services
from calls.models import Call, CallEvent, RejectedInboundCall, TranscriptEntry, WebhookReceipt
from tests.conftest import free_port, wait_until
from tests.fakes.plivo import FakePlivo

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

OUR_NUMBER = "+14155550100"
CALLEE = "+14155550199"
CALLER = "+14155550123"


class PlivoWorld:
    def __init__(self, fake: FakePlivo, server, document: dict):
        self.fake, self.server, self.document = fake, server, document

    @property
    def webhook(self) -> str:
        return self.document["publicUrl"]


@pytest.fixture
def fake():
    with FakePlivo.running() as server:
        yield server


@pytest.fixture
def plivo_world(fake, start_daphne, configure):
    """``plivo_world(**config)``: daphne with a Plivo config pointed at the fake; the same config here."""

    def _start(**overrides) -> PlivoWorld:
        port = free_port()
        document = {
            "provider": "plivo",
            "fromNumber": OUR_NUMBER,
            "plivo": {"authId": fake.auth_id, "authToken": fake.auth_token, "apiBaseUrl": fake.base_url},
            "publicUrl": f"http://127.0.0.1:{port}/voice/webhook",
            "maxConcurrentCalls": 5,
            "outbound": {"notifyHangupDelaySec": 1},
            **overrides,
        }
        server = start_daphne(document, port=port, extra_env={"VOICECALL_CELERY_EAGER": "1"})
        configure({**document, "serve": {"port": port}})
        return PlivoWorld(fake, server, document)

    return _start


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def transcript(call_id) -> list[tuple[str, str]]:
    return list(TranscriptEntry.objects.filter(call_id=call_id).order_by("id").values_list("speaker", "text"))


def test_notify_call_speaks_waits_and_hangs_up_through_plivo_xml(plivo_world):
    world = plivo_world()
    fake = world.fake
    call = services.initiate_call(to=CALLEE, message="Your table is ready & waiting <now>", mode="notify")

    (make_call,) = fake.rest_of("make_call")
    assert make_call.status == 201
    assert (make_call.body["from"], make_call.body["to"], make_call.body["hangup_on_ring"]) == (
        "14155550100", "14155550199", 30)
    assert query_of(make_call.body["answer_url"]) == {"provider": "plivo", "flow": "answer", "callId": str(call.id)}
    (fake_call,) = fake.calls.values()

    wait_until(lambda: Call.objects.get(id=call.id).state == "completed")
    wait_until(lambda: fake.deliveries_of("hangup"))  # recorded by the fake once our reply is read
    call.refresh_from_db()
    assert call.end_reason == "completed" and call.answered_at is not None
    assert call.provider_call_id == fake_call.call_uuid  # RequestUUID upgraded to the CallUUID
    assert transcript(call.id) == [("bot", "Your table is ready & waiting <now>")]
    assert fake_call.heard == ["Your table is ready & waiting <now>"]
    (answer,) = fake.deliveries_of("answer")
    assert (answer.status, answer.content_type.split(";")[0]) == (200, "text/xml")
    assert answer.body == ('<Response><Speak language="en-US">Your table is ready &amp; waiting &lt;now&gt;</Speak>'
                           '<Wait length="1"/><Hangup/></Response>')
    assert [d.status for d in fake.deliveries_of("hangup")] == [200]
    assert set(CallEvent.objects.filter(call=call).values_list("type", flat=True)) == {
        "call.ringing", "call.answered", "call.ended"}
    assert fake.errors == []


def test_conversation_continue_is_answered_through_getinput_speech(plivo_world, fake):
    fake.replies = ("Hello, who is this?", "Yes, five works — très bien.")
    plivo_world()
    call = services.initiate_call(to=CALLEE, message="Hi, this is the assistant.", mode="conversation")
    wait_until(lambda: TranscriptEntry.objects.filter(call_id=call.id, speaker="user").exists())
    (answer,) = fake.deliveries_of("answer")
    assert '<GetInput action="' in answer.body and 'redirect="false"' in answer.body
    assert '<Speak language="en-US">Hi, this is the assistant.</Speak></GetInput><Wait length="300"/>' in answer.body

    reply = services.continue_call(str(call.id), "Does five work?", timeout_ms=20000)

    assert reply == "Yes, five works — très bien."
    (transfer,) = fake.rest_of("transfer")
    assert transfer.status == 202 and transfer.body["legs"] == "aleg" and transfer.body["aleg_method"] == "POST"
    assert query_of(transfer.body["aleg_url"])["flow"] == "xml-speak"
    assert "Does five work" not in transfer.body["aleg_url"]  # carried signed and compressed, not in clear
    getinputs = wait_until(lambda: len(fake.deliveries_of("getinput")) == 2 and fake.deliveries_of("getinput"))
    assert [d.status for d in getinputs] == [200, 200]
    assert "turnToken" not in query_of(getinputs[0].url)  # the greeting's answer belongs to no turn
    turn_token = query_of(getinputs[1].url)["turnToken"]
    assert TranscriptEntry.objects.get(text="Yes, five works — très bien.").turn_token == turn_token
    assert transcript(call.id) == [("bot", "Hi, this is the assistant."), ("user", "Hello, who is this?"),
                                   ("bot", "Does five work?"), ("user", "Yes, five works — très bien.")]
    call.refresh_from_db()
    assert call.state == "listening" and call.metadata["turnCount"] == 1 and call.pending_turn_token == ""
    assert fake.errors == []


def test_live_speak_transfers_the_call_to_signed_xml_speak(plivo_world, fake):
    plivo_world()
    call = services.initiate_call(to=CALLEE, message="Hello?", mode="conversation")
    wait_until(lambda: Call.objects.get(id=call.id).state == "listening")
    fake_call = next(iter(fake.calls.values()))
    wait_until(lambda: fake_call.parked is not None)  # no reply to the greeting: parked in <Wait>

    services.speak(str(call.id), "One more thing: bring an umbrella.")

    wait_until(lambda: "One more thing: bring an umbrella." in fake_call.heard)
    (xml_speak,) = wait_until(lambda: fake.deliveries_of("xml-speak"))
    assert xml_speak.status == 200 and xml_speak.content_type.startswith("text/xml")
    assert transcript(call.id)[-1] == ("bot", "One more thing: bring an umbrella.")

    # Somebody with a valid Plivo signature but a forged payload cannot make us say anything.
    forged_url = xml_speak.url.replace(query_of(xml_speak.url)["say"], "v1.eyJzIjoiaGkifQ.AAAA")
    response = fake.post(forged_url, fake.call_params(fake_call))
    assert response.status_code == 400
    # The keep-alive <Redirect> after the long <Wait> answers the same wait again.
    fake.end_wait(fake_call)
    wait_until(lambda: fake.deliveries_of("keepalive"))
    (keepalive,) = fake.deliveries_of("keepalive")
    assert keepalive.status == 200 and '<Wait length="300"/><Redirect method="POST">' in keepalive.body
    assert fake.errors == []


def test_inbound_caller_on_the_allowlist_is_greeted_inside_getinput(plivo_world, fake):
    world = plivo_world(inboundPolicy="allowlist", allowFrom=[CALLER], inboundGreeting="Thanks for calling.")
    fake_call = fake.start_inbound("14155550123", "14155550100", answer_url=world.webhook,
                                   hangup_url=world.webhook + "?flow=hangup")
    call = wait_until(lambda: Call.objects.filter(provider_call_id=fake_call.call_uuid, state="listening").first())
    assert (call.direction, call.mode, call.from_number, call.to_number) == ("inbound", "conversation", CALLER, OUR_NUMBER)
    assert transcript(call.id) == [("bot", "Thanks for calling.")]
    (answer,) = wait_until(lambda: fake.deliveries_of("answer"))
    assert answer.status == 200
    assert '<Speak language="en-US">Thanks for calling.</Speak></GetInput>' in answer.body
    assert f"callId={call.id}" in answer.body  # later callbacks name our call
    assert fake_call.heard == ["Thanks for calling."]

    fake.callee_hangs_up(fake_call)
    wait_until(lambda: Call.objects.get(id=call.id).state == "completed")


def test_inbound_caller_rejected_by_policy_is_hung_up_once_without_a_record(plivo_world, fake):
    world = plivo_world(inboundPolicy="disabled")
    fake_call = fake.start_inbound("14155550666", "14155550100", answer_url=world.webhook,
                                   hangup_url=world.webhook + "?flow=hangup")
    wait_until(lambda: fake.deliveries_of("hangup"))
    (answer,) = fake.deliveries_of("answer")
    assert (answer.status, answer.body) == (200, "<Response><Hangup/></Response>")
    assert [d.status for d in fake.deliveries_of("hangup")] == [200]
    assert [(r.kind, r.uuid) for r in fake.rest] == [("hangup", fake_call.call_uuid)]
    assert Call.objects.count() == 0
    rejected = RejectedInboundCall.objects.get()
    assert (rejected.provider_call_id, rejected.hangup_attempted, rejected.from_number) == (
        fake_call.call_uuid, True, "+14155550666")
    assert fake_call.state == "ended"


def test_missing_or_bad_signatures_are_rejected_and_change_nothing(plivo_world, fake):
    world = plivo_world()
    fake.outbound_behaviour = "queue"
    call = services.initiate_call(to=CALLEE, message="Hi", mode="notify")
    call.refresh_from_db()
    url = f"{world.webhook}?provider=plivo&flow=answer&callId={call.id}"
    params = {"CallUUID": "11111111-2222-4333-8444-555555555555", "RequestUUID": call.provider_call_id,
              "From": "14155550100", "To": "14155550199", "CallStatus": "in-progress", "Direction": "outbound",
              "Event": "StartApp"}
    no_headers = fake._http.post(url, data=params, timeout=10)
    forged = FakePlivo(auth_token="not-the-token").sign(url, params)
    wrong_token = fake._http.post(url, data=params, headers=forged, timeout=10)
    signed = fake.sign(url, params)
    tampered = fake._http.post(url, data={**params, "CallStatus": "completed"}, headers=signed, timeout=10)
    v3_bad_v2_good = fake._http.post(url, data=params, headers={**signed, "X-Plivo-Signature-V3": forged[
        "X-Plivo-Signature-V3"]}, timeout=10)
    assert [r.status_code for r in (no_headers, wrong_token, tampered, v3_bad_v2_good)] == [401, 401, 401, 401]
    assert CallEvent.objects.count() == 0 and WebhookReceipt.objects.count() == 0
    assert Call.objects.get(id=call.id).state == "initiated"

    accepted = fake.post(url, params)
    assert accepted.status_code == 200 and "<Speak" in accepted.text
    assert Call.objects.get(id=call.id).state == "speaking"


def test_replayed_plivo_callbacks_are_acknowledged_without_side_effects(plivo_world, fake):
    plivo_world()
    call = services.initiate_call(to=CALLEE, message="Parcel arriving today", mode="notify")
    wait_until(lambda: Call.objects.get(id=call.id).state == "completed")
    (hangup,) = wait_until(lambda: fake.deliveries_of("hangup"))
    (answer,) = fake.deliveries_of("answer")
    before = (CallEvent.objects.count(), TranscriptEntry.objects.count(), WebhookReceipt.objects.count())

    replayed_answer = fake.resend(answer)
    replayed_hangup = fake.resend(hangup)

    assert (replayed_answer.status_code, replayed_answer.text) == (200, answer.body)
    assert replayed_hangup.status_code == 200
    assert (CallEvent.objects.count(), TranscriptEntry.objects.count(), WebhookReceipt.objects.count()) == before
    assert Call.objects.get(id=call.id).state == "completed"


def test_callback_arriving_before_the_make_call_response_keeps_the_call_uuid(plivo_world, fake):
    plivo_world()
    fake.answer_before_responding = True
    call = services.initiate_call(to=CALLEE, message="Quick one", mode="conversation")
    fake_call = next(iter(fake.calls.values()))
    call.refresh_from_db()
    # The answer callback (carrying CallUUID and RequestUUID) was applied before place_call stored the
    # RequestUUID from the 201: the CallUUID must survive, so later commands reach the live call.
    assert call.provider_call_id == fake_call.call_uuid
    assert call.state == "listening"
    services.end_call(str(call.id))
    assert [(r.kind, r.uuid, r.status) for r in fake.rest_of("hangup")] == [("hangup", fake_call.call_uuid, 204)]
    assert Call.objects.get(id=call.id).state == "hangup-bot"
    (hangup,) = wait_until(lambda: fake.deliveries_of("hangup"))
    assert hangup.status == 200 and Call.objects.get(id=call.id).state == "hangup-bot"  # terminal is sticky


def test_request_uuid_is_cancelled_before_answer_and_upgraded_by_the_hangup_callback(plivo_world, fake):
    plivo_world()
    fake.outbound_behaviour = "queue"
    call = services.initiate_call(to=CALLEE, message="Never mind", mode="notify")
    call.refresh_from_db()
    fake_call = fake.call_by_request(call.provider_call_id)
    assert fake_call is not None and call.state == "initiated"

    services.end_call(str(call.id))

    assert [(r.kind, r.uuid, r.status) for r in fake.rest if r.kind in ("hangup", "cancel")] == [
        ("hangup", fake_call.request_uuid, 404), ("cancel", fake_call.request_uuid, 204)]
    wait_until(lambda: fake.deliveries_of("hangup"))
    (hangup,) = fake.deliveries_of("hangup")
    assert hangup.status == 200 and hangup.params["CallStatus"] == "cancel"
    call.refresh_from_db()
    assert call.state == "hangup-bot" and call.provider_call_id == fake_call.call_uuid


def _v2_only(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if "V3" not in k}


def test_a_captured_requests_v2_headers_cannot_carry_a_forged_hangup(plivo_world, fake):
    """The downgrade: a captured callback's V2 headers, V3 stripped, on the hang-up URL with a forged
    body. V2 signs neither body nor query, so it is refused by default and the live call stays up."""
    plivo_world()
    call = services.initiate_call(to=CALLEE, message="Hello there", mode="conversation")
    wait_until(lambda: Call.objects.get(id=call.id).state == "listening")
    (answer,) = wait_until(lambda: fake.deliveries_of("answer"))
    forged = {**answer.params, "CallStatus": "completed", "Event": "Hangup", "HangupCause": "NORMAL_CLEARING"}
    hangup_url = answer.url.replace("flow=answer", "flow=hangup")
    before = (CallEvent.objects.count(), WebhookReceipt.objects.count())
    response = fake._http.post(hangup_url, data=forged, headers=_v2_only(answer.headers), timeout=10)
    assert response.status_code == 401
    assert (CallEvent.objects.count(), WebhookReceipt.objects.count()) == before
    assert Call.objects.get(id=call.id).state == "listening"


def test_with_v2_allowed_a_v2_only_copy_of_an_accepted_request_is_a_replay(plivo_world, fake):
    plivo_world(plivo={"authId": fake.auth_id, "authToken": fake.auth_token, "apiBaseUrl": fake.base_url,
                       "allowV2Signatures": True})
    call = services.initiate_call(to=CALLEE, message="Hello there", mode="conversation")
    wait_until(lambda: Call.objects.get(id=call.id).state == "listening")
    (answer,) = wait_until(lambda: fake.deliveries_of("answer"))
    before = (CallEvent.objects.count(), TranscriptEntry.objects.count(), Call.objects.get(id=call.id).state)
    copy = fake._http.post(answer.url, data=answer.params, headers=_v2_only(answer.headers), timeout=10)
    assert (copy.status_code, copy.text) == (200, answer.body)
    assert (CallEvent.objects.count(), TranscriptEntry.objects.count(), Call.objects.get(id=call.id).state) == before
    # A fresh V2-only request (new nonce) is accepted in this mode.
    fresh = fake._http.post(answer.url, data=answer.params,
                            headers=_v2_only(fake.sign(answer.url, answer.params, nonce="99999999999999999999")),
                            timeout=10)
    assert fresh.status_code == 200
