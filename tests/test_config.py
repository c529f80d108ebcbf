"""Tests for calls/config/: the strict voice-call config loader (no database needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from calls.config import (
    ConfigError,
    NumberRoute,
    ServeConfig,
    VoiceCallConfig,
    config_from_dict,
    load_config,
    set_config,
)

NO_ENV: dict[str, str] = {}

TWILIO_OK = {
    "provider": "twilio",
    "fromNumber": "+15550001111",
    "twilio": {"accountSid": "AC123", "authToken": "twilio-secret"},
}

WRAPPER_JSON5 = """
// The whole OpenClaw document: only the voice-call entry and messages.tts matter.
{
  agents: {defaults: {model: "openai/gpt-4o"}},   // ignored
  plugins: {
    allow: ["voice-call"],                         // ignored
    entries: {
      "other-plugin": {enabled: true, config: {anything: 1}},   // ignored
      "voice-call": {
        enabled: true,
        config: {
          provider: "twilio",
          fromNumber: "+15550001111",
          twilio: {accountSid: "AC123", authToken: "twilio-secret",},
          serve: {port: 4444, bind: "0.0.0.0"},
          tts: {providers: {openai: {voice: "nova"}}},
        },
      },
    },
  },
  messages: {
    tts: {provider: "openai", providers: {openai: {apiKey: "core-key", voice: "alloy", model: "m1"}}},
  },
}
"""


@pytest.fixture(autouse=True)
def _fresh_cache():
    set_config(None)
    yield
    set_config(None)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def errors_of(data: dict, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, env=NO_ENV if env is None else env)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


# --------------------------------------------------------------------------------------------------
# Good files and defaults
# --------------------------------------------------------------------------------------------------


def test_no_file_means_mock_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(env=NO_ENV)
    assert cfg.enabled is True
    assert cfg.provider == "mock"
    assert cfg.from_number is None and cfg.to_number is None
    assert cfg.twilio.api_base_url == "https://api.twilio.com"
    assert cfg.twilio.region is None
    assert cfg.telnyx.api_base_url == "https://api.telnyx.com"
    assert cfg.plivo.api_base_url == "https://api.plivo.com"
    assert cfg.mock.auto_answer is True
    assert (cfg.mock.answer_after_ms, cfg.mock.reply_after_ms) == (800, 700)
    assert cfg.mock.replies == ["Yes, that works for me.", "Thanks, that is all.", "Goodbye."]
    assert cfg.inbound_policy == "disabled"
    assert cfg.allow_from == [] and cfg.inbound_greeting is None
    assert (cfg.outbound.default_mode, cfg.outbound.notify_hangup_delay_sec) == ("notify", 3)
    assert cfg.max_duration_seconds == 300
    assert cfg.stale_call_reaper_seconds == 120
    assert cfg.silence_timeout_ms == 800
    assert cfg.transcript_timeout_ms == 180000
    assert cfg.ring_timeout_ms == 30000
    assert cfg.max_concurrent_calls == 1
    assert (cfg.serve.port, cfg.serve.bind, cfg.serve.path) == (3334, "127.0.0.1", "/voice/webhook")
    assert cfg.public_url is None
    assert cfg.tunnel.provider == "none" and cfg.tunnel.allow_ngrok_free_tier_loopback_bypass is False
    assert (cfg.tailscale.mode, cfg.tailscale.path, cfg.tailscale.port) == ("off", "/voice/webhook", 443)
    assert cfg.webhook_security.allowed_hosts == []
    assert cfg.webhook_security.trust_forwarding_headers is False
    assert cfg.webhook_security.trusted_proxy_ips == []
    s = cfg.streaming
    assert (s.enabled, s.provider, s.providers, s.stream_path) == (False, None, {}, "/voice/stream")
    assert (s.pre_start_timeout_ms, s.max_pending_connections) == (5000, 32)
    assert (s.max_pending_connections_per_ip, s.max_connections) == (4, 128)
    assert cfg.skip_signature_verification is False
    assert cfg.tts is None and cfg.core_tts is None
    assert cfg.response_model is None and cfg.response_system_prompt is None
    assert cfg.response_timeout_ms == 30000
    assert cfg.responder.base_url is None and cfg.responder.api_key is None
    assert cfg.responder.fallback_message == "Sorry, I didn't catch that. Could you say it again?"
    assert cfg.numbers == {} and cfg.rpc.token is None and cfg.store is None
    assert cfg.effective_tts() == {}


def test_defaults_are_not_shared_between_instances():
    a, b = VoiceCallConfig(), VoiceCallConfig()
    a.mock.replies.append("extra")
    a.allow_from.append("+15550001111")
    assert b.mock.replies == ["Yes, that works for me.", "Thanks, that is all.", "Goodbye."]
    assert b.allow_from == []


def test_inner_form_json5_file(tmp_path):
    path = write(
        tmp_path / "inner.json5",
        """
        // just the config object
        {
          provider: 'twilio',
          fromNumber: "+15550001111",
          toNumber: "+15550002222",
          twilio: {accountSid: "AC123", authToken: "twilio-secret", region: "ie1",},
          inboundPolicy: "allowlist",
          allowFrom: ["+15550003333",],
          outbound: {defaultMode: "conversation", notifyHangupDelaySec: 0},
          staleCallReaperSeconds: 0,
          webhookSecurity: {trustedProxyIPs: ["10.0.0.1", "::1"], allowedHosts: ["x.example.com"]},
          streaming: {enabled: true, provider: "openai", providers: {openai: {model: "gpt-4o-transcribe"}}},
          numbers: {"+15550004444": {inboundGreeting: "Sales here", responseTimeoutMs: 5000}},
          mock: {autoAnswer: false, replies: ["Hi"]},
          store: "~/.openclaw/voice-calls",
        }
        """,
    )
    cfg = load_config(path, env=NO_ENV)
    assert cfg.provider == "twilio"
    assert cfg.from_number == "+15550001111" and cfg.to_number == "+15550002222"
    assert cfg.twilio.account_sid == "AC123" and cfg.twilio.region == "ie1"
    assert cfg.inbound_policy == "allowlist" and cfg.allow_from == ["+15550003333"]
    assert cfg.outbound.default_mode == "conversation" and cfg.outbound.notify_hangup_delay_sec == 0
    assert cfg.stale_call_reaper_seconds == 0
    assert cfg.webhook_security.trusted_proxy_ips == ["10.0.0.1", "::1"]
    assert cfg.streaming.enabled is True
    assert cfg.streaming.providers == {"openai": {"model": "gpt-4o-transcribe"}}
    route = cfg.numbers["+15550004444"]
    assert isinstance(route, NumberRoute)
    assert route.inbound_greeting == "Sales here" and route.response_timeout_ms == 5000
    assert cfg.mock.auto_answer is False and cfg.mock.replies == ["Hi"]
    assert cfg.store == "~/.openclaw/voice-calls"
    assert cfg.core_tts is None


def test_wrapper_form_json5_file(tmp_path):
    cfg = load_config(write(tmp_path / "openclaw.json5", WRAPPER_JSON5), env=NO_ENV)
    assert cfg.enabled is True
    assert cfg.provider == "twilio"
    assert cfg.serve.port == 4444
    assert cfg.core_tts == {
        "provider": "openai",
        "providers": {"openai": {"apiKey": "core-key", "voice": "alloy", "model": "m1"}},
    }
    assert cfg.effective_tts() == {
        "provider": "openai",
        "providers": {"openai": {"apiKey": "core-key", "voice": "nova", "model": "m1"}},
    }


def test_wrapper_enabled_defaults_to_true_and_config_may_be_absent():
    cfg = config_from_dict({"plugins": {"entries": {"voice-call": {}}}}, env=NO_ENV)
    assert cfg.enabled is True and cfg.provider == "mock"
    cfg = config_from_dict({"plugins": {}}, env=NO_ENV)
    assert cfg.enabled is True and cfg.provider == "mock"


def test_wrapper_entry_disabled_skips_provider_requirements():
    doc = {"plugins": {"entries": {"voice-call": {"enabled": False, "config": {"provider": "twilio"}}}}}
    cfg = config_from_dict(doc, env=NO_ENV)
    assert cfg.enabled is False and cfg.provider == "twilio"


def test_inner_enabled_false_skips_provider_requirements_but_not_schema():
    assert config_from_dict({"enabled": False, "provider": "telnyx"}, env=NO_ENV).enabled is False
    assert errors_of({"enabled": False, "provider": "telnyx", "serve": {"port": -1}}) == [
        "serve.port: must be an integer > 0"
    ]


def test_python_construction_uses_snake_case_names():
    cfg = VoiceCallConfig(from_number="+15550001111", serve=ServeConfig(port=8080))
    assert cfg.from_number == "+15550001111" and cfg.serve.port == 8080
    assert VoiceCallConfig(serve={"port": 9000}).serve.port == 9000


# --------------------------------------------------------------------------------------------------
# Errors: schema
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"serve": {"port": 0}}, "serve.port: must be an integer > 0"),
        ({"serve": {"port": "3334"}}, "serve.port: must be an integer > 0"),
        ({"serve": {"port": 3334.0}}, "serve.port: must be an integer > 0"),
        ({"serve": {"port": 70000}}, "serve.port: must be an integer <= 65535"),
        ({"serve": {"path": "voice"}}, 'serve.path: must be a path starting with "/"'),
        ({"serve": {"bind": ""}}, "serve.bind: must be a non-empty string"),
        ({"fromNumber": "5551234567"}, "fromNumber: must be an E.164 number like +15551234567"),
        ({"toNumber": "+0123"}, "toNumber: must be an E.164 number like +15551234567"),
        ({"provider": "vonage"}, "provider: must be one of telnyx, twilio, plivo, mock"),
        ({"provider": None}, "provider: must be one of telnyx, twilio, plivo, mock"),
        (
            {"twilio": {"foo": 1}},
            "twilio.foo: unknown key (allowed: accountSid, authToken, apiBaseUrl, region)",
        ),
        ({"twilio": {"region": "eu1"}}, "twilio.region: must be one of us1, ie1, au1"),
        ({"twilio": "AC123"}, "twilio: must be an object"),
        (
            {"twilio": {"apiBaseUrl": "ftp://x"}},
            "twilio.apiBaseUrl: must be an http or https URL with a host, like https://example.com",
        ),
        ({"outbound": {"defaultMode": "chat"}}, "outbound.defaultMode: must be one of notify, conversation"),
        (
            {"outbound": {"notifyHangupDelaySec": -1}},
            "outbound.notifyHangupDelaySec: must be an integer >= 0",
        ),
        ({"inboundPolicy": "everyone"}, "inboundPolicy: must be one of disabled, allowlist, pairing, open"),
        ({"allowFrom": "+15550001111"}, "allowFrom: must be a list"),
        ({"allowFrom": ["+15550001111", "555"]}, "allowFrom[1]: must be an E.164 number like +15551234567"),
        ({"maxDurationSeconds": 0}, "maxDurationSeconds: must be an integer > 0"),
        ({"maxConcurrentCalls": True}, "maxConcurrentCalls: must be an integer > 0"),
        ({"staleCallReaperSeconds": -5}, "staleCallReaperSeconds: must be an integer >= 0"),
        ({"skipSignatureVerification": "yes"}, "skipSignatureVerification: must be true or false"),
        ({"skipSignatureVerification": 1}, "skipSignatureVerification: must be true or false"),
        (
            {"publicUrl": "example.com/hook"},
            "publicUrl: must be an http or https URL with a host, like https://example.com",
        ),
        (
            {"publicUrl": "https://"},
            "publicUrl: must be an http or https URL with a host, like https://example.com",
        ),
        (
            {"tunnel": {"provider": "cloudflare"}},
            "tunnel.provider: must be one of none, ngrok, tailscale-serve, tailscale-funnel",
        ),
        (
            {"tailscale": {"mode": "funnel", "port": 8080}},
            "tailscale.port: must be one of 443, 8443, 10000 when tailscale.mode is funnel",
        ),
        (
            {"webhookSecurity": {"trustedProxyIPs": ["10.0.0.300"]}},
            "webhookSecurity.trustedProxyIPs[0]: must be an IP address",
        ),
        ({"streaming": {"providers": {"openai": "key"}}}, "streaming.providers.openai: must be an object"),
        ({"streaming": {"maxConnections": 0}}, "streaming.maxConnections: must be an integer > 0"),
        ({"tts": ["openai"]}, "tts: must be an object"),
        ({"mock": {"replies": ["ok", 3]}}, "mock.replies[1]: must be a string"),
        (
            {"numbers": {"5550001111": {}}},
            "numbers.5550001111: key must be an E.164 number like +15551234567",
        ),
        (
            {"numbers": {"+15550001111": {"agentId": "main"}}},
            "numbers.+15550001111.agentId: unknown key (allowed: inboundGreeting, responseSystemPrompt, "
            "responseModel, responseTimeoutMs, tts)",
        ),
        (
            {"numbers": {"+15550001111": {"responseTimeoutMs": 0}}},
            "numbers.+15550001111.responseTimeoutMs: must be an integer > 0",
        ),
        ({"rpc": {"token": ""}}, "rpc.token: must be a non-empty string"),
    ],
)
def test_schema_error_messages(data, expected):
    assert errors_of(data) == [expected]


def test_tailscale_funnel_accepts_its_ports():
    for port in (443, 8443, 10000):
        assert (
            config_from_dict({"tailscale": {"mode": "funnel", "port": port}}, env=NO_ENV).tailscale.port
            == port
        )
    assert config_from_dict({"tailscale": {"mode": "serve", "port": 8080}}, env=NO_ENV).tailscale.port == 8080


def test_unknown_top_level_key_lists_allowed_keys_but_not_core_tts():
    (line,) = errors_of({"agentId": "main"})
    assert line.startswith("agentId: unknown key (allowed: enabled, provider, fromNumber, toNumber, twilio,")
    assert "store)" in line
    assert "coreTts" not in line


def test_core_tts_is_not_a_file_key():
    assert errors_of({"coreTts": {"provider": "openai"}})[0].startswith("coreTts: unknown key (allowed:")
    doc = {"plugins": {"entries": {"voice-call": {"config": {"coreTts": {}}}}}}
    assert errors_of(doc)[0].startswith("plugins.entries.voice-call.config.coreTts: unknown key")


def test_snake_case_keys_are_not_accepted_in_files():
    (line,) = errors_of({"from_number": "+15550001111"})
    assert line.startswith("from_number: unknown key (allowed: enabled, provider, fromNumber,")


def test_wrapper_error_paths_are_prefixed():
    doc = {"plugins": {"entries": {"voice-call": {"config": {"serve": {"port": 0}, "twilio": {"foo": 1}}}}}}
    assert errors_of(doc) == [
        "plugins.entries.voice-call.config.twilio.foo: unknown key "
        "(allowed: accountSid, authToken, apiBaseUrl, region)",
        "plugins.entries.voice-call.config.serve.port: must be an integer > 0",
    ]


def test_wrapper_structure_errors():
    assert errors_of({"plugins": {"entries": {"voice-call": {"enabled": True, "hooks": {}}}}}) == [
        "plugins.entries.voice-call.hooks: unknown key (allowed: enabled, config)"
    ]
    assert errors_of({"plugins": {"entries": {"voice-call": {"enabled": "yes"}}}}) == [
        "plugins.entries.voice-call.enabled: must be true or false"
    ]
    assert errors_of({"plugins": {"entries": {"voice-call": {"config": []}}}}) == [
        "plugins.entries.voice-call.config: must be an object"
    ]
    assert errors_of({"plugins": []}) == ["plugins: must be an object"]
    assert errors_of({"plugins": {}, "messages": {"tts": "openai"}}) == ["messages.tts: must be an object"]


def test_all_errors_are_collected():
    errors = errors_of(
        {
            "provider": "twilio",
            "serve": {"port": 0},
            "outbound": {"defaultMode": "x"},
            "twilio": {"accountSid": "AC1"},
        }
    )
    assert errors == [
        "outbound.defaultMode: must be one of notify, conversation",
        "serve.port: must be an integer > 0",
        "fromNumber: required for provider twilio (or set TWILIO_FROM_NUMBER)",
        "twilio.authToken: required for provider twilio (or set TWILIO_AUTH_TOKEN)",
    ]


@pytest.mark.parametrize("bad_token", [987654321, ["tok-in-a-list-7777"], {"nested": "tok-in-a-dict-8888"}])
def test_wrong_typed_secret_never_appears_in_errors(bad_token):
    with pytest.raises(ConfigError) as info:
        config_from_dict({**TWILIO_OK, "twilio": {"accountSid": "AC1", "authToken": bad_token}}, env=NO_ENV)
    text = str(info.value)
    assert text == "twilio.authToken: must be a non-empty string"
    for needle in ("987654321", "7777", "8888", "tok-in"):
        assert needle not in text


def test_bad_env_value_says_where_it_came_from_without_echoing_it():
    env = {"TWILIO_FROM_NUMBER": "5550009999", "TWILIO_ACCOUNT_SID": "AC1", "TWILIO_AUTH_TOKEN": "t"}
    errors = errors_of({"provider": "twilio"}, env=env)
    assert errors == [
        "fromNumber: must be an E.164 number like +15551234567 (value came from TWILIO_FROM_NUMBER)"
    ]
    assert "5550009999" not in "\n".join(errors)


# --------------------------------------------------------------------------------------------------
# Errors: cross-field provider requirements (§1.2)
# --------------------------------------------------------------------------------------------------


def test_twilio_requirements():
    assert errors_of({"provider": "twilio"}) == [
        "fromNumber: required for provider twilio (or set TWILIO_FROM_NUMBER)",
        "twilio.accountSid: required for provider twilio (or set TWILIO_ACCOUNT_SID)",
        "twilio.authToken: required for provider twilio (or set TWILIO_AUTH_TOKEN)",
    ]
    assert config_from_dict(TWILIO_OK, env=NO_ENV).twilio.auth_token == "twilio-secret"


def test_telnyx_requirements():
    assert errors_of({"provider": "telnyx"}) == [
        "fromNumber: required for provider telnyx",
        "telnyx.apiKey: required for provider telnyx (or set TELNYX_API_KEY)",
        "telnyx.connectionId: required for provider telnyx (or set TELNYX_CONNECTION_ID)",
        "telnyx.publicKey: required for provider telnyx unless skipSignatureVerification is true "
        "(or set TELNYX_PUBLIC_KEY)",
    ]
    ok = {"provider": "telnyx", "fromNumber": "+15550001111", "telnyx": {"apiKey": "k", "connectionId": "c"}}
    assert errors_of(ok) == [
        "telnyx.publicKey: required for provider telnyx unless skipSignatureVerification is true "
        "(or set TELNYX_PUBLIC_KEY)"
    ]
    assert config_from_dict({**ok, "skipSignatureVerification": True}, env=NO_ENV).telnyx.public_key is None


def test_plivo_requirements():
    assert errors_of({"provider": "plivo", "fromNumber": "+15550001111"}) == [
        "plivo.authId: required for provider plivo (or set PLIVO_AUTH_ID)",
        "plivo.authToken: required for provider plivo (or set PLIVO_AUTH_TOKEN)",
    ]


def test_mock_needs_nothing():
    assert config_from_dict({"provider": "mock"}, env=NO_ENV).from_number is None


def test_streaming_requires_a_carrier_with_media_streams():
    assert errors_of({"streaming": {"enabled": True}}) == [
        "streaming.enabled: requires provider twilio, telnyx or plivo "
        "(provider mock has no media streams; it speaks and listens as text only)"
    ]
    carriers = {
        "twilio": TWILIO_OK,
        "telnyx": {"provider": "telnyx", "fromNumber": "+15550001111", "skipSignatureVerification": True,
                   "telnyx": {"apiKey": "KEY123", "connectionId": "123"}},
        "plivo": {"provider": "plivo", "fromNumber": "+15550001111",
                  "plivo": {"authId": "MA0123456789ABCDEFGH", "authToken": "plivo-secret"}},
    }
    for name, document in carriers.items():
        cfg = config_from_dict({**document, "streaming": {"enabled": True}}, env=NO_ENV)
        assert (cfg.provider, cfg.streaming.enabled) == (name, True)


def test_cross_field_errors_are_prefixed_in_wrapper_form():
    doc = {
        "plugins": {
            "entries": {"voice-call": {"config": {"provider": "plivo", "fromNumber": "+15550001111"}}}
        }
    }
    assert errors_of(doc) == [
        "plugins.entries.voice-call.config.plivo.authId: required for provider plivo (or set PLIVO_AUTH_ID)",
        "plugins.entries.voice-call.config.plivo.authToken: required for provider plivo "
        "(or set PLIVO_AUTH_TOKEN)",
    ]
