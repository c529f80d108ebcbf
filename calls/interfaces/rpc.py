"""``POST /rpc``: JSON-RPC 2.0 for programs that drive calls (the CLI, gateways, scripts).

A thin interface over ``calls.services``; methods, params and result shapes are those of the
OpenClaw gateway methods (fact sheet §9.2):

==========================  ==========================  ==============================================
method                      params                      result
==========================  ==========================  ==============================================
voicecall.initiate          message, to?, mode?         {callId, initiated: true}
voicecall.start             to, message?, mode?         {callId, initiated: true}
voicecall.continue          callId, message             {success: true, transcript}  (blocks)
voicecall.continue.start    callId, message             {operationId, status: "pending", pollTimeoutMs}
voicecall.continue.result   operationId                 pending / {…, status: "completed", result} /
                                                        {…, status: "failed", error}
voicecall.speak             callId, message             {success: true}
voicecall.dtmf              callId, digits              {success: true}
voicecall.end               callId                      {success: true}
voicecall.status            callId? (or sid?)           {found, call?} / {found: true, calls: […]}
==========================  ==========================  ==============================================

Wire rules (https://www.jsonrpc.org/specification): params by name only (an object); requests
without ``id`` are notifications (run, not answered); batches are arrays (an empty one is an invalid
request; an all-notification batch gets ``204``). Error codes: ``-32700`` parse error, ``-32600``
invalid request, ``-32601`` method not found, ``-32602`` invalid params (messages as in the fact
sheet, e.g. ``callId and message required``), ``-32000`` the service refused (``ServiceError`` —
its message verbatim, also in ``error.data.error``), ``-32603`` internal error (logged, no details).

HTTP: ``Authorization: Bearer <token>`` (``calls.interfaces.rpc_auth``) is checked before the body is read:
missing or wrong → ``401`` and nothing is done. CSRF-exempt, POST only, bodies over 256 KB → ``413``.
The blocking ``voicecall.continue`` holds no database transaction while it waits (requests are not
atomic; services commit before waiting), and under daphne every request has its own thread.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
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
from calls.interfaces.arguments import require as _require
from calls.interfaces.arguments import text as _text
from calls.interfaces.rpc_auth import bearer_ok, unauthorized
from calls.services import operations as continue_operations

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SERVICE_ERROR = -32000

OPERATION_ID_REQUIRED = "operationId required"
PARAMS_MUST_BE_OBJECT = "params must be an object (by-name parameters)"


#: Bad or missing parameters: answered with ``-32602`` and the message.
InvalidParams = ArgumentError


# ------------------------------------------------------------------------------------------------
# Methods
# ------------------------------------------------------------------------------------------------


def _initiate(params: dict[str, Any]) -> dict[str, Any]:
    message = _text(params, "message")
    if not message:
        raise InvalidParams(services.MESSAGE_REQUIRED)
    to = _text(params, "to")
    if not to and not get_config().to_number:
        raise InvalidParams(services.TO_REQUIRED)
    return initiated(services.initiate_call(to=to, message=message, mode=_text(params, "mode")))


def _start(params: dict[str, Any]) -> dict[str, Any]:
    to = _text(params, "to")
    if not to:
        raise InvalidParams(services.TO_REQUIRED)
    return initiated(services.initiate_call(to=to, message=_text(params, "message"), mode=_text(params, "mode")))


def _continue(params: dict[str, Any]) -> dict[str, Any]:
    call_id, message = _require(params, ("callId", "message"), CALL_ID_AND_MESSAGE_REQUIRED)
    return {"success": True, "transcript": services.continue_call(call_id, message)}


def _continue_start(params: dict[str, Any]) -> dict[str, Any]:
    call_id, message = _require(params, ("callId", "message"), CALL_ID_AND_MESSAGE_REQUIRED)
    operation = continue_operations.start_continue(call_id=call_id, message=message)
    return continue_operations.pending_payload(operation)


def _continue_result(params: dict[str, Any]) -> dict[str, Any]:
    (operation_id,) = _require(params, ("operationId",), OPERATION_ID_REQUIRED)
    return continue_operations.take_result(operation_id)


def _speak(params: dict[str, Any]) -> dict[str, Any]:
    call_id, message = _require(params, ("callId", "message"), CALL_ID_AND_MESSAGE_REQUIRED)
    services.speak(call_id, message)
    return {"success": True}


def _dtmf(params: dict[str, Any]) -> dict[str, Any]:
    call_id, digits = _require(params, ("callId", "digits"), CALL_ID_AND_DIGITS_REQUIRED)
    services.send_dtmf(call_id, digits)
    return {"success": True}


def _end(params: dict[str, Any]) -> dict[str, Any]:
    (call_id,) = _require(params, ("callId",), CALL_ID_REQUIRED)
    services.end_call(call_id)
    return {"success": True}


def _status(params: dict[str, Any]) -> dict[str, Any]:
    return services.get_status(_text(params, "callId") or _text(params, "sid"))


METHODS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "voicecall.initiate": _initiate,
    "voicecall.start": _start,
    "voicecall.continue": _continue,
    "voicecall.continue.start": _continue_start,
    "voicecall.continue.result": _continue_result,
    "voicecall.speak": _speak,
    "voicecall.dtmf": _dtmf,
    "voicecall.end": _end,
    "voicecall.status": _status,
}


# ------------------------------------------------------------------------------------------------
# JSON-RPC envelope
# ------------------------------------------------------------------------------------------------


def _error(request_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "error": error, "id": request_id}


def _valid_id(value: Any) -> bool:
    return value is None or (isinstance(value, str | int | float) and not isinstance(value, bool))


def handle_one(message: Any) -> dict[str, Any] | None:
    """Answer one request object; ``None`` for a notification."""
    if not isinstance(message, dict):
        return _error(None, INVALID_REQUEST, "Invalid Request: expected a request object")
    request_id = message.get("id")
    if not _valid_id(request_id):
        return _error(None, INVALID_REQUEST, "Invalid Request: id must be a string, number or null")
    if message.get("jsonrpc") != "2.0":
        return _error(request_id, INVALID_REQUEST, 'Invalid Request: jsonrpc must be "2.0"')
    method = message.get("method")
    if not isinstance(method, str):
        return _error(request_id, INVALID_REQUEST, "Invalid Request: method must be a string")
    notification = "id" not in message
    params = message.get("params", {})
    handler = METHODS.get(method)
    if handler is None:
        response = _error(request_id, METHOD_NOT_FOUND, f"Method not found: {method}")
    elif not isinstance(params, dict):
        response = _error(request_id, INVALID_PARAMS, PARAMS_MUST_BE_OBJECT)
    else:
        response = _call(handler, method, params, request_id)
    return None if notification else response


def _call(handler: Callable[[dict[str, Any]], dict[str, Any]], method: str, params: dict[str, Any],
          request_id: Any) -> dict[str, Any]:
    try:
        result = handler(params)
    except InvalidParams as exc:
        return _error(request_id, INVALID_PARAMS, str(exc))
    except services.ServiceError as exc:
        return _error(request_id, SERVICE_ERROR, str(exc), {"error": str(exc)})
    except ConfigError as exc:
        message = f"configuration error: {exc}".replace("\n", "; ")
        return _error(request_id, SERVICE_ERROR, message, {"error": message})
    except Exception:
        logger.exception("RPC method %s failed", method)
        return _error(request_id, INTERNAL_ERROR, "Internal error")
    return {"jsonrpc": "2.0", "result": result, "id": request_id}


def handle_payload(payload: Any) -> Any:
    """A decoded body (request or batch) → the response document, or ``None`` for nothing."""
    if isinstance(payload, list):
        if not payload:
            return _error(None, INVALID_REQUEST, "Invalid Request: empty batch")
        responses = [r for r in (handle_one(item) for item in payload) if r is not None]
        return responses or None
    return handle_one(payload)


@csrf_exempt
def rpc_endpoint(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        response = JsonResponse(_error(None, INVALID_REQUEST, "Invalid Request: use POST"), status=405)
        response["Allow"] = "POST"
        return response
    if not bearer_ok(request):
        return unauthorized(_error(None, -32001, "Unauthorized: send Authorization: Bearer <rpc token>"))
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > MAX_BODY_BYTES or len(request.body) > MAX_BODY_BYTES:
        return JsonResponse(_error(None, INVALID_REQUEST, "Invalid Request: body too large"), status=413)
    try:
        payload = json.loads(request.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return JsonResponse(_error(None, PARSE_ERROR, "Parse error: body is not valid JSON"))
    document = handle_payload(payload)
    if document is None:
        return HttpResponse(status=204)
    return JsonResponse(document, safe=False)
