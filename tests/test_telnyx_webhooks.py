"""Telnyx webhooks: Ed25519 verification, replay keys, event mapping, and what the endpoint does with
good, forged, stale, replayed and malformed deliveries (HTTP status and database effect)."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import serialization
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from calls.config import TelnyxConfig, VoiceCallConfig, config_from_dict, get_config, set_config
from calls.models import Call, CallEvent, TranscriptEntry, WebhookReceipt
from providers import get_provider
from providers.base import EventType, WebhookParseError
from providers.security import WebhookRequest
from providers.telnyx import (
    HANGUP_CAUSES,
    REASON_BAD_PUBLIC_KEY,
    REASON_MISSING_HEADERS,
    REASON_NO_PUBLIC_KEY,
    REASON_SIGNATURE_MISMATCH,
    REASON_TIMESTAMP_IN_FUTURE,
    REASON_TIMESTAMP_TOO_OLD,
    TelnyxProvider,
)
from tests.factories import AnsweredCallFactory
from tests.fakes.telnyx import FakeCall, FakeTelnyx

WEBHOOK = "/voice/webhook"
NOW = 1_800_000_000  # the provider's clock in these tests

# protocols.md §9 Telnyx vectors
VECTOR_PUBLIC_KEY = "1T9ovG8UleVcmOnlFcxxeioSssei62N2/26BR3WFTdE="
VECTOR_SEED_HEX = "9335724bf3f79c1f378d84d8bc1519ee1f9eb14525b9a47215e356fd691ef292"
VECTOR_TIMESTAMP = "1700000000"
VECTOR_BODY = (
    '{"data":{"record_type":"event","event_type":"call.initiated","id":"0ccc7b54-4df3-4bca-a65a-3da1ecc777f0",'
    '"occurred_at":"2023-11-14T22:13:20.000000Z","payload":{"call_control_id":"v3:TEST_CALL_CONTROL_ID",'
    '"connection_id":"7267xxxxxxxxxxxxxx","call_leg_id":"428c31b6-7af4-4bcb-b7f5-5013ef9657c1",'
    '"call_session_id":"428c31b6-abf3-3bc1-b7f4-5013ef9657c1","client_state":"eyJjYWxsX2lkIjo0Mn0=",'
    '"direction":"outgoing","from":"+15005550006","to":"+14155550100","state":"bridging"}},'
    '"meta":{"attempt":1,"delivered_to":"https://example.com/telnyx/webhook"}}'
)
VECTOR_SIGNATURE = "0irgEp0RSUNUYS0mdwg0VcGzfKZvfsUW7Hik5YW7QvkK/U/EXDWExVCLgivkg0OmVP8yS09ENbj4TRPAiHOECQ=="
VECTOR_TIMESTAMP2 = "1700000500"
VECTOR_BODY2 = '{"data":{"event_type":"call.hangup","payload":{"call_control_id":"v3:abc","hangup_cause":"normal_clearing"}}}'
VECTOR_SIGNATURE2 = "AuPXgokmFEkHG5ZJxyEc9z8/J1b2WpOzjnrc8Z1I8Pm0RxwSJnsU3774OEIpgc1c/r3xM41mM2NDAGMPnTZLBg=="


@pytest.fixture
def fake():
    # Only its signing key and envelopes are used here; deliveries go through the Django test client.
    return FakeTelnyx()


def install_config(fake: FakeTelnyx | None, *, public_key: str | None = None, clock: float = NOW,
                   **extra) -> TelnyxProvider:
    """Install a Telnyx config (key from ``fake`` unless given) and pin the provider's clock."""
    telnyx = {"apiKey": "KEYtest", "connectionId": "conn-1", "apiBaseUrl": "http://127.0.0.1:9"}
    key = public_key if public_key is not None else (fake.public_key if fake else None)
    if key:
        telnyx["publicKey"] = key
    document = {"provider": "telnyx", "fromNumber": "+15550001000", "telnyx": telnyx}
    document.update(extra)
    config = config_from_dict(document, env={})
    set_config(config)
    provider = get_provider(config.provider_settings)
    provider.clock = lambda: clock
    return provider


