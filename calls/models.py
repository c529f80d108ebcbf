"""The call ledger: calls, their transcripts, every carrier event, and the inbound allowlist."""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q

from calls.state import LIVE_STATES, TERMINAL_STATES, CallState

STATE_CHOICES = [(s.value, s.value) for s in CallState]


class Direction(models.TextChoices):
    OUTBOUND = "outbound", "outbound"
    INBOUND = "inbound", "inbound"


class Mode(models.TextChoices):
    NOTIFY = "notify", "notify"
    CONVERSATION = "conversation", "conversation"


class CallQuerySet(models.QuerySet):
    def live(self) -> CallQuerySet:
        return self.filter(state__in=[s.value for s in LIVE_STATES])

    def ended(self) -> CallQuerySet:
        return self.filter(state__in=[s.value for s in TERMINAL_STATES])

    def by_any_id(self, call_id: str) -> CallQuerySet:
        """Match our UUID or the carrier's id, so every interface accepts either."""
        try:
            internal = uuid.UUID(str(call_id))
        except ValueError:
            return self.filter(provider_call_id=call_id)
        return self.filter(Q(id=internal) | Q(provider_call_id=str(call_id)))


class Call(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    provider = models.CharField(max_length=16)
    # NULL, not "", until the carrier assigns an id: the unique constraint must ignore unplaced calls.
    provider_call_id = models.CharField(max_length=128, null=True, blank=True)  # noqa: DJ001
    direction = models.CharField(max_length=8, choices=Direction.choices)
    state = models.CharField(max_length=16, choices=STATE_CHOICES, default=CallState.INITIATED.value)
    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.NOTIFY)
    from_number = models.CharField(max_length=32)
    to_number = models.CharField(max_length=32)
    initial_message = models.TextField(blank=True, default="")
    # True once the initial message was spoken (or handed to the carrier inside its first reply).
    initial_message_delivered = models.BooleanField(default=False)
    started_at = models.DateTimeField(auto_now_add=True)
    answered_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=16, blank=True, default="")
    last_error = models.TextField(blank=True, default="")
    # The `continue` turn currently waiting for the caller: only a final user transcript carrying
    # this token (or any, for carriers without turn tokens) may complete it.
    pending_turn_token = models.CharField(max_length=64, blank=True, default="")
    pending_turn_started_at = models.DateTimeField(null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = CallQuerySet.as_manager()

    class Meta:
        ordering = ["-started_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "provider_call_id"],
                condition=Q(provider_call_id__isnull=False),
                name="unique_provider_call_id",
            ),
        ]
        indexes = [models.Index(fields=["state"]), models.Index(fields=["provider_call_id"])]

    def __str__(self) -> str:
        return f"{self.direction} {self.to_number if self.direction == 'outbound' else self.from_number} ({self.state})"

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def duration_seconds(self) -> float | None:
        if not self.answered_at:
            return None
        end = self.ended_at
        if end is None:
            from django.utils import timezone

            end = timezone.now()
        return round((end - self.answered_at).total_seconds(), 1)


class Speaker(models.TextChoices):
    BOT = "bot", "bot"
    USER = "user", "user"


class TranscriptEntry(models.Model):
    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="transcript")
    speaker = models.CharField(max_length=8, choices=Speaker.choices)
    text = models.TextField()
    is_final = models.BooleanField(default=True)
    turn_token = models.CharField(max_length=64, blank=True, default="")
    interrupted = models.BooleanField(default=False)
    latency_ms = models.IntegerField(null=True, blank=True)
    timestamp = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["timestamp", "id"]
        verbose_name_plural = "transcript entries"

    def __str__(self) -> str:
        return f"{self.speaker}: {self.text[:60]}"


class CallEvent(models.Model):
    """Append-only ledger of every webhook/stream event. ``dedupe_key`` makes delivery idempotent."""

    call = models.ForeignKey(Call, on_delete=models.CASCADE, null=True, blank=True, related_name="events")
    provider = models.CharField(max_length=16)
    type = models.CharField(max_length=32)
    dedupe_key = models.CharField(max_length=200, unique=True)
    provider_call_id = models.CharField(max_length=128, blank=True, default="")
    payload = models.JSONField(default=dict, blank=True)
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["received_at", "id"]

    def __str__(self) -> str:
        return f"{self.type} ({self.provider})"


