"""The Plivo adapter in isolation: signatures (protocols.md §9 vectors, the official SDK as the
reference), event mapping, XML replies, signed transfer payloads, and REST against the local fake."""

from __future__ import annotations

import socket
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plivo.utils import validate_signature, validate_v3_signature

from calls.config import config_from_dict
from providers import plivo as plivo_module
from providers.base import CallSnapshot, EventType, OutboundCallRequest, ProviderError, WebhookParseError
from providers.plivo import (
    Flow,
    PlivoProvider,
    dial_number,
    normalize_number,
    v2_signature,
    v3_base_string,
    v3_signature,
)
from providers.plivo import provider as plivo_provider
from providers.plivo.signatures import REASON_V3_REQUIRED
from providers.security import WebhookRequest
from tests.fakes.plivo import FakePlivo

# ---- protocols.md §9 Plivo vectors (verified there with plivo 4.63.0) ----
PLIVO_TOKEN = "MzQ2NWJmYTY2ZGE3ZTU5ZGVjZmY3ZmQ4ZjNmOGFh"
PLIVO_NONCE = "12345678901234567890"
PLIVO_PARAMS = {"CallUUID": "2b6f8d7a-6c34-11ee-9f1e-0242ac120002", "From": "14155550100",
                "To": "14155550199", "CallStatus": "in-progress", "Direction": "outbound", "Event": "StartApp"}
PLIVO_V3 = [  # (method, url, params, X-Plivo-Signature-V3)
    ("POST", "https://example.com/plivo/answer/", PLIVO_PARAMS, "/fXPyZ3HSSJmXZ16WHcgObw1UD7uRM38ee4KhNBzZ1s="),
    ("POST", "https://example.com/plivo/speech/?call=42&b=x", PLIVO_PARAMS, "1J1TlhzCQpIXBpsSqJTZu2uulc0tC7D8nDb9S5tQQpw="),
    ("GET", "https://example.com/plivo/hangup/?CallUUID=abc&To=1415&From=1650", {}, "taofPhyUC9a2QwOpy7/CtCreVkpR3hKp1I5tdLcw5cc="),
]
PLIVO_V2 = ("https://foo.example/answer/", "05429567804466091622", "R7j0cHexyPXLx+sgYm8A39ldrR+0gMCwJsrL4hdOvMY=")

AUTH_ID = "MAFAKEPLIVO000000001"
CALL_ID = "7d0c8a3e-2f7b-4c57-9d53-6f8f2b0c1a10"


def make_config(token: str = PLIVO_TOKEN, *, api_base_url: str = "https://api.plivo.com",
                public_url: str = "https://example.com/voice/webhook", **extra):
    document = {"provider": "plivo", "fromNumber": "+14155550100", "publicUrl": public_url,
                "plivo": {"authId": AUTH_ID, "authToken": token, "apiBaseUrl": api_base_url}}
    document.update(extra)
    return config_from_dict(document, env={}).provider_settings


def form_request(url: str, params: dict[str, str], headers: dict[str, str], method: str = "POST") -> WebhookRequest:
    parts = urlsplit(url)
    return WebhookRequest(method=method, path=parts.path, query_string=parts.query,
                          headers={"Host": parts.netloc, **headers},
                          body=urlencode(params).encode() if method == "POST" else b"",
                          remote_addr="203.0.113.7", scheme=parts.scheme, host=parts.netloc)


def lists(params: dict[str, str]) -> dict[str, list[str]]:
    return {k: [v] for k, v in params.items()}


def snapshot(**overrides) -> CallSnapshot:
    fields = dict(call_id=CALL_ID, provider="plivo", provider_call_id="c-uuid", direction="outbound",
                  state="listening", mode="conversation", from_number="+14155550100", to_number="+14155550199",
                  initial_message=None, pending_turn_token=None, is_terminal=False,
                  webhook_url="https://example.com/voice/webhook", metadata={})
    fields.update(overrides)
    return CallSnapshot(**fields)


# --- signatures ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "url", "params", "expected"), PLIVO_V3)
def test_v3_signature_matches_the_published_plivo_vectors(method, url, params, expected):
    assert v3_signature(PLIVO_TOKEN, method, url, PLIVO_NONCE, lists(params)) == expected
    # ...and the official SDK's validator accepts the same, alone and among several signatures.
    assert validate_v3_signature(method, url, PLIVO_NONCE, PLIVO_TOKEN, expected, dict(params))
    assert validate_v3_signature(method, url, PLIVO_NONCE, PLIVO_TOKEN, "AAAA," + expected, dict(params))


