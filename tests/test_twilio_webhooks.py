"""The Twilio webhook through the Django view: signatures (every way to forge one), replays, turn
tokens, forwarding-header trust, the ngrok rule, inbound policy. Each test checks the HTTP status and
whether the database changed. Carrier REST calls triggered here go to the local fake Twilio."""

from __future__ import annotations

import io
import json
import logging
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from hashlib import sha256
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from django.core.handlers.asgi import ASGIRequest

from calls.interfaces.webhooks import webhook_request_from
from calls.media import control as streams
from calls.models import AllowedCaller, Call, CallEvent, RejectedInboundCall, TranscriptEntry, WebhookReceipt
from tests.factories import AnsweredCallFactory, CallFactory
from tests.fakes.twilio import (
    ACCOUNT_SID,
    PUBLIC_URL,
    FakeTwilio,
    running_fake_twilio,
    twilio_config,
    twilio_signature,
)

pytestmark = pytest.mark.django_db

WEBHOOK = "/voice/webhook"
TWILIO_IP = "54.172.60.1"
CALLER = "+15557770000"
OUR_NUMBER = "+15550001000"


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with running_fake_twilio() as fake:
        yield fake


@pytest.fixture
def twilio(configure, fake):
    """Install a Twilio config pointed at the fake; returns a function to reconfigure with overrides."""

    def _install(**overrides):
        return configure(twilio_config(fake, **overrides))

    _install()
    return _install


def params_for(sid: str, status: str = "in-progress", direction: str = "outbound-api", **extra: str):
    params = [("AccountSid", ACCOUNT_SID), ("ApiVersion", "2010-04-01"), ("CallSid", sid), ("CallStatus", status),
              ("Direction", direction), ("From", OUR_NUMBER if direction != "inbound" else CALLER),
              ("To", "+15550002000" if direction != "inbound" else OUR_NUMBER)]
    params.extend(extra.items())
    return params


def post(
    client,
    query: str,
    params: list[tuple[str, str]],
    *,
    token: str | None = None,
    sign_url: str | None = None,
    signature: str | None = None,
    body: str | None = None,
    content_type: str = "application/x-www-form-urlencoded",
    remote: str = TWILIO_IP,
    headers: dict[str, str] | None = None,
    path: str = WEBHOOK,
):
    """POST like Twilio: signed over the public URL (``PUBLIC_URL`` + the query) unless told otherwise."""
    url = sign_url or (f"{PUBLIC_URL}?{query}" if query else PUBLIC_URL)
    if signature is None:
        signature = twilio_signature(token or "fake_twilio_auth_token_0123456789", url, params)
    meta = {"REMOTE_ADDR": remote}
    if signature:
        meta["HTTP_X_TWILIO_SIGNATURE"] = signature
    for name, value in (headers or {}).items():
        meta["HTTP_" + name.upper().replace("-", "_")] = value
    return client.post(f"{path}?{query}" if query else path, data=body if body is not None else urlencode(params),
                       content_type=content_type, **meta)


def ledger() -> tuple:
    """Everything a webhook can change."""
    return (
        list(Call.objects.order_by("id").values_list("id", "state", "end_reason", "pending_turn_token",
                                                     "initial_message_delivered")),
        CallEvent.objects.count(),
        WebhookReceipt.objects.count(),
        TranscriptEntry.objects.count(),
        RejectedInboundCall.objects.count(),
    )


def twiml(response) -> ET.Element:
    assert response["Content-Type"].startswith("application/xml")
    return ET.fromstring(response.content)  # noqa: S314 - our own server's reply


def status_query(call: Call) -> str:
    return f"callId={call.id}&type=status"


# --- accepted requests ----------------------------------------------------------------------------


def test_signed_status_callback_is_applied_and_answered_with_empty_twiml(client, twilio):
    call = CallFactory(provider="twilio", provider_call_id="CA" + "1" * 32, state="initiated")
    response = post(client, status_query(call), params_for(call.provider_call_id, "ringing"))
    assert response.status_code == 200
    assert len(twiml(response)) == 0
    call.refresh_from_db()
    assert call.state == "ringing"
    assert CallEvent.objects.get().type == "call.ringing"


