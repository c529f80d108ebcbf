"""Django admin: the call ledger, transcripts, events and the inbound allowlist.

Admin actions are thin: they call ``calls.services`` like every other interface. The ledger is
read-only here: a call changes only through services (speak, end), never by editing its row; there
is no raw "add" of a call (a row nobody dials); events, transcripts, receipts and rejections cannot
be added, edited or deleted; a call can be deleted only once it has ended, and only by a superuser
(its transcript and events go with it). The allowlist is editable, validated as E.164, and can be
imported from CSV.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import DurationField, ExpressionWrapper, F, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import path
from django.utils.safestring import mark_safe

from calls import services
from calls.interfaces import console
from calls.models import AllowedCaller, Call, CallEvent, RejectedInboundCall, TranscriptEntry, WebhookReceipt
from calls.services.records import E164
from calls.state import LIVE_STATES


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


class ReadOnlyLedgerAdmin(admin.ModelAdmin):
    """Rows written by services only: viewable, never added, edited or deleted through admin."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


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

    change_list_template = "admin/calls/call/change_list.html"

    # --- the console: place a call, the live page, controls, the dashboard -------------------
    def get_urls(self):
        view = self.admin_site.admin_view
        custom = [
            path("<uuid:object_id>/live.json", view(self._viewing(console.live_json)), name="calls_call_live"),
            path("<uuid:object_id>/control/", view(self._viewing(console.control)), name="calls_call_control"),
            path("<uuid:object_id>/continue/<uuid:operation_id>/", view(self._viewing(console.continue_result)),
                 name="calls_call_continue_result"),
        ]
        return custom + super().get_urls()

    def _viewing(self, function):
        def guarded(request: HttpRequest, object_id, **kwargs):
            if not self.has_view_permission(request):
                raise PermissionDenied
            return function(request, str(object_id), **{k: str(v) for k, v in kwargs.items()})

        return guarded

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context=None) -> HttpResponse:
        """"Place a call": the same service as ``voicecall call``, then the new call's live page."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        form = console.PlaceCallForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            call = form.place()
            if call is not None:
                self.message_user(request, f"Call {call.id} placed.", messages.SUCCESS)
                return redirect("admin:calls_call_change", call.id)
        return render(request, "admin/calls/call/place.html", {
            **self.admin_site.each_context(request), "form": form, "opts": self.model._meta, "title": "Place a call",
        })

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context=None):
        """The live call page (read-only record, transcript, events, controls, live updates)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        call = Call.objects.filter(pk=object_id).first()
        if call is None:
            return redirect("admin:calls_call_changelist")
        return render(request, "admin/calls/call/live.html", {
            **self.admin_site.each_context(request), "opts": self.model._meta, "call": call,
            "title": f"Call {call.id}", "initial_state": console.live_state(str(call.id)),
            "original": call, "has_delete_permission": self.has_delete_permission(request, call),
            "reply_latencies": self.reply_latencies(call),
        })

    def changelist_view(self, request: HttpRequest, extra_context=None):
        data = console.dashboard_data()
        extra = {
            "dashboard": data,
            "per_day_svg": mark_safe(console.calls_per_day_svg(data["perDay"])),  # noqa: S308 - built from numbers and escaped labels
            "answer_svg": mark_safe(console.gauge_svg("Answer rate (outbound)", data["answerRate"])),  # noqa: S308
            "latency_svg": mark_safe(console.latency_svg(data["turnLatency"]["p50"], data["turnLatency"]["p95"])),  # noqa: S308
            **(extra_context or {}),
        }
        return super().changelist_view(request, extra)

    # --- ledger integrity ---------------------------------------------------------------------
    def has_add_permission(self, request) -> bool:
        return False  # no raw row: "Place a call" (add_view) goes through services

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # state, numbers and metadata change only through services (actions below)

    def has_delete_permission(self, request, obj=None) -> bool:
        if not request.user.is_superuser:
            return False
        return obj is None or obj.is_terminal  # a live call's ledger stays

    def get_deleted_objects(self, objs, request):
        # An ended call takes its transcript and events with it; those rows have no delete
        # permission of their own (they are never deleted one by one).
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        if request.user.is_superuser:
            perms_needed = set()
        return deleted, counts, perms_needed, protected

    def delete_queryset(self, request, queryset: QuerySet) -> None:
        live = queryset.filter(state__in=[s.value for s in LIVE_STATES])
        if live.exists():
            self.message_user(request, f"{live.count()} live call(s) kept: only ended calls can be deleted.",
                              messages.WARNING)
        queryset.exclude(pk__in=live.values("pk")).delete()

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
class TranscriptEntryAdmin(ReadOnlyLedgerAdmin):
    list_display = ("timestamp", "call", "speaker", "text", "latency_ms", "interrupted")
    list_filter = ("speaker",)
    search_fields = ("text", "call__id")
    readonly_fields = ("call", "speaker", "text", "is_final", "turn_token", "interrupted", "latency_ms", "timestamp")


