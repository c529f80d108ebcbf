"""WebSocket routes (the Twilio media stream consumer is added by the streaming feature)."""

websocket_urlpatterns: list = []
