"""A storm of forged, replayed and duplicate Telnyx webhooks mixed with valid ones.

Several live calls; every valid event is sent once, replayed byte for byte (same timestamp and
signature: the same request key) and redelivered the way Telnyx retries (same ``data.id``, next
``meta.attempt``, fresh timestamp and signature: a new request key). Forgeries are mixed in: signed
with another key, tampered after signing, signed too long ago or too far ahead, unsigned, garbage
signatures. Everything is shuffled and fired concurrently from 8 threads at two real daphne
processes sharing one PostgreSQL database, so deliveries of one event race each other across
processes.

What must hold afterwards: every forged request got 401 and left no trace; everything else got 200;
the ledger holds exactly the distinct valid events (one ``CallEvent`` per ``data.id``), each
utterance is in the transcript exactly once, and every call ends in the state its valid events say.
"""

from __future__ import annotations

import base64
import random
import secrets
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import requests

from calls.models import Call, CallEvent, TranscriptEntry, WebhookReceipt
from providers.telnyx import encode_client_state
from tests.factories import AnsweredCallFactory
from tests.fakes.telnyx import FakeCall, FakeTelnyx
from tests.test_telnyx_calls import CALLEE, OUR_NUMBER, WEBHOOK_PATH, telnyx_document

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CALLS = 6
UTTERANCES_PER_CALL = 8
DIGITS_PER_CALL = 2
HUNG_UP_CALLS = 3  # the first calls get a valid call.hangup; the others only forged ones
THREADS = 8  # at most 8 in flight, the per-IP cap of the webhook view (calls.interfaces.limits)
STALE_SECONDS = 400  # beyond Telnyx's 300 s tolerance
CARRIER_ATTEMPTS = 20  # deliveries answered 429 (over the per-IP cap) are retried, as carriers do


@dataclass
class Shot:
    kind: str  # original | replay | redelivery | forged
    body: bytes
    headers: dict[str, str]
    event_key: str | None  # the dedupe key a valid shot carries


def _leg(call: Call, webhook_url: str) -> FakeCall:
    return FakeCall(call_control_id=call.provider_call_id, direction="outgoing", from_number=OUR_NUMBER,
                    to_number=call.to_number, webhook_url=webhook_url, client_state=encode_client_state(str(call.id)),
                    state="answered")


def _valid_shots(fake: FakeTelnyx, leg: FakeCall, event_type: str, *, by_client_state: bool, **payload) -> list[Shot]:
    """One event as Telnyx would send it: the original, two byte-for-byte replays, one retry."""
    event_id = str(uuid.uuid4())
    document = fake.envelope(leg, event_type, event_id=event_id, **payload)
    if not by_client_state:
        document["data"]["payload"]["client_state"] = None  # found by call_control_id only
    body = fake.encode(document)
    now = int(time.time())
    signed = fake.sign(body, now)
    document["meta"]["attempt"] = 2
    retry = fake.encode(document)
    key = f"telnyx:evt:{event_id}"
    return [
        Shot("original", body, signed, key),
        Shot("replay", body, dict(signed), key),
        Shot("replay", body, dict(signed), key),
        Shot("redelivery", retry, fake.sign(retry, now + 1), key),
    ]


def _forged_shots(fake: FakeTelnyx, attacker: FakeTelnyx, leg: FakeCall, event_type: str, **payload) -> list[Shot]:
    """The same kind of event, each one refused for a different reason."""
    shots = []
    now = int(time.time())
    for reason in ("other-key", "tampered", "stale", "future", "unsigned", "garbage", "swapped-timestamp"):
        document = fake.envelope(leg, event_type, event_id=f"forged-{reason}-{uuid.uuid4()}", **payload)
        body = fake.encode(document)
        if reason == "other-key":
            headers = attacker.sign(body, now)
        elif reason == "tampered":
            headers = fake.sign(body, now)
            body = body.replace(b"FORGED", b"FORGES")
        elif reason == "stale":
            headers = fake.sign(body, now - STALE_SECONDS)
        elif reason == "future":
            headers = fake.sign(body, now + STALE_SECONDS)
        elif reason == "unsigned":
            headers = {"Content-Type": "application/json"}
        elif reason == "garbage":
            headers = {**fake.sign(body, now),
                       "telnyx-signature-ed25519": base64.b64encode(secrets.token_bytes(64)).decode()}
        else:  # a genuine signature presented with another timestamp
            headers = {**fake.sign(body, now), "telnyx-timestamp": str(now - 1)}
        shots.append(Shot("forged", body, headers, None))
    return shots