def outbound_leg(call: Call, fake: FakeTelnyx) -> FakeCall:
    return FakeCall(
        call_control_id=call.provider_call_id, direction="outgoing", from_number=call.from_number,
        to_number=call.to_number, webhook_url="http://testserver" + WEBHOOK,
        client_state=base64.b64encode(str(call.id).encode()).decode(), state="answered",
    )


def post(client, fake: FakeTelnyx, body: bytes, *, timestamp=NOW, **sign_options):
    headers = fake.sign(body, timestamp, **sign_options)
    headers.pop("Content-Type")
    return client.post(WEBHOOK, data=body, content_type="application/json", headers=headers)


def request_of(body: bytes, headers: dict[str, str]) -> WebhookRequest:
    return WebhookRequest(method="POST", path=WEBHOOK, query_string="", headers=headers, body=body,
                          remote_addr="127.0.0.1")


def nothing_recorded() -> bool:
    return CallEvent.objects.count() == 0 and WebhookReceipt.objects.count() == 0


# ------------------------------------------------------------------------------------------------
# Signatures: the fake's, the published vector's, and every key spelling
# ------------------------------------------------------------------------------------------------


def test_fake_telnyx_signatures_verify_with_pynacl_directly(fake):
    body = b'{"data":{"event_type":"call.answered"}}'
    headers = fake.sign(body, 1700000123)
    verify_key = VerifyKey(base64.b64decode(fake.public_key))
    signature = base64.b64decode(headers["telnyx-signature-ed25519"])
    assert verify_key.verify(b"1700000123|" + body, signature) == b"1700000123|" + body
    with pytest.raises(BadSignatureError):
        verify_key.verify(b"1700000124|" + body, signature)


def test_protocols_vector_verifies_and_the_fake_reproduces_its_signature():
    vector_fake = FakeTelnyx(seed=bytes.fromhex(VECTOR_SEED_HEX))
    assert vector_fake.public_key == VECTOR_PUBLIC_KEY
    assert vector_fake.sign(VECTOR_BODY.encode(), VECTOR_TIMESTAMP)["telnyx-signature-ed25519"] == VECTOR_SIGNATURE

    provider = install_config(None, public_key=VECTOR_PUBLIC_KEY, clock=int(VECTOR_TIMESTAMP) + 100)
    for timestamp, body, signature in ((VECTOR_TIMESTAMP, VECTOR_BODY, VECTOR_SIGNATURE),
                                       (VECTOR_TIMESTAMP2, VECTOR_BODY2, VECTOR_SIGNATURE2)):
        headers = {"telnyx-signature-ed25519": signature, "telnyx-timestamp": timestamp}
        provider.clock = lambda ts=timestamp: int(ts) + 100  # each vector 100 s after it was signed
        assert provider.verify_webhook(request_of(body.encode(), headers)).ok

    headers = {"telnyx-signature-ed25519": VECTOR_SIGNATURE, "telnyx-timestamp": VECTOR_TIMESTAMP}
    altered = VECTOR_BODY.replace("+14155550100", "+14155550101").encode()
    assert provider.verify_webhook(request_of(altered, headers)).reason == REASON_SIGNATURE_MISMATCH
    provider.clock = lambda: int(VECTOR_TIMESTAMP) + 300
    assert provider.verify_webhook(request_of(VECTOR_BODY.encode(), headers)).ok
    provider.clock = lambda: int(VECTOR_TIMESTAMP) + 301
    assert provider.verify_webhook(request_of(VECTOR_BODY.encode(), headers)).reason == REASON_TIMESTAMP_TOO_OLD


@pytest.mark.django_db(transaction=True)
def test_vector_webhook_is_accepted_and_auto_registers_the_unknown_outbound_call(client):
    install_config(None, public_key=VECTOR_PUBLIC_KEY, clock=int(VECTOR_TIMESTAMP) + 100)
    response = client.post(WEBHOOK, data=VECTOR_BODY.encode(), content_type="application/json", headers={
        "telnyx-signature-ed25519": VECTOR_SIGNATURE, "telnyx-timestamp": VECTOR_TIMESTAMP})
    assert (response.status_code, response.content) == (200, b"OK")
    call = Call.objects.get(provider_call_id="v3:TEST_CALL_CONTROL_ID")
    assert (call.direction, call.from_number, call.to_number) == ("outbound", "+15005550006", "+14155550100")
    event = CallEvent.objects.get()
    assert (event.dedupe_key, event.type, event.call_id) == (
        "telnyx:evt:0ccc7b54-4df3-4bca-a65a-3da1ecc777f0", "call.initiated", call.id)


