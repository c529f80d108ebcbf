"""Twilio media streams end to end: a real daphne process runs the consumer; this test plays Twilio's
side of the WebSocket (tests/fakes/twilio_media.py) against fake OpenAI TTS/STT servers and the fake
Twilio REST API. Both processes share the database and a Redis channel layer, so every ``speak`` /
``continue`` issued here (or from the CLI) crosses processes like it does in production.

Assertions are about frames (sizes, order, counts, which utterance they belong to), never timing.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone
from websockets.exceptions import InvalidStatus

from calls import services
from calls.media import control as streams
from calls.models import Call, CallEvent, TranscriptEntry
from providers.audio import pcm16_to_mulaw
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
from tests.factories import AnsweredCallFactory
from tests.fakes.openai import FakeOpenAI, level_for, running_fake_openai
from tests.fakes.twilio import (
    FROM_NUMBER,
    PUBLIC_ORIGIN,
    PUBLIC_URL,
    FakeTwilio,
    running_fake_twilio,
    twilio_config,
)
from tests.fakes.twilio_media import TwilioMediaStream, dominant_byte

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

REDIS_URL = "redis://127.0.0.1:6379/13"
STREAM_PATH = "/voice/stream"


def utterance_byte(text: str) -> int:
    """The mu-law byte the fake TTS's constant level for ``text`` becomes after our resampling."""
    return pcm16_to_mulaw(int(level_for(text)).to_bytes(2, "little", signed=True))[0]


def redis_settings(settings) -> str:
    """This process and the daphne child share one Redis (channel layer, stream leases, notifications).

    Never flushed: other test runs may share the database, and every key we use is per call (UUID) or
    per channel (random), so runs cannot see each other's keys; leases and layer keys expire.
    """
    settings.REDIS_URL = REDIS_URL
    host = {"address": REDIS_URL, **django_settings.CHANNEL_LAYER_REDIS_HOST_OPTIONS}
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [host]}}
    }
    return REDIS_URL


def child_extra_env(redis_url: str) -> dict[str, str]:
    """Like production processes, children share Redis and SECRET_KEY (stream tokens derive from it)."""
    return {"REDIS_URL": redis_url, "VOICECALL_CELERY_EAGER": "1", "DJANGO_SECRET_KEY": django_settings.SECRET_KEY}


def stream_document(twilio: FakeTwilio, openai: FakeOpenAI, config: dict | None = None, **streaming) -> dict:
    document = twilio_config(
        twilio,
        maxConcurrentCalls=20,
        tts=openai.tts_config(),
        streaming={"enabled": True, "providers": openai.streaming_config(), **streaming},
    )
    document.update(config or {})
    return document


def launch_daphne(directory: Path, document: dict) -> RunningServer:
    """conftest's ``start_daphne``, for a server shared by the tests of this module."""
    port = free_port()
    document = {**document, "serve": {"port": port}}
    log = directory / f"daphne-{port}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "voicecall_site.asgi:application"],
        cwd=REPO, env=child_env(write_config(directory, document), child_extra_env(REDIS_URL)),
        stdout=log.open("w"), stderr=subprocess.STDOUT,
    )
    server = RunningServer(proc, port, log)
    wait_for_port(port, proc=proc)
    return server


@dataclass
class MediaEnv:
    twilio: FakeTwilio
    openai: FakeOpenAI
    server: RunningServer
    document: dict

    @property
    def ws_url(self) -> str:
        return ws_url(self.server)


def ws_url(server: RunningServer) -> str:
    return f"ws://127.0.0.1:{server.port}{STREAM_PATH}"


@pytest.fixture(scope="module")
def media_env(django_db_setup, tmp_path_factory):
    """One daphne with the default streaming config for the tests of this module (starting one per
    test would dominate the run time); tests that need other caps start their own."""
    with running_fake_twilio() as twilio, running_fake_openai() as openai:
        document = stream_document(twilio, openai)
        server = launch_daphne(tmp_path_factory.mktemp("media"), document)
        try:
            yield MediaEnv(twilio, openai, server, document)
        finally:
            server.stop()


@pytest.fixture
def media(media_env, configure, settings) -> Iterator[MediaEnv]:
    media_env.openai.reset()
    redis_settings(settings)
    configure({**media_env.document, "serve": {"port": media_env.server.port}})
    yield media_env
    wait_for_other_sessions_to_settle()


def wait_for_other_sessions_to_settle(quiet_polls: int = 5, timeout: float = 10.0) -> None:
    """The shared daphne outlives each test, and the test database is truncated after each test.
    A stream's last ledger writes (an echoed mark, a transcript) land just after the test closed it;
    let them finish first, or TRUNCATE and such a write can deadlock (PostgreSQL)."""
    if connection.vendor != "postgresql":
        return
    deadline, quiet = time.monotonic() + timeout, 0
    while quiet < quiet_polls and time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND state IN ('active', 'idle in transaction')"
            )
            busy = cursor.fetchone()[0]
        quiet = 0 if busy else quiet + 1
        time.sleep(0.02)