@pytest.mark.parametrize(
    ("status", "reason"),
    [("completed", "completed"), ("busy", "busy"), ("no-answer", "no-answer"), ("failed", "failed"),
     ("canceled", "hangup-bot")],
)
def test_terminal_statuses_end_the_call_with_the_mapped_reason(client, twilio, status, reason):
    call = CallFactory(provider="twilio", provider_call_id="CA" + "2" * 32, state="ringing")
    assert post(client, status_query(call), params_for(call.provider_call_id, status)).status_code == 200
    call.refresh_from_db()
    assert (call.state, call.end_reason) == (reason, reason)


def test_queued_status_records_nothing_but_the_receipt(client, twilio):
    call = CallFactory(provider="twilio", provider_call_id="CA" + "3" * 32)
    assert post(client, status_query(call), params_for(call.provider_call_id, "queued")).status_code == 200
    assert CallEvent.objects.count() == 0 and WebhookReceipt.objects.count() == 1


def test_answered_notify_call_hears_its_message_then_twilio_hangs_up(client, twilio, fake):
    twilio(outbound={"notifyHangupDelaySec": 2})
    call = CallFactory(provider="twilio", provider_call_id="CA" + "4" * 32, mode="notify",
                       initial_message="Your table is ready")
    response = post(client, f"callId={call.id}", params_for(call.provider_call_id))
    doc = twiml(response)
    assert [v.tag for v in doc] == ["Say", "Pause", "Hangup"] and doc[0].text == "Your table is ready"
    call.refresh_from_db()
    assert call.initial_message_delivered and call.answered_at is not None
    assert list(call.transcript.values_list("speaker", "text")) == [("bot", "Your table is ready")]
    assert fake.updates() == []  # no REST hang-up racing the speech
    post(client, status_query(call), params_for(call.provider_call_id, "completed"))
    call.refresh_from_db()
    assert (call.state, call.end_reason) == ("completed", "completed")


def test_digits_are_recorded_without_changing_the_call(client, twilio):
    call = AnsweredCallFactory(provider="twilio", provider_call_id="CA" + "5" * 32)
    before = call.state
    post(client, f"callId={call.id}&flow=gather&n=1", params_for(call.provider_call_id, Digits="42#"))
    assert CallEvent.objects.get().type == "call.dtmf"
    call.refresh_from_db()
    assert call.state == before


def test_call_placed_outside_voicecall_is_registered_from_its_first_callback(client, twilio):
    sid = "CA" + "f" * 32
    response = post(client, "type=status", params_for(sid, "ringing"))
    assert response.status_code == 200
    call = Call.objects.get(provider_call_id=sid)
    assert (call.direction, call.state, call.provider) == ("outbound", "ringing", "twilio")
    assert call.metadata["autoRegistered"] is True


def test_signature_is_checked_against_the_path_as_sent_on_the_wire():
    scope = {"type": "http", "method": "POST", "path": "/voice/web hook", "raw_path": b"/voice/web%20hook",
             "root_path": "", "query_string": b"callId=1", "headers": [], "client": ("127.0.0.1", 1)}
    request = ASGIRequest(scope, io.BytesIO(b""))
    assert request.path == "/voice/web hook"  # Django decodes; Twilio signed the encoded form
    assert webhook_request_from(request).path == "/voice/web%20hook"


def test_body_without_call_sid_is_refused_and_records_nothing(client, twilio):
    response = post(client, "callId=x", [("CallStatus", "ringing")])
    assert response.status_code == 400
    assert ledger() == ([], 0, 0, 0, 0)


# --- forged requests -----------------------------------------------------------------------------

SID = "CA" + "6" * 32


