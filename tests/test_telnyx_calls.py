"""Telnyx calls end to end: our REST commands against the local fake Telnyx, and whole calls where
the fake posts signed webhooks to a real daphne server sharing the test database."""

from __future__ import annotations

import base64
from dataclasses import dataclass

import pytest

from calls import services
from calls.config import VoiceCallConfig
from calls.models import Call, CallEvent, RejectedInboundCall, TranscriptEntry
from providers import get_provider
from providers.base import CallSnapshot, OutboundCallRequest, ProviderError
from providers.telnyx import TelnyxProvider
from tests.conftest import RunningServer, free_port
from tests.fakes.telnyx import FakeTelnyx

WEBHOOK_PATH = "/voice/webhook"
OUR_NUMBER = "+15550001000"
CALLEE = "+15550002000"


@pytest.fixture
def fake():
    with FakeTelnyx.running() as fake:
        yield fake


def telnyx_document(fake: FakeTelnyx, **extra) -> dict:
    document = {
        "provider": "telnyx",
        "fromNumber": OUR_NUMBER,
        "telnyx": {
            "apiKey": fake.api_key,
            "connectionId": fake.connection_id,
            "publicKey": fake.public_key,
            "apiBaseUrl": fake.base_url,
        },
        "outbound": {"notifyHangupDelaySec": 0},
    }
    document.update(extra)
    return document


def provider_for(fake: FakeTelnyx, configure, **extra) -> TelnyxProvider:
    config = configure(telnyx_document(fake, **extra))
    provider = get_provider(config.provider_settings)
    assert isinstance(provider, TelnyxProvider)
    return provider


def snapshot_of(call_control_id: str | None, call_id: str = "6f1c2f5e-0000-4000-8000-000000000001") -> CallSnapshot:
    return CallSnapshot(
        call_id=call_id, provider="telnyx", provider_call_id=call_control_id, direction="outbound",
        state="answered", mode="conversation", from_number=OUR_NUMBER, to_number=CALLEE, initial_message=None,
        pending_turn_token=None, is_terminal=False, webhook_url="http://127.0.0.1:1/voice/webhook",
    )


def dial_request(call_id: str = "6f1c2f5e-0000-4000-8000-000000000001") -> OutboundCallRequest:
    return OutboundCallRequest(
        call_id=call_id, to_number=CALLEE, from_number=OUR_NUMBER, mode="notify", initial_message="Hi",
        webhook_url="http://127.0.0.1:9/voice/webhook", ring_timeout_seconds=25, notify_hangup_delay_seconds=0,
    )


def dial(fake: FakeTelnyx, provider: TelnyxProvider, call_id: str = "6f1c2f5e-0000-4000-8000-000000000001") -> str:
    return provider.initiate_call(dial_request(call_id)).provider_call_id


# ------------------------------------------------------------------------------------------------
# REST commands against the fake (no webhooks involved)
# ------------------------------------------------------------------------------------------------


def test_dial_sends_connection_numbers_webhook_client_state_and_ring_timeout(fake, configure):
    provider = provider_for(fake, configure)
    call_control_id = dial(fake, provider)
    (command,) = fake.commands_for("dial")
    assert command.status == 200
    assert call_control_id in fake.calls
    assert command.body == {
        "connection_id": fake.connection_id,
        "to": CALLEE,
        "from": OUR_NUMBER,
        "webhook_url": "http://127.0.0.1:9/voice/webhook",
        "webhook_url_method": "POST",
        "client_state": base64.b64encode(b"6f1c2f5e-0000-4000-8000-000000000001").decode(),
        "timeout_secs": 25,
        "command_id": "voicecall-dial-6f1c2f5e-0000-4000-8000-000000000001",
    }


def test_a_retried_dial_reuses_its_command_id_so_telnyx_places_one_call(fake, configure):
    provider = provider_for(fake, configure)
    first = dial(fake, provider)
    second = dial(fake, provider)
    assert first == second
    assert len(fake.calls) == 1
    assert len(fake.commands_for("dial")) == 2


