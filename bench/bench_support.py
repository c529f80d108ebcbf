"""Helpers the benches share: percentiles, local processes and ports, the machine, throwaway stores.

Benches run as scripts (``.venv/bin/python bench/<name>.py``), so this module is imported by its
plain name from the scripts' own folder.
"""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank on the sorted values (NaN for none)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process on port {port} exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port}")


def stop_process(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def process_cpu_s(pid: int | str) -> float:
    """User + system seconds of ``pid`` (all threads), from /proc (NaN when it is gone)."""
    fields = stat_fields(pid)
    if fields is None:
        return float("nan")
    return (int(fields[1][11]) + int(fields[1][12])) / CLK_TCK


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def admin_connect(pg_url: str):
    import psycopg

    return psycopg.connect(pg_url, autocommit=True, connect_timeout=10)


def release_throwaway_stores(*, admin, db_name: str, db_created: bool, redis_url: str) -> None:
    """Close our Django connections, empty the bench's Redis database and drop its PostgreSQL one."""
    with contextlib.suppress(Exception):
        from django.db import connections

        connections.close_all()
    with contextlib.suppress(Exception):
        import redis

        redis.Redis.from_url(redis_url).flushdb()
    if db_created:
        admin.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
    if admin is not None:
        admin.close()


# --------------------------------------------------------------------------------------------------
# CPU accounting (Linux /proc): where a pass spent the machine's cores
# --------------------------------------------------------------------------------------------------

def stat_fields(pid: int | str) -> tuple[str, list[str]] | None:
    """(comm, the fields after it) of /proc/PID/stat; None when the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    head, _, rest = raw.rpartition(")")
    return head.partition("(")[2], rest.split()


def processes_cpu_s(pids: list[int]) -> float:
    """User + system seconds of ``pids`` (all their threads)."""
    total = 0
    for pid in pids:
        fields = stat_fields(pid)
        if fields is not None:
            total += int(fields[1][11]) + int(fields[1][12])  # utime, stime
    return total / CLK_TCK


def postgres_cpu_s() -> float:
    """User + system seconds of every PostgreSQL process, plus those of backends that already exited
    (reaped into the postmaster's cutime/cstime) -- so short-lived per-request backends count too.
    Covers the whole server: other databases' work on this machine is included."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = stat_fields(entry.name)
        if fields is None or fields[0] != "postgres":
            continue
        total += sum(int(v) for v in fields[1][11:15])  # utime, stime, cutime, cstime
    return total / CLK_TCK


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all cores since boot, from /proc/stat."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return float(sum(values[:8]) - idle), float(sum(values[:8]))


@dataclass
class CpuUse:
    """What a pass used: machine busy share; per request, CPU ms of the servers, PostgreSQL and the
    client, and PostgreSQL sessions opened."""

    busy: float
    servers_ms: float
    postgres_ms: float
    client_ms: float
    sessions: float


class CpuMeter:
    def __init__(self, server_pids: list[int], sessions: Callable[[], int]):
        self.server_pids = server_pids
        self.sessions = sessions

    def snapshot(self) -> tuple:
        times = os.times()
        return (machine_cpu(), processes_cpu_s(self.server_pids), postgres_cpu_s(), times.user + times.system,
                self.sessions())

    @staticmethod
    def use(before: tuple, after: tuple, requests: int) -> CpuUse:
        (busy0, total0), servers0, pg0, client0, sessions0 = before
        (busy1, total1), servers1, pg1, client1, sessions1 = after
        per = 1000 / max(1, requests)
        busy = (busy1 - busy0) / (total1 - total0) if total1 > total0 else float("nan")
        return CpuUse(busy, (servers1 - servers0) * per, (pg1 - pg0) * per, (client1 - client0) * per,
                      (sessions1 - sessions0) / max(1, requests))
