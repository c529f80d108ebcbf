"""URLs. The webhook path comes from the voice-call config (``serve.path``) and is matched exactly."""

from django.contrib import admin
from django.urls import path

from calls.config import ConfigError, get_config
from calls.interfaces import health, metrics, rpc, tool, webhooks
from calls.interfaces import pages as views

try:
    _webhook_path = get_config().serve.path
except ConfigError:
    _webhook_path = "/voice/webhook"

urlpatterns = [
    path("admin/", admin.site.urls),
    path(_webhook_path.strip("/"), webhooks.carrier_webhook, name="carrier-webhook"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics_view, name="metrics"),
    path("rpc", rpc.rpc_endpoint, name="rpc"),
    path("tools/voice_call", tool.voice_call_endpoint, name="tool-voice-call"),
    path("tools/voice_call/schema", tool.voice_call_schema, name="tool-voice-call-schema"),
    path("", views.home, name="home"),
]
