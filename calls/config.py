"""The voice-call configuration: a strict loader for the OpenClaw ``voice-call`` plugin config.

Where the file is
-----------------
``load_config()`` reads ``$VOICECALL_CONFIG`` when set (a set-but-missing file is an error), else
``./voicecall.json5`` in the current directory when it exists, else nothing: all defaults, which
means the network-free ``mock`` provider, enabled.

The two document forms
----------------------
The file is JSON5 (comments, trailing commas, unquoted keys) in one of two shapes:

1. The whole OpenClaw document, recognised by a top-level ``plugins`` key::

       {
         plugins: {entries: {"voice-call": {enabled: true, config: {provider: "twilio", ...}}}},
         messages: {tts: {provider: "openai", ...}},  // core TTS: the base the plugin `tts` merges over
         agents: {...},                                // every other top-level key is ignored
       }

   ``enabled`` comes from ``plugins.entries.voice-call.enabled`` (absent means true) and
   ``messages.tts`` becomes ``VoiceCallConfig.core_tts``. Unknown keys inside the voice-call entry
   (anything but ``enabled`` / ``config``) or inside ``config`` are errors, and error key paths carry
   the full prefix: ``plugins.entries.voice-call.config.serve.port: must be an integer > 0``.

2. Just the inner ``config`` object: ``{provider: "twilio", fromNumber: "+15551234567", ...}``.
   Error paths are then relative to it: ``serve.port: must be an integer > 0``.

Pipeline: parse JSON5 -> unwrap -> migrate legacy keys (with a warning) -> env fallbacks (config
wins) -> schema validation (pydantic, unknown keys rejected) -> cross-field checks (only when
enabled). Every problem found is reported at once in one ``ConfigError``; messages say what is allowed
and never echo the offending value, because that value may be a secret.

Decisions the spec left open (kept here so callers know):

* ``enabled`` may also appear inside ``config`` (the upstream schema has it). In wrapper form the
  plugin is enabled only when neither the entry nor the config says ``false``.
* Files must use the camelCase key names; snake_case attribute names are for Python callers only
  (``VoiceCallConfig(from_number=...)``), so a snake_case key in a file is an unknown key.
* Types are strict: ``"3334"`` is not a port and ``1`` is not ``true``. Credentials, when given,
  must be non-empty strings; an empty string does not fall back to the env var.
* Empty env vars count as unset. A value that came from an env var or a legacy key says so in its
  error ("value came from TWILIO_FROM_NUMBER").
* ``serve.path``, ``streaming.streamPath`` and ``tailscale.path`` must start with ``/``; base URLs
  (``*.apiBaseUrl``, ``responder.baseUrl``, ``publicUrl``) must be http(s) URLs with a host.
* ``VoiceCallConfig(...)`` built in Python runs the schema but not the cross-field provider checks;
  those belong to loading a file (a test may well want a twilio config without credentials).
"""

from __future__ import annotations

import copy
import ipaddress
import logging
import os
import re
import threading
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

import json5
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

logger = logging.getLogger("calls.config")

# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------

CONFIG_ENV_VAR = "VOICECALL_CONFIG"
DEFAULT_CONFIG_FILENAME = "voicecall.json5"

WRAPPER_CONFIG_PREFIX = "plugins.entries.voice-call.config"
WRAPPER_ENTRY_PREFIX = "plugins.entries.voice-call"
WRAPPER_ENTRY_KEYS = ("enabled", "config")

PROVIDERS = ("telnyx", "twilio", "plivo", "mock")
LEGACY_PROVIDER_ALIASES = {"log": "mock"}

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

SECURITY_WARNING = (
    "SECURITY WARNING: skipSignatureVerification is on; webhook signatures are NOT checked. "
    "Never use this in production."
)

