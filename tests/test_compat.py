"""``voicecall_site/compat.py``: every patch of a library's internals, held against the installed
library. A failure here names the entry: an upgrade moved what it relies on, so re-check that entry
and move its pin in requirements.txt together with it."""

from __future__ import annotations

import functools
import importlib.util
import inspect
import os
from collections import deque
from importlib.metadata import version

import pytest
from twisted.internet.abstract import FileDescriptor
from twisted.internet.testing import StringTransport
from twisted.web import http

from voicecall_site import compat

# What each entry was written against (the same pins as requirements.txt).
WRITTEN_AGAINST = {"kombu": "5.7.0", "daphne": "4.2.3", "Twisted": "26.10.0", "autobahn": "26.11.1",
                   "websockets": "17.4"}


@pytest.mark.parametrize(("package", "pinned"), WRITTEN_AGAINST.items())
def test_the_libraries_compat_patches_are_written_against_are_the_ones_installed(package, pinned):
    assert version(package) == pinned, (
        f"voicecall_site/compat.py was written against {package} {pinned}, {version(package)} is installed: "
        "re-check every compat entry that names it, then update WRITTEN_AGAINST and requirements.txt"
    )


def test_requirements_pin_what_compat_relies_on():
    pins = {}
    for line in open("requirements.txt").read().splitlines():
        if "==" in line and not line.startswith("#"):
            name, rest = line.split("==", 1)
            pins[name.strip()] = rest.split("#", 1)[0].strip()
    assert {name: pins.get(name) for name in WRITTEN_AGAINST} == WRITTEN_AGAINST


# --- 1. kombu ----------------------------------------------------------------------------------------


def test_kombu_channel_still_has_the_hooks_the_conninfo_patch_wraps():
    from kombu.transport import redis as kombu_redis

    assert list(inspect.signature(kombu_redis.Channel._connparams).parameters) == ["self", "asynchronous"]
    assert getattr(kombu_redis.Channel, compat.KOMBU_PATCHED_FLAG, False), "celery.py applies it at import"


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs a Redis server (REDIS_URL), as .ci/run gives")
def test_a_kombu_channel_detached_from_its_connection_still_finds_its_redis():
    from kombu import Connection

    compat.keep_kombu_redis_conninfo()
    compat.keep_kombu_redis_conninfo()  # idempotent
    with Connection(os.environ["REDIS_URL"]) as connection:
        channel = connection.channel()
        expected = channel._connparams()
        channel.connection.client = None  # what kombu 5.7.0's first close leaves behind
        assert channel._connparams()["host"] == expected["host"]
        assert channel._connparams()["port"] == expected["port"]
        assert channel.connection.client is None  # restored after the lookup
        channel.connection.client = connection


# --- 2. daphne's request class -------------------------------------------------------------------


def test_daphne_request_class_is_swapped_only_under_daphne_and_only_once(monkeypatch):
    from daphne import http_protocol

    original = http_protocol.WebRequest
    assert issubclass(original, http.Request)
    for hook in ("gotLength", "handleContentChunk", "requestReceived", "connectionLost"):
        assert callable(getattr(original, hook)), hook

    made: list[type] = []

    def make(base: type) -> type:
        made.append(type("Gated", (base,), {}))
        return made[-1]

    monkeypatch.delitem(__import__("sys").modules, "daphne.server", raising=False)
    assert compat.install_daphne_request_class(make) is False and not made

    monkeypatch.setitem(__import__("sys").modules, "daphne.server", object())
    monkeypatch.setattr(http_protocol, "WebRequest", original)
    assert compat.install_daphne_request_class(make) is True
    assert compat.install_daphne_request_class(make) is True
    assert len(made) == 1 and http_protocol.WebRequest is made[0]
    assert getattr(http_protocol.WebRequest, compat.DAPHNE_GATE_FLAG)