def test_v2_signature_matches_the_published_plivo_vector():
    url, nonce, expected = PLIVO_V2
    assert v2_signature(PLIVO_TOKEN, url, nonce) == expected
    assert validate_signature(url, nonce, expected, PLIVO_TOKEN)


def test_v3_vector_request_verifies_against_the_public_url_including_a_multi_signature_header():
    provider = PlivoProvider(make_config(public_url="https://example.com/voice/webhook"))
    method, url, params, signature = PLIVO_V3[0]
    request = form_request(url, params, {"X-Plivo-Signature-V3": "AAAA," + signature,
                                         "X-Plivo-Signature-V3-Nonce": PLIVO_NONCE})
    verdict = provider.verify_webhook(request)
    assert verdict.ok, verdict.reason
    assert verdict.request_key == plivo_module.v3_replay_key(v3_base_string(method, url, lists(params)), PLIVO_NONCE)
    assert verdict.request_key.startswith("plivo:v3:")


def test_v3_vector_with_query_verifies_and_a_tampered_parameter_fails():
    provider = PlivoProvider(make_config())
    _, url, params, signature = PLIVO_V3[1]
    headers = {"X-Plivo-Signature-V3": signature, "X-Plivo-Signature-V3-Nonce": PLIVO_NONCE}
    assert provider.verify_webhook(form_request(url, params, headers)).ok
    tampered = form_request(url, {**params, "CallStatus": "completed"}, headers)
    verdict = provider.verify_webhook(tampered)
    assert not verdict.ok
    assert PLIVO_TOKEN not in verdict.reason and "42" not in verdict.reason  # query values redacted


query_text = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="&=#%+"),
                     min_size=1, max_size=8)
form_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    params=st.dictionaries(st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,9}", fullmatch=True), form_text, max_size=6),
    query=st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True), query_text, max_size=3),
    nonce=st.from_regex(r"[0-9]{20}", fullmatch=True),
)
def test_our_v3_verifier_agrees_with_the_plivo_sdk_validator(params, query, nonce):
    provider = PlivoProvider(make_config())
    url = "https://example.com/voice/webhook" + ("?" + urlencode(query) if query else "")
    signature = v3_signature(PLIVO_TOKEN, "POST", url, nonce, lists(params))
    assert validate_v3_signature("POST", url, nonce, PLIVO_TOKEN, signature, dict(params))
    headers = {"X-Plivo-Signature-V3": signature, "X-Plivo-Signature-V3-Nonce": nonce}
    assert provider.verify_webhook(form_request(url, params, headers)).ok


def test_v3_is_preferred_so_a_valid_v2_signature_does_not_rescue_a_bad_v3_one():
    provider = PlivoProvider(make_config())
    url, params = "https://example.com/voice/webhook?flow=answer", {"CallUUID": "abc"}
    headers = FakePlivo(auth_token=PLIVO_TOKEN).sign(url, params)
    headers["X-Plivo-Signature-V3"] = v3_signature("another-token", "POST", url, "1", lists(params))
    assert not provider.verify_webhook(form_request(url, params, headers)).ok


def test_v2_signature_alone_is_refused_unless_v2_is_allowed():
    """V2 signs neither the body nor the query: a captured request's V2 headers would carry any
    forged body. Refused by default; ``plivo.allowV2Signatures`` accepts it with a V2 replay key."""
    url, params = "https://example.com/voice/webhook?flow=answer", {"CallUUID": "abc"}
    signed = FakePlivo(auth_token=PLIVO_TOKEN).sign(url, params)
    headers = {k: v for k, v in signed.items() if "V3" not in k}
    refused = PlivoProvider(make_config()).verify_webhook(form_request(url, params, headers))
    assert not refused.ok and refused.reason == REASON_V3_REQUIRED
    forged_body = PlivoProvider(make_config()).verify_webhook(form_request(url, {"CallStatus": "completed"}, headers))
    assert not forged_body.ok

    provider = PlivoProvider(make_config(plivo={"authId": AUTH_ID, "authToken": PLIVO_TOKEN, "allowV2Signatures": True}))
    verdict = provider.verify_webhook(form_request(url, params, headers))
    assert verdict.ok and verdict.request_key.startswith("plivo:v2:")
    wrong = {**headers, "X-Plivo-Signature-V2": v2_signature("another-token", url, headers["X-Plivo-Signature-V2-Nonce"])}
    assert not provider.verify_webhook(form_request(url, params, wrong)).ok