class WebhookReceipt(models.Model):
    """A verified webhook request seen before: a replay gets the stored answer and no side effects."""

    request_key = models.CharField(max_length=200, unique=True)
    provider = models.CharField(max_length=16)
    status_code = models.IntegerField(default=200)
    content_type = models.CharField(max_length=64, default="text/plain")
    body = models.TextField(blank=True, default="")
    received_at = models.DateTimeField(auto_now_add=True, db_index=True)

    def __str__(self) -> str:
        return self.request_key


class RejectedInboundCall(models.Model):
    """A carrier call id that inbound policy rejected: hung up exactly once, never given a record."""

    provider = models.CharField(max_length=16)
    provider_call_id = models.CharField(max_length=128)
    from_number = models.CharField(max_length=32, blank=True, default="")
    hangup_attempted = models.BooleanField(default=False)
    hangup_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["provider", "provider_call_id"], name="unique_rejected_call"),
        ]

    def __str__(self) -> str:
        return f"{self.provider}:{self.provider_call_id}"


class AllowedCaller(models.Model):
    """Inbound allowlist entries, merged with the config's ``allowFrom``."""

    number = models.CharField(max_length=32, unique=True, help_text="E.164, e.g. +15551234567")
    label = models.CharField(max_length=100, blank=True, default="")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["number"]

    def __str__(self) -> str:
        return f"{self.number} {self.label}".strip()

    def clean(self) -> None:
        import re

        from django.core.exceptions import ValidationError

        if not re.fullmatch(r"\+[1-9]\d{1,14}", self.number or ""):
            raise ValidationError({"number": "must be an E.164 number like +15551234567"})


class ContinueOperation(models.Model):
    """A ``voicecall.continue.start`` turn run in the background and polled with
    ``voicecall.continue.result`` (fact sheet §9.2, later form). Stored in the database so any server
    process can answer the poll; a finished result is handed out once and then deleted, and every
    finished operation is deleted five minutes after completion (``calls.services.operations``)."""

    class Status(models.TextChoices):
        PENDING = "pending", "pending"
        COMPLETED = "completed", "completed"
        FAILED = "failed", "failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    call_ref = models.CharField(max_length=128, help_text="call id as given (ours or the carrier's)")
    message = models.TextField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    transcript = models.TextField(blank=True, default="")
    error = models.TextField(blank=True, default="")
    poll_timeout_ms = models.IntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    # A pending operation still pending after this was lost (its server process stopped).
    deadline_at = models.DateTimeField()
    completed_at = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"continue {self.call_ref} ({self.status})"


class PendingEffect(models.Model):
    """The transactional outbox (``calls.services.effects``): a side effect a service decided on,
    written in the same transaction as the decision, dispatched after commit and re-dispatched by
    beat while ``dispatched_at`` is empty (the broker was down at commit), so no decided dial,
    hang-up, greeting or reply is lost with a broker outage."""

    effect = models.CharField(max_length=64)
    args = models.JSONField(default=list)
    delay_seconds = models.FloatField(null=True, blank=True)  # countdown from created_at
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    dispatched_at = models.DateTimeField(null=True, blank=True, db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.effect}{tuple(self.args)} ({'dispatched' if self.dispatched_at else 'pending'})"


class StreamLease(models.Model):
    """Which media-stream consumer holds a call's live stream, when there is no Redis
    (``calls.media.control``): one small row per live stream, so the owner's refresh every few
    seconds is one ``UPDATE`` of this row and never locks or rewrites the call."""

    call = models.OneToOneField(Call, on_delete=models.CASCADE, primary_key=True, related_name="stream_lease")
    owner = models.CharField(max_length=64)
    stream_sid = models.CharField(max_length=64, blank=True, default="")
    expires_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"stream {self.stream_sid or '?'} of call {self.call_id} until {self.expires_at:%H:%M:%S}"
