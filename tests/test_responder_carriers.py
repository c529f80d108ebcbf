"""The auto-responder on real carrier paths: an allow-listed inbound caller held for three turns on
Twilio (<Gather> speech) and on Telnyx (call transcription), each through a real daphne, the carrier's
local fake and a local chat-completions server."""

import json

import pytest

from calls.models import Call
from tests.conftest import free_port, wait_until
from tests.fakes.chat_completions import FakeChatCompletions, ScriptedAnswer
from tests.fakes.telnyx import FakeTelnyx
from tests.fakes.twilio import (
    FROM_NUMBER,
    PUBLIC_ORIGIN,
    PUBLIC_URL,
    Callee,
    running_fake_twilio,
    twilio_config,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

FRIEND = "+15557770000"
EAGER = {"VOICECALL_CELERY_EAGER": "1"}
CALLER_LINES = ["I'd like a table tonight.", "Four people.", "Eight o'clock, thanks."]
ANSWERS = ["Happy to help. For how many?", "Great. What time?", "Booked for eight. See you!"]


@pytest.fixture
def chat():
    fake = FakeChatCompletions().start()
    fake.answers = [ScriptedAnswer(content=json.dumps({"spoken": text})) for text in ANSWERS]
    yield fake
    fake.stop()


def responder_settings(chat: FakeChatCompletions) -> dict:
    return {"inboundPolicy": "allowlist", "allowFrom": [FRIEND], "inboundGreeting": "Bistro, how can I help?",
            "responseModel": "openai/gpt-4o-mini",
            "responder": {"baseUrl": chat.base_url, "apiKey": chat.api_key}}


def lines(call: Call, speaker: str) -> list[str]:
    return list(call.transcript.filter(speaker=speaker).order_by("id").values_list("text", flat=True))


def test_inbound_caller_held_for_three_turns_on_twilio_gather(start_daphne, chat):
    with running_fake_twilio() as twilio:
        twilio.callee = Callee(replies=list(CALLER_LINES))
        port = free_port()
        server = start_daphne(twilio_config(twilio, serve={"port": port}, **responder_settings(chat)),
                              port=port, extra_env=EAGER)
        twilio.tunnel[PUBLIC_ORIGIN] = server.base_url
        leg = twilio.place_inbound_call(from_=FRIEND, to=FROM_NUMBER, url=PUBLIC_URL)
        call = wait_until(lambda: Call.objects.filter(provider_call_id=leg.sid).first())
        wait_until(lambda: len(lines(call, "bot")) == 4, timeout=40)
        assert lines(call, "user") == CALLER_LINES
        assert lines(call, "bot") == ["Bistro, how can I help?", *ANSWERS]
        wait_until(lambda: ANSWERS[-1] in leg.spoken)  # the caller really heard each reply (TwiML <Say>)
        assert leg.spoken[:4] == ["Bistro, how can I help?", *ANSWERS]
        assert [r["messages"][1]["content"] for r in chat.requests] == CALLER_LINES
        call.refresh_from_db()
        assert call.state in {"speaking", "listening"} and len(call.metadata["replyLatencies"]) == 3
        leg.control.put(("hangup",))
        leg.ended.wait(10)


def test_inbound_caller_held_for_three_turns_on_telnyx_transcription(start_daphne, chat):
    with FakeTelnyx.running(replies=tuple(CALLER_LINES)) as telnyx:
        port = free_port()
        document = {"provider": "telnyx", "fromNumber": "+15550001000", "serve": {"port": port},
                    "telnyx": {"apiKey": telnyx.api_key, "connectionId": telnyx.connection_id,
                               "publicKey": telnyx.public_key, "apiBaseUrl": telnyx.base_url},
                    **responder_settings(chat)}
        server = start_daphne(document, port=port, extra_env=EAGER)
        telnyx.webhook_url = f"{server.base_url}/voice/webhook"
        leg = telnyx.start_inbound(FRIEND, "+15550001000")
        call = wait_until(lambda: Call.objects.filter(provider_call_id=leg.call_control_id).first())
        wait_until(lambda: len(lines(call, "bot")) == 4, timeout=40)
        assert lines(call, "user") == CALLER_LINES
        assert lines(call, "bot") == ["Bistro, how can I help?", *ANSWERS]
        spoken = [c.body["payload"] for c in telnyx.commands_for("speak", leg.call_control_id)]
        assert spoken == ["Bistro, how can I help?", *ANSWERS]
        # each reply was spoken while listening was off, then listening resumed after playback
        def actions():
            return [c.action for c in telnyx.commands_for(call_control_id=leg.call_control_id)]

        wait_until(lambda: actions().count("transcription_start") == 4)
        assert actions() == ["answer", *["speak", "transcription_start"] * 4]
