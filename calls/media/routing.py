"""WebSocket routes: the Twilio media stream consumer at ``streaming.streamPath``.

The path comes from the voice-call config when the ASGI app is built (daphne start-up); a config that
cannot be loaded leaves the default ``/voice/stream`` so HTTP keeps working and ``voicecall setup``
can report the problem.
"""

from __future__ import annotations

import gc

from django.urls import path

from calls.config import ConfigError, get_config
from calls.media.consumer import MediaStreamConsumer

DEFAULT_STREAM_PATH = "/voice/stream"


def _stream_path() -> str:
    try:
        return get_config().streaming.stream_path
    except ConfigError:
        return DEFAULT_STREAM_PATH


# Channels' URLRouter matches without the leading slash, like Django's URLconf.
websocket_urlpatterns: list = [
    path(_stream_path().lstrip("/"), MediaStreamConsumer.as_asgi(), name="media-stream"),
]

# Media streams are soft real time (a frame every 20 ms per call) and daphne runs them all on one
# event loop. A full garbage collection walks every object Django, the providers and the app
# allocated at start-up and stalls the loop for 50-150 ms (measured with bench/media_bench.py at
# 128 streams). This module is imported once, when daphne builds the ASGI app: freeze what exists
# now, so later collections only scan objects created while serving.
gc.freeze()
