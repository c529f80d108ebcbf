"""The live call page's WebSocket: a staff user's browser watching one call.

The socket sends the call's whole live state (``console.live_state``) on connect and again whenever
it changes. It wakes on the same cross-process call-update notifications a waiting ``continue``
uses (``calls.services.call_updates``: Redis pub/sub when ``REDIS_URL`` is set, the in-process
version map otherwise) and re-reads the database at least every ``RECHECK_SECONDS`` as the safety
net, so an update made by any process shows up. Anonymous and non-staff sockets are refused before
the handshake completes (HTTP 403).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from calls.interfaces.console import live_state
from calls.services import call_updates

logger = logging.getLogger(__name__)

RECHECK_SECONDS = 2.0
LOCAL_POLL_SECONDS = 0.2


class LiveCallConsumer(AsyncJsonWebsocketConsumer):
    # The page needs no channel layer (it wakes on call_updates): an alias with no configured layer
    # makes channels skip it, so an open page holds no Redis channel receive that a refused or
    # abandoned socket would leave behind.
    channel_layer_alias = "voicecall-live-page-has-no-layer"

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_active or not user.is_staff:
            await self.close()  # before accept: the upgrade is refused (403)
            return
        self.call_id = str(self.scope["url_route"]["kwargs"]["call_id"])
        self.last: dict[str, Any] | None = await database_sync_to_async(live_state)(self.call_id)
        if self.last is None:
            await self.close()
            return
        await self.accept()
        await self.send_json(self.last)
        self.watcher = asyncio.get_running_loop().create_task(self._watch())

    async def disconnect(self, code: int) -> None:
        watcher = getattr(self, "watcher", None)
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """The page only listens; controls go through the console's HTTP endpoint."""

    async def _watch(self) -> None:
        pubsub = None
        if settings.REDIS_URL:
            import redis.asyncio as aioredis

            client = aioredis.from_url(settings.REDIS_URL)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(f"voicecall:call:{self.call_id}")
            except Exception as exc:  # Redis down: the database re-check alone keeps the page current
                logger.warning("live page of call %s without Redis notifications: %s", self.call_id, exc)
                pubsub = None
        try:
            while True:
                await self._wait_for_change(pubsub)
                state = await database_sync_to_async(live_state)(self.call_id)
                if state is not None and state != self.last:
                    self.last = state
                    await self.send_json(state)
        finally:
            if pubsub is not None:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _wait_for_change(self, pubsub) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RECHECK_SECONDS
        seen = call_updates.local_version(self.call_id)
        while loop.time() < deadline:
            if pubsub is not None:
                try:
                    if await pubsub.get_message(timeout=LOCAL_POLL_SECONDS) is not None:
                        return
                except Exception:
                    pubsub = None
            else:
                await asyncio.sleep(LOCAL_POLL_SECONDS)
            if call_updates.local_version(self.call_id) != seen:
                return
