"""The config schema: every key of the voice-call plugin config, its type, default and rules.

Pydantic models with strict types and unknown keys rejected; file keys are camelCase, attributes
snake_case. Validators raise one fixed, value-free message each (``_invalid``) so an error line can
never echo a secret. Loading a file (``calls.config.loading``) runs this schema after legacy-key
migration and env fallbacks; ``VoiceCallConfig.provider_settings()`` is what adapters in
``providers/`` are given instead of this schema.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Mapping
from functools import cached_property
from types import MappingProxyType
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationInfo, field_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from providers import settings as adapter_settings
from providers.security import is_loopback_address

PROVIDERS = ("telnyx", "twilio", "plivo", "mock")

E164_RE = re.compile(r"^\+[1-9]\d{1,14}$")
E164_HINT = "must be an E.164 number like +15551234567"

TAILSCALE_FUNNEL_PORTS = (443, 8443, 10000)

# deepMergeDefined ignores these at every level so a config blob can never smuggle prototype-style
# keys into the merged object (upstream guards against JS prototype pollution; we keep the rule).
BLOCKED_MERGE_KEYS = frozenset({"__proto__", "prototype", "constructor"})

# Key names whose values are secrets wherever they appear, including the free-form tts and
# streaming.providers blobs. Redaction is by name so provider blobs we do not model are covered too.
SECRET_KEY_NAMES = frozenset(
    {
        "apiKey",
        "authToken",
        "token",
        "ngrokAuthToken",
        "api_key",
        "auth_token",
        "accessToken",
        "apiSecret",
        "clientSecret",
        "password",
        "secret",
    }
)
REDACTED = "***"

CUSTOM_ERROR_TYPE = "voicecall"  # our validators raise this type with a ready human message

DEFAULT_MOCK_REPLIES = adapter_settings.DEFAULT_MOCK_REPLIES
DEFAULT_FALLBACK_MESSAGE = "Sorry, I didn't catch that. Could you say it again?"


# --------------------------------------------------------------------------------------------------
# Field types. Each validator raises one fixed message so the translation never sees user values.
# --------------------------------------------------------------------------------------------------


def _invalid(message: str) -> PydanticCustomError:
    return PydanticCustomError(CUSTOM_ERROR_TYPE, message)


def _int_rule(*, gt: int | None = None, ge: int | None = None, le: int | None = None) -> PlainValidator:
    lower = f"> {gt}" if gt is not None else f">= {ge}" if ge is not None else ""
    type_message = f"must be an integer {lower}".rstrip()

    def check(value: Any) -> int:
        # bool is an int subclass in Python; `true` is not a port.
        if isinstance(value, bool) or not isinstance(value, int):
            raise _invalid(type_message)
        if (gt is not None and value <= gt) or (ge is not None and value < ge):
            raise _invalid(type_message)
        if le is not None and value > le:
            raise _invalid(f"must be an integer <= {le}")
        return value

    return PlainValidator(check, json_schema_input_type=int)


def _check_e164(value: Any) -> str:
    if not isinstance(value, str) or not E164_RE.match(value):
        raise _invalid(E164_HINT)
    return value


def _check_non_empty(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _invalid("must be a non-empty string")
    return value


def _url_check(schemes: tuple[str, str], article: str, example: str):
    message = f"must be {article} {schemes[0]} or {schemes[1]} URL with a host, like {example}"

    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise _invalid(message)
        try:
            parts = urlsplit(value)
            host = parts.hostname
        except ValueError:
            raise _invalid(message) from None
        if parts.scheme not in schemes or not host:
            raise _invalid(message)
        return value

    return check


_check_http_url = _url_check(("http", "https"), "an", "https://example.com")


def _check_route_path(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise _invalid('must be a path starting with "/"')
    return value


def _check_ip(value: Any) -> str:
    if not isinstance(value, str):
        raise _invalid("must be an IP address")
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise _invalid("must be an IP address") from None
    return value


PositiveInt = Annotated[int, _int_rule(gt=0)]
NonNegativeInt = Annotated[int, _int_rule(ge=0)]
PortInt = Annotated[int, _int_rule(gt=0, le=65535)]
E164 = Annotated[str, PlainValidator(_check_e164, json_schema_input_type=str)]
NonEmptyStr = Annotated[str, PlainValidator(_check_non_empty, json_schema_input_type=str)]
HttpUrlStr = Annotated[str, PlainValidator(_check_http_url, json_schema_input_type=str)]
RoutePath = Annotated[str, PlainValidator(_check_route_path, json_schema_input_type=str)]
IpAddress = Annotated[str, PlainValidator(_check_ip, json_schema_input_type=str)]


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


class _Section(BaseModel):
    """Common model settings: strict types, unknown keys rejected, camelCase in files."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        alias_generator=to_camel,
        populate_by_name=True,
    )


