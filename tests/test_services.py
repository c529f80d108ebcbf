"""Service-layer rules: checks, errors and result shapes of fact sheet §8."""

from datetime import timedelta

import pytest
from django.utils import timezone

from calls import services
from calls.config import get_config
from calls.models import Call, CallEvent, TranscriptEntry, WebhookReceipt
from providers import get_provider
from providers.base import EventType, NormalizedEvent
from tests.factories import AllowedCallerFactory, AnsweredCallFactory, CallFactory

pytestmark = pytest.mark.django_db


def event(call, kind, key, **fields):
    return NormalizedEvent(type=kind, dedupe_key=key, call_id=str(call.id), **fields)


def apply(*events):
    return services.process_events(get_provider(get_config().provider_settings), list(events))


class TestInitiate:
    def test_persists_an_initiated_outbound_call(self, django_capture_on_commit_callbacks):
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            call = services.initiate_call(to="+15550001111", message="Hi", mode="conversation")
        assert call.state == "initiated" and call.direction == "outbound" and call.mode == "conversation"
        assert call.from_number == services.MOCK_DEFAULT_FROM
        assert len(callbacks) == 2  # placement and the update notification wait for commit

    def test_info_logs_mask_the_number_called(self, caplog):
        with caplog.at_level("INFO", logger="calls"):
            services.initiate_call(to="+15550001234", message="Hi", mode="notify")
        text = caplog.text
        assert "+15550001234" not in text and "+155••••••34" in text

    def test_uses_configured_default_mode_and_to_number(self, configure):
        configure(toNumber="+15550002222", outbound={"defaultMode": "conversation"})
        call = services.initiate_call(to=None, message="Hi")
        assert (call.to_number, call.mode) == ("+15550002222", "conversation")

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"to": None, "message": "x"}, services.TO_REQUIRED),
            ({"to": "5550001111", "message": "x"}, services.INVALID_NUMBER.format(field="to")),
            ({"to": "+15550001111", "message": "x", "mode": "shout"}, services.INVALID_MODE),
        ],
    )
    def test_rejects_bad_requests_without_a_record(self, kwargs, message):
        with pytest.raises(services.ServiceError, match=message.replace("+", r"\+")):
            services.initiate_call(**kwargs)
        assert Call.objects.count() == 0

    def test_refuses_past_max_concurrent_calls(self, configure):
        configure(maxConcurrentCalls=1)
        AnsweredCallFactory()
        with pytest.raises(services.ServiceError, match=r"Maximum concurrent calls \(1\) reached"):
            services.initiate_call(to="+15550001111", message="Hi")
        assert Call.objects.count() == 1

    def test_ended_calls_do_not_count_toward_the_limit(self, configure):
        configure(maxConcurrentCalls=1)
        CallFactory(state="completed")
        assert services.initiate_call(to="+15550001111", message="Hi").state == "initiated"


class TestPlaceCall:
    def test_places_once_and_stores_the_carrier_id(self):
        call = CallFactory()
        assert services.place_call(str(call.id)) == "placed"
        call.refresh_from_db()
        assert call.provider_call_id == f"mock-{call.id}"
        assert services.place_call(str(call.id)) == "already-placed"

    def test_redelivery_after_an_interrupted_dial_fails_instead_of_dialing_twice(self):
        call = CallFactory(metadata={"dialClaimedAt": 1})
        assert services.place_call(str(call.id)) == "interrupted"
        call.refresh_from_db()
        assert call.state == "failed" and call.provider_call_id is None
        assert "not redialed" in call.last_error

    def test_a_cancelled_call_is_never_dialed(self):
        call = CallFactory()
        services.end_call(str(call.id))
        assert services.place_call(str(call.id)) == "ended"
        call.refresh_from_db()
        assert call.state == "hangup-bot" and call.provider_call_id is None