def test_daphne_builds_requests_from_the_module_attribute_that_is_swapped():
    source = open(importlib.util.find_spec("daphne.http_protocol").origin).read()
    assert "requestFactory = WebRequest" in source  # read at connection time, so the swap takes effect


def test_twisted_request_line_is_readable_before_the_body_arrives():
    seen: list = []

    class Recording(http.Request):
        def gotLength(self, length):
            seen.append(compat.twisted_request_line(self))
            super().gotLength(length)

    channel = http.HTTPChannel()
    channel.requestFactory = Recording
    channel.makeConnection(StringTransport())
    channel.dataReceived(b"POST /voice/webhook?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n")
    assert seen == [(b"POST", b"/voice/webhook?x=1")]


# --- 3. the socket behind an ASGI send ---------------------------------------------------------------


def test_daphne_hands_the_protocol_to_the_app_inside_its_send_partial():
    source = open(importlib.util.find_spec("daphne.server").origin).read()
    assert "send=partial(self.handle_reply, protocol)" in source


class _Protocol:
    STATE_OPEN = 3

    def __init__(self, transport=None, state=3):
        self.transport, self.state, self.closed_with = transport, state, None

    def sendCloseFrame(self, code=None, reasonUtf8=None, isReply=False):
        self.closed_with = (code, reasonUtf8, isReply)


def _send(protocol) -> functools.partial:
    return functools.partial(lambda protocol, message: None, protocol)


def test_send_buffer_probe_counts_twisted_buffered_bytes():
    transport = FileDescriptor()
    transport.connected = True
    transport.startWriting = lambda: None  # no reactor here: keep the bytes buffered
    probe = compat.send_buffer_probe(_send(_Protocol(transport)))
    assert probe is not None and probe() == 0
    transport.write(b"x" * 1000)
    assert probe() == 1000
    assert compat.send_buffer_probe(lambda message: None) is None  # not daphne: no probe


def test_close_codes_go_out_through_autobahn_close_frames():
    from autobahn.websocket.protocol import WebSocketProtocol

    assert list(inspect.signature(WebSocketProtocol.sendCloseFrame).parameters) == [
        "self", "code", "reasonUtf8", "isReply"]
    assert isinstance(WebSocketProtocol.STATE_OPEN, int)
    protocol = _Protocol()
    assert compat.send_close_code(_send(protocol), 1008, "Unknown call") is True
    assert protocol.closed_with == (1008, b"Unknown call", False)
    assert compat.send_close_code(_send(_Protocol(state=0)), 1008, "x") is False  # not open
    assert compat.send_close_code(lambda message: None, 1013, "x") is False  # not daphne


# --- 4. autobahn's per-frame costs -------------------------------------------------------------------


def test_the_small_frame_masker_unmasks_exactly_as_autobahns_own_in_any_chunking():
    import random

    from autobahn.websocket import xormasker

    rng = random.Random(20261207)
    for _ in range(200):
        size = rng.choice([0, 1, 3, 4, 5, 160, 341, 1000, rng.randint(0, 5000)])
        data, mask = rng.randbytes(size), rng.randbytes(4)
        ours, theirs = compat.SmallFrameMasker(mask), xormasker.create_xor_masker(mask, size)
        cuts = [*sorted(rng.sample(range(size + 1), min(3, size + 1))), size]
        start, mine, reference = 0, b"", b""
        for cut in cuts:
            mine += ours.process(data[start:cut])
            reference += theirs.process(data[start:cut])
            start = cut
        assert mine == reference and ours.pointer() == theirs.pointer() == size
        assert compat.SmallFrameMasker(mask).process(mine) == data  # masking is its own inverse


