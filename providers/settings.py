"""What a carrier or speech adapter is told about the deployment: plain, frozen, typed settings.

Adapters never read the application's config schema (``calls/config``); the app builds one
``ProviderSettings`` from its validated config (``VoiceCallConfig.provider_settings``) and hands it
down. Everything here is data: no ORM, no Django settings, no network. Keeping the adapters on these
types is what lets ``providers/`` import nothing from ``calls``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

EMPTY: Mapping[str, Any] = MappingProxyType({})
DEFAULT_MOCK_REPLIES = ("Yes, that works for me.", "Thanks, that is all.", "Goodbye.")


@dataclass(frozen=True)
class TwilioSettings:
    account_sid: str | None = None
    auth_token: str | None = field(default=None, repr=False)
    api_base_url: str = "https://api.twilio.com"
    region: str | None = None


@dataclass(frozen=True)
class TelnyxSettings:
    api_key: str | None = field(default=None, repr=False)
    connection_id: str | None = None
    public_key: str | None = None
    api_base_url: str = "https://api.telnyx.com"


@dataclass(frozen=True)
class PlivoSettings:
    auth_id: str | None = None
    auth_token: str | None = field(default=None, repr=False)
    api_base_url: str = "https://api.plivo.com"
    allow_v2_signatures: bool = False


@dataclass(frozen=True)
class MockSettings:
    """The scripted callee of the mock carrier."""

    auto_answer: bool = True
    answer_after_ms: int = 800
    reply_after_ms: int = 700
    replies: tuple[str, ...] = DEFAULT_MOCK_REPLIES


@dataclass(frozen=True)
class WebhookTrustSettings:
    """Whom to believe about the public URL (OpenClaw fact sheet §4.2, §4.3).

    ``ngrok_loopback_bypass`` is the configured half of the ngrok free-tier rule (tunnel is ngrok,
    the bypass is allowed and the server binds loopback); whether a request came over loopback is
    decided per request (``providers.security.ForwardingTrust.for_request``).
    """

    allowed_hosts: tuple[str, ...] = ()
    trust_forwarding_headers: bool = False
    trusted_proxy_ips: tuple[str, ...] = ()
    ngrok_loopback_bypass: bool = False


@dataclass(frozen=True)
class StreamingSettings:
    enabled: bool = False  # conversation calls get a media stream (streamed STT/TTS, or realtime)
    realtime: bool = False  # the stream is bridged to a realtime speech-to-speech session
    stream_path: str = "/voice/stream"
    provider: str | None = None
    # Vendor-owned and free-form (the STT keys).
    providers: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: EMPTY)


@dataclass(frozen=True)
class ProviderSettings:
    """One deployment's settings as every adapter sees them."""

    provider: str = "mock"
    public_url: str | None = None
    webhook_url: str = "http://127.0.0.1:3334/voice/webhook"
    skip_signature_verification: bool = False
    notify_hangup_delay_sec: int = 3
    max_duration_seconds: int = 300
    twilio: TwilioSettings = field(default_factory=TwilioSettings)
    telnyx: TelnyxSettings = field(default_factory=TelnyxSettings)
    plivo: PlivoSettings = field(default_factory=PlivoSettings)
    mock: MockSettings = field(default_factory=MockSettings)
    webhook_trust: WebhookTrustSettings = field(default_factory=WebhookTrustSettings)
    streaming: StreamingSettings = field(default_factory=StreamingSettings)
    # Core messages.tts merged with the plugin tts (fact sheet §6.3).
    tts: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    # The dialled number's route tts merged on top, keyed by the number's digits (fact sheet §7).
    tts_by_number: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: EMPTY)

    def effective_tts(self, number: str | None = None) -> dict[str, Any]:
        """The TTS settings for a call; with ``number`` (an inbound call's dialled number), that
        number's route override applies."""
        if number:
            routed = self.tts_by_number.get(digits_of(number))
            if routed is not None:
                return dict(routed)
        return dict(self.tts)


def digits_of(number: str | None) -> str:
    """A phone number compared the way the allowlist compares it: digits only."""
    return re.sub(r"\D", "", number or "")


def configured_voice(
    tts: Mapping[str, Any], *, prefer: tuple[str, ...] = (), accept: Callable[[str], bool] | None = None
) -> str | None:
    """The voice named in a tts section: ``tts.providers.<name>.voice`` (or ``voiceId``), then the
    older ``tts.<name>`` shape, for each name in ``prefer`` and then the tts provider itself
    (``openai`` when unset). ``accept`` filters voices a carrier cannot use."""
    provider_name = tts.get("provider") or "openai"
    providers = tts.get("providers") if isinstance(tts.get("providers"), Mapping) else {}
    for name in (*prefer, provider_name):
        for section in (providers.get(name), tts.get(name)):
            if not isinstance(section, Mapping):
                continue
            value = section.get("voice") or section.get("voiceId")
            if isinstance(value, str) and value and (accept is None or accept(value)):
                return value
    return None
