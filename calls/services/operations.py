"""``continue`` as a pollable operation, for clients whose HTTP requests cannot wait minutes.

Fact sheet §9.2 (later form): ``voicecall.continue.start`` returns ``{operationId, status:"pending",
pollTimeoutMs}`` at once; ``voicecall.continue.result`` answers ``pending`` until the turn is over, then
``completed`` (``result: {success, transcript}``) or ``failed`` (``error``) exactly once and forgets
it. Every finished operation is gone five minutes after it finished, read or not.

The operation row lives in the database, so the poll may land on any server process. The turn itself
(``continue_call``: speak, listen, wait for the caller) runs in a daemon thread of the
process that accepted ``start``; it holds no transaction while it waits. If that process dies, the
row stays ``pending`` until ``deadline_at`` (created + ``pollTimeoutMs``) and is then reported failed.
"""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import timedelta
from typing import Any

from django.db import close_old_connections, connections, transaction
from django.utils import timezone

from calls.config import get_config
from calls.models import ContinueOperation
from calls.services.records import ServiceError
from calls.services.turns import continue_call

logger = logging.getLogger(__name__)

# Fact sheet §9.2: pollTimeoutMs = transcriptTimeoutMs + the TTS synthesis timeout (8 s default) + 30 s.
TTS_TIMEOUT_MS = 8000
POLL_GRACE_MS = 30000
RESULT_RETENTION = timedelta(minutes=5)

OPERATION_NOT_FOUND = "operation not found"
OPERATION_LOST = "continue operation was lost: the server process running it stopped"
UNEXPECTED_FAILURE = "continue failed"


def poll_timeout_ms() -> int:
    return get_config().transcript_timeout_ms + TTS_TIMEOUT_MS + POLL_GRACE_MS


def purge_expired() -> int:
    """Delete operations that finished more than five minutes ago."""
    deleted, _ = ContinueOperation.objects.filter(completed_at__lt=timezone.now() - RESULT_RETENTION).delete()
    return deleted


def start_continue(*, call_id: str, message: str, run_in_background: bool = True) -> ContinueOperation:
    """Record a pending operation and start the turn in a background thread."""
    purge_expired()
    timeout = poll_timeout_ms()
    operation = ContinueOperation.objects.create(
        call_ref=call_id[:128],
        message=message,
        poll_timeout_ms=timeout,
        deadline_at=timezone.now() + timedelta(milliseconds=timeout),
    )
    if run_in_background:
        thread = threading.Thread(
            target=_run_in_thread, args=(str(operation.id),), name=f"continue-{operation.id}", daemon=True
        )
        thread.start()
    return operation


def _run_in_thread(operation_id: str) -> None:
    close_old_connections()
    try:
        run_operation(operation_id)
    finally:
        connections.close_all()  # this thread's connections; the request threads keep theirs


def run_operation(operation_id: str) -> None:
    """Run one pending operation's turn and store its outcome (the background thread's body)."""
    operation = ContinueOperation.objects.filter(id=operation_id, status=ContinueOperation.Status.PENDING).first()
    if operation is None:
        return
    try:
        transcript = continue_call(operation.call_ref, operation.message)
    except ServiceError as exc:
        _finish(operation_id, error=str(exc))
    except Exception:
        logger.exception("continue operation %s failed unexpectedly", operation_id)
        _finish(operation_id, error=UNEXPECTED_FAILURE)
    else:
        _finish(operation_id, transcript=transcript)


def _finish(operation_id: str, *, transcript: str | None = None, error: str | None = None) -> None:
    status = ContinueOperation.Status.FAILED if error is not None else ContinueOperation.Status.COMPLETED
    ContinueOperation.objects.filter(id=operation_id, status=ContinueOperation.Status.PENDING).update(
        status=status, transcript=transcript or "", error=error or "", completed_at=timezone.now()
    )


def take_result(operation_id: str) -> dict[str, Any]:
    """The poll answer. A finished result is returned once, then deleted.

    Raises ``ServiceError(OPERATION_NOT_FOUND)`` for unknown, already-read or expired ids.
    """
    try:
        operation_id = str(uuid.UUID(str(operation_id)))
    except ValueError:
        raise ServiceError(OPERATION_NOT_FOUND) from None
    purge_expired()
    with transaction.atomic():
        operation = ContinueOperation.objects.select_for_update().filter(id=operation_id).first()
        if operation is None:
            raise ServiceError(OPERATION_NOT_FOUND)
        if operation.status == ContinueOperation.Status.PENDING:
            if timezone.now() <= operation.deadline_at:
                return pending_payload(operation)
            operation.status = ContinueOperation.Status.FAILED
            operation.error = OPERATION_LOST
        operation.delete()
    if operation.status == ContinueOperation.Status.COMPLETED:
        return {
            "operationId": operation_id,
            "status": "completed",
            "result": {"success": True, "transcript": operation.transcript},
        }
    return {"operationId": operation_id, "status": "failed", "error": operation.error}


def pending_payload(operation: ContinueOperation) -> dict[str, Any]:
    return {"operationId": str(operation.id), "status": "pending", "pollTimeoutMs": operation.poll_timeout_ms}
