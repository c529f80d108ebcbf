"""The config's sources beyond the schema: env fallbacks, legacy keys, the TTS merge, derived URLs and redaction, files and JSON5 errors, the process-wide cache."""

from __future__ import annotations

import json
import logging

import pytest

from calls.config import (
    SECURITY_WARNING,
    ConfigError,
    VoiceCallConfig,
    config_from_dict,
    deep_merge_defined,
    get_config,
    load_config,
    set_config,
)
from calls.config import loading as config_module
from tests.test_config import NO_ENV, TWILIO_OK, WRAPPER_JSON5, _fresh_cache, errors_of, write  # noqa: F401 - shared helpers and fixtures

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