def test_a_v3_verified_request_names_its_v2_key_so_a_v2_only_copy_is_a_replay():
    provider = PlivoProvider(make_config(plivo={"authId": AUTH_ID, "authToken": PLIVO_TOKEN, "allowV2Signatures": True}))
    url, params = "https://example.com/voice/webhook?flow=answer", {"CallUUID": "abc"}
    signed = FakePlivo(auth_token=PLIVO_TOKEN).sign(url, params)
    both = provider.verify_webhook(form_request(url, params, signed))
    v2_only = provider.verify_webhook(form_request(url, params, {k: v for k, v in signed.items() if "V3" not in k}))
    assert both.request_key.startswith("plivo:v3:") and both.equivalent_keys == (v2_only.request_key,)


def test_replay_key_is_the_same_for_the_same_signed_request_and_differs_with_a_new_nonce():
    provider = PlivoProvider(make_config())
    url, params = "https://example.com/voice/webhook?flow=answer", PLIVO_PARAMS
    fake = FakePlivo(auth_token=PLIVO_TOKEN)
    first = fake.sign(url, params, nonce="11111111111111111111")
    key_a = provider.verify_webhook(form_request(url, params, first)).request_key
    key_b = provider.verify_webhook(form_request(url, params, dict(first))).request_key
    key_c = provider.verify_webhook(form_request(url, params, fake.sign(url, params, nonce="22222222222222222222"))).request_key
    assert key_a == key_b and key_a != key_c


def test_missing_headers_or_token_fail_verification():
    provider = PlivoProvider(make_config())
    assert not provider.verify_webhook(form_request("https://example.com/voice/webhook", {}, {})).ok
    assert {frozenset(names) for names in PlivoProvider.required_signature_headers} == {
        frozenset({"X-Plivo-Signature-V3", "X-Plivo-Signature-V3-Nonce"}),
        frozenset({"X-Plivo-Signature-V2", "X-Plivo-Signature-V2-Nonce"}),
    }


def test_provider_refuses_to_start_without_credentials():
    config = config_from_dict({"provider": "mock"}, env={})
    with pytest.raises(ValueError, match="authId"):
        PlivoProvider(config.provider_settings)


# --- event mapping ---------------------------------------------------------------------------------


def parse(provider: PlivoProvider, query: dict[str, str], params: dict[str, str], key: str = "plivo:v3:k"):
    request = form_request("https://example.com/voice/webhook?" + urlencode(query), params, {})
    return provider.parse_webhook(request, key)


@pytest.mark.parametrize(("flow", "status", "expected"), [
    ("ring", "ringing", [(EventType.RINGING, None)]),
    ("answer", "in-progress", [(EventType.ANSWERED, None)]),
    ("hangup", "completed", [(EventType.ENDED, "completed")]),
    ("hangup", "busy", [(EventType.ENDED, "busy")]),
    ("hangup", "no-answer", [(EventType.ENDED, "no-answer")]),
    ("hangup", "timeout", [(EventType.ENDED, "no-answer")]),
    ("hangup", "failed", [(EventType.ENDED, "failed")]),
    ("hangup", "cancel", [(EventType.ENDED, "hangup-bot")]),
    ("hangup", "something-new", [(EventType.ENDED, "failed")]),
    ("answer", "completed", [(EventType.ENDED, "completed")]),
    ("answer", "queued", []),
])
def test_call_status_maps_to_normalized_events(flow, status, expected):
    provider = PlivoProvider(make_config())
    parsed = parse(provider, {"flow": flow, "callId": CALL_ID},
                   {"CallUUID": "c-uuid", "RequestUUID": "r-uuid", "CallStatus": status, "Direction": "outbound"})
    assert [(e.type, e.reason) for e in parsed.events] == expected
    for event in parsed.events:
        assert (event.call_id, event.provider_call_id, event.previous_provider_call_id) == (CALL_ID, "c-uuid", "r-uuid")
        assert event.dedupe_key == f"plivo:c-uuid:{event.type}"