# (config path, env var) pairs; applied before validation only where the config leaves the key unset.
PROVIDER_ENV_FALLBACKS: dict[str, tuple[tuple[tuple[str, ...], str], ...]] = {
    "twilio": (
        (("twilio", "accountSid"), "TWILIO_ACCOUNT_SID"),
        (("twilio", "authToken"), "TWILIO_AUTH_TOKEN"),
        (("fromNumber",), "TWILIO_FROM_NUMBER"),
    ),
    "telnyx": (
        (("telnyx", "apiKey"), "TELNYX_API_KEY"),
        (("telnyx", "connectionId"), "TELNYX_CONNECTION_ID"),
        (("telnyx", "publicKey"), "TELNYX_PUBLIC_KEY"),
    ),
    "plivo": (
        (("plivo", "authId"), "PLIVO_AUTH_ID"),
        (("plivo", "authToken"), "PLIVO_AUTH_TOKEN"),
    ),
}
ALWAYS_ENV_FALLBACKS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("tunnel", "ngrokAuthToken"), "NGROK_AUTHTOKEN"),
    (("tunnel", "ngrokDomain"), "NGROK_DOMAIN"),
    (("responder", "apiKey"), "OPENAI_API_KEY"),
    (("responder", "baseUrl"), "OPENAI_BASE_URL"),
    (("rpc", "token"), "VOICECALL_RPC_TOKEN"),
)

# Credentials each provider needs when the plugin is enabled: (config path, env var or None).
# telnyx.publicKey is handled separately because skipSignatureVerification waives it.
PROVIDER_REQUIREMENTS: dict[str, tuple[tuple[tuple[str, ...], str | None], ...]] = {
    "twilio": (
        (("fromNumber",), "TWILIO_FROM_NUMBER"),
        (("twilio", "accountSid"), "TWILIO_ACCOUNT_SID"),
        (("twilio", "authToken"), "TWILIO_AUTH_TOKEN"),
    ),
    "telnyx": (
        (("fromNumber",), None),
        (("telnyx", "apiKey"), "TELNYX_API_KEY"),
        (("telnyx", "connectionId"), "TELNYX_CONNECTION_ID"),
    ),
    "plivo": (
        (("fromNumber",), None),
        (("plivo", "authId"), "PLIVO_AUTH_ID"),
        (("plivo", "authToken"), "PLIVO_AUTH_TOKEN"),
    ),
    "mock": (),
}

# Legacy flat streaming keys that moved under streaming.providers.openai (legacy key -> new key).
LEGACY_STREAMING_OPENAI_KEYS = {
    "openaiApiKey": "apiKey",
    "sttModel": "model",
    "silenceDurationMs": "silenceDurationMs",
    "vadThreshold": "vadThreshold",
}

# Built-in pydantic error types -> what is allowed. The input value is never part of a message.
PYDANTIC_MESSAGES = {
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "string_too_short": "must be a non-empty string",
    "int_type": "must be an integer",
    "list_type": "must be a list",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "missing": "is required",
}
CUSTOM_ERROR_TYPE = "voicecall"  # our validators raise this type with a ready human message

DEFAULT_MOCK_REPLIES = ("Yes, that works for me.", "Thanks, that is all.", "Goodbye.")
DEFAULT_FALLBACK_MESSAGE = "Sorry, I didn't catch that. Could you say it again?"


class ConfigError(Exception):
    """The config cannot be used. ``errors`` holds one ``<key path>: <what is allowed>`` per problem."""

    def __init__(self, errors: str | Iterable[str]) -> None:
        self.errors: list[str] = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)


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


def _check_http_url(value: Any) -> str:
    message = "must be an http or https URL with a host, like https://example.com"
    if not isinstance(value, str):
        raise _invalid(message)
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        raise _invalid(message) from None
    if parts.scheme not in ("http", "https") or not host:
        raise _invalid(message)
    return value


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


class MockConfig(_Section):
    """The scripted callee of the mock carrier."""

    auto_answer: bool = True
    answer_after_ms: NonNegativeInt = 800
    reply_after_ms: NonNegativeInt = 700
    replies: list[str] = Field(default_factory=lambda: list(DEFAULT_MOCK_REPLIES))


class OutboundConfig(_Section):
    default_mode: Literal["notify", "conversation"] = "notify"
    notify_hangup_delay_sec: NonNegativeInt = 3


