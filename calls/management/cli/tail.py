"""``voicecall tail``: the call ledger (events and transcript lines) as it grows."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

from calls.models import CallEvent, TranscriptEntry


def _event_line(event: CallEvent, as_json: bool) -> str:
    if as_json:
        return json.dumps({"kind": "event", "at": event.received_at.isoformat(), "callId": str(event.call_id) if event.call_id else None,
                           "type": event.type, "provider": event.provider, "payload": {k: v for k, v in event.payload.items() if k != "raw"}})
    details = " ".join(f"{k}={v}" for k, v in event.payload.items() if k != "raw")
    return f"{event.received_at:%H:%M:%S} event {event.type} call={event.call_id or '-'} {details}".rstrip()


def _transcript_line(entry: TranscriptEntry, as_json: bool) -> str:
    if as_json:
        return json.dumps({"kind": "transcript", "at": entry.timestamp.isoformat(), "callId": str(entry.call_id),
                           "speaker": entry.speaker, "text": entry.text, "isFinal": entry.is_final})
    return f"{entry.timestamp:%H:%M:%S} {entry.speaker:>4} call={entry.call_id}: {entry.text}"


def follow_ledger(*, since: int = 25, call_id: str | None = None, poll_ms: int = 250,
                  max_seconds: float | None = None, as_json: bool = False) -> Iterator[str]:
    """Yield the last ``since`` ledger lines, then new ones as they are committed (by any process)."""
    events = CallEvent.objects.all()
    entries = TranscriptEntry.objects.all()
    if call_id:
        events = events.filter(call_id=call_id)
        entries = entries.filter(call_id=call_id)
    backlog = [(e.received_at, 0, e.id, _event_line(e, as_json)) for e in events.order_by("-id")[:since]]
    backlog += [(t.timestamp, 1, t.id, _transcript_line(t, as_json)) for t in entries.order_by("-id")[:since]]
    backlog.sort()
    for *_, line in backlog[-since:] if since else []:
        yield line
    last_event = events.order_by("-id").values_list("id", flat=True).first() or 0
    last_entry = entries.order_by("-id").values_list("id", flat=True).first() or 0
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    while deadline is None or time.monotonic() < deadline:
        fresh = [(e.received_at, 0, e.id, _event_line(e, as_json)) for e in events.filter(id__gt=last_event).order_by("id")]
        fresh += [(t.timestamp, 1, t.id, _transcript_line(t, as_json)) for t in entries.filter(id__gt=last_entry).order_by("id")]
        for _at, kind, row_id, line in sorted(fresh):
            if kind == 0:
                last_event = max(last_event, row_id)
            else:
                last_entry = max(last_entry, row_id)
            yield line
        time.sleep(poll_ms / 1000)
