"""Realtime voice end to end on all three carriers: a real daphne bridges each call's media stream to
a fake OpenAI Realtime server speaking the GA protocol (tests/fakes/openai_realtime.py); the carrier
side is each carrier's stream fake, which plays the audio back in real time and answers marks only
when it has played, as all three carriers do.

Assertions are about frames, events and records, never timing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pydantic import TypeAdapter

from calls import services
from calls.config import ConfigError, config_from_dict
from calls.media import control as streams
from calls.models import Call, CallEvent, TranscriptEntry
from tests.conftest import RunningServer, free_port, wait_until
from tests.fakes.openai_realtime import FakeRealtime, level_byte, running_fake_realtime
from tests.fakes.twilio import twilio_config
from tests.fakes.twilio_media import TwilioMediaStream, dominant_byte
from tests.media_support import (
    STREAM_PATH,
    carrier_section,
    in_thread,
    launch_carrier_daphne,
    live_call,
    redis_settings,
    running_carrier,
    wait_for_other_sessions_to_settle,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

OUR_NUMBER = "+14155550100"
CALLEE = "+14155550199"
GREETING = "Hello, this is the dentist calling"
IDLE_MS = 4000


@dataclass
class RealtimeEnv:
    carrier: str
    fake: object
    model: FakeRealtime
    server: RunningServer
    document: dict

    def start_call(self, greeting: str = GREETING, *, attached: bool = True) -> tuple[Call, object]:
        """An answered conversation call whose carrier has opened its media stream (and, unless
        ``attached`` is False, whose stream our server has attached)."""
        if self.carrier == "twilio":
            call = live_call(self.fake, mode="conversation", initial_message=greeting)
            stream = TwilioMediaStream(f"ws://127.0.0.1:{self.server.port}{STREAM_PATH}").connect()
            stream.send_connected()
            stream.send_start(call.provider_call_id, streams.mint_stream_token(call))
        else:
            call = services.initiate_call(to=CALLEE, message=greeting, mode="conversation")
            fake_call = wait_until(lambda: self.fake.calls.get(Call.objects.get(id=call.id).provider_call_id or "-"))
            stream = wait_until(lambda: fake_call.media, what="the carrier's media stream")
        if attached:
            wait_until(lambda: streams.has_live_stream(str(call.id)), what="the stream attached")
        call.refresh_from_db()
        return call, stream

    def heard(self, stream, text: str) -> list[bytes]:
        """Frames of ``text`` the caller has heard: every carrier plays from its queue in real time."""
        level = level_byte(text)
        frames = stream.played_frames()
        return [f for f in frames if dominant_byte(f) == level]

    def hung_up(self, call: Call) -> bool:
        if self.carrier == "twilio":
            return any(r.path.endswith(f"/Calls/{call.provider_call_id}.json") and r.get("Status") == "completed"
                       for r in list(self.fake.rest_requests))
        if self.carrier == "telnyx":
            return bool(self.fake.commands_for("hangup", call.provider_call_id))
        return bool(self.fake.rest_of("hangup", call.provider_call_id))


def document_for(carrier: str, fake, model: FakeRealtime, port: int) -> dict:
    common = {
        "maxConcurrentCalls": 20,
        "realtime": model.realtime_config(idleHangupMs=IDLE_MS),
        "streaming": {"streamPath": STREAM_PATH},
    }
    if carrier == "twilio":
        return twilio_config(fake, **common)
    return {"provider": carrier, "fromNumber": OUR_NUMBER, "publicUrl": f"http://127.0.0.1:{port}/voice/webhook",
            **common, **carrier_section(carrier, fake)}


@pytest.fixture(scope="module", params=["twilio", "telnyx", "plivo"])
def realtime_env(request, django_db_setup, tmp_path_factory) -> Iterator[RealtimeEnv]:
    with running_carrier(request.param) as fake, running_fake_realtime() as model:
        port = free_port()
        document = document_for(request.param, fake, model, port)
        server = launch_carrier_daphne(request.param, fake, tmp_path_factory.mktemp(f"realtime-{request.param}"),
                                       document, port)
        try:
            yield RealtimeEnv(request.param, fake, model, server, document)
        finally:
            server.stop()


@pytest.fixture
def env(realtime_env, configure, settings) -> Iterator[RealtimeEnv]:
    realtime_env.model.reset()
    redis_settings(settings)
    configure({**realtime_env.document, "serve": {"port": realtime_env.server.port}})
    yield realtime_env
    wait_for_other_sessions_to_settle()


def frames_of(stream, text: str) -> list[bytes]:
    level = level_byte(text)
    return [f for f in stream.media_frames() if dominant_byte(f) == level]


def wait_played(call: Call, count: int = 1) -> None:
    """The carrier confirmed ``count`` whole lines played (their final marks reached the consumer)."""
    wait_until(lambda: CallEvent.objects.filter(call=call, type="call.spoken").count() >= count,
               what=f"{count} line(s) confirmed played")


def transcript(call: Call) -> list[tuple[str, str]]:
    return list(TranscriptEntry.objects.filter(call=call).order_by("id").values_list("speaker", "text"))


# --------------------------------------------------------------------------------------------------
# Speaking and listening through the model
# --------------------------------------------------------------------------------------------------


def test_greeting_and_turns_go_through_the_model_and_land_in_the_transcript(env):
    env.model.script.extend(["I can come at five", "Is parking free?"])
    env.model.replies.append("Great, see you at five.")
    call, stream = env.start_call()

    # The greeting is the model saying our text word for word, its mu-law straight to the caller.
    stream.wait_for(lambda: len(frames_of(stream, GREETING)) >= 30, what="the greeting's audio")
    wait_played(call)
    assert env.model.said == [GREETING]
    assert all(len(frame) == 160 for frame in stream.media_frames())

    # The caller talks (200 ms: one turn); the model hears it, answers by itself; both lines recorded.
    stream.send_media(10)
    stream.wait_for(lambda: len(frames_of(stream, "Great, see you at five.")) >= 30, what="the model's answer")
    wait_until(lambda: len(transcript(call)) == 3, what="three transcript lines")
    assert transcript(call) == [("bot", GREETING), ("user", "I can come at five"), ("bot", "Great, see you at five.")]
    answer = TranscriptEntry.objects.get(call=call, text="Great, see you at five.")
    assert answer.latency_ms is not None and answer.interrupted is False  # speech end -> first frame out

    # continue: the model says our prompt; the caller's next final transcript is the result.
    turn = in_thread(services.continue_call, str(call.id), "Anything else before Tuesday?")
    wait_until(lambda: "Anything else before Tuesday?" in env.model.said, what="the prompt sent to the model")
    wait_played(call, 3)
    stream.send_media(10)
    turn["thread"].join(30)
    assert turn.get("error") is None and turn["value"] == "Is parking free?"

    # The session as the GA protocol wants it, and the caller's mu-law forwarded untouched.
    (connection,) = [c for c in env.model.connections if c.session.get("type")]
    assert connection.query == {"model": "gpt-realtime"} and "OpenAI-Beta" not in connection.headers
    audio = connection.session["audio"]
    assert audio["input"]["format"] == {"type": "audio/pcmu"} and audio["output"]["format"] == {"type": "audio/pcmu"}
    assert audio["input"]["turn_detection"]["type"] == "server_vad" and audio["input"]["transcription"]
    assert [tool["name"] for tool in connection.session["tools"]] == ["end_call"]
    assert connection.audio_bytes >= 20 * 160
    assert env.model.refused_creates == 0  # never asked for a response while one was active
    stream.close()


def test_a_line_asked_for_as_the_model_begins_its_own_answer_waits_for_it(env):
    """The API refuses a response.create while a response is active, and the model may have begun
    answering the caller before we know it: our line is asked for again after that answer, and each
    response is matched to its line by its metadata, not by order."""
    env.model.script.append("What are your hours?")
    env.model.replies.append("We open at nine.")
    call, stream = env.start_call()
    stream.wait_for(lambda: len(frames_of(stream, GREETING)) >= 30, what="the greeting")
    wait_played(call)
    env.model.announce_after = 0.5
    stream.send_media(10)  # the caller's question: the model begins its answer, announced 0.5 s later
    wait_until(lambda: TranscriptEntry.objects.filter(call=call, speaker="user").exists(), what="the question")
    services.speak(str(call.id), "One moment please.")
    wait_until(lambda: "One moment please." in env.model.said, what="our line said after all")
    stream.wait_for(lambda: len(frames_of(stream, "One moment please.")) >= 25, what="our line's audio")
    assert env.model.refused_creates == 1
    levels = [dominant_byte(f) for f in stream.media_frames()]
    answer, ours = level_byte("We open at nine."), level_byte("One moment please.")
    assert levels.count(answer) >= 25 and max(i for i, v in enumerate(levels) if v == answer) < levels.index(ours)
    wait_until(lambda: len(transcript(call)) == 4, what="four lines")
    # Our line was recorded when asked for; the model's answer when it had played -- each its own text.
    assert transcript(call) == [("bot", GREETING), ("user", "What are your hours?"), ("bot", "One moment please."),
                                ("bot", "We open at nine.")]
    assert not TranscriptEntry.objects.filter(call=call, interrupted=True).exists()
    stream.close()


def test_barge_in_clears_the_carrier_truncates_at_what_was_heard_and_keeps_the_heard_part(env):
    call, stream = env.start_call()
    stream.wait_for(lambda: len(frames_of(stream, GREETING)) >= 30, what="the greeting")
    wait_played(call)
    long_text = "Let me read you all of our opening hours for every day of the coming week"
    env.model.reply_ms_for[long_text] = 6000
    responses_done = len(env.model.sent_of("response.done"))
    services.speak(str(call.id), long_text)
    stream.wait_for(lambda: len(env.heard(stream, long_text)) >= 25, what="the caller hearing the long line")
    # The model finished generating long ago (ten times real time), as a real one does: the cut is
    # about what the caller heard, not about the response still being generated.
    wait_until(lambda: len(env.model.sent_of("response.done")) > responses_done, what="the response done")

    env.model.barge_in()
    stream.wait_for(lambda: stream.clears() == 1, what="the carrier clear")
    (truncation,) = wait_until(lambda: env.model.received_of("conversation.item.truncate"))
    heard_ms = truncation["audio_end_ms"]
    assert heard_ms % 100 == 0 and 0 < heard_ms < 6000  # progress marks every 100 ms; cut well before the end
    assert heard_ms <= len(env.heard(stream, long_text)) * 20  # never more than the caller heard
    entry = wait_until(lambda: TranscriptEntry.objects.filter(call=call, interrupted=True).first())
    assert entry.speaker == "bot" and entry.text and long_text.startswith(entry.text) and entry.text != long_text
    stream.close()


def test_the_end_call_tool_says_goodbye_then_hangs_up_through_the_carrier(env):
    env.model.script.append("That's all, bye")
    env.model.hang_up_on.add("That's all, bye")
    call, stream = env.start_call()
    stream.wait_for(lambda: len(frames_of(stream, GREETING)) >= 30, what="the greeting")
    wait_played(call)
    stream.send_media(10)
    ended = wait_until(lambda: Call.objects.filter(id=call.id, state="hangup-bot").first(), what="the call ended")
    assert len(frames_of(stream, "Goodbye!")) >= 25  # the goodbye went out before the hang-up
    wait_until(lambda: env.hung_up(ended), what="the carrier hang-up")
    assert env.model.tool_outputs == []  # nothing refused
    assert stream.wait_closed() is not None


def test_a_refused_hang_up_goes_back_to_the_model_as_the_tools_result(env):
    env.model.script.append("Bye for now")
    env.model.hang_up_on.add("Bye for now")
    call, stream = env.start_call()
    stream.wait_for(lambda: len(frames_of(stream, GREETING)) >= 30, what="the greeting")
    wait_played(call)
    refusal = {"twilio": lambda: env.fake.update_failures.append(
                   (400, {"code": 21220, "message": "Call is not in-progress", "status": 400})),
               "telnyx": lambda: env.fake.fail_next("hangup", 403, [{"code": "10010", "title": "refused"}]),
               "plivo": lambda: env.fake.fail_next("hangup", 400, "refused")}[env.carrier]
    refusal()
    creates_before = len(env.model.received_of("response.create"))
    stream.send_media(10)
    (output,) = wait_until(lambda: env.model.tool_outputs, what="the tool's result")
    assert "error" in output["output"] and env.model.api_key not in output["output"]
    # The model is asked to go on (and speak the refusal); the call stays up.
    wait_until(lambda: len(env.model.received_of("response.create")) > creates_before)
    assert not Call.objects.get(id=call.id).is_terminal
    stream.close()


def test_the_provider_closing_the_session_ends_the_call(env):
    call, stream = env.start_call()
    stream.wait_for(lambda: len(frames_of(stream, GREETING)) >= 30, what="the greeting")
    env.model.close_sessions()
    ended = wait_until(lambda: Call.objects.filter(id=call.id, state="hangup-bot").first(), what="the call ended")
    assert ended.last_error.startswith("Realtime voice: the realtime provider closed the session")
    wait_until(lambda: env.hung_up(ended), what="the carrier hang-up")
    assert env.model.api_key not in env.server.log.read_text()  # the session URL is logged, never the key


def test_a_session_that_cannot_be_opened_ends_the_call_without_a_sound(env):
    env.model.refuse = True
    call, stream = env.start_call(attached=False)  # it may be over before the test could see it attached
    ended = wait_until(lambda: Call.objects.filter(id=call.id, state="hangup-bot").first(), what="the call ended")
    assert "could not be opened" in ended.last_error and "HTTP 503" in ended.last_error
    assert env.model.api_key not in ended.last_error
    assert stream.media_frames() == []  # nothing garbled reached the caller
    wait_until(lambda: TranscriptEntry.objects.get(call=call, text=GREETING).interrupted, what="never said")


def test_a_caller_who_sends_no_audio_is_hung_up_after_idle_hangup_ms(env):
    call, stream = env.start_call()
    stream.wait_for(lambda: len(frames_of(stream, GREETING)) >= 30, what="the greeting")
    ended = wait_until(lambda: Call.objects.filter(id=call.id, state="hangup-bot").first(), timeout=30,
                       what="the idle hang-up")
    assert ended.last_error == f"Realtime voice: no audio from the caller for {IDLE_MS / 1000:g} s (realtime.idleHangupMs)"


def test_every_event_on_the_wire_matches_the_official_realtime_models(env):
    """What the fake sent and what our client sent, through the official SDK's GA event unions."""
    from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent

    env.model.script.append("Hello there")
    call, stream = env.start_call()
    wait_played(call)
    stream.send_media(10)
    wait_until(lambda: env.model.sent_of("response.done") and len(env.model.sent_of("response.done")) >= 2)
    server, client = TypeAdapter(RealtimeServerEvent), TypeAdapter(RealtimeClientEvent)
    kinds = {server.validate_python(event).type for event in env.model.sent}
    assert {"session.updated", "input_audio_buffer.speech_started", "response.output_audio.delta",
            "response.output_audio_transcript.done", "response.done"} <= kinds
    sent_by_us = {client.validate_python(event).type for event in env.model.received}
    assert {"session.update", "input_audio_buffer.append", "response.create"} <= sent_by_us
    stream.close()


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