class ServeConfig(_Section):
    port: PortInt = 3334
    bind: NonEmptyStr = "127.0.0.1"
    path: RoutePath = "/voice/webhook"


class TunnelConfig(_Section):
    provider: Literal["none", "ngrok", "tailscale-serve", "tailscale-funnel"] = "none"
    ngrok_auth_token: NonEmptyStr | None = None
    ngrok_domain: NonEmptyStr | None = None
    allow_ngrok_free_tier_loopback_bypass: bool = False


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


class StreamingConfig(_Section):
    enabled: bool = False
    provider: NonEmptyStr | None = None
    providers: dict[str, dict[str, Any]] = Field(default_factory=dict)  # provider-owned, free-form
    stream_path: RoutePath = "/voice/stream"
    pre_start_timeout_ms: PositiveInt = 5000
    max_pending_connections: PositiveInt = 32
    max_pending_connections_per_ip: PositiveInt = 4
    max_connections: PositiveInt = 128


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
    store: str | None = None  # accepted for compatibility with OpenClaw files; calls live in the DB

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
    return re.sub(r"\D", "", number or "")


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def load_config(
    path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None
) -> VoiceCallConfig:
    """Load, migrate, fill from env and validate the voice-call config. Raises ``ConfigError``."""
    env = os.environ if env is None else env
    resolved = _resolve_path(path, env)
    if resolved is None:
        return _build({}, env=env, source=None)
    return _build(_read_document(resolved), env=env, source=str(resolved))


def config_from_dict(data: Mapping[str, Any], *, env: Mapping[str, str] | None = None) -> VoiceCallConfig:
    """Validate an already-parsed document (either form) exactly like a file."""
    env = os.environ if env is None else env
    return _build(copy.deepcopy(data), env=env, source=None)


_cache_lock = threading.Lock()
_cached_config: VoiceCallConfig | None = None


def get_config() -> VoiceCallConfig:
    """The process-wide config, loaded on first use (or the one given to ``set_config``)."""
    global _cached_config
    with _cache_lock:
        if _cached_config is None:
            _cached_config = load_config()
        return _cached_config


def set_config(cfg: VoiceCallConfig | None) -> None:
    """Override the process-wide config; ``None`` clears it so the next ``get_config`` reloads."""
    global _cached_config
    with _cache_lock:
        _cached_config = cfg


def _resolve_path(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    if path is not None:
        resolved = Path(path).expanduser()
        if not resolved.is_file():
            raise ConfigError(f"{resolved}: config file not found")
        return resolved
    from_env = env.get(CONFIG_ENV_VAR, "").strip()
    if from_env:
        resolved = Path(from_env).expanduser()
        if not resolved.is_file():
            raise ConfigError(f"{resolved}: config file not found (named by ${CONFIG_ENV_VAR})")
        return resolved
    default = Path.cwd() / DEFAULT_CONFIG_FILENAME
    return default if default.is_file() else None


_JSON5_LOCATION_RE = re.compile(r"^<string>:(\d+)\s*(.*)$", re.DOTALL)
_JSON5_QUOTED_CHAR_RE = re.compile(r'"(?:[^"\\]|\\.)*"')


def _read_document(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: tolerate a BOM from Windows editors
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror or type(exc).__name__})") from None
    if not text.strip():
        raise ConfigError(f"{path}: invalid JSON5 at line 1: the file is empty")
    try:
        return json5.loads(text)
    except ValueError as exc:
        match = _JSON5_LOCATION_RE.match(str(exc))
        if match:
            # The parser quotes the offending character, which may be the start of an unquoted
            # secret; say "character" instead.
            detail = _JSON5_QUOTED_CHAR_RE.sub("character", match[2])
            raise ConfigError(f"{path}: invalid JSON5 at line {match[1]}: {detail}") from None
        raise ConfigError(f"{path}: invalid JSON5 (the parser gave no position)") from None


