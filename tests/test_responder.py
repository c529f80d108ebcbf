"""The LLM auto-responder (fact sheet §7.3) against a local chat-completions server."""

import json

import pytest

from calls import services
from calls.models import Call, TranscriptEntry
from providers.llm import Turn, build_messages, extract_spoken, model_name
from tests.fakes.chat_completions import FakeChatCompletions, ScriptedAnswer

WEBHOOK = "/voice/webhook"


@pytest.fixture
def chat():
    fake = FakeChatCompletions().start()
    yield fake
    fake.stop()


@pytest.fixture
def responder_config(configure, chat):
    def _configure(**extra):
        return configure({"inboundPolicy": "allowlist", "allowFrom": ["+15557770000"],
                          "responseModel": "openai/gpt-4o-mini", "responseTimeoutMs": 1500,
                          "responder": {"baseUrl": chat.base_url, "apiKey": chat.api_key,
                                        "fallbackMessage": "Sorry, say that again?"}, **extra})
    return _configure


def post_events(client, *events):
    return client.post(WEBHOOK, data=json.dumps({"events": list(events)}), content_type="application/json")


def inbound_call(client, call_sid="mock-in-1"):
    post_events(client, {"id": f"{call_sid}-i", "type": "call.initiated", "callId": call_sid, "direction": "inbound",
                         "from": "+15557770000", "to": "+15550000000"},
                {"id": f"{call_sid}-a", "type": "call.answered", "callId": call_sid})
    return Call.objects.get(provider_call_id=call_sid)


def caller_says(client, call, text, key):
    return post_events(client, {"id": key, "type": "call.speech", "callId": call.provider_call_id, "transcript": text})


@pytest.mark.parametrize(
    ("content", "spoken"),
    [
        ('{"spoken": "Hello there."}', "Hello there."),
        ('```json\n{"spoken": "Fenced reply."}\n```', "Fenced reply."),
        ('Sure! {"spoken": "Outer object."} hope that helps', "Outer object."),
        ('blah "spoken": "Inline \\"quoted\\" field" blah', 'Inline "quoted" field'),
        ("Thinking about it...\n\nJust plain words,\n  with   spaces.", "Just plain words, with spaces."),
        ('{"spoken": ""}', ""),
        ("", ""),
    ],
)
def test_spoken_extraction_is_tolerant(content, spoken):
    assert extract_spoken(content) == spoken


def test_prompt_carries_history_contract_and_caller():
    messages = build_messages(history=[Turn("bot", "Hi!"), Turn("user", "Hello")], utterance="Book a table",
                              caller="+15557770000", system_prompt=None)
    system = messages[0]["content"]
    assert "+15557770000" in system and "You: Hi!\nCaller: Hello" in system and '{"spoken"' in system
    assert messages[1] == {"role": "user", "content": "Book a table"}
    assert model_name("openai/gpt-4o-mini") == "gpt-4o-mini" and model_name("llama3") == "llama3"


@pytest.mark.django_db(transaction=True)
def test_inbound_caller_is_answered_turn_by_turn(client, responder_config, chat):
    responder_config()
    chat.answers = [ScriptedAnswer(content=json.dumps({"spoken": f"Answer {n}."})) for n in (1, 2, 3)]
    call = inbound_call(client)
    for n, words in enumerate(["I need a table", "For four people", "At eight"], start=1):
        caller_says(client, call, words, f"s{n}")
    lines = list(call.transcript.values_list("speaker", "text"))
    assert lines == [("bot", "Hello! How can I help you today?"), ("user", "I need a table"), ("bot", "Answer 1."),
                     ("user", "For four people"), ("bot", "Answer 2."), ("user", "At eight"), ("bot", "Answer 3.")]
    assert chat.requests[0]["model"] == "gpt-4o-mini"
    assert "Caller: I need a table" in chat.requests[2]["messages"][0]["content"]
    call.refresh_from_db()
    assert len(call.metadata["replyLatencies"]) == 3
    assert all(isinstance(e, int) for e in call.transcript.filter(speaker="bot").exclude(
        text__startswith="Hello").values_list("latency_ms", flat=True))
    report = services.latency_report()
    assert report["replyTotal"]["count"] == 3


