"""Telnyx and Plivo media streams end to end, on the same engine as Twilio's.

For each carrier a real daphne serves the webhooks and the stream endpoint; the carrier's local fake
(tests/fakes/telnyx.py, tests/fakes/plivo.py) dials, answers and -- because the dial / answer asked
for a stream (Telnyx ``stream_url``) or the answer XML holds a ``<Stream>`` (Plivo) -- opens the media
WebSocket like the carrier does and plays what it gets in real time, answering marks / checkpoints
only once the audio before them has played (tests/fakes/carrier_media.py). TTS and STT are the fake
OpenAI servers. Services run in this process (eager Celery), the daphne child runs its tasks inline.

Assertions are about frames, commands and records, never timing.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from calls import services
from calls.media import control as streams
from calls.models import Call, CallEvent, TranscriptEntry
from tests.conftest import RunningServer, free_port, wait_until
from tests.factories import AnsweredCallFactory
from tests.fakes.carrier_media import PlivoMediaStream, QueuedCarrierStream, TelnyxMediaStream
from tests.fakes.openai import FakeOpenAI, running_fake_openai
from tests.fakes.plivo import FakePlivo
from tests.fakes.telnyx import FakeTelnyx
from tests.fakes.twilio_media import dominant_byte
from tests.media_support import (
    STREAM_PATH,
    carrier_section,
    in_thread,
    launch_carrier_daphne,
    redis_settings,
    running_carrier,
    utterance_byte,
    wait_for_other_sessions_to_settle,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

OUR_NUMBER = "+14155550100"
CALLEE = "+14155550199"
CALLER = "+14155550123"
GREETING = "Hello, this is the dentist"
INBOUND_GREETING = "Thanks for calling the dentist"


@dataclass
class CarrierEnv:
    carrier: str
    fake: FakeTelnyx | FakePlivo
    openai: FakeOpenAI
    server: RunningServer
    document: dict

    @property
    def webhook(self) -> str:
        return self.document["publicUrl"]

    def fake_call(self, call: Call):
        """The fake's record of our call, once the carrier id is known (Plivo: once the provisional
        RequestUUID has been replaced by the CallUUID)."""
        return wait_until(lambda: self.fake.calls.get(Call.objects.get(id=call.id).provider_call_id or "-"),
                          what="the carrier's call")

    def media(self, call: Call) -> QueuedCarrierStream:
        fake_call = self.fake_call(call)
        stream = wait_until(lambda: fake_call.media, what=f"{self.carrier} opening the media stream")
        wait_until(lambda: streams.has_live_stream(str(call.id)), what="the stream attached")
        return stream


def carrier_document(carrier: str, fake, openai: FakeOpenAI, port: int) -> dict:
    document = {
        "provider": carrier,
        "fromNumber": OUR_NUMBER,
        "publicUrl": f"http://127.0.0.1:{port}/voice/webhook",
        "maxConcurrentCalls": 20,
        "inboundPolicy": "allowlist",
        "allowFrom": [CALLER],
        "inboundGreeting": INBOUND_GREETING,
        "tts": openai.tts_config(),
        "streaming": {"enabled": True, "streamPath": STREAM_PATH, "providers": openai.streaming_config()},
    }
    return {**document, **carrier_section(carrier, fake)}


@pytest.fixture(scope="module", params=["telnyx", "plivo"])
def carrier_env(request, django_db_setup, tmp_path_factory) -> Iterator[CarrierEnv]:
    with running_carrier(request.param) as fake, running_fake_openai() as openai:
        port = free_port()
        document = carrier_document(request.param, fake, openai, port)
        server = launch_carrier_daphne(request.param, fake, tmp_path_factory.mktemp(f"media-{request.param}"),
                                       document, port)
        try:
            yield CarrierEnv(request.param, fake, openai, server, document)
        finally:
            server.stop()


@pytest.fixture
def env(carrier_env, configure, settings) -> Iterator[CarrierEnv]:
    carrier_env.openai.reset()
    carrier_env.fake.fail_streams = False
    redis_settings(settings)
    configure({**carrier_env.document, "serve": {"port": carrier_env.server.port}})
    yield carrier_env
    for fake_call in list(carrier_env.fake.calls.values()):
        if fake_call.media is not None:
            fake_call.media.close()
    wait_for_other_sessions_to_settle()


def transcript(call: Call) -> list[tuple[str, str]]:
    return list(TranscriptEntry.objects.filter(call=call).order_by("id").values_list("speaker", "text"))


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def carrier_speech_requests(env: CarrierEnv, call: Call) -> list[str]:
    """Carrier-side speech and listening on this call: never used while it streams."""
    call.refresh_from_db()
    if env.carrier == "telnyx":
        return [c.action for c in env.fake.commands_for(call_control_id=call.provider_call_id)
                if c.action in ("speak", "transcription_start", "transcription_stop", "gather")]
    return [r.kind for r in env.fake.rest_of("transfer", call.provider_call_id)]


def played_utterance(stream: QueuedCarrierStream, text: str) -> list[bytes]:
    level = utterance_byte(text)
    return [f for f in stream.played_frames() if dominant_byte(f) == level]


def received_utterance(stream: QueuedCarrierStream, text: str) -> list[bytes]:
    level = utterance_byte(text)
    return [f for f in stream.media_frames() if dominant_byte(f) == level]


# --------------------------------------------------------------------------------------------------
# Speaking and listening
# --------------------------------------------------------------------------------------------------


def test_outbound_greeting_streams_as_mulaw_tts_and_a_continue_turn_returns_the_callers_words(env):
    env.openai.script.append("I can come at five")
    call = services.initiate_call(to=CALLEE, message=GREETING, mode="conversation")
    stream = env.media(call)

    # The greeting is the fake TTS's audio as mu-law, played out in full, then its mark answered.
    stream.wait_for(lambda: stream.answered_marks, what="the greeting's mark played")
    assert all(len(frame) == 160 for frame in stream.played_frames())
    assert len(played_utterance(stream, GREETING)) >= 18  # 400 ms, resampler edges aside
    wait_until(lambda: CallEvent.objects.filter(call=call, type="call.spoken").exists())

    turn = in_thread(services.continue_call, str(call.id), "Does five work for you?")
    stream.wait_for(lambda: len(stream.answered_marks) == 2, what="the prompt played")
    assert len(played_utterance(stream, "Does five work for you?")) >= 18
    stream.send_media(20)  # the caller answers
    turn["thread"].join(30)
    assert turn.get("error") is None
    assert turn["value"] == "I can come at five"
    assert transcript(call) == [("bot", GREETING), ("bot", "Does five work for you?"), ("user", "I can come at five")]

    # Sent ahead of playback, but never more than the bound (so a clear silences at once).
    assert stream.max_queued_s <= 2.0
    # The caller's mu-law reached STT untouched; the carrier never spoke or listened itself.
    session = env.openai.live_sessions()[-1]
    assert session.updates[0]["session"]["input_audio_format"] == "g711_ulaw"
    assert session.audio_bytes >= 20 * 160
    assert carrier_speech_requests(env, call) == []
    call.refresh_from_db()
    assert call.state == "listening" and call.last_error == ""
    stream.close()


def test_the_stream_is_requested_the_way_the_carrier_documents_it(env):
    call = services.initiate_call(to=CALLEE, message=GREETING, mode="conversation")
    stream = env.media(call)
    fake_call = env.fake_call(call)
    if env.carrier == "telnyx":
        request = fake_call.stream_request
        assert {k: request[k] for k in ("stream_track", "stream_bidirectional_mode", "stream_bidirectional_codec")} \
            == {"stream_track": "inbound_track", "stream_bidirectional_mode": "rtp", "stream_bidirectional_codec": "PCMU"}
        url = request["stream_url"]
        (dial,) = [c for c in env.fake.commands_for("dial") if c.body.get("stream_url") == url]
        assert dial.status == 200  # on POST /v2/calls itself: no streaming_start round trip
    else:
        element = fake_call.stream_element
        assert {k: element[k] for k in ("bidirectional", "keepCallAlive", "audioTrack", "contentType")} == {
            "bidirectional": "true", "keepCallAlive": "true", "audioTrack": "inbound",
            "contentType": "audio/x-mulaw;rate=8000"}
        assert query_of(element["statusCallbackUrl"])["flow"] == "stream"
        url = stream.url
        wait_until(lambda: CallEvent.objects.filter(call=call, type="call.stream.started").exists())
        assert env.fake.errors == []
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("ws", f"127.0.0.1:{env.server.port}", STREAM_PATH)
    assert query_of(url) == {"callId": str(call.id), "token": streams.mint_stream_token(call)}
    stream.close()


def test_a_notify_call_keeps_the_carriers_own_voice(env):
    call = services.initiate_call(to=CALLEE, message="Your table is ready", mode="notify")
    ended = wait_until(lambda: Call.objects.filter(id=call.id, state="completed").first(), what="the notify call done")
    fake_call = env.fake.calls[ended.provider_call_id]
    if env.carrier == "telnyx":
        (dial,) = [c for c in env.fake.commands_for("dial") if c.body["client_state"] == fake_call.client_state]
        assert "stream_url" not in dial.body and fake_call.stream_request is None
        assert env.fake.commands_for("speak", fake_call.call_control_id)[0].body["payload"] == "Your table is ready"
    else:
        assert fake_call.stream_element is None and fake_call.heard == ["Your table is ready"]
    assert not CallEvent.objects.filter(call=call, type__startswith="call.stream").exists()


def test_caller_speech_clears_the_carrier_queue_and_marks_the_line_interrupted(env):
    call = services.initiate_call(to=CALLEE, message=GREETING, mode="conversation")
    stream = env.media(call)
    stream.wait_for(lambda: stream.answered_marks, what="the intro played")  # the intro is not interruptible
    long_text, next_text = "Let me read you the whole menu", "Sorry, go ahead"
    env.openai.tts_ms_for[long_text] = 6000  # 300 frames
    services.speak(str(call.id), long_text)
    stream.wait_for(lambda: len(played_utterance(stream, long_text)) >= 10, what="playback")

    env.openai.speech_started()  # the caller starts talking
    stream.wait_for(lambda: stream.clears() == 1, what="clear")
    assert stream.queued_audio_s() == 0.0  # the carrier dropped what it still held
    services.speak(str(call.id), next_text)
    stream.wait_for(lambda: len(stream.answered_marks) == 2, what="the next utterance played")

    received = stream.snapshot()
    cleared_at = received.index(("clear", None))
    after = [dominant_byte(data) for kind, data in received[cleared_at:] if kind == "media"]
    assert utterance_byte(long_text) not in after  # nothing of the interrupted line after the clear
    assert utterance_byte(next_text) in after
    assert len(played_utterance(stream, long_text)) < 300
    wait_until(lambda: TranscriptEntry.objects.get(call=call, text=long_text).interrupted)
    assert TranscriptEntry.objects.get(call=call, text=next_text).interrupted is False
    assert stream.max_queued_s <= 2.0
    stream.close()


def test_inbound_call_is_answered_onto_the_stream_and_greeted_over_it(env):
    if env.carrier == "telnyx":
        fake_call = env.fake.start_inbound(CALLER, OUR_NUMBER)
    else:
        fake_call = env.fake.start_inbound(CALLER, OUR_NUMBER, answer_url=env.webhook)
    stream = wait_until(lambda: fake_call.media, what="the inbound stream")
    stream.wait_for(lambda: stream.answered_marks, what="the inbound greeting played")
    assert len(played_utterance(stream, INBOUND_GREETING)) >= 18
    call = Call.objects.get(provider=env.carrier, direction="inbound")
    assert transcript(call) == [("bot", INBOUND_GREETING)]
    if env.carrier == "telnyx":
        (answer,) = env.fake.commands_for("answer", fake_call.call_control_id)
        assert query_of(answer.body["stream_url"])["callId"] == str(call.id)
    assert carrier_speech_requests(env, call) == []
    stream.close()


def test_dtmf_both_ways(env):
    call = services.initiate_call(to=CALLEE, message=GREETING, mode="conversation")
    stream = env.media(call)
    stream.send_dtmf("7")
    wait_until(lambda: CallEvent.objects.filter(call=call, type="call.dtmf").exists())
    services.send_dtmf(str(call.id), "12#")
    if env.carrier == "telnyx":
        (command,) = env.fake.commands_for("send_dtmf", env.fake_call(call).call_control_id)
        assert command.body["digits"] == "12#" and command.status == 200
    else:
        assert env.fake_call(call).digits_received == ["12#"]
    stream.close()


# --------------------------------------------------------------------------------------------------
# Credentials, ending, failures
# --------------------------------------------------------------------------------------------------


def answered_call(env: CarrierEnv) -> Call:
    """A live streamed conversation of this carrier with nothing left to say (no stream yet)."""
    carrier_id = "v3:" + uuid.uuid4().hex if env.carrier == "telnyx" else str(uuid.uuid4())
    return AnsweredCallFactory(provider=env.carrier, provider_call_id=carrier_id, mode="conversation",
                               initial_message="", initial_message_delivered=True)


def open_raw(env: CarrierEnv, call: Call, query: dict[str, str], **media_format) -> QueuedCarrierStream:
    """The carrier's side of a stream for ``call``, opened by hand with this URL query."""
    url = f"ws://127.0.0.1:{env.server.port}{STREAM_PATH}?{urlencode(query)}"
    if env.carrier == "telnyx":
        stream = TelnyxMediaStream(url).connect()
        stream.send_connected()
        stream.send(stream.start_message(call.provider_call_id, **media_format))
    else:
        stream = PlivoMediaStream(url).connect()
        stream.send(stream.start_message(call.provider_call_id, **media_format))
    return stream


