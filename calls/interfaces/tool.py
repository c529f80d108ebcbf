"""The ``voice_call`` agent tool: one function an AI agent calls to place and steer phone calls.

Three faces of the same thing (fact sheet §9.1):

* ``voice_call(arguments) -> dict`` — importable; never raises, errors come back as
  ``{"error": "<message>"}`` (unexpected exceptions too: logged, then a generic message);
* ``POST /tools/voice_call`` — the body is the tool's JSON arguments, the answer its JSON result;
  behind the same bearer token as ``/rpc`` (``calls.interfaces.rpc_auth``);
* ``TOOL_SCHEMA`` — the OpenAI function-calling definition, served at ``GET /tools/voice_call/schema``
  (no token: it describes the tool, it does nothing) and printed by ``voicecall tool-schema``.

Actions and results:

=================  ==========================  ==========================
action             arguments                   result
=================  ==========================  ==========================
initiate_call      message, to?, mode?         {callId, initiated: true}
continue_call      callId, message             {success: true, transcript}
speak_to_user      callId, message             {success: true}
send_dtmf          callId, digits              {success: true}
end_call           callId                      {success: true}
get_status         callId                      {found: true, call} / {found: false}
(no action)        mode?: call|status, to?,    legacy form: ``status`` needs ``sid``;
                   sid?, message?              ``call`` (the default) places a call
=================  ==========================  ==========================

Every string argument is trimmed; unknown argument names are refused (the schema says
``additionalProperties: false``), so a typo is reported instead of silently ignored.
``skills/voice-call/SKILL.md`` documents this for agents; a test keeps it in step with the schema.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from calls import services
from calls.config import ConfigError, get_config
from calls.interfaces.arguments import (
    CALL_ID_AND_DIGITS_REQUIRED,
    CALL_ID_AND_MESSAGE_REQUIRED,
    CALL_ID_REQUIRED,
    ArgumentError,
    initiated,
)
from calls.interfaces.arguments import text as _text
from calls.interfaces.rpc_auth import bearer_ok, unauthorized

logger = logging.getLogger(__name__)

TOOL_NAME = "voice_call"
MAX_BODY_BYTES = 64 * 1024

# Validation messages (fact sheet §9.1); SKILL.md explains each one.
MESSAGE_REQUIRED = services.MESSAGE_REQUIRED  # "message required"
TO_REQUIRED = services.TO_REQUIRED  # "to required"
SID_REQUIRED = "sid required for status"
TO_REQUIRED_FOR_CALL = "to required for call"
LEGACY_MODE_INVALID = "mode must be call or status when no action is given"
UNEXPECTED_ERROR = "voice_call failed unexpectedly; the server log has details"
ARGUMENTS_NOT_OBJECT = "arguments must be a JSON object"
VALIDATION_MESSAGES = (
    MESSAGE_REQUIRED,
    TO_REQUIRED,
    CALL_ID_AND_MESSAGE_REQUIRED,
    CALL_ID_AND_DIGITS_REQUIRED,
    CALL_ID_REQUIRED,
    SID_REQUIRED,
    TO_REQUIRED_FOR_CALL,
)

ACTIONS: dict[str, str] = {
    "initiate_call": "Place an outbound call. Needs message; to defaults to the configured toNumber; "
    "mode notify (speak the message, then hang up) or conversation (speak, then listen).",
    "continue_call": "Say message on a live call and wait for the caller's next reply (returns transcript).",
    "speak_to_user": "Say message on a live call without waiting for a reply.",
    "send_dtmf": "Send DTMF digits (0-9 * # and w/p/, pauses) on a live call.",
    "end_call": "Hang up the call.",
    "get_status": "The call's state and transcript (callId may be ours or the carrier's id).",
}
LEGACY_MODES = ("call", "status")
CALL_MODES = ("notify", "conversation")

PARAMETERS: dict[str, dict[str, Any]] = {
    "action": {
        "type": "string",
        "enum": list(ACTIONS),
        "description": "What to do. Omit only for the legacy form (mode call|status).",
    },
    "callId": {
        "type": "string",
        "description": "The call to act on: the callId returned by initiate_call, or the carrier's call id.",
    },
    "message": {
        "type": "string",
        "description": "Text to speak: the opening message for initiate_call, the line for "
        "speak_to_user / continue_call.",
    },
    "to": {
        "type": "string",
        "description": "Number to call in E.164 form, like +15551234567 (initiate_call; default toNumber).",
    },
    "mode": {
        "type": "string",
        "enum": [*CALL_MODES, *LEGACY_MODES],
        "description": "initiate_call: notify or conversation (default: config outbound.defaultMode). "
        "Legacy form without action: call or status.",
    },
    "digits": {
        "type": "string",
        "description": "DTMF digits for send_dtmf: 0-9, *, #, and w / p / comma for pauses.",
    },
    "sid": {
        "type": "string",
        "description": "Legacy form only: the call id to look up with mode status.",
    },
}

TOOL_SCHEMA: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": TOOL_NAME,
        "description": (
            "Make and control real phone calls. initiate_call places a call (notify: say a message and "
            "hang up; conversation: talk with the person). On a live call, continue_call says something "
            "and returns what the person answered; speak_to_user only speaks; send_dtmf presses keys; "
            "end_call hangs up; get_status shows state and transcript. Errors come back as {\"error\": ...}."
        ),
        "parameters": {
            "type": "object",
            "properties": PARAMETERS,
            "required": [],
            "additionalProperties": False,
        },
    },
}


#: Arguments the tool cannot act on; the message goes back to the agent.
ToolInputError = ArgumentError


def _initiate(to: str | None, message: str | None, mode: str | None) -> dict[str, Any]:
    return initiated(services.initiate_call(to=to, message=message, mode=mode))


def _run(arguments: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(arguments) - set(PARAMETERS))
    if unknown:
        raise ToolInputError(f"unknown argument(s): {', '.join(unknown)} (allowed: {', '.join(PARAMETERS)})")
    action = _text(arguments, "action")
    call_id = _text(arguments, "callId")
    message = _text(arguments, "message")
    to = _text(arguments, "to")
    mode = _text(arguments, "mode")

    if action is None:
        return _legacy(mode=mode, to=to, sid=_text(arguments, "sid"), message=message)
    if action == "initiate_call":
        if not message:
            raise ToolInputError(MESSAGE_REQUIRED)
        if not to and not get_config().to_number:
            raise ToolInputError(TO_REQUIRED)
        return _initiate(to, message, mode)
    if action == "continue_call":
        if not (call_id and message):
            raise ToolInputError(CALL_ID_AND_MESSAGE_REQUIRED)
        return {"success": True, "transcript": services.continue_call(call_id, message)}
    if action == "speak_to_user":
        if not (call_id and message):
            raise ToolInputError(CALL_ID_AND_MESSAGE_REQUIRED)
        services.speak(call_id, message)
        return {"success": True}
    if action == "send_dtmf":
        digits = _text(arguments, "digits")
        if not (call_id and digits):
            raise ToolInputError(CALL_ID_AND_DIGITS_REQUIRED)
        services.send_dtmf(call_id, digits)
        return {"success": True}
    if action == "end_call":
        if not call_id:
            raise ToolInputError(CALL_ID_REQUIRED)
        services.end_call(call_id)
        return {"success": True}
    if action == "get_status":
        if not call_id:
            raise ToolInputError(CALL_ID_REQUIRED)
        return services.get_status(call_id)
    raise ToolInputError(f"unknown action: {action} (expected one of {', '.join(ACTIONS)})")


def _legacy(*, mode: str | None, to: str | None, sid: str | None, message: str | None) -> dict[str, Any]:
    """The pre-``action`` form: ``mode: status`` looks a call up by ``sid``; otherwise place a call."""
    mode = mode or "call"
    if mode not in LEGACY_MODES:
        raise ToolInputError(LEGACY_MODE_INVALID)
    if mode == "status":
        if not sid:
            raise ToolInputError(SID_REQUIRED)
        return services.get_status(sid)
    if not to and not get_config().to_number:
        raise ToolInputError(TO_REQUIRED_FOR_CALL)
    return _initiate(to, message, None)


def voice_call(arguments: dict[str, Any]) -> dict[str, Any]:
    """Run the tool. Always returns a JSON-able dict; failures are ``{"error": "..."}``."""
    if not isinstance(arguments, dict):
        return {"error": ARGUMENTS_NOT_OBJECT}
    try:
        return _run(arguments)
    except (ToolInputError, services.ServiceError) as exc:
        return {"error": str(exc)}
    except ConfigError as exc:
        return {"error": f"configuration error: {exc}".replace("\n", "; ")}
    except Exception:
        logger.exception("voice_call tool failed")
        return {"error": UNEXPECTED_ERROR}


# ------------------------------------------------------------------------------------------------
# HTTP
# ------------------------------------------------------------------------------------------------


@csrf_exempt
def voice_call_endpoint(request: HttpRequest) -> HttpResponse:
    """``POST /tools/voice_call``: body = arguments, answer = result (tool errors are still 200)."""
    if request.method != "POST":
        response = JsonResponse({"error": "use POST"}, status=405)
        response["Allow"] = "POST"
        return response
    if not bearer_ok(request):
        return unauthorized({"error": "Unauthorized: send Authorization: Bearer <rpc token>"})
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > MAX_BODY_BYTES or len(request.body) > MAX_BODY_BYTES:
        return JsonResponse({"error": "body too large"}, status=413)
    try:
        arguments = json.loads(request.body.decode("utf-8") or "{}")
    except (UnicodeDecodeError, ValueError):
        return JsonResponse({"error": "body is not valid JSON"}, status=400)
    if not isinstance(arguments, dict):
        return JsonResponse({"error": ARGUMENTS_NOT_OBJECT}, status=400)
    return JsonResponse(voice_call(arguments))


def voice_call_schema(request: HttpRequest) -> JsonResponse:
    """``GET /tools/voice_call/schema``: the OpenAI function-calling definition."""
    return JsonResponse(TOOL_SCHEMA)