@pytest.mark.django_db(transaction=True)
def test_replayed_transcript_does_not_trigger_a_second_reply(client, responder_config, chat):
    responder_config()
    call = inbound_call(client)
    caller_says(client, call, "Hello?", "same-key")
    caller_says(client, call, "Hello?", "same-key")
    assert len(chat.requests) == 1
    assert call.transcript.filter(speaker="bot").count() == 2  # greeting + one reply


@pytest.mark.django_db(transaction=True)
def test_partial_transcripts_do_not_trigger_replies(client, responder_config, chat):
    responder_config()
    call = inbound_call(client)
    post_events(client, {"id": "p1", "type": "call.speech", "callId": call.provider_call_id, "transcript": "Hel",
                         "isFinal": False})
    assert chat.requests == []


@pytest.mark.django_db(transaction=True)
def test_model_timeout_speaks_the_fallback_and_the_call_continues(client, responder_config, chat):
    responder_config()
    chat.answers = [ScriptedAnswer(content='{"spoken": "too late"}', delay_s=3)]
    call = inbound_call(client)
    caller_says(client, call, "Are you there?", "t1")
    call.refresh_from_db()
    assert call.transcript.order_by("-id").first().text == "Sorry, say that again?"
    assert call.state == "listening"
    assert "model did not answer within 1500ms" in call.last_error
    assert "did not answer" in call.metadata["lastResponderError"]


@pytest.mark.django_db(transaction=True)
def test_malformed_model_reply_is_spoken_as_cleaned_text_or_fallback(client, responder_config, chat):
    responder_config()
    chat.answers = [ScriptedAnswer(raw_body="<html>502 Bad Gateway</html>"),
                    ScriptedAnswer(content="```\nOk, noted.\n```")]
    call = inbound_call(client)
    caller_says(client, call, "One", "m1")
    caller_says(client, call, "Two", "m2")
    bot = list(call.transcript.filter(speaker="bot").values_list("text", flat=True))
    assert bot == ["Hello! How can I help you today?", "Sorry, say that again?", "Ok, noted."]
    assert "not a chat completion" in Call.objects.get(id=call.id).metadata["lastResponderError"]


@pytest.mark.django_db(transaction=True)
def test_a_newer_utterance_cancels_the_pending_reply(client, responder_config, chat, monkeypatch):
    """Barge-in: the caller speaks again while the first reply is generated; only the newest is spoken."""
    responder_config()
    call = inbound_call(client)
    from calls import tasks

    queued = []
    monkeypatch.setattr(tasks.generate_reply, "delay", lambda *args: queued.append(args))
    caller_says(client, call, "I want pizza", "b1")
    caller_says(client, call, "No wait, sushi", "b2")
    assert len(queued) == 2
    chat.answers = [ScriptedAnswer(content='{"spoken": "Sushi it is."}')]
    assert services.generate_reply(*queued[0]) is None  # superseded before the model was even asked
    assert services.generate_reply(*queued[1]) == "Sushi it is."
    assert list(call.transcript.filter(speaker="bot").values_list("text", flat=True))[-1] == "Sushi it is."
    assert len(chat.requests) == 1


@pytest.mark.django_db(transaction=True)
def test_reply_superseded_while_the_model_thinks_is_dropped(client, responder_config, chat, monkeypatch):
    responder_config()
    call = inbound_call(client)
    from calls import tasks

    queued = []
    monkeypatch.setattr(tasks.generate_reply, "delay", lambda *args: queued.append(args))
    caller_says(client, call, "First thing", "c1")

    def newer_words_arrive(messages):
        caller_says(client, call, "Actually, something else", "c2")
        return '{"spoken": "Reply to the first thing."}'

    from providers.llm import ChatResponder

    monkeypatch.setattr(ChatResponder, "reply", lambda self, messages: newer_words_arrive(messages))
    assert services.generate_reply(*queued[0]) is None
    assert "Reply to the first thing." not in call.transcript.values_list("text", flat=True)


@pytest.mark.django_db(transaction=True)
def test_no_model_configured_means_no_auto_reply(client, configure, chat):
    configure(inboundPolicy="open")
    call = inbound_call(client)
    caller_says(client, call, "Hello?", "n1")
    assert chat.requests == [] and call.transcript.filter(speaker="bot").count() == 1


