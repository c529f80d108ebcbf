"""``speak``, ``continue`` and ``dtmf`` on a call that is still being placed or ringing wait for it to
connect (up to ``ringTimeoutMs``) instead of failing, so ``call`` then ``continue`` typed straight
away works; and the text of one utterance is bounded."""

from __future__ import annotations

import threading
from contextlib import contextmanager

import pytest
from django.db import connections

from calls import services
from calls.models import Call, TranscriptEntry
from calls.services import turns
from providers.base import EventType, NormalizedEvent
from tests.conftest import wait_until
from tests.factories import AnsweredCallFactory, CallFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def waiting(monkeypatch) -> threading.Event:
    """Set once a turn is blocked waiting for its call to change (so the test acts only then)."""
    started = threading.Event()
    real = turns.call_update_waiter

    @contextmanager
    def spying(call_id: str):
        with real(call_id) as waiter:
            real_wait = waiter.wait

            def wait(timeout: float) -> None:
                started.set()
                real_wait(timeout)

            waiter.wait = wait
            yield waiter

    monkeypatch.setattr(turns, "call_update_waiter", spying)
    return started


def apply(call: Call, kind: EventType, key: str, **fields) -> None:
    services.process_events(services.carrier(), [NormalizedEvent(type=kind, dedupe_key=key, call_id=str(call.id), **fields)])


def in_thread(target) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = target()
        except services.ServiceError as exc:
            outcome["error"] = str(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def ringing_call(**fields) -> Call:
    return CallFactory(state="ringing", mode="conversation", provider_call_id="mock-ringing",
                       initial_message_delivered=True, **fields)


def test_speak_on_a_ringing_call_waits_for_the_answer(waiting):
    call = ringing_call()
    thread, outcome = in_thread(lambda: services.speak(str(call.id), "Are you there?"))
    assert waiting.wait(30), "speak did not wait for the call"
    assert not TranscriptEntry.objects.filter(call=call).exists()  # nothing said into a ringing line
    apply(call, EventType.ANSWERED, "answer-1")
    thread.join(30)
    assert outcome == {"result": None}
    assert list(TranscriptEntry.objects.filter(call=call).values_list("speaker", "text")) == [("bot", "Are you there?")]


def test_continue_typed_while_the_callee_rings_returns_the_reply(waiting):
    call = ringing_call()
    thread, outcome = in_thread(lambda: services.continue_call(str(call.id), "Does five work?", timeout_ms=20000))
    assert waiting.wait(30)
    apply(call, EventType.ANSWERED, "answer-1")
    token = wait_until(lambda: Call.objects.get(id=call.id).pending_turn_token)
    apply(call, EventType.SPEECH, "reply-1", transcript="Five is fine.", turn_token=token)
    thread.join(30)
    assert outcome == {"result": "Five is fine."}


def test_dtmf_on_a_call_still_being_placed_waits_for_it(waiting):
    # No carrier id yet. A conversation: a notify call would speak on answer and hang up after its
    # (eagerly run) notify delay, which can end the call before the waiting DTMF is sent.
    call = CallFactory(state="initiated", mode="conversation")
    thread, outcome = in_thread(lambda: services.send_dtmf(str(call.id), "12#"))
    assert waiting.wait(30)
    Call.objects.filter(id=call.id).update(provider_call_id="mock-placed")
    apply(call, EventType.ANSWERED, "answer-1", provider_call_id="mock-placed")
    thread.join(30)
    assert outcome == {"result": None}


def test_a_call_that_ends_while_ringing_reports_that_it_ended(waiting):
    call = ringing_call()
    thread, outcome = in_thread(lambda: services.speak(str(call.id), "Hello?"))
    assert waiting.wait(30)
    apply(call, EventType.ENDED, "end-1", reason="no-answer")
    thread.join(30)
    assert outcome == {"error": services.CALL_HAS_ENDED}


def test_a_call_that_never_connects_is_not_connected_after_the_ring_timeout(configure):
    configure(ringTimeoutMs=300)
    call = ringing_call()
    with pytest.raises(services.ServiceError, match=services.CALL_NOT_CONNECTED):
        services.continue_call(str(call.id), "Hello?")
    assert Call.objects.get(id=call.id).pending_turn_token == ""  # no turn was opened


def test_a_connected_call_is_spoken_to_without_waiting(monkeypatch):
    monkeypatch.setattr(turns, "call_update_waiter", None)  # would raise if a wait were attempted
    call = AnsweredCallFactory()
    services.speak(str(call.id), "Right away.")
    assert TranscriptEntry.objects.filter(call=call, text="Right away.").exists()


@pytest.mark.parametrize("verb", ["speak", "continue_call"])
def test_text_longer_than_one_utterance_is_refused_and_changes_nothing(verb):
    call = AnsweredCallFactory()
    too_long = "x" * (services.MAX_SPOKEN_TEXT_CHARS + 1)
    with pytest.raises(services.ServiceError) as err:
        getattr(services, verb)(str(call.id), too_long)
    assert str(err.value) == services.TEXT_TOO_LONG.format(limit=services.MAX_SPOKEN_TEXT_CHARS)
    assert not TranscriptEntry.objects.filter(call=call).exists()
    assert Call.objects.get(id=call.id).pending_turn_token == ""


def test_the_longest_allowed_text_is_spoken():
    call = AnsweredCallFactory(mode="notify")
    services.speak(str(call.id), "y" * services.MAX_SPOKEN_TEXT_CHARS)
    assert TranscriptEntry.objects.get(call=call).text == "y" * services.MAX_SPOKEN_TEXT_CHARS
