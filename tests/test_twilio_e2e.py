"""Whole Twilio calls: the CLI (a child process) places and steers calls, the local fake Twilio plays
the carrier and the callee, and a real daphne behind the fake's "tunnel" answers the webhooks.

Every webhook is signed over the public URL (https://voice.example.test/...) and arrives with that
public Host, as it would through ngrok or a reverse proxy."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from calls.models import Call, CallEvent, RejectedInboundCall, TranscriptEntry
from tests.conftest import (
    REPO,
    RunningServer,
    child_env,
    free_port,
    run_cli,
    wait_for_port,
    wait_until,
    write_config,
)
from tests.fakes.twilio import (
    FROM_NUMBER,
    PUBLIC_ORIGIN,
    PUBLIC_URL,
    Callee,
    FakeCall,
    FakeTwilio,
    running_fake_twilio,
    twilio_config,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

EAGER = {"VOICECALL_CELERY_EAGER": "1"}
CALLEE = "+15550002000"
FRIEND = "+15557770000"  # on the inbound allowlist
STRANGER = "+15559990000"
GREETING = "Hi, you reached the booking line."


@dataclass
class Stack:
    fake: FakeTwilio
    server: RunningServer
    config_path: Path

    def cli(self, *args: str) -> dict:
        result = run_cli(self.config_path, *args, "--json", extra_env=EAGER)
        assert result.returncode == 0, result.stderr + result.stdout
        return json.loads(result.stdout)

    def cli_in_background(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "manage.py", "voicecall", *args, "--json"], cwd=REPO,
            env=child_env(self.config_path, EAGER), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def start_server(self) -> None:
        port = self.server.port if self.server else free_port()
        log = self.config_path.parent / f"daphne-{port}-{len(self.fake.deliveries)}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "voicecall_site.asgi:application"],
            cwd=REPO, env=child_env(self.config_path, EAGER), stdout=log.open("w"), stderr=subprocess.STDOUT,
        )
        self.server = RunningServer(proc, port, log)
        wait_for_port(port, proc=proc)
        self.fake.tunnel[PUBLIC_ORIGIN] = self.server.base_url

    def restart_server(self) -> None:
        self.server.stop()
        self.start_server()


@pytest.fixture(scope="module")
def module_stack(django_db_setup, tmp_path_factory) -> Iterator[Stack]:
    with running_fake_twilio() as fake:
        tmp = tmp_path_factory.mktemp("twilio-e2e")
        port = free_port()
        document = twilio_config(
            fake,
            serve={"port": port},
            outbound={"notifyHangupDelaySec": 1},
            inboundPolicy="allowlist",
            allowFrom=[FRIEND],
            inboundGreeting=GREETING,
        )
        stack = Stack(fake=fake, server=None, config_path=write_config(tmp, document))  # type: ignore[arg-type]
        stack.start_server()
        yield stack
        stack.server.stop()


@pytest.fixture
def stack(module_stack: Stack) -> Iterator[Stack]:
    module_stack.fake.callee = Callee()
    module_stack.fake.calls.clear()
    yield module_stack
    for call in list(module_stack.fake.calls.values()):
        call.control.put(("hangup",))
        call.ended.wait(10)


def transcript(call_id: str) -> list[tuple[str, str]]:
    return list(TranscriptEntry.objects.filter(call_id=call_id).values_list("speaker", "text"))


def gather_token(url: str) -> str | None:
    return parse_qs(urlsplit(url).query).get("turnToken", [None])[0]


def assert_all_webhooks_accepted(fake: FakeTwilio, call: FakeCall) -> None:
    statuses = [(d.kind, d.status) for d in fake.deliveries_for(call.sid)]
    assert statuses and all(status == 200 for _, status in statuses), statuses


# --- outbound ------------------------------------------------------------------------------------


def test_notify_call_from_the_cli_is_heard_in_full_then_twilio_hangs_up(stack):
    call_id = stack.cli("call", "--to", CALLEE, "--message", "Your table is ready", "--mode", "notify")["callId"]
    fake_call = stack.fake.only_call()
    stack.fake.wait_for(fake_call.ended.is_set, what="Twilio to end the call")
    call = wait_until(lambda: Call.objects.filter(id=call_id, state="completed").first())

    (create,) = stack.fake.creates()
    assert create.get("Url") == f"{PUBLIC_URL}?callId={call_id}"
    assert create.get("StatusCallback") == f"{PUBLIC_URL}?callId={call_id}&type=status"
    assert (create.get("To"), create.get("From"), create.get("Timeout")) == (CALLEE, FROM_NUMBER, "30")
    assert fake_call.spoken == ["Your table is ready"]
    assert fake_call.pauses == [1] and fake_call.ended_by == "twiml"  # <Say>, <Pause>, then Twilio's <Hangup/>
    assert stack.fake.updates() == []  # never a REST hang-up while the message plays
    assert (call.end_reason, call.provider_call_id, call.mode) == ("completed", fake_call.sid, "notify")
    assert transcript(call_id) == [("bot", "Your table is ready")]
    types = set(CallEvent.objects.filter(call_id=call_id).values_list("type", flat=True))
    assert {"call.initiated", "call.ringing", "call.answered", "call.ended"} <= types
    assert_all_webhooks_accepted(stack.fake, fake_call)


def test_conversation_from_the_cli_greets_listens_continues_and_ends(stack):
    stack.fake.callee.replies = ["Hello? Who is this?", "Noon works for me."]
    call_id = stack.cli("call", "--to", CALLEE, "--message", "Hi, this is the restaurant.")["callId"]
    fake_call = stack.fake.only_call()
    wait_until(lambda: TranscriptEntry.objects.filter(call_id=call_id, speaker="user").exists())
    stack.fake.wait_for(fake_call.listening.is_set, what="the keep-listening <Gather>")

    answer = stack.cli("continue", "--call-id", call_id, "--message", "When would you like to come?")
    assert answer == {"success": True, "transcript": "Noon works for me."}
    # (per speaker: the fake "speaks" instantly, so a reply may be stored before the CLI stores its line)
    lines = transcript(call_id)
    assert [t for s, t in lines if s == "bot"] == ["Hi, this is the restaurant.", "When would you like to come?"]
    assert [t for s, t in lines if s == "user"] == ["Hello? Who is this?", "Noon works for me."]
    assert fake_call.spoken == ["Hi, this is the restaurant.", "When would you like to come?"]
    reply = TranscriptEntry.objects.get(call_id=call_id, text="Noon works for me.")
    assert reply.turn_token and reply.turn_token in {gather_token(a) for a in fake_call.gathers}
    call = Call.objects.get(id=call_id)
    assert call.metadata["turnCount"] == 1 and call.pending_turn_token == ""

    assert stack.cli("end", "--call-id", call_id) == {"success": True}
    assert stack.fake.updates(fake_call.sid)[-1].get("Status") == "completed"
    stack.fake.wait_for(fake_call.ended.is_set, what="the hang-up")
    wait_until(lambda: stack.fake.deliveries_for(fake_call.sid, "status")[-1].status == 200)
    call.refresh_from_db()
    assert (call.state, call.end_reason) == ("hangup-bot", "hangup-bot")
    assert_all_webhooks_accepted(stack.fake, fake_call)


def test_stale_or_missing_turn_token_cannot_answer_a_continue(stack):
    stack.fake.callee.replies = ["Yes?", "First answer."]
    call_id = stack.cli("call", "--to", CALLEE, "--message", "Hello.")["callId"]
    fake_call = stack.fake.only_call()
    wait_until(lambda: TranscriptEntry.objects.filter(call_id=call_id, text="Yes?").exists())
    stack.fake.wait_for(fake_call.listening.is_set, what="the keep-listening <Gather>")
    untokened_action = fake_call.gathers[0]  # the greeting's <Gather>: no turn token
    assert gather_token(untokened_action) is None
    assert stack.cli("continue", "--call-id", call_id, "--message", "Question one?")["transcript"] == "First answer."
    stale_action = next(a for a in fake_call.gathers if gather_token(a))

    # Turn two: the callee stays silent until we let it speak.
    stack.fake.wait_for(fake_call.listening.is_set, what="listening again")
    pending = stack.cli_in_background("continue", "--call-id", call_id, "--message", "Question two?")
    try:
        call = wait_until(lambda: Call.objects.filter(id=call_id).exclude(pending_turn_token="").first())
        stack.fake.wait_for(lambda: fake_call.listening.is_set() and gather_token(fake_call.gathers[-1])
                            == call.pending_turn_token, what="the turn-two <Gather>")
        user_lines = TranscriptEntry.objects.filter(call_id=call_id, speaker="user")
        user_lines_before = user_lines.count()
        for action, text in ((stale_action, "Stale answer."), (untokened_action, "Untokened answer.")):
            response = stack.fake.post(action, stack.fake.voice_params(fake_call, SpeechResult=text, Confidence="0.9"))
            assert response.status_code == 200
            assert f"turnToken={call.pending_turn_token}" in response.text  # still listening for this turn
        assert user_lines.count() == user_lines_before
        assert Call.objects.get(id=call_id).pending_turn_token == call.pending_turn_token

        stack.fake.say(fake_call.sid, "Second answer.")
        out, err = pending.communicate(timeout=60)
    finally:
        if pending.poll() is None:
            pending.kill()
    assert pending.returncode == 0, err
    assert json.loads(out) == {"success": True, "transcript": "Second answer."}
    assert [t for s, t in transcript(call_id) if s == "user"] == ["Yes?", "First answer.", "Second answer."]


# --- inbound -------------------------------------------------------------------------------------


def test_allow_listed_inbound_caller_hears_the_greeting_and_is_listened_to(stack):
    stack.fake.callee.replies = ["I'd like to book a table."]
    fake_call = stack.fake.place_inbound_call(from_=FRIEND, to=FROM_NUMBER, url=PUBLIC_URL)
    call = wait_until(lambda: Call.objects.filter(provider_call_id=fake_call.sid,
                                                  transcript__speaker="user").first())
    assert (call.direction, call.mode, call.state) == ("inbound", "conversation", "listening")
    assert (call.from_number, call.to_number) == (FRIEND, FROM_NUMBER)
    assert transcript(str(call.id)) == [("bot", GREETING), ("user", "I'd like to book a table.")]
    assert fake_call.spoken == [GREETING]
    assert all(parse_qs(urlsplit(a).query)["callId"] == [str(call.id)] for a in fake_call.gathers)
    assert list(CallEvent.objects.filter(call=call).values_list("type", flat=True))[:2] == [
        "call.initiated", "call.answered"]
    assert_all_webhooks_accepted(stack.fake, fake_call)


def test_rejected_inbound_caller_is_rejected_and_hung_up_once_even_when_twilio_retries(stack):
    fake_call = stack.fake.place_inbound_call(from_=STRANGER, to=FROM_NUMBER, url=PUBLIC_URL)
    stack.fake.wait_for(fake_call.ended.is_set, what="the rejected call to end")
    (first,) = stack.fake.deliveries_for(fake_call.sid, "voice")
    assert first.status == 200 and "<Reject" in fake_call.documents[0]
    assert [u.get("Status") for u in stack.fake.updates(fake_call.sid)] == ["completed"]

    retry = stack.fake.post(first.url, first.params)  # Twilio retries the identical signed request
    assert retry.status_code == 200 and retry.text == first.body
    assert len(stack.fake.updates(fake_call.sid)) == 1
    assert not Call.objects.filter(provider_call_id=fake_call.sid).exists()
    rejected = RejectedInboundCall.objects.get(provider_call_id=fake_call.sid)
    assert rejected.hangup_attempted and rejected.from_number == STRANGER


def test_replay_after_a_server_restart_is_acknowledged_without_side_effects(stack):
    stack.fake.callee.replies = ["Table for two, please."]
    fake_call = stack.fake.place_inbound_call(from_=FRIEND, to=FROM_NUMBER, url=PUBLIC_URL)
    call = wait_until(lambda: Call.objects.filter(provider_call_id=fake_call.sid,
                                                  transcript__speaker="user").first())
    # The row commits before the fake has read the webhook's answer: wait for the delivery itself.
    (speech,) = wait_until(lambda: stack.fake.deliveries_for(fake_call.sid, "gather"))
    before = (transcript(str(call.id)), CallEvent.objects.count(), Call.objects.get(id=call.id).state)

    stack.restart_server()  # a new process: only the database remembers the request
    replay = stack.fake.post(speech.url, speech.params)
    assert replay.status_code == 200 and replay.text == speech.body
    assert (transcript(str(call.id)), CallEvent.objects.count(), Call.objects.get(id=call.id).state) == before
