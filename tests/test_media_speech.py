"""Speech for media streams, piece by piece: telephony TTS against the fake OpenAI/ElevenLabs servers,
realtime STT against the fake realtime endpoint, the consumer's playback pacer, Twilio stream
message shapes and TwiML, and the stream services (tokens, leases) on both lease back-ends.
"""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import timedelta

import pytest
from django.utils import timezone

from calls.config import config_from_dict
from calls.media import control as streams
from calls.media.playback import Playback, Utterance
from calls.models import Call, StreamLease
from providers import stt, tts
from providers.audio import pcm16_to_mulaw
from providers.twilio_stream import (
    OutboundFrames,
    media_payload,
    parse_frame,
    parse_start,
    stream_twiml,
    stream_url,
    streaming_possible,
)
from tests.factories import AnsweredCallFactory
from tests.fakes.elevenlabs import VOICE_ID, running_fake_elevenlabs, ulaw_pattern
from tests.fakes.openai import level_for, running_fake_openai
from tests.fakes.twilio_media import dominant_byte


def config(**document):
    """The adapter settings of a mock config with these keys."""
    return config_from_dict({"provider": "mock", "mock": {"autoAnswer": False}, **document}, env={}).provider_settings


def synthesize(settings: tts.TtsSettings, text: str) -> list[bytes]:
    async def run() -> list[bytes]:
        frames: list[bytes] = []
        try:
            async for chunk in tts.TelephonySynthesizer(settings).frames(text):
                frames.extend(chunk)
        finally:
            await tts.close_session()
        return frames

    return asyncio.run(run())


@pytest.fixture
def fake_openai():
    with running_fake_openai() as fake:
        yield fake


@pytest.fixture
def fake_elevenlabs():
    with running_fake_elevenlabs() as fake:
        yield fake


# --------------------------------------------------------------------------------------------------
# TTS
# --------------------------------------------------------------------------------------------------


def test_openai_pcm_is_streamed_into_160_byte_mulaw_frames(fake_openai):
    settings = tts.telephony_tts_settings(config(tts=fake_openai.tts_config(voice="nova")), env={})
    frames = synthesize(settings, "Your order has shipped")
    assert all(len(frame) == 160 for frame in frames)
    assert len(frames) == 20  # 400 ms of 24 kHz PCM -> 3200 samples at 8 kHz -> 20 frames
    expected = pcm16_to_mulaw(level_for("Your order has shipped").to_bytes(2, "little", signed=True))[0]
    assert sum(dominant_byte(f) == expected for f in frames) >= 17  # resampler edges aside
    request = fake_openai.tts_requests[-1]
    assert request == {"model": "gpt-4o-mini-tts", "input": "Your order has shipped", "voice": "nova",
                       "response_format": "pcm"}
    assert fake_openai.tts_headers[-1]["Authorization"] == f"Bearer {fake_openai.api_key}"


def test_openai_settings_follow_the_vendor_rules():
    base = {"provider": "openai", "providers": {"openai": {"apiKey": "k", "instructions": "Be warm", "speed": 0}}}
    settings = tts.telephony_tts_settings(config(tts=base), env={})
    assert settings.instructions == "Be warm" and settings.speed == 0.0  # explicit 0 kept
    assert settings.base_url == "https://api.openai.com/v1"
    older_model = {"provider": "openai", "providers": {"openai": {"apiKey": "k", "model": "tts-1", "instructions": "x"}}}
    assert tts.telephony_tts_settings(config(tts=older_model), env={}).instructions is None
    from_env = tts.telephony_tts_settings(config(tts={"provider": "openai"}), env={"OPENAI_API_KEY": "sk-env"})
    assert from_env.api_key == "sk-env"


