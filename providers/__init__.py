"""Carrier and vendor adapters. ``get_provider`` builds the configured carrier's adapter."""

from __future__ import annotations

import importlib
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from calls.config import VoiceCallConfig
    from providers.base import Provider

PROVIDER_CLASSES: dict[str, str] = {
    "mock": "providers.mock:MockProvider",
    "twilio": "providers.twilio:TwilioProvider",
    "telnyx": "providers.telnyx:TelnyxProvider",
    "plivo": "providers.plivo:PlivoProvider",
}

_lock = threading.Lock()
_cache: dict[int, Provider] = {}


def provider_class(name: str) -> type[Provider]:
    module_name, class_name = PROVIDER_CLASSES[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def get_provider(config: VoiceCallConfig | None = None) -> Provider:
    """The adapter for the configured carrier, one per config object (adapters keep HTTP sessions)."""
    if config is None:
        from calls.config import get_config

        config = get_config()
    with _lock:
        provider = _cache.get(id(config))
        if provider is None or provider.config is not config:
            provider = provider_class(config.provider)(config)
            _cache.clear()
            _cache[id(config)] = provider
        return provider
