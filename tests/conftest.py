"""Shared fixtures: config overrides, eager Celery for in-process tests, real servers for the rest."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings
from hypothesis import settings as hypothesis_settings

from calls.config import VoiceCallConfig, config_from_dict, set_config
from tests.fakes.polling import wait_until  # noqa: F401 - re-exported for the tests
from voicecall_site.celery import app as celery_app

REPO = Path(__file__).resolve().parent.parent

pytest_plugins = ["tests.media_support"]

# Property tests run the same examples on every run (``make test`` must pass every time, not most
# times) and keep no example database in the checkout. ``HYPOTHESIS_PROFILE=explore`` draws fresh
# examples for a local bug hunt; a failure prints the example and the blob to reproduce it.
hypothesis_settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
hypothesis_settings.register_profile("explore", derandomize=False, database=None, print_blob=True)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _isolated_config() -> Iterator[None]:
    """Each test starts from the mock provider with no scripted callee (tests drive events)."""
    # A free port, not the default 3334: the CLI talks to a running server there when one answers.
    set_config(config_from_dict({"provider": "mock", "mock": {"autoAnswer": False},
                                 "serve": {"port": free_port()}}, env={}))
    yield
    set_config(None)


@pytest.fixture(autouse=True)
def _eager_celery(request) -> Iterator[None]:
    """In-process tests run tasks inline; tests marked ``real_worker`` talk to a real worker."""
    eager = "real_worker" not in request.keywords
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = eager
    yield
    celery_app.conf.task_always_eager = previous


@pytest.fixture
def configure() -> Callable[..., VoiceCallConfig]:
    """``configure({...})`` installs a voice-call config (inner form, camelCase) for this test."""

    def _configure(data: dict | None = None, **kwargs) -> VoiceCallConfig:
        document = {"provider": "mock", "mock": {"autoAnswer": False}, "serve": {"port": free_port()}}
        document.update(data or {})
        document.update(kwargs)
        config = config_from_dict(document, env={})
        set_config(config)
        return config

    return _configure


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port}")


def child_env(config_path: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a child process (daphne, Celery worker, CLI) that shares the test database."""
    db = settings.DATABASES["default"]
    env = {
        **os.environ,
        "VOICECALL_CONFIG": str(config_path),
        "PYTHONPATH": str(REPO),
        # Children of one test share a var/ of their own (filesystem broker, secret key), not the repo's.
        "VOICECALL_VAR_DIR": str(config_path.parent / "var"),
    }
    if db["ENGINE"] == "django.db.backends.sqlite3":
        env["DATABASE_URL"] = f"sqlite:///{db['NAME']}"
    else:
        env["DATABASE_URL"] = (
            f"postgres://{db.get('USER') or ''}{':' + db['PASSWORD'] if db.get('PASSWORD') else ''}"
            f"@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"
        )
    env.update(extra or {})
    return env


def write_config(tmp_path: Path, document: dict) -> Path:
    path = tmp_path / "voicecall.json5"
    path.write_text(json.dumps(document))
    return path


class RunningServer:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path):
        self.proc, self.port, self.log = proc, port, log

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def start_daphne(tmp_path) -> Iterator[Callable[..., RunningServer]]:
    """Start a real daphne server on a free port with the given voice-call config document."""
    servers: list[RunningServer] = []

    def _start(document: dict, *, port: int | None = None, extra_env: dict[str, str] | None = None) -> RunningServer:
        port = port or free_port()
        document = {**document, "serve": {**document.get("serve", {}), "port": port}}
        config_path = write_config(tmp_path, document)
        log = tmp_path / f"daphne-{port}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "voicecall_site.asgi:application"],
            cwd=REPO, env=child_env(config_path, extra_env), stdout=log.open("w"), stderr=subprocess.STDOUT,
        )
        server = RunningServer(proc, port, log)
        servers.append(server)
        wait_for_port(port, proc=proc)
        return server

    yield _start
    for server in servers:
        server.stop()


@pytest.fixture
def start_worker(tmp_path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start a real Celery worker (Redis broker when REDIS_URL is set, else the filesystem broker)."""
    workers: list[subprocess.Popen] = []

    def _start(config_path: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        log = tmp_path / f"worker-{len(workers)}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "voicecall_site", "worker", "--loglevel=INFO", "--pool=threads",
             "--concurrency=4", "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=REPO, env=child_env(config_path, extra_env), stdout=log.open("w"), stderr=subprocess.STDOUT,
        )
        workers.append(proc)
        return proc

    yield _start
    for proc in workers:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def run_cli(config_path: Path, *args: str, extra_env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
    """``manage.py voicecall ...`` in a child process, the way a user runs it."""
    return subprocess.run(
        [sys.executable, "manage.py", "voicecall", *args], cwd=REPO, env=child_env(config_path, extra_env),
        capture_output=True, text=True, timeout=timeout,
    )


class PrivateRedis:
    """A ``redis-server`` of this test's own on a free port, without persistence, restartable."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = (self.directory / f"redis-{self.starts}.log").open("w")
        self.starts += 1
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, proc=self.proc)

    def kill(self) -> None:
        """SIGKILL: connections drop, and everything Redis held (queues, unacked tasks) is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def private_redis(tmp_path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH: these tests restart a Redis server of their own")
    redis = PrivateRedis(tmp_path / "redis")
    redis.start()
    yield redis
    redis.stop()