@pytest.mark.parametrize("credential", ["wrong", "missing", "other-call"])
def test_a_wrong_or_missing_credential_closes_the_socket_before_any_audio(env, credential):
    call, other = answered_call(env), answered_call(env)
    query = {"callId": str(call.id)}
    if credential == "wrong":
        query["token"] = "A" * 22
    elif credential == "other-call":
        query["token"] = streams.mint_stream_token(other)  # a real token, of another call
    impostor = open_raw(env, call, query)
    assert impostor.wait_closed() == 1008
    assert impostor.media_frames() == [] and not streams.has_live_stream(str(call.id))
    # The same socket with the call's own token attaches: the credential was the only difference.
    genuine = open_raw(env, call, {"callId": str(call.id), "token": streams.mint_stream_token(call)})
    wait_until(lambda: streams.has_live_stream(str(call.id)))
    genuine.close()


def test_a_stream_announcing_another_audio_format_is_refused(env):
    call = answered_call(env)
    query = {"callId": str(call.id), "token": streams.mint_stream_token(call)}
    other_format = {"encoding": "L16", "sample_rate": 16000} if env.carrier == "telnyx" else {
        "encoding": "audio/x-l16", "sample_rate": 8000}
    stream = open_raw(env, call, query, **other_format)
    assert stream.wait_closed() == 1008
    assert stream.media_frames() == [] and not streams.has_live_stream(str(call.id))


