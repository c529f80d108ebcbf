"""providers/twilio.py against the local fake Twilio: REST requests as the SDK sends them, TwiML,
parsing and status tables, error mapping; and the fake's signer against the official validator."""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from twilio.request_validator import RequestValidator

from calls.config import config_from_dict
from providers.base import CallSnapshot, EventType, OutboundCallRequest, ProviderError, WebhookParseError
from providers.security import WebhookRequest
from providers.twilio import (
    DEFAULT_POLLY_VOICE,
    END_REASONS,
    NOT_IN_PROGRESS_RETRY_DELAYS_S,
    POLLY_VOICES,
    TwilioProvider,
    polly_voice,
    twilio_digits,
)
from tests.conftest import free_port
from tests.fakes.twilio import (
    ACCOUNT_SID,
    NOT_IN_PROGRESS,
    PUBLIC_URL,
    FakeTwilio,
    running_fake_twilio,
    twilio_config,
    twilio_signature,
)

CALL_ID = "8d6f7d0e-2a0b-4b53-9a53-0f1f4f0f0a11"


@pytest.fixture(autouse=True)
def _quick_21220_retries(monkeypatch):
    """Same number of retries, shorter waits."""
    import providers.twilio

    monkeypatch.setattr(providers.twilio, "NOT_IN_PROGRESS_RETRY_DELAYS_S", (0.01,) * len(NOT_IN_PROGRESS_RETRY_DELAYS_S))


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with running_fake_twilio() as fake:
        yield fake


def provider_for(fake: FakeTwilio, **overrides) -> TwilioProvider:
    return TwilioProvider(config_from_dict(twilio_config(fake, **overrides), env={}).provider_settings)


def snapshot(sid: str | None, *, mode: str = "conversation", direction: str = "outbound", **kw) -> CallSnapshot:
    fields = {
        "call_id": CALL_ID, "provider": "twilio", "provider_call_id": sid, "direction": direction,
        "state": "listening", "mode": mode, "from_number": "+15550001000", "to_number": "+15550002000",
        "initial_message": None, "pending_turn_token": None, "is_terminal": False, "webhook_url": PUBLIC_URL,
    }
    fields.update(kw)
    return CallSnapshot(**fields)


def twiml(body: str) -> ET.Element:
    return ET.fromstring(body)  # noqa: S314 - TwiML we just rendered


def query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


# --- the fake's signer is the real algorithm -------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "url", "params", "expected"),
    [
        ("12345", "https://mycompany.com/myapp.php?foo=1&bar=2",
         [("CallSid", "CA1234567890ABCDE"), ("Caller", "+14158675309"), ("Digits", "1234"),
          ("From", "+14158675309"), ("To", "+18005551212")], "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
        ("12345", "https://mycompany.com/myapp.php?foo=1&bar=2",
         [("Digits", "5678"), ("Digits", "1234"), ("Sid", "CA123"), ("SidAccount", "AC123")],
         "IK+Dwps556ElfBT0I3Rgjkr1wJU="),
        ("12345", "https://mycompany.com/myapp.php?foo=1&bar=2&bodySHA256="
         "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620", [], "a9nBmqA0ju/hNViExpshrM61xv4="),
    ],
)
def test_fake_signer_reproduces_the_protocol_test_vectors(token, url, params, expected):
    assert twilio_signature(token, url, params) == expected


def test_fake_signatures_of_its_own_webhooks_pass_the_official_request_validator(fake):
    call = fake.add_live_call()
    validator = RequestValidator(fake.auth_token)
    urls = [f"{PUBLIC_URL}?callId={CALL_ID}&type=status",
            f"{PUBLIC_URL}?callId={CALL_ID}&flow=gather&turnToken=abc&n=0a1b",
            "https://voice.example.test:8443/voice/webhook"]
    extras = [{}, {"SpeechResult": "Yes, I'd like to book. ½ & <ok>", "Confidence": "0.93"}, {"Digits": "12#"}]
    for url, extra in itertools.product(urls, extras):
        params = fake.voice_params(call, **extra)
        signature = fake.sign(url, params)
        assert signature == validator.compute_signature(url, dict(params))
        assert validator.validate(url, dict(params), signature)
        assert not validator.validate(url, {**dict(params), "CallStatus": "completed"}, signature)


# --- placing and controlling calls ----------------------------------------------------------------


