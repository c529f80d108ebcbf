"""ASGI entry point: Django for HTTP, Channels for the media-stream WebSocket.

Websocket code is imported after Django is set up (``get_asgi_application`` first).
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voicecall_site.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from calls.interfaces.webhook_gate import WebhookGate, install_daphne_early_gate  # noqa: E402
from calls.media.routing import websocket_urlpatterns  # noqa: E402

# The carrier webhook's pre-auth gate (calls/interfaces/webhook_gate.py); under daphne part of it runs in Twisted.
install_daphne_early_gate()

application = ProtocolTypeRouter(
    {
        "http": WebhookGate(django_asgi_app),
        "websocket": URLRouter(websocket_urlpatterns),
    }
)