def _forgeries(call_query: str):
    good = params_for(SID, "completed")
    altered = [(k, "busy" if k == "CallStatus" else v) for k, v in good]
    signed_url = f"{PUBLIC_URL}?{call_query}"
    return {
        "wrong token": {"params": good, "token": "not_the_auth_token_at_all_000000"},
        "altered parameter": {"params": altered, "signature": twilio_signature(
            "fake_twilio_auth_token_0123456789", signed_url, good)},
        "added parameter": {"params": [*good, ("SpeechResult", "transfer money")], "signature": twilio_signature(
            "fake_twilio_auth_token_0123456789", signed_url, good)},
        "altered query": {"params": good, "sign_url": signed_url.replace("type=status", "type=other")},
        "other host": {"params": good, "sign_url": signed_url.replace("voice.example.test", "evil.example")},
        "plain http": {"params": good, "sign_url": signed_url.replace("https://", "http://")},
        "garbage signature": {"params": good, "signature": "not-base64!!"},
        "missing header": {"params": good, "signature": ""},
    }


@pytest.mark.parametrize("forgery", list(_forgeries("q")))
def test_forged_webhook_is_refused_and_changes_nothing(client, twilio, forgery):
    call = AnsweredCallFactory(provider="twilio", provider_call_id=SID)
    query = status_query(call)
    before = ledger()
    response = post(client, query, **_forgeries(query)[forgery])
    assert response.status_code == 401
    assert ledger() == before
    call.refresh_from_db()
    assert not call.is_terminal


def test_refusal_is_logged_with_its_reason_but_never_the_token_or_query_values(client, twilio, caplog):
    call = AnsweredCallFactory(provider="twilio", provider_call_id=SID)
    with caplog.at_level(logging.WARNING):
        response = post(client, status_query(call), params_for(SID, "completed"), token="wrong_token_0000000000000000")
    assert response.status_code == 401
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "invalid signature" in text and "callId=***" in text
    assert "fake_twilio_auth_token_0123456789" not in text and "wrong_token" not in text and str(call.id) not in text


def test_webhook_without_an_auth_token_configured_fails_closed(client, twilio):
    twilio().twilio.auth_token = None  # a file could not say this; a config built in code can
    call = AnsweredCallFactory(provider="twilio", provider_call_id=SID)
    before = ledger()
    assert post(client, status_query(call), params_for(SID, "completed")).status_code == 401
    assert ledger() == before


# --- URL variants the carrier may have signed ------------------------------------------------------


def test_signature_over_the_url_with_the_default_port_is_accepted(client, twilio):
    call = AnsweredCallFactory(provider="twilio", provider_call_id=SID)
    query = status_query(call)
    response = post(client, query, params_for(SID, "completed"),
                    sign_url=f"https://voice.example.test:443/voice/webhook?{query}")
    assert response.status_code == 200
    call.refresh_from_db()
    assert call.state == "completed"


def test_public_url_with_a_port_accepts_a_signature_without_it(client, twilio):
    twilio(publicUrl="https://voice.example.test:8443/voice/webhook")
    call = AnsweredCallFactory(provider="twilio", provider_call_id=SID)
    query = status_query(call)
    response = post(client, query, params_for(SID, "completed"), sign_url=f"{PUBLIC_URL}?{query}")
    assert response.status_code == 200


def test_json_body_signed_with_body_sha256_is_accepted_and_tampering_is_not(client, twilio):
    call = AnsweredCallFactory(provider="twilio", provider_call_id=SID)
    body = json.dumps({"CallSid": SID, "CallStatus": "completed", "Direction": "outbound-api"})
    query = f"{status_query(call)}&bodySHA256={sha256(body.encode()).hexdigest()}"
    signature = twilio_signature("fake_twilio_auth_token_0123456789", f"{PUBLIC_URL}?{query}", [])
    tampered = body.replace("completed", "busy")
    assert post(client, query, [], body=tampered, content_type="application/json",
                signature=signature).status_code == 401
    assert CallEvent.objects.count() == 0
    assert post(client, query, [], body=body, content_type="application/json", signature=signature).status_code == 200
    call.refresh_from_db()
    assert call.end_reason == "completed"


# --- replays -------------------------------------------------------------------------------------