@pytest.fixture
def stream_server(media_env, start_daphne, configure, settings):
    """A daphne of its own, for tests that change the streaming section (admission caps)."""

    def _start(config: dict | None = None, **streaming) -> RunningServer:
        document = stream_document(media_env.twilio, media_env.openai, config, **streaming)
        server = start_daphne(document, extra_env=child_extra_env(redis_settings(settings)))
        configure({**document, "serve": {"port": server.port}})
        return server

    return _start


def live_call(fake_twilio, **fields) -> Call:
    sid = fake_twilio.add_live_call().sid
    fields.setdefault("initial_message", "")
    fields.setdefault("initial_message_delivered", not fields["initial_message"])
    return AnsweredCallFactory(provider="twilio", provider_call_id=sid, answered_at=timezone.now(), **fields)


def open_stream(target, call: Call | None = None, *, token: str | None = None, **kwargs) -> TwilioMediaStream:
    url = target.ws_url if isinstance(target, MediaEnv) else ws_url(target)
    stream = TwilioMediaStream(url, **kwargs).connect()
    stream.send_connected()
    if call is not None:
        stream.send_start(call.provider_call_id, token if token is not None else streams.mint_stream_token(call))
    return stream


def wait_attached(call: Call) -> None:
    wait_until(lambda: streams.has_live_stream(str(call.id)), timeout=15)


def in_thread(fn, *args, **kwargs) -> dict:
    """Run a blocking service (``continue``) the way a CLI/RPC thread would; result in the dict."""
    result: dict = {}

    def run():
        try:
            result["value"] = fn(*args, **kwargs)
        except Exception as exc:
            result["error"] = exc
        finally:
            from django.db import connections

            connections.close_all()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    result["thread"] = thread
    return result


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


# --------------------------------------------------------------------------------------------------
# Admission
# --------------------------------------------------------------------------------------------------


def test_sockets_over_max_connections_are_refused_at_the_upgrade(stream_server):
    server = stream_server(maxConnections=2)
    first, second = open_stream(server), open_stream(server)
    with pytest.raises(InvalidStatus) as refused:
        TwilioMediaStream(ws_url(server)).connect()
    assert refused.value.response.status_code == 403
    first.close()
    first.wait_closed()

    def admitted():
        try:
            return open_stream(server)
        except InvalidStatus:
            return None  # the server has not processed the first socket's close yet

    third = wait_until(admitted)  # a freed slot admits the next socket
    assert not third.closed.is_set()
    second.close()
    third.close()


def test_pending_sockets_over_the_total_cap_are_closed_with_1013(stream_server):
    server = stream_server(maxPendingConnections=2, maxPendingConnectionsPerIp=10)
    held = [open_stream(server), open_stream(server)]
    third = open_stream(server)
    assert third.wait_closed() == 1013
    assert not any(s.closed.is_set() for s in held)
    for s in held:
        s.close()


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted-proxy", "untrusted-header"])
def test_pending_cap_per_ip_counts_the_client_ip_under_the_trusted_proxy_rules(stream_server, trusted):
    security = {"trustForwardingHeaders": True, "trustedProxyIPs": ["127.0.0.1"]} if trusted else {}
    server = stream_server(maxPendingConnectionsPerIp=1, config={"webhookSecurity": security})
    first = open_stream(server, headers={"X-Forwarded-For": "203.0.113.7"})
    other_client = open_stream(server, headers={"X-Forwarded-For": "198.51.100.9"})
    same_client = open_stream(server, headers={"X-Forwarded-For": "203.0.113.7"})
    assert same_client.wait_closed() == 1013
    if trusted:
        assert not other_client.closed.is_set()  # its own per-IP budget
    else:
        assert other_client.wait_closed() == 1013  # the header is ignored: all three are 127.0.0.1
    assert not first.closed.is_set()
    first.close()
    other_client.close()


def test_socket_without_start_is_closed_with_1008_after_the_pre_start_timeout(stream_server):
    server = stream_server(preStartTimeoutMs=300)
    stream = open_stream(server)
    assert stream.wait_closed() == 1008


@pytest.mark.parametrize(
    "start",
    [
        pytest.param(lambda call: ("CA" + "0" * 32, streams.mint_stream_token(call)), id="unknown-call"),
        pytest.param(lambda call: (call.provider_call_id, "not-the-token"), id="bad-token"),
        pytest.param(lambda call: (call.provider_call_id, None), id="no-token"),
        pytest.param(lambda call: ("", streams.mint_stream_token(call)), id="missing-callsid"),
    ],
)
def test_start_that_does_not_prove_a_live_call_is_closed_with_1008(media, start):
    server, fake_twilio = media, media.twilio
    call = live_call(fake_twilio, mode="conversation")
    call_sid, token = start(call)
    stream = open_stream(server)
    stream.send_start(call_sid, token)
    assert stream.wait_closed() == 1008
    assert not streams.has_live_stream(str(call.id))


