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


class _InstantSynth:
    """3 s of audio, all at once (a TTS far faster than real time); frame i is 160 bytes of i."""

    async def frames(self, text):
        yield [bytes([index]) * 160 for index in range(150)]


def _play(send_ahead: float, *, frames_wanted: int, progress_every: int = 0):
    """Play one utterance of _InstantSynth until ``frames_wanted`` frames are out: returns the loop
    time it was queued and what was sent, as (loop time, message text)."""
    sent: list[tuple[float, str]] = []

    async def scenario():
        loop = asyncio.get_running_loop()

        async def send(text):
            sent.append((loop.time(), text))

        playback = Playback(OutboundFrames("MZ1"), send, _InstantSynth(), on_failed=lambda u: None,
                            on_stuck=None, probe=None, send_ahead=send_ahead, progress_every=progress_every)
        started = loop.time()
        playback.enqueue(Utterance(id="u", text="menu", entry_id=None, initial=False))
        while sum(len(_audio_of(text)) for _, text in sent) < frames_wanted * 160:
            await asyncio.sleep(0.005)
        playback.close()
        return started

    return asyncio.run(scenario()), sent


def _audio_of(text: str) -> bytes:
    message = json.loads(text)
    return base64.b64decode(message["media"]["payload"]) if message["event"] == "media" else b""


@pytest.mark.parametrize(("send_ahead", "first", "later"), [(0.0, 1, 1), (1.0, 50, 5)])
def test_ready_audio_goes_out_at_once_up_to_the_lead_then_in_top_ups_and_never_further_ahead(
        send_ahead, first, later):
    """Every carrier queues what it gets: the first message carries all the ready audio that fits in
    the lead (1 s: 50 frames in one message), then the queue is topped up 100 ms per message. The
    frames go out whole and in order, and none is sent more than the lead before it plays."""
    started, sent = _play(send_ahead, frames_wanted=80)
    messages = [(at, _audio_of(text)) for at, text in sent]
    assert all(audio for _, audio in messages)  # audio only: no silence, no mark yet
    counts = [len(audio) // 160 for _, audio in messages]
    assert counts[0] == first and set(counts[1:-1]) == {later}
    audio = b"".join(a for _, a in messages)
    assert audio == b"".join(bytes([index]) * 160 for index in range(len(audio) // 160))
    # Frame i plays at started + i * 20 ms at the earliest: the last frame of each message was never
    # sent more than the lead before that.
    frame = 0
    for at, chunk in messages:
        frame += len(chunk) // 160
        assert started + (frame - 1) * 0.020 - at <= send_ahead + 0.005


def test_with_progress_marks_a_message_never_spans_more_than_one_progress_interval():
    """The realtime bridge truncates where the caller stopped hearing: a progress mark follows every
    5 frames, so a message carries at most 5 (the 1 s lead goes out as ten of them, each marked)."""
    _, sent = _play(1.0, frames_wanted=60, progress_every=5)
    kinds = [json.loads(text)["event"] for _, text in sent]
    assert kinds[:20] == ["media", "mark"] * 10
    assert all(len(_audio_of(text)) == 5 * 160 for _, text in sent if json.loads(text)["event"] == "media")
    assert [json.loads(text)["mark"]["name"] for _, text in sent[:4] if "mark" in text] == ["utt-u-5", "utt-u-10"]


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
