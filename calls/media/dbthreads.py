"""The media engine's database threads: ORM work of every stream runs here, off the event loop."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from channels.db import database_sync_to_async

DB_THREADS = 16

_db_pool = ThreadPoolExecutor(max_workers=DB_THREADS, thread_name_prefix="media-stream-db")


def db(fn: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """Run ORM code off the loop, on the stream pool (not Channels' single shared sync thread, where
    one ``continue`` blocked in an HTTP view would hold up every stream)."""
    return database_sync_to_async(fn, thread_sensitive=False, executor=_db_pool)