def _build(document: Any, *, env: Mapping[str, str], source: str | None) -> VoiceCallConfig:
    errors: list[str] = []
    if not isinstance(document, dict):
        raise ConfigError(f"{source or '(document)'}: must be a JSON5 object")

    # 1. Unwrap the OpenClaw document, if that is what this is.
    if "plugins" in document:
        prefix = WRAPPER_CONFIG_PREFIX
        data, entry_enabled, core_tts = _unwrap(document, errors)
    else:
        prefix = ""
        data, entry_enabled, core_tts = document, True, None
    if data is None:
        raise ConfigError(errors)

    # coreTts is the attribute messages.tts lands in, never something the file may set itself.
    for internal in ("coreTts", "core_tts"):
        if internal in data:
            data.pop(internal)
            errors.append(f"{_join(prefix, internal)}: {_unknown_key_message(VoiceCallConfig)}")

    # 2. Legacy keys, then 3. env fallbacks; both remember where a value came from for error lines.
    origins: dict[tuple[str, ...], str] = {}
    _migrate_legacy(data, prefix, origins)
    provider = data.get("provider", "mock")
    _apply_env_fallbacks(data, env, provider if isinstance(provider, str) else "", origins)
    if core_tts is not None:
        data["coreTts"] = core_tts

    # 4. Schema.
    cfg: VoiceCallConfig | None = None
    try:
        cfg = VoiceCallConfig.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as exc:
        errors.extend(_translate(exc, prefix, origins))

    # 5. Cross-field rules, checked on the raw data so they are reported alongside schema errors.
    enabled = entry_enabled and data.get("enabled", True) is not False
    if enabled:
        errors.extend(_cross_field_errors(data, prefix))

    if errors:
        raise ConfigError(_dedupe(errors))
    assert cfg is not None
    if not entry_enabled:
        cfg.enabled = False
    if cfg.skip_signature_verification:
        logger.warning(SECURITY_WARNING)
    return cfg


def _unwrap(document: dict[str, Any], errors: list[str]) -> tuple[dict[str, Any] | None, bool, Any]:
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


def _migrate_legacy(data: dict[str, Any], prefix: str, origins: dict[tuple[str, ...], str]) -> None:
    """Rewrite §1.5 legacy keys in place; the current key always wins over the legacy one."""

    def warn(old: str, new: str) -> None:
        logger.warning(
            "Config key %s is deprecated; use %s (migrated for now, please update the file)",
            _join(prefix, old),
            _join(prefix, new),
        )

    provider = data.get("provider")
    if isinstance(provider, str) and provider in LEGACY_PROVIDER_ALIASES:
        data["provider"] = LEGACY_PROVIDER_ALIASES[provider]
        logger.warning(
            'Config %s "%s" is deprecated; use "%s" (migrated)',
            _join(prefix, "provider"),
            provider,
            data["provider"],
        )

    twilio = data.get("twilio")
    if isinstance(twilio, dict) and "from" in twilio:
        legacy = twilio.pop("from")
        if data.get("fromNumber") is None and legacy is not None:
            data["fromNumber"] = legacy
            origins[("fromNumber",)] = f"legacy key {_join(prefix, 'twilio.from')}"
        warn("twilio.from", "fromNumber")

    streaming = data.get("streaming")
    if not isinstance(streaming, dict):
        return
    if "sttProvider" in streaming:
        legacy = streaming.pop("sttProvider")
        if streaming.get("provider") is None and legacy is not None:
            streaming["provider"] = legacy
            origins[("streaming", "provider")] = f"legacy key {_join(prefix, 'streaming.sttProvider')}"
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


def _apply_env_fallbacks(
    data: dict[str, Any], env: Mapping[str, str], provider: str, origins: dict[tuple[str, ...], str]
) -> None:
    """§1.3: fill unset keys from env (provider credentials only for the selected provider)."""
    for path, var in (*PROVIDER_ENV_FALLBACKS.get(provider, ()), *ALWAYS_ENV_FALLBACKS):
        value = (env.get(var) or "").strip()
        if not value:
            continue  # an empty env var is as good as unset
        container: Any = data
        for key in path[:-1]:
            if container.get(key) is None:
                container[key] = {}
            container = container[key]
            if not isinstance(container, dict):
                break  # the schema reports the section's type; env cannot help
        else:
            if container.get(path[-1]) is None:
                container[path[-1]] = value
                origins[path] = var


