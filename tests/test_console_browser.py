"""The operator console in a real browser: Playwright driving Debian's Chromium against a real daphne
running the mock carrier (its scripted callee answers and replies), as an operator uses it after
``make run``. Nothing downloads a browser: without ``/usr/bin/chromium`` (``apt-get install
chromium``; ``.ci/run`` installs it) these tests are skipped, saying so."""

from __future__ import annotations

import re
import shutil

import pytest

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)",
                allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api")

PASSWORD = "console-test-password"
CALLEE = {"autoAnswer": True, "answerAfterMs": 200, "replyAfterMs": 200,
          "replies": ["Yes, that works for me.", "Thanks, that is all.", "Goodbye."]}
WAIT_MS = 30_000


@pytest.fixture
def operator(django_user_model):
    return django_user_model.objects.create_superuser("operator", "op@example.test", PASSWORD)


@pytest.fixture
def console(start_daphne, operator, monkeypatch):
    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are still sync.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    server = start_daphne({"provider": "mock", "mock": CALLEE, "maxConcurrentCalls": 3},
                          extra_env={"VOICECALL_CELERY_EAGER": "1"})
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        page = browser.new_page()
        page.set_default_timeout(WAIT_MS)
        page.goto(f"{server.base_url}/admin/login/?next=/admin/calls/call/")
        page.get_by_label("Username").fill("operator")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(re.compile(r"/admin/calls/call/$"))
        yield server, page
        browser.close()


def test_an_operator_places_watches_speaks_to_and_ends_a_call(console):
    _server, page = console
    assert page.locator("svg.vc-chart").count() == 3  # the dashboard's charts

    page.get_by_role("link", name="Place a call").click()
    page.get_by_label("To", exact=True).fill("+15550004444")
    page.get_by_label("Message", exact=True).fill("Hello from the console")
    page.get_by_label("Mode", exact=True).select_option("conversation")
    page.get_by_role("button", name="Place call").click()
    page.wait_for_url(re.compile(r"/admin/calls/call/[0-9a-f-]+/change/$"))
    url_before = page.url

    # Without a reload: the callee answers, hears the greeting and replies.
    playwright_api.expect(page.locator("#vc-transcript")).to_contain_text("Hello from the console")
    playwright_api.expect(page.locator("#vc-transcript")).to_contain_text("Yes, that works for me.")
    playwright_api.expect(page.locator("#vc-state")).to_have_text("listening")
    assert page.url == url_before

    page.get_by_label("Message", exact=True).fill("Please hold the line")
    page.get_by_role("button", name="Speak").click()
    playwright_api.expect(page.locator("#vc-control-ok")).to_have_text("Spoken.")
    playwright_api.expect(page.locator("#vc-transcript")).to_contain_text("Please hold the line")

    page.get_by_label("DTMF", exact=True).fill("x9")
    page.get_by_role("button", name="Send DTMF").click()
    playwright_api.expect(page.locator("#vc-control-error")).to_contain_text("digits may only contain")

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="End call").click()
    playwright_api.expect(page.locator("#vc-state")).to_have_text("hangup-bot")
    playwright_api.expect(page.get_by_role("button", name="Speak")).to_be_disabled()


def test_the_allowlist_refuses_a_number_that_is_not_e164(console):
    server, page = console
    page.goto(f"{server.base_url}/admin/calls/allowedcaller/add/")
    page.locator("#id_number").fill("12345")
    page.get_by_role("button", name="Save", exact=True).click()
    playwright_api.expect(page.locator(".errorlist")).to_contain_text("must be an E.164 number like +15551234567")