def test_start_for_an_ended_call_is_closed_with_1008(media):
    server, fake_twilio = media, media.twilio
    call = live_call(fake_twilio, mode="conversation")
    token = streams.mint_stream_token(call)
    Call.objects.filter(id=call.id).update(state="completed")
    stream = open_stream(server)
    stream.send_start(call.provider_call_id, token)
    assert stream.wait_closed() == 1008


def test_a_second_stream_for_a_call_is_refused_and_the_first_keeps_speaking(media):
    server, fake_twilio = media, media.twilio
    call = live_call(fake_twilio, mode="notify")
    first = open_stream(server, call)
    wait_attached(call)
    duplicate = open_stream(server, call)
    assert duplicate.wait_closed() == 1008
    services.speak(str(call.id), "Still here")
    first.wait_for(lambda: first.marks(), what="the first stream's mark")
    assert duplicate.media_frames() == []
    first.close()


# --------------------------------------------------------------------------------------------------
# Disconnects
# --------------------------------------------------------------------------------------------------


def test_stream_lost_without_reconnect_ends_the_call_after_the_grace(media):
    server, fake_twilio = media, media.twilio
    call = live_call(fake_twilio, mode="conversation")
    stream = open_stream(server, call)
    wait_attached(call)
    stream.send_stop(call.provider_call_id)
    stream.wait_closed()
    wait_until(lambda: Call.objects.get(id=call.id).is_terminal, timeout=15)
    ended = Call.objects.get(id=call.id)
    assert ended.state == "hangup-bot" and ended.end_reason == "hangup-bot"
    hangups = [r for r in fake_twilio.updates(call.provider_call_id) if r.get("Status") == "completed"]
    assert len(hangups) == 1


def test_stream_that_reconnects_within_the_grace_keeps_the_call(media):
    server, fake_twilio = media, media.twilio
    call = live_call(fake_twilio, mode="conversation")
    token = streams.mint_stream_token(call)
    first = open_stream(server, call, token=token)
    wait_attached(call)
    first.close()  # the socket drops without a stop
    wait_until(lambda: not streams.has_live_stream(str(call.id)))  # Twilio reconnects after the drop
    second = open_stream(server, call, token=token)
    wait_until(lambda: Call.objects.get(id=call.id).metadata.get(streams.RECONNECTS_KEY) == 1, timeout=15)
    assert Call.objects.get(id=call.id).is_terminal is False
    assert [r for r in fake_twilio.updates(call.provider_call_id) if r.get("Status") == "completed"] == []
    services.speak(str(call.id), "Welcome back")
    second.wait_for(lambda: second.marks(), what="speech on the new stream")
    second.close()


def test_ending_the_call_closes_its_stream_without_a_second_hang_up(media):
    server, fake_twilio = media, media.twilio
    call = live_call(fake_twilio, mode="conversation")
    stream = open_stream(server, call)
    wait_attached(call)
    services.end_call(str(call.id))
    assert stream.wait_closed() == 1000
    assert Call.objects.get(id=call.id).state == "hangup-bot"
    wait_until(lambda: not streams.has_live_stream(str(call.id)))
    assert len([r for r in fake_twilio.updates(call.provider_call_id) if r.get("Status") == "completed"]) == 1


def test_a_peer_that_stops_reading_is_closed_and_the_reason_recorded(media, start_daphne, settings):
    # A small limit stands in for the production 1 MiB so the test fills it in seconds, not minutes.
    server = start_daphne(media.document, extra_env={**child_extra_env(redis_settings(settings)),
                                                      "VOICECALL_STREAM_MAX_SEND_BUFFER": "16384"})
    call = live_call(media.twilio, mode="conversation")
    media.openai.tts_ms = 30_000
    peer = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)  # before connect: a small window
    peer.connect(("127.0.0.1", server.port))
    stream = TwilioMediaStream(ws_url(server)).connect(sock=peer, read=False)
    stream.send_connected()
    stream.send_start(call.provider_call_id, streams.mint_stream_token(call))
    wait_attached(call)
    services.speak(str(call.id), "A very long announcement")
    wait_until(lambda: "Backpressure" in Call.objects.get(id=call.id).last_error, timeout=40)
    stream.start_reading()  # what was queued arrives, then the close frame -- if it got through:
    # the server sends 1013, but a peer that stopped reading may lose the connection before it
    # reads that far (1006). Either way it is closed, and the reason is on the call.
    assert stream.wait_closed() in (1013, 1006)
    # The stream is gone: after the grace the call ends like any lost stream.
    wait_until(lambda: Call.objects.get(id=call.id).is_terminal, timeout=15)