def test_initiate_call_creates_a_url_driven_call_with_status_callbacks(fake):
    fake.callee.answers = False  # nothing to drive: only the REST request matters here
    provider = provider_for(fake, ringTimeoutMs=25000)
    placed = provider.initiate_call(OutboundCallRequest(
        call_id=CALL_ID, to_number="+15550002000", from_number="+15550001000", mode="notify",
        initial_message="Hi", webhook_url=PUBLIC_URL, ring_timeout_seconds=25, notify_hangup_delay_seconds=3,
    ))
    (create,) = fake.creates()
    assert placed.provider_call_id in fake.calls and placed.provider_call_id.startswith("CA")
    assert placed.status == "queued"
    assert create.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls.json"
    assert create.get("To") == "+15550002000" and create.get("From") == "+15550001000"
    assert create.get("Url") == f"{PUBLIC_URL}?callId={CALL_ID}"
    assert create.get("Method") == "POST"
    assert create.get("StatusCallback") == f"{PUBLIC_URL}?callId={CALL_ID}&type=status"
    assert create.getlist("StatusCallbackEvent") == ["initiated", "ringing", "answered", "completed"]
    assert create.get("Timeout") == "25"
    assert create.get("Twiml") is None  # Twilio ignores StatusCallback with inline TwiML


def test_speaking_replaces_the_live_twiml_with_say_gather_and_redirect(fake):
    call = fake.add_live_call()
    provider = provider_for(fake, tts={"provider": "openai", "providers": {"openai": {"voice": "onyx"}}})
    provider.play_tts(snapshot(call.sid), "Is 3 <pm> & ok?", listen_after=True, turn_token="tok123")
    (update,) = fake.updates(call.sid)
    doc = twiml(update.get("Twiml"))
    say, gather, redirect = list(doc)
    assert (say.tag, say.text, say.get("voice")) == ("Say", "Is 3 <pm> & ok?", "Polly.Brian")
    assert "&amp; ok?" in update.get("Twiml") and "&lt;pm&gt;" in update.get("Twiml")
    assert gather.tag == "Gather" and gather.get("input") == "speech" and gather.get("timeout") == "120"
    assert gather.get("speechTimeout") == "auto" and gather.get("method") == "POST"
    action = query(gather.get("action"))
    assert action["callId"] == [CALL_ID] and action["turnToken"] == ["tok123"] and action["n"]
    assert redirect.tag == "Redirect" and redirect.get("method") == "POST"
    assert query(redirect.text)["callId"] == [CALL_ID] and "turnToken" not in query(redirect.text)
    # every rendered URL is unique, so two passes through the loop are never mistaken for a replay
    provider.start_listening(snapshot(call.sid), turn_token=None)
    second = twiml(fake.updates(call.sid)[-1].get("Twiml"))
    assert second[0].tag == "Gather" and "turnToken" not in query(second[0].get("action"))
    assert query(second[1].text)["n"] != query(redirect.text)["n"]


def test_speaking_without_listening_says_then_redirects_back(fake):
    call = fake.add_live_call()
    provider_for(fake).play_tts(snapshot(call.sid, mode="notify"), "Bye", listen_after=False, turn_token=None)
    doc = twiml(fake.updates(call.sid)[0].get("Twiml"))
    assert [v.tag for v in doc] == ["Say", "Redirect"]


def test_dtmf_plays_digits_then_redirects(fake):
    call = fake.add_live_call()
    provider_for(fake).send_dtmf(snapshot(call.sid), "12,3#W")
    doc = twiml(fake.updates(call.sid)[0].get("Twiml"))
    assert doc[0].tag == "Play" and doc[0].get("digits") == "12w3#ww"
    assert doc[1].tag == "Redirect"


def test_twiml_update_retries_error_21220_until_the_call_is_in_progress(fake):
    call = fake.add_live_call()
    fake.update_failures.extend([(400, NOT_IN_PROGRESS), (400, NOT_IN_PROGRESS)])
    provider_for(fake).start_listening(snapshot(call.sid), turn_token="t")
    assert [u.status for u in fake.updates(call.sid)] == [400, 400, 200]


def test_twiml_update_gives_up_on_21220_after_the_retries(fake):
    call = fake.add_live_call()
    fake.update_failures.extend([(400, NOT_IN_PROGRESS)] * (len(NOT_IN_PROGRESS_RETRY_DELAYS_S) + 1))
    with pytest.raises(ProviderError) as err:
        provider_for(fake).start_listening(snapshot(call.sid), turn_token="t")
    assert "21220" in str(err.value) and err.value.retryable is False
    assert len(fake.updates(call.sid)) == len(NOT_IN_PROGRESS_RETRY_DELAYS_S) + 1


def test_hangup_completes_the_call_and_404_counts_as_already_ended(fake):
    call = fake.add_live_call()
    provider = provider_for(fake)
    provider.hangup_call(snapshot(call.sid))
    assert fake.updates(call.sid)[0].get("Status") == "completed"
    provider.hangup_call(snapshot("CA" + "f" * 32))  # unknown to Twilio: 404, tolerated
    provider.reject_inbound("CA" + "e" * 32)
    assert [u.status for u in fake.updates()] == [200, 404, 404]


