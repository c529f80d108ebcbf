"""Read-only views of calls: the status object (fact sheet §8.7) and the latency report (§9.3)."""

from __future__ import annotations

import logging
from typing import Any

from calls.models import (
    Call,
)
from calls.services.records import epoch_ms, find_call

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
