"""SIGKILL the server in the middle of live Telnyx calls, restart it, restore the calls.

A real daphne (sharing the PostgreSQL test database) serves the fake Telnyx's signed webhooks. Mid
conversation the process is killed with SIGKILL — no shutdown code runs. While it is down the
carrier keeps going: one callee hangs up, another speaks, and those deliveries fail. Then daphne is
started again on the same port and ``services.restore_calls()`` re-checks every live call with the
carrier (fact sheet §2.7, Telnyx ``GET /v2/calls/{id}`` → ``is_alive``).

What must hold: the ledger and transcripts written before the kill are all still there; each live
call is resumed, closed or timed out as the carrier and the clock say, and a dial that was cut off is
failed, not redialed; the carrier's retries of the deliveries that failed during the outage apply
normally; a retry of an event applied before the kill is still a no-op; the resumed conversation
carries on (a ``continue`` turn after the restart gets the caller's reply) and is not greeted twice.
"""

from __future__ import annotations

import signal
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from calls import services
from calls.models import Call, CallEvent, TranscriptEntry
from tests.conftest import RunningServer, free_port, wait_until
from tests.factories import CallFactory
from tests.fakes.telnyx import FakeTelnyx
from tests.test_telnyx_calls import CALLEE, OUR_NUMBER, WEBHOOK_PATH, telnyx_document

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

MAX_DURATION_SECONDS = 300
WAIT = 30.0


def _answered_and_heard(call_id) -> Call | None:
    """The call once the greeting was spoken and the callee's first line came back."""
    return Call.objects.filter(id=call_id, transcript__speaker="user").first()


def _ledger_snapshot() -> tuple[set[str], list[tuple]]:
    events = set(CallEvent.objects.values_list("dedupe_key", flat=True))
    transcript = list(TranscriptEntry.objects.order_by("id").values_list("id", "call_id", "speaker", "text", "turn_token"))
    return events, transcript


def _someone_waits_for_our_row_lock() -> bool:
    with connection.cursor() as cursor:
        # Someone waits for a lock this connection holds (pg_locks is live; pg_stat_activity would be
        # a snapshot frozen for the duration of this transaction).
        cursor.execute("SELECT count(*) FROM pg_locks WHERE NOT granted AND pg_backend_pid() = ANY(pg_blocking_pids(pid))")
        return cursor.fetchone()[0] > 0


def _kill_during_a_webhook(server: RunningServer, deliver) -> None:
    """SIGKILL ``server`` while the webhook ``deliver()`` triggers is mid-transaction (PostgreSQL:
    blocked on the call row this test locks). On SQLite, which has no row locks to wait on, the
    server is killed first and the delivery simply fails."""
    if connection.vendor != "postgresql":
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=10)
        deliver()
        return
    with transaction.atomic():
        list(Call.objects.select_for_update().all())
        deliver()
        wait_until(_someone_waits_for_our_row_lock, timeout=WAIT)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=10)