def test_server_errors_are_retryable_and_client_errors_are_not(fake):
    call = fake.add_live_call()
    provider = provider_for(fake)
    fake.update_failures.append((503, {"code": 20500, "message": "Service unavailable", "status": 503}))
    with pytest.raises(ProviderError) as err:
        provider.hangup_call(snapshot(call.sid))
    assert err.value.retryable is True and err.value.status == 503
    fake.update_failures.append((400, {"code": 21210, "message": "bad From", "status": 400}))
    with pytest.raises(ProviderError) as err:
        provider.hangup_call(snapshot(call.sid))
    assert err.value.retryable is False and "21210" in str(err.value)


def test_wrong_credentials_fail_without_revealing_the_token(fake):
    wrong_token = "wrong_token_do_not_print_1234567"
    provider = provider_for(fake, twilio={"accountSid": ACCOUNT_SID, "authToken": wrong_token,
                                          "apiBaseUrl": fake.base_url})
    with pytest.raises(ProviderError) as err:
        provider.hangup_call(snapshot("CA" + "1" * 32))
    assert err.value.status == 401 and "20003" in str(err.value)
    assert wrong_token not in str(err.value) and fake.auth_token not in str(err.value)


def test_unreachable_api_is_a_retryable_error():
    provider = TwilioProvider(config_from_dict(twilio_config(
        FakeTwilio(), twilio={"accountSid": ACCOUNT_SID, "authToken": "tok",
                              "apiBaseUrl": f"http://127.0.0.1:{free_port()}"}), env={}).provider_settings)
    with pytest.raises(ProviderError) as err:
        provider.hangup_call(snapshot("CA" + "1" * 32))
    assert err.value.retryable is True and "unreachable" in str(err.value)


def test_read_timeout_while_creating_a_call_is_not_retried(monkeypatch, fake):
    provider = provider_for(fake)

    def timeout(*args, **kwargs):
        raise requests.ReadTimeout("read timed out")

    monkeypatch.setattr(provider.client.http_client, "request", timeout)
    with pytest.raises(ProviderError) as err:
        provider.initiate_call(OutboundCallRequest(
            call_id=CALL_ID, to_number="+15550002000", from_number="+15550001000", mode="notify",
            initial_message="Hi", webhook_url=PUBLIC_URL, ring_timeout_seconds=30, notify_hangup_delay_seconds=3,
        ))
    assert err.value.retryable is False  # Twilio may have dialed: a retry could place a second call


def test_call_status_lookup(fake):
    live = fake.add_live_call()
    done = fake.add_live_call()
    done.status = "busy"
    provider = provider_for(fake)
    assert provider.get_call_status(live.sid).is_terminal is False
    busy = provider.get_call_status(done.sid)
    assert (busy.status, busy.is_terminal, busy.end_reason) == ("busy", True, "busy")
    gone = provider.get_call_status("CA" + "9" * 32)
    assert (gone.status, gone.is_terminal) == ("not-found", True)


# --- tables and parsing ---------------------------------------------------------------------------


def test_openai_voices_map_to_polly_and_others_fall_back():
    assert {name: polly_voice(name) for name in POLLY_VOICES} == POLLY_VOICES
    assert polly_voice("Polly.Amy-Neural") == "Polly.Amy-Neural"
    assert polly_voice("Google.en-US-Standard-C") == "Google.en-US-Standard-C"
    assert polly_voice("marin") == DEFAULT_POLLY_VOICE and polly_voice(None) == DEFAULT_POLLY_VOICE


def test_dtmf_pauses_become_twilio_waits():
    assert twilio_digits("1,2p3P4w5W#*") == "1w2w3w4w5ww#*"


def form_request(params: dict[str, str], query_string: str = "") -> WebhookRequest:
    from urllib.parse import urlencode

    return WebhookRequest(method="POST", path="/voice/webhook", query_string=query_string,
                          headers={"Content-Type": "application/x-www-form-urlencoded"},
                          body=urlencode(params).encode(), remote_addr="127.0.0.1")


@pytest.mark.parametrize(
    ("status", "expected"),
    [("initiated", EventType.INITIATED), ("ringing", EventType.RINGING), ("in-progress", EventType.ANSWERED),
     *[(s, EventType.ENDED) for s in END_REASONS]],
)
def test_call_status_maps_to_events(status, expected, fake):
    parsed = provider_for(fake).parse_webhook(
        form_request({"CallSid": "CA1", "CallStatus": status, "Direction": "outbound-api"},
                     f"callId={CALL_ID}&type=status"), "twilio:req:k")
    (event,) = parsed.events
    assert event.type == expected and event.dedupe_key == "twilio:req:k"
    assert (event.call_id, event.provider_call_id, event.direction) == (CALL_ID, "CA1", "outbound")
    if expected == EventType.ENDED:
        assert event.reason == END_REASONS[status]