def test_speak_sends_payload_voice_and_language_with_a_fresh_command_id(fake, configure):
    provider = provider_for(fake, configure)
    call_control_id = dial(fake, provider)
    provider.play_tts(snapshot_of(call_control_id), "Hello there", listen_after=True, turn_token=None)
    provider.play_tts(snapshot_of(call_control_id), "Hello again", listen_after=False, turn_token=None)
    first, second = fake.commands_for("speak", call_control_id)
    assert {k: first.body[k] for k in ("payload", "voice", "language")} == {
        "payload": "Hello there", "voice": "female", "language": "en-US"}
    assert first.body["command_id"] != second.body["command_id"]
    # listen_after only speaks: listening starts when Telnyx reports the end of playback
    assert fake.commands_for("transcription_start") == []


@pytest.mark.parametrize(
    ("voice", "sent"),
    [("AWS.Polly.Joanna-Neural", "AWS.Polly.Joanna-Neural"), ("male", "male"), ("alloy", "female")],
)
def test_speak_passes_telnyx_voices_through_and_replaces_foreign_ones(fake, configure, voice, sent):
    provider = provider_for(fake, configure, tts={"provider": "openai", "providers": {"openai": {"voice": voice}}})
    call_control_id = dial(fake, provider)
    provider.play_tts(snapshot_of(call_control_id), "Hi", listen_after=False, turn_token=None)
    (command,) = fake.commands_for("speak")
    assert command.body["voice"] == sent


def test_listening_starts_and_stops_telnyx_transcription(fake, configure):
    provider = provider_for(fake, configure)
    call_control_id = dial(fake, provider)
    provider.start_listening(snapshot_of(call_control_id), turn_token=None)
    provider.stop_listening(snapshot_of(call_control_id))
    (start,) = fake.commands_for("transcription_start", call_control_id)
    (stop,) = fake.commands_for("transcription_stop", call_control_id)
    assert start.body["language"] == "en"
    assert start.body["command_id"].startswith("voicecall-listen-")
    assert stop.status == 200


def test_answer_uses_a_deterministic_command_id_and_echoes_our_call_id(fake, configure):
    provider = provider_for(fake, configure)
    fake.webhook_url = "http://127.0.0.1:9/voice/webhook"
    inbound = fake.start_inbound("+15557770000", OUR_NUMBER)
    snap = snapshot_of(inbound.call_control_id, call_id="6f1c2f5e-0000-4000-8000-0000000000aa")
    provider.answer_call(snap)
    provider.answer_call(snap)  # a retried task: Telnyx ignores the repeated command_id
    first, second = fake.commands_for("answer")
    assert first.body["command_id"] == second.body["command_id"] == (
        "voicecall-answer-6f1c2f5e-0000-4000-8000-0000000000aa")
    assert second.status == 200
    assert base64.b64decode(inbound.client_state).decode() == "6f1c2f5e-0000-4000-8000-0000000000aa"


def test_hangup_of_an_already_ended_or_unknown_call_counts_as_success(fake, configure):
    provider = provider_for(fake, configure)
    call_control_id = dial(fake, provider)
    provider.hangup_call(snapshot_of(call_control_id))
    provider.hangup_call(snapshot_of(call_control_id, call_id="6f1c2f5e-0000-4000-8000-0000000000bb"))
    provider.hangup_call(snapshot_of("v3:never-existed"))
    statuses = [c.status for c in fake.commands_for("hangup")]
    assert statuses == [200, 422, 404]


def test_commands_to_an_ended_call_fail_without_retry(fake, configure):
    provider = provider_for(fake, configure)
    call_control_id = dial(fake, provider)
    provider.hangup_call(snapshot_of(call_control_id))
    with pytest.raises(ProviderError) as err:
        provider.play_tts(snapshot_of(call_control_id), "Anyone?", listen_after=False, turn_token=None)
    assert err.value.retryable is False
    assert err.value.status == 422
    assert "90018" in str(err.value)


def test_a_5xx_is_retried_once_with_the_same_command_id(fake, configure):
    provider = provider_for(fake, configure)
    call_control_id = dial(fake, provider)
    fake.fail_next("speak", 503, [{"code": "90000", "title": "Service unavailable"}])
    provider.play_tts(snapshot_of(call_control_id), "Second try", listen_after=False, turn_token=None)
    failed, succeeded = fake.commands_for("speak")
    assert (failed.status, succeeded.status) == (503, 200)
    assert failed.body["command_id"] == succeeded.body["command_id"]


