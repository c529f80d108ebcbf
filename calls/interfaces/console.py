"""The operator console inside Django admin: place a call, watch it live, steer it, the dashboard.

Thin like every interface: placing, speaking, continuing, DTMF and ending call ``calls.services``
(the same functions as the CLI, RPC and the agent tool), so every control works from any server
process. The live page is fed by a WebSocket (``calls.interfaces.live``) that wakes on the same
cross-process call-update notifications a waiting ``continue`` uses; ``live.json`` is the polling
fallback. Everything here requires a staff login (``admin_site.admin_view``).
"""

from __future__ import annotations

import json

from django import forms
from django.http import HttpRequest, JsonResponse

from calls import services
from calls.config import ConfigError
from calls.services import operations
from calls.services.records import spoken_text
from calls.services.reports import OUTCOME_ORDER, dashboard_data, live_state  # noqa: F401 - the console's data

CONTROL_ACTIONS = ("speak", "continue", "dtmf", "end")
MAX_CONTROL_BODY = 16 * 1024


class PlaceCallForm(forms.Form):
    """"Place a call": the fields of ``voicecall call``, validated by the service itself."""

    to = forms.CharField(label="To", max_length=32, help_text="E.164, e.g. +15551234567")
    message = forms.CharField(label="Message", widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
                              max_length=services.MAX_SPOKEN_TEXT_CHARS)
    mode = forms.ChoiceField(label="Mode", choices=[("notify", "notify"), ("conversation", "conversation")],
                             initial="conversation")

    def place(self):
        """Place the call through ``services.initiate_call``; its refusal becomes a form error."""
        try:
            return services.initiate_call(to=self.cleaned_data["to"], message=self.cleaned_data["message"],
                                          mode=self.cleaned_data["mode"])
        except services.ServiceError as exc:
            field = "to" if "to " in str(exc) or str(exc).startswith("to") else None
            self.add_error(field, str(exc))
        except ConfigError as exc:
            self.add_error(None, f"configuration error: {exc}".replace("\n", "; "))
        return None


# --------------------------------------------------------------------------------------------------
# The live page's data
# --------------------------------------------------------------------------------------------------


def live_json(request: HttpRequest, object_id: str) -> JsonResponse:
    state = live_state(object_id)
    if state is None:
        return JsonResponse({"error": services.CALL_NOT_FOUND}, status=404)
    return JsonResponse(state)


# --------------------------------------------------------------------------------------------------
# Controls
# --------------------------------------------------------------------------------------------------


def control(request: HttpRequest, object_id: str) -> JsonResponse:
    """``POST {"action": speak|continue|dtmf|end, "message"?, "digits"?}``. ``continue`` starts a
    pollable turn (``voicecall.continue.start``) and answers its ``operationId``; the page polls
    ``continue_result``. Errors come back as ``{"error": ...}`` with status 400."""
    if request.method != "POST":
        return JsonResponse({"error": "use POST"}, status=405)
    if len(request.body) > MAX_CONTROL_BODY:
        return JsonResponse({"error": "body too large"}, status=413)
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return JsonResponse({"error": "body is not valid JSON"}, status=400)
    action = body.get("action") if isinstance(body, dict) else None
    if action not in CONTROL_ACTIONS:
        return JsonResponse({"error": f"action must be one of {', '.join(CONTROL_ACTIONS)}"}, status=400)
    text = body.get("message") if isinstance(body.get("message"), str) else ""
    try:
        if action == "speak":
            services.speak(object_id, text)
            return JsonResponse({"success": True})
        if action == "continue":
            if services.find_call(object_id) is None:
                raise services.ServiceError(services.CALL_NOT_FOUND)
            spoken_text(text)  # a clear error now, not from the background turn
            operation = operations.start_continue(call_id=object_id, message=text)
            return JsonResponse(operations.pending_payload(operation))
        if action == "dtmf":
            services.send_dtmf(object_id, body.get("digits") if isinstance(body.get("digits"), str) else "")
            return JsonResponse({"success": True})
        services.end_call(object_id)
        return JsonResponse({"success": True})
    except services.ServiceError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    except ConfigError as exc:
        return JsonResponse({"error": f"configuration error: {exc}".replace("\n", "; ")}, status=400)