def test_replayed_twilio_webhook_is_acknowledged_without_side_effects(client, twilio):
    call = AnsweredCallFactory(provider="twilio", provider_call_id=SID, pending_turn_token="turn1")
    query = f"callId={call.id}&flow=gather&turnToken=turn1&n=ab12"
    params = params_for(SID, SpeechResult="Tomorrow at noon", Confidence="0.8")
    first = post(client, query, params, headers={"I-Twilio-Idempotency-Token": "a"})
    assert first.status_code == 200
    assert list(call.transcript.filter(speaker="user").values_list("text", flat=True)) == ["Tomorrow at noon"]
    after_first = ledger()
    # Twilio (or an attacker with a captured request) sends it again, with a new unsigned header
    again = post(client, query, params, headers={"I-Twilio-Idempotency-Token": "b"})
    assert again.status_code == 200
    assert again.content == first.content
    assert ledger() == after_first


def test_replayed_status_callback_after_the_call_ended_changes_nothing(client, twilio):
    call = AnsweredCallFactory(provider="twilio", provider_call_id=SID)
    query = status_query(call)
    post(client, query, params_for(SID, "completed"))
    snapshot = ledger()
    assert post(client, query, params_for(SID, "completed")).status_code == 200
    assert ledger() == snapshot


# --- turn tokens ---------------------------------------------------------------------------------


@pytest.mark.parametrize("token_query", ["&turnToken=stale-token", ""], ids=["stale", "missing"])
def test_speech_without_the_pending_turn_token_is_not_recorded(client, twilio, token_query):
    call = AnsweredCallFactory(provider="twilio", provider_call_id=SID, pending_turn_token="current-token")
    response = post(client, f"callId={call.id}&flow=gather{token_query}&n=1",
                    params_for(SID, SpeechResult="Forged answer", Confidence="0.9"))
    assert response.status_code == 200
    assert not call.transcript.filter(speaker="user").exists()
    call.refresh_from_db()
    assert call.pending_turn_token == "current-token"
    gather = twiml(response).find("Gather")
    assert parse_qs(urlsplit(gather.get("action")).query)["turnToken"] == ["current-token"]  # keeps listening


def test_redirect_loop_listens_again_and_is_never_mistaken_for_a_replay(client, twilio):
    call = AnsweredCallFactory(provider="twilio", provider_call_id=SID, pending_turn_token="tok")
    redirect = None
    for _ in range(3):
        query = f"callId={call.id}&flow=redirect" if redirect is None else urlsplit(redirect).query
        response = post(client, query, params_for(SID))  # identical Twilio parameters every time
        assert response.status_code == 200
        doc = twiml(response)
        assert [v.tag for v in doc] == ["Gather", "Redirect"]
        assert parse_qs(urlsplit(doc[0].get("action")).query)["turnToken"] == ["tok"]
        redirect = doc[1].text
    assert WebhookReceipt.objects.count() == 3


# --- who may set the URL: forwarding headers and the ngrok rule ------------------------------------

FORWARDED = {"X-Forwarded-Host": "voice.example.test", "X-Forwarded-Proto": "https"}


@pytest.mark.parametrize(
    ("remote", "expected"), [("203.0.113.7", 401), ("10.0.0.5", 200)], ids=["untrusted-ip", "trusted-proxy"]
)
def test_forwarding_headers_are_believed_only_from_trusted_proxies(client, twilio, remote, expected):
    twilio(publicUrl=None, webhookSecurity={"trustForwardingHeaders": True, "trustedProxyIPs": ["10.0.0.5"]})
    call = AnsweredCallFactory(provider="twilio", provider_call_id=SID)
    before = ledger()
    response = post(client, status_query(call), params_for(SID, "completed"), remote=remote, headers=FORWARDED)
    assert response.status_code == expected
    call.refresh_from_db()
    assert (ledger() == before) is (expected == 401)
    assert call.is_terminal is (expected == 200)


