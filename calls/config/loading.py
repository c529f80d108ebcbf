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
import logging
import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import json5
from pydantic import ValidationError

from calls.config.errors import ConfigError, dedupe, join_key, translate, unknown_key_message
from calls.config.legacy import WRAPPER_CONFIG_PREFIX, migrate_legacy, unwrap
from calls.config.schema import PROVIDERS, VoiceCallConfig

logger = logging.getLogger("calls.config")

CONFIG_ENV_VAR = "VOICECALL_CONFIG"
DEFAULT_CONFIG_FILENAME = "voicecall.json5"

SECURITY_WARNING = (
    "SECURITY WARNING: skipSignatureVerification is on; webhook signatures are NOT checked. "
    "Never use this in production."
)

PLIVO_V2_WARNING = (
    "SECURITY WARNING: plivo.allowV2Signatures is on; requests signed only with X-Plivo-Signature-V2 "
    "are accepted, and V2 does not sign the body or the query. Turn it off once Plivo sends V3."
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
# Carriers with bidirectional media streams (providers/media_stream.py); the mock is text-only.
STREAMING_PROVIDERS = ("twilio", "telnyx", "plivo")
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
        data, entry_enabled, core_tts = unwrap(document, errors)
    else:
        prefix = ""
        data, entry_enabled, core_tts = document, True, None
    if data is None:
        raise ConfigError(errors)

    # coreTts is the attribute messages.tts lands in, never something the file may set itself.
    for internal in ("coreTts", "core_tts"):
        if internal in data:
            data.pop(internal)
            errors.append(f"{join_key(prefix, internal)}: {unknown_key_message(VoiceCallConfig)}")

    # 2. Legacy keys, then 3. env fallbacks; both remember where a value came from for error lines.
    origins: dict[tuple[str, ...], str] = {}
    migrate_legacy(data, prefix, origins)
    provider = data.get("provider", "mock")
    _apply_env_fallbacks(data, env, provider if isinstance(provider, str) else "", origins)
    if core_tts is not None:
        data["coreTts"] = core_tts

    # 4. Schema.
    cfg: VoiceCallConfig | None = None
    try:
        cfg = VoiceCallConfig.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as exc:
        errors.extend(translate(exc, prefix, origins))

    # 5. Cross-field rules, checked on the raw data so they are reported alongside schema errors.
    enabled = entry_enabled and data.get("enabled", True) is not False
    if enabled:
        errors.extend(_cross_field_errors(data, prefix))

    if errors:
        raise ConfigError(dedupe(errors))
    assert cfg is not None
    if not entry_enabled:
        cfg.enabled = False
    if cfg.skip_signature_verification:
        logger.warning(SECURITY_WARNING)
    if cfg.provider == "plivo" and cfg.plivo.allow_v2_signatures:
        logger.warning(PLIVO_V2_WARNING)
    return cfg



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
            errors.append(f"{join_key(prefix, '.'.join(path))}: required for provider {provider}{extra}{hint}")

    for path, env_var in PROVIDER_REQUIREMENTS[provider]:
        required(path, env_var)
    if provider == "telnyx" and data.get("skipSignatureVerification") is not True:
        required(("telnyx", "publicKey"), "TELNYX_PUBLIC_KEY", " unless skipSignatureVerification is true")

    streaming = data.get("streaming")
    streaming_on = isinstance(streaming, dict) and streaming.get("enabled") is True
    if streaming_on and provider not in STREAMING_PROVIDERS:
        errors.append(
            f"{join_key(prefix, 'streaming.enabled')}: requires provider twilio, telnyx or plivo "
            f"(provider {provider} has no media streams; it speaks and listens as text only)"
        )
    realtime = data.get("realtime")
    if isinstance(realtime, dict) and realtime.get("enabled") is True:
        if streaming_on:
            errors.append(
                f"{join_key(prefix, 'realtime.enabled')}: cannot be combined with "
                f"{join_key(prefix, 'streaming.enabled')} (a realtime call's model does its own speech in and "
                "out; enable one of the two)"
            )
        elif provider not in STREAMING_PROVIDERS:
            errors.append(
                f"{join_key(prefix, 'realtime.enabled')}: requires provider twilio, telnyx or plivo "
                f"(realtime voice rides on a carrier media stream; provider {provider} has none)"
            )
    return errors