def continue_result(request: HttpRequest, object_id: str, operation_id: str) -> JsonResponse:
    try:
        return JsonResponse(operations.take_result(operation_id))
    except services.ServiceError as exc:
        return JsonResponse({"error": str(exc)}, status=404)


# --------------------------------------------------------------------------------------------------
# Dashboard
# --------------------------------------------------------------------------------------------------


OUTCOME_COLOURS = {
    "completed": "#2e7d32", "hangup-user": "#66bb6a", "hangup-bot": "#90a4ae", "no-answer": "#ffb300",
    "busy": "#fb8c00", "voicemail": "#8d6e63", "timeout": "#7e57c2", "failed": "#e53935", "error": "#b71c1c",
    "live": "#1e88e5",
}


def calls_per_day_svg(per_day: dict[str, dict[str, int]], *, width: int = 720, height: int = 220) -> str:
    """A stacked bar chart of calls per day by outcome, rendered on the server as SVG."""
    from django.utils.html import escape

    days = list(per_day)
    top = max([sum(v.values()) for v in per_day.values()] + [1])
    left, bottom, plot_h = 36, 30, height - 50
    bar_w = max(2.0, (width - left - 10) / max(1, len(days)) - 2)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="vc-chart" role="img" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" aria-label="Calls per day by outcome">',
             f'<line x1="{left}" y1="{height - bottom}" x2="{width - 5}" y2="{height - bottom}" stroke="#999"/>',
             f'<text x="4" y="{height - bottom - plot_h + 10}" font-size="11">{top}</text>',
             f'<text x="4" y="{height - bottom}" font-size="11">0</text>']
    for index, day in enumerate(days):
        x = left + index * (bar_w + 2)
        y = height - bottom
        for outcome in (*OUTCOME_ORDER, "live"):
            count = per_day[day].get(outcome, 0)
            if not count:
                continue
            h = plot_h * count / top
            y -= h
            parts.append(f'<rect class="vc-bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                         f'fill="{OUTCOME_COLOURS[outcome]}"><title>{escape(day)}: {count} {escape(outcome)}</title></rect>')
        if index % 5 == 0:
            parts.append(f'<text x="{x:.1f}" y="{height - 12}" font-size="10">{escape(day[5:])}</text>')
    legend_x = left
    for outcome in (*OUTCOME_ORDER, "live"):
        parts.append(f'<rect x="{legend_x}" y="4" width="8" height="8" fill="{OUTCOME_COLOURS[outcome]}"/>'
                     f'<text x="{legend_x + 11}" y="12" font-size="10">{outcome}</text>')
        legend_x += 11 + 6 * len(outcome) + 8
    parts.append("</svg>")
    return "".join(parts)


def gauge_svg(label: str, fraction: float | None, *, width: int = 220) -> str:
    """A horizontal bar for a rate (answer rate), as SVG."""
    filled = 0 if fraction is None else max(0.0, min(1.0, fraction)) * (width - 10)
    text = "n/a" if fraction is None else f"{fraction * 100:.0f} %"
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="vc-chart" role="img" width="{width}" height="40" '
            f'aria-label="{label}"><rect x="5" y="8" width="{width - 10}" height="14" fill="#eee"/>'
            f'<rect class="vc-bar" x="5" y="8" width="{filled:.1f}" height="14" fill="#2e7d32"/>'
            f'<text x="5" y="36" font-size="11">{label}: {text}</text></svg>')


def latency_svg(p50: int | None, p95: int | None, *, width: int = 220) -> str:
    top = max(p95 or 0, p50 or 0, 1)
    bars = []
    for row, (name, value) in enumerate((("p50", p50), ("p95", p95))):
        w = 0 if value is None else (width - 60) * value / top
        bars.append(f'<text x="5" y="{16 + row * 20}" font-size="11">{name}</text>'
                    f'<rect class="vc-bar" x="35" y="{6 + row * 20}" width="{w:.1f}" height="12" fill="#1e88e5"/>'
                    f'<text x="{40 + w:.1f}" y="{16 + row * 20}" font-size="11">'
                    f'{"n/a" if value is None else f"{value} ms"}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="vc-chart" role="img" width="{width}" height="48" '
            f'aria-label="Turn latency">{"".join(bars)}</svg>')