def test_lean_autobahn_frames_is_applied_by_the_asgi_module_and_idempotent():
    from autobahn.websocket import protocol

    import voicecall_site.asgi  # noqa: F401  -- what daphne loads

    assert getattr(protocol.WebSocketProtocol, compat.AUTOBAHN_PATCHED_FLAG, False)
    masker = protocol.create_xor_masker
    compat.lean_autobahn_frames()
    assert protocol.create_xor_masker is masker
    assert isinstance(protocol.create_xor_masker(b"abcd", 400), compat.SmallFrameMasker)
    assert not isinstance(protocol.create_xor_masker(b"abcd", compat.SMALL_FRAME_BYTES + 1), compat.SmallFrameMasker)
    # processData and sendData still find the patched names as module globals
    source = inspect.getsource(protocol.WebSocketProtocol.processData) + inspect.getsource(protocol.WebSocketProtocol.sendData)
    assert "create_xor_masker(" in source and "hltype(self.sendData)" in source
    # and the Twisted adapter's per-read debug line takes the lazy helpers from its own module
    from autobahn.twisted import websocket as twisted_websocket

    assert "hltype(self.dataReceived)" in inspect.getsource(twisted_websocket.WebSocketAdapterProtocol.dataReceived)
    assert twisted_websocket.hltype is protocol.hltype and twisted_websocket.hlval is protocol.hlval
    assert isinstance(twisted_websocket.hlval(3), compat._Rendered)


def test_debug_log_arguments_render_as_autobahns_helpers_would():
    from autobahn import util
    from autobahn.websocket import protocol

    compat.lean_autobahn_frames()
    peer, method = "tcp:127.0.0.1:5000", protocol.WebSocketProtocol.sendData
    template = "{func} sent {data_len} bytes for peer {peer}"
    assert template.format(func=protocol.hltype(method), data_len=protocol.hlval(12), peer=protocol.hlval(peer)) == \
        template.format(func=util.hltype(method), data_len=util.hlval(12), peer=util.hlval(peer))
    assert str(protocol.hlval(peer, color="green")) == util.hlval(peer, color="green")


def _ended_message(payload: bytes):
    from autobahn.twisted.websocket import WebSocketServerProtocol

    compat.lean_autobahn_frames()
    received: list = []
    proto = WebSocketServerProtocol()
    proto.failedByMe, proto.trackedTimings, proto.message_is_binary = False, None, False
    proto.message_data = [payload[:2], payload[2:]]
    proto._onMessage = lambda data, is_binary: received.append(data)
    return proto, received


def test_a_message_still_reaches_the_app_and_any_registered_listener():
    proto, received = _ended_message(b"hello")
    proto.onMessageEnd()
    assert received == [b"hello"] and proto.message_data is None and proto._listeners is None

    proto, received = _ended_message(b"world")
    heard: list = []
    proto.on("message", lambda payload, is_binary: heard.append(payload))
    proto.onMessageEnd()
    assert received == [b"world"] and heard == [b"world"]  # with a listener, autobahn's own path


# --- 5. a WebSocket frame written at once to an idle socket ------------------------------------------


class _RecordingReactor:
    """Enough of a reactor for a ``tcp.Connection``: records writer registrations."""

    def __init__(self) -> None:
        self.writers: list = []

    def addWriter(self, writer) -> None:
        if writer not in self.writers:
            self.writers.append(writer)

    def removeWriter(self, writer) -> None:
        if writer in self.writers:
            self.writers.remove(writer)

    def addReader(self, reader) -> None: ...

    def removeReader(self, reader) -> None: ...


@pytest.fixture
def tcp_pair():
    """A real connected TCP socket pair: ours wrapped in Twisted's own ``tcp.Connection``."""
    import socket

    from twisted.internet import protocol, tcp

    listener = socket.create_server(("127.0.0.1", 0))
    ours = socket.create_connection(listener.getsockname())
    peer, _ = listener.accept()
    listener.close()
    ours.setblocking(False)
    peer.settimeout(5)
    reactor = _RecordingReactor()
    connection = tcp.Connection(ours, protocol.Protocol(), reactor)
    connection.connected = 1
    yield connection, peer, reactor
    ours.close()
    peer.close()