@pytest.mark.django_db(transaction=True)
def test_per_number_route_overrides_greeting_prompt_and_model(client, responder_config, chat):
    responder_config(numbers={"+15550000000": {"inboundGreeting": "Pizza Palace, hi!",
                                               "responseSystemPrompt": "You take pizza orders.",
                                               "responseModel": "local/llama3"}})
    call = inbound_call(client)
    caller_says(client, call, "One margherita", "r1")
    assert call.transcript.first().text == "Pizza Palace, hi!"
    assert chat.requests[0]["model"] == "llama3"
    assert chat.requests[0]["messages"][0]["content"].startswith("You take pizza orders.")


@pytest.mark.django_db(transaction=True)
def test_rejected_caller_never_reaches_the_model(client, responder_config, chat):
    responder_config()
    post_events(client, {"id": "x1", "type": "call.initiated", "callId": "mock-spam", "direction": "inbound",
                         "from": "+15559990000"},
                {"id": "x2", "type": "call.speech", "callId": "mock-spam", "transcript": "hi"})
    assert Call.objects.count() == 0 and TranscriptEntry.objects.count() == 0 and chat.requests == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("answer", "recorded"),
    [
        pytest.param(ScriptedAnswer(status=503, raw_body='{"error": "model overloaded"}'),
                     "HTTP 503 model overloaded", id="string-error-ollama-vllm"),
        pytest.param(ScriptedAnswer(status=500, raw_body='{"error": {"message": "boom"}}'), "HTTP 500 boom",
                     id="openai-error-object"),
        pytest.param(ScriptedAnswer(status=502, raw_body="<html>Bad Gateway</html>"), "HTTP 502", id="html-5xx"),
        pytest.param(ScriptedAnswer(status=200, raw_body='{"error": "model overloaded"}'),
                     "not a chat completion model overloaded", id="error-in-a-200"),
        pytest.param(ScriptedAnswer(status=200, raw_body='["not", "an", "object"]'), "not a chat completion",
                     id="json-array"),
        pytest.param(ScriptedAnswer(content='{"spoken": "far too slow"}', dribble_s=0.01),
                     "did not answer within 1500ms", id="dribbled-past-the-timeout"),
    ],
)
def test_any_bad_model_answer_speaks_the_fallback_and_keeps_the_call(client, responder_config, chat, answer,
                                                                     recorded):
    responder_config()
    chat.answers = [answer]
    call = inbound_call(client)
    caller_says(client, call, "Hello?", "bad-1")
    call.refresh_from_db()
    assert call.transcript.order_by("-id").first().text == "Sorry, say that again?"
    assert call.state == "listening" and not call.is_terminal
    assert recorded in call.metadata["lastResponderError"]
    assert call.metadata["replyLatencies"][-1]["fallback"] is True


@pytest.mark.django_db(transaction=True)
def test_a_redelivered_reply_task_is_not_spoken_twice(client, responder_config, chat):
    """acks-late redelivers a task whose worker died: the caller must not hear the reply twice."""
    responder_config()
    chat.answers = [ScriptedAnswer(content='{"spoken": "Once only."}'),
                    ScriptedAnswer(content='{"spoken": "Twice?"}')]
    call = inbound_call(client)
    caller_says(client, call, "Book it", "r1")
    user_line = call.transcript.get(speaker="user")
    assert services.generate_reply(str(call.id), user_line.id) is None  # the redelivery
    bot = list(call.transcript.filter(speaker="bot").values_list("text", flat=True))
    assert bot == ["Hello! How can I help you today?", "Once only."]


@pytest.mark.django_db(transaction=True)
def test_reply_latency_is_stored_on_the_line_the_reply_spoke(client, responder_config, chat, monkeypatch):
    """Another line spoken right after the reply (an operator's speak) keeps no reply latency."""
    from calls.services import responder, turns

    responder_config()
    chat.answers = [ScriptedAnswer(content='{"spoken": "The reply."}')]
    call = inbound_call(client)

    def speak_then_operator_speaks(call_, text, **kwargs):
        entry_id = turns.speak_now(call_, text, **kwargs)
        services.speak(str(call_.id), "An operator line.")
        return entry_id

    monkeypatch.setattr(responder, "speak_now", speak_then_operator_speaks)
    caller_says(client, call, "Hi", "l1")
    lines = dict(call.transcript.filter(speaker="bot").values_list("text", "latency_ms"))
    assert isinstance(lines["The reply."], int)
    assert lines["An operator line."] is None