def test_end_hangs_up_through_the_carrier_api_and_closes_the_stream(env):
    call = services.initiate_call(to=CALLEE, message=GREETING, mode="conversation")
    stream = env.media(call)
    fake_call = env.fake_call(call)
    services.end_call(str(call.id))
    assert stream.wait_closed() is not None
    call.refresh_from_db()
    assert (call.state, call.end_reason) == ("hangup-bot", "hangup-bot")
    if env.carrier == "telnyx":
        assert [c.action for c in env.fake.commands_for("hangup", fake_call.call_control_id)] == ["hangup"]
        env.fake.wait_for(lambda: env.fake.deliveries_of("streaming.stopped", fake_call.call_control_id))
    else:
        assert [r.kind for r in env.fake.rest_of("hangup", fake_call.call_uuid)] == ["hangup"]
        wait_until(lambda: fake_call.state == "ended")
    wait_until(lambda: not streams.has_live_stream(str(call.id)))


def test_a_lost_stream_ends_the_call_after_the_reconnect_grace(env):
    call = services.initiate_call(to=CALLEE, message=GREETING, mode="conversation")
    stream = env.media(call)
    stream.close()  # the carrier's socket drops and no new one comes
    ended = wait_until(lambda: Call.objects.filter(id=call.id, state="hangup-bot").first(), timeout=20)
    assert ended.end_reason == "hangup-bot"
    call_id = ended.provider_call_id
    if env.carrier == "telnyx":
        wait_until(lambda: env.fake.commands_for("hangup", call_id))
    else:
        wait_until(lambda: env.fake.rest_of("hangup", call_id))


