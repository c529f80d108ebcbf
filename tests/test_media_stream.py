"""Twilio media streams end to end: a real daphne process runs the consumer; this test plays Twilio's
side of the WebSocket (tests/fakes/twilio_media.py) against fake OpenAI TTS/STT servers and the fake
Twilio REST API. Both processes share the database and a Redis channel layer, so every ``speak`` /
``continue`` issued here (or from the CLI) crosses processes like it does in production.

Assertions are about frames (sizes, order, counts, which utterance they belong to), never timing.
"""

from __future__ import annotations

import threading

import pytest

from calls import services
from calls.media import control as streams
from calls.models import Call, CallEvent, TranscriptEntry
from tests.conftest import (
    free_port,
    run_cli,
    wait_until,
    write_config,
)
from tests.fakes.twilio_media import dominant_byte
from tests.media_support import (
    REDIS_URL,
    child_extra_env,
    in_thread,
    live_call,
    open_stream,
    utterance_byte,
    wait_attached,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


# --------------------------------------------------------------------------------------------------
# Speaking and listening
# --------------------------------------------------------------------------------------------------


def test_greeting_plays_as_paced_frames_then_a_continue_turn_returns_the_callers_words(media):
    server, fake_twilio, fake_openai = media, media.twilio, media.openai
    fake_openai.script.append("I can come at five")
    call = live_call(fake_twilio, mode="conversation", initial_message="Hello, this is the dentist")
    stream = open_stream(server, call)

    # The pending greeting is spoken over the stream: 160-byte frames of its audio, then one mark.
    greeting = utterance_byte("Hello, this is the dentist")
    stream.wait_for(lambda: stream.marks(), what="the greeting's mark")
    frames = stream.media_frames()
    assert frames and all(len(f) == 160 for f in frames)
    assert len(stream.speech_frames(greeting)) >= 18  # 400 ms of audio, resampler edges aside
    assert stream.snapshot()[-1][0] == "mark"  # the mark follows the utterance's last frame
    wait_until(lambda: CallEvent.objects.filter(call=call, type="call.spoken").exists())

    # continue: speak, then the caller answers (audio in -> realtime STT -> transcript).
    turn = in_thread(services.continue_call, str(call.id), "Does five work for you?")
    stream.wait_for(lambda: len(stream.marks()) == 2, what="the prompt's mark")
    assert len(stream.speech_frames(utterance_byte("Does five work for you?"))) >= 18
    # Twilio buffers what it is sent: the caller answers once the prompt has played, not while the
    # last of it is still in the carrier's queue (that would be a barge-in).
    stream.wait_for(lambda: len(stream.answered_marks) == 2, what="the prompt played out")
    stream.send_media(20)
    turn["thread"].join(30)
    assert turn.get("error") is None
    assert turn["value"] == "I can come at five"

    entries = list(TranscriptEntry.objects.filter(call=call).values_list("speaker", "text", "interrupted"))
    assert entries == [
        ("bot", "Hello, this is the dentist", False),
        ("bot", "Does five work for you?", False),
        ("user", "I can come at five", False),
    ]
    # mu-law went to STT untouched, configured for g711_ulaw.
    session = fake_openai.live_sessions()[-1]  # this stream's realtime session
    assert session.updates[0]["session"]["input_audio_format"] == "g711_ulaw"
    assert session.headers["Authorization"] == f"Bearer {fake_openai.api_key}"
    assert session.audio_bytes >= 20 * 160
    stream.close()


def test_audio_starts_before_synthesis_finishes(media):
    server, fake_twilio, fake_openai = media, media.twilio, media.openai
    call = live_call(fake_twilio, mode="conversation")
    stream = open_stream(server, call)
    wait_attached(call)
    fake_openai.hold_after_first_chunk = True
    fake_openai.tts_ms = 1000
    text = "Your appointment is confirmed"
    speaking = in_thread(services.speak, str(call.id), text)
    # The first 100 ms chunk is all the fake has sent, and it is holding the response open:
    # frames of this utterance reach the caller anyway.
    stream.wait_for(lambda: len(stream.speech_frames(utterance_byte(text))) >= 2, what="first audio")
    assert fake_openai.tts_open == 1 and not stream.marks()  # still synthesizing: no mark yet
    fake_openai.release()
    stream.wait_for(lambda: stream.marks(), what="the mark")
    speaking["thread"].join(10)
    assert speaking.get("error") is None
    assert len(stream.speech_frames(utterance_byte(text))) >= 45  # ~1 s of audio in 20 ms frames
    assert all(len(f) == 160 for f in stream.media_frames())
    stream.close()


def hold_call_row(call: Call, *, deliver_greeting: bool = False) -> tuple[threading.Event, threading.Thread]:
    """Lock the call's row in another session (as a slow transaction elsewhere would), so the stream's
    greeting claim waits on it; optionally mark the greeting spoken in the same transaction. Returns
    the event that releases the lock, once the lock is held, and the thread holding it."""
    from django.db import connection, transaction

    held, release = threading.Event(), threading.Event()

    def hold():
        try:
            with transaction.atomic():
                Call.objects.select_for_update().get(id=call.id)
                if deliver_greeting:
                    Call.objects.filter(id=call.id).update(initial_message_delivered=True)
                held.set()
                release.wait(30)
        finally:
            connection.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert held.wait(10)
    return release, thread


def test_the_greeting_is_synthesized_while_the_stream_attaches_and_plays_once(media):
    server, fake_twilio, fake_openai = media, media.twilio, media.openai
    text = "Hello, your order has shipped"
    call = live_call(fake_twilio, mode="conversation", initial_message=text)
    token = streams.mint_stream_token(call)  # before the lock: minting reads the row for update
    release, holder = hold_call_row(call)
    asked = len(fake_openai.tts_requests)  # the fake keeps earlier tests' requests
    stream = open_stream(server, call, token=token)
    # The claim of the greeting is stuck behind the lock, yet its TTS request has already left.
    wait_until(lambda: [r["input"] for r in fake_openai.tts_requests[asked:]] == [text], timeout=15)
    assert not stream.media_frames()
    assert not Call.objects.get(id=call.id).initial_message_delivered
    release.set()
    holder.join(10)
    stream.wait_for(lambda: stream.marks(), what="the greeting's mark")
    assert len(stream.speech_frames(utterance_byte(text))) >= 18
    assert [r["input"] for r in fake_openai.tts_requests[asked:]] == [text]  # synthesized once, not again
    assert list(TranscriptEntry.objects.filter(call=call).values_list("speaker", "text")) == [("bot", text)]
    stream.close()


def test_a_greeting_spoken_elsewhere_while_the_stream_attached_is_not_played(media):
    server, fake_twilio, fake_openai = media, media.twilio, media.openai
    greeting, later = "Hello from the first stream", "This is the next line"
    call = live_call(fake_twilio, mode="conversation", initial_message=greeting)
    token = streams.mint_stream_token(call)
    release, holder = hold_call_row(call, deliver_greeting=True)
    asked = len(fake_openai.tts_requests)
    stream = open_stream(server, call, token=token)
    wait_until(lambda: [r["input"] for r in fake_openai.tts_requests[asked:]] == [greeting], timeout=15)
    release.set()  # commits: the greeting counts as spoken, so the stream must not claim or play it
    holder.join(10)
    wait_attached(call)
    services.speak(str(call.id), later)
    stream.wait_for(lambda: stream.marks(), what="the next line's mark")
    assert stream.speech_frames(utterance_byte(later))
    assert not stream.speech_frames(utterance_byte(greeting))
    assert list(TranscriptEntry.objects.filter(call=call).values_list("text", flat=True)) == [later]
    stream.close()


def test_caller_speech_interrupts_playback_and_the_transcript_says_so(media):
    server, fake_twilio, fake_openai = media, media.twilio, media.openai
    call = live_call(fake_twilio, mode="conversation")
    stream = open_stream(server, call, echo_marks=False)
    wait_attached(call)
    long_text, next_text = "Let me read you the whole menu", "Sorry, go ahead"
    fake_openai.tts_ms_for[long_text] = 6000  # 300 frames
    services.speak(str(call.id), long_text)
    stream.wait_for(lambda: len(stream.speech_frames(utterance_byte(long_text))) >= 10, what="playback")

    fake_openai.speech_started()  # the caller starts talking
    stream.wait_for(lambda: stream.clears() == 1, what="clear")
    services.speak(str(call.id), next_text)
    stream.wait_for(lambda: stream.marks(), what="the next utterance's mark")

    events = stream.snapshot()
    cleared_at = events.index(("clear", None))
    after = [dominant_byte(data) for kind, data in events[cleared_at:] if kind == "media"]
    # Nothing of the interrupted utterance is sent after the clear: the queue was dropped.
    assert utterance_byte(long_text) not in after
    assert utterance_byte(next_text) in after
    assert len(stream.speech_frames(utterance_byte(long_text))) < 300
    entries = dict(TranscriptEntry.objects.filter(call=call).values_list("text", "interrupted"))
    wait_until(lambda: TranscriptEntry.objects.get(call=call, text=long_text).interrupted)
    assert entries[next_text] is False
    stream.close()


def test_the_intro_of_an_outbound_conversation_is_not_interrupted(media):
    server, fake_twilio, fake_openai = media, media.twilio, media.openai
    intro = "Hi, this is a reminder about tomorrow"
    fake_openai.tts_ms_for[intro] = 1500
    call = live_call(fake_twilio, mode="conversation", initial_message=intro)
    stream = open_stream(server, call)
    stream.wait_for(lambda: len(stream.speech_frames(utterance_byte(intro))) >= 5, what="intro playback")
    fake_openai.speech_started()
    stream.wait_for(lambda: stream.marks(), what="the intro's mark")
    assert stream.clears() == 0
    assert len(stream.speech_frames(utterance_byte(intro))) >= 70  # played to the end (75 frames)
    assert TranscriptEntry.objects.get(call=call, text=intro).interrupted is False
    stream.close()


def test_speak_from_another_process_reaches_the_socket_held_by_daphne(media, tmp_path):
    server, fake_twilio = media, media.twilio
    call = live_call(fake_twilio, mode="notify")
    stream = open_stream(server, call)
    wait_attached(call)
    # No server listens on this CLI's serve.port, so it runs the service itself (no RPC hop into the
    # daphne that holds the socket): the speech must cross processes through the channel layer.
    config_path = write_config(tmp_path, {**media.document, "serve": {"port": free_port()}})
    result = run_cli(config_path, "speak", "--call-id", str(call.id), "--message",
                     "Your car is ready", "--json", extra_env=child_extra_env(REDIS_URL))
    assert result.returncode == 0, result.stderr
    stream.wait_for(lambda: stream.marks(), what="the mark")
    assert len(stream.speech_frames(utterance_byte("Your car is ready"))) >= 18
    assert list(TranscriptEntry.objects.filter(call=call).values_list("speaker", "text")) == [
        ("bot", "Your car is ready")
    ]
    stream.close()


def test_speech_nobody_acknowledges_is_reported_not_dropped(media, monkeypatch):
    monkeypatch.setattr(streams, "ACK_TIMEOUT_S", 0.5)
    call = live_call(media.twilio, mode="notify")
    # A lease without a consumer behind it (its process died a moment ago).
    assert streams.claim_lease(str(call.id), "gone-process")
    with pytest.raises(services.ServiceError, match="did not acknowledge speech"):
        services.speak(str(call.id), "Hello?")
    assert not TranscriptEntry.objects.filter(call=call).exists()
    assert "did not acknowledge" in Call.objects.get(id=call.id).last_error


def test_end_tells_the_stream_to_close_without_waiting_for_an_ack(media, monkeypatch):
    """The carrier hang-up comes first and the carrier stops the stream itself; the close message
    only makes it immediate, so ``end`` does not wait on a consumer that may already be gone."""
    import asyncio

    from channels.layers import channel_layers

    def no_ack_wait(*args, **kwargs):
        raise AssertionError("end waited for an acknowledgement")

    monkeypatch.setattr(streams, "_wait_for_ack", no_ack_wait)
    call = live_call(media.twilio, mode="conversation")
    assert streams.claim_lease(str(call.id), "a-consumer-that-is-closing")
    layer = channel_layers.make_backend("default")

    async def listen():
        channel = await layer.new_channel()
        await layer.group_add(streams.group_name(str(call.id)), channel)
        return channel

    async def heard(channel):
        try:
            return await asyncio.wait_for(layer.receive(channel), 10)
        finally:
            await layer.group_discard(streams.group_name(str(call.id)), channel)
            await layer.close_pools()

    loop = asyncio.new_event_loop()
    try:
        channel = loop.run_until_complete(listen())
        services.end_call(str(call.id))
        message = loop.run_until_complete(heard(channel))
    finally:
        loop.close()
    assert Call.objects.get(id=call.id).state == "hangup-bot"
    assert message["type"] == "stream.hangup" and message["reply_channel"] is None
    streams.release_lease(str(call.id), "a-consumer-that-is-closing")


def test_dtmf_frames_become_events_and_garbage_frames_do_not_end_the_call(media):
    server, fake_twilio = media, media.twilio
    call = live_call(fake_twilio, mode="conversation")
    stream = open_stream(server, call)
    wait_attached(call)
    stream.send_raw("{not json")
    stream.send_raw(b"\x00\x01binary")
    stream.send({"event": "media", "streamSid": stream.stream_sid, "media": {"payload": "***not base64***"}})
    stream.send({"event": "media", "streamSid": stream.stream_sid, "media": {"payload": "A" * (70 * 1024)}})
    stream.send({"event": "surprise"})
    stream.send_dtmf("7")
    stream.send_dtmf("#")
    stream.send_media(1)  # one valid frame: the only audio the STT session may receive
    session = media.openai.wait_for(lambda: next((s for s in media.openai.live_sessions() if s.audio_bytes), None))
    wait_until(lambda: CallEvent.objects.filter(call=call, type="call.dtmf").count() == 2)
    assert session.audio_bytes == 160  # the 70 KB frame and the bad base64 were dropped
    digits = [e.payload["digits"] for e in CallEvent.objects.filter(call=call, type="call.dtmf").order_by("id")]
    assert digits == ["7", "#"]
    assert not stream.closed.is_set()
    assert Call.objects.get(id=call.id).is_terminal is False
    stream.close()