def test_plugin_tts_is_merged_over_core_messages_tts(fake_openai):
    document = {
        "plugins": {"entries": {"voice-call": {"config": {
            "provider": "mock", "tts": {"providers": {"openai": {"voice": "onyx"}}},
        }}}},
        "messages": {"tts": {"provider": "openai", "providers": {"openai": {
            "apiKey": fake_openai.api_key, "baseUrl": fake_openai.http_base, "voice": "alloy"}}}},
    }
    settings = tts.telephony_tts_settings(config_from_dict(document, env={}).provider_settings, env={})
    assert (settings.voice, settings.base_url) == ("onyx", fake_openai.http_base)


def test_elevenlabs_ulaw_is_reframed_byte_for_byte(fake_elevenlabs):
    settings = tts.telephony_tts_settings(config(tts=fake_elevenlabs.tts_config()), env={})
    frames = synthesize(settings, "Hello there")
    audio = ulaw_pattern(8 * 300)  # 300 ms of mu-law, sent in 1000-byte chunks
    assert frames == [audio[i : i + 160] for i in range(0, len(audio), 160)]
    request = fake_elevenlabs.requests[-1]
    assert request["voice_id"] == VOICE_ID and request["output_format"] == "ulaw_8000"
    assert request["body"] == {"text": "Hello there", "model_id": "eleven_flash_v2_5"}