def _cross_field_errors(data: dict[str, Any], prefix: str) -> list[str]:
    """§1.2 provider requirements. Values of the wrong type are left to the schema errors."""
    provider = data.get("provider", "mock")
    errors: list[str] = []
    if provider not in PROVIDERS:
        return errors

    def missing(path: tuple[str, ...]) -> bool:
        node: Any = data
        for key in path:
            if node is None:
                return True  # the whole section is absent
            if not isinstance(node, dict):
                return False  # section has the wrong type; already reported by the schema
            node = node.get(key)
        return node is None

    def required(path: tuple[str, ...], env_var: str | None, extra: str = "") -> None:
        if missing(path):
            hint = f" (or set {env_var})" if env_var else ""
            errors.append(f"{_join(prefix, '.'.join(path))}: required for provider {provider}{extra}{hint}")

    for path, env_var in PROVIDER_REQUIREMENTS[provider]:
        required(path, env_var)
    if provider == "telnyx" and data.get("skipSignatureVerification") is not True:
        required(("telnyx", "publicKey"), "TELNYX_PUBLIC_KEY", " unless skipSignatureVerification is true")

    streaming = data.get("streaming")
    if isinstance(streaming, dict) and streaming.get("enabled") is True and provider != "twilio":
        errors.append(
            f"{_join(prefix, 'streaming.enabled')}: requires provider twilio (media streams are Twilio-only)"
        )
    return errors


# --------------------------------------------------------------------------------------------------
# Error translation
# --------------------------------------------------------------------------------------------------


def _translate(exc: ValidationError, prefix: str, origins: Mapping[tuple[str, ...], str]) -> list[str]:
    lines = []
    # include_input=False: the offending value (maybe a secret) must never reach a message.
    for error in exc.errors(include_input=False, include_url=False, include_context=True):
        loc = tuple(error["loc"])
        is_key = bool(loc) and loc[-1] == "[key]"
        if is_key:
            loc = loc[:-1]
        message = _message_for(error, loc)
        if is_key:
            message = f"key {message}"
        origin = origins.get(tuple(str(part) for part in loc))
        if origin:
            message = f"{message} (value came from {origin})"
        lines.append(f"{_render_loc(prefix, loc)}: {message}")
    return lines


def _message_for(error: Any, loc: tuple[Any, ...]) -> str:
    kind = error["type"]
    if kind == CUSTOM_ERROR_TYPE:
        return str(error["msg"])  # written by our validators, value-free by construction
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        return _unknown_key_message(model) if model else "unknown key"
    if kind == "literal_error":
        # ctx["expected"] lists the Literal's own choices ("'a', 'b' or 'c'"), not user input.
        choices = re.findall(r"'([^']*)'", str(error.get("ctx", {}).get("expected", "")))
        return f"must be one of {', '.join(choices)}" if choices else "is not an allowed value"
    return PYDANTIC_MESSAGES.get(kind, "is not valid")


def _unknown_key_message(model: type[BaseModel]) -> str:
    allowed = [
        field.alias or name for name, field in model.model_fields.items() if name not in INTERNAL_FIELDS
    ]
    return f"unknown key (allowed: {', '.join(allowed)})"


def _strip_type(annotation: Any) -> Any:
    """Drop Annotated[...] and Optional[...] wrappers to reach the structural type."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            rest = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(rest) != 1:
                return annotation
            annotation = rest[0]
        else:
            return annotation


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class found at an error location (to list the keys allowed there)."""
    current: Any = VoiceCallConfig
    for part in loc:
        current = _strip_type(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = next(
                (f for name, f in current.model_fields.items() if part in (f.alias, name)),
                None,
            )
            if field is None:
                return None
            current = field.annotation
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        elif get_origin(current) is list:
            current = get_args(current)[0]
        else:
            return None
    current = _strip_type(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _render_loc(prefix: str, loc: Iterable[Any]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = _join(path, str(part))
    return path or "(document)"


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _dedupe(lines: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(lines))