def _errors(document: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        config_from_dict(document, env={})
    return str(caught.value)


@pytest.mark.django_db(transaction=False)
def test_realtime_config_errors_name_the_key_and_what_is_allowed():
    twilio = {"provider": "twilio", "fromNumber": OUR_NUMBER, "twilio": {"accountSid": "AC1", "authToken": "t"}}
    assert "realtime.enabled: cannot be combined with streaming.enabled" in _errors(
        {**twilio, "realtime": {"enabled": True}, "streaming": {"enabled": True}})
    assert "realtime.enabled: requires provider twilio, telnyx or plivo" in _errors({"realtime": {"enabled": True}})
    assert "realtime.provider" in _errors({**twilio, "realtime": {"enabled": True, "provider": "gemini"}})
    assert "realtime.providers.openai.baseUrl: must be a ws or wss URL" in _errors(
        {**twilio, "realtime": {"enabled": True, "providers": {"openai": {"baseUrl": "https://x"}}}})
    assert "realtime.idleHangupMs" in _errors({**twilio, "realtime": {"enabled": True, "idleHangupMs": 0}})
    assert "realtime.voice" in _errors({**twilio, "realtime": {"enabled": True, "voice": "marin"}})  # unknown key
    secret = "sk-very-secret-realtime-key"
    message = _errors({**twilio, "realtime": {"enabled": True, "providers": {"openai": {"apiKey": secret, "model": ""}}}})
    assert "realtime.providers.openai.model" in message and secret not in message
    config = config_from_dict({**twilio, "realtime": {"enabled": True}}, env={})
    assert config.live_audio and config.provider_settings.streaming.realtime
