"""Hostile input: property-based fuzzing of every webhook parser through the real view, and of the
media-stream frame parser.

Webhooks go through Django's test ``client`` to ``serve.path``, so the whole pipeline runs: the
signature-header gate, the body cap, verification, the replay check, parsing and the one transaction
that applies events. Properties, for any bytes and any headers:

* no 5xx and no exception escapes the view (the test client re-raises anything uncaught);
* input that is refused (401 unsigned/forged, 400 unparseable, 413 oversized) records nothing: no
  ``CallEvent``, ``Call``, ``TranscriptEntry``, ``WebhookReceipt`` or ``RejectedInboundCall`` row;
* a signed envelope that carries no event we act on records nothing but its receipt.

Bugs this found (fixed in ``calls/services.storable_event``): a NUL character or a lone surrogate in
any text field, or ``NaN``/``Infinity`` in a payload, made PostgreSQL fail the whole webhook with a
500; a carrier call id longer than its column did the same.

The tests run in one transaction per test that never commits, so Celery tasks queued on commit do
not run here; the storm, restart, Redis and worker tests exercise those paths on real processes.

The harness is generic: a ``FuzzTarget`` says how to configure a carrier, how to sign a body the way
the carrier does, and what its envelopes look like. Adding a carrier (Twilio, Plivo) is one more
entry in ``FUZZ_TARGETS``.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

import pytest
from django.conf import settings as django_settings
from django.http.request import split_domain_port, validate_host
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from calls.config import config_from_dict, set_config
from calls.interfaces.webhooks import MAX_BODY_BYTES
from calls.models import Call, CallEvent, RejectedInboundCall, TranscriptEntry, WebhookReceipt
from providers import get_provider, provider_class
from providers.security import WebhookRequest
from providers.telnyx import EVENT_TYPES, HANGUP_CAUSES, encode_client_state
from providers.twilio_stream import (
    MalformedFrame,
    dtmf_digit,
    mark_name,
    media_payload,
    parse_frame,
    parse_start,
)
from tests.conftest import free_port
from tests.fakes.plivo import FakePlivo
from tests.fakes.telnyx import FakeTelnyx
from tests.fakes.twilio import twilio_signature

pytestmark = pytest.mark.django_db

WEBHOOK = "/voice/webhook"
FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the repo; failures print their example
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --- strategies shared by every carrier ------------------------------------------------------------

# Strings a database or a JSON column chokes on, next to ordinary text.
TRICKY_TEXT = [
    "", " ", "\x00", "a\x00b", "\ud800", "\udfff", "é" * 3, "\u202e" + "evil", "x" * 300, "+1" + "5" * 200,
    "'; DROP TABLE calls_call; --", "${jndi:ldap://x}", "../../etc/passwd", "\r\nX-Injected: 1",
]
text = st.one_of(st.text(max_size=40), st.sampled_from(TRICKY_TEXT))
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), text,
)
json_values = st.recursive(
    scalars, lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=12,
)
header_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=1,
                       max_size=30)
header_values = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=120)
# The transport owns framing headers (a wrong Content-Length is the HTTP server's problem, not ours).
FRAMING_HEADERS = {"content-length", "content-type", "transfer-encoding"}
headers = st.dictionaries(header_names.filter(lambda n: n.lower() not in FRAMING_HEADERS), header_values,
                          max_size=6)
raw_bodies = st.one_of(
    st.binary(max_size=2048),
    json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()),
    # around the body cap (built, not drawn: drawing 64 KB of random bytes is slow)
    st.tuples(st.integers(min_value=MAX_BODY_BYTES - 8, max_value=MAX_BODY_BYTES + 64), st.binary(max_size=8))
    .map(lambda t: (t[1] * t[0])[: t[0]] if t[1] else b"{" * t[0]),
)


def _encode(document: object) -> bytes:
    return json.dumps(document, allow_nan=True).encode()


# --- carriers --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FuzzTarget:
    """One carrier as the fuzzer sees it."""

    name: str
    #: the voice-call config (inner camelCase form) for a given signer
    document: Callable[[object], dict]
    #: the headers the carrier sends with ``body`` (None when the carrier does not sign)
    sign: Callable[[object, bytes], dict[str, str]] | None
    #: envelopes shaped like the carrier's, with fuzzed fields; ``known`` are ids of a live call
    envelopes: Callable[[dict[str, str]], st.SearchStrategy[object]]
    #: makes the signer (key pair / auth token holder) that ``document`` and ``sign`` share
    new_signer: Callable[[], object] = lambda: None
    content_type: str = "application/json"
    #: how an envelope goes on the wire (JSON, or a form body for Twilio and Plivo)
    encode: Callable[[object], bytes] = _encode


def _unreachable_api() -> str:
    return f"http://127.0.0.1:{free_port()}"  # carrier commands queued by fuzzed events fail fast


def _telnyx_document(signer: FakeTelnyx) -> dict:
    return {
        "provider": "telnyx",
        "fromNumber": "+15550001000",
        "telnyx": {"apiKey": signer.api_key, "connectionId": signer.connection_id,
                   "publicKey": signer.public_key, "apiBaseUrl": _unreachable_api()},
    }


def _telnyx_sign(signer: FakeTelnyx, body: bytes) -> dict[str, str]:
    return signer.sign(body)


def _telnyx_envelopes(known: dict[str, str]) -> st.SearchStrategy[object]:
    """``{"data": {"event_type", "id", "occurred_at", "payload": {...}}, "meta"}`` (protocols §5):
    mostly well-shaped envelopes (so events reach the services) whose fields are sometimes arbitrary
    JSON, plus arbitrary JSON documents."""
    ids = st.one_of(st.just(known["provider_call_id"]), text, json_values)
    client_state = st.one_of(st.just(encode_client_state(known["call_id"])),
                             text.map(lambda t: base64.b64encode(t.encode("utf-8", "surrogatepass")).decode()),
                             json_values)
    transcription = st.fixed_dictionaries({}, optional={
        "transcript": st.one_of(text, json_values), "is_final": st.one_of(st.booleans(), json_values),
        "confidence": st.one_of(st.floats(allow_nan=True), json_values), "transcription_track": text})
    payload = st.fixed_dictionaries({"call_control_id": ids}, optional={
        "client_state": client_state,
        "direction": st.one_of(st.sampled_from(["incoming", "outgoing", "INBOUND", "sideways"]), json_values),
        "from": st.one_of(st.sampled_from(["+15557770000", "anonymous"]), text, json_values),
        "to": st.one_of(st.just("+15550001000"), text, json_values),
        "hangup_cause": st.one_of(st.sampled_from(sorted(HANGUP_CAUSES)), text, json_values),
        "transcription_data": st.one_of(transcription, json_values),
        "status": st.one_of(st.sampled_from(["completed", "call_hangup"]), json_values),
        "digit": st.one_of(st.sampled_from(["1", "#"]), json_values),
    })
    event_types = st.sampled_from([*sorted(EVENT_TYPES), "call.cost", "call.machine.detection.ended"])
    data = st.fixed_dictionaries(
        {"event_type": event_types, "payload": payload},
        optional={"id": st.one_of(st.uuids().map(str), text, json_values),
                  "occurred_at": st.one_of(st.sampled_from(["2024-01-01T00:00:00Z", "yesterday"]), json_values),
                  "record_type": st.just("event")},
    )
    loose_data = st.fixed_dictionaries({}, optional={
        "event_type": st.one_of(event_types, json_values), "id": json_values,
        "payload": st.one_of(payload, json_values)})
    return st.one_of(
        st.fixed_dictionaries({"data": data}, optional={"meta": json_values}),
        st.fixed_dictionaries({"data": data}, optional={"meta": json_values}),
        st.fixed_dictionaries({"data": st.one_of(loose_data, json_values)}),
        json_values,
    )


def _mock_document(_signer: object) -> dict:
    return {"provider": "mock", "mock": {"autoAnswer": False}}


def _mock_envelopes(known: dict[str, str]) -> st.SearchStrategy[object]:
    """``{"event": {...}}`` / ``{"events": [...]}`` with camelCase NormalizedEvent fields
    (providers/mock.py): mostly well-shaped events whose fields are sometimes arbitrary JSON."""
    event_types = st.sampled_from(["call.initiated", "call.ringing", "call.answered", "call.active",
                                   "call.speaking", "call.spoken", "call.speech", "call.silence", "call.dtmf",
                                   "call.ended", "call.error"])
    call_ids = st.one_of(st.just(known["call_id"]), st.uuids().map(str), text, json_values)
    event = st.fixed_dictionaries({"type": event_types, "callId": call_ids}, optional={
        "id": st.one_of(text, json_values),
        "providerCallId": st.one_of(st.just(known["provider_call_id"]), text, json_values),
        "direction": st.one_of(st.sampled_from(["inbound", "outbound"]), json_values),
        "from": st.one_of(text, json_values),
        "transcript": st.one_of(text, json_values),
        "isFinal": st.one_of(st.booleans(), json_values),
        "confidence": st.one_of(st.floats(allow_nan=True), json_values),
        "durationMs": st.one_of(st.integers(), json_values),
        "digits": st.one_of(text, json_values),
        "reason": st.one_of(st.sampled_from(["completed", "hangup-user", "nonsense"]), json_values),
        "error": st.one_of(text, json_values),
        "turnToken": st.one_of(text, json_values),
        "retryable": st.one_of(st.booleans(), json_values),
    })
    loose_event = st.dictionaries(st.sampled_from(["type", "callId", "providerCallId", "id", "transcript"]),
                                  json_values, max_size=4)
    return st.one_of(
        st.fixed_dictionaries({"events": st.lists(st.one_of(event, event, loose_event), max_size=3)}),
        st.fixed_dictionaries({"event": event}),
        st.fixed_dictionaries({"events": json_values}),
        json_values,
    )


FORM_PUBLIC_URL = "https://voice.example.test/voice/webhook"  # what the form carriers sign


def _form_encode(document: object) -> bytes:
    """A form body from a fuzzed envelope: dicts become ``k=v`` pairs, anything else a lone value."""
    if isinstance(document, dict):
        pairs = [(str(k), v if isinstance(v, str) else json.dumps(v, allow_nan=True)) for k, v in document.items()]
        return urlencode(pairs, errors="surrogatepass").encode()
    return (document if isinstance(document, str) else json.dumps(document, allow_nan=True)).encode(
        "utf-8", "surrogatepass")


def _form_params(body: bytes) -> list[tuple[str, str]]:
    return parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True)  # as the server reads it


def _form_envelopes(fields: dict[str, st.SearchStrategy[str]]) -> st.SearchStrategy[object]:
    """Mostly well-shaped callbacks (known keys, sometimes arbitrary text), plus arbitrary forms."""
    shaped = st.fixed_dictionaries({}, optional={k: st.one_of(v, text) for k, v in fields.items()})
    loose = st.dictionaries(st.one_of(st.sampled_from(sorted(fields)), text), text, max_size=6)
    return st.one_of(shaped, shaped, loose, json_values)


@dataclass
class _TwilioSigner:
    auth_token: str = "fuzz_twilio_auth_token_0123456789"


def _twilio_document(signer: _TwilioSigner) -> dict:
    return {"provider": "twilio", "fromNumber": "+15550001000", "publicUrl": FORM_PUBLIC_URL,
            "twilio": {"accountSid": "AC" + "0" * 32, "authToken": signer.auth_token,
                       "apiBaseUrl": _unreachable_api()}}


def _twilio_sign(signer: _TwilioSigner, body: bytes) -> dict[str, str]:
    return {"X-Twilio-Signature": twilio_signature(signer.auth_token, FORM_PUBLIC_URL, _form_params(body))}


def _twilio_envelopes(known: dict[str, str]) -> st.SearchStrategy[object]:
    """Voice webhooks and status callbacks (protocols.md §2) with fuzzed values."""
    return _form_envelopes({
        "CallSid": st.one_of(st.just(known["provider_call_id"]), st.just("CA" + "1" * 32)),
        "AccountSid": st.just("AC" + "0" * 32),
        "CallStatus": st.sampled_from(["queued", "initiated", "ringing", "in-progress", "completed", "busy",
                                       "failed", "no-answer", "canceled", "weird"]),
        "Direction": st.sampled_from(["inbound", "outbound-api", "outbound-dial", "sideways"]),
        "From": st.sampled_from(["+15557770000", "anonymous", ""]),
        "To": st.just("+15550001000"),
        "SpeechResult": text,
        "Confidence": st.sampled_from(["0.9", "NaN", "-1", "lots"]),
        "Digits": st.sampled_from(["1", "#", "12*"]),
        "SequenceNumber": st.integers(-1, 10).map(str),
    })


@dataclass
class _PlivoSigner:
    auth_token: str = "fuzz_plivo_auth_token_0123456789"

    def sign(self, body: bytes) -> dict[str, str]:
        signed = FakePlivo(auth_token=self.auth_token).sign(FORM_PUBLIC_URL, dict(_form_params(body)))
        signed.pop("Content-Type", None)
        return signed


def _plivo_document(signer: _PlivoSigner) -> dict:
    return {"provider": "plivo", "fromNumber": "+15550001000", "publicUrl": FORM_PUBLIC_URL,
            "plivo": {"authId": "MAFUZZFUZZFUZZFUZZFU", "authToken": signer.auth_token,
                      "apiBaseUrl": _unreachable_api()}}


def _plivo_envelopes(known: dict[str, str]) -> st.SearchStrategy[object]:
    """Answer/hangup/GetInput callbacks (protocols.md §6) with fuzzed values."""
    return _form_envelopes({
        "CallUUID": st.one_of(st.just(known["provider_call_id"]), st.uuids().map(str)),
        "RequestUUID": st.uuids().map(str),
        "CallStatus": st.sampled_from(["ringing", "in-progress", "completed", "busy", "no-answer", "failed",
                                       "odd"]),
        "Direction": st.sampled_from(["inbound", "outbound", "sideways"]),
        "From": st.sampled_from(["15557770000", "anonymous", ""]),
        "To": st.just("15550001000"),
        "Event": st.sampled_from(["StartApp", "Hangup", "Redirect"]),
        "Speech": text,
        "Digits": st.sampled_from(["1", "#"]),
        "HangupCause": st.sampled_from(["NORMAL_CLEARING", "USER_BUSY", "x"]),
    })


FUZZ_TARGETS = [
    FuzzTarget("mock", _mock_document, None, _mock_envelopes),
    FuzzTarget("telnyx", _telnyx_document, _telnyx_sign, _telnyx_envelopes, new_signer=FakeTelnyx),
    FuzzTarget("twilio", _twilio_document, _twilio_sign, _twilio_envelopes, new_signer=_TwilioSigner,
               content_type="application/x-www-form-urlencoded", encode=_form_encode),
    FuzzTarget("plivo", _plivo_document, lambda signer, body: signer.sign(body), _plivo_envelopes,
               new_signer=_PlivoSigner, content_type="application/x-www-form-urlencoded", encode=_form_encode),
]


# --- the harness -----------------------------------------------------------------------------------


def _ledger() -> tuple[int, ...]:
    return (CallEvent.objects.count(), Call.objects.count(), TranscriptEntry.objects.count(),
            WebhookReceipt.objects.count(), RejectedInboundCall.objects.count())


@pytest.fixture(params=FUZZ_TARGETS, ids=lambda t: t.name)
def target(request) -> FuzzTarget:
    return request.param


@pytest.fixture
def carrier(target: FuzzTarget):
    """The target's config installed for this test, a signer, and one live call events may hit."""
    signer = target.new_signer()  # e.g. an unstarted FakeTelnyx: only its Ed25519 key pair is used
    config = config_from_dict(target.document(signer), env={})
    set_config(config)
    known = Call.objects.create(
        provider=target.name, provider_call_id=f"{target.name}-fuzz-known-{uuid.uuid4().hex[:8]}", direction="outbound",
        state="listening", mode="conversation", from_number="+15550001000", to_number="+15550002000",
        initial_message="hi", initial_message_delivered=True,
    )
    ids = {"call_id": str(known.id), "provider_call_id": known.provider_call_id}
    return target, signer, config, ids