def test_killed_server_restarts_and_restored_calls_resume_close_or_time_out_without_losing_the_ledger(
    start_daphne, configure
):
    with FakeTelnyx.running() as fake:
        port = free_port()
        document = telnyx_document(fake, serve={"port": port}, maxConcurrentCalls=5,
                                   maxDurationSeconds=MAX_DURATION_SECONDS)
        first = start_daphne(document, port=port, extra_env={"VOICECALL_CELERY_EAGER": "1"})
        configure(document)
        fake.webhook_url = f"{first.base_url}{WEBHOOK_PATH}"

        # Three live conversations; A is mid-conversation (one continue turn done).
        live = {}
        for name in ("A", "B", "C"):
            call = services.initiate_call(to=CALLEE, message=f"Hello {name}, this is the clinic.", mode="conversation")
            live[name] = fake.wait_for(lambda call=call: _answered_and_heard(call.id), timeout=WAIT)
        a, b, c = live["A"], live["B"], live["C"]
        assert services.continue_call(str(a.id), "When can you come in?", timeout_ms=20000) == (
            "Tomorrow at three works for me.")
        # D: a dial that began (claim committed) but whose carrier id was never stored.
        d = CallFactory(provider="telnyx", from_number=OUR_NUMBER, to_number=CALLEE,
                        metadata={"dialClaimedAt": 1, "mode": "notify"})
        fake.wait_for(fake.idle, timeout=WAIT)
        assert all(delivery.status == 200 for delivery in fake.deliveries)
        events_before, transcript_before = _ledger_snapshot()
        answered_a = fake.deliveries_of("call.answered", a.provider_call_id)[0]

        # A's caller speaks, and daphne is SIGKILLed while that webhook is inside its transaction
        # (ledger row inserted, waiting for the call's row lock that this test holds): no shutdown
        # code runs, the half-done transaction dies with the process.
        _kill_during_a_webhook(first, lambda: fake.emit(fake.calls[a.provider_call_id], "call.transcription",
                                                        transcription_data={"transcript": "Hello? Are you still there?",
                                                                            "is_final": True, "confidence": 0.9}))
        # The carrier goes on while we are down: B's callee hangs up; that delivery fails too.
        leg_b = fake.calls[b.provider_call_id]
        leg_b.alive, leg_b.state = False, "hangup"
        fake.emit(leg_b, "call.hangup", hangup_cause="normal_clearing", hangup_source="callee")
        fake.wait_for(fake.idle, timeout=WAIT)
        missed = [delivery for delivery in fake.deliveries if delivery.status is None]
        assert [m.event_type for m in missed] == ["call.transcription", "call.hangup"]
        assert not CallEvent.objects.filter(dedupe_key=f"telnyx:evt:{missed[0].event_id}").exists()
        # C has now run longer than maxDurationSeconds.
        Call.objects.filter(id=c.id).update(started_at=timezone.now() - timedelta(seconds=MAX_DURATION_SECONDS + 1))

        start_daphne(document, port=port, extra_env={"VOICECALL_CELERY_EAGER": "1"})
        summary = services.restore_calls()

        assert summary == {"checked": 4, "resumed": 1, "timedOut": 1, "closed": 1, "failed": 1}
        states = {name: Call.objects.get(id=call.id) for name, call in (("A", a), ("B", b), ("C", c), ("D", d))}
        assert states["A"].state == "listening" and states["A"].ended_at is None
        assert (states["B"].state, states["B"].end_reason) == ("completed", "completed")
        assert (states["C"].state, states["C"].end_reason) == ("timeout", "timeout")
        assert (states["D"].state, states["D"].last_error) == ("failed", services.PLACEMENT_INTERRUPTED)
        assert len(fake.commands_for("hangup", c.provider_call_id)) == 1  # the timed-out leg was hung up
        assert fake.commands_for("hangup", a.provider_call_id) == []
        assert len(fake.commands_for("dial")) == 3  # D was not redialed

        # Nothing written before the kill is lost.
        events_after, transcript_after = _ledger_snapshot()
        assert events_before <= events_after
        assert transcript_after[: len(transcript_before)] == transcript_before

        # Telnyx retries what failed during the outage: applied normally now.
        for delivery in missed:
            assert fake.redeliver(delivery).status_code == 200
        assert list(Call.objects.get(id=a.id).transcript.filter(speaker="user").order_by("id")
                    .values_list("text", flat=True))[-1] == "Hello? Are you still there?"
        assert CallEvent.objects.filter(dedupe_key=f"telnyx:evt:{missed[1].event_id}", call=b).count() == 1
        assert CallEvent.objects.filter(dedupe_key=f"telnyx:evt:{missed[0].event_id}", call=a).count() == 1
        assert Call.objects.get(id=b.id).end_reason == "completed"

        # A retry (and a byte-for-byte replay) of an event applied before the kill changes nothing.
        answered_key = f"telnyx:evt:{answered_a.event_id}"
        before_retry = (CallEvent.objects.count(), TranscriptEntry.objects.count(), len(fake.commands))
        assert fake.redeliver(answered_a).status_code == 200
        assert fake.replay(answered_a).status_code == 200
        assert (CallEvent.objects.count(), TranscriptEntry.objects.count(), len(fake.commands)) == before_retry
        assert CallEvent.objects.filter(dedupe_key=answered_key).count() == 1

        # The resumed conversation goes on through the new process, without a second greeting.
        assert services.continue_call(str(a.id), "Anything else?", timeout_ms=20000) == "Thanks, goodbye."
        spoken = [command.body["payload"] for command in fake.commands_for("speak", a.provider_call_id)]
        assert spoken == ["Hello A, this is the clinic.", "When can you come in?", "Anything else?"]
        services.end_call(str(a.id))
        assert Call.objects.get(id=a.id).state == "hangup-bot"
        fake.wait_for(fake.idle, timeout=WAIT)
        assert all(d.status == 200 for d in fake.deliveries if d not in missed)
