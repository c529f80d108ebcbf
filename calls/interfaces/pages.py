"""Small pages: the home redirect and the liveness probe."""

import os

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect


def home(request: HttpRequest) -> HttpResponse:
    return redirect("admin:calls_call_changelist")


def healthz(request: HttpRequest) -> JsonResponse:
    """This process is up (``pid``: which of a host's daphne processes answered)."""
    return JsonResponse({"ok": True, "pid": os.getpid()})
