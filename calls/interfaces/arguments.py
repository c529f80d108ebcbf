"""Argument checks shared by the JSON-RPC endpoint and the agent tool (fact sheet §9.1, §9.2): the
same names, the same trimming and the same messages, so both faces answer a bad call alike."""

from __future__ import annotations

from typing import Any

CALL_ID_REQUIRED = "callId required"
CALL_ID_AND_MESSAGE_REQUIRED = "callId and message required"
CALL_ID_AND_DIGITS_REQUIRED = "callId and digits required"


class ArgumentError(Exception):
    """Arguments an interface cannot act on; the message goes back to the caller verbatim."""


def text(arguments: dict[str, Any], name: str) -> str | None:
    """A trimmed string argument; ``None`` when absent, null or blank."""
    value = arguments.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ArgumentError(f"{name} must be a string")
    return value.strip() or None


def require(arguments: dict[str, Any], names: tuple[str, ...], message: str) -> list[str]:
    """The named string arguments, all present, else ``ArgumentError(message)``."""
    values = [text(arguments, name) for name in names]
    if not all(values):
        raise ArgumentError(message)
    return values  # type: ignore[return-value]


def initiated(call: Any) -> dict[str, Any]:
    """The answer to placing a call (``initiate_call``, ``voicecall.initiate``/``start``)."""
    return {"callId": str(call.id), "initiated": True}
