"""Outbound placement through Celery: calls placed per second and queue latency, against a no-op task.

    .venv/bin/python bench/placement_bench.py [--calls 200] [--sequential 30] [--passes 2]

Needs PostgreSQL and Redis on 127.0.0.1. The script creates a throwaway database (``vc_bench_<pid>``
via ``--pg-url``, dropped at the end), uses one Redis database of its own as the Celery broker
(``--redis-url``, default db 10, flushed at start and end) and starts real Celery workers
(``--pool=threads``, as ``tests/conftest.py`` does) one configuration after another.

What is measured
----------------
* **ours**: ``services.initiate_call`` in this process (validation, capacity check under the
  advisory lock, the ``initiated`` row; on commit ``place_call`` is queued) → the worker runs
  ``place_call`` (dial claim committed, Twilio SDK ``Calls.json`` create, carrier id stored) → the
  fake Twilio REST server of ``tests/fakes/twilio.py``, running in this process with a passive
  callee (its call driver is switched off: created calls just sit, no callbacks). Latency = from the
  commit of ``initiate_call`` (an ``on_commit`` hook registered before the service's own) to the
  fake receiving the create-call request, on one clock.
* **baseline**: a no-op Celery task (``bench.noop``, registered only in the bench's worker app) whose
  one action is to tell this process it ran -- one HTTP POST to a local listener, observed exactly as
  the fake observes a create-call request. Latency = from just before ``send_task`` to that POST.
  So the ratio isolates what placement adds on top of the broker + worker round trip.

Three shapes, interleaved pass by pass (ours, baseline, ours, baseline):

* **sequential**: one at a time (the next is sent once the previous arrived): latency with an idle
  queue, p50/p99 of ``--sequential`` items;
* **burst**: ``--calls`` submitted back to back from one thread; throughput = items / (last arrival
  - first submission); latency p50/p99 includes the time spent waiting in the queue;
* **drain**: ``--calls`` queued while the worker's consumer is paused (Celery remote control
  ``cancel_consumer``), then released (``add_consumer``); throughput = (items - 1) / (last arrival -
  first arrival): the worker side alone, whatever the submitter's speed.

Worker configurations: 1 thread, 4 threads, and 4 threads reusing database connections across tasks
(``CELERY_DB_REUSE_MAX`` set in the bench's worker app only: by default Celery's Django fixup closes
the connection before and after every task, so each task connects anew). The table also gives the
worker's CPU per task (``/proc``) and the PostgreSQL sessions opened per task
(``pg_stat_database``), both from the drain. Finishes by itself (``TIME_BUDGET_S``); prints Markdown
tables for bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from bench_support import admin_connect, cpu_model, percentile, process_cpu_s, release_throwaway_stores

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TIME_BUDGET_S = 210.0  # hard stop, inside the 4 minutes a bench may take on 2 cores
NOOP_TASK = "bench.noop"
WORKER_NODE = "placement-bench"
QUEUE = "celery"  # the default queue place_call goes to
ARRIVAL_TIMEOUT_S = 60.0
WORKER_CONFIGS = (  # (label, threads, database connections reused across tasks)
    ("1 thread", 1, False),
    ("4 threads", 4, False),
    ("4 threads, connections reused", 4, True),
)
DB_REUSE_ENV = "PLACEMENT_BENCH_DB_REUSE_MAX"
DB_REUSE_MAX = 1000


# --------------------------------------------------------------------------------------------------
# The worker side: ``celery -A placement_bench:worker_app`` (bench/ on PYTHONPATH)
# --------------------------------------------------------------------------------------------------

_sessions = threading.local()


def _noop(url: str) -> None:
    """The baseline task: report "I ran" to the bench, over HTTP with a kept-alive session, as the
    Twilio SDK reaches the fake."""
    import requests

    session = getattr(_sessions, "session", None)
    if session is None:
        session = _sessions.session = requests.Session()
    session.post(url, timeout=10)


def __getattr__(name: str) -> Any:
    """``worker_app``: the project's Celery app with the baseline task added (PEP 562, so importing
    this module for its functions does not touch Celery)."""
    if name != "worker_app":
        raise AttributeError(name)
    from voicecall_site.celery import app

    if NOOP_TASK not in app.tasks:
        app.task(name=NOOP_TASK, ignore_result=True)(_noop)
    reuse = os.environ.get(DB_REUSE_ENV)
    if reuse:
        # Celery's Django fixup closes the thread's database connection before and after every task
        # unless CELERY_DB_REUSE_MAX is set; then it closes only every that-many tasks.
        app.conf["CELERY_DB_REUSE_MAX"] = int(reuse)
    return app


# --------------------------------------------------------------------------------------------------
# Arrival points: the passive fake Twilio and the no-op listener
# --------------------------------------------------------------------------------------------------


class Arrivals:
    """When each key arrived (``time.perf_counter`` of this process)."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self._cond = threading.Condition()

    def mark(self, key: str) -> None:
        now = time.perf_counter()
        with self._cond:
            self.times.setdefault(key, now)
            self._cond.notify_all()

    def wait(self, keys: list[str], timeout: float = ARRIVAL_TIMEOUT_S) -> list[float]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                missing = [k for k in keys if k not in self.times]
                if not missing:
                    return [self.times[k] for k in keys]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{len(missing)} of {len(keys)} never arrived")
                self._cond.wait(remaining)