@pytest.mark.parametrize(("source", "reason"), [("API Request", "hangup-bot"), ("Callee", "completed"),
                                                 ("Answer XML", "completed"), ("", "completed")])
def test_completed_hangup_caused_by_our_api_request_ends_the_call_hangup_bot(source, reason):
    provider = PlivoProvider(make_config())
    parsed = parse(provider, {"flow": "hangup", "callId": CALL_ID},
                   {"CallUUID": "c-uuid", "CallStatus": "completed", "HangupSource": source})
    assert [(e.type, e.reason) for e in parsed.events] == [(EventType.ENDED, reason)]


def test_inbound_answer_url_without_our_parameters_is_ringing_then_answered_with_e164_numbers():
    provider = PlivoProvider(make_config())
    request = form_request("https://example.com/voice/webhook", {
        "CallUUID": "in-uuid", "From": "14155550123", "To": "14155550100", "CallStatus": "ringing",
        "Direction": "inbound", "Event": "StartApp"}, {})
    events = provider.parse_webhook(request, "plivo:v3:k").events
    assert [e.type for e in events] == [EventType.RINGING, EventType.ANSWERED]
    assert {(e.direction, e.from_number, e.to_number, e.provider_call_id, e.previous_provider_call_id, e.call_id)
            for e in events} == {("inbound", "+14155550123", "+14155550100", "in-uuid", None, None)}


@pytest.mark.parametrize("field", ["Speech", "Transcription", "TranscriptionText", "SpeechResult",
                                   "RecognizedSpeech", "Text"])
def test_each_speech_field_becomes_a_final_speech_event_carrying_the_turn_token(field):
    provider = PlivoProvider(make_config())
    parsed = parse(provider, {"flow": "getinput", "callId": CALL_ID, "turnToken": "t-1"},
                   {"CallUUID": "c-uuid", field: " five works ", "SpeechConfidenceScore": "0.87",
                    "InputType": "speech"}, key="plivo:v3:abc")
    speech = [e for e in parsed.events if e.type == EventType.SPEECH]
    assert len(speech) == 1
    assert (speech[0].transcript, speech[0].is_final, speech[0].confidence, speech[0].turn_token) == (
        "five works", True, 0.87, "t-1")
    assert speech[0].dedupe_key == "plivo:v3:abc:speech"


def test_digits_become_a_dtmf_event():
    provider = PlivoProvider(make_config())
    parsed = parse(provider, {"flow": "getinput", "callId": CALL_ID}, {"CallUUID": "c", "Digits": "42#"})
    assert [(e.type, e.digits) for e in parsed.events] == [(EventType.DTMF, "42#")]


def test_non_form_bodies_are_parse_errors():
    provider = PlivoProvider(make_config())
    request = WebhookRequest(method="POST", path="/voice/webhook", query_string="flow=answer",
                             headers={"Content-Type": "application/json"}, body=b'{"CallUUID": "x"}',
                             remote_addr=None)
    with pytest.raises(WebhookParseError):
        provider.parse_webhook(request, "k")
    garbage = WebhookRequest(method="POST", path="/voice/webhook", query_string="", headers={},
                             body=b"not a form at all", remote_addr=None)
    with pytest.raises(WebhookParseError):
        provider.parse_webhook(garbage, "k")


@pytest.mark.parametrize(("raw", "expected"), [
    ("14155550100", "+14155550100"), ("+14155550100", "+14155550100"), ("1 (415) 555-0100", "+14155550100"),
    ("sip:alice@phone.plivo.com", "sip:alice@phone.plivo.com"), ("anonymous", "anonymous"), ("", None),
])
def test_callback_numbers_are_normalised_to_e164(raw, expected):
    assert normalize_number(raw) == expected


def test_dialled_numbers_are_digits_only_and_sip_uris_are_kept():
    assert dial_number("+1 415-555-0199") == "14155550199"
    assert dial_number("sip:bob@example.com") == "sip:bob@example.com"


# --- XML replies and signed transfer payloads ----------------------------------------------------


