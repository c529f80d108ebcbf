"""Media-stream admission, refusals and disconnects against a real daphne (set-up in
tests/media_support.py): caps, start checks, one stream per call, the reconnect grace,
back-pressure, and the carrier webhook that opens a stream. Assertions are about frames and close
codes, never timing.
"""

from __future__ import annotations

import socket
import xml.etree.ElementTree as ET

import pytest
from django.conf import settings as django_settings
from websockets.exceptions import InvalidStatus

from calls import services
from calls.media import control as streams
from calls.models import Call, StreamLease
from tests.conftest import (
    wait_until,
)
from tests.fakes.twilio import (
    FROM_NUMBER,
    PUBLIC_ORIGIN,
    PUBLIC_URL,
)
from tests.fakes.twilio_media import TwilioMediaStream
from tests.media_support import (
    child_extra_env,
    live_call,
    open_stream,
    redis_settings,
    utterance_byte,
    wait_attached,
    ws_url,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


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
    """The embedded setup: in-memory channel layer, lease in a StreamLease row (DB)."""
    settings.REDIS_URL = ""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    server = start_daphne(media.document, extra_env={"REDIS_URL": "", "VOICECALL_CELERY_EAGER": "1",
                                                      "DJANGO_SECRET_KEY": django_settings.SECRET_KEY})
    greeting = "Hello from the embedded setup"
    call = live_call(media.twilio, mode="conversation", initial_message=greeting)
    stream = open_stream(server, call)
    stream.wait_for(lambda: stream.marks(), what="the greeting's mark")  # spoken inside daphne
    assert len(stream.speech_frames(utterance_byte(greeting))) >= 18
    lease = StreamLease.objects.get(call_id=call.id)
    assert lease.stream_sid == stream.stream_sid and streams.has_live_stream(str(call.id))
    duplicate = open_stream(server, call)
    assert duplicate.wait_closed() == 1008
    # Another process cannot reach an in-memory layer: reported, not silently dropped.
    monkeypatch.setattr(streams, "ACK_TIMEOUT_S", 0.5)
    with pytest.raises(services.ServiceError, match="did not acknowledge"):
        services.speak(str(call.id), "From outside")
    stream.send_stop(call.provider_call_id)
    wait_until(lambda: Call.objects.get(id=call.id).state == "hangup-bot", timeout=15)
    assert not StreamLease.objects.filter(call_id=call.id).exists()


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


def test_a_call_id_parameter_must_name_the_call_of_the_callsid_and_its_token(media):
    """With our callId <Parameter> the call is found by its key (and its group joined while the token
    is checked); the CallSid in start must still be that call's, and the token that call's."""
    server, fake_twilio = media, media.twilio
    call, other = live_call(fake_twilio, mode="conversation"), live_call(fake_twilio, mode="conversation")
    for call_sid, token in ((other.provider_call_id, streams.mint_stream_token(call)),  # someone else's CallSid
                            (call.provider_call_id, streams.mint_stream_token(other))):  # someone else's token
        stream = open_stream(server)
        stream.send_start(call_sid, token, extra_params={"callId": str(call.id)})
        assert stream.wait_closed() == 1008
    assert not streams.has_live_stream(str(call.id))
    stream = open_stream(server)
    stream.send_start(call.provider_call_id, streams.mint_stream_token(call), extra_params={"callId": str(call.id)})
    wait_attached(call)
    assert streams.ping_stream(str(call.id)) is not None  # in the call's group: reachable from any process
    stream.close()
