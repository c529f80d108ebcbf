"""A local fake of Plivo's Voice API that speaks the real wire protocol, and plays the far end.

REST (protocols.md §6), under ``/v1/Account/{authId}/`` with HTTP Basic ``authId:authToken`` and JSON
bodies, trailing slashes required as Plivo does:

* ``POST Call/`` make call → 201 ``{"api_id", "message": "call fired", "request_uuid"}``;
* ``POST Call/{CallUUID}/`` XML transfer (``legs``, ``aleg_url``, ``aleg_method``) → 202, then the
  fake fetches ``aleg_url`` and runs the XML in place of the current flow;
* ``POST Call/{CallUUID}/DTMF/`` → 202; ``DELETE Call/{CallUUID}/`` → 204 (404 when not live);
  ``DELETE Request/{RequestUUID}/`` → 204 for a call not yet answered (404 otherwise);
* ``GET Call/{uuid}/?status=live`` (live call), ``?status=queued`` (queued request), no ``status``
  (call detail record of an ended call); 404 when there is no such thing.

Callbacks: form-encoded POSTs with the parameters Plivo documents (``CallUUID``, ``RequestUUID``,
``From``/``To`` without ``+``, ``CallStatus``, ``Direction``, ``Event``, ``HangupCause`` …), signed
with ``X-Plivo-Signature-V3`` computed by the official SDK's own functions
(``plivo.utils.signature_v3.construct_post_url`` + ``get_signature_v3``) and the deprecated
``X-Plivo-Signature-V2``, each with its nonce. All callbacks leave from one background thread in
order; REST handlers never call back synchronously (a webhook handler may be calling us).

The far end runs the XML it gets: ``<Speak>`` is "heard" (``FakeCall.heard``), ``<GetInput>`` speaks
its nested ``<Speak>`` and answers with the callee's next scripted line (``replies``) by posting
``Speech`` to the action URL (or times out to the next element when there is none), ``<Wait>``
shorter than ``park_after_seconds`` passes at once, a longer one parks the call until a transfer,
a hang-up or ``end_wait()``, ``<Redirect>`` fetches and runs the new XML, ``<Hangup>`` ends the call
and posts the hang-up callback. ``<Stream>`` (bidirectional, ``keepCallAlive``, mu-law) opens the
media WebSocket to the element's URL as Plivo does (``tests/fakes/carrier_media.py``: ``start``, then
whatever the test sends; audio played back in real time), posts ``StartStream`` to its
``statusCallbackUrl``, and holds the XML until the socket closes (then ``StopStream``, and the XML
goes on); a hang-up or transfer closes the socket. ``call.media`` is that stream. Everything received
and sent is recorded for assertions.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import queue
import secrets
import threading
import uuid
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit, urlunsplit

import requests
from plivo.utils.signature_v3 import construct_post_url, get_signature_v3

from tests.fakes.carrier_media import PlivoMediaStream
from tests.fakes.faults import CreateFaults

DEFAULT_AUTH_ID = "MAFAKEPLIVO000000001"  # 20 chars starting with MA, like a real auth id
DEFAULT_AUTH_TOKEN = "ZmFrZS1wbGl2by1hdXRoLXRva2VuLTAx"

# CallStatus of an outbound call that was never answered → Plivo HangupCause (protocols §6).
UNANSWERED_CAUSES = {"busy": "USER_BUSY", "no-answer": "NO_ANSWER", "failed": "CALL_REJECTED",
                     "timeout": "NO_ANSWER", "cancel": "ORIGINATOR_CANCEL"}
# CallStatus at the end → CDR call_state.
CDR_STATES = {"completed": "ANSWER", "busy": "BUSY", "no-answer": "NO_ANSWER", "failed": "FAILED",
              "timeout": "NO_ANSWER", "cancel": "CANCEL"}


NO_REPLY: dict = {}  # handle() answer meaning "close the connection without a reply"


@dataclass
class RestRequest:
    method: str
    path: str
    kind: str  # make_call | transfer | dtmf | hangup | cancel | status | unknown
    uuid: str | None
    query: dict[str, str]
    body: dict[str, Any]
    status: int = 0


@dataclass
class Delivery:
    """One callback the fake posted (or tried to)."""

    call_uuid: str
    url: str
    params: dict[str, str]
    headers: dict[str, str]
    status: int | None = None
    content_type: str = ""
    body: str = ""

    @property
    def flow(self) -> str:
        return (parse_qs(urlsplit(self.url).query).get("flow") or ["answer"])[0]


@dataclass
class FakeCall:
    call_uuid: str
    request_uuid: str | None
    direction: str  # inbound | outbound
    from_number: str
    to_number: str
    answer_url: str
    hangup_url: str | None = None
    ring_url: str | None = None
    state: str = "queued"  # queued | ringing | in-progress | ended
    end_status: str | None = None
    hangup_source: str | None = None
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    heard: list[str] = field(default_factory=list)
    listened: list[str] = field(default_factory=list)  # GetInput action URLs, in order
    replies: deque[str] = field(default_factory=deque)
    digits_received: list[str] = field(default_factory=list)
    generation: int = 0  # bumped by each transfer: the XML flow that was running is abandoned
    parked: list[ET.Element] | None = None  # elements left after a long <Wait>
    media: PlivoMediaStream | None = None
    stream_element: dict[str, str] | None = None  # the attributes of the <Stream> that opened it


class FakePlivo:
    """Start with ``start()`` or ``running()``; put ``base_url`` in ``plivo.apiBaseUrl``."""

    def __init__(self, *, auth_id: str = DEFAULT_AUTH_ID, auth_token: str = DEFAULT_AUTH_TOKEN,
                 replies: tuple[str, ...] = ()) -> None:
        self.auth_id = auth_id
        self.auth_token = auth_token
        self.replies = tuple(replies)
        # "answer" (ring, then answer), "ring" (ring and stay ringing), "queue" (never dialled),
        # or an unanswered CallStatus ("busy", "no-answer", "failed") ending the call at once.
        self.outbound_behaviour = "answer"
        self.create_faults = CreateFaults()  # injected faults of POST /Call/ (tests/fakes/faults.py)
        self.answer_before_responding = False  # run the answer callback before the 201 (a race)
        self.park_after_seconds = 30
        self.fail_streams = False  # a <Stream> cannot connect: DroppedStream, and the XML goes on
        self.rest: list[RestRequest] = []
        self.deliveries: list[Delivery] = []
        self.calls: dict[str, FakeCall] = {}
        self._failures: dict[str, deque[tuple[int, dict[str, Any]]]] = {}
        self._lock = threading.RLock()
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._http = requests.Session()
        self.errors: list[str] = []  # what went wrong while playing the far end

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> FakePlivo:
        fake = self

        class Handler(_Handler):
            owner = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        for target in (self._server.serve_forever, self._work_forever):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout=10)
        self._http.close()

    @classmethod
    @contextlib.contextmanager
    def running(cls, **kwargs: Any) -> Iterator[FakePlivo]:
        fake = cls(**kwargs).start()
        try:
            yield fake
        finally:
            fake.stop()

    @property
    def base_url(self) -> str:
        """What goes into ``plivo.apiBaseUrl`` (the client appends ``/v1/Account/{authId}``)."""
        assert self._server is not None, "start() the fake first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # --- signing and posting callbacks ----------------------------------------------------------
    def sign(self, url: str, params: dict[str, str], *, nonce: str | None = None,
             auth_token: str | None = None) -> dict[str, str]:
        """The headers Plivo sends with a form POST of ``params`` to ``url``: V3 through the SDK's own
        functions, plus V2 (URL without query + nonce)."""
        token = auth_token or self.auth_token
        nonce = nonce or str(secrets.randbelow(10**20)).zfill(20)
        base = construct_post_url(url, dict(params)).decode("utf-8")
        v3 = get_signature_v3(token.encode(), base, nonce.encode()).decode()
        nonce2 = str(secrets.randbelow(10**20)).zfill(20)
        parts = urlsplit(url)
        v2_message = urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")) + nonce2
        v2 = base64.b64encode(hmac.new(token.encode(), v2_message.encode(), hashlib.sha256).digest()).decode()
        return {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Plivo-Signature-V3": v3,
            "X-Plivo-Signature-Ma-V3": v3,
            "X-Plivo-Signature-V3-Nonce": nonce,
            "X-Plivo-Signature-V2": v2,
            "X-Plivo-Signature-Ma-V2": v2,
            "X-Plivo-Signature-V2-Nonce": nonce2,
        }

    def post(self, url: str, params: dict[str, str], *, headers: dict[str, str] | None = None) -> requests.Response:
        """POST one signed callback now (``headers`` replace signed ones, for tampering tests)."""
        signed = self.sign(url, params)
        signed.update(headers or {})
        return self._http.post(url, data=urlencode(params), headers=signed, timeout=30)

    def resend(self, delivery: Delivery) -> requests.Response:
        """The exact same request again: same body, same nonces and signatures."""
        return self._http.post(delivery.url, data=urlencode(delivery.params), headers=delivery.headers, timeout=30)

    def _deliver(self, call: FakeCall, url: str, extra: dict[str, str] | None = None) -> Delivery:
        params = {**self.call_params(call), **(extra or {})}
        headers = self.sign(url, params)
        delivery = Delivery(call.call_uuid, url, params, headers)
        try:
            response = self._http.post(url, data=urlencode(params), headers=headers, timeout=30)
            delivery.status = response.status_code
            delivery.content_type = response.headers.get("Content-Type", "")
            delivery.body = response.text
        except requests.RequestException as exc:
            delivery.body = f"{type(exc).__name__}: {exc}"
        with self._lock:
            self.deliveries.append(delivery)
        return delivery

    def call_params(self, call: FakeCall) -> dict[str, str]:
        """The parameters Plivo sends with every voice callback of ``call`` (protocols §6)."""
        status = call.end_status if call.state == "ended" else call.state
        params = {
            "CallUUID": call.call_uuid,
            "From": call.from_number,
            "To": call.to_number,
            "CallerName": "",
            "CallStatus": status or "",
            "Direction": call.direction,
            "BillRate": "0.0085",
        }
        if call.request_uuid:
            params.update(RequestUUID=call.request_uuid, ALegRequestUUID=call.request_uuid, ALegUUID=call.call_uuid)
        return params

    # --- the call executor (one thread, callbacks in order) ----------------------------------------
    def _work_forever(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception as exc:  # a broken job must not kill the far end for the next test step
                with self._lock:
                    self.errors.append(f"{type(exc).__name__}: {exc}")

    def _enqueue(self, job: Callable[[], None]) -> threading.Event:
        done = threading.Event()

        def run() -> None:
            try:
                job()
            finally:
                done.set()

        self._jobs.put(run)
        return done

    def _ring(self, call: FakeCall) -> None:
        call.state = "ringing"
        if call.ring_url:
            self._deliver(call, call.ring_url, {"Event": "Ring"})

    def _answer(self, call: FakeCall) -> None:
        if call.state == "ended":
            return
        if call.direction == "outbound":
            call.state, call.answered_at = "in-progress", datetime.now(UTC)
        else:
            call.state = "ringing"  # an inbound call's answer URL sees it ringing; the XML answers it
        generation = call.generation
        delivery = self._deliver(call, call.answer_url, {"Event": "StartApp"})
        if call.direction == "inbound" and call.state != "ended":
            call.state, call.answered_at = "in-progress", datetime.now(UTC)
        self._run_reply(call, delivery, generation)

    def _fetch_and_run(self, call: FakeCall, url: str, generation: int) -> None:
        if call.state == "ended" or call.generation != generation:
            return
        self._run_reply(call, self._deliver(call, url), generation)

    def _run_reply(self, call: FakeCall, delivery: Delivery, generation: int) -> None:
        if delivery.status != 200 or not delivery.content_type.startswith(("text/xml", "application/xml")):
            self.errors.append(f"bad XML reply {delivery.status} {delivery.content_type} from {delivery.flow}")
            self._finish(call, "completed", source="Error")
            return
        root = ET.fromstring(delivery.body)  # noqa: S314 - parses our own server's reply in a test fake
        if root.tag != "Response":
            self.errors.append(f"reply root is {root.tag}")
            return
        self._run(call, list(root), generation)

    def _run(self, call: FakeCall, elements: list[ET.Element], generation: int) -> None:
        """Execute Plivo XML elements as the far end experiences them."""
        for index, element in enumerate(elements):
            if call.state == "ended" or call.generation != generation:
                return
            if element.tag == "Speak":
                call.heard.append(element.text or "")
            elif element.tag == "Wait":
                if int(element.get("length", "1")) >= self.park_after_seconds:
                    call.parked = elements[index + 1:]
                    return
            elif element.tag == "Hangup":
                self._finish(call, "completed", source="Answer XML")
                return
            elif element.tag == "GetInput":
                call.heard.extend(child.text or "" for child in element if child.tag == "Speak")
                action = element.get("action") or ""
                call.listened.append(action)
                if call.replies:
                    reply = call.replies.popleft()
                    delivery = self._deliver(call, action, {"InputType": "speech", "Speech": reply,
                                                            "SpeechConfidenceScore": "0.91", "BilledAmount": "0.00"})
                    if element.get("redirect", "true") == "true":
                        self._run_reply(call, delivery, generation)
                        return
                # no input before executionTimeout (or redirect="false"): next element
            elif element.tag == "Redirect":
                self._fetch_and_run(call, (element.text or "").strip(), generation)
                return
            elif element.tag == "Stream":
                self._stream(call, element, elements[index + 1:], generation)
                return
            else:
                self.errors.append(f"unexpected element {element.tag}")
        call.parked = []

    def _stream(self, call: FakeCall, element: ET.Element, rest: list[ET.Element], generation: int) -> None:
        """``<Stream>``: connect, report ``StartStream``, hold the XML while the socket is open."""
        call.stream_element = dict(element.attrib)
        if (element.get("bidirectional") != "true" or element.get("keepCallAlive") != "true"
                or element.get("contentType") != "audio/x-mulaw;rate=8000"):
            self.errors.append(f"<Stream> is not a bidirectional mu-law call-holding stream: {element.attrib}")
        callback = element.get("statusCallbackUrl")
        stream = PlivoMediaStream((element.text or "").strip())
        try:
            if self.fail_streams:
                raise ConnectionRefusedError("the fake could not reach the stream URL")
            stream.connect()
        except Exception as exc:
            if callback:
                self._deliver(call, callback, {"Event": "DroppedStream", "StreamID": stream.stream_id,
                                               "Error": f"connection failed: {type(exc).__name__}"})
            self._run(call, rest, generation)
            return
        call.media = stream
        stream.send_start(call.call_uuid)
        if callback:
            self._deliver(call, callback, {"Event": "StartStream", "StreamID": stream.stream_id})

        def watch() -> None:  # keepCallAlive: the XML goes on once the socket closes
            stream.closed.wait()
            self._enqueue(lambda: self._stream_closed(call, stream, callback, rest, generation))

        threading.Thread(target=watch, daemon=True).start()

    def _stream_closed(self, call: FakeCall, stream: PlivoMediaStream, callback: str | None,
                       rest: list[ET.Element], generation: int) -> None:
        if callback:
            self._deliver(call, callback, {"Event": "StopStream", "StreamID": stream.stream_id})
        if call.state != "ended" and call.generation == generation:
            self._run(call, rest, generation)

    @staticmethod
    def _close_stream(call: FakeCall) -> None:
        if call.media is not None and not call.media.closed.is_set():
            threading.Thread(target=call.media.close, daemon=True).start()

    def _finish(self, call: FakeCall, status: str, *, source: str, cause: str = "NORMAL_CLEARING") -> None:
        """End the call and post the hang-up callback (from the executor thread)."""
        if call.state == "ended":
            return
        call.state, call.end_status, call.hangup_source = "ended", status, source
        call.ended_at = datetime.now(UTC)
        call.generation += 1
        self._close_stream(call)
        if not call.hangup_url:
            return
        duration = int((call.ended_at - (call.answered_at or call.ended_at)).total_seconds())
        self._deliver(call, call.hangup_url, {
            "Event": "Hangup",
            "HangupCause": cause,
            "HangupCauseName": "Normal Hangup" if cause == "NORMAL_CLEARING" else cause.replace("_", " ").title(),
            "HangupSource": source,
            "Duration": str(duration),
            "BillDuration": str(duration),
            "StartTime": call.started_at.strftime("%Y-%m-%d %H:%M:%S"),
            "AnswerTime": call.answered_at.strftime("%Y-%m-%d %H:%M:%S") if call.answered_at else "",
            "EndTime": call.ended_at.strftime("%Y-%m-%d %H:%M:%S"),
            "TotalCost": "0.00000",
        })

    # --- scenario helpers -----------------------------------------------------------------------
    def start_inbound(self, from_number: str, to_number: str, *, answer_url: str,
                      hangup_url: str | None = None) -> FakeCall:
        """A caller dials a number of the application whose answer/hangup URLs are given."""
        call = FakeCall(str(uuid.uuid4()), None, "inbound", from_number, to_number, answer_url, hangup_url,
                        replies=deque(self.replies))
        with self._lock:
            self.calls[call.call_uuid] = call
        self._enqueue(lambda: self._answer(call))
        return call

    def end_wait(self, call: FakeCall) -> None:
        """The long ``<Wait>`` the call is parked in runs out: continue with what followed it."""
        rest, generation = call.parked or [], call.generation
        call.parked = None
        self._enqueue(lambda: self._run(call, rest, generation))

    def callee_hangs_up(self, call: FakeCall) -> None:
        self._enqueue(lambda: self._finish(call, "completed", source="Callee"))

    def call_by_request(self, request_uuid: str) -> FakeCall | None:
        with self._lock:
            return next((c for c in self.calls.values() if c.request_uuid == request_uuid), None)

    def rest_of(self, kind: str | None = None, uuid_: str | None = None) -> list[RestRequest]:
        with self._lock:
            return [r for r in self.rest if (kind is None or r.kind == kind) and (uuid_ is None or r.uuid == uuid_)]

    def deliveries_of(self, flow: str | None = None, call_uuid: str | None = None) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries
                    if (flow is None or d.flow == flow) and (call_uuid is None or d.call_uuid == call_uuid)]

    def fail_next(self, kind: str, status: int, error: str = "server error") -> None:
        """Make the next ``kind`` REST request (``make_call``, ``transfer``, …) fail with ``status``."""
        with self._lock:
            self._failures.setdefault(kind, deque()).append((status, {"api_id": str(uuid.uuid4()), "error": error}))

    # --- REST behaviour -------------------------------------------------------------------------
    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: dict[str, Any]) -> tuple[int, dict | None]:
        fault = None
        split = urlsplit(raw_path)
        query = {k: v[0] for k, v in parse_qs(split.query).items()}
        parts = [unquote(p) for p in split.path.split("/")]
        # "", "v1", "Account", id, resource, [uuid], [sub], "" (trailing slash required)
        kind, call_uuid = "unknown", None
        if len(parts) >= 6 and parts[:3] == ["", "v1", "Account"] and parts[-1] == "":
            resource = parts[4:-1]
            if resource == ["Call"] and method == "POST":
                kind = "make_call"
            elif len(resource) == 2 and resource[0] == "Call":
                call_uuid = resource[1]
                kind = {"POST": "transfer", "DELETE": "hangup", "GET": "status"}.get(method, "unknown")
            elif len(resource) == 3 and resource[0] == "Call" and resource[2] == "DTMF" and method == "POST":
                kind, call_uuid = "dtmf", resource[1]
            elif len(resource) == 2 and resource[0] == "Request" and method == "DELETE":
                kind, call_uuid = "cancel", resource[1]
        recorded = RestRequest(method, raw_path, kind, call_uuid, query, body)
        with self._lock:
            self.rest.append(recorded)
            if len(parts) < 4 or parts[3] != self.auth_id or not self._authorized(headers):
                status, response = 401, {"api_id": str(uuid.uuid4()), "error": "Authentication failed"}
            elif kind == "unknown":
                status, response = 404, {"api_id": str(uuid.uuid4()), "error": "not found"}
            elif kind == "make_call" and CreateFaults.error_status(fault := self.create_faults.next()):
                status = CreateFaults.error_status(fault)
                response = {"api_id": str(uuid.uuid4()), "error": "injected fault"}
            elif self._failures.get(kind):
                status, response = self._failures[kind].popleft()
            else:
                status, response, wait_for = self._act(kind, call_uuid, query, body)
                if wait_for is not None:  # the answer callback must finish before we reply (race tests)
                    self._lock.release()
                    try:
                        wait_for.wait(timeout=30)
                    finally:
                        self._lock.acquire()
            recorded.status = status
        if kind == "make_call" and self.create_faults.withhold_reply(fault):
            return status, NO_REPLY
        return status, response

    def _authorized(self, headers: dict[str, str]) -> bool:
        expected = "Basic " + base64.b64encode(f"{self.auth_id}:{self.auth_token}".encode()).decode()
        return hmac.compare_digest(headers.get("authorization", ""), expected)

    def _act(self, kind: str, call_uuid: str | None, query: dict[str, str],
             body: dict[str, Any]) -> tuple[int, dict | None, threading.Event | None]:
        api_id = str(uuid.uuid4())
        not_found = (404, {"api_id": api_id, "error": "not found"}, None)
        if kind == "make_call":
            missing = [k for k in ("from", "to", "answer_url") if not body.get(k)]
            if missing:
                return 400, {"api_id": api_id, "error": f"{missing[0]} parameter is required"}, None
            call = FakeCall(str(uuid.uuid4()), str(uuid.uuid4()), "outbound", str(body["from"]), str(body["to"]),
                            body["answer_url"], body.get("hangup_url"), body.get("ring_url"),
                            replies=deque(self.replies))
            self.calls[call.call_uuid] = call
            done = self._enqueue(lambda: self._progress_outbound(call))
            return 201, {"api_id": api_id, "message": "call fired", "request_uuid": call.request_uuid}, (
                done if self.answer_before_responding else None)
        if kind == "cancel":
            call = self.call_by_request(call_uuid or "")
            if call is None or call.state not in ("queued", "ringing"):
                return not_found
            call.generation += 1
            self._enqueue(lambda: self._finish(call, "cancel", source="API Request", cause="ORIGINATOR_CANCEL"))
            call.state = "ending"
            return 204, None, None
        call = self.calls.get(call_uuid or "")
        if kind == "status":
            return self._status(call_uuid or "", query.get("status"), api_id)
        if call is None or call.state in ("ended", "ending"):
            return not_found
        if kind == "hangup":
            call.generation += 1
            self._enqueue(lambda: self._finish(call, "completed", source="API Request"))
            call.state = "ending"
            return 204, None, None
        if call.state != "in-progress":
            return 400, {"api_id": api_id, "error": "call is not in progress"}, None
        if kind == "transfer":
            if body.get("legs") != "aleg" or not body.get("aleg_url"):
                return 400, {"api_id": api_id, "error": "legs and aleg_url are required"}, None
            call.generation += 1
            call.parked = None
            self._close_stream(call)  # the new XML replaces the <Stream> that held the call
            generation, url = call.generation, body["aleg_url"]
            self._enqueue(lambda: self._fetch_and_run(call, url, generation))
            return 202, {"api_id": api_id, "message": "call transferred"}, None
        if kind == "dtmf":
            call.digits_received.append(str(body.get("digits", "")))
            return 202, {"api_id": api_id, "message": "digits sent"}, None
        return not_found

    def _progress_outbound(self, call: FakeCall) -> None:
        behaviour = self.outbound_behaviour
        if behaviour == "queue":
            return
        self._ring(call)
        if behaviour == "answer":
            self._answer(call)
        elif behaviour in UNANSWERED_CAUSES:
            self._finish(call, behaviour, source="Callee", cause=UNANSWERED_CAUSES[behaviour])

    def _status(self, call_uuid: str, which: str | None, api_id: str) -> tuple[int, dict | None, None]:
        if which == "queued":
            call = self.call_by_request(call_uuid)
            if call is None or call.state != "queued":
                return 404, {"api_id": api_id, "error": "not found"}, None
            return 200, {"api_id": api_id, "call_status": "queued", "request_uuid": call.request_uuid,
                         "direction": call.direction, "from": call.from_number, "to": call.to_number}, None
        call = self.calls.get(call_uuid)
        if call is None:
            return 404, {"api_id": api_id, "error": "not found"}, None
        if which == "live":
            if call.state not in ("ringing", "in-progress"):
                return 404, {"api_id": api_id, "error": "not found"}, None
            return 200, {"api_id": api_id, "call_status": call.state, "call_uuid": call.call_uuid,
                         "request_uuid": call.request_uuid, "direction": call.direction,
                         "from": call.from_number, "to": call.to_number, "caller_name": "",
                         "session_start": call.started_at.strftime("%Y-%m-%d %H:%M:%S")}, None
        if call.state != "ended":
            return 404, {"api_id": api_id, "error": "not found"}, None
        return 200, {"api_id": api_id, "call_uuid": call.call_uuid, "call_direction": call.direction,
                     "call_state": CDR_STATES.get(call.end_status or "", "ANSWER"),
                     "hangup_source": call.hangup_source, "from_number": call.from_number,
                     "to_number": call.to_number}, None


class _Handler(BaseHTTPRequestHandler):
    # Headers and body go out in separate writes: without this the body waits ~40 ms for a delayed ACK.
    disable_nagle_algorithm = True

    owner: FakePlivo
    protocol_version = "HTTP/1.1"

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        if not isinstance(body, dict):
            status, response = 400, {"error": "invalid JSON body"}
        else:
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, response = self.owner.handle(method, self.path, headers, body)
        if response is NO_REPLY:  # an injected lost reply: close without answering
            self.close_connection = True
            return
        payload = b"" if response is None else json.dumps(response).encode()
        self.send_response(status)
        if payload:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_POST(self) -> None:
        self._serve("POST")

    def do_GET(self) -> None:
        self._serve("GET")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        return