def test_notify_answer_speaks_escaped_text_waits_and_hangs_up():
    provider = PlivoProvider(make_config(outbound={"notifyHangupDelaySec": 2}))
    request = form_request("https://example.com/voice/webhook?flow=answer&callId=" + CALL_ID, {}, {})
    reply = provider.render_reply(request, provider.parse_webhook(request, "k"),
                                  snapshot(mode="notify", state="answered", initial_message="Tom & Jerry <3\x07"))
    assert reply.content_type == "text/xml"
    assert reply.body == ('<Response><Speak language="en-US">Tom &amp; Jerry &lt;3</Speak>'
                          '<Wait length="2"/><Hangup/></Response>')
    assert (reply.spoken_text, reply.delivers_initial_message, reply.listens) == ("Tom & Jerry <3", True, False)


def test_conversation_answer_speaks_inside_getinput_with_the_pending_turn_token_and_keeps_alive():
    provider = PlivoProvider(make_config())
    request = form_request("https://example.com/voice/webhook?flow=answer&callId=" + CALL_ID, {}, {})
    reply = provider.render_reply(request, provider.parse_webhook(request, "k"),
                                  snapshot(initial_message="Hello there", pending_turn_token="tok"))
    action = (f"https://example.com/voice/webhook?provider=plivo&amp;flow=getinput&amp;callId={CALL_ID}"
              "&amp;turnToken=tok")
    assert reply.body == (
        f'<Response><GetInput action="{action}" method="POST" inputType="speech" executionTimeout="30" '
        'language="en-US" redirect="false"><Speak language="en-US">Hello there</Speak></GetInput>'
        '<Wait length="300"/><Redirect method="POST">'
        f"https://example.com/voice/webhook?provider=plivo&amp;flow=keepalive&amp;callId={CALL_ID}"
        "</Redirect></Response>")
    assert (reply.spoken_text, reply.delivers_initial_message, reply.listens) == ("Hello there", True, True)


def test_answer_for_an_unknown_or_ended_call_hangs_up_and_rejected_callers_get_hangup():
    provider = PlivoProvider(make_config())
    request = form_request("https://example.com/voice/webhook?flow=answer", {}, {})
    parsed = provider.parse_webhook(request, "k")
    assert provider.render_reply(request, parsed, None).body == "<Response><Hangup/></Response>"
    assert provider.render_reply(request, parsed, snapshot(is_terminal=True)).body == "<Response><Hangup/></Response>"
    assert provider.rejected_reply(request).body == "<Response><Hangup/></Response>"


def transfer_query(provider: PlivoProvider, flow: Flow, payload: dict) -> dict[str, str]:
    param = plivo_module.TRANSFER_PARAMS[flow]
    return {"flow": flow.value, "callId": CALL_ID, param: provider.transfer_payload(payload)}


def test_xml_speak_renders_the_signed_text_and_listens_with_its_turn_token():
    provider = PlivoProvider(make_config())
    query = transfer_query(provider, Flow.XML_SPEAK,
                           {"c": CALL_ID, "f": "xml-speak", "s": "Does five work?", "l": "en-GB", "g": True, "t": "T9"})
    parsed = parse(provider, query, {"CallUUID": "c-uuid", "CallStatus": "in-progress"})
    assert parsed.events == []
    body = parsed.reply.body
    assert '<GetInput action="https://example.com/voice/webhook?provider=plivo&amp;flow=getinput' in body
    assert "turnToken=T9" in body and 'language="en-GB"' in body
    assert '<Speak language="en-GB">Does five work?</Speak></GetInput><Wait length="300"/>' in body
    assert parsed.reply.spoken_text is None  # recorded when handed to Plivo, not again here


def test_xml_listen_renders_getinput_only():
    provider = PlivoProvider(make_config())
    query = transfer_query(provider, Flow.XML_LISTEN, {"c": CALL_ID, "f": "xml-listen", "l": "en-US", "g": True})
    body = parse(provider, query, {"CallUUID": "c-uuid"}).reply.body
    assert "<GetInput " in body and "<Speak" not in body and "turnToken" not in body


