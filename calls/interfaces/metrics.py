"""``GET /metrics``: Prometheus text exposition of all of this host's processes (multi-process
mode, ``calls.metrics``) plus the calls by state and provider, counted from the database at scrape
time. Guarded like ``/rpc`` -- ``Authorization: Bearer <rpc token>`` -- except from the loopback
address with no forwarding header (a scraper on this host; a tunnel always adds X-Forwarded-For)."""

from __future__ import annotations

import os

from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily

from calls.interfaces.rpc_auth import bearer_ok, unauthorized
from calls.models import Call
from providers.security import is_loopback_address


class CallsByState:
    """``voicecall_calls{state, provider}``: the ledger's calls, counted when scraped."""

    def collect(self):
        family = GaugeMetricFamily("voicecall_calls", "Calls in the ledger by state and provider.",
                                   labels=["state", "provider"])
        for row in Call.objects.values("state", "provider").annotate(n=Count("id")):
            family.add_metric([row["state"], row["provider"]], row["n"])
        yield family


def _local_scraper(request: HttpRequest) -> bool:
    forwarded = any(request.headers.get(h) for h in ("X-Forwarded-For", "X-Real-IP", "Forwarded"))
    return not forwarded and is_loopback_address(request.META.get("REMOTE_ADDR"))


def metrics_view(request: HttpRequest) -> HttpResponse:
    if not (_local_scraper(request) or bearer_ok(request)):
        return unauthorized({"error": "Unauthorized: send Authorization: Bearer <rpc token>, or scrape from this host"})
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    registry.register(CallsByState())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
