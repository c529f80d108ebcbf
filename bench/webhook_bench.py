"""Webhook throughput and latency: signed Twilio status callbacks through real daphne into PostgreSQL.

    .venv/bin/python bench/webhook_bench.py [--clients 1,16,64] [--requests 600] [--passes 2] [--unpooled]

Needs PostgreSQL and Redis on 127.0.0.1. The script creates a throwaway database
(``vc_bench_<pid>`` via ``--pg-url``, dropped at the end) and uses one Redis database of its own
(``--redis-url``, default db 9, flushed at start and end) as Celery broker and call-update bus, as a
scaled-out deployment does (``DATABASE_URL`` + ``REDIS_URL``). No Celery worker runs: tasks queued by
the webhooks (``enforce_max_duration``) just sit in the broker.

What is measured
----------------
* **ours**: ``POST /voice/webhook?callId=..&type=status``, a Twilio status callback (protocols.md §2
  "Status callbacks": the voice parameters plus ``CallbackSource``, ``SequenceNumber``, ``Timestamp``)
  signed with ``X-Twilio-Signature`` over the public URL (protocols.md §1, the signer of
  ``tests/fakes/twilio.py``) with ``publicUrl`` configured, so every request passes the real
  verification. Each request is distinct: calls created up front (1,000 of them, in ``initiated``) get
  callbacks in turn, each with the call's next ``SequenceNumber`` and ``CallStatus`` alternating
  ``ringing`` / ``in-progress``, so every one is a new ledger event (``CallEvent``) and a new replay
  receipt, never a replay. The run checks that at the end (row counts against 200 answers).
* **baseline**: ``GET /healthz``, a trivial Django view on the same server (same middleware, same
  ASGI gate, no database), measured in the same run, interleaved pass by pass with the webhook.

Topologies: one daphne process on its port; then an asyncio round-robin TCP balancer (``--proxy``
mode of this script, a child process: each accepted connection goes to the next backend in turn,
bytes are piped unchanged, like HAProxy ``mode tcp`` / ``balance roundrobin``) in front of 1 daphne
and in front of 4 daphne processes, to compare 1 vs 4 processes on the same path.

Load generator: an asyncio HTTP/1.1 keep-alive client written here (one connection per simulated
client, closed loop: the next request goes out when the previous answer is in), requests pre-built
and pre-signed before each timed pass. Each client presents its own ``X-Forwarded-For`` address (as
Twilio's edge pool does through a tunnel or proxy) and the config trusts forwarding headers from
127.0.0.1 (``webhookSecurity.trustForwardingHeaders`` + ``trustedProxyIPs``), so the per-client
in-flight cap (8) applies per simulated client as in production. Everything -- clients, balancer,
daphne, PostgreSQL, Redis -- shares this machine's cores.

Also reported per best pass, from /proc and ``pg_stat_database``: the machine's busy share, CPU ms
per request in daphne (+ balancer), PostgreSQL (the whole server, so other work on the machine shows
up there) and the load generator, and PostgreSQL sessions opened per request.

The configured server processes borrow PostgreSQL connections from Django's psycopg pool
(``voicecall_site/asgi.py`` turns it on for ASGI processes). ``--unpooled`` adds a second set of
daphne processes (direct, 1 and 4 behind their own balancers) with ``VOICECALL_DB_POOL=0`` -- a new
PostgreSQL session per request, as before the pool -- measured interleaved with the configured set.

Each cell is the best pass (highest requests/s) of ``--passes`` after a warm-up; latency percentiles
are from that pass. Finishes by itself (``TIME_BUDGET_S``); prints Markdown tables for bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from bench_support import (
    CpuMeter,
    admin_connect,
    cpu_model,
    free_port,
    release_throwaway_stores,
    stop_process,
    wait_for_port,
)
from webhook_load import PassResult, StatusCallbacks, client_ip, healthz_requests, run_pass

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TIME_BUDGET_S = 215.0  # hard stop, inside the 4 minutes a bench may take on 2 cores
CALLS = 1000  # calls that receive the callbacks, in turn
WARMUP_REQUESTS = 200
SHARED_IP_CLIENTS = 64  # the one-source-address check (see `shared_ip_check`)


# --------------------------------------------------------------------------------------------------
# The balancer (runs as a child process: ``webhook_bench.py --proxy PORT BACKEND_PORT,...``)
# --------------------------------------------------------------------------------------------------


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def run_proxy(port: int, backends: list[int]) -> None:
    """Round-robin TCP balancer on 127.0.0.1:``port``: connection k goes to ``backends[k % n]``."""
    turn = itertools.cycle(backends)

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            backend_reader, backend_writer = await asyncio.open_connection("127.0.0.1", next(turn))
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_pipe(client_reader, backend_writer), _pipe(backend_reader, client_writer))

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


# --------------------------------------------------------------------------------------------------
# Servers and the throwaway database
# --------------------------------------------------------------------------------------------------


def server_versions(pg_url: str, redis_url: str) -> tuple[str, str]:
    import redis

    with admin_connect(pg_url) as conn:
        pg = conn.execute("SHOW server_version").fetchone()[0].split(" ")[0]
    client = redis.Redis.from_url(redis_url)
    try:
        rv = client.info("server")["redis_version"]
    finally:
        client.close()
    return pg, rv



@dataclass(frozen=True)
class ServerSet:
    """Ports of one configuration: a daphne on its own, and the two balancers."""

    direct: int
    proxy1: int
    proxy4: int


@dataclass(frozen=True)
class Target:
    """One thing measured in a pass: ``kind`` of request sent to ``port``."""

    label: str
    port: int
    kind: str  # "healthz" | "webhook"


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.started = time.monotonic()
        self.tmp = Path(tempfile.mkdtemp(prefix="webhook-bench-"))
        self.db_name = f"vc_bench_{os.getpid()}"
        parts = urlsplit(args.pg_url)
        self.database_url = parts._replace(path="/" + self.db_name).geturl()
        self.procs: list[subprocess.Popen] = []
        self.logs: list = []
        self.db_created = False
        self.admin = None
        self.fake = None
        self.webhook_ok = 0
        self.non_200 = 0
        self.load_before = os.getloadavg()

    def left(self) -> float:
        return TIME_BUDGET_S - (time.monotonic() - self.started)

    # --- set-up ----------------------------------------------------------------------------------
    def setup(self) -> None:
        import redis

        from tests.fakes.twilio import FakeTwilio, twilio_config

        self.admin = admin_connect(self.args.pg_url)
        self.admin.execute(f'CREATE DATABASE "{self.db_name}"')
        self.db_created = True
        redis.Redis.from_url(self.args.redis_url).flushdb()
        # The fake only stands behind twilio.apiBaseUrl so that nothing could ever reach the real API;
        # the webhook path makes no carrier request.
        self.fake = FakeTwilio().start()
        document = twilio_config(
            self.fake,
            maxConcurrentCalls=100000,
            webhookSecurity={"trustForwardingHeaders": True, "trustedProxyIPs": ["127.0.0.1"]},
        )
        self.public_url = document["publicUrl"]
        config_path = self.tmp / "voicecall.json"
        config_path.write_text(json.dumps(document))
        os.environ.update({
            "DATABASE_URL": self.database_url, "REDIS_URL": self.args.redis_url,
            "DJANGO_SECRET_KEY": "webhook-bench-secret-key-" + "x" * 30,
            "VOICECALL_VAR_DIR": str(self.tmp / "var"), "VOICECALL_CONFIG": str(config_path),
            "DJANGO_SETTINGS_MODULE": "voicecall_site.settings", "VOICECALL_LOG_LEVEL": "WARNING",
        })
        os.environ.pop("VOICECALL_CELERY_EAGER", None)
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=REPO, env=self.env,
                       check=True)
        import django

        django.setup()
        self.calls = self._create_calls(document["fromNumber"])
        self.callbacks = StatusCallbacks(
            self.calls, account_sid=self.fake.account_sid, auth_token=self.fake.auth_token,
            public_url=self.public_url, from_number=document["fromNumber"], to_number="+15550002000",
        )
        self.configured = self._server_set("configured", self.env)
        self.pooled = None
        if self.args.unpooled:
            self.pooled = self._server_set("unpooled", {**self.env, "VOICECALL_DB_POOL": "0"})
        self.meter = CpuMeter([proc.pid for proc in self.procs], self.db_sessions)

    def _server_set(self, name: str, env: dict[str, str]) -> ServerSet:
        """4 daphne processes, a balancer in front of the first and one in front of all four."""
        ports = [free_port() for _ in range(4)]
        proxy1, proxy4 = free_port(), free_port()
        script = str(Path(__file__).resolve())
        listening = [
            (self._spawn(f"{name}-daphne-{port}", [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                                                   "voicecall_site.asgi:application"], env), port)
            for port in ports
        ]
        listening.append((self._spawn(f"{name}-proxy-1", [sys.executable, script, "--proxy", str(proxy1),
                                                          str(ports[0])]), proxy1))
        listening.append((self._spawn(f"{name}-proxy-4", [sys.executable, script, "--proxy", str(proxy4),
                                                          ",".join(map(str, ports))]), proxy4))
        for proc, port in listening:
            wait_for_port(port, proc)
        return ServerSet(direct=ports[0], proxy1=proxy1, proxy4=proxy4)

    def db_sessions(self) -> int:
        """Sessions ever opened to the throwaway database (pg_stat_database; live ones within ~1 s)."""
        row = self.admin.execute("SELECT sessions FROM pg_stat_database WHERE datname = %s",
                                 [self.db_name]).fetchone()
        return int(row[0]) if row else 0

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = (self.tmp / f"{name}.log").open("w")
        self.logs.append(log)
        proc = subprocess.Popen(argv, cwd=REPO, env=env or self.env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def _create_calls(self, from_number: str) -> list[tuple[str, str]]:
        from calls.models import Call

        calls = [
            Call(provider="twilio", provider_call_id="CA" + uuid.uuid4().hex, direction="outbound", mode="notify",
                 state="initiated", from_number=from_number, to_number="+15550002000",
                 initial_message="Bench call")
            for _ in range(CALLS)
        ]
        Call.objects.bulk_create(calls)
        return [(str(c.id), c.provider_call_id) for c in calls]

    def teardown(self) -> None:
        for proc in reversed(self.procs):
            stop_process(proc)
        for log in self.logs:
            log.close()
        if self.fake is not None:
            self.fake.stop()
        release_throwaway_stores(admin=self.admin, db_name=self.db_name, db_created=self.db_created,
                                 redis_url=self.args.redis_url)
        if self.args.keep_logs:
            print(f"logs kept in {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # --- measuring -------------------------------------------------------------------------------
    async def best_of(self, targets: list[Target], clients: int, count: int) -> dict[str, PassResult]:
        """Best pass (highest req/s) per target; targets take turns within every pass."""
        best: dict[str, PassResult] = {}
        for _ in range(self.args.passes):
            for target in targets:
                requests = healthz_requests(count) if target.kind == "healthz" else self.callbacks.take(count)
                result = await run_pass(target.port, target.kind, requests, clients, meter=self.meter)
                self.record(result)
                if target.label not in best or result.rps > best[target.label].rps:
                    best[target.label] = result
        return best

    def record(self, result: PassResult) -> None:
        if result.kind == "webhook":
            self.webhook_ok += result.statuses.get(200, 0)
        self.non_200 += sum(n for status, n in result.statuses.items() if status != 200)

    async def warm_up(self, port: int, clients: int) -> None:
        for kind in ("healthz", "webhook"):
            requests = healthz_requests(WARMUP_REQUESTS) if kind == "healthz" else self.callbacks.take(WARMUP_REQUESTS)
            self.record(await run_pass(port, kind, requests, clients))

    def count_for(self, clients: int) -> int:
        return self.args.requests if clients > 1 else max(100, self.args.requests // 3)

    async def measure(self) -> dict:
        levels = [int(c) for c in self.args.clients.split(",")]
        results: dict = {"direct": {}, "balanced": {}, "skipped": []}
        direct = self.configured.direct
        targets = [Target("healthz", direct, "healthz"), Target("webhook", direct, "webhook")]
        await self.warm_up(direct, 16)
        if self.pooled:
            targets.append(Target("pooled", self.pooled.direct, "webhook"))
            await self.warm_up(self.pooled.direct, 16)
        for clients in levels:
            if self.left() < 60:
                results["skipped"].append(f"direct, {clients} clients")
                continue
            results["direct"][clients] = await self.best_of(targets, clients, self.count_for(clients))
        # 1 vs 4 processes behind the same balancer; the 4 backends are warmed through it first.
        balanced = [Target(f"{kind}-{n}", port, kind)
                    for n, port in ((1, self.configured.proxy1), (4, self.configured.proxy4))
                    for kind in ("healthz", "webhook")]
        await self.warm_up(self.configured.proxy4, 16)
        if self.pooled:
            balanced += [Target("pooled-1", self.pooled.proxy1, "webhook"),
                         Target("pooled-4", self.pooled.proxy4, "webhook")]
            await self.warm_up(self.pooled.proxy4, 16)
        for clients in [c for c in levels if c >= 4]:
            if self.left() < 20 + 10 * len(balanced):
                results["skipped"].append(f"balanced, {clients} clients")
                continue
            results["balanced"][clients] = await self.best_of(balanced, clients, self.count_for(clients))
        if self.left() > 10:
            results["shared_ip"] = await self.shared_ip_check(direct)
        results["checks"] = await asyncio.to_thread(self.checks)
        return results

    async def shared_ip_check(self, port: int) -> PassResult:
        """All clients behind one source address: the per-client in-flight cap (8) answers 429."""
        result = await run_pass(port, "webhook", self.callbacks.take(self.count_for(SHARED_IP_CLIENTS) // 2),
                                SHARED_IP_CLIENTS, ips=[client_ip(1)])
        self.webhook_ok += result.statuses.get(200, 0)
        return result

    def checks(self) -> dict:
        from calls.models import Call, CallEvent, WebhookReceipt

        return {
            "sent": self.callbacks.made, "ok": self.webhook_ok, "non_200": self.non_200,
            "events": CallEvent.objects.count(), "receipts": WebhookReceipt.objects.count(),
            "answered": Call.objects.filter(state="answered").count(),
        }


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def lat(result: PassResult) -> str:
    return f"{ms(result.p(50))} / {ms(result.p(99))}"


def report(bench: Bench, results: dict) -> None:
    import daphne
    import django

    pg, rv = server_versions(bench.args.pg_url, bench.args.redis_url)
    load = " / ".join(f"{x:.1f}" for x in bench.load_before)
    print(f"\nMachine: nproc={os.cpu_count()}, {cpu_model()}, Python {platform.python_version()}, "
          f"Django {django.get_version()}, daphne {daphne.__version__}, PostgreSQL {pg}, Redis {rv}; "
          f"load average at start {load}. Load generator, balancer, daphne, PostgreSQL and Redis share "
          "these cores.\n")
    print(f"One daphne process, direct. Best of {bench.args.passes} passes; webhook = signed Twilio status "
          "callback, baseline = `GET /healthz` on the same server.\n")
    print("| clients | healthz req/s | healthz p50 / p99 ms | webhook req/s | webhook p50 / p99 ms "
          "| webhook / healthz (req/s) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for clients, best in results["direct"].items():
        base, ours = best["healthz"], best["webhook"]
        print(f"| {clients} | {base.rps:,.0f} | {lat(base)} | {ours.rps:,.0f} | {lat(ours)} "
              f"| {ours.rps / base.rps:.2f} |")
    print("\nBehind the round-robin TCP balancer (a child process): 1 daphne vs 4 daphne processes.\n")
    print("| clients | daphne processes | healthz req/s | webhook req/s | webhook p50 / p99 ms "
          "| webhook / healthz | webhook req/s, 4 / 1 process |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for clients, best in results["balanced"].items():
        for n in (1, 4):
            base, ours = best[f"healthz-{n}"], best[f"webhook-{n}"]
            scale = f"{ours.rps / best['webhook-1'].rps:.2f}" if n == 4 else ""
            print(f"| {clients} | {n} | {base.rps:,.0f} | {ours.rps:,.0f} | {lat(ours)} "
                  f"| {ours.rps / base.rps:.2f} | {scale} |")
    if bench.pooled:
        print("\n`--unpooled`: the same measurements against a second set of daphne processes with "
              "VOICECALL_DB_POOL=0 (a new PostgreSQL session per request); same run, interleaved.\n")
        print("| path | clients | webhook req/s (pooled, as configured) | p50 / p99 ms | webhook req/s (unpooled) "
              "| p50 / p99 ms | pooled / unpooled |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        rows = [("direct, 1 process", c, best["webhook"], best["pooled"]) for c, best in results["direct"].items()]
        rows += [(f"balanced, {n} process{'es' if n > 1 else ''}", c, best[f"webhook-{n}"], best[f"pooled-{n}"])
                 for c, best in results["balanced"].items() for n in (1, 4)]
        for path, clients, ours, unpooled in rows:
            print(f"| {path} | {clients} | {ours.rps:,.0f} | {lat(ours)} | {unpooled.rps:,.0f} | {lat(unpooled)} "
                  f"| {ours.rps / unpooled.rps:.2f} |")
    print("\nWhere the CPU went in those passes: share of both cores busy (whole machine), CPU ms per request in "
          "daphne (+ balancer), PostgreSQL (whole server) and the load generator, and PostgreSQL sessions opened "
          "per request.\n")
    print("| path | clients | request | req/s | cores busy | daphne (+ balancer) ms | PostgreSQL ms "
          "| load generator ms | total CPU ms | PostgreSQL sessions per request |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = [("direct, 1 process", c, label, best[label]) for c, best in results["direct"].items()
            for label in ("healthz", "webhook", "pooled") if label in best]
    rows += [(f"balanced, {n} process{'es' if n > 1 else ''}", c, label.split("-")[0], best[label])
             for c, best in results["balanced"].items() for label in ("webhook-1", "webhook-4", "pooled-1", "pooled-4")
             for n in [int(label[-1])] if label in best]
    for path, clients, label, result in rows:
        cpu = result.cpu
        if cpu is None:
            continue
        name = {"pooled": "webhook (unpooled)"}.get(label, label)
        total = cpu.servers_ms + cpu.postgres_ms + cpu.client_ms
        print(f"| {path} | {clients} | {name} | {result.rps:,.0f} | {cpu.busy:.0%} | {cpu.servers_ms:.1f} "
              f"| {cpu.postgres_ms:.1f} | {cpu.client_ms:.1f} | {total:.1f} | {cpu.sessions:.2f} |")
    shared = results.get("shared_ip")
    if shared is not None:
        print(f"\nOne source address for all {shared.clients} clients (direct): {shared.statuses.get(429, 0)} of "
              f"{shared.requests} callbacks answered 429 by the per-client in-flight cap, "
              f"{shared.statuses.get(200, 0)} answered 200.")
    checks = results["checks"]
    fine = checks["events"] == checks["ok"] == checks["receipts"] and checks["non_200"] == 0
    print(f"\nChecks: {checks['sent']} signed callbacks sent, {checks['ok']} answered 200, "
          f"{checks['events']} new ledger events, {checks['receipts']} replay receipts, "
          f"{checks['answered']}/{CALLS} calls answered; {checks['non_200']} non-200 answers outside the "
          f"one-address check ({'consistent' if fine else 'INCONSISTENT'}).")
    for skipped in results["skipped"]:
        print(f"(skipped for the time budget: {skipped})")
    print(f"\ntotal bench time {time.monotonic() - bench.started:.0f} s")
    if not fine:
        raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,16,64", help="concurrent clients per level")
    parser.add_argument("--requests", type=int, default=600, help="requests per pass (a third with 1 client)")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--unpooled", action="store_true",
                        help="also measure daphne processes without the PostgreSQL connection pool")
    parser.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
                        help="admin connection used to create and drop the throwaway database")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--proxy", nargs=2, metavar=("PORT", "BACKENDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.proxy:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        asyncio.run(run_proxy(int(args.proxy[0]), [int(p) for p in args.proxy[1].split(",")]))
        return
    bench = Bench(args)
    try:
        bench.setup()
        results = asyncio.run(asyncio.wait_for(bench.measure(), max(30.0, bench.left())))
        report(bench, results)
    finally:
        bench.teardown()


if __name__ == "__main__":
    main()