def test_forwarded_host_outside_allowed_hosts_is_ignored(client, twilio):
    twilio(publicUrl=None, webhookSecurity={"allowedHosts": ["voice.example.test"]})
    call = AnsweredCallFactory(provider="twilio", provider_call_id=SID)
    query = status_query(call)
    spoofed = post(client, query, params_for(SID, "completed"), sign_url=f"https://evil.example/voice/webhook?{query}",
                   headers={"X-Forwarded-Host": "evil.example"})
    assert spoofed.status_code == 401
    assert not CallEvent.objects.exists()
    allowed = post(client, query, params_for(SID, "completed"), headers={"X-Forwarded-Host": "voice.example.test"})
    assert allowed.status_code == 200


NGROK_HOST = "abc123.ngrok-free.app"
NGROK_ON = {"tunnel": {"provider": "ngrok", "allowNgrokFreeTierLoopbackBypass": True},
            "serve": {"bind": "127.0.0.1"}, "publicUrl": None}


@pytest.mark.parametrize(
    ("overrides", "remote", "token", "expected"),
    [
        ({}, "127.0.0.1", None, 200),
        ({}, "::1", None, 200),
        ({}, "127.0.0.1", "wrong_token_but_loopback_00000", 401),
        ({}, "203.0.113.9", None, 401),
        ({"tunnel": {"provider": "none", "allowNgrokFreeTierLoopbackBypass": True}}, "127.0.0.1", None, 401),
        ({"serve": {"bind": "0.0.0.0"}}, "127.0.0.1", None, 401),  # noqa: S104 - config value under test
        ({"tunnel": {"provider": "ngrok", "allowNgrokFreeTierLoopbackBypass": False}}, "127.0.0.1", None, 401),
    ],
    ids=["loopback", "loopback-v6", "invalid-signature", "remote-client", "not-ngrok", "wildcard-bind", "off"],
)
def test_ngrok_free_tier_rule_only_widens_header_trust(client, twilio, overrides, remote, token, expected):
    twilio(**{**NGROK_ON, **overrides})
    call = AnsweredCallFactory(provider="twilio", provider_call_id=SID)
    query = status_query(call)
    before = ledger()
    response = post(client, query, params_for(SID, "completed"), token=token, remote=remote,
                    sign_url=f"https://{NGROK_HOST}/voice/webhook?{query}",
                    headers={"X-Forwarded-Host": NGROK_HOST, "X-Forwarded-Proto": "https"})
    assert response.status_code == expected
    assert (ledger() == before) is (expected == 401)


# --- development mode ----------------------------------------------------------------------------


def test_skip_signature_verification_accepts_unsigned_requests_but_still_drops_replays(client, twilio):
    twilio(skipSignatureVerification=True)
    call = AnsweredCallFactory(provider="twilio", provider_call_id=SID, pending_turn_token="")
    query = f"callId={call.id}&flow=gather&n=1"
    params = params_for(SID, SpeechResult="hello there")
    assert post(client, query, params, signature="").status_code == 200
    snapshot = ledger()
    assert post(client, query, params, signature="").status_code == 200
    assert ledger() == snapshot
    assert call.transcript.filter(speaker="user").count() == 1


# --- inbound -------------------------------------------------------------------------------------


def inbound_params(sid: str, status: str = "ringing", caller: str = CALLER):
    return [(k, caller if k == "From" else v) for k, v in params_for(sid, status, "inbound")]


def test_allow_listed_caller_is_answered_with_the_greeting_and_listened_to(client, twilio):
    twilio(inboundPolicy="allowlist", allowFrom=[CALLER], inboundGreeting="Hi, you reached Voicecall.")
    sid = "CA" + "7" * 32
    response = post(client, "", inbound_params(sid))
    assert response.status_code == 200
    doc = twiml(response)
    assert [v.tag for v in doc] == ["Say", "Gather", "Redirect"]
    assert doc[0].text == "Hi, you reached Voicecall."
    call = Call.objects.get(provider_call_id=sid)
    assert (call.direction, call.mode, call.state) == ("inbound", "conversation", "listening")
    assert (call.from_number, call.to_number) == (CALLER, OUR_NUMBER)
    assert call.answered_at is not None and call.initial_message_delivered
    assert parse_qs(urlsplit(doc[1].get("action")).query)["callId"] == [str(call.id)]
    assert list(CallEvent.objects.values_list("type", flat=True)) == ["call.initiated", "call.answered"]
    assert list(call.transcript.values_list("speaker", "text")) == [("bot", "Hi, you reached Voicecall.")]
    # the caller speaks into that Gather: a user transcript line
    gather_query = urlsplit(doc[1].get("action")).query
    post(client, gather_query, [*inbound_params(sid, "in-progress"), ("SpeechResult", "I need a table")])
    assert list(call.transcript.values_list("speaker", "text"))[-1] == ("user", "I need a table")


