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
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


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