def test_persistent_5xx_is_a_retryable_provider_error(fake, configure):
    provider = provider_for(fake, configure)
    fake.fail_next("dial", 500)
    fake.fail_next("dial", 502)
    with pytest.raises(ProviderError) as err:
        dial(fake, provider)
    assert err.value.retryable is True
    assert err.value.status == 502
    assert fake.calls == {}


def test_rejected_api_key_is_not_retryable_and_never_echoed(fake, configure):
    document = telnyx_document(fake)
    document["telnyx"]["apiKey"] = "KEYwrong-secret-value-123"
    provider = get_provider(configure(document).provider_settings)
    with pytest.raises(ProviderError) as err:
        dial(fake, provider)
    assert err.value.retryable is False
    assert err.value.status == 401
    assert "KEYwrong-secret-value-123" not in str(err.value)


def test_unreachable_api_is_a_retryable_error_without_the_key(fake, configure):
    document = telnyx_document(fake)
    document["telnyx"]["apiBaseUrl"] = f"http://127.0.0.1:{free_port()}"
    provider = get_provider(configure(document).provider_settings)
    with pytest.raises(ProviderError) as err:
        dial(fake, provider)
    assert err.value.retryable is True
    assert fake.api_key not in str(err.value)


def test_call_status_follows_is_alive_and_treats_404_as_ended(fake, configure):
    provider = provider_for(fake, configure)
    call_control_id = dial(fake, provider)
    live = provider.get_call_status(call_control_id)
    assert (live.is_terminal, live.is_unknown) == (False, False)
    provider.hangup_call(snapshot_of(call_control_id))
    ended = provider.get_call_status(call_control_id)
    assert ended.is_terminal is True
    gone = provider.get_call_status("v3:never-existed")
    assert (gone.status, gone.is_terminal) == ("not-found", True)
    fake.fail_next("status", 500)
    fake.fail_next("status", 500)
    unknown = provider.get_call_status(call_control_id)
    assert (unknown.is_terminal, unknown.is_unknown) == (False, True)


def test_a_dialed_call_is_found_by_our_call_id_among_the_connections_active_calls(fake, configure):
    """After a lost dial reply: GET /connections/{id}/active_calls, paged, matched on client_state."""
    provider = provider_for(fake, configure)
    others = [dial(fake, provider, f"6f1c2f5e-0000-4000-8000-{n:012d}") for n in range(1, 261)]
    ours = dial(fake, provider, "6f1c2f5e-0000-4000-8000-999999999999")  # on the second page of 250
    assert provider.find_placed_call("6f1c2f5e-0000-4000-8000-999999999999") == ours
    assert provider.find_placed_call("6f1c2f5e-0000-4000-8000-000000000007") == others[6]
    pages = [c.path for c in fake.commands_for("active_calls")]
    assert pages[0] == f"/v2/connections/{fake.connection_id}/active_calls?page%5Bnumber%5D=1&page%5Bsize%5D=250"
    assert len(pages) == 3  # two pages for ours, one for the other
    provider.hangup_call(snapshot_of(ours))
    assert provider.find_placed_call("6f1c2f5e-0000-4000-8000-999999999999") is None  # ended: no longer active
    assert provider.find_placed_call("6f1c2f5e-0000-4000-8000-000000000000") is None  # never dialed
    assert not [c for c in fake.commands_for("dial") if c.status != 200]  # a lookup never dials


def test_a_failing_active_calls_lookup_is_an_error_without_the_key(fake, configure):
    provider = provider_for(fake, configure)
    fake.fail_next("active_calls", 503)
    fake.fail_next("active_calls", 503)
    with pytest.raises(ProviderError) as err:
        provider.find_placed_call("6f1c2f5e-0000-4000-8000-000000000001")
    assert "503" in str(err.value) and fake.api_key not in str(err.value)