class TwilioConfig(_Section):
    account_sid: NonEmptyStr | None = None
    auth_token: NonEmptyStr | None = None
    api_base_url: HttpUrlStr = "https://api.twilio.com"
    region: Literal["us1", "ie1", "au1"] | None = None


class TelnyxConfig(_Section):
    api_key: NonEmptyStr | None = None
    connection_id: NonEmptyStr | None = None
    public_key: NonEmptyStr | None = None
    api_base_url: HttpUrlStr = "https://api.telnyx.com"


class PlivoConfig(_Section):
    auth_id: NonEmptyStr | None = None
    auth_token: NonEmptyStr | None = None
    api_base_url: HttpUrlStr = "https://api.plivo.com"
    # V2 signs the URL without its query and never the body: accepting it alone lets a captured
    # request's headers carry a forged body. Off unless an operator needs it (warned at load).
    allow_v2_signatures: bool = False


class MockConfig(_Section):
    """The scripted callee of the mock carrier."""

    auto_answer: bool = True
    answer_after_ms: NonNegativeInt = 800
    reply_after_ms: NonNegativeInt = 700
    replies: list[str] = Field(default_factory=lambda: list(DEFAULT_MOCK_REPLIES))


class OutboundConfig(_Section):
    default_mode: Literal["notify", "conversation"] = "notify"
    notify_hangup_delay_sec: NonNegativeInt = 3
    # A call not dialed this long after it was requested (no worker, a broker outage) is failed,
    # never dialed late: a call hours after the agent asked for it is worse than none.
    placement_timeout_seconds: PositiveInt = 60


class ServeConfig(_Section):
    port: PortInt = 3334
    bind: NonEmptyStr = "127.0.0.1"
    path: RoutePath = "/voice/webhook"


class TunnelConfig(_Section):
    provider: Literal["none", "ngrok", "tailscale-serve", "tailscale-funnel"] = "none"
    ngrok_auth_token: NonEmptyStr | None = None
    ngrok_domain: NonEmptyStr | None = None
    allow_ngrok_free_tier_loopback_bypass: bool = False
    # A tunnel publishes the webhook (and media-stream) paths only; admin, /rpc, /tools and health
    # stay local. True publishes the whole server, as a plain `ngrok http PORT` would.
    expose_all_paths: bool = False


class TailscaleConfig(_Section):
    mode: Literal["off", "serve", "funnel"] = "off"
    path: RoutePath = "/voice/webhook"
    port: PortInt = 443

    @field_validator("port")
    @classmethod
    def _funnel_port(cls, value: int, info: ValidationInfo) -> int:
        # `mode` is declared first, so it is in info.data here (unless it was itself invalid).
        if info.data.get("mode") == "funnel" and value not in TAILSCALE_FUNNEL_PORTS:
            raise _invalid("must be one of 443, 8443, 10000 when tailscale.mode is funnel")
        return value


class WebhookSecurityConfig(_Section):
    allowed_hosts: list[str] = Field(default_factory=list)
    trust_forwarding_headers: bool = False
    trusted_proxy_ips: list[IpAddress] = Field(default_factory=list, alias="trustedProxyIPs")
    # Unverified requests (headers in, signature not yet checked) one client IP may have in flight.
    max_in_flight_per_ip: PositiveInt = 8


class StreamingConfig(_Section):
    enabled: bool = False
    provider: NonEmptyStr | None = None
    providers: dict[str, dict[str, Any]] = Field(default_factory=dict)  # provider-owned, free-form
    stream_path: RoutePath = "/voice/stream"
    pre_start_timeout_ms: PositiveInt = 5000
    max_pending_connections: PositiveInt = 32
    max_pending_connections_per_ip: PositiveInt = 4
    max_connections: PositiveInt = 128


WsUrlStr = Annotated[str, PlainValidator(_url_check(("ws", "wss"), "a", "wss://api.openai.com/v1"),
                                          json_schema_input_type=str)]


class RealtimeOpenAIConfig(_Section):
    """``realtime.providers.openai``: the OpenAI Realtime (GA) session every streamed call talks to."""

    api_key: NonEmptyStr | None = None  # or OPENAI_API_KEY
    base_url: WsUrlStr = "wss://api.openai.com/v1"  # the client connects to {baseUrl}/realtime?model=…
    model: NonEmptyStr = "gpt-realtime"
    voice: NonEmptyStr = "marin"


class RealtimeProviders(_Section):
    openai: RealtimeOpenAIConfig = Field(default_factory=RealtimeOpenAIConfig)


