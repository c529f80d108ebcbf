"""Django admin: the ledger is visible and the actions go through services."""

import pytest
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from calls.models import AllowedCaller, Call
from tests.factories import AnsweredCallFactory, CallFactory, TranscriptEntryFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(admin_client):
    return admin_client


def test_call_list_filters_and_search(staff):
    ringing = CallFactory(state="ringing", to_number="+15558880000", provider_call_id="CAabc")
    CallFactory(state="completed", to_number="+15557770000")
    url = reverse("admin:calls_call_changelist")
    page = staff.get(url, {"state": "ringing"})
    assert page.status_code == 200
    assert str(ringing.id) in page.content.decode() and "+15557770000" not in page.content.decode()
    found = staff.get(url, {"q": "CAabc"}).content.decode()
    assert str(ringing.id) in found and "+15557770000" not in found
    for params in ({"direction__exact": "outbound"}, {"provider__exact": "mock"}, {"duration": "lt30"}):
        assert staff.get(url, params).status_code == 200


def test_call_page_shows_transcript_and_events(staff):
    call = AnsweredCallFactory()
    TranscriptEntryFactory(call=call, speaker="user", text="see you at noon")
    page = staff.get(reverse("admin:calls_call_change", args=[call.id])).content.decode()
    assert "see you at noon" in page


def test_end_call_action_hangs_up_through_services(staff):
    call = AnsweredCallFactory()
    staff.post(reverse("admin:calls_call_changelist"), {"action": "end_calls", "_selected_action": [call.pk]})
    call.refresh_from_db()
    assert call.state == "hangup-bot"


def test_speak_action_asks_for_text_then_speaks(staff):
    call = AnsweredCallFactory()
    url = reverse("admin:calls_call_changelist")
    form = staff.post(url, {"action": "speak_to_calls", "_selected_action": [call.pk]})
    assert form.status_code == 200 and b"Speak" in form.content
    staff.post(url, {"action": "speak_to_calls", "_selected_action": [call.pk], "apply": "1",
                     "message": "One moment please"})
    assert list(call.transcript.values_list("text", flat=True)) == ["One moment please"]


def test_speak_action_on_an_ended_call_reports_the_error(staff):
    call = CallFactory(state="completed", provider_call_id="mock-done")
    response = staff.post(reverse("admin:calls_call_changelist"), {
        "action": "speak_to_calls", "_selected_action": [call.pk], "apply": "1", "message": "hi"}, follow=True)
    assert "Call has ended" in response.content.decode()
    assert not Call.objects.get(id=call.id).transcript.exists()


def test_allowed_callers_are_editable(staff):
    response = staff.post(reverse("admin:calls_allowedcaller_add"), {"number": "+15551230000", "label": "Mum",
                                                                    "enabled": "on"})
    assert response.status_code == 302
    assert AllowedCaller.objects.get().label == "Mum"
    bad = staff.post(reverse("admin:calls_allowedcaller_add"), {"number": "12345", "label": "x"})
    assert bad.status_code == 200 and AllowedCaller.objects.count() == 1


def test_call_page_shows_auto_responder_latencies_and_errors(staff):
    call = AnsweredCallFactory(metadata={"replyLatencies": [{"llmMs": 420, "totalMs": 610, "fallback": False},
                                                            {"llmMs": 1500, "totalMs": 1650, "fallback": True}]},
                               last_error="auto-responder: model did not answer within 1500ms")
    page = staff.get(reverse("admin:calls_call_change", args=[call.id])).content.decode()
    assert "#1: text 420 ms, audio 610 ms" in page
    assert "#2: text 1500 ms, audio 1650 ms (fallback)" in page
    assert "model did not answer within 1500ms" in page


def test_a_call_row_cannot_be_added_or_edited_in_admin(staff):
    call = AnsweredCallFactory(to_number="+15551112222")
    place = staff.get(reverse("admin:calls_call_add")).content.decode()  # "add" is the Place-a-call form
    assert 'value="Place call"' in place and 'name="metadata"' not in place
    change_url = reverse("admin:calls_call_change", args=[call.id])
    page = staff.get(change_url).content.decode()
    assert 'name="to_number"' not in page and 'name="metadata"' not in page  # shown read-only
    staff.post(change_url, {"to_number": "+15559999999", "mode": "notify", "metadata": "{}"})
    call.refresh_from_db()
    assert (call.to_number, call.mode) == ("+15551112222", "conversation")


def test_only_ended_calls_can_be_deleted_and_only_by_a_superuser(staff, client, django_user_model):
    live, ended = AnsweredCallFactory(), CallFactory(state="completed", provider_call_id="mock-gone")
    TranscriptEntryFactory(call=live, text="still talking")
    assert staff.get(reverse("admin:calls_call_delete", args=[live.id])).status_code == 403
    staff.post(reverse("admin:calls_call_changelist"), {
        "action": "delete_selected", "_selected_action": [live.pk, ended.pk], "post": "yes"})
    assert list(Call.objects.values_list("id", flat=True)) == [live.id]
    assert live.transcript.filter(text="still talking").exists()

    operator = django_user_model.objects.create_user("operator", password="pw", is_staff=True)
    operator.user_permissions.set(Permission.objects.filter(content_type__app_label="calls"))
    client.force_login(operator)
    other = CallFactory(state="completed", provider_call_id="mock-other")
    assert client.get(reverse("admin:calls_call_delete", args=[other.id])).status_code == 403


@pytest.mark.parametrize("model", ["transcriptentry", "callevent", "webhookreceipt", "rejectedinboundcall"])
def test_ledger_rows_cannot_be_added_changed_or_deleted(staff, model):
    assert staff.get(reverse(f"admin:calls_{model}_add")).status_code == 403
    assert staff.get(reverse(f"admin:calls_{model}_changelist")).status_code == 200  # still viewable


def test_allowed_callers_import_from_csv_all_or_nothing(staff):
    url = reverse("admin:calls_allowedcaller_import")
    assert "Import CSV" in staff.get(reverse("admin:calls_allowedcaller_changelist")).content.decode()
    bad = SimpleUploadedFile("callers.csv", b"number,label\n+15551230001,Mum\n12345,Typo\n")
    response = staff.post(url, {"file": bad})
    assert response.status_code == 200
    assert "line 3: number must be an E.164 number like +15551234567" in response.content.decode()
    assert not AllowedCaller.objects.exists()

    good = SimpleUploadedFile("callers.csv", b"number,label,enabled\n+15551230001,Mum\n+15551230002,Dad,false\n")
    assert staff.post(url, {"file": good}).status_code == 302
    assert set(AllowedCaller.objects.values_list("number", "label", "enabled")) == {
        ("+15551230001", "Mum", True), ("+15551230002", "Dad", False)}
