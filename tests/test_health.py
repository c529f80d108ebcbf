"""/readyz: database, channel layer and broker reachable, and not draining."""

from __future__ import annotations

import pytest

from calls.interfaces import health
from tests.conftest import free_port
from voicecall_site.celery import app as celery_app

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _own_var_dir(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    yield
    health.set_draining(False)


def test_ready_when_everything_answers(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"ready": True, "checks": {"database": "ok", "channelLayer": "ok",
                                                         "broker": health.EAGER_BROKER_NOTE}}


def test_liveness_stays_up_when_not_ready(client, settings, tmp_path):
    (tmp_path / "draining").touch()
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200


def test_drain_flag_file_makes_it_unready(client, tmp_path):
    (tmp_path / "draining").touch()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["failing"] == ["draining"]


def test_draining_process_flag_makes_it_unready(client):
    health.set_draining(True)
    assert client.get("/readyz").json()["failing"] == ["draining"]
    health.set_draining(False)
    assert client.get("/readyz").status_code == 200


def test_unreachable_broker_is_named(client):
    previous = celery_app.conf.task_always_eager, celery_app.conf.broker_url
    celery_app.conf.task_always_eager = False
    celery_app.conf.broker_url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    try:
        response = client.get("/readyz")
    finally:
        celery_app.conf.task_always_eager, celery_app.conf.broker_url = previous
    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["broker"]
    assert body["checks"]["database"] == "ok"
    assert "hunter2" not in response.content.decode()


def test_unreachable_channel_layer_is_named(client, settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                           "CONFIG": {"hosts": [f"redis://127.0.0.1:{free_port()}/0"]}}}
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["failing"] == ["channelLayer"]


def test_real_redis_broker_counts_as_ready(client):
    previous = celery_app.conf.task_always_eager, celery_app.conf.broker_url
    celery_app.conf.task_always_eager = False
    celery_app.conf.broker_url = "redis://127.0.0.1:6379/15"
    try:
        response = client.get("/readyz")
    finally:
        celery_app.conf.task_always_eager, celery_app.conf.broker_url = previous
    assert response.json()["checks"]["broker"] == "ok", response.json()


def test_redis_channel_layer_round_trip_counts_as_ready(client, settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                           "CONFIG": {"hosts": ["redis://127.0.0.1:6379/15"]}}}
    response = client.get("/readyz")
    assert response.json()["checks"]["channelLayer"] == "ok", response.json()


def test_metrics_are_prometheus_text_and_need_the_token_from_off_host(client, settings):
    from prometheus_client.parser import text_string_to_metric_families

    from calls import metrics
    from calls.interfaces.rpc_auth import rpc_token
    from tests.factories import AnsweredCallFactory

    AnsweredCallFactory(provider="mock")
    metrics.WEBHOOKS.labels("mock", "accepted").inc()
    local = client.get("/metrics")  # the test client is 127.0.0.1 with no forwarding header
    assert local.status_code == 200 and local["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(local.content.decode())}
    assert {"voicecall_calls", "voicecall_webhooks", "voicecall_live_streams", "voicecall_outbound_frame_gap_seconds",
            "voicecall_turn_latency_seconds"} <= set(families)
    calls = {(s.labels["state"], s.labels["provider"]): s.value for s in families["voicecall_calls"].samples}
    assert calls[("listening", "mock")] == 1
    accepted = [s for s in families["voicecall_webhooks"].samples
                if s.name == "voicecall_webhooks_total" and s.labels == {"provider": "mock", "outcome": "accepted"}]
    assert accepted and accepted[0].value >= 1

    forwarded = client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})  # through a tunnel
    assert forwarded.status_code == 401
    with_token = client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9",
                                                 "Authorization": f"Bearer {rpc_token()}"})
    assert with_token.status_code == 200


@pytest.mark.slow
def test_serve_with_two_workers_runs_two_daphnes_on_one_port(tmp_path):
    """``voicecall serve --workers 2``: two daphne processes on one port, each with its own
    ``SO_REUSEPORT`` listening socket; each answers its own health probe, and both take connections."""
    import subprocess
    import sys

    import requests

    from tests.conftest import REPO, child_env, wait_for_port, write_config

    port = free_port()
    config_path = write_config(tmp_path, {"provider": "mock", "serve": {"port": port}})
    var_dir = tmp_path / "var"
    proc = subprocess.Popen([sys.executable, "manage.py", "voicecall", "serve", "--no-worker", "--workers", "2"],
                            cwd=REPO, env=child_env(config_path, {"VOICECALL_VAR_DIR": str(var_dir)}),
                            stdout=(tmp_path / "serve.log").open("w"), stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc=proc)
        children = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(proc.pid)], capture_output=True,
                                  text=True, check=True).stdout.splitlines()
        daphnes = [line for line in children if "daphne --fd" in line]
        assert len(daphnes) == 2, children
        # A new connection each: SO_REUSEPORT hashes each one to a process's own listening socket,
        # so 40 connections all landing on one of two processes would be a 2**-39 chance.
        answers = [requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json() for _ in range(40)]
        daphne_pids = {int(line.split()[0]) for line in daphnes}
        assert all(a["ok"] for a in answers) and {a["pid"] for a in answers} == daphne_pids
        assert "with 2 daphne processes" in (tmp_path / "serve.log").read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_server_process_keeps_its_pooled_postgresql_session_across_requests(start_daphne):
    """Under ASGI every request runs in a thread of its own; without the pool each one would open and
    close a PostgreSQL session (settings.py). The server's sessions must outlive its requests."""
    import requests
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("the connection pool is PostgreSQL's (set DATABASE_URL to a PostgreSQL database)")
    server = start_daphne({"provider": "mock"})

    def server_sessions() -> set[int]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                           "AND application_name = 'voicecall-web'")
            return {pid for (pid,) in cursor.fetchall()}

    def ready() -> None:
        answer = requests.get(f"{server.base_url}/readyz", timeout=10)
        assert answer.status_code == 200, answer.text

    ready()
    first = server_sessions()
    for _ in range(20):
        ready()
    assert first, "the server held no PostgreSQL session between requests"
    assert first <= server_sessions()