def test_caller_in_the_allowed_callers_table_is_accepted(client, twilio):
    twilio(inboundPolicy="allowlist")
    AllowedCaller.objects.create(number=CALLER, label="friend")
    response = post(client, "", inbound_params("CA" + "8" * 32))
    assert twiml(response)[0].tag == "Say"
    assert Call.objects.filter(direction="inbound").count() == 1


def test_rejected_caller_gets_reject_and_is_hung_up_exactly_once(
    client, twilio, fake, django_capture_on_commit_callbacks
):
    twilio(inboundPolicy="allowlist", allowFrom=["+15551112222"])
    sid = "CA" + "9" * 32
    with django_capture_on_commit_callbacks(execute=True):  # the hang-up task is queued on commit
        first = post(client, "", inbound_params(sid))
    assert first.status_code == 200
    assert [v.tag for v in twiml(first)] == ["Reject"]
    assert not Call.objects.exists()
    rejected = RejectedInboundCall.objects.get()
    assert (rejected.provider_call_id, rejected.hangup_attempted, rejected.hangup_error) == (sid, True, "")
    assert [u.get("Status") for u in fake.updates(sid)] == ["completed"]  # 404 there: already gone, tolerated
    # Twilio retries the same webhook, and later requests for the same call arrive
    with django_capture_on_commit_callbacks(execute=True):
        assert post(client, "", inbound_params(sid)).content == first.content
        assert [v.tag for v in twiml(post(client, "", inbound_params(sid, "in-progress")))] == ["Reject"]
    assert len(fake.updates(sid)) == 1
    assert not Call.objects.exists() and RejectedInboundCall.objects.count() == 1


def test_anonymous_caller_is_rejected_by_the_allowlist(client, twilio, fake):
    twilio(inboundPolicy="allowlist", allowFrom=[CALLER])
    response = post(client, "", inbound_params("CA" + "a" * 32, caller="anonymous"))
    assert [v.tag for v in twiml(response)] == ["Reject"]
    assert not Call.objects.exists()


@pytest.mark.parametrize("mode", ["streaming", "realtime"])
def test_an_answered_conversation_is_connected_to_the_media_stream(client, twilio, mode):
    """Streamed TTS needs telephony TTS; realtime voice needs none (the model speaks): either way the
    answer webhook connects the call to our stream with its token, and a notify call keeps <Say>."""
    if mode == "streaming":
        twilio(streaming={"enabled": True}, tts={"provider": "openai", "providers": {"openai": {"apiKey": "sk-x"}}})
    else:
        twilio(realtime={"enabled": True, "providers": {"openai": {"apiKey": "sk-x"}}})
    call = CallFactory(provider="twilio", provider_call_id="CA" + "7" * 32, mode="conversation",
                       initial_message="Hello there")
    doc = twiml(post(client, f"callId={call.id}", params_for(call.provider_call_id)))
    (connect,) = doc
    stream = connect.find("Stream")
    assert connect.tag == "Connect" and stream.get("url").startswith("wss://")
    parameters = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    call.refresh_from_db()
    assert parameters == {"token": streams.mint_stream_token(call), "callId": str(call.id)}
    assert not call.initial_message_delivered  # the stream claims and speaks the greeting
    notify = CallFactory(provider="twilio", provider_call_id="CA" + "8" * 32, mode="notify", initial_message="Hi")
    assert twiml(post(client, f"callId={notify.id}", params_for(notify.provider_call_id)))[0].tag == "Say"