def test_a_failed_stream_falls_back_to_the_carriers_own_speech(env):
    env.fake.fail_streams = True  # Telnyx streaming.failed / Plivo DroppedStream
    call = services.initiate_call(to=CALLEE, message=GREETING, mode="conversation")
    wait_until(lambda: Call.objects.get(id=call.id).last_error)
    if env.carrier == "telnyx":
        ccid = env.fake_call(call).call_control_id
        env.fake.wait_for(lambda: env.fake.commands_for("speak", ccid))
        (speak,) = env.fake.commands_for("speak", ccid)
        assert speak.body["payload"] == GREETING  # Telnyx says the greeting ...
        env.fake.wait_for(lambda: env.fake.commands_for("transcription_start", ccid))  # ... then listens itself
    else:
        fake_call = env.fake_call(call)
        wait_until(lambda: fake_call.heard == [GREETING])  # spoken by Plivo through an XML transfer ...
        wait_until(lambda: fake_call.listened)  # ... which then listens with <GetInput>
    call.refresh_from_db()
    assert call.last_error.startswith("Media stream failed:")
    assert transcript(call)[0] == ("bot", GREETING)
    assert not streams.has_live_stream(str(call.id))


# --------------------------------------------------------------------------------------------------
# Wire shapes against the carriers' published schemas (no server needed)
# --------------------------------------------------------------------------------------------------