def _host_refused(extra_headers: dict[str, str]) -> bool:
    """Whether Django refuses the request for its Host header (``DisallowedHost``: 400)."""
    for name, value in extra_headers.items():
        if name.lower() == "host":
            domain, _port = split_domain_port(value)
            if not domain or not validate_host(domain, django_settings.ALLOWED_HOSTS):
                return True
    return False


def _post(client, target: FuzzTarget, body: bytes, extra_headers: dict[str, str]):
    return client.generic("POST", WEBHOOK, data=body, content_type=target.content_type, headers=extra_headers)


def _assert_refusal_recorded_nothing(response, before: tuple[int, ...]) -> None:
    assert response.status_code < 500
    if response.status_code != 200:
        assert _ledger() == before, f"HTTP {response.status_code} recorded rows"


def _forged_signature_headers(target: FuzzTarget) -> st.SearchStrategy[dict[str, str]]:
    """The carrier's own signature header names (``required_signature_headers``) with made-up values,
    so verification itself is fuzzed, not just the pre-auth gate."""
    sets = provider_class(target.name).required_signature_headers
    if not sets:
        return headers
    values = st.one_of(header_values, st.integers().map(str), st.binary(min_size=64, max_size=64).map(
        lambda b: base64.b64encode(b).decode()))
    forged = st.sampled_from(sets).flatmap(lambda names: st.fixed_dictionaries({n: values for n in names}))
    return st.one_of(headers, st.tuples(headers, forged).map(lambda pair: {**pair[0], **pair[1]}))