@pytest.mark.parametrize("mutation", ["flip-mac", "other-call", "other-flow", "other-token", "garbage"])
def test_transfer_payloads_that_we_did_not_sign_for_this_call_and_flow_are_refused(mutation):
    provider = PlivoProvider(make_config())
    payload = {"c": CALL_ID, "f": "xml-speak", "s": "Wire the money", "l": "en-US", "g": False}
    query = transfer_query(provider, Flow.XML_SPEAK, payload)
    if mutation == "flip-mac":
        value = query["say"]
        query["say"] = value[:-2] + ("A" if value[-2] != "A" else "B") + value[-1]
    elif mutation == "other-call":
        query["callId"] = "00000000-0000-4000-8000-000000000000"
    elif mutation == "other-flow":
        query = {**query, "flow": "xml-listen", "listen": query.pop("say")}
    elif mutation == "other-token":
        query["say"] = PlivoProvider(make_config("another-token")).transfer_payload(payload)
    else:
        query["say"] = "v1.bm90IGpzb24.AAAA"
    with pytest.raises(WebhookParseError):
        parse(provider, query, {"CallUUID": "c-uuid"})


def test_speak_refuses_text_too_long_for_a_transfer_url():
    provider = PlivoProvider(make_config())
    text = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(6000))  # incompressible CJK text
    with pytest.raises(ProviderError, match="too long"):
        provider.play_tts(snapshot(), text, listen_after=False, turn_token=None)


# --- REST against the fake ---------------------------------------------------------------------------


@pytest.fixture
def fake():
    with FakePlivo.running() as server:
        yield server


def rest_provider(fake: FakePlivo) -> PlivoProvider:
    return PlivoProvider(make_config(fake.auth_token, api_base_url=fake.base_url))


def outbound_request(**overrides) -> OutboundCallRequest:
    fields = dict(call_id=CALL_ID, to_number="+14155550199", from_number="+14155550100", mode="notify",
                  initial_message="Hi", webhook_url="https://example.com/voice/webhook", ring_timeout_seconds=25,
                  notify_hangup_delay_seconds=3)
    fields.update(overrides)
    return OutboundCallRequest(**fields)


def test_make_call_sends_plivo_parameters_and_returns_the_request_uuid(fake):
    fake.outbound_behaviour = "queue"
    placed = rest_provider(fake).initiate_call(outbound_request())
    (request,) = fake.rest_of("make_call")
    assert request.status == 201 and placed.provider_call_id == fake.call_by_request(placed.provider_call_id).request_uuid
    body = request.body
    assert (body["from"], body["to"], body["answer_method"], body["hangup_method"]) == (
        "14155550100", "14155550199", "POST", "POST")
    assert (body["hangup_on_ring"], body["ring_timeout"]) == (25, 25)
    for key, flow in (("answer_url", "answer"), ("hangup_url", "hangup"), ("ring_url", "ring")):
        query = parse_qs(urlsplit(body[key]).query)
        assert query == {"provider": ["plivo"], "flow": [flow], "callId": [CALL_ID]}


def test_rest_errors_map_to_provider_errors_without_secrets(fake):
    provider = rest_provider(fake)
    fake.fail_next("make_call", 503, "temporarily unavailable")
    with pytest.raises(ProviderError) as server_error:
        provider.initiate_call(outbound_request())
    assert server_error.value.retryable and server_error.value.status == 503
    fake.fail_next("make_call", 400, f"invalid to number (token {fake.auth_token})")
    with pytest.raises(ProviderError) as client_error:
        provider.initiate_call(outbound_request())
    assert not client_error.value.retryable and "invalid to number" in str(client_error.value)
    assert fake.auth_token not in str(client_error.value) and AUTH_ID not in str(client_error.value)
    wrong = PlivoProvider(make_config("wrong-token", api_base_url=fake.base_url))
    with pytest.raises(ProviderError) as auth_error:
        wrong.initiate_call(outbound_request())
    assert auth_error.value.status == 401 and not auth_error.value.retryable


def test_a_silent_api_leaves_a_dial_ambiguous_and_an_unreachable_one_is_retryable(monkeypatch):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # accepts the connection into the backlog, never answers
        monkeypatch.setattr(plivo_provider, "REQUEST_TIMEOUT", (0.5, 0.5))
        provider = PlivoProvider(make_config(api_base_url=f"http://127.0.0.1:{silent.getsockname()[1]}"))
        with pytest.raises(ProviderError, match="timed out") as timeout:
            provider.initiate_call(outbound_request())
        # The request went out: Plivo may have dialed, so it must not be repeated.
        assert timeout.value.ambiguous and not timeout.value.retryable
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    provider = PlivoProvider(make_config(api_base_url=f"http://127.0.0.1:{port}"))
    with pytest.raises(ProviderError, match="unreachable") as refused:
        provider.initiate_call(outbound_request())
    assert refused.value.retryable


