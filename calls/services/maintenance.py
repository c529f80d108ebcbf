"""Keeping the ledger honest over time: the stale-call reaper, max-duration enforcement after a
restart, restoring live calls at start-up, and retention of replay receipts (fact sheet §2.7, §10)."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from calls.config import get_config
from calls.models import (
    Call,
    CallEvent,
    TranscriptEntry,
    WebhookReceipt,
)
from calls.services.effects import Effect, after_commit, prune_dispatched
from calls.services.lifecycle import (
    bind_unconfirmed_dial,
    end_call,
    enforce_max_duration,
    fail_call,
    safe_hangup,
)
from calls.services.records import (
    DIAL_NEVER_CONFIRMED,
    PLACEMENT_EXPIRED,
    PLACEMENT_INTERRUPTED,
    ServiceError,
    carrier,
    finalize,
    snapshot,
)
from calls.state import CallState
from providers.base import (
    ProviderError,
)

logger = logging.getLogger(__name__)


def reap_stale_calls() -> dict[str, int]:
    """End calls stuck before answer past ``staleCallReaperSeconds`` and answered calls past
    ``maxDurationSeconds`` (fact sheet §10). A live conversation is never reaped for staleness."""
    config = get_config()
    now = timezone.now()
    reaped = {"stale": 0, "maxDuration": 0, "expiredPlacements": 0}
    # Queued placements past their deadline (no worker took them): failed, never dialed late.
    placement_deadline = now - timedelta(seconds=config.outbound.placement_timeout_seconds)
    for call in Call.objects.filter(state=CallState.INITIATED.value, provider_call_id__isnull=True,
                                    started_at__lt=placement_deadline):
        if not call.metadata.get("dialClaimedAt"):
            fail_call(str(call.id), PLACEMENT_EXPIRED.format(seconds=config.outbound.placement_timeout_seconds))
            reaped["expiredPlacements"] += 1
    if config.stale_call_reaper_seconds > 0:
        cutoff = now - timedelta(seconds=config.stale_call_reaper_seconds)
        stale = Call.objects.filter(
            state__in=[CallState.INITIATED.value, CallState.RINGING.value],
            answered_at__isnull=True,
            started_at__lt=cutoff,
        )
        for call in stale:
            if call.state == CallState.INITIATED.value and not call.provider_call_id and not call.metadata.get("dialClaimedAt"):
                # Still queued for placement (e.g. no worker running): fail it rather than dial late.
                fail_call(str(call.id), "not placed within staleCallReaperSeconds")
            elif (not call.provider_call_id and call.metadata.get("dialClaimedAt")
                  and not bind_unconfirmed_dial(str(call.id))):
                # A dial the carrier never confirmed, no callback since, and its API does not list
                # it: end it, never redial (should the leg still turn up, ingest hangs it up as a stray).
                fail_call(str(call.id), DIAL_NEVER_CONFIRMED)
            else:  # a leg we hold (or just found at the carrier): hung up through the carrier
                try:
                    end_call(str(call.id), reason=CallState.HANGUP_BOT.value)
                except ServiceError:
                    with transaction.atomic():
                        locked = Call.objects.select_for_update().get(id=call.id)
                        finalize(locked, CallState.HANGUP_BOT.value, error="reaped; carrier hang-up failed")
            reaped["stale"] += 1
    overdue = Call.objects.live().filter(
        answered_at__lt=now - timedelta(seconds=config.max_duration_seconds)
    )
    for call in overdue:
        if enforce_max_duration(str(call.id)):
            reaped["maxDuration"] += 1
    if reaped["stale"] or reaped["maxDuration"]:
        logger.info("reaper ended %s stale and %s over-long calls", reaped["stale"], reaped["maxDuration"])
    return reaped


def prune_old_records() -> dict[str, int]:
    """Retention (config ``retention``): replay receipts past ``webhookReceiptsHours``; events and,
    when ``transcriptsDays`` is set, transcripts of calls that ended that long ago; dispatched
    outbox rows after a day. Calls themselves are kept (admin's history)."""
    retention = get_config().retention
    now = timezone.now()
    pruned = {"receipts": 0, "events": 0, "transcripts": 0}
    pruned["receipts"], _ = WebhookReceipt.objects.filter(
        received_at__lt=now - timedelta(hours=retention.webhook_receipts_hours)).delete()
    if retention.events_days:
        cutoff = now - timedelta(days=retention.events_days)
        pruned["events"], _ = CallEvent.objects.filter(received_at__lt=cutoff).filter(
            Q(call__isnull=True) | Q(call__ended_at__lt=cutoff)).delete()
    if retention.transcripts_days:
        cutoff = now - timedelta(days=retention.transcripts_days)
        pruned["transcripts"], _ = TranscriptEntry.objects.filter(call__ended_at__lt=cutoff).delete()
    pruned["outbox"] = prune_dispatched()
    if any(pruned.values()):
        logger.info("retention pruned %s", pruned)
    return pruned


def restore_calls() -> dict[str, int]:
    """After a restart, re-check every live call with its carrier (fact sheet §2.7).

    Calls past ``maxDurationSeconds`` are timed out (and hung up, errors ignored); calls the carrier
    reports ended are closed with its reason; calls the carrier still has, or cannot tell us about,
    stay live (the reaper and max-duration timer look after them). A call whose dial began but whose
    carrier id was never stored is failed, never redialed. Nothing is lost from the ledger: events
    and transcripts are already in the database.
    """
    config = get_config()
    provider = carrier(config)
    now = timezone.now()
    summary = {"checked": 0, "resumed": 0, "timedOut": 0, "closed": 0, "failed": 0}
    for call in Call.objects.live():
        summary["checked"] += 1
        call_id = str(call.id)
        if not call.provider_call_id:
            if call.metadata.get("dialClaimedAt"):
                fail_call(call_id, PLACEMENT_INTERRUPTED)
                summary["failed"] += 1
            else:
                summary["resumed"] += 1  # still queued: place_call is idempotent
            continue
        if now - call.started_at > timedelta(seconds=config.max_duration_seconds):
            # Marked and saved first, then hung up (§2.7 order): the carrier's hang-up report can
            # land before the request returns and must not end the call "completed" instead.
            with transaction.atomic():
                locked = Call.objects.select_for_update().get(id=call.id)
                finalize(locked, CallState.TIMEOUT.value)
            safe_hangup(provider, snapshot(call, config))
            summary["timedOut"] += 1
            continue
        try:
            status = provider.get_call_status(call.provider_call_id)
        except ProviderError as exc:
            logger.info("restore: status of call %s unknown (%s); keeping it", call_id, exc)
            summary["resumed"] += 1
            continue
        if status.is_terminal:
            with transaction.atomic():
                locked = Call.objects.select_for_update().get(id=call.id)
                finalize(locked, status.end_reason or CallState.COMPLETED.value)
            summary["closed"] += 1
        else:
            summary["resumed"] += 1
            if call.answered_at:
                remaining = config.max_duration_seconds - (now - call.answered_at).total_seconds()
                after_commit(Effect.ENFORCE_MAX_DURATION, call_id, delay=max(0, int(remaining) + 1))
    logger.info("restore: %s", summary)
    return summary