# ------------------------------------------------------------------------------------------------
# Whole calls: fake Telnyx → signed webhooks → real daphne → services → REST back to the fake
# ------------------------------------------------------------------------------------------------


@dataclass
class TelnyxStack:
    fake: FakeTelnyx
    server: RunningServer
    config: VoiceCallConfig


@pytest.fixture
def telnyx_stack(fake, configure, start_daphne):
    """Daphne (running Celery tasks inline) and this process share one Telnyx config and the DB."""

    def _start(**extra) -> TelnyxStack:
        port = free_port()
        document = telnyx_document(fake, serve={"port": port}, **extra)
        server = start_daphne(document, port=port, extra_env={"VOICECALL_CELERY_EAGER": "1"})
        config = configure(document)
        fake.webhook_url = f"{server.base_url}{WEBHOOK_PATH}"
        return TelnyxStack(fake, server, config)

    return _start


def wait_for_call(predicate, timeout: float = 20.0) -> Call:
    return FakeTelnyx.wait_for(predicate, timeout=timeout)


def all_deliveries_accepted(fake: FakeTelnyx) -> bool:
    return all(d.status == 200 for d in fake.deliveries)


e2e = pytest.mark.django_db(transaction=True)


@e2e
def test_notify_call_speaks_on_answer_then_hangs_up_after_playback(telnyx_stack):
    stack = telnyx_stack()
    fake = stack.fake
    call = services.initiate_call(to=CALLEE, message="Your order has shipped", mode="notify")

    ended = wait_for_call(lambda: Call.objects.filter(id=call.id, state="completed").first())
    assert ended.end_reason == "completed"
    assert ended.answered_at is not None
    ccid = ended.provider_call_id
    assert ccid in fake.calls
    assert [c.action for c in fake.commands_for(call_control_id=ccid)] == ["speak", "hangup"]
    assert fake.commands_for("speak")[0].body["payload"] == "Your order has shipped"
    assert list(ended.transcript.values_list("speaker", "text")) == [("bot", "Your order has shipped")]
    # hang-up only after Telnyx reported the end of playback
    fake.wait_for(lambda: fake.deliveries_of("call.hangup"))
    assert all_deliveries_accepted(fake)
    types = list(CallEvent.objects.filter(call=ended).order_by("id").values_list("type", flat=True))
    assert types[:4] == ["call.initiated", "call.answered", "call.speaking", "call.spoken"]


@e2e
def test_real_server_refuses_forged_webhooks_and_acknowledges_replays_without_effect(telnyx_stack):
    stack = telnyx_stack()
    fake = stack.fake
    call = services.initiate_call(to=CALLEE, message="Your order has shipped", mode="notify")
    wait_for_call(lambda: Call.objects.filter(id=call.id, state="completed").first())
    fake.wait_for(lambda: fake.deliveries_of("call.hangup"))
    (answered,) = fake.deliveries_of("call.answered")
    before = (CallEvent.objects.count(), TranscriptEntry.objects.count(), len(fake.commands))

    replayed = fake.replay(answered)
    forged = FakeTelnyx().post(fake.webhook_url, answered.body)  # signed with someone else's key
    tampered = fake.post(fake.webhook_url, answered.body.replace(b"call.answered", b"call.hangup__"),
                         headers=fake.sign(answered.body, answered.timestamp))

    assert (replayed.status_code, replayed.text) == (200, "OK")
    assert forged.status_code == 401
    assert tampered.status_code == 401
    assert (CallEvent.objects.count(), TranscriptEntry.objects.count(), len(fake.commands)) == before


