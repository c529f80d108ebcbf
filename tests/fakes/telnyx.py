"""A local fake of Telnyx Call Control v2 that speaks the real wire protocol.

REST (protocols.md §5): ``POST /v2/calls`` (dial), ``POST /v2/calls/{id}/actions/{action}``
(answer, speak, transcription_start, transcription_stop, hangup, ...), ``GET /v2/calls/{id}``, with
``Authorization: Bearer <api key>``; commands answer ``{"data": {"result": "ok"}}`` and errors are
``{"errors": [{"code", "title", "detail"}]}`` (404 for an unknown call, 422 code 90018 for a call
that has ended). A repeated ``command_id`` on the same call is acknowledged without acting twice, as
Telnyx documents.

Webhooks: the fake plays the network and the far end. It posts the envelopes Telnyx would
(``{"data": {"record_type": "event", "event_type", "id", "occurred_at", "payload"}, "meta"}``) to the
call's ``webhook_url``, signed with its own Ed25519 key pair (PyNaCl) over
``f"{timestamp}|{raw body}"`` in ``telnyx-signature-ed25519`` / ``telnyx-timestamp``. Deliveries
leave from one background thread in order, like Telnyx's per-call sequencing:

* dial → ``call.initiated`` (outgoing) → ``call.answered`` (or ``call.hangup`` when
  ``answer_outbound`` is false);
* ``start_inbound()`` → ``call.initiated`` (incoming, parked); answer → ``call.answered``;
* speak → ``call.speak.started`` → ``call.speak.ended``;
* transcription_start → the callee's next scripted line as ``call.transcription`` (an interim
  ``is_final: false`` result first, then the final one);
* hangup → ``call.hangup`` (``normal_clearing``).
* a dial or answer carrying ``stream_url`` (or ``streaming_start``): once the call is answered the
  fake opens the media WebSocket to that URL as Telnyx does (``tests/fakes/carrier_media.py``:
  ``connected``, ``start``, then whatever the test sends; audio played back in real time) and posts
  ``streaming.started`` -- or ``streaming.failed`` when the socket cannot be opened; hangup sends
  ``stop``, closes the socket and posts ``streaming.stopped``. ``call.media`` is that stream.

Everything the fake receives and sends is recorded (``commands``, ``deliveries``) for assertions;
``idle()`` says whether every queued webhook went out. ``dial_gate`` holds dial requests (a slow
carrier) so a test can kill the client mid-request; ``callback_gate`` holds the callbacks back.
``GET /v2/connections/{id}/active_calls`` lists the live legs with their ``client_state``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import queue
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import requests
from nacl.signing import SigningKey

from tests.fakes.carrier_media import TelnyxMediaStream
from tests.fakes.faults import CreateFaults
from tests.fakes.polling import wait_until

DEFAULT_API_KEY = "KEY0123FAKEtelnyxSECRET"
DEFAULT_CONNECTION_ID = "1494404757140276705"
DEFAULT_REPLIES = ("Yes, I can hear you.", "Tomorrow at three works for me.", "Thanks, goodbye.")

CALL_ENDED_ERROR = {
    "code": "90018",
    "title": "Call has already ended",
    "detail": "This call is no longer active and can't receive commands.",
}
NOT_FOUND_ERROR = {"code": "10005", "title": "Resource not found", "detail": "The requested call was not found."}
AUTH_ERROR = {"code": "10009", "title": "Authentication failed", "detail": "The API key is missing or invalid."}


@dataclass
class RecordedCommand:
    method: str
    path: str
    action: str  # "dial", "status", or the action name ("speak", "hangup", ...)
    call_control_id: str | None
    body: dict[str, Any]
    status: int = 0


@dataclass
class Delivery:
    event_type: str
    event_id: str
    call_control_id: str
    body: bytes
    timestamp: int = 0
    status: int | None = None
    response: str = ""


@dataclass
class FakeCall:
    call_control_id: str
    direction: str  # "incoming" | "outgoing"
    from_number: str
    to_number: str
    webhook_url: str
    client_state: str | None = None
    state: str = "parked"
    alive: bool = True
    call_leg_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    call_session_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    replies: deque[str] = field(default_factory=deque)
    stream_request: dict[str, Any] | None = None  # the stream_* fields of the dial/answer/streaming_start
    media: TelnyxMediaStream | None = None


STREAM_FIELDS = ("stream_url", "stream_track", "stream_bidirectional_mode", "stream_bidirectional_codec",
                 "stream_auth_token", "stream_codec")


class FakeTelnyx:
    """Start with ``start()`` (or the ``running()`` context manager); ``base_url`` is the API base
    to put in ``telnyx.apiBaseUrl``; ``public_key`` is the base64 key for ``telnyx.publicKey``."""

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        connection_id: str = DEFAULT_CONNECTION_ID,
        seed: bytes | None = None,
        webhook_url: str | None = None,
        replies: tuple[str, ...] = DEFAULT_REPLIES,
    ) -> None:
        self.api_key = api_key
        self.connection_id = connection_id
        self.signing_key = SigningKey(seed) if seed is not None else SigningKey.generate()
        self.webhook_url = webhook_url  # the connection's URL, used for inbound calls
        self.replies = tuple(replies)
        self.answer_outbound = True
        self.unanswered_hangup_cause = "timeout"
        self.send_partial_transcripts = True
        self.auto_stream = True  # open the media WebSocket of a call that requested one
        self.fail_streams = False  # report streaming.failed instead of connecting
        # A slow carrier: while ``dial_gate`` is clear, dial requests are received (and recorded, and
        # ``dial_received`` set) but not answered; ``dial_gate.set()`` lets them through. A carrier
        # does not know its client died, so a held dial is still placed after the client is gone.
        self.dial_gate = threading.Event()
        self.dial_gate.set()
        self.dial_received = threading.Event()
        self.dial_gate_timeout = 60.0
        # Webhooks leave only while ``callback_gate`` is set: clear it to hold every callback back (a
        # carrier whose callbacks are delayed or cannot reach us), set it to let them go, in order.
        self.callback_gate = threading.Event()
        self.callback_gate.set()
        self.create_faults = CreateFaults()  # injected faults of POST /v2/calls (tests/fakes/faults.py)
        self.commands: list[RecordedCommand] = []
        self.deliveries: list[Delivery] = []
        self.calls: dict[str, FakeCall] = {}
        self._failures: dict[str, deque[tuple[int, dict[str, Any]]]] = {}
        self._seen_commands: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
        self._lock = threading.RLock()
        self._outbox: queue.Queue[tuple[FakeCall, dict[str, Any]] | None] = queue.Queue()
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> FakeTelnyx:
        fake = self

        class Handler(_Handler):
            owner = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        for target in (self._server.serve_forever, self._deliver_forever):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self._outbox.put(None)
        self.callback_gate.set()
        for thread in self._threads:
            thread.join(timeout=10)

    @classmethod
    @contextlib.contextmanager
    def running(cls, **kwargs: Any) -> Iterator[FakeTelnyx]:
        fake = cls(**kwargs).start()
        try:
            yield fake
        finally:
            fake.stop()

    @property
    def origin(self) -> str:
        assert self._server is not None, "start() the fake first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def base_url(self) -> str:
        """What goes into ``telnyx.apiBaseUrl`` (the client appends ``/v2``)."""
        return self.origin

    @property
    def public_key(self) -> str:
        return base64.b64encode(bytes(self.signing_key.verify_key)).decode()

    # --- signing and sending webhooks ------------------------------------------------------------
    def sign(self, body: bytes, timestamp: int | str | None = None, *, urlsafe: bool = False) -> dict[str, str]:
        """The headers Telnyx sends with ``body``: Ed25519 over ``f"{timestamp}|{body}"``."""
        ts = str(int(time.time()) if timestamp is None else timestamp)
        signature = self.signing_key.sign(ts.encode() + b"|" + body).signature
        encoded = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(signature).decode()
        return {"telnyx-signature-ed25519": encoded, "telnyx-timestamp": ts, "Content-Type": "application/json"}

    def envelope(self, call: FakeCall, event_type: str, *, event_id: str | None = None, **payload: Any) -> dict:
        base = {
            "call_control_id": call.call_control_id,
            "call_leg_id": call.call_leg_id,
            "call_session_id": call.call_session_id,
            "connection_id": self.connection_id,
            "client_state": call.client_state,
            "from": call.from_number,
            "to": call.to_number,
            "direction": call.direction,
            "state": call.state,
        }
        base.update(payload)
        return {
            "data": {
                "record_type": "event",
                "event_type": event_type,
                "id": event_id or str(uuid.uuid4()),
                "occurred_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "payload": base,
            },
            "meta": {"attempt": 1, "delivered_to": call.webhook_url},
        }

    @staticmethod
    def encode(document: dict) -> bytes:
        return json.dumps(document, separators=(",", ":")).encode()

    def post(
        self,
        url: str,
        body: bytes,
        *,
        timestamp: int | str | None = None,
        headers: dict[str, str] | None = None,
        urlsafe: bool = False,
    ) -> requests.Response:
        """POST one signed webhook now (``headers`` override the signed ones, for tampering)."""
        signed = self.sign(body, timestamp, urlsafe=urlsafe)
        signed.update(headers or {})
        return requests.post(url, data=body, headers=signed, timeout=30)

    def replay(self, delivery: Delivery) -> requests.Response:
        """Send one delivery again byte for byte: same timestamp, body and (deterministic Ed25519)
        signature, as an attacker who captured it would."""
        return self.post(self.calls[delivery.call_control_id].webhook_url, delivery.body, timestamp=delivery.timestamp)

    def redeliver(self, delivery: Delivery, *, timestamp: int | None = None) -> requests.Response:
        """Telnyx's retry of one event: same ``data.id`` and payload, next ``meta.attempt``, fresh
        timestamp and signature (so a different request key)."""
        document = json.loads(delivery.body)
        document["meta"]["attempt"] = int(document["meta"].get("attempt", 1)) + 1
        call = self.calls[delivery.call_control_id]
        return self.post(call.webhook_url, self.encode(document), timestamp=timestamp)

    def emit(self, call: FakeCall, event_type: str, **payload: Any) -> None:
        """Queue a webhook for ordered delivery from the background thread."""
        self._outbox.put((call, self.envelope(call, event_type, **payload)))

    def _deliver_forever(self) -> None:
        while True:
            item = self._outbox.get()
            self.callback_gate.wait()
            if item is None:
                self._outbox.task_done()
                return
            if callable(item):  # a step of the far end, in order with the webhooks around it
                try:
                    item()
                finally:
                    self._outbox.task_done()
                continue
            call, document = item
            body = self.encode(document)
            delivery = Delivery(
                event_type=document["data"]["event_type"],
                event_id=document["data"]["id"],
                call_control_id=call.call_control_id,
                body=body,
                timestamp=int(time.time()),
            )
            try:
                response = self.post(call.webhook_url, body, timestamp=delivery.timestamp)
                delivery.status, delivery.response = response.status_code, response.text
            except requests.RequestException as exc:
                delivery.response = f"{type(exc).__name__}: {exc}"
            with self._lock:
                self.deliveries.append(delivery)
            self._outbox.task_done()

    def idle(self) -> bool:
        """True when every queued webhook has been delivered (or its delivery has failed)."""
        return self._outbox.unfinished_tasks == 0

    # --- scenario helpers -----------------------------------------------------------------------
    def start_inbound(self, from_number: str, to_number: str) -> FakeCall:
        """A caller dials our number: Telnyx parks the leg and posts ``call.initiated``."""
        assert self.webhook_url, "set fake.webhook_url (the connection's webhook URL) first"
        call = self._new_call("incoming", from_number, to_number, self.webhook_url, None)
        self.emit(call, "call.initiated")
        return call

    def commands_for(self, action: str | None = None, call_control_id: str | None = None) -> list[RecordedCommand]:
        with self._lock:
            return [
                c
                for c in self.commands
                if (action is None or c.action == action)
                and (call_control_id is None or c.call_control_id == call_control_id)
            ]

    def deliveries_of(self, event_type: str | None = None, call_control_id: str | None = None) -> list[Delivery]:
        with self._lock:
            return [
                d
                for d in self.deliveries
                if (event_type is None or d.event_type == event_type)
                and (call_control_id is None or d.call_control_id == call_control_id)
            ]

    def fail_next(self, action: str, status: int, errors: list[dict[str, Any]] | None = None) -> None:
        """Make the next ``action`` command (``dial``, ``speak``, ...) fail with this HTTP status."""
        with self._lock:
            self._failures.setdefault(action, deque()).append((status, {"errors": errors or []}))

    @staticmethod
    def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
        return wait_until(predicate, timeout, interval=interval)

    # --- REST behaviour -------------------------------------------------------------------------
    def _new_call(
        self, direction: str, from_number: str, to_number: str, webhook_url: str, client_state: str | None
    ) -> FakeCall:
        call = FakeCall(
            call_control_id="v3:" + secrets.token_urlsafe(18),
            direction=direction,
            from_number=from_number,
            to_number=to_number,
            webhook_url=webhook_url,
            client_state=client_state,
            state="parked" if direction == "incoming" else "bridging",
            replies=deque(self.replies),
        )
        with self._lock:
            self.calls[call.call_control_id] = call
        return call

    def handle(self, method: str, path: str, headers: dict[str, str], body: dict[str, Any]) -> tuple[int, dict]:
        parts = [unquote(p) for p in urlsplit(path).path.split("/") if p]
        if parts[:2] == ["v2", "calls"] and method == "POST" and len(parts) == 2:
            action, ccid = "dial", None
        elif parts[:2] == ["v2", "calls"] and len(parts) == 5 and parts[3] == "actions" and method == "POST":
            action, ccid = parts[4], parts[2]
        elif parts[:2] == ["v2", "calls"] and len(parts) == 3 and method == "GET":
            action, ccid = "status", parts[2]
        elif parts[:2] == ["v2", "connections"] and len(parts) == 4 and parts[3] == "active_calls" and method == "GET":
            action, ccid = "active_calls", None
            body = {**dict(parse_qsl(urlsplit(path).query)), "connection_id": parts[2]}
        else:
            return 404, {"errors": [NOT_FOUND_ERROR]}
        command = RecordedCommand(method, path, action, ccid, body)
        with self._lock:
            self.commands.append(command)
        fault = None
        if action == "dial":
            self.dial_received.set()
            self.dial_gate.wait(self.dial_gate_timeout)  # outside the lock: other requests go on
            fault = self.create_faults.next()
            error_status = CreateFaults.error_status(fault)
            if error_status is not None:
                command.status = error_status
                return error_status, {"errors": [{"code": "10011" if error_status == 503 else "10429",
                                                  "title": "injected fault", "detail": "injected fault"}]}
        with self._lock:
            status, response = self._dispatch(action, ccid, headers, body)
            command.status = status
        if self.create_faults.withhold_reply(fault):
            return status, None  # the call was dialed; the client never hears so
        return status, response

    def _dispatch(self, action: str, ccid: str | None, headers: dict[str, str], body: dict) -> tuple[int, dict]:
        if headers.get("authorization") != f"Bearer {self.api_key}":
            return 401, {"errors": [AUTH_ERROR]}
        failures = self._failures.get(action)
        if failures:
            return failures.popleft()
        command_id = body.get("command_id") if isinstance(body, dict) else None
        seen_key = (ccid or "dial", str(command_id))
        if command_id and seen_key in self._seen_commands:
            return self._seen_commands[seen_key]  # Telnyx ignores a repeated command_id
        result = self._act(action, ccid, body)
        if command_id and 200 <= result[0] < 300:
            self._seen_commands[seen_key] = result
        return result

    def _act(self, action: str, ccid: str | None, body: dict) -> tuple[int, dict]:
        ok = (200, {"data": {"result": "ok"}})
        if action == "dial":
            return self._dial(body)
        if action == "active_calls":
            return self._active_calls(body)
        call = self.calls.get(ccid or "")
        if call is None:
            return 404, {"errors": [NOT_FOUND_ERROR]}
        if action == "status":
            return 200, {
                "data": {
                    "record_type": "call",
                    "call_control_id": call.call_control_id,
                    "call_leg_id": call.call_leg_id,
                    "call_session_id": call.call_session_id,
                    "is_alive": call.alive,
                    "state": call.state,
                }
            }
        if not call.alive:
            return 422, {"errors": [CALL_ENDED_ERROR]}
        if action == "answer":
            if call.direction != "incoming" or call.state != "parked":
                return 422, {"errors": [{"code": "90034", "title": "Call is not parked"}]}
            call.state = "answered"
            if body.get("client_state"):
                call.client_state = body["client_state"]
            self.emit(call, "call.answered")
            self._request_stream(call, body)
        elif action == "streaming_start":
            if not body.get("stream_url"):
                return 422, {"errors": [{"code": "10015", "title": "Invalid parameter", "detail": "stream_url"}]}
            self._request_stream(call, body)
        elif action == "speak":
            if not body.get("payload"):
                return 422, {"errors": [{"code": "10015", "title": "Invalid parameter", "detail": "payload"}]}
            self.emit(call, "call.speak.started")
            self.emit(call, "call.speak.ended", status="completed")
        elif action == "transcription_start":
            if call.replies:
                line = call.replies.popleft()
                if self.send_partial_transcripts:
                    partial = line.split(" ", 1)[0]
                    self.emit(call, "call.transcription", transcription_data={
                        "transcript": partial, "is_final": False, "confidence": 0.5, "transcription_track": "inbound"})
                self.emit(call, "call.transcription", transcription_data={
                    "transcript": line, "is_final": True, "confidence": 0.93, "transcription_track": "inbound"})
        elif action == "hangup":
            call.alive, call.state = False, "hangup"
            self._stop_stream(call)
            self.emit(call, "call.hangup", hangup_cause="normal_clearing", hangup_source="unknown")
        # transcription_stop and any other action: acknowledged
        return ok

    # --- media streaming ------------------------------------------------------------------------
    def _request_stream(self, call: FakeCall, body: dict) -> None:
        """A command carried ``stream_url``: connect once the webhooks before it went out."""
        if not body.get("stream_url"):
            return
        call.stream_request = {k: body[k] for k in STREAM_FIELDS if k in body}
        if self.auto_stream:
            self._outbox.put(lambda: self._open_stream(call))

    def _open_stream(self, call: FakeCall) -> None:
        if not call.alive:
            return
        stream = TelnyxMediaStream(call.stream_request["stream_url"])
        if self.fail_streams:  # Telnyx could not reach the stream URL
            self.emit(call, "streaming.failed", failure_reason="connection to the stream URL failed",
                      stream_id=stream.stream_id, stream_params={"stream_url": call.stream_request["stream_url"]})
            return
        try:
            stream.connect()
        except Exception as exc:  # refused upgrade, nothing listening: Telnyx reports it by webhook
            self.emit(call, "streaming.failed", failure_reason=f"connection failed: {type(exc).__name__}",
                      stream_id=stream.stream_id, stream_params={"stream_url": call.stream_request["stream_url"]})
            return
        call.media = stream
        stream.send_connected()
        stream.send_start(call.call_control_id, call.client_state)
        self.emit(call, "streaming.started", stream_url=call.stream_request["stream_url"])

    def _stop_stream(self, call: FakeCall) -> None:
        stream = call.media
        if stream is None or stream.closed.is_set():
            return
        stream.send_stop(call.call_control_id)
        threading.Thread(target=stream.close, daemon=True).start()  # never block the API on it
        self.emit(call, "streaming.stopped", stream_url=(call.stream_request or {}).get("stream_url"))

    def _active_calls(self, query: dict) -> tuple[int, dict]:
        """``GET /v2/connections/{id}/active_calls`` ("List all active calls for given connection"):
        the connection's live legs, ``page[number]``/``page[size]`` paginated, entries shaped as the
        published example (call_control_id, call_leg_id, call_session_id, client_state,
        call_duration, record_type)."""
        if query["connection_id"] != self.connection_id:
            return 404, {"errors": [NOT_FOUND_ERROR]}
        try:
            number = int(query.get("page[number]", 1))
            size = int(query.get("page[size]", 20))
        except ValueError:
            return 400, {"errors": [{"code": "10015", "title": "Invalid parameter", "detail": "page"}]}
        if number < 1 or not 1 <= size <= 250:
            return 400, {"errors": [{"code": "10015", "title": "Invalid parameter", "detail": "page"}]}
        live = [call for call in self.calls.values() if call.alive]
        page = live[(number - 1) * size:number * size]
        data = [{"call_control_id": call.call_control_id, "call_leg_id": call.call_leg_id,
                 "call_session_id": call.call_session_id, "client_state": call.client_state,
                 "call_duration": 0, "record_type": "call"} for call in page]
        total_pages = max(1, -(-len(live) // size))
        return 200, {"data": data, "meta": {"page_number": number, "page_size": size,
                                            "total_pages": total_pages, "total_results": len(live)}}

    def _dial(self, body: dict) -> tuple[int, dict]:
        missing = [k for k in ("connection_id", "to", "from", "webhook_url") if not body.get(k)]
        if missing:
            return 422, {"errors": [{"code": "10015", "title": "Invalid parameter", "detail": f"{missing[0]} required"}]}
        if body["connection_id"] != self.connection_id:
            return 422, {"errors": [{"code": "10015", "title": "Invalid parameter", "detail": "connection_id"}]}
        call = self._new_call("outgoing", body["from"], body["to"], body["webhook_url"], body.get("client_state"))
        self.emit(call, "call.initiated")
        if self.answer_outbound:
            call.state = "answered"
            self.emit(call, "call.answered")
            self._request_stream(call, body)
        else:
            call.alive, call.state = False, "hangup"
            self.emit(call, "call.hangup", hangup_cause=self.unanswered_hangup_cause, hangup_source="callee")
        return 200, {
            "data": {
                "record_type": "call",
                "call_control_id": call.call_control_id,
                "call_leg_id": call.call_leg_id,
                "call_session_id": call.call_session_id,
                "is_alive": False,
            }
        }


class _Handler(BaseHTTPRequestHandler):
    # Headers and body go out in separate writes: without this the body waits ~40 ms for a delayed ACK.
    disable_nagle_algorithm = True

    owner: FakeTelnyx
    protocol_version = "HTTP/1.1"

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        if not isinstance(body, dict):
            status, response = 400, {"errors": [{"code": "10015", "title": "Invalid JSON body"}]}
        else:
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, response = self.owner.handle(method, self.path, headers, body)
        if response is None:  # an injected lost reply: close without answering
            self.close_connection = True
            return
        payload = json.dumps(response).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:  # the client died while we worked (a killed worker): the call stands
            self.close_connection = True

    def do_POST(self) -> None:
        self._serve("POST")

    def do_GET(self) -> None:
        self._serve("GET")

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        return
