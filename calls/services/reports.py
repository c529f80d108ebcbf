"""Read-only views of calls: the status object (fact sheet §8.7) and the latency report (§9.3)."""

from __future__ import annotations

import logging
import math
from datetime import timedelta
from typing import Any

from django.db.models import Count
from django.db.models.functions import TruncDate
from django.utils import timezone

from calls.models import Call, CallEvent, TranscriptEntry
from calls.services.records import epoch_ms, find_call
from calls.state import LIVE_STATES, TERMINAL_STATES

logger = logging.getLogger(__name__)


def call_to_dict(call: Call) -> dict[str, Any]:
    """The status ``call`` object (fact sheet §8.7) with the transcript."""
    return {
        "callId": str(call.id),
        "providerCallId": call.provider_call_id,
        "provider": call.provider,
        "direction": call.direction,
        "state": call.state,
        "mode": call.mode,
        "from": call.from_number,
        "to": call.to_number,
        "startedAt": epoch_ms(call.started_at),
        "answeredAt": epoch_ms(call.answered_at),
        "endedAt": epoch_ms(call.ended_at),
        "endReason": call.end_reason or None,
        "lastError": call.last_error or None,
        "metadata": call.metadata or {},
        "transcript": [
            {
                "speaker": entry.speaker,
                "text": entry.text,
                "timestamp": epoch_ms(entry.timestamp),
                "isFinal": entry.is_final,
            }
            for entry in call.transcript.all()
        ],
    }


def get_status(call_id: str | None = None) -> dict[str, Any]:
    """``{found, call}`` for one call (internal or carrier id), or ``{found, calls}`` for live calls."""
    if call_id:
        call = find_call(call_id)
        if call is None:
            return {"found": False}
        return {"found": True, "call": call_to_dict(call)}
    calls = Call.objects.live().prefetch_related("transcript")
    return {"found": True, "calls": [call_to_dict(c) for c in calls]}


def _percentile(sorted_values: list[int], p: float) -> int | None:
    """Nearest-rank percentile (fact sheet §9.3: ``ceil(p/100·n)-1``)."""
    import math

    if not sorted_values:
        return None
    index = max(0, math.ceil(p / 100 * len(sorted_values)) - 1)
    return sorted_values[index]


def _summary(values: list[int]) -> dict[str, Any]:
    values = sorted(values)
    if not values:
        return {"count": 0, "minMs": None, "maxMs": None, "avgMs": None, "p50Ms": None, "p95Ms": None}
    return {
        "count": len(values),
        "minMs": values[0],
        "maxMs": values[-1],
        "avgMs": round(sum(values) / len(values)),
        "p50Ms": _percentile(values, 50),
        "p95Ms": _percentile(values, 95),
    }


def latency_report(last: int = 200) -> dict[str, Any]:
    """Turn latency over the newest ``last`` calls (fact sheet §9.3 ``latency``)."""
    calls = list(Call.objects.order_by("-started_at")[: max(1, last)])
    turn, listen, reply_llm, reply_total = [], [], [], []
    for call in calls:
        md = call.metadata or {}
        for reply in md.get("replyLatencies", []) if isinstance(md.get("replyLatencies"), list) else []:
            if isinstance(reply, dict) and isinstance(reply.get("totalMs"), int):
                reply_total.append(reply["totalMs"])
                reply_llm.append(int(reply.get("llmMs") or 0))
        if isinstance(md.get("lastTurnLatencyMs"), int):
            turn.append(md["lastTurnLatencyMs"])
        if isinstance(md.get("lastTurnListenWaitMs"), int):
            listen.append(md["lastTurnListenWaitMs"])
    return {
        "recordsScanned": len(calls),
        "turnLatency": _summary(turn),
        "listenWait": _summary(listen),
        # auto-responder turns: caller's final words → reply text (model) and → reply handed to the carrier
        "replyModel": _summary(reply_llm),
        "replyTotal": _summary(reply_total),
    }


# --------------------------------------------------------------------------------------------------
# The operator console's views of calls (calls.interfaces.console renders them)
# --------------------------------------------------------------------------------------------------

OUTCOME_ORDER = ("completed", "hangup-user", "hangup-bot", "no-answer", "busy", "voicemail", "timeout",
                 "failed", "error")


def _iso(value) -> str | None:
    return value.isoformat() if value else None


def live_state(call_id: str) -> dict[str, Any] | None:
    """Everything the live page shows, as JSON: the call, its transcript (interrupted lines marked,
    latency per line) and its event timeline."""
    call = Call.objects.filter(id=call_id).first()
    if call is None:
        return None
    transcript = [
        {"id": e.id, "speaker": e.speaker, "text": e.text, "at": _iso(e.timestamp), "interrupted": e.interrupted,
         "latencyMs": e.latency_ms, "final": e.is_final}
        for e in TranscriptEntry.objects.filter(call=call).order_by("id")
    ]
    events = [
        {"id": e.id, "type": e.type, "at": _iso(e.received_at)}
        for e in CallEvent.objects.filter(call=call).order_by("received_at", "id")
    ]
    metadata = call.metadata or {}
    return {
        "callId": str(call.id), "state": call.state, "direction": call.direction, "mode": call.mode,
        "provider": call.provider, "from": call.from_number, "to": call.to_number,
        "startedAt": _iso(call.started_at), "answeredAt": _iso(call.answered_at), "endedAt": _iso(call.ended_at),
        "endReason": call.end_reason or None, "lastError": call.last_error or None, "terminal": call.is_terminal,
        "lastTurnLatencyMs": metadata.get("lastTurnLatencyMs"), "transcript": transcript, "events": events,
    }


def _nearest_rank(values: list[int], p: float) -> int | None:
    if not values:
        return None
    values = sorted(values)
    return values[max(0, math.ceil(p / 100 * len(values)) - 1)]


def dashboard_data(days: int = 30) -> dict[str, Any]:
    """Active calls now, calls per day by outcome (last ``days``), answer rate, turn latency."""
    now = timezone.now()
    since = (now - timedelta(days=days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    recent = Call.objects.filter(started_at__gte=since)
    per_day: dict[str, dict[str, int]] = {}
    day = since.date()
    for _ in range(days):
        per_day[day.isoformat()] = {}
        day += timedelta(days=1)
    rows = recent.annotate(day=TruncDate("started_at")).values("day", "state").annotate(n=Count("id"))
    for row in rows:
        outcome = row["state"] if row["state"] in {s.value for s in TERMINAL_STATES} else "live"
        bucket = per_day.setdefault(row["day"].isoformat(), {})
        bucket[outcome] = bucket.get(outcome, 0) + row["n"]
    ended = recent.filter(state__in=[s.value for s in TERMINAL_STATES])
    outbound_ended = ended.filter(direction="outbound")
    answered = outbound_ended.filter(answered_at__isnull=False).count()
    total_outbound = outbound_ended.count()
    latencies = [v for v in TranscriptEntry.objects.filter(timestamp__gte=since, latency_ms__isnull=False)
                 .values_list("latency_ms", flat=True)]
    for metadata in recent.values_list("metadata", flat=True):
        values = (metadata or {}).get("turnLatenciesMs")
        if isinstance(values, list):
            latencies.extend(v for v in values if isinstance(v, int))
    return {
        "active": Call.objects.filter(state__in=[s.value for s in LIVE_STATES]).count(),
        "perDay": per_day,
        "answerRate": (answered / total_outbound) if total_outbound else None,
        "answered": answered, "outboundEnded": total_outbound,
        "turnLatency": {"p50": _nearest_rank(latencies, 50), "p95": _nearest_rank(latencies, 95), "count": len(latencies)},
    }
