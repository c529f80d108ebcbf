"""The media engine's hot and start paths, piece by piece: the greeting claimed for a new stream,
the bounded per-stream job queue, caller audio forwarded to STT as it arrived, prebuilt frames."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from calls.media.consumer import StreamJobs
from calls.media.playback import Playback, Utterance
from calls.models import Call, TranscriptEntry
from calls.services import turns
from providers.stt import append_message
from providers.twilio_stream import OutboundFrames, media_payload
from tests.factories import AnsweredCallFactory


@pytest.mark.django_db
def test_a_new_stream_claims_the_greeting_once_and_the_call_listens():
    call = AnsweredCallFactory(initial_message="Hello there", initial_message_delivered=False, state="answered")
    greeting = turns.claim_stream_greeting(str(call.id))
    assert greeting is not None and greeting.text == "Hello there" and greeting.initial
    assert turns.claim_stream_greeting(str(call.id)) is None  # a second stream, a retried task: nothing
    call.refresh_from_db()
    assert call.initial_message_delivered and call.state == "listening"
    assert list(call.transcript.values_list("speaker", "text")) == [("bot", "Hello there")]


@pytest.mark.django_db
def test_a_greeting_withdrawn_by_a_vanished_stream_is_pending_again():
    call = AnsweredCallFactory(initial_message="Hello there", initial_message_delivered=False)
    greeting = turns.claim_stream_greeting(str(call.id))
    turns.withdraw_stream_greeting(str(call.id), greeting.entry_id)
    assert not Call.objects.get(id=call.id).initial_message_delivered
    assert not TranscriptEntry.objects.filter(call=call).exists()
    assert turns.claim_stream_greeting(str(call.id)).text == "Hello there"


@pytest.mark.django_db
def test_an_inbound_greeting_is_not_an_uninterruptible_intro():
    call = AnsweredCallFactory(direction="inbound", initial_message="Welcome", initial_message_delivered=False)
    assert turns.claim_stream_greeting(str(call.id)).initial is False


def test_the_job_queue_is_bounded_runs_in_order_and_always_takes_the_final_job():
    async def scenario():
        gate = asyncio.Event()
        ran: list[str] = []

        def job(name, wait=False):
            async def run():
                if wait:
                    await gate.wait()
                ran.append(name)
            return run

        async def failing():
            raise RuntimeError("a failed write")

        jobs = StreamJobs("test", limit=3)
        assert jobs.add(job("first", wait=True))
        await asyncio.sleep(0)  # the runner takes "first" and blocks on the gate
        accepted = [jobs.add(job(f"j{n}")) for n in range(5)]
        jobs.add(failing)  # over the limit too
        jobs.finish(job("final"))
        assert not jobs.add(job("after the end"))
        gate.set()
        await asyncio.wait_for(jobs.task, 5)
        return accepted, ran, jobs.dropped

    accepted, ran, dropped = asyncio.run(scenario())
    assert accepted == [True, True, True, False, False]
    assert ran == ["first", "j0", "j1", "j2", "final"]
    assert dropped == 3


def test_a_failed_job_does_not_stop_the_later_ones():
    async def scenario():
        ran = []

        async def failing():
            raise RuntimeError("boom")

        async def ok():
            ran.append("ok")

        jobs = StreamJobs("test")
        jobs.add(failing)
        jobs.add(ok)
        jobs.finish(ok)
        await asyncio.wait_for(jobs.task, 5)
        return ran

    assert asyncio.run(scenario()) == ["ok", "ok"]


def test_one_caller_frame_reaches_stt_in_the_base64_text_it_arrived_in():
    payload = base64.b64encode(bytes(range(160))).decode()
    frame = json.dumps({"event": "media", "media": {"track": "inbound", "payload": payload}})
    validated = media_payload(json.loads(frame))
    message = append_message([validated])
    assert validated == payload
    assert message == '{"type":"input_audio_buffer.append","audio":"' + payload + '"}'
    assert json.loads(message) == {"type": "input_audio_buffer.append", "audio": payload}


def test_a_backlog_of_frames_is_one_append_of_the_joined_audio():
    frames = [bytes([n]) * 160 for n in range(3)]  # 160 bytes: each base64 text ends in padding
    message = json.loads(append_message([base64.b64encode(f).decode() for f in frames]))
    assert base64.b64decode(message["audio"]) == b"".join(frames)


def test_outbound_frames_are_built_when_audio_arrives_not_when_sent():
    class Synth:
        async def frames(self, text):
            yield [b"\x01" * 160, b"\x02" * 160]

    async def scenario():
        frames = OutboundFrames("MZ" + "0" * 32)
        sent = []

        async def send(text):
            sent.append(text)

        playback = Playback(frames, send, Synth(), on_failed=lambda u: None, on_stuck=None, probe=None)
        utterance = Utterance(id="u1", text="hi", entry_id=None, initial=False)
        utterance.task = asyncio.get_running_loop().create_task(playback._synthesize(utterance))
        await utterance.task
        return frames, list(utterance.frames)

    frames, queued = asyncio.run(scenario())
    assert queued == [frames.media(b"\x01" * 160), frames.media(b"\x02" * 160)]
    assert json.loads(queued[0]) == {"event": "media", "streamSid": "MZ" + "0" * 32,
                                     "media": {"payload": base64.b64encode(b"\x01" * 160).decode()}}


class _InstantSynth:
    async def frames(self, text):
        yield [bytes([7]) * 160] * 150  # 3 s of audio, all at once (a TTS far faster than real time)


@pytest.mark.parametrize(("send_ahead", "burst"), [(0.0, range(1, 2)), (1.0, range(50, 56))])
def test_audio_is_sent_ahead_of_playback_only_as_far_as_the_carrier_queue_allows(monkeypatch, send_ahead, burst):
    """Twilio plays what it gets (paced: one frame, then wait); Telnyx/Plivo queue it (the first second
    goes at once, then one frame per 20 ms) -- and the lead never exceeds the bound."""
    sent: list[float] = []
    first_sleep_after: list[int] = []

    class RecordingAsyncio:
        def __getattr__(self, name):
            return getattr(asyncio, name)

        async def sleep(self, delay):
            if delay > 0 and not first_sleep_after:
                first_sleep_after.append(len(sent))
            await asyncio.sleep(delay)

    monkeypatch.setattr("calls.media.playback.asyncio", RecordingAsyncio())

    async def scenario():
        loop = asyncio.get_running_loop()

        async def send(text):
            sent.append(loop.time())

        playback = Playback(OutboundFrames("MZ1"), send, _InstantSynth(), on_failed=lambda u: None,
                            on_stuck=None, probe=None, send_ahead=send_ahead)
        started = loop.time()
        playback.enqueue(Utterance(id="u", text="menu", entry_id=None, initial=False))
        while len(sent) < 60:
            await asyncio.sleep(0.005)
        playback.close()
        return started

    started = asyncio.run(scenario())
    assert first_sleep_after and first_sleep_after[0] in burst
    # Frame i starts playing at started + i * 20 ms: it was never sent more than the bound before that.
    leads = [started + index * 0.020 - at for index, at in enumerate(sent)]
    assert max(leads) <= send_ahead + 0.005


def test_live_audio_is_cut_into_frames_padded_at_the_end_and_an_empty_response_is_no_failure():
    """The realtime model's audio arrives in chunks of any size; a response without audio (a tool
    call) plays nothing, sends no mark and is not reported as a failed utterance."""
    failed, sent = [], []

    async def scenario():
        async def send(text):
            sent.append(json.loads(text))

        playback = Playback(OutboundFrames("MZ1"), send, None, on_failed=failed.append, on_stuck=None, probe=None)
        spoken = Utterance(id="a", text="", entry_id=None, initial=False)
        silent = Utterance(id="b", text="", entry_id=None, initial=False)
        playback.enqueue_live(spoken)
        playback.enqueue_live(silent)
        playback.feed(spoken, b"\x21" * 250)
        playback.feed(spoken, b"\x21" * 150)  # 400 bytes: two whole frames and 80 bytes over
        playback.finish(spoken)
        playback.finish(silent)
        while playback.queue:
            await asyncio.sleep(0.01)
        playback.close()

    asyncio.run(scenario())
    media = [base64.b64decode(m["media"]["payload"]) for m in sent if m["event"] == "media"]
    audio = [f for f in media if f != b"\xff" * 160]
    assert audio == [b"\x21" * 160, b"\x21" * 160, b"\x21" * 80 + b"\xff" * 80]
    assert [m["mark"]["name"] for m in sent if m["event"] == "mark"] == ["utt-a"]
    assert failed == []


def test_first_audio_is_also_set_when_the_only_utterance_fails_without_a_frame():
    """The consumer holds the transcription session back until ``first_audio``: a greeting whose
    synthesis fails must release it when the pacer gives up, not leave it waiting for a frame."""
    failed = []

    async def scenario():
        async def send(text):
            pass

        playback = Playback(OutboundFrames("MZ1"), send, None, on_failed=failed.append, on_stuck=None, probe=None)
        greeting = Utterance(id="g", text="", entry_id=7, initial=True)
        playback.enqueue_live(greeting)
        assert not playback.first_audio.is_set()
        playback.finish(greeting, error="OpenAI TTS error: HTTP 500")
        await asyncio.wait_for(playback.first_audio.wait(), 10)
        return greeting.sent

    assert asyncio.run(scenario()) == 0
    assert [u.id for u in failed] == ["g"]
