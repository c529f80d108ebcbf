"""The voice-call configuration, as a package: the schema, loading with env fallbacks, legacy keys.

* ``schema``  -- the keys, their types, defaults and rules (pydantic); ``VoiceCallConfig``.
* ``loading`` -- where the file is, the two document forms, env fallbacks, cross-field checks,
  the process-wide ``get_config`` / ``set_config``.
* ``legacy``  -- the OpenClaw wrapper document and deprecated keys, rewritten with a warning.
* ``errors``  -- ``ConfigError`` and value-free ``<key path>: <what is allowed>`` lines.

Callers import from here; the modules are the rooms behind it.
"""

from calls.config.errors import ConfigError  # noqa: F401 - re-exported
from calls.config.loading import (  # noqa: F401 - re-exported
    CONFIG_ENV_VAR,
    DEFAULT_CONFIG_FILENAME,
    PLIVO_V2_WARNING,
    PROVIDER_ENV_FALLBACKS,
    SECURITY_WARNING,
    config_from_dict,
    get_config,
    load_config,
    set_config,
)
from calls.config.schema import (  # noqa: F401 - re-exported
    NumberRoute,
    ServeConfig,
    StreamingConfig,
    TelnyxConfig,
    VoiceCallConfig,
    deep_merge_defined,
)