class TestEvents:
    def test_duplicate_event_changes_nothing(self):
        call = CallFactory(provider_call_id="mock-1", state="ringing")
        first = apply(event(call, EventType.ANSWERED, "k1"))
        second = apply(event(call, EventType.ANSWERED, "k1"))
        assert not first[0].duplicate and second[0].duplicate
        assert CallEvent.objects.filter(dedupe_key="k1").count() == 1

    def test_backwards_event_is_ignored_and_terminal_is_sticky(self):
        call = CallFactory(provider_call_id="mock-2", state="answered")
        apply(event(call, EventType.RINGING, "r"), event(call, EventType.ENDED, "e", reason="busy"),
              event(call, EventType.ANSWERED, "a"))
        call.refresh_from_db()
        assert call.state == "busy" and call.end_reason == "busy" and call.ended_at is not None

    def test_unknown_end_reason_becomes_completed(self):
        call = CallFactory(provider_call_id="mock-3", state="answered")
        apply(event(call, EventType.ENDED, "e", reason="exploded"))
        call.refresh_from_db()
        assert call.state == "completed"

    def test_events_are_matched_by_carrier_id(self):
        call = CallFactory(provider_call_id="mock-4", state="ringing")
        apply(NormalizedEvent(type=EventType.ANSWERED, dedupe_key="x", provider_call_id="mock-4"))
        call.refresh_from_db()
        assert call.state != "ringing" and call.answered_at is not None

    def test_provider_id_upgrade_moves_the_mapping(self):
        call = CallFactory(provider_call_id="request-uuid", state="ringing")
        apply(NormalizedEvent(type=EventType.ANSWERED, dedupe_key="u", provider_call_id="call-uuid",
                              previous_provider_call_id="request-uuid"))
        call.refresh_from_db()
        assert call.provider_call_id == "call-uuid"
        assert services.find_call("request-uuid") is None

    def test_partial_speech_is_not_a_transcript_line(self):
        call = AnsweredCallFactory()
        apply(event(call, EventType.SPEECH, "p", transcript="hel", is_final=False))
        assert TranscriptEntry.objects.count() == 0

    def test_stale_turn_token_cannot_answer_a_pending_turn(self, configure):
        call = AnsweredCallFactory(pending_turn_token="fresh")
        provider = get_provider(get_config().provider_settings)
        type(provider).uses_turn_tokens = True
        try:
            outcome = apply(event(call, EventType.SPEECH, "s", transcript="yes", turn_token="stale"))
        finally:
            type(provider).uses_turn_tokens = False
        assert outcome[0].ignored
        assert TranscriptEntry.objects.count() == 0
        call.refresh_from_db()
        assert call.pending_turn_token == "fresh"

    def test_dtmf_is_recorded_without_changing_state(self):
        call = AnsweredCallFactory()
        apply(event(call, EventType.DTMF, "d", digits="12#"))
        call.refresh_from_db()
        assert call.state == "listening"
        assert CallEvent.objects.get(dedupe_key="d").payload["digits"] == "12#"

    def test_non_retryable_error_ends_the_call(self):
        call = AnsweredCallFactory()
        apply(event(call, EventType.ERROR, "err", error="carrier exploded"))
        call.refresh_from_db()
        assert call.state == "error" and call.last_error == "carrier exploded"


class TestInboundPolicy:
    @pytest.mark.parametrize(
        ("policy", "allow", "caller", "accepted"),
        [
            ("disabled", ["+15554444444"], "+15554444444", False),
            ("open", [], "+15550000001", True),
            ("allowlist", ["+15554444444"], "+1 555 444 4444", True),
            ("pairing", ["+15554444444"], "+15554444444", True),
            ("allowlist", ["+15554444444"], "5554444444", False),  # suffix-only match
            ("allowlist", ["+15554444444"], "anonymous", False),
            ("allowlist", ["+15554444444"], None, False),
        ],
    )
    def test_policy_table(self, configure, policy, allow, caller, accepted):
        configure(inboundPolicy=policy, allowFrom=allow)
        assert services.inbound_allowed(caller) is accepted

    def test_allowed_caller_rows_extend_the_config(self, configure):
        configure(inboundPolicy="allowlist")
        AllowedCallerFactory(number="+15553333333")
        AllowedCallerFactory(number="+15552222222", enabled=False)
        assert services.inbound_allowed("+15553333333")
        assert not services.inbound_allowed("+15552222222")


