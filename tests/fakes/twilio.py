"""A local fake of Twilio Programmable Voice that speaks the real wire protocol.

REST (protocols.md §2): ``POST /2010-04-01/Accounts/{AccountSid}/Calls.json`` (create),
``POST .../Calls/{CallSid}.json`` (``Twiml=`` / ``Url=`` redirect, ``Status=completed`` hang-up) and
``GET .../Calls/{CallSid}.json`` (fetch), form-encoded, HTTP Basic ``AccountSid:AuthToken``, JSON
answers in Twilio's legacy error shape ``{"code", "message", "more_info", "status"}``: 401/20003 for
bad credentials, 404/20404 for an unknown call, 400/21220 for a TwiML update of a call that is not
in progress. The official SDK is pointed here with ``client.api.base_url`` (protocols.md §2).

Webhooks: the fake plays the network, a tunnel and the far end. It fetches the call's ``Url``,
posts status callbacks (``initiated``, ``ringing``, ``answered`` → ``in-progress``, ``completed``
with the final status) and runs the TwiML it gets back: ``<Say>`` is "heard" (recorded),
``<Pause>`` and ``<Play digits>`` recorded, ``<Hangup/>`` / ``<Reject/>`` end the call,
``<Redirect>`` and ``<Gather action>`` are requested like Twilio requests them, with the standard
voice parameters (plus ``SpeechResult`` + ``Confidence`` for a gather). A REST ``Twiml=`` update
interrupts whatever is executing. Every request is signed with ``X-Twilio-Signature`` computed by
this module's own HMAC-SHA1 implementation (protocols.md §1) over the PUBLIC URL from the TwiML /
REST parameters, and delivered to the local server mapped in ``tunnel`` while keeping the public
``Host`` header, exactly as a tunnel would.

The callee: it answers (unless ``callee.answers`` is false: ``no-answer``), and says its next
scripted line into a ``<Gather>`` only when it was spoken to in the same document (a ``<Say>`` came
first) — a real person answers questions, not the keep-listening loop. Tests can also make the callee
speak (``say``), stay silent until the gather times out (``silence``) or hang up (``callee_hangup``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import queue
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests

from tests.fakes.faults import CreateFaults
from tests.fakes.polling import wait_until
from tests.fakes.twilio_records import Callee, Delivery, FakeCall, RestRequest

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "fake_twilio_auth_token_0123456789"
API_VERSION = "2010-04-01"
TWILIO_EDGE_IP = "54.172.60.0"  # X-Forwarded-For a tunnel adds (Twilio's documented US range)

PUBLIC_ORIGIN = "https://voice.example.test"  # what the tunnel exposes; the local server is behind it
PUBLIC_URL = PUBLIC_ORIGIN + "/voice/webhook"
FROM_NUMBER = "+15550001000"

GATHER_WAIT_S = 30.0  # how long a silent <Gather> waits for the test before "timing out"

NOT_FOUND = {"code": 20404, "more_info": "https://www.twilio.com/docs/errors/20404", "status": 404}
NOT_IN_PROGRESS = {
    "code": 21220,
    "message": "Call is not in-progress. Cannot redirect.",
    "more_info": "https://www.twilio.com/docs/errors/21220",
    "status": 400,
}
AUTH_FAILED = {"code": 20003, "message": "Authenticate", "more_info": "https://www.twilio.com/docs/errors/20003",
               "status": 401}


def twilio_signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """X-Twilio-Signature, written out from protocols.md §1 (deliberately not the SDK's code):
    base64(HMAC-SHA1(token, url + each name in sorted order followed by its value; a repeated name
    contributes each of its values in sorted order))."""
    grouped: dict[str, list[str]] = {}
    for name, value in params:
        grouped.setdefault(name, []).append(value)
    material = url + "".join(name + value for name in sorted(grouped) for value in sorted(grouped[name]))
    digest = hmac.new(auth_token.encode(), material.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


class FakeTwilio:
    """Start with ``start()``; ``base_url`` goes into ``twilio.apiBaseUrl``; ``tunnel`` maps the public
    origin (``https://voice.example.test``) to the local server (``http://127.0.0.1:PORT``)."""

    def __init__(self, *, account_sid: str = ACCOUNT_SID, auth_token: str = AUTH_TOKEN) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.tunnel: dict[str, str] = {}
        self.callee = Callee()
        self.rest_requests: list[RestRequest] = []
        self.deliveries: list[Delivery] = []
        self.calls: dict[str, FakeCall] = {}
        self.update_failures: deque[tuple[int, dict[str, Any]]] = deque()  # injected REST errors
        self.create_faults = CreateFaults()  # injected faults of POST Calls.json (tests/fakes/faults.py)
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._http = requests.Session()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; with Nagle on, the body waits for the client's
            # delayed ACK, ~40 ms per request on a kept-alive SDK connection (bench/placement_bench.py).
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                fake._handle_rest(self, "GET")

            def do_POST(self) -> None:
                fake._handle_rest(self, "POST")

            def log_message(self, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._serve_thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                              daemon=True)

    # --- lifecycle -------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeTwilio:
        self._serve_thread.start()
        return self

    def stop(self) -> None:
        for call in list(self.calls.values()):
            call.control.put(("hangup",))
        self._server.shutdown()  # no new REST requests, so no new call drivers
        with self._lock:
            threads = list(self._threads)
        for call in list(self.calls.values()):
            call.control.put(("hangup",))
        for thread in threads:
            thread.join(timeout=5)
        self._server.server_close()

    # --- assertions helpers ----------------------------------------------------------------------
    def wait_for(self, predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
        return wait_until(predicate, timeout, what=what, detail=lambda: f"fake errors: {self.errors}")

    def updates(self, sid: str | None = None) -> list[RestRequest]:
        with self._lock:
            return [r for r in self.rest_requests if r.method == "POST" and "/Calls/" in r.path
                    and (sid is None or r.path.endswith(f"/{sid}.json"))]

    def creates(self) -> list[RestRequest]:
        with self._lock:
            return [r for r in self.rest_requests if r.method == "POST" and r.path.endswith("/Calls.json")]

    def deliveries_for(self, sid: str, kind: str | None = None) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if d.call_sid == sid and (kind is None or d.kind == kind)]

    def only_call(self) -> FakeCall:
        calls = self.wait_for(lambda: list(self.calls.values()), what="a call")
        assert len(calls) == 1, calls
        return calls[0]

    # --- the test plays the caller ---------------------------------------------------------------
    def say(self, sid: str, text: str) -> None:
        """The callee speaks into the <Gather> it is (or will next be) listening in."""
        self.calls[sid].caller.put(("say", text))

    def silence(self, sid: str) -> None:
        """The current <Gather> times out without speech (Twilio moves on to the next verb)."""
        self.calls[sid].caller.put(("silence",))

    def callee_hangup(self, sid: str) -> None:
        self.calls[sid].control.put(("callee-hangup",))

    def add_live_call(self, *, sid: str | None = None, direction: str = "outbound-api",
                      from_: str = FROM_NUMBER, to: str = "+15550002000") -> FakeCall:
        """A call in progress that no driver runs: for tests that post the webhooks themselves."""
        call = FakeCall(sid=sid or _new_sid(), direction=direction, from_=from_, to=to, url="", status="in-progress")
        with self._lock:
            self.calls[call.sid] = call
        return call

    def place_inbound_call(self, *, from_: str, to: str, url: str) -> FakeCall:
        """Someone dials a Twilio number whose Voice URL is ``url``."""
        call = FakeCall(sid=_new_sid(), direction="inbound", from_=from_, to=to, url=url, status="ringing")
        with self._lock:
            self.calls[call.sid] = call
        self._spawn(self._drive_inbound, call)
        return call

    # --- signing and delivery (the tunnel) -------------------------------------------------------
    def sign(self, url: str, params: Iterable[tuple[str, str]]) -> str:
        return twilio_signature(self.auth_token, url, params)

    def local_url(self, public_url: str) -> tuple[str, str]:
        """(URL on the local server, public Host header) for a public URL, through the tunnel."""
        parts = urlsplit(public_url)
        origin = f"{parts.scheme}://{parts.netloc}"
        local = self.tunnel.get(origin)
        if local is None:
            raise LookupError(f"no tunnel for {origin}")
        local_parts = urlsplit(local)
        return urlunsplit(parts._replace(scheme=local_parts.scheme, netloc=local_parts.netloc)), parts.netloc

    def post(
        self,
        public_url: str,
        params: list[tuple[str, str]],
        *,
        signature: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> requests.Response:
        """POST a signed form webhook to ``public_url`` through the tunnel (the raw delivery)."""
        local, host = self.local_url(public_url)
        all_headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Host": host,
            "X-Twilio-Signature": signature if signature is not None else self.sign(public_url, params),
            "I-Twilio-Idempotency-Token": str(uuid.uuid4()),
            "X-Forwarded-For": TWILIO_EDGE_IP,
            "X-Forwarded-Proto": urlsplit(public_url).scheme,
            "User-Agent": "TwilioProxy/1.1",
        }
        all_headers.update(headers or {})
        return self._http.post(local, data=urlencode(params).encode(), headers=all_headers, timeout=30)

    def voice_params(self, call: FakeCall, status: str | None = None, **extra: str) -> list[tuple[str, str]]:
        """The standard voice request parameters (protocols.md §2)."""
        params = [
            ("AccountSid", self.account_sid),
            ("ApiVersion", API_VERSION),
            ("CallSid", call.sid),
            ("CallStatus", status or call.status),
            ("Called", call.to),
            ("Caller", call.from_),
            ("Direction", call.direction),
            ("From", call.from_),
            ("To", call.to),
        ]
        params.extend(extra.items())
        return params

    def _deliver(self, call: FakeCall, kind: str, url: str, params: list[tuple[str, str]]) -> Delivery:
        delivery = Delivery(call_sid=call.sid, kind=kind, url=url, params=params)
        try:
            response = self.post(url, params)
            delivery.status, delivery.body = response.status_code, response.text
        except (requests.RequestException, LookupError) as exc:
            self.errors.append(f"{kind} delivery to {url} failed: {exc}")
        with self._lock:
            self.deliveries.append(delivery)
        return delivery

    def _status_callback(self, call: FakeCall, event: str, status: str | None = None, **extra: str) -> None:
        if not call.status_callback or event not in call.status_callback_events:
            return
        params = self.voice_params(
            call,
            status,
            CallbackSource="call-progress-events",
            SequenceNumber=str(call.sequence),
            Timestamp=formatdate(usegmt=True),
            **extra,
        )
        call.sequence += 1
        self._deliver(call, "status", call.status_callback, params)

    # --- REST ------------------------------------------------------------------------------------
    def _handle_rest(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        form = parse_qsl(raw.decode(), keep_blank_values=True)
        path = urlsplit(handler.path).path
        record = RestRequest(method=method, path=path, form=form)
        with self._lock:
            self.rest_requests.append(record)
        creating = method == "POST" and path.endswith("/Calls.json")
        fault = self.create_faults.next() if creating else None
        error_status = CreateFaults.error_status(fault)
        if error_status is not None:
            status, payload = error_status, {"code": 20500 if error_status == 503 else 20429,
                                             "message": "injected fault", "status": error_status}
        else:
            status, payload = self._route(handler, method, path, record)
        record.status = status
        if creating and status == 201 and fault:
            self._spawn(self._drive_outbound, self.calls[payload["sid"]])
            if self.create_faults.withhold_reply(fault):
                handler.close_connection = True  # the call exists; its creator never hears so
                return
        body = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
        handler.wfile.flush()
        if method == "POST" and path.endswith("/Calls.json") and status == 201:
            self._spawn(self._drive_outbound, self.calls[payload["sid"]])

    def _authorized(self, handler: BaseHTTPRequestHandler) -> bool:
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        return hmac.compare_digest(handler.headers.get("Authorization") or "", f"Basic {expected}")

    def _route(
        self, handler: BaseHTTPRequestHandler, method: str, path: str, record: RestRequest
    ) -> tuple[int, dict[str, Any]]:
        prefix = f"/{API_VERSION}/Accounts/{self.account_sid}/Calls"
        if not self._authorized(handler) or not path.startswith(f"/{API_VERSION}/Accounts/{self.account_sid}/"):
            return 401, AUTH_FAILED
        if path == prefix + ".json" and method == "POST":
            return self._create(record)
        if path.startswith(prefix + "/") and path.endswith(".json"):
            sid = path[len(prefix) + 1 : -len(".json")]
            call = self.calls.get(sid)
            if call is None:
                return 404, {**NOT_FOUND, "message": f"The requested resource {path} was not found"}
            if method == "GET":
                return 200, self._resource(call)
            return self._update(call, record)
        return 404, {**NOT_FOUND, "message": f"The requested resource {path} was not found"}

    def _create(self, record: RestRequest) -> tuple[int, dict[str, Any]]:
        to, from_, url = record.get("To"), record.get("From"), record.get("Url")
        if not to or not from_ or not (url or record.get("Twiml")):
            return 400, {"code": 21205, "message": "Url parameter is required.", "status": 400,
                         "more_info": "https://www.twilio.com/docs/errors/21205"}
        call = FakeCall(
            sid=_new_sid(),
            direction="outbound-api",
            from_=from_,
            to=to,
            url=url or "",
            status_callback=record.get("StatusCallback"),
            status_callback_events=record.getlist("StatusCallbackEvent") or ["completed"],
            timeout=int(record.get("Timeout") or 60),
        )
        with self._lock:
            self.calls[call.sid] = call
        return 201, self._resource(call)

    def _update(self, call: FakeCall, record: RestRequest) -> tuple[int, dict[str, Any]]:
        if self.update_failures:
            return self.update_failures.popleft()
        twiml, status = record.get("Twiml"), record.get("Status")
        if status in ("completed", "canceled"):
            if not call.is_over:
                call.control.put(("hangup",))  # the driver ends it and sends the completed callback
            return 200, self._resource(call)
        if twiml is not None:
            if call.status != "in-progress":
                return 400, NOT_IN_PROGRESS
            call.control.put(("twiml", twiml))
            return 200, self._resource(call)
        return 400, {"code": 20001, "message": "No update parameters", "status": 400}

    def _resource(self, call: FakeCall) -> dict[str, Any]:
        return {
            "sid": call.sid,
            "account_sid": self.account_sid,
            "to": call.to,
            "from": call.from_,
            "status": call.status,
            "direction": call.direction,
            "api_version": API_VERSION,
            "uri": f"/{API_VERSION}/Accounts/{self.account_sid}/Calls/{call.sid}.json",
        }

    # --- the call driver (Twilio's side of the call) ---------------------------------------------
    def _spawn(self, target: Callable[[FakeCall], None], call: FakeCall) -> None:
        thread = threading.Thread(target=self._guarded, args=(target, call), daemon=True)
        thread.start()
        with self._lock:
            self._threads.append(thread)

    def _guarded(self, target: Callable[[FakeCall], None], call: FakeCall) -> None:
        try:
            target(call)
        except Exception as exc:  # surfaced through `errors` in wait_for failures
            self.errors.append(f"driver of {call.sid} crashed: {exc!r}")
            self._finish(call, "failed", "error")

    def _drive_outbound(self, call: FakeCall) -> None:
        call.status = "queued"
        self._status_callback(call, "initiated", "initiated")
        call.status = "ringing"
        self._status_callback(call, "ringing")
        if self._control_nowait(call) in (("hangup",), ("callee-hangup",)):
            self._finish(call, "canceled", "api")
            return
        if not self.callee.answers:
            self._finish(call, "no-answer", "no-answer")
            return
        call.status = "in-progress"
        self._status_callback(call, "answered")
        document = self._fetch(call, "voice", call.url)
        self._run(call, document)

    def _drive_inbound(self, call: FakeCall) -> None:
        document = self._fetch(call, "voice", call.url)
        if document is not None and not _starts_with_reject(document):
            call.status = "in-progress"  # executing the first non-<Reject> verb answers the call
        self._run(call, document)

    def _run(self, call: FakeCall, document: str | None) -> None:
        while document is not None and not call.is_over:
            document = self._execute(call, document)
        if not call.is_over:
            self._finish(call, "busy" if call.rejected else "completed", call.ended_by or "document-end")

    def _finish(self, call: FakeCall, status: str, ended_by: str) -> None:
        if call.is_over:
            return
        call.status = status
        call.ended_by = call.ended_by or ended_by
        call.listening.clear()
        self._status_callback(call, "completed", CallDuration="7")
        call.ended.set()

    def _fetch(self, call: FakeCall, kind: str, url: str, **extra: str) -> str | None:
        delivery = self._deliver(call, kind, url, self.voice_params(call, **extra))
        if delivery.status != 200:
            # Twilio plays "an application error has occurred" and hangs up.
            self.errors.append(f"{kind} request for {call.sid} answered {delivery.status}")
            call.ended_by = "error"
            return None
        return delivery.body

    def _control_nowait(self, call: FakeCall) -> tuple | None:
        try:
            return call.control.get_nowait()
        except queue.Empty:
            return None

    def _apply_control(self, call: FakeCall, command: tuple) -> str | None:
        """A REST update or hang-up interrupts the executing TwiML; returns the next document."""
        if command[0] == "twiml":
            return command[1]
        call.ended_by = {"hangup": "api", "callee-hangup": "callee"}[command[0]]
        self._finish(call, "completed", call.ended_by)
        return None

    def _execute(self, call: FakeCall, document: str) -> str | None:
        with self._lock:
            call.documents.append(document)
        try:
            root = ET.fromstring(document)  # noqa: S314 - TwiML from our own server under test
        except ET.ParseError:
            self.errors.append(f"invalid TwiML for {call.sid}: {document[:200]}")
            call.ended_by = "error"
            return None
        if root.tag != "Response":
            self.errors.append(f"TwiML root is {root.tag}")
            return None
        prompted = False
        for verb in root:
            command = self._control_nowait(call)
            if command is not None:
                return self._apply_control(call, command)
            if verb.tag == "Say":
                call.spoken.append(verb.text or "")
                prompted = True
            elif verb.tag == "Pause":
                call.pauses.append(int(verb.get("length", "1")))
            elif verb.tag == "Play":
                if verb.get("digits") is not None:
                    call.digits_played.append(verb.get("digits") or "")
            elif verb.tag == "Hangup":
                call.ended_by = "twiml"
                return None
            elif verb.tag == "Reject":
                call.rejected = True
                call.ended_by = "twiml"
                return None
            elif verb.tag == "Redirect":
                return self._fetch(call, "redirect", (verb.text or "").strip())
            elif verb.tag == "Gather":
                outcome = self._gather(call, verb, prompted)
                if outcome is _NEXT_VERB:
                    continue
                return outcome
        return None  # the document ran out: Twilio hangs up

    def _gather(self, call: FakeCall, verb: ET.Element, prompted: bool):
        action = verb.get("action") or call.url
        with self._lock:
            call.gathers.append(action)
        reply = self.callee.next_reply(prompted)
        if reply is not None:
            return self._fetch(call, "gather", action, SpeechResult=reply, Confidence="0.93")
        call.listening.set()
        try:
            deadline = time.monotonic() + GATHER_WAIT_S
            while time.monotonic() < deadline:
                command = self._control_nowait(call)
                if command is not None:
                    return self._apply_control(call, command)
                try:
                    cue = call.caller.get(timeout=0.02)
                except queue.Empty:
                    continue
                if cue[0] == "say":
                    return self._fetch(call, "gather", action, SpeechResult=cue[1], Confidence="0.88")
                return _NEXT_VERB  # silence: the gather times out, Twilio goes on to the next verb
            return _NEXT_VERB
        finally:
            call.listening.clear()


_NEXT_VERB = object()


def _new_sid() -> str:
    return "CA" + uuid.uuid4().hex


def _starts_with_reject(document: str) -> bool:
    with contextlib.suppress(ET.ParseError):
        root = ET.fromstring(document)  # noqa: S314 - TwiML from our own server under test
        return len(root) > 0 and root[0].tag == "Reject"
    return False


@contextlib.contextmanager
def running_fake_twilio(**kwargs: Any) -> Iterator[FakeTwilio]:
    fake = FakeTwilio(**kwargs).start()
    try:
        yield fake
    finally:
        fake.stop()


def twilio_config(fake: FakeTwilio, **overrides: Any) -> dict[str, Any]:
    """An inner voice-call config document for the Twilio provider pointed at ``fake``."""
    document: dict[str, Any] = {
        "provider": "twilio",
        "fromNumber": FROM_NUMBER,
        "twilio": {"accountSid": fake.account_sid, "authToken": fake.auth_token, "apiBaseUrl": fake.base_url},
        "publicUrl": PUBLIC_URL,
    }
    document.update(overrides)
    return document
