"""Carrier and vendor adapters. ``get_provider`` builds the configured carrier's adapter,
``stream_wire`` its media-stream wire (``providers/media_stream.py``).

Everything in this package translates wire formats; nothing here touches the ORM or imports
``calls``. Adapters are given a ``providers.settings.ProviderSettings``.
"""

from __future__ import annotations

import importlib
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from providers.base import Provider
    from providers.media_stream import StreamWire
    from providers.settings import ProviderSettings

PROVIDER_CLASSES: dict[str, str] = {
    "mock": "providers.mock:MockProvider",
    "twilio": "providers.twilio:TwilioProvider",
    "telnyx": "providers.telnyx:TelnyxProvider",
    "plivo": "providers.plivo:PlivoProvider",
}

# Carriers with bidirectional media streams: their StreamWire (the mock has none).
STREAM_WIRES: dict[str, str] = {
    "twilio": "providers.twilio_stream:TwilioStreamWire",
    "telnyx": "providers.telnyx.stream:TelnyxStreamWire",
    "plivo": "providers.plivo.stream:PlivoStreamWire",
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


def stream_wire(carrier: str) -> StreamWire:
    """The media-stream wire of a carrier; ``ValueError`` for one without media streams (mock)."""
    if carrier not in STREAM_WIRES:
        raise ValueError(f"provider {carrier} has no media streams")
    module_name, class_name = STREAM_WIRES[carrier].split(":")
    return getattr(importlib.import_module(module_name), class_name)()