def _fire(shots: list[Shot], urls: list[str]) -> list[tuple[Shot, int]]:
    def send(indexed: tuple[int, Shot]) -> tuple[Shot, int]:
        index, shot = indexed
        for _attempt in range(CARRIER_ATTEMPTS):
            response = requests.post(urls[index % len(urls)], data=shot.body, headers=shot.headers, timeout=60)
            if response.status_code != 429:
                break
            # The per-IP cap counts a request until its response is fully sent, so a thread that
            # already has its answer can briefly find the slot still taken; a carrier retries.
            time.sleep(0.05)
        return shot, response.status_code

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        return list(pool.map(send, enumerate(shots)))


def _check_statuses(results: list[tuple[Shot, int]]) -> None:
    seen = Counter((shot.kind, status) for shot, status in results)
    expected = Counter()
    for shot, _status in results:
        expected[(shot.kind, 401 if shot.kind == "forged" else 200)] += 1
    assert seen == expected


def test_storm_of_forged_replayed_and_duplicate_webhooks_applies_each_valid_event_exactly_once(start_daphne):
    rng = random.Random(9)
    with FakeTelnyx.running() as fake:
        attacker = FakeTelnyx()
        document = telnyx_document(fake)
        servers = [start_daphne(document, extra_env={"VOICECALL_CELERY_EAGER": "1"}) for _ in range(2)]
        urls = [f"{server.base_url}{WEBHOOK_PATH}" for server in servers]
        calls = [AnsweredCallFactory(provider="telnyx", provider_call_id=f"v3:storm-{n}-{uuid.uuid4().hex[:8]}",
                                     from_number=OUR_NUMBER, to_number=CALLEE) for n in range(CALLS)]
        legs = [_leg(call, urls[0]) for call in calls]

        # Phase 1: the callers talk and press keys; nobody hangs up yet.
        shots: list[Shot] = []
        said: dict[str, list[str]] = {str(call.id): [] for call in calls}
        for call, leg in zip(calls, legs, strict=True):
            for n in range(UTTERANCES_PER_CALL):
                line = f"call {call.id} line {n}"
                said[str(call.id)].append(line)
                shots += _valid_shots(fake, leg, "call.transcription", by_client_state=n % 2 == 0,
                                      transcription_data={"transcript": line, "is_final": True, "confidence": 0.9})
            for n in range(DIGITS_PER_CALL):
                shots += _valid_shots(fake, leg, "call.dtmf.received", by_client_state=n % 2 == 1, digit=str(n))
            for _ in range(2):
                shots += _forged_shots(fake, attacker, leg, "call.transcription", transcription_data={
                    "transcript": "FORGED words", "is_final": True})
        rng.shuffle(shots)
        phase1 = _fire(shots, urls)

        # Phase 2: half the calls hang up (with retries and replays), the others only get forged hang-ups.
        hangups: list[Shot] = []
        for n, leg in enumerate(legs):
            if n < HUNG_UP_CALLS:
                hangups += _valid_shots(fake, leg, "call.hangup", by_client_state=True, hangup_cause="normal_clearing",
                                        hangup_source="callee")
            hangups += _forged_shots(fake, attacker, leg, "call.hangup", hangup_cause="FORGED", hangup_source="caller")
        rng.shuffle(hangups)
        phase2 = _fire(hangups, urls)

    results = phase1 + phase2
    _check_statuses(results)
    forged = [shot for shot, _ in results if shot.kind == "forged"]
    assert len(forged) == CALLS * 7 * 3

    valid_keys = {shot.event_key for shot, _ in results if shot.event_key}
    assert len(valid_keys) == CALLS * (UTTERANCES_PER_CALL + DIGITS_PER_CALL) + HUNG_UP_CALLS
    ledger = list(CallEvent.objects.values_list("dedupe_key", flat=True))
    assert sorted(ledger) == sorted(valid_keys)  # each valid event once; nothing forged
    assert not CallEvent.objects.filter(call__isnull=True).exists()
    # One receipt per distinct valid request (original and retry differ; replays share the original's).
    assert WebhookReceipt.objects.count() == 2 * len(valid_keys)
    assert not TranscriptEntry.objects.filter(text__contains="FORGE").exists()

    for n, call in enumerate(calls):
        call.refresh_from_db()
        transcript = list(call.transcript.filter(speaker="user").values_list("text", flat=True))
        assert Counter(transcript) == Counter(said[str(call.id)])
        assert CallEvent.objects.filter(call=call, type="call.dtmf").count() == DIGITS_PER_CALL
        if n < HUNG_UP_CALLS:
            assert (call.state, call.end_reason) == ("completed", "completed")
            assert CallEvent.objects.filter(call=call, type="call.ended").count() == 1
        else:
            assert (call.state, call.end_reason) == ("listening", "")
            assert call.ended_at is None
    assert Call.objects.count() == CALLS
