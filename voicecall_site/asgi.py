"""ASGI entry point: Django for HTTP, Channels for the media-stream WebSocket.

Websocket code is imported after Django is set up (``get_asgi_application`` first).
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voicecall_site.settings")
# A server process pools its PostgreSQL connections (settings.py); VOICECALL_DB_POOL=0 turns it off.
os.environ.setdefault("VOICECALL_DB_POOL", "1")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import path  # noqa: E402

from calls.interfaces.direct_view import DirectView  # noqa: E402
from calls.interfaces.live import LiveCallConsumer  # noqa: E402
from calls.interfaces.webhook_gate import WebhookGate, install_daphne_early_gate  # noqa: E402
from calls.interfaces.webhooks import carrier_webhook  # noqa: E402
from calls.media.routing import websocket_urlpatterns  # noqa: E402
from voicecall_site import compat  # noqa: E402

# The carrier webhook's pre-auth gate (calls/interfaces/webhook_gate.py); under daphne part of it runs in Twisted.
install_daphne_early_gate()
# autobahn's per-frame costs that do nothing here (voicecall_site/compat.py, entry 4).
compat.lean_autobahn_frames()
# A frame to an idle socket is sent at once, not a loop turn later (compat.py, entry 5).
compat.write_websocket_frames_at_once()
# Audio appends to speech-to-text and the realtime model skip websockets' send context (entry 6).
compat.lean_websockets_text_sends()

application = ProtocolTypeRouter(
    {
        # The webhook, once through the gate, skips Django's middleware (calls/interfaces/direct_view.py).
        "http": WebhookGate(django_asgi_app, webhook_view=DirectView(carrier_webhook)),
        "websocket": URLRouter([
            *websocket_urlpatterns,
            # The operator console's live call page: a staff session, from this site's own pages only.
            path("admin/calls/call/<uuid:call_id>/live/ws",
                 AllowedHostsOriginValidator(AuthMiddlewareStack(LiveCallConsumer.as_asgi()))),
        ]),
    }
)