def _read_exactly(peer, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = peer.recv(size - len(data))
        assert chunk, "the peer saw the connection close"
        data += chunk
    return data


def test_twisted_keeps_what_write_at_once_relies_on(tcp_pair):
    from twisted.internet import tcp

    connection, _, _ = tcp_pair
    connection_attrs = set(dir(connection))
    assert {"writeSomeData", "write", "dataBuffer", "offset", "_tempDataLen", "_tempDataBuffer", "connected",
            "disconnecting", "_writeDisconnecting", "_writeDisconnected"} <= connection_attrs
    assert "EWOULDBLOCK" in inspect.getsource(tcp.Connection.writeSomeData)


def test_an_idle_socket_gets_the_frame_at_once_without_a_writer_registration(tcp_pair):
    connection, peer, reactor = tcp_pair
    compat.write_at_once(connection, b"frame-1")
    assert _read_exactly(peer, 7) == b"frame-1"
    assert reactor.writers == [] and connection._tempDataLen == 0


def test_with_data_queued_the_frame_queues_behind_it_in_order(tcp_pair):
    connection, peer, reactor = tcp_pair
    connection.write(b"first,")  # Twisted's own write: buffered until the reactor says writable
    compat.write_at_once(connection, b"second")
    assert reactor.writers == [connection]
    assert connection._tempDataLen == len(b"first,second")
    connection.doWrite()  # what the reactor does on the writable event
    assert _read_exactly(peer, 12) == b"first,second"
    assert reactor.writers == []


def test_what_the_kernel_does_not_take_is_buffered_and_sent_later_in_order(tcp_pair):
    import random
    import select
    import socket

    connection, peer, reactor = tcp_pair
    connection.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    blob = random.Random(5).randbytes(1024 * 1024)  # far more than the send buffer holds
    compat.write_at_once(connection, blob)
    assert connection in reactor.writers and 0 < connection._tempDataLen < len(blob)
    received = b""
    while len(received) < len(blob):  # a reactor's loop, by hand: read when readable, write when writable
        writing = [connection.socket] if connection in reactor.writers else []
        readable, writable, _ = select.select([peer], writing, [], 5)
        assert readable or writable, "stalled"
        if readable:
            received += peer.recv(65536)
        if writable:
            connection.doWrite()
    assert received == blob and reactor.writers == []


def test_a_send_to_a_closed_peer_goes_through_twisteds_connection_lost_path(tcp_pair):
    import socket
    import struct

    from twisted.internet import main

    connection, peer, reactor = tcp_pair
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()  # an RST: the next send fails with ECONNRESET / EPIPE
    for _ in range(50):
        compat.write_at_once(connection, b"x" * 1000)
        if connection in reactor.writers:
            break
    assert connection in reactor.writers  # handed to write(): the writer will meet the error
    assert connection.doWrite() is main.CONNECTION_LOST


def test_a_closing_connection_or_another_transport_always_gets_twisteds_write(tcp_pair):
    connection, _, reactor = tcp_pair
    connection.loseConnection()  # closing: Twisted flushes, then closes; nothing may jump ahead
    compat.write_at_once(connection, b"late")
    assert connection._tempDataLen == 4 and connection in reactor.writers  # queued behind the close, in Twisted's order

    transport = StringTransport()  # not a tcp.Connection (e.g. TLS): that transport's own write
    compat.write_at_once(transport, b"abc")
    assert transport.value() == b"abc"


def test_autobahn_send_data_writes_at_once_only_on_its_plain_branch():
    from autobahn.twisted.websocket import WebSocketServerProtocol
    from autobahn.websocket import protocol

    import voicecall_site.asgi  # noqa: F401  -- what daphne loads

    assert getattr(protocol.WebSocketProtocol, compat.DIRECT_WRITE_FLAG, False)
    patched = protocol.WebSocketProtocol.sendData
    compat.write_websocket_frames_at_once()
    assert protocol.WebSocketProtocol.sendData is patched
    assert list(inspect.signature(patched).parameters) == ["self", "data", "sync", "chopsize"]

    written: list = []
    proto = WebSocketServerProtocol()
    proto.transport, proto.peer = StringTransport(), "tcp:127.0.0.1:1"
    proto.transport.write = lambda data: written.append(("plain", data))
    proto.send_queue, proto.triggered = deque(), False
    proto.sendData(b"one")
    assert written == [("plain", b"one")]
    proto.send_queue.append((b"queued", False))
    proto.triggered = True  # autobahn's queue is draining: later data joins it, not the socket
    proto.sendData(b"two")
    assert written == [("plain", b"one")] and list(proto.send_queue) == [(b"queued", False), (b"two", False)]


# --- 6. websockets: text sends without the send context -----------------------------------------------


def test_websockets_keeps_what_the_direct_text_send_relies_on():
    from websockets.asyncio.connection import Connection

    import voicecall_site.asgi  # noqa: F401  -- what daphne loads

    assert getattr(Connection, compat.WEBSOCKETS_PATCHED_FLAG, False)
    patched = Connection.send
    compat.lean_websockets_text_sends()
    assert Connection.send is patched  # idempotent
    context = inspect.getsource(Connection.send_context)
    assert "self.send_data()" in context and "await self.drain()" in context
    assert "if self.protocol.state is expected_state:" in context
    assert "self.send_in_progress" in inspect.getsource(Connection.__init__)


def _with_echo_server(scenario):
    """Run ``scenario(client, received)`` against a real websockets server on loopback that
    collects every message it receives."""
    import asyncio

    from websockets.asyncio.client import connect
    from websockets.asyncio.server import serve

    async def run():
        received: list = []

        async def collect(server_side):
            async for message in server_side:
                received.append(message)

        async with serve(collect, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}") as client:
                return await scenario(client, received)

    return asyncio.run(run())


def test_text_goes_out_directly_in_order_and_everything_else_through_websockets(monkeypatch):
    import asyncio

    from websockets.asyncio.connection import Connection

    compat.lean_websockets_text_sends()
    contexts: list = []
    original_context = Connection.send_context

    def counting_context(self, *args, **kwargs):
        contexts.append(1)
        return original_context(self, *args, **kwargs)

    monkeypatch.setattr(Connection, "send_context", counting_context)

    async def scenario(client, received):
        contexts.clear()  # both sides' opening handshakes went through it
        await client.send("one")
        await client.send("two")
        assert contexts == []  # the calm case: no send context
        entered = []
        for message, options in [(b"\x00bin", {}), (["frag", "ment"], {}), ("as binary", {"text": False})]:
            before = len(contexts)
            await client.send(message, **options)  # binary, fragmented, an option: websockets' own path
            entered.append(len(contexts) > before)
        with monkeypatch.context() as backed_up:  # unsent bytes in the transport: back-pressure applies
            backed_up.setattr(client.transport, "get_write_buffer_size", lambda: 1)
            before = len(contexts)
            await client.send("three")
            entered.append(len(contexts) > before)
        before = len(contexts)
        await client.send("four")
        entered.append(len(contexts) > before)
        while len(received) < 7:
            await asyncio.sleep(0.01)
        return received, entered

    received, entered = _with_echo_server(scenario)
    assert received == ["one", "two", b"\x00bin", "fragment", b"as binary", "three", "four"]
    assert entered == [True, True, True, True, False]  # calm again after the backed-up send: direct


def test_a_text_send_on_a_closed_connection_still_raises_connection_closed():
    import asyncio

    from websockets.exceptions import ConnectionClosed

    compat.lean_websockets_text_sends()

    async def scenario(client, received):
        await client.close()
        try:
            await asyncio.wait_for(client.send("late"), 10)
        except ConnectionClosed:
            return "raised"
        return "sent"

    assert _with_echo_server(scenario) == "raised"
