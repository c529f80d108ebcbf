"""The webhook bench's load generator: HTTP/1.1 keep-alive clients that send prepared requests
from many source addresses, and the signed Twilio status callbacks they send."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from email.utils import formatdate
from urllib.parse import urlencode, urlsplit

from bench_support import (
    CpuMeter,
    CpuUse,
    percentile,
)

# --------------------------------------------------------------------------------------------------
# The load generator
# --------------------------------------------------------------------------------------------------

WEBHOOK_PATH = "/voice/webhook"


@dataclass
class Request:
    head: bytes  # request line and headers, without the X-Forwarded-For line and the blank line
    body: bytes = b""


@dataclass
class PassResult:
    kind: str  # "webhook" | "healthz"
    clients: int
    requests: int
    elapsed: float
    latencies: list[float]
    statuses: Counter = field(default_factory=Counter)
    cpu: CpuUse | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed

    def p(self, q: float) -> float:
        return percentile(self.latencies, q)


def client_ip(index: int) -> str:
    """One address per simulated client, inside Twilio's documented 54.172.60.0/23 edge range."""
    return f"54.172.{60 + index // 256}.{index % 256}"


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """One HTTP/1.1 response (Content-Length or chunked body): (status, server closes)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, chunked, close = 0, False, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value:
            chunked = True
        elif name == b"connection" and value == b"close":
            close = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status, close


async def run_pass(port: int, kind: str, requests: list[Request], clients: int,
                   ips: list[str] | None = None, meter: CpuMeter | None = None) -> PassResult:
    """Closed loop: ``clients`` keep-alive connections share the request list; each sends the next
    request as soon as its previous answer is complete. Connections are opened before the clock."""
    ips = ips or [client_ip(i) for i in range(clients)]
    latencies = [0.0] * len(requests)
    statuses: Counter = Counter()
    cursor = iter(range(len(requests)))

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", port)

    async def client(index: int, conn) -> None:
        reader, writer = conn
        xff = f"X-Forwarded-For: {ips[index % len(ips)]}\r\n\r\n".encode()
        try:
            for i in cursor:
                request = requests[i]
                started = time.perf_counter()
                writer.write(request.head + xff + request.body)
                status, close = await _read_response(reader)
                latencies[i] = time.perf_counter() - started
                statuses[status] += 1
                if close:
                    writer.close()
                    reader, writer = await connect()
        finally:
            writer.close()

    conns = await asyncio.gather(*(connect() for _ in range(clients)))
    cpu_before = meter.snapshot() if meter else None
    started = time.perf_counter()
    await asyncio.gather(*(client(i, conn) for i, conn in enumerate(conns)))
    elapsed = time.perf_counter() - started
    cpu = CpuMeter.use(cpu_before, meter.snapshot(), len(requests)) if meter else None
    return PassResult(kind, clients, len(requests), elapsed, latencies, statuses, cpu)


# --------------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------------


def healthz_requests(count: int) -> list[Request]:
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: webhook-bench\r\n"
    return [Request(head)] * count


class StatusCallbacks:
    """Distinct, validly signed Twilio status callbacks for ``calls`` in turn (protocols.md §2)."""

    def __init__(self, calls: list[tuple[str, str]], *, account_sid: str, auth_token: str, public_url: str,
                 from_number: str, to_number: str):
        from tests.fakes.twilio import twilio_signature

        self.sign = lambda url, params: twilio_signature(auth_token, url, params)
        self.calls, self.account_sid, self.public_url = calls, account_sid, public_url
        self.host = urlsplit(public_url).netloc
        self.from_number, self.to_number = from_number, to_number
        self.sequence = [0] * len(calls)
        self.turn = 0
        self.made = 0

    def take(self, count: int) -> list[Request]:
        out = []
        for _ in range(count):
            index = self.turn % len(self.calls)
            self.turn += 1
            call_id, sid = self.calls[index]
            seq = self.sequence[index]
            self.sequence[index] += 1
            query = urlencode({"callId": call_id, "type": "status"})
            params = [
                ("AccountSid", self.account_sid), ("ApiVersion", "2010-04-01"), ("CallSid", sid),
                ("CallStatus", "ringing" if seq % 2 == 0 else "in-progress"),
                ("Called", self.to_number), ("Caller", self.from_number), ("Direction", "outbound-api"),
                ("From", self.from_number), ("To", self.to_number),
                ("CallbackSource", "call-progress-events"), ("SequenceNumber", str(seq)),
                ("Timestamp", formatdate(usegmt=True)),
            ]
            body = urlencode(params).encode()
            signature = self.sign(f"{self.public_url}?{query}", params)
            head = (
                f"POST {WEBHOOK_PATH}?{query} HTTP/1.1\r\nHost: {self.host}\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\n"
                f"Content-Length: {len(body)}\r\nX-Twilio-Signature: {signature}\r\n"
                f"I-Twilio-Idempotency-Token: {uuid.uuid4()}\r\nX-Forwarded-Proto: https\r\n"
                "User-Agent: TwilioProxy/1.1\r\n"
            ).encode()
            out.append(Request(head, body))
        self.made += count
        return out