class TestOperations:
    def test_unknown_call_id(self):
        for op in (lambda: services.speak("nope", "hi"), lambda: services.end_call("nope"),
                   lambda: services.continue_call("nope", "hi"), lambda: services.send_dtmf("nope", "1")):
            with pytest.raises(services.ServiceError, match=services.CALL_NOT_FOUND):
                op()
        assert services.get_status("nope") == {"found": False}

    def test_speak_requires_a_connected_call(self, configure):
        configure(ringTimeoutMs=100)  # a ringing call is waited for this long (tests/test_turn_waits.py)
        call = CallFactory(state="ringing", provider_call_id="mock-r")
        with pytest.raises(services.ServiceError, match=services.CALL_NOT_CONNECTED):
            services.speak(str(call.id), "hi")

    def test_speak_on_an_ended_call(self):
        call = CallFactory(state="completed", provider_call_id="mock-e")
        with pytest.raises(services.ServiceError, match=services.CALL_HAS_ENDED):
            services.speak(str(call.id), "hi")

    def test_speak_records_the_bot_line(self):
        call = AnsweredCallFactory()
        services.speak(call.provider_call_id, "Still there?")  # carrier ids work too
        assert list(call.transcript.values_list("speaker", "text")) == [("bot", "Still there?")]

    def test_ending_an_ended_call_succeeds(self):
        call = CallFactory(state="completed")
        services.end_call(str(call.id))
        call.refresh_from_db()
        assert call.state == "completed"

    def test_end_call_hangs_up(self):
        call = AnsweredCallFactory()
        services.end_call(str(call.id))
        call.refresh_from_db()
        assert call.state == "hangup-bot" and call.end_reason == "hangup-bot"

    @pytest.mark.parametrize("digits", ["12a", "1 2", "", "#;"])
    def test_dtmf_digits_are_validated(self, digits):
        call = AnsweredCallFactory()
        with pytest.raises(services.ServiceError):
            services.send_dtmf(str(call.id), digits)

    def test_dtmf_accepts_pauses(self):
        services.send_dtmf(str(AnsweredCallFactory().id), "1w2p#*,")

    def test_a_second_continue_is_refused_while_one_waits(self):
        call = AnsweredCallFactory(pending_turn_token="busy")
        with pytest.raises(services.ServiceError, match=services.ALREADY_WAITING):
            services.continue_call(str(call.id), "And?")

    def test_continue_times_out(self):
        call = AnsweredCallFactory()
        with pytest.raises(services.ServiceError, match="Timed out waiting for transcript after 300ms"):
            services.continue_call(str(call.id), "Anyone?", timeout_ms=300)
        call.refresh_from_db()
        assert call.pending_turn_token == ""  # the waiter never leaks

    def test_status_shapes(self):
        call = AnsweredCallFactory(from_number="+15550000000", to_number="+15551112222")
        TranscriptEntryFactory = __import__("tests.factories", fromlist=["x"]).TranscriptEntryFactory
        TranscriptEntryFactory(call=call, speaker="user", text="hello")
        status = services.get_status(str(call.id))
        assert status["found"] is True
        shown = status["call"]
        assert {"callId", "providerCallId", "provider", "direction", "state", "from", "to", "startedAt",
                "answeredAt", "endedAt", "endReason", "transcript"} <= shown.keys()
        assert shown["transcript"][0] == {"speaker": "user", "text": "hello",
                                          "timestamp": shown["transcript"][0]["timestamp"], "isFinal": True}
        listing = services.get_status()
        assert listing["found"] is True and [c["callId"] for c in listing["calls"]] == [str(call.id)]


class TestReaper:
    def test_reaps_unanswered_calls_past_the_threshold_only(self, configure):
        configure(staleCallReaperSeconds=120)
        old = CallFactory(state="ringing", provider_call_id="mock-old")
        young = CallFactory(state="ringing", provider_call_id="mock-young")
        live = AnsweredCallFactory(state="speaking")
        Call.objects.filter(id__in=[old.id, live.id]).update(started_at=timezone.now() - timedelta(seconds=600))
        Call.objects.filter(id=live.id).update(answered_at=timezone.now() - timedelta(seconds=10))
        assert services.reap_stale_calls()["stale"] == 1
        states = dict(Call.objects.values_list("id", "state"))
        assert states[old.id] == "hangup-bot"
        assert states[young.id] == "ringing"
        assert states[live.id] == "speaking"  # a live conversation is never reaped for staleness

    def test_disabled_at_zero(self, configure):
        configure(staleCallReaperSeconds=0)
        old = CallFactory(state="ringing", provider_call_id="mock-z")
        Call.objects.filter(id=old.id).update(started_at=timezone.now() - timedelta(days=1))
        assert services.reap_stale_calls()["stale"] == 0

    def test_queued_call_never_placed_is_failed_not_dialed(self, configure):
        configure(staleCallReaperSeconds=60)
        queued = CallFactory(state="initiated")
        Call.objects.filter(id=queued.id).update(started_at=timezone.now() - timedelta(seconds=120))
        services.reap_stale_calls()
        queued.refresh_from_db()
        assert queued.state == "failed" and queued.provider_call_id is None

    def test_a_dial_the_carrier_never_confirmed_is_failed_not_redialed(self, configure):
        configure(staleCallReaperSeconds=60)
        lost = CallFactory(state="initiated", metadata={"dialClaimedAt": 1, "dialUnconfirmedAt": 2})
        Call.objects.filter(id=lost.id).update(started_at=timezone.now() - timedelta(seconds=120))
        assert services.reap_stale_calls()["stale"] == 1
        lost.refresh_from_db()
        assert lost.state == "failed" and "never confirmed the dial" in lost.last_error

    def test_queued_placement_past_its_deadline_is_failed_before_the_stale_threshold(self, configure):
        configure(staleCallReaperSeconds=600, outbound={"placementTimeoutSeconds": 30})
        late = CallFactory(state="initiated")
        fresh = CallFactory(state="initiated")
        Call.objects.filter(id=late.id).update(started_at=timezone.now() - timedelta(seconds=31))
        assert services.reap_stale_calls()["expiredPlacements"] == 1
        late.refresh_from_db()
        assert late.state == "failed" and late.last_error == services.PLACEMENT_EXPIRED.format(seconds=30)
        assert Call.objects.get(id=fresh.id).state == "initiated"

    def test_answered_call_past_max_duration_times_out(self, configure):
        configure(maxDurationSeconds=60)
        call = AnsweredCallFactory(state="listening")
        Call.objects.filter(id=call.id).update(answered_at=timezone.now() - timedelta(seconds=61))
        assert services.reap_stale_calls()["maxDuration"] == 1
        call.refresh_from_db()
        assert call.state == "timeout" and call.end_reason == "timeout"