@e2e
def test_conversation_greets_listens_after_playback_and_continue_returns_the_callers_reply(telnyx_stack):
    stack = telnyx_stack()
    fake = stack.fake
    call = services.initiate_call(to=CALLEE, message="Hi, this is the restaurant.", mode="conversation")
    # The greeting is spoken, then (on call.speak.ended) transcription starts and the callee answers.
    fake.wait_for(lambda: TranscriptEntry.objects.filter(call_id=call.id, speaker="user").exists())

    reply = services.continue_call(str(call.id), "When would you like to come?", timeout_ms=20000)

    assert reply == "Tomorrow at three works for me."
    call.refresh_from_db()
    assert call.state == "listening"
    assert call.metadata["turnCount"] == 1
    said = call.transcript.order_by("id")
    assert list(said.filter(speaker="bot").values_list("text", flat=True)) == [
        "Hi, this is the restaurant.", "When would you like to come?"]
    assert list(said.filter(speaker="user").values_list("text", "turn_token")) == [
        ("Yes, I can hear you.", ""), ("Tomorrow at three works for me.", said.last().turn_token)]
    assert said.last().turn_token  # the reply was taken as the answer to this continue turn
    actions = [c.action for c in fake.commands_for(call_control_id=call.provider_call_id)]
    assert actions == ["speak", "transcription_start", "speak", "transcription_start", "transcription_stop"]
    # the interim transcripts (is_final false) reached us but were not taken as the caller's turn
    assert CallEvent.objects.filter(call=call, type="call.speech").count() == 4
    assert all_deliveries_accepted(fake)

    services.end_call(str(call.id))
    call.refresh_from_db()
    assert (call.state, call.end_reason) == ("hangup-bot", "hangup-bot")
    assert fake.commands_for("hangup", call.provider_call_id)[0].body["command_id"] == f"voicecall-hangup-{call.id}"


@e2e
def test_unanswered_outbound_call_ends_no_answer(telnyx_stack):
    stack = telnyx_stack()
    stack.fake.answer_outbound = False
    call = services.initiate_call(to=CALLEE, message="Hello?", mode="notify")
    ended = wait_for_call(lambda: Call.objects.filter(id=call.id, state="no-answer").first())
    assert ended.end_reason == "no-answer"
    assert ended.transcript.count() == 0
    assert stack.fake.commands_for("speak") == []


@e2e
def test_accepted_inbound_caller_is_answered_by_rest_and_greeted(telnyx_stack):
    stack = telnyx_stack(inboundPolicy="allowlist", allowFrom=["+15557770000"], inboundGreeting="Thanks for calling")
    fake = stack.fake
    leg = fake.start_inbound("+15557770000", OUR_NUMBER)

    call = wait_for_call(
        lambda: Call.objects.filter(provider_call_id=leg.call_control_id, transcript__speaker="user").first()
    )
    assert (call.direction, call.mode, call.from_number) == ("inbound", "conversation", "+15557770000")
    (answer,) = fake.commands_for("answer", leg.call_control_id)
    assert answer.body["command_id"] == f"voicecall-answer-{call.id}"
    assert [c.action for c in fake.commands_for(call_control_id=leg.call_control_id)] == [
        "answer", "speak", "transcription_start"]
    assert fake.commands_for("speak")[0].body["payload"] == "Thanks for calling"
    assert list(call.transcript.order_by("id").values_list("speaker", "text")) == [
        ("bot", "Thanks for calling"), ("user", "Yes, I can hear you.")]
    assert all_deliveries_accepted(fake)


@e2e
def test_rejected_inbound_caller_is_never_answered_and_hung_up_once_despite_redelivery(telnyx_stack):
    stack = telnyx_stack()  # inboundPolicy defaults to disabled
    fake = stack.fake
    leg = fake.start_inbound("+15559990000", OUR_NUMBER)
    fake.wait_for(lambda: fake.deliveries_of("call.hangup", leg.call_control_id))
    (initiated,) = fake.deliveries_of("call.initiated", leg.call_control_id)

    redelivered = fake.redeliver(initiated)  # Telnyx retries: same data.id, new signature
    assert (redelivered.status_code, redelivered.text) == (200, "OK")

    hangups = fake.commands_for("hangup", leg.call_control_id)
    assert len(hangups) == 1
    assert hangups[0].body["command_id"] == f"voicecall-reject-{leg.call_control_id}"
    assert fake.commands_for("answer") == []
    assert Call.objects.count() == 0
    rejected = RejectedInboundCall.objects.get()
    assert (rejected.provider_call_id, rejected.hangup_attempted) == (leg.call_control_id, True)
    assert CallEvent.objects.filter(dedupe_key=f"telnyx:evt:{initiated.event_id}").count() == 1
