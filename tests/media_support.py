"""Shared set-up of the media-stream tests (a pytest plugin, loaded by tests/conftest.py): a real
daphne process running the consumer against fake Twilio and fake OpenAI TTS/STT servers, sharing the
database and a Redis channel layer with the test process, and helpers to open streams and calls."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone

from calls.media import control as streams
from calls.models import Call
from providers.audio import pcm16_to_mulaw
from tests.conftest import (
    REPO,
    RunningServer,
    child_env,
    free_port,
    wait_for_port,
    wait_until,
    write_config,
)
from tests.factories import AnsweredCallFactory
from tests.fakes.openai import FakeOpenAI, level_for, running_fake_openai
from tests.fakes.twilio import (
    FakeTwilio,
    running_fake_twilio,
    twilio_config,
)
from tests.fakes.twilio_media import TwilioMediaStream

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


def launch_daphne(directory: Path, document: dict, port: int | None = None) -> RunningServer:
    """conftest's ``start_daphne``, for a server shared by the tests of this module."""
    port = port or free_port()
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


def carrier_section(carrier: str, fake) -> dict:
    """The config keys that point a Telnyx or Plivo config at its local fake."""
    if carrier == "telnyx":
        return {"telnyx": {"apiKey": fake.api_key, "connectionId": fake.connection_id,
                           "publicKey": fake.public_key, "apiBaseUrl": fake.base_url}}
    return {"plivo": {"authId": fake.auth_id, "authToken": fake.auth_token, "apiBaseUrl": fake.base_url}}


def running_carrier(carrier: str):
    """The local fake of a carrier, as a context manager."""
    from tests.fakes.plivo import FakePlivo
    from tests.fakes.telnyx import FakeTelnyx

    if carrier == "twilio":
        return running_fake_twilio()
    return (FakeTelnyx if carrier == "telnyx" else FakePlivo).running()


def launch_carrier_daphne(carrier: str, fake, directory: Path, document: dict, port: int) -> RunningServer:
    """A daphne for this carrier's config; Telnyx's fake gets the connection's webhook URL."""
    if carrier == "telnyx":
        fake.webhook_url = document["publicUrl"]
    return launch_daphne(directory, document, port=port)
