"""Prometheus metrics of every process (daphne and Celery), in ``prometheus_client``'s
multi-process mode: each process writes its samples under ``PROMETHEUS_MULTIPROC_DIR`` (set by
``voicecall_site.settings`` to ``var/metrics``) and ``GET /metrics`` (``calls.interfaces.metrics``)
adds them up. A leaf module: recording a sample imports nothing of the app.
"""

from __future__ import annotations

import atexit
import os

from prometheus_client import Counter, Gauge, Histogram, multiprocess

WEBHOOKS = Counter(
    "voicecall_webhooks", "Carrier webhooks by outcome: accepted, replay, rejected_signature, rejected_body, "
    "refused_<status> (the pre-auth gate), unavailable (verified, process busy).", ["provider", "outcome"],
)
LIVE_STREAMS = Gauge("voicecall_live_streams", "Media streams attached to a call, per host.",
                     multiprocess_mode="livesum")
FRAME_GAP = Histogram(
    "voicecall_outbound_frame_gap_seconds", "Time between outbound 20 ms audio frames on a media stream "
    "as the carrier plays them (a frame sent after it was due plays late); one frame in ten is sampled.",
    buckets=(0.015, 0.019, 0.021, 0.025, 0.03, 0.04, 0.06, 0.1, 0.2),
)
TURN_LATENCY = Histogram(
    "voicecall_turn_latency_seconds", "continue: speak, listen and the caller's reply, end to end.",
    buckets=(0.25, 0.5, 1, 2, 3, 5, 8, 13, 21, 60, 180),
)
TASK_FAILURES = Counter("voicecall_task_failures", "Celery tasks that raised.", ["task"])


def _forget_this_process() -> None:
    """A process that exits stops counting towards the live-streams gauge."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(os.getpid())


atexit.register(_forget_this_process)