def _key_spellings(signing_key: SigningKey) -> dict[str, str]:
    raw = bytes(signing_key.verify_key)
    public = serialization.load_der_public_key(
        bytes.fromhex("302a300506032b6570032100") + raw  # Ed25519 SubjectPublicKeyInfo prefix
    )
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return {
        "raw-base64": base64.b64encode(raw).decode(),
        "raw-base64url-unpadded": base64.urlsafe_b64encode(raw).decode().rstrip("="),
        "der-spki-base64": base64.b64encode(der).decode(),
        "der-spki-base64url": base64.urlsafe_b64encode(der).decode(),
        "pem": pem.decode(),
    }


@pytest.mark.parametrize("spelling", ["raw-base64", "raw-base64url-unpadded", "der-spki-base64",
                                      "der-spki-base64url", "pem"])
def test_public_key_is_accepted_in_every_documented_format(fake, spelling):
    key_text = _key_spellings(fake.signing_key)[spelling]
    provider = install_config(None, public_key=key_text)
    body = b'{"data":{"event_type":"call.answered"}}'
    assert provider.verify_webhook(request_of(body, fake.sign(body, NOW))).ok


def test_a_public_key_that_is_not_ed25519_fails_closed(fake):
    provider = install_config(None, public_key=base64.b64encode(b"x" * 31).decode())
    body = b'{"data":{"event_type":"call.answered"}}'
    result = provider.verify_webhook(request_of(body, fake.sign(body, NOW)))
    assert (result.ok, result.reason) == (False, REASON_BAD_PUBLIC_KEY)


def test_base64url_signature_is_the_same_request_as_its_base64_spelling(fake):
    provider = install_config(fake)
    body = b'{"data":{"event_type":"call.answered","id":"e-1"}}'
    standard = provider.verify_webhook(request_of(body, fake.sign(body, NOW)))
    urlsafe = provider.verify_webhook(request_of(body, fake.sign(body, NOW, urlsafe=True)))
    assert standard.ok and urlsafe.ok
    assert standard.request_key == urlsafe.request_key
    assert standard.request_key.startswith("telnyx:")


@pytest.mark.django_db(transaction=True)
def test_missing_public_key_fails_closed_with_a_setup_error(client, fake, monkeypatch):
    monkeypatch.delenv("TELNYX_PUBLIC_KEY", raising=False)
    # Built in Python, so the loader's own "publicKey required" check is bypassed on purpose.
    config = VoiceCallConfig(provider="telnyx", from_number="+15550001000",
                             telnyx=TelnyxConfig(api_key="KEYtest", connection_id="conn-1"))
    set_config(config)
    body = json.dumps({"data": {"event_type": "call.initiated", "id": "e-1", "payload": {
        "call_control_id": "v3:x", "direction": "outgoing", "from": "+1", "to": "+2"}}}).encode()
    response = post(client, fake, body, timestamp=None)
    assert response.status_code == 401
    assert nothing_recorded()
    reason = get_provider(config.provider_settings).verify_webhook(request_of(body, fake.sign(body))).reason
    assert reason == REASON_NO_PUBLIC_KEY
    assert "telnyx.publicKey" in reason and "TELNYX_PUBLIC_KEY" in reason


@pytest.mark.django_db(transaction=True)
def test_skip_signature_verification_accepts_unsigned_webhooks_and_still_catches_replays(client):
    install_config(None, skipSignatureVerification=True)
    body = json.dumps({"data": {"event_type": "call.initiated", "id": "e-skip", "payload": {
        "call_control_id": "v3:skip", "direction": "outgoing", "from": "+15550001000",
        "to": "+15550002000"}}}).encode()
    first = client.post(WEBHOOK, data=body, content_type="application/json")
    again = client.post(WEBHOOK, data=body, content_type="application/json")
    assert (first.status_code, again.status_code) == (200, 200)
    assert Call.objects.filter(provider_call_id="v3:skip").count() == 1
    assert (CallEvent.objects.count(), WebhookReceipt.objects.count()) == (1, 1)