def test_elevenlabs_pcm_output_is_resampled(fake_elevenlabs):
    settings = tts.telephony_tts_settings(config(tts=fake_elevenlabs.tts_config(outputFormat="pcm_16000")), env={})
    frames = synthesize(settings, "Hello there")
    assert len(frames) == 15 and all(len(f) == 160 for f in frames)
    assert fake_elevenlabs.requests[-1]["output_format"] == "pcm_16000"


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ({"provider": "edge"}, tts.EDGE_REFUSED),
        ({"provider": "microsoft"}, tts.EDGE_REFUSED),
        ({"provider": "openai"}, "tts.providers.openai.apiKey is not set (or set OPENAI_API_KEY)"),
        ({"provider": "elevenlabs", "providers": {"elevenlabs": {"apiKey": "k"}}}, tts.MISSING_VOICE),
        ({"provider": "polly"}, "tts.provider polly is not supported for calls (use openai or elevenlabs)"),
    ],
)
def test_tts_that_cannot_speak_on_a_call_is_refused_with_a_clear_message(section, problem, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cfg = config(tts=section)
    assert tts.telephony_tts_problem(cfg) == problem
    # ...and such a config never offers a media stream: Twilio keeps its own <Say> voice.
    streaming = config(tts=section, publicUrl="https://voice.example.test/voice/webhook",
                       streaming={"enabled": False})
    assert streaming_possible(streaming) is False


@pytest.mark.parametrize(("status", "key", "detail"), [(500, None, "(server_error)"),
                                                       (401, "sk-wrong-key", "(invalid_request_error, invalid_api_key)")])
def test_vendor_errors_are_reported_without_the_key(fake_openai, status, key, detail):
    if status == 500:
        fake_openai.tts_status = 500
    section = fake_openai.tts_config(**({"apiKey": key} if key else {}))
    settings = tts.telephony_tts_settings(config(tts=section), env={})
    with pytest.raises(tts.TtsError) as failure:
        synthesize(settings, "Hi")
    assert str(failure.value) == f"OpenAI TTS error: HTTP {status} {detail}"
    assert settings.api_key not in str(failure.value)


# --------------------------------------------------------------------------------------------------
# Realtime STT
# --------------------------------------------------------------------------------------------------


class Heard:
    def __init__(self):
        self.events: list[tuple[str, str]] = []

    async def speech_start(self):
        self.events.append(("start", ""))

    async def partial(self, text):
        self.events.append(("partial", text))

    async def final(self, final):
        self.events.append(("final", final.text))


def run_transcriber(settings, script, *, frames: int = 20, until=lambda heard, t: False):
    heard = Heard()

    async def run():
        transcriber = stt.RealtimeTranscriber(settings, on_speech_start=heard.speech_start,
                                              on_final=heard.final, on_partial=heard.partial, label="test")
        transcriber.start()
        for _ in range(frames):  # queued while the socket connects
            transcriber.push(base64.b64encode(bytes([0x35]) * 160).decode())
        script(transcriber)
        for _ in range(500):
            if until(heard, transcriber):
                break
            await asyncio.sleep(0.01)
        await transcriber.close()
        return transcriber

    return heard, asyncio.run(run())


def test_transcriber_configures_g711_and_forwards_caller_audio_untouched(fake_openai):
    fake_openai.script.append("I would like a table for two")
    settings = stt.stt_settings(config(streaming={"providers": fake_openai.streaming_config(silenceDurationMs=0)}), env={})
    heard, _ = run_transcriber(settings, lambda t: None, until=lambda heard, t: ("final", "I would like a table for two") in heard.events)
    session = fake_openai.sessions[-1]
    assert session.updates == [{"type": "transcription_session.update", "session": {
        "input_audio_format": "g711_ulaw",
        "input_audio_transcription": {"model": "gpt-4o-transcribe"},
        "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                           "silence_duration_ms": 0},
    }}]
    assert session.headers["OpenAI-Beta"] == "realtime=v1"
    assert session.query == "intent=transcription"
    assert session.audio_bytes == 20 * 160
    assert heard.events[0] == ("start", "")
    assert ("partial", "I would like a table for two ") in heard.events
    assert heard.events[-1] == ("final", "I would like a table for two")


def test_transcriber_reconnects_with_backoff_and_keeps_queued_audio(fake_openai, monkeypatch):
    monkeypatch.setattr(stt, "BACKOFF_START_S", 0.01)
    fake_openai.refuse_stt = 2  # the first two connection attempts are refused (HTTP 503)
    fake_openai.audio_per_utterance = 10**9
    settings = stt.stt_settings(config(streaming={"providers": fake_openai.streaming_config()}), env={})
    _, transcriber = run_transcriber(settings, lambda t: None, until=lambda heard, t: t.sessions == 1 and
                                     fake_openai.sessions and fake_openai.sessions[-1].audio_bytes == 3200)
    assert transcriber.sessions == 1 and fake_openai.refuse_stt == 0
    assert fake_openai.sessions[-1].audio_bytes == 20 * 160  # nothing lost while connecting

    # A working session that drops is reopened and later audio goes to the new one.
    def drop_then_talk(transcriber):
        async def later():
            await transcriber.ready.wait()
            fake_openai.drop_sessions()
            while transcriber.sessions < 2:
                await asyncio.sleep(0.01)
            await transcriber.ready.wait()
            for _ in range(5):
                transcriber.push(base64.b64encode(bytes([0x36]) * 160).decode())

        asyncio.get_running_loop().create_task(later())

    _, transcriber = run_transcriber(settings, drop_then_talk, frames=0,
                                     until=lambda heard, t: len(fake_openai.sessions) >= 3
                                     and fake_openai.sessions[-1].audio_bytes == 800)
    assert transcriber.sessions == 2 and fake_openai.sessions[-1].audio_bytes == 800


def test_a_transcriber_told_to_wait_connects_after_its_event_or_its_deadline(fake_openai):
    """A stream's transcription session waits for the greeting's first frame (consumer): nothing
    connects before the event, the audio pushed meanwhile arrives whole, and a greeting that never
    starts holds the session back only until the deadline."""
    fake_openai.audio_per_utterance = 10**9
    settings = stt.stt_settings(config(streaming={"providers": fake_openai.streaming_config()}), env={})

    async def run():
        frame = base64.b64encode(bytes([0x35]) * 160).decode()
        sessions_before = len(fake_openai.sessions)
        greeting_started = asyncio.Event()
        waiting = stt.RealtimeTranscriber(settings, on_speech_start=Heard().speech_start,
                                          on_final=Heard().final, label="waits")
        waiting.start(not_before=greeting_started, at_most_after_s=60)
        for _ in range(7):
            waiting.push(frame)
        for _ in range(20):  # twenty loop turns and 0.2 s: time enough to connect, were it allowed
            await asyncio.sleep(0.01)
        assert waiting.sessions == 0 and len(fake_openai.sessions) == sessions_before
        greeting_started.set()
        await asyncio.wait_for(waiting.ready.wait(), 10)
        while len(fake_openai.sessions) == sessions_before or fake_openai.sessions[-1].audio_bytes < 7 * 160:
            await asyncio.sleep(0.01)  # the fake registers the session on its side of the socket
        assert fake_openai.sessions[-1].audio_bytes == 7 * 160
        await waiting.close()

        never = asyncio.Event()  # the greeting never plays: the deadline opens the session
        late = stt.RealtimeTranscriber(settings, on_speech_start=Heard().speech_start,
                                       on_final=Heard().final, label="deadline")
        late.start(not_before=never, at_most_after_s=0.05)
        await asyncio.wait_for(late.ready.wait(), 10)
        assert late.sessions == 1 and not never.is_set()
        await late.close()

        closed = stt.RealtimeTranscriber(settings, on_speech_start=Heard().speech_start,
                                         on_final=Heard().final, label="closed")
        closed.start(not_before=asyncio.Event(), at_most_after_s=60)
        await closed.close()  # the stream went away before its greeting: no session, no task left
        closed.start()
        assert closed.sessions == 0 and (closed._task is None or closed._task.done())
        for _ in range(200):  # the deadline session may reach the fake's list a moment after our side
            if len(fake_openai.sessions) - sessions_before >= 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # and nothing more arrives: the closed transcriber never connected
        return len(fake_openai.sessions) - sessions_before

    assert asyncio.run(run()) == 2


def test_unconfigured_or_unknown_stt_is_reported(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(stt.SttUnavailable, match="apiKey is not set"):
        stt.stt_settings(config(streaming={}), env={})
    with pytest.raises(stt.SttUnavailable, match="deepgram is not supported"):
        stt.stt_settings(config(streaming={"provider": "deepgram"}), env={})
    settings = stt.stt_settings(config(streaming={"providers": {"openai": {"apiKey": "k"}}}), env={})
    assert settings.url == "wss://api.openai.com/v1/realtime?intent=transcription"


# --------------------------------------------------------------------------------------------------
# Playback: FIFO, keep-alive silence, marks
# --------------------------------------------------------------------------------------------------


class GatedSynth:
    """Yields its frames only when the test opens the gate; records nothing else."""

    def __init__(self, frames_per_text: dict[str, list[bytes]]):
        self.frames_per_text = frames_per_text
        self.gate = asyncio.Event()

    async def frames(self, text):
        await self.gate.wait()
        frames = self.frames_per_text[text]
        yield frames[:2]
        yield frames[2:]


def test_playback_sends_silence_until_audio_then_frames_in_order_then_one_mark_each(monkeypatch):
    monkeypatch.setattr("calls.media.playback.FRAME_SECONDS", 0.001)

    async def run():
        sent: list[dict] = []

        async def send(text):
            sent.append(json.loads(text))

        synth = GatedSynth({"one": [bytes([1]) * 160] * 5, "two": [bytes([2]) * 160] * 3})
        playback = Playback(OutboundFrames("MZ1"), send, synth, on_failed=lambda u: None,
                            on_stuck=lambda: None, probe=None)
        playback.enqueue(Utterance(id="a", text="one", entry_id=1, initial=False))
        playback.enqueue(Utterance(id="b", text="two", entry_id=2, initial=False))
        while len(sent) < 5:  # keep-alive while synthesis has produced nothing yet
            await asyncio.sleep(0.001)
        assert not playback.first_audio.is_set()  # silence is not the first audio
        synth.gate.set()
        await asyncio.wait_for(playback.first_audio.wait(), 10)
        assert base64.b64decode(sent[-1]["media"]["payload"])[0] == 1  # set as the first audio frame went out
        while len([m for m in sent if m["event"] == "mark"]) < 2:
            await asyncio.sleep(0.001)
        return sent, playback

    sent, playback = asyncio.run(run())
    assert set(sent[0]) == {"event", "streamSid", "media"} and set(sent[0]["media"]) == {"payload"}
    kinds = []
    for message in sent:
        if message["event"] == "media":
            kinds.append(base64.b64decode(message["media"]["payload"])[0])
        else:
            kinds.append(message["mark"]["name"])
    first_audio = kinds.index(1)
    assert first_audio >= 5 and set(kinds[:first_audio]) == {0xFF}  # only silence before audio
    assert kinds[first_audio:] == [1] * 5 + ["utt-a"] + [2] * 3 + ["utt-b"]
    assert set(playback.awaiting) == {"utt-a", "utt-b"}
    assert playback.on_mark("utt-a").entry_id == 1
    assert playback.on_mark("utt-a") is None  # a second echo (or one after a clear) is ignored


# --------------------------------------------------------------------------------------------------
# Twilio stream shapes
# --------------------------------------------------------------------------------------------------


def test_stream_twiml_connects_to_the_public_host_with_the_token_as_a_parameter():
    cfg = config(publicUrl="https://voice.example.test:8443/voice/webhook?x=1", streaming={"streamPath": "/media"})
    assert stream_url(cfg) == "wss://voice.example.test:8443/media"
    assert stream_url(config()) is None
    assert stream_twiml("wss://h/media", 'a"b<c') == (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="wss://h/media">'
        '<Parameter name="token" value="a&quot;b&lt;c" /></Stream></Connect></Response>'
    )
    with_call = stream_twiml("wss://h/media", "t", "6f1c2f5e-0000-4000-8000-000000000001")
    assert '<Parameter name="token" value="t" /><Parameter name="callId" value="6f1c2f5e-0000-4000-8000-000000000001" />' \
        in with_call


def test_inbound_stream_messages_are_validated():
    start = parse_frame(json.dumps({"event": "start", "streamSid": "MZ1", "start": {
        "callSid": "CA1", "customParameters": {"token": "t1", "other": "x"}}}))
    parsed = parse_start(start)
    assert (parsed.carrier_call_id, parsed.stream_id, parsed.token) == ("CA1", "MZ1", "t1")
    no_param = parse_frame(json.dumps({"event": "start", "streamSid": "MZ1", "start": {"callSid": "CA1"}}))
    assert parse_start(no_param, "from-query").token == "from-query"
    assert parse_start({"event": "start", "streamSid": "MZ1", "start": {"callSid": "<script>"}}) is None
    good = base64.b64encode(b"\xff" * 160).decode()
    assert media_payload({"event": "media", "media": {"track": "inbound", "payload": good}}) == good
    assert media_payload({"event": "media", "media": {"payload": "%%%"}}) is None
    assert media_payload({"event": "media", "media": {"track": "outbound", "payload": good}}) is None
    frames = OutboundFrames('MZ"1')
    assert json.loads(frames.media(b"\x00\x01")) == {"event": "media", "streamSid": 'MZ"1',
                                                     "media": {"payload": "AAE="}}
    assert json.loads(frames.mark("utt-1")) == {"event": "mark", "streamSid": 'MZ"1', "mark": {"name": "utt-1"}}
    assert json.loads(frames.clear()) == {"event": "clear", "streamSid": 'MZ"1'}


# --------------------------------------------------------------------------------------------------
# Stream services: token and lease
# --------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_stream_token_is_stable_per_call_checked_timing_safe_and_never_stored():
    call, other = AnsweredCallFactory(), AnsweredCallFactory()
    token = streams.mint_stream_token(call)
    assert streams.mint_stream_token(call) == token  # a repeated webhook gets the same token
    assert len(token) == 22  # 16 bytes, base64url
    call.refresh_from_db()
    assert token not in json.dumps(call.metadata)
    assert streams.check_stream_token(call, token)
    assert not streams.check_stream_token(call, streams.mint_stream_token(other))
    assert not streams.check_stream_token(call, None)
    assert not streams.check_stream_token(AnsweredCallFactory(), token)  # no token minted for it


@pytest.fixture(params=["database", "redis"])
def lease_backend(request, settings):
    if request.param == "redis":
        settings.REDIS_URL = "redis://127.0.0.1:6379/13"
    else:
        settings.REDIS_URL = ""
    return request.param


@pytest.mark.django_db
def test_one_stream_lease_per_call(lease_backend):
    call = AnsweredCallFactory()
    call_id = str(call.id)
    assert not streams.has_live_stream(call_id)
    assert streams.claim_lease(call_id, "stream-a")
    assert streams.claim_lease(call_id, "stream-a")  # renewal
    assert not streams.claim_lease(call_id, "stream-b")
    assert streams.has_live_stream(call_id)
    streams.release_lease(call_id, "stream-b")  # not the holder: no effect
    assert streams.has_live_stream(call_id)
    streams.release_lease(call_id, "stream-a")
    assert not streams.has_live_stream(call_id)
    assert streams.claim_lease(call_id, "stream-b")
    streams.release_lease(call_id, "stream-b")


@pytest.mark.django_db
def test_an_expired_database_lease_can_be_taken_over(settings):
    settings.REDIS_URL = ""
    call = AnsweredCallFactory()
    assert streams.claim_lease(str(call.id), "dead-process")
    assert not streams.claim_lease(str(call.id), "new-stream")
    StreamLease.objects.filter(call=call).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert not streams.has_live_stream(str(call.id))
    assert not streams.refresh_lease(str(call.id), "new-stream")  # not the holder
    assert streams.claim_lease(str(call.id), "new-stream")
    assert not streams.refresh_lease(str(call.id), "dead-process")  # taken over
    assert streams.refresh_lease(str(call.id), "new-stream")
    assert StreamLease.objects.get(call=call).owner == "new-stream"


@pytest.mark.django_db
def test_a_database_lease_refresh_never_writes_the_call_row(settings, django_assert_num_queries):
    settings.REDIS_URL = ""
    call = AnsweredCallFactory()
    assert streams.claim_lease(str(call.id), "stream-a", "MZ1")
    before = Call.objects.get(id=call.id).updated_at
    with django_assert_num_queries(1):
        assert streams.refresh_lease(str(call.id), "stream-a")
    assert Call.objects.get(id=call.id).updated_at == before


class FastSynth:
    """A TTS far faster than real time: 50 frames per chunk, as fast as the consumer takes them.
    It records how much audio the utterance held each time it produced more."""

    def __init__(self, chunks: int):
        self.chunks = chunks
        self.buffered: list[int] = []
        self.utterance: Utterance | None = None

    async def frames(self, text):
        for _ in range(self.chunks):
            if self.utterance is not None:
                self.buffered.append(len(self.utterance.frames))
            yield [bytes([7]) * 160] * 50


def test_synthesis_runs_at_most_two_seconds_ahead_of_playback(monkeypatch):
    from calls.media.playback import MAX_BUFFERED_FRAMES

    monkeypatch.setattr("calls.media.playback.FRAME_SECONDS", 0.0005)

    async def run():
        sent: list[str] = []

        async def send(text):
            sent.append(text)

        synth = FastSynth(chunks=20)  # 1,000 frames: 20 s of audio
        playback = Playback(OutboundFrames("MZ1"), send, synth, on_failed=lambda u: None,
                            on_stuck=lambda: None, probe=None)
        utterance = Utterance(id="long", text="a long text", entry_id=1, initial=False)
        synth.utterance = utterance
        playback.enqueue(utterance)
        while not any('"mark"' in m for m in sent):
            await asyncio.sleep(0.001)
        return sent, synth

    sent, synth = asyncio.run(run())
    assert sum(1 for m in sent if '"media"' in m and "BwcH" in m) == 1000  # every frame played, in order
    assert max(synth.buffered) <= MAX_BUFFERED_FRAMES  # never more than ~2 s synthesized ahead