def test_hangup_before_a_call_uuid_is_known_cancels_the_request(fake):
    fake.outbound_behaviour = "queue"
    provider = rest_provider(fake)
    request_uuid = provider.initiate_call(outbound_request()).provider_call_id
    provider.hangup_call(snapshot(provider_call_id=request_uuid, state="initiated"))
    assert [(r.kind, r.uuid, r.status) for r in fake.rest if r.kind in ("hangup", "cancel")] == [
        ("hangup", request_uuid, 404), ("cancel", request_uuid, 204)]
    provider.hangup_call(snapshot(provider_call_id=request_uuid))  # already gone: both 404, no error
    assert [r.status for r in fake.rest_of("cancel")] == [204, 404]


def test_call_status_reads_live_then_detail_record_then_queue(fake):
    fake.outbound_behaviour = "queue"
    provider = rest_provider(fake)
    request_uuid = provider.initiate_call(outbound_request()).provider_call_id
    queued = provider.get_call_status(request_uuid)
    assert (queued.status, queued.is_terminal) == ("queued", False)
    call = fake.call_by_request(request_uuid)
    call.state = "in-progress"
    live = provider.get_call_status(call.call_uuid)
    assert (live.status, live.is_terminal) == ("in-progress", False)
    call.state, call.end_status = "ended", "busy"
    ended = provider.get_call_status(call.call_uuid)
    assert (ended.status, ended.is_terminal, ended.end_reason) == ("busy", True, "busy")
    missing = provider.get_call_status("f0f0f0f0-0000-4000-8000-000000000000")
    assert (missing.status, missing.is_terminal) == ("not-found", True)


def test_send_dtmf_posts_digits_to_the_a_leg_with_plivo_pause_characters(fake):
    fake.outbound_behaviour = "queue"
    provider = rest_provider(fake)
    request_uuid = provider.initiate_call(outbound_request()).provider_call_id
    call = fake.call_by_request(request_uuid)
    call.state = "in-progress"
    provider.send_dtmf(snapshot(provider_call_id=call.call_uuid), "12,3p#")
    (dtmf,) = fake.rest_of("dtmf")
    assert dtmf.status == 202 and dtmf.body == {"digits": "12W3W#", "leg": "aleg"}
    assert call.digits_received == ["12W3W#"]


def test_start_listening_transfers_the_a_leg_to_a_signed_xml_listen_url(fake):
    fake.outbound_behaviour = "queue"
    provider = rest_provider(fake)
    call = fake.call_by_request(provider.initiate_call(outbound_request()).provider_call_id)
    call.state = "in-progress"
    provider.start_listening(snapshot(provider_call_id=call.call_uuid), turn_token="turn-7")
    (transfer,) = fake.rest_of("transfer", call.call_uuid)
    assert transfer.status == 202
    assert (transfer.body["legs"], transfer.body["aleg_method"]) == ("aleg", "POST")
    query = {k: v[0] for k, v in parse_qs(urlsplit(transfer.body["aleg_url"]).query).items()}
    assert (query["flow"], query["callId"]) == ("xml-listen", CALL_ID)
    body = parse(provider, query, {"CallUUID": call.call_uuid}).reply.body
    assert "<GetInput " in body and "turnToken=turn-7" in body


def test_the_ledger_keeps_what_follows_a_call_not_the_callers_name_or_location():
    provider = PlivoProvider(make_config())
    request = form_request("https://example.com/voice/webhook", {
        "CallUUID": "in-uuid", "From": "14155550123", "To": "14155550100", "CallStatus": "ringing",
        "Direction": "inbound", "Event": "StartApp", "CallerName": "Alice Private", "FromCity": "Springfield",
        "STIRVerification": "Verified"}, {})
    (event, *_rest) = provider.parse_webhook(request, "plivo:v3:k").events
    assert event.raw == {"CallUUID": "in-uuid", "CallStatus": "ringing", "Direction": "inbound",
                         "From": "14155550123", "To": "14155550100", "Event": "StartApp"}