# ------------------------------------------------------------------------------------------------
# The endpoint: forged, stale, replayed, unknown and malformed deliveries
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def live_call(fake):
    install_config(fake)
    call = AnsweredCallFactory(provider="telnyx", provider_call_id="v3:live-leg", state="listening",
                               mode="conversation")
    return call


def event_body(fake: FakeTelnyx, call: Call, event_type: str, *, event_id: str | None = None, **payload) -> bytes:
    return fake.encode(fake.envelope(outbound_leg(call, fake), event_type, event_id=event_id, **payload))


def transcription(fake, call, text: str, *, event_id: str = "evt-speech-1", is_final: bool = True) -> bytes:
    return event_body(fake, call, "call.transcription", event_id=event_id,
                      transcription_data={"transcript": text, "is_final": is_final, "confidence": 0.9})


@pytest.mark.django_db(transaction=True)
def test_signed_transcription_is_recorded_as_the_callers_words(client, fake, live_call):
    response = post(client, fake, transcription(fake, live_call, "Sounds good"))
    assert (response.status_code, response.content, response["Content-Type"]) == (200, b"OK", "text/plain")
    entry = TranscriptEntry.objects.get(call=live_call)
    assert (entry.speaker, entry.text, entry.is_final) == ("user", "Sounds good", True)


@pytest.mark.django_db(transaction=True)
def test_signature_from_another_key_is_rejected_and_nothing_recorded(client, fake, live_call):
    impostor = FakeTelnyx()
    response = post(client, impostor, transcription(fake, live_call, "Transfer all the money"))
    assert response.status_code == 401
    assert nothing_recorded()
    assert TranscriptEntry.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_altered_body_is_rejected_and_nothing_recorded(client, fake, live_call):
    signed = transcription(fake, live_call, "No thanks")
    headers = fake.sign(signed, NOW)
    altered = signed.replace(b"No thanks", b"Yes please")
    response = client.post(WEBHOOK, data=altered, content_type="application/json", headers={
        k: v for k, v in headers.items() if k != "Content-Type"})
    assert response.status_code == 401
    assert nothing_recorded()


@pytest.mark.django_db(transaction=True)
def test_missing_signature_header_is_rejected_before_verification(client, fake, live_call):
    body = transcription(fake, live_call, "Hello")
    response = client.post(WEBHOOK, data=body, content_type="application/json",
                           headers={"telnyx-timestamp": str(NOW)})
    assert response.status_code == 401
    assert nothing_recorded()
    provider = get_provider(get_config().provider_settings)
    assert provider.verify_webhook(request_of(body, {"telnyx-timestamp": str(NOW)})).reason == REASON_MISSING_HEADERS


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("offset", "status", "reason"),
    [(-300, 200, None), (-301, 401, REASON_TIMESTAMP_TOO_OLD),
     (300, 200, None), (301, 401, REASON_TIMESTAMP_IN_FUTURE)],
    ids=["300s-old-accepted", "301s-old-rejected", "300s-ahead-accepted", "301s-ahead-rejected"],
)
def test_timestamp_must_be_within_300_seconds_either_way(client, fake, live_call, offset, status, reason):
    body = transcription(fake, live_call, "Right on time")
    response = post(client, fake, body, timestamp=NOW + offset)
    assert response.status_code == status
    assert TranscriptEntry.objects.filter(call=live_call).count() == (1 if status == 200 else 0)
    assert CallEvent.objects.count() == (1 if status == 200 else 0)
    if reason:
        result = get_provider(get_config().provider_settings).verify_webhook(request_of(body, fake.sign(body, NOW + offset)))
        assert result.reason == reason