class RealtimeConfig(_Section):
    """Speech-to-speech conversations: each conversation call's media stream is bridged to one
    realtime model session (calls/media/realtime.py)."""

    enabled: bool = False
    provider: Literal["openai"] = "openai"
    instructions: str | None = None
    idle_hangup_ms: PositiveInt = 30000
    providers: RealtimeProviders = Field(default_factory=RealtimeProviders)


class ResponderConfig(_Section):
    base_url: HttpUrlStr | None = None
    api_key: NonEmptyStr | None = None
    fallback_message: str = DEFAULT_FALLBACK_MESSAGE


class NumberRoute(_Section):
    """Per-dialled-number overrides for inbound calls (``numbers.<E.164>``)."""

    inbound_greeting: str | None = None
    response_system_prompt: str | None = None
    response_model: str | None = None
    response_timeout_ms: PositiveInt | None = None
    tts: dict[str, Any] | None = None


class RetentionConfig(_Section):
    """How long the ledger keeps what it no longer needs (pruned hourly by beat)."""

    # Replay receipts: longer than any carrier retries a webhook, or a late retry would be applied.
    webhook_receipts_hours: PositiveInt = 24
    # Events and transcripts of calls that ended this long ago; 0 keeps them for good.
    events_days: NonNegativeInt = 90
    transcripts_days: NonNegativeInt = 0


class RpcConfig(_Section):
    token: NonEmptyStr | None = None


# Fields of VoiceCallConfig that are not file keys (filled by the loader, never from the document).
INTERNAL_FIELDS = frozenset({"core_tts"})