def test_plivo_frames_match_the_official_stream_sdk_models():
    """Both directions validated by the models of Plivo's own ``plivo-stream-sdk``."""
    from plivo_stream import types as plivo_types

    from providers.plivo.stream import PlivoStreamWire

    fake = PlivoMediaStream("ws://unused")
    start = fake.start_message("2b6f8d7a-6c34-11ee-9f1e-0242ac120002")
    assert plivo_types.StartEvent.model_validate(start).start.media_format.encoding == "audio/x-mulaw"
    wire = PlivoStreamWire()
    parsed = wire.parse_start(start, {"callId": "6f1c2f5e-0000-4000-8000-000000000001", "token": "t"})
    assert (parsed.carrier_call_id, parsed.stream_id, parsed.media_problem) == (
        "2b6f8d7a-6c34-11ee-9f1e-0242ac120002", fake.stream_id, None)
    frames = wire.outbound(parsed)
    audio = plivo_types.PlayAudioEvent.model_validate_json(frames.media(b"\xff" * 160))
    assert (audio.media.content_type, audio.media.sample_rate) == ("audio/x-mulaw", 8000)
    assert base64.b64decode(audio.media.payload) == b"\xff" * 160
    assert plivo_types.CheckpointEvent.model_validate_json(frames.mark("utt-1")).name == "utt-1"
    assert plivo_types.ClearAudioEvent.model_validate_json(frames.clear()).stream_id == fake.stream_id
    played = {"event": "playedStream", "sequenceNumber": 9, "streamId": fake.stream_id, "name": "utt-1"}
    assert plivo_types.PlayedStreamEvent.model_validate(played) and wire.played_name(played) == "utt-1"
    dtmf = {"event": "dtmf", "sequenceNumber": 4, "streamId": fake.stream_id,
            "dtmf": {"track": "inbound", "digit": "5", "timestamp": "1"}}
    assert plivo_types.DtmfEvent.model_validate(dtmf) and wire.dtmf(dtmf) == ("5", "4")