@pytest.mark.django_db(transaction=True)
def test_replayed_webhook_is_acknowledged_without_side_effects(client, fake, live_call):
    body = transcription(fake, live_call, "Only once")
    first = post(client, fake, body)
    replay = post(client, fake, body)  # identical timestamp, signature and body
    replay_urlsafe = post(client, fake, body, urlsafe=True)  # the same signature spelled base64url
    assert [r.status_code for r in (first, replay, replay_urlsafe)] == [200, 200, 200]
    assert replay.content == b"OK"
    assert TranscriptEntry.objects.filter(call=live_call).count() == 1
    assert (CallEvent.objects.count(), WebhookReceipt.objects.count()) == (1, 1)


@pytest.mark.django_db(transaction=True)
def test_redelivered_event_with_a_fresh_signature_is_applied_once(client, fake, live_call):
    body = transcription(fake, live_call, "Only once", event_id="evt-redelivered")
    document = json.loads(body)
    document["meta"]["attempt"] = 2
    first = post(client, fake, body)
    redelivery = post(client, fake, fake.encode(document), timestamp=NOW + 5)
    assert (first.status_code, redelivery.status_code) == (200, 200)
    assert WebhookReceipt.objects.count() == 2  # two distinct signed requests...
    assert CallEvent.objects.count() == 1  # ...carrying one event
    assert TranscriptEntry.objects.filter(call=live_call).count() == 1


@pytest.mark.django_db(transaction=True)
def test_unknown_event_type_is_acknowledged_and_ignored(client, fake, live_call):
    body = event_body(fake, live_call, "call.recording.saved", event_id="evt-rec")
    response = post(client, fake, body)
    assert (response.status_code, response.content) == (200, b"OK")
    assert CallEvent.objects.count() == 0
    live_call.refresh_from_db()
    assert live_call.state == "listening"


@pytest.mark.django_db(transaction=True)
def test_body_without_event_type_is_acknowledged_with_no_events(client, fake, live_call):
    response = post(client, fake, b'{"data":{"id":"no-type","payload":{"call_control_id":"v3:live-leg"}}}')
    assert (response.status_code, response.content) == (200, b"OK")
    assert CallEvent.objects.count() == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b""], ids=["broken", "array", "empty"])
def test_malformed_json_is_400_and_records_nothing(client, fake, live_call, body):
    response = post(client, fake, body)
    assert response.status_code == 400
    assert nothing_recorded()


@pytest.mark.django_db(transaction=True)
def test_interim_transcription_is_ledgered_but_not_a_turn(client, fake, live_call):
    response = post(client, fake, transcription(fake, live_call, "Tomor", is_final=False))
    assert response.status_code == 200
    assert CallEvent.objects.filter(type="call.speech").count() == 1
    assert TranscriptEntry.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_hangup_ends_the_call_with_the_mapped_reason(client, fake, live_call):
    response = post(client, fake, event_body(fake, live_call, "call.hangup", event_id="evt-bye",
                                             hangup_cause="user_busy", hangup_source="callee"))
    assert response.status_code == 200
    live_call.refresh_from_db()
    assert (live_call.state, live_call.end_reason) == ("busy", "busy")


# ------------------------------------------------------------------------------------------------
# Event mapping (fact sheet §3.2)
# ------------------------------------------------------------------------------------------------


def parse(provider: TelnyxProvider, document: dict, request_key: str = "telnyx:req"):
    body = json.dumps(document).encode()
    return provider.parse_webhook(request_of(body, {}), request_key).events


def envelope(event_type: str, *, event_id: str | None = "evt-1", **payload) -> dict:
    base = {"call_control_id": "v3:leg", "client_state": base64.b64encode(b"our-call-id").decode(),
            "direction": "outgoing", "from": "+15550001000", "to": "+15550002000"}
    base.update(payload)
    data = {"event_type": event_type, "payload": base, "occurred_at": "2026-01-02T03:04:05.000000Z"}
    if event_id is not None:
        data["id"] = event_id
    return {"data": data, "meta": {"attempt": 1}}


