"""Cross-process "this call changed" notifications, so waiters wake without hammering the database.

With ``REDIS_URL`` set, updates are published on a Redis channel per call and a waiter blocks on its
subscription; the database stays the source of truth and is re-checked on every wake-up and at
least every ``SAFETY_RECHECK_SECONDS``. In the embedded single-machine mode (no Redis), waiters in
the same process are woken through a condition variable and other processes fall back to a short
database poll.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings

logger = logging.getLogger(__name__)

SAFETY_RECHECK_SECONDS = 2.0
EMBEDDED_POLL_SECONDS = 0.2

_local_condition = threading.Condition()
_local_versions: dict[str, int] = {}
_redis_client = None
_redis_lock = threading.Lock()


def _channel(call_id: str) -> str:
    return f"voicecall:call:{call_id}"


def _redis():
    global _redis_client
    if not settings.REDIS_URL:
        return None
    with _redis_lock:
        if _redis_client is None:
            import redis

            _redis_client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=3)
        return _redis_client


def local_version(call_id: str) -> int:
    """How many updates this process has published for the call (a change means "re-read it")."""
    return _local_versions.get(str(call_id), 0)


def forget_call(call_id: str) -> None:
    """Drop an ended call's in-process version (the map must not grow with every call ever made); a
    waiter still watching sees the change and re-reads the database, finding the call ended."""
    with _local_condition:
        _local_versions.pop(str(call_id), None)
        _local_condition.notify_all()


def publish_call_update(call_id: str) -> None:
    """Tell every waiter on this call to re-read it. Never blocks on Redis: the publish is handed to
    this process's publisher thread (a slow or dead Redis delays only the wake-up; waiters still
    re-check the database on their safety timer)."""
    call_id = str(call_id)
    with _local_condition:
        _local_versions[call_id] = _local_versions.get(call_id, 0) + 1
        _local_condition.notify_all()
    if not settings.REDIS_URL:
        return
    _ensure_publisher()
    try:
        _pending.put_nowait(call_id)
    except queue.Full:
        logger.warning("call update for %s dropped: %d publishes waiting for Redis", call_id, PENDING_PUBLISHES)


PENDING_PUBLISHES = 10_000
FLUSH_AT_EXIT_SECONDS = 1.0
_pending: queue.Queue[str] = queue.Queue(maxsize=PENDING_PUBLISHES)
_publisher: tuple[int, threading.Thread] | None = None
_publisher_lock = threading.Lock()


def _ensure_publisher() -> None:
    global _publisher
    with _publisher_lock:
        if _publisher is not None and _publisher[0] == os.getpid() and _publisher[1].is_alive():
            return
        thread = threading.Thread(target=_publish_forever, name="call-update-publisher", daemon=True)
        thread.start()
        _publisher = (os.getpid(), thread)


def _publish_forever() -> None:
    while True:
        call_id = _pending.get()
        try:
            client = _redis()
            if client is not None:
                client.publish(_channel(call_id), "1")
        except Exception as exc:  # waiters still re-check the DB on their safety timer
            logger.warning("call update for %s not published to Redis: %s", call_id, exc)
        finally:
            _pending.task_done()


def flush_call_updates(timeout: float = FLUSH_AT_EXIT_SECONDS) -> bool:
    """Wait (up to ``timeout``) until every handed-over publish went out; True when none is left.
    Runs at exit, so a CLI command's last update is not lost with its process."""
    deadline = time.monotonic() + timeout
    while _pending.unfinished_tasks:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


atexit.register(flush_call_updates)


class CallUpdateWaiter:
    def __init__(self, call_id: str):
        self.call_id = str(call_id)
        self._pubsub = None
        self._seen_version = _local_versions.get(self.call_id, 0)
        client = _redis()
        if client is not None:
            try:
                self._pubsub = client.pubsub(ignore_subscribe_messages=True)
                self._pubsub.subscribe(_channel(self.call_id))
            except Exception as exc:
                logger.warning("falling back to polling for call %s: %s", self.call_id, exc)
                self._pubsub = None

    def wait(self, timeout: float) -> None:
        """Return when the call may have changed, or after ``timeout`` seconds at the latest."""
        timeout = max(0.0, timeout)
        if self._pubsub is not None:
            deadline = time.monotonic() + min(timeout, SAFETY_RECHECK_SECONDS)
            try:
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return
                    if self._pubsub.get_message(timeout=remaining) is not None:
                        return
            except Exception as exc:
                logger.warning("Redis subscription for call %s lost: %s", self.call_id, exc)
                # Release the dead subscription's connection back to the pool before dropping it.
                self.close()
                time.sleep(min(timeout, EMBEDDED_POLL_SECONDS))
                return
        with _local_condition:
            _local_condition.wait_for(
                lambda: _local_versions.get(self.call_id, 0) != self._seen_version,
                timeout=min(timeout, EMBEDDED_POLL_SECONDS),
            )
            self._seen_version = _local_versions.get(self.call_id, 0)

    def close(self) -> None:
        if self._pubsub is not None:
            try:
                self._pubsub.close()
            except Exception:  # closing a dead connection must not mask the waiter's result
                logger.debug("pubsub close failed", exc_info=True)
            self._pubsub = None


@contextmanager
def call_update_waiter(call_id: str) -> Iterator[CallUpdateWaiter]:
    waiter = CallUpdateWaiter(call_id)
    try:
        yield waiter
    finally:
        waiter.close()