def test_arbitrary_bytes_and_headers_never_cause_5xx_and_refusals_record_nothing(client, carrier):
    target, _signer, _config, _ids = carrier

    @FUZZ
    @given(body=raw_bodies, extra=_forged_signature_headers(target))
    def check(body: bytes, extra: dict[str, str]) -> None:
        before = _ledger()
        response = _post(client, target, body, extra)
        _assert_refusal_recorded_nothing(response, before)
        if target.sign is not None:
            # Unsigned (or signed with made-up headers) input never gets past verification. A Host
            # that Django does not serve is refused with 400 before any view runs, which is as good.
            assert response.status_code in ((400, 401, 413) if _host_refused(extra) else (401, 413))
            assert _ledger() == before

    check()


def test_signed_fuzzed_envelopes_are_parsed_without_5xx_and_unusable_ones_record_nothing(client, carrier):
    """Bodies signed with the carrier's real algorithm reach the parser and the services."""
    target, signer, config, ids = carrier
    provider = get_provider(config.provider_settings)

    # Raw bytes only for JSON carriers: a form body with repeated keys or broken UTF-8 has no single
    # "right" signature to fake, and unsigned junk is covered by the test above.
    bodies = [target.envelopes(ids).map(target.encode), target.envelopes(ids).map(target.encode)]
    if target.encode is _encode:
        bodies.append(raw_bodies)

    @FUZZ
    @given(body=st.one_of(*bodies), extra=headers)
    def check(body: bytes, extra: dict[str, str]) -> None:
        signed = {**extra, **(target.sign(signer, body) if target.sign else {})}
        before = _ledger()
        response = _post(client, target, body, signed)
        _assert_refusal_recorded_nothing(response, before)
        assert response.status_code in (200, 400, 413)
        if response.status_code == 200:
            if not _events_of(provider, body, signed):
                events, calls, transcript, _receipts, rejected = _ledger()
                assert (events, calls, transcript, rejected) == (before[0], before[1], before[2], before[4])

    check()
    # The fuzzer reached the services, not just the parser's error paths.
    assert CallEvent.objects.exists()