@pytest.mark.parametrize(
    ("event_type", "expected"),
    [("call.initiated", EventType.INITIATED), ("call.ringing", EventType.RINGING),
     ("call.answered", EventType.ANSWERED), ("call.bridged", EventType.ACTIVE),
     ("call.speak.started", EventType.SPEAKING), ("call.speak.ended", EventType.SPOKEN),
     ("call.transcription", EventType.SPEECH), ("call.dtmf.received", EventType.DTMF),
     ("call.hangup", EventType.ENDED)],
)
def test_event_types_map_to_normalized_events(fake, event_type, expected):
    provider = install_config(fake)
    (event,) = parse(provider, envelope(event_type))
    assert event.type == expected
    assert (event.call_id, event.provider_call_id, event.direction) == ("our-call-id", "v3:leg", "outbound")
    assert (event.from_number, event.to_number) == ("+15550001000", "+15550002000")
    assert event.dedupe_key == "telnyx:evt:evt-1"
    assert event.timestamp is not None and event.timestamp.year == 2026


@pytest.mark.parametrize(("cause", "reason"), [*sorted(HANGUP_CAUSES.items()), ("something_new", "completed")])
def test_hangup_causes_map_to_end_reasons(fake, cause, reason):
    provider = install_config(fake)
    (event,) = parse(provider, envelope("call.hangup", hangup_cause=cause))
    assert event.reason == reason


def test_hangup_cause_table_matches_the_reference_entries():
    reference = {
        "normal_clearing": "completed", "normal_unspecified": "completed", "originator_cancel": "hangup-bot",
        "call_rejected": "busy", "user_busy": "busy", "no_answer": "no-answer", "no_user_response": "no-answer",
        "destination_out_of_order": "failed", "network_out_of_order": "failed", "service_unavailable": "failed",
        "recovery_on_timer_expire": "failed", "machine_detected": "voicemail", "fax_detected": "voicemail",
        "user_hangup": "hangup-user", "subscriber_absent": "hangup-user",
    }
    assert {k: HANGUP_CAUSES[k] for k in reference} == reference


def test_transcription_fields_come_from_transcription_data_and_default_to_final(fake):
    provider = install_config(fake)
    (event,) = parse(provider, envelope("call.transcription", transcription_data={
        "transcript": "hello there", "confidence": 0.87}))
    assert (event.transcript, event.is_final, event.confidence) == ("hello there", True, 0.87)
    (interim,) = parse(provider, envelope("call.transcription", transcription_data={
        "transcript": "hel", "is_final": False}))
    assert interim.is_final is False
    (legacy,) = parse(provider, envelope("call.transcription", transcription="from the old field"))
    assert legacy.transcript == "from the old field"


def test_dtmf_digit_and_inbound_direction(fake):
    provider = install_config(fake)
    (event,) = parse(provider, envelope("call.dtmf.received", digit="7", direction="incoming", client_state=None))
    assert (event.digits, event.direction, event.call_id) == ("7", "inbound", None)


def test_client_state_that_is_not_base64_is_used_raw(fake):
    provider = install_config(fake)
    (event,) = parse(provider, envelope("call.answered", client_state="not base64!"))
    assert event.call_id == "not base64!"


def test_speak_ended_by_a_hangup_is_not_a_finished_utterance(fake):
    provider = install_config(fake)
    assert parse(provider, envelope("call.speak.ended", status="call_hangup")) == []
    (event,) = parse(provider, envelope("call.speak.ended", status="completed"))
    assert event.type == EventType.SPOKEN


def test_event_without_id_falls_back_to_the_request_key(fake):
    provider = install_config(fake)
    (event,) = parse(provider, envelope("call.answered", event_id=None), request_key="telnyx:abc")
    assert event.dedupe_key == "telnyx:abc:0"


def test_non_object_json_is_a_parse_error(fake):
    provider = install_config(fake)
    with pytest.raises(WebhookParseError):
        provider.parse_webhook(request_of(b'"just a string"', {}), "telnyx:k")


def test_the_ledger_keeps_what_follows_a_call_not_the_callers_name_headers_or_client_state(fake):
    provider = install_config(fake)
    (event,) = parse(provider, envelope("call.initiated", caller_id_name="Alice Private",
                                        custom_headers=[{"name": "X-Secret", "value": "v"}]))
    assert event.raw == {
        "id": "evt-1", "event_type": "call.initiated", "occurred_at": "2026-01-02T03:04:05.000000Z",
        "payload": {"call_control_id": "v3:leg", "direction": "outgoing", "from": "+15550001000",
                    "to": "+15550002000"},
    }
