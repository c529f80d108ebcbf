"""Older config shapes, read and rewritten to today's keys (OpenClaw fact sheet §1.5).

* The whole OpenClaw document (``plugins.entries.voice-call``): ``_unwrap`` takes the plugin entry,
  its ``enabled`` flag and the core ``messages.tts`` out of it.
* Legacy keys (``provider: "log"``, ``twilio.from``, ``streaming.sttProvider`` and the flat streaming
  OpenAI keys): ``migrate_legacy`` moves them to their current place with a warning; the current key
  always wins over the legacy one.
"""

from __future__ import annotations

import logging
from typing import Any

from calls.config.errors import join_key

logger = logging.getLogger("calls.config")

WRAPPER_CONFIG_PREFIX = "plugins.entries.voice-call.config"
WRAPPER_ENTRY_PREFIX = "plugins.entries.voice-call"
WRAPPER_ENTRY_KEYS = ("enabled", "config")
LEGACY_PROVIDER_ALIASES = {"log": "mock"}

# Legacy flat streaming keys that moved under streaming.providers.openai (legacy key -> new key).
LEGACY_STREAMING_OPENAI_KEYS = {
    "openaiApiKey": "apiKey",
    "sttModel": "model",
    "silenceDurationMs": "silenceDurationMs",
    "vadThreshold": "vadThreshold",
}


def unwrap(document: dict[str, Any], errors: list[str]) -> tuple[dict[str, Any] | None, bool, Any]:
    """Pull (config, entry enabled, messages.tts) out of a whole OpenClaw document."""
    plugins = document.get("plugins")
    if not isinstance(plugins, dict):
        errors.append("plugins: must be an object")
        return None, True, None
    entries = plugins.get("entries", {})
    if not isinstance(entries, dict):
        errors.append("plugins.entries: must be an object")
        return None, True, None
    entry = entries.get("voice-call", {})
    if not isinstance(entry, dict):
        errors.append(f"{WRAPPER_ENTRY_PREFIX}: must be an object")
        return None, True, None
    for key in entry:
        if key not in WRAPPER_ENTRY_KEYS:
            errors.append(
                f"{WRAPPER_ENTRY_PREFIX}.{key}: unknown key (allowed: {', '.join(WRAPPER_ENTRY_KEYS)})"
            )
    enabled = entry.get("enabled", True)
    if not isinstance(enabled, bool):
        errors.append(f"{WRAPPER_ENTRY_PREFIX}.enabled: must be true or false")
        enabled = True
    config = entry.get("config", {})
    if not isinstance(config, dict):
        errors.append(f"{WRAPPER_CONFIG_PREFIX}: must be an object")
        return None, enabled, None

    core_tts = None
    messages = document.get("messages")
    if messages is not None and not isinstance(messages, dict):
        errors.append("messages: must be an object")
    elif isinstance(messages, dict) and messages.get("tts") is not None:
        if isinstance(messages["tts"], dict):
            core_tts = messages["tts"]
        else:
            errors.append("messages.tts: must be an object")
    return config, enabled, core_tts


def migrate_legacy(data: dict[str, Any], prefix: str, origins: dict[tuple[str, ...], str]) -> None:
    """Rewrite §1.5 legacy keys in place; the current key always wins over the legacy one."""

    def warn(old: str, new: str) -> None:
        logger.warning(
            "Config key %s is deprecated; use %s (migrated for now, please update the file)",
            join_key(prefix, old),
            join_key(prefix, new),
        )

    provider = data.get("provider")
    if isinstance(provider, str) and provider in LEGACY_PROVIDER_ALIASES:
        data["provider"] = LEGACY_PROVIDER_ALIASES[provider]
        logger.warning(
            'Config %s "%s" is deprecated; use "%s" (migrated)',
            join_key(prefix, "provider"),
            provider,
            data["provider"],
        )

    twilio = data.get("twilio")
    if isinstance(twilio, dict) and "from" in twilio:
        legacy = twilio.pop("from")
        if data.get("fromNumber") is None and legacy is not None:
            data["fromNumber"] = legacy
            origins[("fromNumber",)] = f"legacy key {join_key(prefix, 'twilio.from')}"
        warn("twilio.from", "fromNumber")

    streaming = data.get("streaming")
    if not isinstance(streaming, dict):
        return
    if "sttProvider" in streaming:
        legacy = streaming.pop("sttProvider")
        if streaming.get("provider") is None and legacy is not None:
            streaming["provider"] = legacy
            origins[("streaming", "provider")] = f"legacy key {join_key(prefix, 'streaming.sttProvider')}"
        warn("streaming.sttProvider", "streaming.provider")
    moves = [key for key in LEGACY_STREAMING_OPENAI_KEYS if key in streaming]
    if not moves:
        return
    if streaming.get("providers") is None:
        streaming["providers"] = {}
    providers = streaming["providers"]
    if not isinstance(providers, dict):
        return  # left in place: the schema reports streaming.providers and the legacy keys
    if providers.get("openai") is None:
        providers["openai"] = {}
    openai = providers["openai"]
    if not isinstance(openai, dict):
        return
    for legacy_key in moves:
        new_key = LEGACY_STREAMING_OPENAI_KEYS[legacy_key]
        legacy = streaming.pop(legacy_key)
        if openai.get(new_key) is None and legacy is not None:
            openai[new_key] = legacy
        warn(f"streaming.{legacy_key}", f"streaming.providers.openai.{new_key}")