def test_latency_report_uses_nearest_rank_percentiles():
    for ms in (100, 200, 300, 400, 1000):
        AnsweredCallFactory(metadata={"lastTurnLatencyMs": ms, "lastTurnListenWaitMs": ms // 2})
    report = services.latency_report(200)
    assert report["recordsScanned"] == 5
    assert report["turnLatency"] == {"count": 5, "minMs": 100, "maxMs": 1000, "avgMs": 400, "p50Ms": 300,
                                     "p95Ms": 1000}
    assert report["listenWait"]["p50Ms"] == 150


class TestRetention:
    def test_prunes_old_receipts_and_the_events_of_long_ended_calls_but_keeps_calls(self, configure):
        configure(retention={"webhookReceiptsHours": 24, "eventsDays": 30, "transcriptsDays": 60})
        long_ago = timezone.now() - timedelta(days=90)
        old_call = CallFactory(state="completed", provider_call_id="mock-old")
        Call.objects.filter(id=old_call.id).update(ended_at=long_ago)
        live = AnsweredCallFactory()
        for call, key in ((old_call, "old"), (live, "live")):
            CallEvent.objects.create(call=call, provider="mock", type="call.answered", dedupe_key=key)
            TranscriptEntry.objects.create(call=call, speaker="bot", text=f"line of {key}")
        CallEvent.objects.update(received_at=long_ago)
        WebhookReceipt.objects.create(request_key="old-receipt", provider="mock")
        WebhookReceipt.objects.create(request_key="new-receipt", provider="mock")
        WebhookReceipt.objects.filter(request_key="old-receipt").update(received_at=timezone.now() - timedelta(hours=25))

        pruned = services.prune_old_records()

        assert (pruned["receipts"], pruned["events"], pruned["transcripts"]) == (1, 1, 1)
        assert list(WebhookReceipt.objects.values_list("request_key", flat=True)) == ["new-receipt"]
        assert list(CallEvent.objects.values_list("dedupe_key", flat=True)) == ["live"]  # a live call keeps its ledger
        assert list(TranscriptEntry.objects.values_list("text", flat=True)) == ["line of live"]
        assert Call.objects.filter(id=old_call.id).exists()

    def test_transcripts_are_kept_for_good_by_default(self):
        call = CallFactory(state="completed", provider_call_id="mock-kept")
        Call.objects.filter(id=call.id).update(ended_at=timezone.now() - timedelta(days=3650))
        TranscriptEntry.objects.create(call=call, speaker="bot", text="kept")
        assert services.prune_old_records()["transcripts"] == 0
        assert TranscriptEntry.objects.filter(call=call).exists()


def test_an_ended_call_leaves_no_entry_in_the_in_process_update_map(django_capture_on_commit_callbacks):
    from calls.services import call_updates

    call = AnsweredCallFactory()
    services.speak(str(call.id), "Hello")
    assert call_updates.local_version(str(call.id)) > 0
    with django_capture_on_commit_callbacks(execute=True):
        services.end_call(str(call.id))
    assert str(call.id) not in call_updates._local_versions
