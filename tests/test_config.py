"""Tests for calls/config/: the strict voice-call config loader (no database needed)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from calls.config import (
    SECURITY_WARNING,
    ConfigError,
    NumberRoute,
    ServeConfig,
    VoiceCallConfig,
    config_from_dict,
    deep_merge_defined,
    get_config,
    load_config,
    set_config,
)
from calls.config import loading as config_module

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


def test_streaming_requires_twilio():
    assert errors_of({"streaming": {"enabled": True}}) == [
        "streaming.enabled: requires provider twilio (media streams are Twilio-only)"
    ]
    cfg = config_from_dict({**TWILIO_OK, "streaming": {"enabled": True}}, env=NO_ENV)
    assert cfg.streaming.enabled is True


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


# --------------------------------------------------------------------------------------------------
# Env fallbacks (§1.3)
# --------------------------------------------------------------------------------------------------


def test_env_fills_selected_provider_credentials():
    env = {
        "TWILIO_ACCOUNT_SID": "AC-env",
        "TWILIO_AUTH_TOKEN": "tok-env",
        "TWILIO_FROM_NUMBER": "+15550009999",
        "TELNYX_API_KEY": "telnyx-env",
        "PLIVO_AUTH_ID": "plivo-env",
    }
    cfg = config_from_dict({"provider": "twilio"}, env=env)
    assert (cfg.twilio.account_sid, cfg.twilio.auth_token) == ("AC-env", "tok-env")
    assert cfg.from_number == "+15550009999"
    # only the selected provider's vars are read
    assert cfg.telnyx.api_key is None and cfg.plivo.auth_id is None


def test_config_wins_over_env():
    env = {
        "TWILIO_ACCOUNT_SID": "AC-env",
        "TWILIO_AUTH_TOKEN": "tok-env",
        "TWILIO_FROM_NUMBER": "+15550009999",
    }
    cfg = config_from_dict(TWILIO_OK, env=env)
    assert (cfg.twilio.account_sid, cfg.twilio.auth_token) == ("AC123", "twilio-secret")
    assert cfg.from_number == "+15550001111"


def test_telnyx_and_plivo_env():
    env = {
        "TELNYX_API_KEY": "k",
        "TELNYX_CONNECTION_ID": "c",
        "TELNYX_PUBLIC_KEY": "pk",
        "PLIVO_AUTH_ID": "id",
        "PLIVO_AUTH_TOKEN": "pt",
        "TWILIO_FROM_NUMBER": "+15550009999",
    }
    telnyx = config_from_dict({"provider": "telnyx", "fromNumber": "+15550001111"}, env=env)
    assert (telnyx.telnyx.api_key, telnyx.telnyx.connection_id, telnyx.telnyx.public_key) == ("k", "c", "pk")
    plivo = config_from_dict({"provider": "plivo", "fromNumber": "+15550001111"}, env=env)
    assert (plivo.plivo.auth_id, plivo.plivo.auth_token) == ("id", "pt")
    # TWILIO_FROM_NUMBER is a twilio-only fallback
    assert errors_of({"provider": "plivo"}, env=env) == ["fromNumber: required for provider plivo"]


def test_env_always_applied_and_empty_env_is_unset():
    env = {
        "NGROK_AUTHTOKEN": "ngrok-env",
        "NGROK_DOMAIN": "x.ngrok.app",
        "OPENAI_API_KEY": "sk-env",
        "OPENAI_BASE_URL": "http://127.0.0.1:9999/v1",
        "VOICECALL_RPC_TOKEN": "rpc-env",
    }
    cfg = config_from_dict({}, env=env)
    assert (cfg.tunnel.ngrok_auth_token, cfg.tunnel.ngrok_domain) == ("ngrok-env", "x.ngrok.app")
    assert (cfg.responder.api_key, cfg.responder.base_url) == ("sk-env", "http://127.0.0.1:9999/v1")
    assert cfg.rpc.token == "rpc-env"
    cfg = config_from_dict(
        {"rpc": {"token": "from-file"}, "tunnel": {"ngrokDomain": "file.example"}}, env=env
    )
    assert cfg.rpc.token == "from-file" and cfg.tunnel.ngrok_domain == "file.example"
    assert config_from_dict({}, env={"VOICECALL_RPC_TOKEN": ""}).rpc.token is None


def test_env_does_not_mask_a_wrong_section_type():
    assert errors_of({"rpc": "x"}, env={"VOICECALL_RPC_TOKEN": "t"}) == ["rpc: must be an object"]


# --------------------------------------------------------------------------------------------------
# Legacy keys (§1.5)
# --------------------------------------------------------------------------------------------------


def test_legacy_provider_log_becomes_mock(caplog):
    with caplog.at_level(logging.WARNING, logger="calls.config"):
        cfg = config_from_dict({"provider": "log"}, env=NO_ENV)
    assert cfg.provider == "mock"
    assert 'Config provider "log" is deprecated; use "mock"' in caplog.text


def test_legacy_twilio_from(caplog):
    data = {"provider": "twilio", "twilio": {"from": "+15550007777", "accountSid": "AC1", "authToken": "t"}}
    with caplog.at_level(logging.WARNING, logger="calls.config"):
        cfg = config_from_dict(data, env={"TWILIO_FROM_NUMBER": "+15550009999"})
    assert cfg.from_number == "+15550007777"  # legacy config beats env
    assert "twilio.from is deprecated; use fromNumber" in caplog.text
    # the current key wins over the legacy one
    cfg = config_from_dict({**data, "fromNumber": "+15550001111"}, env=NO_ENV)
    assert cfg.from_number == "+15550001111"


def test_legacy_twilio_from_bad_value_names_the_legacy_key():
    data = {"provider": "twilio", "twilio": {"from": "555", "accountSid": "AC1", "authToken": "t"}}
    assert errors_of(data) == [
        "fromNumber: must be an E.164 number like +15551234567 (value came from legacy key twilio.from)"
    ]


def test_legacy_streaming_keys(caplog):
    data = {
        **TWILIO_OK,
        "streaming": {
            "enabled": True,
            "sttProvider": "openai",
            "openaiApiKey": "sk-legacy",
            "sttModel": "legacy-model",
            "silenceDurationMs": 500,
            "vadThreshold": 0.6,
            "providers": {"openai": {"model": "current-model"}},
        },
    }
    with caplog.at_level(logging.WARNING, logger="calls.config"):
        cfg = config_from_dict(data, env=NO_ENV)
    assert cfg.streaming.provider == "openai"
    assert cfg.streaming.providers == {
        "openai": {
            "model": "current-model",
            "apiKey": "sk-legacy",
            "silenceDurationMs": 500,
            "vadThreshold": 0.6,
        }
    }
    for legacy in (
        "streaming.sttProvider",
        "streaming.openaiApiKey",
        "streaming.sttModel",
        "streaming.vadThreshold",
    ):
        assert f"{legacy} is deprecated" in caplog.text
    assert "sk-legacy" not in caplog.text


def test_legacy_streaming_provider_does_not_override_current():
    cfg = config_from_dict({**TWILIO_OK, "streaming": {"sttProvider": "old", "provider": "new"}}, env=NO_ENV)
    assert cfg.streaming.provider == "new"


def test_legacy_keys_in_wrapper_form_are_migrated():
    doc = {
        "plugins": {
            "entries": {"voice-call": {"config": {"provider": "log", "streaming": {"sttModel": "m"}}}}
        }
    }
    cfg = config_from_dict(doc, env=NO_ENV)
    assert cfg.provider == "mock" and cfg.streaming.providers == {"openai": {"model": "m"}}


def test_config_from_dict_does_not_mutate_its_input():
    data = {"provider": "log", "twilio": {"from": "+15550007777"}}
    config_from_dict(data, env={"VOICECALL_RPC_TOKEN": "t"})
    assert data == {"provider": "log", "twilio": {"from": "+15550007777"}}


# --------------------------------------------------------------------------------------------------
# TTS deep merge (§6.3)
# --------------------------------------------------------------------------------------------------


def test_deep_merge_defined_rules():
    base = {"provider": "openai", "providers": {"openai": {"voice": "alloy", "speed": 1.0}}, "list": [1, 2]}
    override = {"providers": {"openai": {"voice": "nova", "model": None}}, "list": [3], "maxTextLength": 0}
    assert deep_merge_defined(base, override) == {
        "provider": "openai",
        "providers": {"openai": {"voice": "nova", "speed": 1.0}},
        "list": [3],
        "maxTextLength": 0,
    }


def test_deep_merge_defined_blocks_prototype_keys_at_every_level():
    base = {"a": {"__proto__": {"polluted": True}, "keep": 1}, "constructor": "x"}
    override = {
        "__proto__": {"polluted": True},
        "prototype": {"polluted": True},
        "a": {"constructor": {"polluted": True}, "b": {"__proto__": 1, "c": 2}},
        "fresh": {"prototype": 1, "d": 3},
    }
    assert deep_merge_defined(base, override) == {"a": {"keep": 1, "b": {"c": 2}}, "fresh": {"d": 3}}


def test_deep_merge_defined_copies_and_handles_none():
    base = {"providers": {"openai": {"voice": "alloy"}}}
    override = {"providers": {"openai": {"voice": "nova"}}, "tags": ["x"]}
    merged = deep_merge_defined(base, override)
    merged["providers"]["openai"]["voice"] = "changed"
    merged["tags"].append("y")
    assert base == {"providers": {"openai": {"voice": "alloy"}}}
    assert override == {"providers": {"openai": {"voice": "nova"}}, "tags": ["x"]}
    assert deep_merge_defined(None, None) == {}
    assert deep_merge_defined(None, {"a": 1}) == {"a": 1}
    assert deep_merge_defined({"a": 1}, None) == {"a": 1}
    # a dict replaces a scalar, and a scalar replaces a dict
    assert deep_merge_defined({"a": 1, "b": {"c": 1}}, {"a": {"x": 1}, "b": 2}) == {"a": {"x": 1}, "b": 2}


def test_effective_tts_with_number_route():
    cfg = config_from_dict(
        {
            "plugins": {
                "entries": {
                    "voice-call": {
                        "config": {
                            "tts": {"provider": "elevenlabs", "providers": {"elevenlabs": {"voiceId": "v1"}}},
                            "numbers": {
                                "+15550004444": {"tts": {"providers": {"elevenlabs": {"voiceId": "v2"}}}}
                            },
                        }
                    }
                }
            },
            "messages": {"tts": {"provider": "openai", "timeoutMs": 9000}},
        },
        env=NO_ENV,
    )
    assert cfg.effective_tts() == {
        "provider": "elevenlabs",
        "timeoutMs": 9000,
        "providers": {"elevenlabs": {"voiceId": "v1"}},
    }
    assert cfg.effective_tts("+1 (555) 000-4444")["providers"] == {"elevenlabs": {"voiceId": "v2"}}
    assert cfg.effective_tts("+15550000000")["providers"] == {"elevenlabs": {"voiceId": "v1"}}
    assert cfg.number_route("15550004444") is cfg.numbers["+15550004444"]
    assert cfg.number_route("") is None


# --------------------------------------------------------------------------------------------------
# webhook_url and redacted_dict
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "url"),
    [
        ({}, "http://127.0.0.1:3334/voice/webhook"),
        ({"serve": {"bind": "0.0.0.0", "port": 8000, "path": "/hook"}}, "http://127.0.0.1:8000/hook"),  # noqa: S104
        ({"serve": {"bind": "::"}}, "http://127.0.0.1:3334/voice/webhook"),
        ({"serve": {"bind": "::1"}}, "http://[::1]:3334/voice/webhook"),
        ({"serve": {"bind": "voice.internal"}}, "http://voice.internal:3334/voice/webhook"),
        (
            {"publicUrl": "https://calls.example.com/voice/webhook", "serve": {"port": 1}},
            "https://calls.example.com/voice/webhook",
        ),
    ],
)
def test_webhook_url(data, url):
    assert config_from_dict(data, env=NO_ENV).webhook_url() == url


def test_redacted_dict_hides_every_secret():
    secrets = {
        "twilio": "tw-SECRET-1",
        "telnyx": "tx-SECRET-2",
        "plivo": "pl-SECRET-3",
        "ngrok": "ng-SECRET-4",
        "responder": "rs-SECRET-5",
        "rpc": "rpc-SECRET-6",
        "tts": "tts-SECRET-7",
        "stream": "st-SECRET-8",
        "core": "core-SECRET-9",
        "route": "route-SECRET-10",
    }
    doc = {
        "plugins": {
            "entries": {
                "voice-call": {
                    "config": {
                        **TWILIO_OK,
                        "twilio": {"accountSid": "AC123", "authToken": secrets["twilio"]},
                        "telnyx": {"apiKey": secrets["telnyx"], "publicKey": "pub"},
                        "plivo": {"authToken": secrets["plivo"]},
                        "tunnel": {"ngrokAuthToken": secrets["ngrok"]},
                        "responder": {"apiKey": secrets["responder"]},
                        "rpc": {"token": secrets["rpc"]},
                        "tts": {"providers": {"openai": {"apiKey": secrets["tts"], "voice": "nova"}}},
                        "streaming": {"providers": {"openai": {"apiKey": secrets["stream"]}}},
                        "numbers": {
                            "+15550004444": {"tts": {"providers": {"x": {"token": secrets["route"]}}}}
                        },
                    }
                }
            }
        },
        "messages": {"tts": {"elevenlabs": {"authToken": secrets["core"]}}},
    }
    cfg = config_from_dict(doc, env=NO_ENV)
    redacted = cfg.redacted_dict()
    dumped = json.dumps(redacted)
    for value in secrets.values():
        assert value not in dumped
    assert redacted["twilio"] == {
        "accountSid": "AC123",
        "authToken": "***",
        "apiBaseUrl": "https://api.twilio.com",
        "region": None,
    }
    assert redacted["telnyx"]["apiKey"] == "***" and redacted["telnyx"]["publicKey"] == "pub"
    assert redacted["tunnel"]["ngrokAuthToken"] == "***"
    assert redacted["tts"]["providers"]["openai"] == {"apiKey": "***", "voice": "nova"}
    assert redacted["streaming"]["providers"]["openai"]["apiKey"] == "***"
    assert redacted["coreTts"]["elevenlabs"]["authToken"] == "***"
    assert redacted["rpc"]["token"] == "***"
    assert redacted["webhookSecurity"]["trustedProxyIPs"] == []
    assert redacted["fromNumber"] == "+15550001111"
    # the model itself still holds the real values
    assert cfg.twilio.auth_token == secrets["twilio"]


def test_redacted_dict_leaves_unset_secrets_unset():
    redacted = VoiceCallConfig().redacted_dict()
    assert redacted["twilio"]["authToken"] is None
    assert redacted["responder"]["apiKey"] is None
    assert redacted["rpc"]["token"] is None


# --------------------------------------------------------------------------------------------------
# Files, resolution, JSON5 errors, warnings
# --------------------------------------------------------------------------------------------------


def test_json5_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path / "bad.json5", '{\n  provider: "twilio",\n  twilio: {authToken: sekrit-value}\n}\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env=NO_ENV)
    text = str(info.value)
    assert text.startswith(f"{path}: invalid JSON5 at line 3:")
    assert "sekrit" not in text and '"s"' not in text


def test_empty_and_non_object_files(tmp_path):
    with pytest.raises(ConfigError, match=r"empty\.json5: invalid JSON5 at line 1: the file is empty"):
        load_config(write(tmp_path / "empty.json5", "  \n"), env=NO_ENV)
    list_file = write(tmp_path / "list.json5", "[1, 2]")
    with pytest.raises(ConfigError) as info:
        load_config(list_file, env=NO_ENV)
    assert info.value.errors == [f"{list_file}: must be a JSON5 object"]


def test_explicit_missing_path_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.json5", env=NO_ENV)


def test_voicecall_config_env_var_wins_over_cwd_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "voicecall.json5", "{serve: {port: 1111}}")
    other = write(tmp_path / "other.json5", "{serve: {port: 2222}}")
    monkeypatch.setenv("VOICECALL_CONFIG", str(other))
    assert load_config().serve.port == 2222
    assert load_config(env={"VOICECALL_CONFIG": str(other)}).serve.port == 2222
    monkeypatch.delenv("VOICECALL_CONFIG")
    assert load_config().serve.port == 1111
    # an explicit path beats both
    assert load_config(other, env={"VOICECALL_CONFIG": str(tmp_path / "voicecall.json5")}).serve.port == 2222


def test_voicecall_config_set_but_missing_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "voicecall.json5", "{}")  # must not be used as a silent fallback
    missing = tmp_path / "missing.json5"
    with pytest.raises(ConfigError) as info:
        load_config(env={"VOICECALL_CONFIG": str(missing)})
    assert info.value.errors == [f"{missing}: config file not found (named by $VOICECALL_CONFIG)"]


def test_skip_signature_verification_logs_security_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="calls.config"):
        config_from_dict({"skipSignatureVerification": True}, env=NO_ENV)
    records = [r for r in caplog.records if r.name == "calls.config" and r.levelno == logging.WARNING]
    assert [r.getMessage() for r in records] == [SECURITY_WARNING]
    assert SECURITY_WARNING.startswith("SECURITY WARNING: skipSignatureVerification is on")

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="calls.config"):
        config_from_dict({}, env=NO_ENV)
    assert SECURITY_WARNING not in caplog.text


# --------------------------------------------------------------------------------------------------
# Process-wide cache
# --------------------------------------------------------------------------------------------------


def test_get_config_caches_and_set_config_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VOICECALL_CONFIG", raising=False)
    for var in (
        "VOICECALL_RPC_TOKEN",
        "NGROK_AUTHTOKEN",
        "NGROK_DOMAIN",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
    ):
        monkeypatch.delenv(var, raising=False)
    path = write(tmp_path / "voicecall.json5", "{serve: {port: 1111}}")

    first = get_config()
    assert first.serve.port == 1111
    write(path, "{serve: {port: 2222}}")
    assert get_config() is first  # cached

    override = VoiceCallConfig(provider="twilio")
    set_config(override)
    assert get_config() is override

    set_config(None)
    assert get_config().serve.port == 2222  # reloaded


def test_get_config_is_loaded_once_under_concurrency(tmp_path, monkeypatch):
    import threading

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VOICECALL_CONFIG", raising=False)
    calls = []
    real_load = config_module.load_config

    def counting_load(*args, **kwargs):
        calls.append(1)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(config_module, "load_config", counting_load)
    results = []
    threads = [threading.Thread(target=lambda: results.append(get_config())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert all(result is results[0] for result in results)
