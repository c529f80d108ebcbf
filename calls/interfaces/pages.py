"""Small pages: the home redirect and the liveness probe."""

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect


def home(request: HttpRequest) -> HttpResponse:
    return redirect("admin:calls_call_changelist")


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})