@admin.register(CallEvent)
class CallEventAdmin(ReadOnlyLedgerAdmin):
    list_display = ("received_at", "type", "provider", "call", "provider_call_id")
    list_filter = ("type", "provider")
    search_fields = ("dedupe_key", "provider_call_id", "call__id")
    readonly_fields = ("call", "provider", "type", "dedupe_key", "provider_call_id", "payload", "received_at")


class AllowedCallersCsvForm(forms.Form):
    file = forms.FileField(label="CSV file", help_text="One caller per line: number,label[,enabled] -- "
                           "number in E.164 (+15551234567); enabled is true/false (default true).")

    MAX_BYTES = 1024 * 1024

    def clean_file(self):
        upload = self.cleaned_data["file"]
        if upload.size > self.MAX_BYTES:
            raise forms.ValidationError("the file is larger than 1 MB")
        try:
            return upload.read().decode("utf-8-sig")
        except UnicodeDecodeError:
            raise forms.ValidationError("the file is not UTF-8 text") from None


def parse_allowed_callers_csv(text: str) -> tuple[list[tuple[str, str, bool]], list[str]]:
    """Rows to import and one error per bad line (``line N: ...``); nothing is imported when any
    line is bad, so a half-applied list never surprises an operator."""
    import csv
    import io

    rows, errors = [], []
    for number_of_line, record in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not record or not "".join(record).strip() or record[0].strip().lower() == "number":
            continue  # blank lines and a header row
        number = record[0].strip()
        label = record[1].strip() if len(record) > 1 else ""
        enabled_text = record[2].strip().lower() if len(record) > 2 else "true"
        if not E164.fullmatch(number):
            errors.append(f"line {number_of_line}: number must be an E.164 number like +15551234567")
            continue
        if enabled_text not in ("true", "false", "1", "0", "yes", "no", ""):
            errors.append(f"line {number_of_line}: enabled must be true or false")
            continue
        rows.append((number, label[:100], enabled_text in ("true", "1", "yes", "")))
    return rows, errors


@admin.register(AllowedCaller)
class AllowedCallerAdmin(admin.ModelAdmin):
    list_display = ("number", "label", "enabled", "created_at")
    list_filter = ("enabled",)
    search_fields = ("number", "label")
    change_list_template = "admin/calls/allowedcaller/change_list.html"

    def get_urls(self):
        custom = [path("import-csv/", self.admin_site.admin_view(self.import_csv), name="calls_allowedcaller_import")]
        return custom + super().get_urls()

    def import_csv(self, request: HttpRequest) -> HttpResponse:
        if not self.has_add_permission(request) or not self.has_change_permission(request):
            raise PermissionDenied
        errors: list[str] = []
        if request.method == "POST":
            form = AllowedCallersCsvForm(request.POST, request.FILES)
            if form.is_valid():
                rows, errors = parse_allowed_callers_csv(form.cleaned_data["file"])
                if not errors:
                    with transaction.atomic():
                        for number, label, enabled in rows:
                            AllowedCaller.objects.update_or_create(number=number,
                                                                   defaults={"label": label, "enabled": enabled})
                    self.message_user(request, f"{len(rows)} allowed caller(s) imported.", messages.SUCCESS)
                    return redirect("admin:calls_allowedcaller_changelist")
        else:
            form = AllowedCallersCsvForm()
        return render(request, "admin/calls/allowedcaller/import_csv.html", {
            **self.admin_site.each_context(request), "form": form, "errors": errors,
            "opts": self.model._meta, "title": "Import allowed callers",
        })


@admin.register(RejectedInboundCall)
class RejectedInboundCallAdmin(ReadOnlyLedgerAdmin):
    list_display = ("created_at", "provider", "provider_call_id", "from_number", "hangup_attempted", "hangup_error")
    readonly_fields = list_display


@admin.register(WebhookReceipt)
class WebhookReceiptAdmin(ReadOnlyLedgerAdmin):
    list_display = ("received_at", "provider", "status_code", "request_key")
    readonly_fields = ("received_at", "provider", "status_code", "content_type", "body", "request_key")
