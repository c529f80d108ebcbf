"""Django admin: the call ledger, transcripts, events and the inbound allowlist.

Admin actions are thin: they call ``calls.services`` like every other interface.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import DurationField, ExpressionWrapper, F, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from calls import services
from calls.models import AllowedCaller, Call, CallEvent, RejectedInboundCall, TranscriptEntry, WebhookReceipt


class TranscriptInline(admin.TabularInline):
    model = TranscriptEntry
    extra = 0
    can_delete = False
    fields = ("timestamp", "speaker", "text", "is_final", "interrupted", "latency_ms", "turn_token")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False


class CallEventInline(admin.TabularInline):
    model = CallEvent
    extra = 0
    can_delete = False
    fields = ("received_at", "type", "provider_call_id", "dedupe_key", "payload")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False


class DurationFilter(admin.SimpleListFilter):
    title = "duration"
    parameter_name = "duration"
    BUCKETS = {"lt30": (0, 30), "30to120": (30, 120), "120to600": (120, 600), "gt600": (600, None)}

    def lookups(self, request, model_admin):
        return [("lt30", "< 30 s"), ("30to120", "30 s - 2 min"), ("120to600", "2 - 10 min"), ("gt600", "> 10 min")]

    def queryset(self, request, queryset: QuerySet) -> QuerySet:
        from datetime import timedelta

        if self.value() not in self.BUCKETS:
            return queryset
        low, high = self.BUCKETS[self.value()]
        qs = queryset.filter(answered_at__isnull=False, ended_at__isnull=False).annotate(
            talk=ExpressionWrapper(F("ended_at") - F("answered_at"), output_field=DurationField())
        )
        qs = qs.filter(talk__gte=timedelta(seconds=low))
        if high is not None:
            qs = qs.filter(talk__lt=timedelta(seconds=high))
        return qs


class SpeakForm(forms.Form):
    message = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "cols": 60}))


@admin.register(Call)
class CallAdmin(admin.ModelAdmin):
    list_display = ("id", "direction", "state", "provider", "from_number", "to_number", "mode", "started_at",
                    "duration", "end_reason")
    list_filter = ("state", "direction", "provider", "mode", DurationFilter)
    search_fields = ("from_number", "to_number", "provider_call_id", "id")
    readonly_fields = ("id", "provider", "provider_call_id", "direction", "state", "started_at", "answered_at",
                       "ended_at", "end_reason", "last_error", "initial_message_delivered", "pending_turn_token",
                       "pending_turn_started_at", "updated_at", "duration", "reply_latencies")
    fields = ("id", "provider", "provider_call_id", "direction", "mode", "state", "from_number", "to_number",
              "initial_message", "initial_message_delivered", "started_at", "answered_at", "ended_at", "duration",
              "end_reason", "last_error", "reply_latencies", "pending_turn_token", "pending_turn_started_at", "metadata",
              "updated_at")
    inlines = [TranscriptInline, CallEventInline]
    actions = ["end_calls", "speak_to_calls"]
    date_hierarchy = "started_at"

    @admin.display(description="auto-responder turns")
    def reply_latencies(self, obj: Call) -> str:
        """Per reply: caller's final words → reply text (model), and → reply handed to the carrier."""
        turns = (obj.metadata or {}).get("replyLatencies") or []
        if not turns:
            return "-"
        return "; ".join(
            f"#{n}: text {t.get('llmMs')} ms, audio {t.get('totalMs')} ms{' (fallback)' if t.get('fallback') else ''}"
            for n, t in enumerate(turns, start=1)
        )

    @admin.display(description="duration (s)")
    def duration(self, obj: Call):
        return obj.duration_seconds

    @admin.action(description="End selected calls")
    def end_calls(self, request: HttpRequest, queryset: QuerySet) -> None:
        for call in queryset:
            try:
                services.end_call(str(call.id))
                self.message_user(request, f"Call {call.id} ended.", messages.SUCCESS)
            except services.ServiceError as exc:
                self.message_user(request, f"Call {call.id}: {exc}", messages.ERROR)

    @admin.action(description="Speak a message on selected calls")
    def speak_to_calls(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        if "apply" in request.POST:
            form = SpeakForm(request.POST)
            if form.is_valid():
                for call in queryset:
                    try:
                        services.speak(str(call.id), form.cleaned_data["message"])
                        self.message_user(request, f"Call {call.id}: spoken.", messages.SUCCESS)
                    except services.ServiceError as exc:
                        self.message_user(request, f"Call {call.id}: {exc}", messages.ERROR)
                return None
        else:
            form = SpeakForm()
        return render(
            request,
            "admin/calls/speak.html",
            {"form": form, "calls": queryset, "opts": self.model._meta, "title": "Speak on calls",
             "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME},
        )


@admin.register(TranscriptEntry)
class TranscriptEntryAdmin(admin.ModelAdmin):
    list_display = ("timestamp", "call", "speaker", "text", "latency_ms", "interrupted")
    list_filter = ("speaker",)
    search_fields = ("text", "call__id")
    readonly_fields = ("call", "speaker", "text", "is_final", "turn_token", "interrupted", "latency_ms", "timestamp")


@admin.register(CallEvent)
class CallEventAdmin(admin.ModelAdmin):
    list_display = ("received_at", "type", "provider", "call", "provider_call_id")
    list_filter = ("type", "provider")
    search_fields = ("dedupe_key", "provider_call_id", "call__id")
    readonly_fields = ("call", "provider", "type", "dedupe_key", "provider_call_id", "payload", "received_at")

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(AllowedCaller)
class AllowedCallerAdmin(admin.ModelAdmin):
    list_display = ("number", "label", "enabled", "created_at")
    list_filter = ("enabled",)
    search_fields = ("number", "label")


@admin.register(RejectedInboundCall)
class RejectedInboundCallAdmin(admin.ModelAdmin):
    list_display = ("created_at", "provider", "provider_call_id", "from_number", "hangup_attempted", "hangup_error")
    readonly_fields = list_display


@admin.register(WebhookReceipt)
class WebhookReceiptAdmin(admin.ModelAdmin):
    list_display = ("received_at", "provider", "status_code", "request_key")
    readonly_fields = ("received_at", "provider", "status_code", "content_type", "body", "request_key")