class VoiceCallConfig(_Section):
    """The validated plugin config. Attribute names are snake_case; file keys are their camelCase.

    ``core_tts`` is not a file key: it holds ``messages.tts`` of a whole OpenClaw document.
    ``redacted_dict()`` includes it (as ``coreTts``) so an operator sees what TTS will merge over.
    """

    enabled: bool = True
    provider: Literal["telnyx", "twilio", "plivo", "mock"] = "mock"
    from_number: E164 | None = None
    to_number: E164 | None = None
    twilio: TwilioConfig = Field(default_factory=TwilioConfig)
    telnyx: TelnyxConfig = Field(default_factory=TelnyxConfig)
    plivo: PlivoConfig = Field(default_factory=PlivoConfig)
    mock: MockConfig = Field(default_factory=MockConfig)
    inbound_policy: Literal["disabled", "allowlist", "pairing", "open"] = "disabled"
    allow_from: list[E164] = Field(default_factory=list)
    inbound_greeting: str | None = None
    outbound: OutboundConfig = Field(default_factory=OutboundConfig)
    max_duration_seconds: PositiveInt = 300
    stale_call_reaper_seconds: NonNegativeInt = 120
    silence_timeout_ms: PositiveInt = 800
    transcript_timeout_ms: PositiveInt = 180000
    ring_timeout_ms: PositiveInt = 30000
    max_concurrent_calls: PositiveInt = 1
    serve: ServeConfig = Field(default_factory=ServeConfig)
    public_url: HttpUrlStr | None = None
    tunnel: TunnelConfig = Field(default_factory=TunnelConfig)
    tailscale: TailscaleConfig = Field(default_factory=TailscaleConfig)
    webhook_security: WebhookSecurityConfig = Field(default_factory=WebhookSecurityConfig)
    streaming: StreamingConfig = Field(default_factory=StreamingConfig)
    realtime: RealtimeConfig = Field(default_factory=RealtimeConfig)
    skip_signature_verification: bool = False
    tts: dict[str, Any] | None = None
    # messages.tts of the wrapper document; the loader refuses it as a file key (see INTERNAL_FIELDS).
    core_tts: dict[str, Any] | None = Field(default=None, alias="coreTts")
    response_model: str | None = None
    response_system_prompt: str | None = None
    response_timeout_ms: PositiveInt = 30000
    responder: ResponderConfig = Field(default_factory=ResponderConfig)
    numbers: dict[E164, NumberRoute] = Field(default_factory=dict)
    rpc: RpcConfig = Field(default_factory=RpcConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    store: str | None = None  # accepted for compatibility with OpenClaw files; calls live in the DB

    @property
    def live_audio(self) -> bool:
        """Conversation calls carry a media stream: streamed STT + TTS (``streaming``) or a realtime
        speech-to-speech session (``realtime``); the two are exclusive (the loader says so)."""
        return self.streaming.enabled or self.realtime.enabled

    def effective_tts(self, number: str | None = None) -> dict[str, Any]:
        """Core ``messages.tts`` deep-merged with the plugin ``tts`` (§6.3).

        With ``number`` (the dialled number of an inbound call), that number's route ``tts`` is
        merged on top the same way.
        """
        merged = deep_merge_defined(self.core_tts, self.tts)
        route = self.number_route(number) if number else None
        if route is not None and route.tts:
            merged = deep_merge_defined(merged, route.tts)
        return merged

    def number_route(self, number: str) -> NumberRoute | None:
        """The ``numbers`` entry for ``number``, compared digits-only like the allowlist (§7)."""
        wanted = _digits(number)
        if not wanted:
            return None
        for key, route in self.numbers.items():
            if _digits(key) == wanted:
                return route
        return None

    def webhook_url(self) -> str:
        """The carrier-facing webhook URL: ``publicUrl`` or the local listener."""
        if self.public_url:
            return self.public_url
        host = self.serve.bind
        if host in ("0.0.0.0", "::", ""):  # noqa: S104 - mapping a wildcard bind to loopback, not binding
            host = "127.0.0.1"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # IPv6 literal
        return f"http://{host}:{self.serve.port}{self.serve.path}"

    def redacted_dict(self) -> dict[str, Any]:
        """The config as a camelCase dict, safe to print: every set secret becomes ``"***"``."""
        return _redact(self.model_dump(mode="json", by_alias=True))

    @cached_property
    def provider_settings(self) -> adapter_settings.ProviderSettings:
        """What the carrier and speech adapters are told (``providers/settings.py``): built once per
        config object, so an adapter cached for this config sees the same settings every time."""
        s = adapter_settings
        tunnel, security = self.tunnel, self.webhook_security
        return s.ProviderSettings(
            provider=self.provider,
            public_url=self.public_url,
            webhook_url=self.webhook_url(),
            skip_signature_verification=self.skip_signature_verification,
            notify_hangup_delay_sec=self.outbound.notify_hangup_delay_sec,
            max_duration_seconds=self.max_duration_seconds,
            twilio=s.TwilioSettings(**self.twilio.model_dump()),
            telnyx=s.TelnyxSettings(**self.telnyx.model_dump()),
            plivo=s.PlivoSettings(**self.plivo.model_dump()),
            mock=s.MockSettings(
                auto_answer=self.mock.auto_answer,
                answer_after_ms=self.mock.answer_after_ms,
                reply_after_ms=self.mock.reply_after_ms,
                replies=tuple(self.mock.replies),
            ),
            webhook_trust=s.WebhookTrustSettings(
                allowed_hosts=tuple(h.strip().lower() for h in security.allowed_hosts if h.strip()),
                trust_forwarding_headers=security.trust_forwarding_headers,
                trusted_proxy_ips=tuple(security.trusted_proxy_ips),
                ngrok_loopback_bypass=bool(
                    tunnel.allow_ngrok_free_tier_loopback_bypass
                    and tunnel.provider == "ngrok"
                    and is_loopback_address(self.serve.bind)
                ),
            ),
            streaming=s.StreamingSettings(
                enabled=self.live_audio,
                realtime=self.realtime.enabled,
                stream_path=self.streaming.stream_path,
                provider=self.streaming.provider,
                providers=MappingProxyType(copy.deepcopy(self.streaming.providers)),
            ),
            tts=MappingProxyType(self.effective_tts()),
            tts_by_number=MappingProxyType(
                {s.digits_of(number): MappingProxyType(self.effective_tts(number)) for number in self.numbers}
            ),
        )


# --------------------------------------------------------------------------------------------------
# Deep merge and redaction
# --------------------------------------------------------------------------------------------------


def _clean(value: Any) -> Any:
    """A deep copy with blocked keys dropped from every nested dict."""
    if isinstance(value, Mapping):
        return {k: _clean(v) for k, v in value.items() if k not in BLOCKED_MERGE_KEYS}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return copy.deepcopy(value)


def deep_merge_defined(base: Mapping[str, Any] | None, override: Mapping[str, Any] | None) -> dict[str, Any]:
    """Merge ``override`` over ``base`` like OpenClaw's ``deepMergeDefined`` (§6.3).

    Plain dicts merge recursively; lists and scalars replace; ``None`` in ``override`` is skipped
    (it means "not set"); ``__proto__`` / ``prototype`` / ``constructor`` are dropped at every level.
    Neither argument is modified; the result shares no mutable objects with them.
    """
    result: dict[str, Any] = _clean(base) if isinstance(base, Mapping) else {}
    if not isinstance(override, Mapping):
        return result
    for key, value in override.items():
        if key in BLOCKED_MERGE_KEYS or value is None:
            continue
        current = result.get(key)
        if isinstance(value, Mapping):
            result[key] = deep_merge_defined(current if isinstance(current, dict) else {}, value)
        else:
            result[key] = _clean(value)
    return result


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: (REDACTED if k in SECRET_KEY_NAMES and v is not None else _redact(v)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def _digits(number: str) -> str:
    return adapter_settings.digits_of(number)