@pytest.mark.parametrize("target", [t for t in FUZZ_TARGETS if t.sign], indirect=True, ids=lambda t: t.name)
def test_signed_then_tampered_bodies_are_refused_and_record_nothing(client, carrier):
    target, signer, _config, ids = carrier
    assert target.sign is not None

    @FUZZ
    @given(document=target.envelopes(ids), flip=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
    def check(document: object, flip: int, bit: int) -> None:
        body = target.encode(document)
        assume(body)  # an empty form has no byte to flip
        signed = target.sign(signer, body)
        tampered = bytearray(body)
        tampered[flip % len(tampered)] ^= 1 << bit
        assume(bytes(tampered) != body)
        if target.encode is _form_encode:
            # Form carriers sign the decoded parameters (as their SDKs do): flipping a bit inside an
            # invalid UTF-8 sequence that still decodes to the same U+FFFD text changes nothing a
            # receiver can see, so it is not a tampered request.
            assume(_form_params(bytes(tampered)) != _form_params(body))
        before = _ledger()
        response = _post(client, target, bytes(tampered), signed)
        assert response.status_code == 401
        assert _ledger() == before

    check()


def _events_of(provider, body: bytes, signed: dict[str, str]) -> list:
    """What the carrier adapter makes of this body (the oracle for "nothing to act on")."""
    request = WebhookRequest(method="POST", path=WEBHOOK, query_string="", headers=signed, body=body,
                             remote_addr="127.0.0.1", scheme="http", host="testserver")
    return provider.parse_webhook(request, "fuzz-oracle").events


@pytest.mark.parametrize("target", [t for t in FUZZ_TARGETS if t.name == "telnyx"], indirect=True,
                         ids=lambda t: t.name)
def test_text_the_database_cannot_hold_is_cleaned_and_overlong_carrier_ids_are_refused(client, carrier):
    """The fuzzer's finds, pinned: each of these was a 500 on PostgreSQL."""
    _target, signer, _config, ids = carrier
    call = Call.objects.get(id=ids["call_id"])

    def send(event_id: str, **payload) -> int:
        document = {"data": {"event_type": "call.transcription", "id": event_id, "payload": {
            "call_control_id": ids["provider_call_id"], "client_state": encode_client_state(ids["call_id"]),
            **payload}}}
        body = json.dumps(document, allow_nan=True).encode()
        return client.post(WEBHOOK, data=body, content_type="application/json", headers=signer.sign(body)).status_code

    assert send("nul", transcription_data={"transcript": "half\x00way", "is_final": True}) == 200
    assert send("surrogate", transcription_data={"transcript": "bad \ud800 text", "is_final": True}) == 200
    assert send("nan", transcription_data={"transcript": "sure", "is_final": True, "confidence": float("nan")}) == 200
    assert list(call.transcript.order_by("id").values_list("text", flat=True)) == ["halfway", "bad ? text", "sure"]
    raw = CallEvent.objects.get(dedupe_key="telnyx:evt:nan").payload["raw"]
    assert raw["payload"]["transcription_data"]["confidence"] is None
    assert send("nul\x00id", transcription_data={"transcript": "ok", "is_final": True}) == 200
    assert CallEvent.objects.filter(dedupe_key="telnyx:evt:nulid").exists()

    before = _ledger()
    document = {"data": {"event_type": "call.answered", "id": "long", "payload": {"call_control_id": "v3:" + "x" * 200}}}
    body = json.dumps(document).encode()
    response = client.post(WEBHOOK, data=body, content_type="application/json", headers=signer.sign(body))
    assert response.status_code == 400
    assert _ledger() == before


# --- media-stream frames ---------------------------------------------------------------------------

stream_messages = st.fixed_dictionaries({"event": st.sampled_from(["connected", "start", "media", "mark", "dtmf",
                                                                    "stop", "other"])}, optional={
    "streamSid": st.one_of(text, json_values),
    "start": st.one_of(st.fixed_dictionaries({}, optional={
        "callSid": st.one_of(st.sampled_from(["CA" + "0" * 32]), text, json_values),
        "streamSid": st.one_of(st.sampled_from(["MZ" + "1" * 32]), text, json_values),
        "customParameters": st.one_of(st.dictionaries(text, json_values, max_size=3), json_values)}), json_values),
    "media": st.one_of(st.fixed_dictionaries({}, optional={
        "track": st.one_of(st.sampled_from(["inbound", "outbound", "inbound_track"]), json_values),
        "payload": st.one_of(st.binary(max_size=200).map(lambda b: base64.b64encode(b).decode()), text,
                             json_values)}), json_values),
    "mark": st.one_of(st.fixed_dictionaries({}, optional={"name": st.one_of(text, json_values)}), json_values),
    "dtmf": st.one_of(st.fixed_dictionaries({}, optional={"digit": st.one_of(text, json_values)}), json_values),
})


@FUZZ
@given(frame=st.one_of(st.text(max_size=400), stream_messages.map(lambda m: json.dumps(m, allow_nan=True)),
                       json_values.map(lambda v: json.dumps(v, allow_nan=True)),
                       st.integers(min_value=1, max_value=5000).map(lambda n: "[" * n + "]" * n)))
def test_stream_frames_either_parse_to_a_message_or_raise_malformed_frame(frame: str):
    """The pure frame parser of the media-stream consumer (``providers/twilio_stream.py``)."""
    try:
        message = parse_frame(frame)
    except MalformedFrame:
        return
    assert isinstance(message, dict) and isinstance(message["event"], str)
    start = parse_start(message, query_token=None)
    assert start is None or (isinstance(start.carrier_call_id, str) and isinstance(start.stream_id, str))
    payload = media_payload(message)
    assert payload is None or base64.b64decode(payload, validate=True) is not None
    assert mark_name(message) is None or isinstance(mark_name(message), str)
    assert dtmf_digit(message) in (None, *"0123456789*#")


def test_property_tests_draw_the_same_examples_on_every_run():
    """``make test`` must pass every run: the default profile (tests/conftest.py) is derandomised and
    keeps no example database, and the fuzz settings above inherit it."""
    if os.environ.get("HYPOTHESIS_PROFILE", "ci") != "ci":
        pytest.skip("an exploring profile was chosen on purpose")
    assert settings.default.derandomize and settings.default.database is None
    assert FUZZ.derandomize and FUZZ.database is None