def test_canceled_ends_as_hangup_bot_and_queued_yields_nothing(fake):
    provider = provider_for(fake)
    canceled = provider.parse_webhook(form_request({"CallSid": "CA1", "CallStatus": "canceled"}), "k1")
    assert canceled.events[0].reason == "hangup-bot"
    assert provider.parse_webhook(form_request({"CallSid": "CA1", "CallStatus": "queued"}), "k2").events == []


def test_speech_result_wins_and_carries_confidence_and_turn_token(fake):
    parsed = provider_for(fake).parse_webhook(form_request(
        {"CallSid": "CA1", "CallStatus": "in-progress", "SpeechResult": " Noon works ", "Confidence": "0.71",
         "Digits": "5"}, f"callId={CALL_ID}&flow=gather&turnToken=tt&n=1"), "k")
    (event,) = parsed.events
    assert (event.type, event.transcript, event.is_final, event.confidence, event.turn_token) == (
        EventType.SPEECH, "Noon works", True, 0.71, "tt")
    no_confidence = provider_for(fake).parse_webhook(
        form_request({"CallSid": "CA1", "SpeechResult": "hi"}), "k2").events[0]
    assert no_confidence.confidence == 0.9


def test_digits_become_a_dtmf_event(fake):
    (event,) = provider_for(fake).parse_webhook(
        form_request({"CallSid": "CA1", "CallStatus": "in-progress", "Digits": "42#"}), "k").events
    assert (event.type, event.digits) == (EventType.DTMF, "42#")


def test_first_inbound_request_is_initiated_and_answered_with_caller_details(fake):
    parsed = provider_for(fake).parse_webhook(form_request(
        {"CallSid": "CA9", "CallStatus": "ringing", "Direction": "inbound", "From": "+15557770000",
         "To": "+15550001000"}), "twilio:req:abc")
    assert [e.type for e in parsed.events] == [EventType.INITIATED, EventType.ANSWERED]
    assert [e.dedupe_key for e in parsed.events] == ["twilio:req:abc:call.initiated", "twilio:req:abc:call.answered"]
    assert all((e.direction, e.from_number, e.to_number, e.call_id) == ("inbound", "+15557770000", "+15550001000",
                                                                       None) for e in parsed.events)


def test_a_body_without_call_sid_is_refused(fake):
    with pytest.raises(WebhookParseError):
        provider_for(fake).parse_webhook(form_request({"CallStatus": "ringing"}), "k")


def test_notify_reply_says_pauses_and_hangs_up(fake):
    provider = provider_for(fake, outbound={"notifyHangupDelaySec": 2})
    reply = provider.render_reply(form_request({}, f"callId={CALL_ID}"), None,
                                  snapshot("CA1", mode="notify", initial_message="Table <ready> & waiting"))
    doc = twiml(reply.body)
    assert [v.tag for v in doc] == ["Say", "Pause", "Hangup"]
    assert doc[0].text == "Table <ready> & waiting" and doc[1].get("length") == "2"
    assert reply.content_type == "application/xml"
    assert (reply.spoken_text, reply.delivers_initial_message, reply.listens) == (
        "Table <ready> & waiting", True, False)


def test_status_callback_reply_is_empty_twiml_even_with_a_pending_message(fake):
    reply = provider_for(fake).render_reply(form_request({}, f"callId={CALL_ID}&type=status"), None,
                                            snapshot("CA1", mode="notify", initial_message="Hi"))
    assert twiml(reply.body).tag == "Response" and len(twiml(reply.body)) == 0
    assert reply.spoken_text is None and reply.content_type == "application/xml"


def test_rejected_reply_rejects(fake):
    reply = provider_for(fake).rejected_reply(form_request({}))
    assert [v.tag for v in twiml(reply.body)] == ["Reject"]


def test_text_too_long_for_inline_twiml_is_refused_before_any_request(fake):
    call = fake.add_live_call()
    with pytest.raises(ProviderError, match="4000"):
        provider_for(fake).play_tts(snapshot(call.sid), "word " * 900, listen_after=True, turn_token=None)
    assert fake.updates() == []


def test_reply_to_an_ended_call_hangs_up_and_a_conversation_keeps_listening(fake):
    provider = provider_for(fake)
    ended = provider.render_reply(form_request({}, f"callId={CALL_ID}"), None, snapshot("CA1", is_terminal=True))
    assert [v.tag for v in twiml(ended.body)] == ["Hangup"]
    listening = provider.render_reply(form_request({}, f"callId={CALL_ID}&flow=redirect&n=1"), None,
                                      snapshot("CA1", pending_turn_token="tk"))
    assert [v.tag for v in twiml(listening.body)] == ["Gather", "Redirect"]
    assert query(twiml(listening.body)[0].get("action"))["turnToken"] == ["tk"]
    assert listening.spoken_text is None and listening.listens is False  # nothing new was said
