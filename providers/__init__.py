"""Carrier and vendor adapters. ``get_provider`` builds the configured carrier's adapter.

Everything in this package translates wire formats; nothing here touches the ORM or imports
``calls``. Adapters are given a ``providers.settings.ProviderSettings``.
"""

from __future__ import annotations

import importlib
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from providers.base import Provider
    from providers.settings import ProviderSettings

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


def get_provider(settings: ProviderSettings) -> Provider:
    """The adapter for these settings' carrier, one per settings object (adapters keep HTTP sessions)."""
    with _lock:
        provider = _cache.get(id(settings))
        if provider is None or provider.settings is not settings:
            provider = provider_class(settings.provider)(settings)
            _cache.clear()
            _cache[id(settings)] = provider
        return provider