def passive_fake_twilio(arrivals: Arrivals):
    """The fake Twilio of tests/fakes with its callee switched off: a create is answered 201 as usual
    and recorded (by our ``callId`` in the call's ``Url``), then the call just sits."""
    from tests.fakes.twilio import FakeTwilio

    class PassiveFakeTwilio(FakeTwilio):
        def _create(self, record):
            arrivals.mark(parse_qs(urlsplit(record.get("Url") or "").query).get("callId", [""])[0])
            return super()._create(record)

        def _drive_outbound(self, call) -> None:
            return None  # no status callbacks, no TwiML fetch: nothing listens in this bench

    return PassiveFakeTwilio().start()


class NoopListener:
    """``POST /noop/<key>`` marks ``key`` as arrived."""

    def __init__(self, arrivals: Arrivals):
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                arrivals.mark(self.path.rsplit("/", 1)[-1])
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def url(self, key: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/noop/{key}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------


@dataclass
class Shape:
    """One sequential or burst pass of one task kind."""

    latencies: list[float]
    elapsed: float  # first submission -> last arrival
    submit_s: float  # time the submitting loop took
    worker_cpu_s: float
    rate_override: float | None = None
    db_sessions: int = 0

    @property
    def rate(self) -> float:
        return self.rate_override if self.rate_override is not None else len(self.latencies) / self.elapsed

    def p(self, q: float) -> float:
        return percentile(self.latencies, q)


@dataclass
class ConfigResult:
    label: str
    best: dict[tuple[str, str], Shape] = field(default_factory=dict)  # (kind, shape) -> best pass


def _better(shape: str, measured: Shape, best: Shape) -> bool:
    """Sequential passes are ranked by p50 latency, bursts by throughput."""
    return measured.p(50) < best.p(50) if shape == "sequential" else measured.rate > best.rate


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.started = time.monotonic()
        self.tmp = Path(tempfile.mkdtemp(prefix="placement-bench-"))
        self.db_name = f"vc_bench_{os.getpid()}"
        self.database_url = urlsplit(args.pg_url)._replace(path="/" + self.db_name).geturl()
        self.arrivals = Arrivals()
        self.db_created = False
        self.admin = None
        self.fake = None
        self.listener: NoopListener | None = None
        self.worker: subprocess.Popen | None = None
        self.worker_log = None
        self.submitted_calls: list[str] = []
        self.load_before = os.getloadavg()

    def left(self) -> float:
        return TIME_BUDGET_S - (time.monotonic() - self.started)

    # --- set-up ----------------------------------------------------------------------------------
    def setup(self) -> None:
        import redis

        from tests.fakes.twilio import twilio_config

        self.admin = admin_connect(self.args.pg_url)
        self.admin.execute(f'CREATE DATABASE "{self.db_name}"')
        self.db_created = True
        redis.Redis.from_url(self.args.redis_url).flushdb()
        self.fake = passive_fake_twilio(self.arrivals)
        self.listener = NoopListener(self.arrivals)
        document = twilio_config(self.fake, maxConcurrentCalls=100000)
        config_path = self.tmp / "voicecall.json"
        config_path.write_text(json.dumps(document))
        os.environ.update({
            "DATABASE_URL": self.database_url, "REDIS_URL": self.args.redis_url,
            "DJANGO_SECRET_KEY": "placement-bench-secret-key-" + "x" * 30,
            "VOICECALL_VAR_DIR": str(self.tmp / "var"), "VOICECALL_CONFIG": str(config_path),
            "DJANGO_SETTINGS_MODULE": "voicecall_site.settings", "VOICECALL_LOG_LEVEL": "WARNING",
        })
        os.environ.pop("VOICECALL_CELERY_EAGER", None)
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(REPO), str(REPO / "bench"), os.environ.get("PYTHONPATH")]))}
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=REPO, env=self.env,
                       check=True)
        import django

        django.setup()

    def start_worker(self, threads: int, reuse_connections: bool) -> None:
        env = dict(self.env)
        if reuse_connections:
            env[DB_REUSE_ENV] = str(DB_REUSE_MAX)
        self.worker_log = (self.tmp / f"worker-{threads}-{int(reuse_connections)}.log").open("w")
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "placement_bench:worker_app", "worker", "--loglevel=WARNING",
             "--pool=threads", f"--concurrency={threads}", "--without-gossip", "--without-mingle",
             "--without-heartbeat", "-n", f"{WORKER_NODE}@%h"],
            cwd=REPO, env=env, stdout=self.worker_log, stderr=subprocess.STDOUT,
        )
        key = f"ready-{uuid.uuid4().hex}"
        self.send_noop(key)
        try:
            self.arrivals.wait([key], timeout=60)
        except TimeoutError:
            raise RuntimeError(f"worker did not start; see {self.worker_log.name}") from None

    def stop_worker(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            self.worker.terminate()
            try:
                self.worker.wait(20)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait(5)
        self.worker = None
        if self.worker_log is not None:
            self.worker_log.close()
            self.worker_log = None

    def teardown(self) -> None:
        self.stop_worker()
        if self.listener is not None:
            self.listener.stop()
        if self.fake is not None:
            self.fake.stop()
        release_throwaway_stores(admin=self.admin, db_name=self.db_name, db_created=self.db_created,
                                 redis_url=self.args.redis_url)
        if self.args.keep_logs:
            print(f"logs kept in {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # --- submitting ------------------------------------------------------------------------------
    def send_noop(self, key: str) -> float:
        from voicecall_site.celery import app

        started = time.perf_counter()
        app.send_task(NOOP_TASK, args=[self.listener.url(key)])
        return started

    def place(self) -> tuple[str, float]:
        """``initiate_call``; returns (call id, the moment its transaction committed)."""
        from django.db import transaction

        from calls import services

        committed: list[float] = []
        with transaction.atomic():
            # Registered first, so it runs at the commit, before the service's own hook queues place_call.
            transaction.on_commit(lambda: committed.append(time.perf_counter()))
            call = services.initiate_call(to="+15550002000", message="Placement bench", mode="notify")
        self.submitted_calls.append(str(call.id))
        return str(call.id), committed[0]

    def submit(self, kind: str) -> tuple[str, float]:
        if kind == "placement":
            return self.place()
        key = uuid.uuid4().hex
        return key, self.send_noop(key)

    def sequential(self, kind: str, count: int) -> Shape:
        cpu0, latencies = process_cpu_s(self.worker.pid), []
        first = time.perf_counter()
        for _ in range(count):
            key, started = self.submit(kind)
            latencies.append(self.arrivals.wait([key])[0] - started)
        elapsed = time.perf_counter() - first
        return Shape(latencies, elapsed, elapsed, process_cpu_s(self.worker.pid) - cpu0)

    def burst(self, kind: str, count: int) -> Shape:
        cpu0 = process_cpu_s(self.worker.pid)
        submitted = [self.submit(kind) for _ in range(count)]
        submit_s = time.perf_counter() - submitted[0][1]
        arrived = self.arrivals.wait([key for key, _ in submitted])
        latencies = [a - s for (_, s), a in zip(submitted, arrived, strict=True)]
        return Shape(latencies, max(arrived) - submitted[0][1], submit_s, process_cpu_s(self.worker.pid) - cpu0)

    def _consumer(self, command: str) -> None:
        """Pause (``cancel_consumer``) or resume (``add_consumer``) the worker's queue consumer, via
        Celery remote control, and wait for the worker's acknowledgement."""
        import socket

        from voicecall_site.celery import app

        node = f"{WORKER_NODE}@{socket.gethostname()}"
        replies = getattr(app.control, command)(QUEUE, destination=[node], reply=True, timeout=10)
        if not replies:
            raise RuntimeError(f"worker did not acknowledge {command}")

    def drain(self, kind: str, count: int) -> Shape:
        """``count`` items queued while the worker's consumer is paused, then released at once:
        throughput = (count - 1) / (last arrival - first arrival), the worker side alone."""
        self._consumer("cancel_consumer")
        try:
            submitted = [self.submit(kind) for _ in range(count)]
        finally:
            sessions0 = self.db_sessions()
            cpu0 = process_cpu_s(self.worker.pid)
            released = time.perf_counter()
            self._consumer("add_consumer")
        arrived = self.arrivals.wait([key for key, _ in submitted])
        first = min(arrived)
        return Shape([a - released for a in arrived], max(arrived) - first, released - submitted[0][1],
                     process_cpu_s(self.worker.pid) - cpu0, rate_override=(count - 1) / (max(arrived) - first),
                     db_sessions=self.db_sessions() - sessions0)

    def db_sessions(self) -> int:
        """Sessions ever opened to the throwaway database (live ones are counted within ~1 s)."""
        row = self.admin.execute("SELECT sessions FROM pg_stat_database WHERE datname = %s",
                                 [self.db_name]).fetchone()
        return int(row[0]) if row else 0

    def run_config(self, label: str, threads: int, reuse_connections: bool) -> ConfigResult:
        result = ConfigResult(label)
        self.start_worker(threads, reuse_connections)
        try:
            for kind in ("placement", "noop"):  # warm-up: worker threads, connections, SDK client
                self.burst(kind, 2 * threads)
            for _ in range(self.args.passes):
                for shape, count in (("sequential", self.args.sequential), ("burst", self.args.calls),
                                     ("drain", self.args.calls)):
                    for kind in ("placement", "noop"):
                        measured = getattr(self, shape)(kind, count)
                        best = result.best.get((kind, shape))
                        if best is None or _better(shape, measured, best):
                            result.best[(kind, shape)] = measured
        finally:
            self.stop_worker()
        return result

    def measure(self) -> tuple[list[ConfigResult], list[str]]:
        results, skipped = [], []
        for label, threads, reuse_connections in WORKER_CONFIGS:
            if self.left() < 45:
                skipped.append(label)
                continue
            results.append(self.run_config(label, threads, reuse_connections))
        return results, skipped

    def checks(self) -> dict:
        from calls.models import Call

        creates = self.fake.creates()
        return {
            "submitted": len(self.submitted_calls),
            "placed": Call.objects.filter(id__in=self.submitted_calls, provider_call_id__isnull=False).count(),
            "creates": len(creates),
            "distinct": len({r.get("Url") for r in creates}),
            "failed": Call.objects.filter(state="failed").count(),
        }


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def report(bench: Bench, results: list[ConfigResult], skipped: list[str]) -> None:
    import celery
    import django
    import redis

    pg = bench.admin.execute("SHOW server_version").fetchone()[0].split(" ")[0]
    client = redis.Redis.from_url(bench.args.redis_url)
    try:
        rv = client.info("server")["redis_version"]
    finally:
        client.close()
    load = " / ".join(f"{x:.1f}" for x in bench.load_before)
    print(f"\nMachine: nproc={os.cpu_count()}, {cpu_model()}, Python {platform.python_version()}, "
          f"Django {django.get_version()}, Celery {celery.__version__} (threads pool, Redis broker), "
          f"PostgreSQL {pg}, Redis {rv}; load average at start {load}. Worker, bench process (submitter, "
          "fake Twilio, listener), PostgreSQL and Redis share these cores.\n")
    print(f"Placement = `initiate_call` commit -> `place_call` on the worker -> fake Twilio receives "
          f"`Calls.json`; no-op = `send_task` -> worker -> one POST back. Best of {bench.args.passes} passes; "
          f"sequential: {bench.args.sequential} one at a time; burst: {bench.args.calls} back to back; "
          f"drain: {bench.args.calls} queued while the worker's consumer is paused, then released.\n")
    print("| worker | task | sequential p50 / p99 ms | burst per s (submitted per s) | burst p50 / p99 ms "
          "| drain per s | worker CPU ms per task | DB sessions per task "
          "| placement / no-op: drain per s, sequential p50 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for result in results:
        for kind in ("placement", "noop"):
            seq, burst, drain = (result.best[(kind, shape)] for shape in ("sequential", "burst", "drain"))
            ratio = ""
            if kind == "placement":
                base_seq, base_drain = result.best[("noop", "sequential")], result.best[("noop", "drain")]
                ratio = f"{drain.rate / base_drain.rate:.2f}, {seq.p(50) / base_seq.p(50):.2f}"
            cpu = 1000 * drain.worker_cpu_s / len(drain.latencies)
            name = "placement" if kind == "placement" else "no-op (baseline)"
            print(f"| {result.label} | {name} | {ms(seq.p(50))} / {ms(seq.p(99))} "
                  f"| {burst.rate:,.0f} ({len(burst.latencies) / burst.submit_s:,.0f}) "
                  f"| {ms(burst.p(50))} / {ms(burst.p(99))} | {drain.rate:,.0f} | {cpu:.1f} "
                  f"| {drain.db_sessions / len(drain.latencies):.2f} | {ratio} |")
    checks = bench.checks()
    fine = checks["submitted"] == checks["placed"] == checks["creates"] == checks["distinct"] and not checks["failed"]
    print(f"\nChecks: {checks['submitted']} calls initiated, {checks['placed']} got a carrier id, the fake "
          f"received {checks['creates']} create requests for {checks['distinct']} distinct calls, "
          f"{checks['failed']} failed ({'consistent' if fine else 'INCONSISTENT'}).")
    for label in skipped:
        print(f"(skipped for the time budget: worker {label})")
    print(f"\ntotal bench time {time.monotonic() - bench.started:.0f} s")
    if not fine:
        raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="items per burst")
    parser.add_argument("--sequential", type=int, default=30, help="items sent one at a time")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
                        help="admin connection used to create and drop the throwaway database")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/10")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args()
    bench = Bench(args)
    try:
        bench.setup()
        results, skipped = bench.measure()
        report(bench, results, skipped)
    finally:
        bench.teardown()


if __name__ == "__main__":
    main()
