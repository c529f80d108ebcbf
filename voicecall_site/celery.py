"""The Celery app. Broker: Redis when REDIS_URL is set, else kombu's filesystem transport under var/."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voicecall_site.settings")


def _survive_redis_connection_loss() -> None:
    """Keep a worker alive when its Redis broker restarts (found by tests/test_reliability_redis.py).

    With celery 5.7.0 / kombu 5.7.0, a worker that loses its Redis connection while it holds
    unacknowledged messages -- a countdown task such as ``enforce_max_duration``, which it holds for
    maxDurationSeconds, or a running ``acks_late`` task -- closes the broken connection twice: the
    first close detaches the transport from its connection, the second tries to put those messages
    back on the queue and needs the connection's host and port, gets ``None`` and raises
    ``AttributeError``; the worker logs "Unrecoverable error" and exits. Remembering the connection
    details on each channel lets that requeue go to the (restarted) Redis, or fail with a connection
    error that kombu already tolerates, and the worker reconnects as designed.
    """
    from kombu.transport import redis as kombu_redis

    channel = kombu_redis.Channel
    if getattr(channel, "_voicecall_keeps_conninfo", False):
        return
    original_init, original_connparams = channel.__init__, channel._connparams

    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self._voicecall_conninfo = self.connection.client

    def _connparams(self, asynchronous=False):
        transport = self.connection
        remembered = getattr(self, "_voicecall_conninfo", None)
        if transport.client is not None or remembered is None:
            return original_connparams(self, asynchronous=asynchronous)
        transport.client = remembered  # only for the duration of the lookup
        try:
            return original_connparams(self, asynchronous=asynchronous)
        finally:
            transport.client = None

    channel.__init__ = __init__
    channel._connparams = _connparams
    channel._voicecall_keeps_conninfo = True


_survive_redis_connection_loss()

app = Celery("voicecall")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["calls"])
