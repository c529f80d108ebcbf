"""Config errors: ``ConfigError`` and the translation of schema errors into key-path lines.

Every line is ``<key path>: <what is allowed>``; the offending value is never part of it (it may be
a secret). Paths carry the document prefix (``plugins.entries.voice-call.config`` in wrapper form).
"""

from __future__ import annotations

import re
import types
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from calls.config.schema import CUSTOM_ERROR_TYPE, INTERNAL_FIELDS, VoiceCallConfig

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


class ConfigError(Exception):
    """The config cannot be used. ``errors`` holds one ``<key path>: <what is allowed>`` per problem."""

    def __init__(self, errors: str | Iterable[str]) -> None:
        self.errors: list[str] = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)



def translate(exc: ValidationError, prefix: str, origins: Mapping[tuple[str, ...], str]) -> list[str]:
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
        return unknown_key_message(model) if model else "unknown key"
    if kind == "literal_error":
        # ctx["expected"] lists the Literal's own choices ("'a', 'b' or 'c'"), not user input.
        choices = re.findall(r"'([^']*)'", str(error.get("ctx", {}).get("expected", "")))
        return f"must be one of {', '.join(choices)}" if choices else "is not an allowed value"
    return PYDANTIC_MESSAGES.get(kind, "is not valid")


def unknown_key_message(model: type[BaseModel]) -> str:
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
            path = join_key(path, str(part))
    return path or "(document)"


def join_key(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def dedupe(lines: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(lines))