def test_telnyx_frames_have_the_documented_shapes():
    """Telnyx publishes an AsyncAPI document, no validator: the documented fields, exactly."""
    import json

    from providers.telnyx.stream import TelnyxStreamWire

    fake = TelnyxMediaStream("ws://unused")
    start = fake.start_message("v3:abc-123", "NmYxYw==")
    wire = TelnyxStreamWire()
    parsed = wire.parse_start(start, {"callId": "6f1c2f5e-0000-4000-8000-000000000001", "token": "t"})
    assert (parsed.carrier_call_id, parsed.stream_id, parsed.token) == ("v3:abc-123", fake.stream_id, "t")
    assert wire.parse_start({**start, "start": {**start["start"], "media_format": {
        "encoding": "L16", "sample_rate": 16000, "channels": 1}}}, {}).media_problem
    frames = wire.outbound(parsed)
    assert json.loads(frames.media(b"\x7f" * 160)) == {
        "event": "media", "media": {"payload": base64.b64encode(b"\x7f" * 160).decode()}}
    assert json.loads(frames.mark("utt-1")) == {"event": "mark", "mark": {"name": "utt-1"}}
    assert json.loads(frames.clear()) == {"event": "clear"}
    mark = {"event": "mark", "sequence_number": "5", "stream_id": fake.stream_id, "mark": {"name": "utt-1"}}
    assert wire.played_name(mark) == "utt-1"
    assert wire.dtmf({"event": "dtmf", "sequence_number": "6", "dtmf": {"digit": "#"}}) == ("#", "6")


def test_one_stream_per_call_and_a_reconnect_within_the_grace_keeps_the_call(env):
    call = answered_call(env)
    credential = {"callId": str(call.id), "token": streams.mint_stream_token(call)}
    first = open_raw(env, call, credential)
    wait_until(lambda: streams.has_live_stream(str(call.id)))
    duplicate = open_raw(env, call, credential)  # the right credential, but the call already streams
    assert duplicate.wait_closed() == 1008
    first.close()
    again = open_raw(env, call, credential)  # the carrier reconnects at once
    wait_until(lambda: Call.objects.get(id=call.id).metadata.get(streams.RECONNECTS_KEY) == 1,
               what="the grace check finding the new stream")
    assert not Call.objects.get(id=call.id).is_terminal
    again.close()


def test_garbage_frames_are_ignored_and_the_stream_keeps_working(env):
    call = answered_call(env)
    stream = open_raw(env, call, {"callId": str(call.id), "token": streams.mint_stream_token(call)})
    wait_until(lambda: streams.has_live_stream(str(call.id)))
    stream.send_raw("x" * (70 * 1024))  # over the 64 KB frame limit
    stream.send_raw(b"\x00\x01binary")
    stream.send_raw("{not json")
    stream.send({"event": "media", "media": {"payload": "%%% not base64 %%%"}})
    stream.send({"event": "dtmf", "dtmf": {"digit": "<script>"}})
    stream.send_dtmf("9")
    wait_until(lambda: CallEvent.objects.filter(call=call, type="call.dtmf").exists())
    assert [e.payload["digits"] for e in CallEvent.objects.filter(call=call, type="call.dtmf")] == ["9"]
    assert stream.close_code is None and not Call.objects.get(id=call.id).is_terminal
    stream.close()