def test_without_redis_the_lease_lives_on_the_call_row_and_the_greeting_still_plays(
    media, start_daphne, settings, monkeypatch
):
    """The embedded setup: in-memory channel layer, lease in the call's metadata (DB)."""
    settings.REDIS_URL = ""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    server = start_daphne(media.document, extra_env={"REDIS_URL": "", "VOICECALL_CELERY_EAGER": "1",
                                                      "DJANGO_SECRET_KEY": django_settings.SECRET_KEY})
    greeting = "Hello from the embedded setup"
    call = live_call(media.twilio, mode="conversation", initial_message=greeting)
    stream = open_stream(server, call)
    stream.wait_for(lambda: stream.marks(), what="the greeting's mark")  # spoken inside daphne
    assert len(stream.speech_frames(utterance_byte(greeting))) >= 18
    lease = Call.objects.get(id=call.id).metadata[streams.LEASE_METADATA_KEY]
    assert lease["streamSid"] == stream.stream_sid and streams.has_live_stream(str(call.id))
    duplicate = open_stream(server, call)
    assert duplicate.wait_closed() == 1008
    # Another process cannot reach an in-memory layer: reported, not silently dropped.
    monkeypatch.setattr(streams, "ACK_TIMEOUT_S", 0.5)
    with pytest.raises(services.ServiceError, match="did not acknowledge"):
        services.speak(str(call.id), "From outside")
    stream.send_stop(call.provider_call_id)
    wait_until(lambda: Call.objects.get(id=call.id).state == "hangup-bot", timeout=15)
    assert streams.LEASE_METADATA_KEY not in Call.objects.get(id=call.id).metadata


def test_a_live_stream_answers_a_ping_from_another_process(media):
    call = live_call(media.twilio, mode="conversation")
    stream = open_stream(media, call)
    wait_attached(call)
    assert streams.ping_stream(str(call.id)) is not None
    stream.close()
    wait_until(lambda: not streams.has_live_stream(str(call.id)))
    assert streams.ping_stream(str(call.id), timeout=0.3) is None


# --------------------------------------------------------------------------------------------------
# From the carrier's webhook to the stream
# --------------------------------------------------------------------------------------------------


def test_an_inbound_call_is_answered_with_stream_twiml_whose_token_opens_the_stream(media, stream_server):
    greeting = "Thanks for calling the bakery"
    server = stream_server(config={"inboundPolicy": "open", "inboundGreeting": greeting})
    media.twilio.tunnel[PUBLIC_ORIGIN] = server.base_url
    leg = media.twilio.add_live_call(direction="inbound", from_="+15557770000", to=FROM_NUMBER)
    params = media.twilio.voice_params(leg, status="ringing")
    signature = media.twilio.sign(PUBLIC_URL, params)
    answer = media.twilio.post(PUBLIC_URL, params, signature=signature)
    assert answer.status_code == 200, answer.text
    stream_verb = ET.fromstring(answer.text).find("./Connect/Stream")  # noqa: S314 - our own TwiML
    assert stream_verb is not None and "<Say" not in answer.text  # the greeting is spoken over the stream
    assert stream_verb.get("url") == "wss://voice.example.test/voice/stream"
    token = stream_verb.find("./Parameter[@name='token']").get("value")
    # A replayed webhook gets the stored answer; a later one for the same call the same token.
    assert media.twilio.post(PUBLIC_URL, params, signature=signature).text == answer.text
    later = media.twilio.post(PUBLIC_URL, media.twilio.voice_params(leg, status="in-progress"))
    assert f'value="{token}"' in later.text

    stream = open_stream(server)
    stream.send_start(leg.sid, token)
    stream.wait_for(lambda: stream.marks(), what="the greeting's mark")
    assert len(stream.speech_frames(utterance_byte(greeting))) >= 18
    call = Call.objects.get(provider_call_id=leg.sid)
    assert call.initial_message_delivered is True
    assert list(call.transcript.values_list("speaker", "text")) == [("bot", greeting)]
    stream.close()


def test_without_usable_tts_the_call_keeps_twilios_own_voice(media, stream_server):
    server = stream_server(config={"inboundPolicy": "open", "inboundGreeting": "Hello", "tts": {"provider": "edge"}})
    media.twilio.tunnel[PUBLIC_ORIGIN] = server.base_url
    leg = media.twilio.add_live_call(direction="inbound", from_="+15557770000", to=FROM_NUMBER)
    answer = media.twilio.post(PUBLIC_URL, media.twilio.voice_params(leg, status="ringing"))
    assert answer.status_code == 200
    assert "<Say" in answer.text and "<Connect>" not in answer.text
