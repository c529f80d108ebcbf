"""Every use of a third-party library's private internals, in one place.

Each entry names the pinned version it was written against (requirements.txt), why no public API
does the job, and what breaks without it. ``tests/test_compat.py`` checks each one against the
installed library and fails loudly, naming the entry, when an upgrade moves what it relies on --
upgrade the pin and this module together.

1. kombu 5.7.0 Redis channel: remember connection details so a worker survives a Redis restart.
2. daphne 4.2.3 request class: refuse a carrier webhook from its head, before Twisted buffers the
   body (the early webhook gate, ``calls/interfaces/webhook_gate.py``).
3. daphne 4.2.3 / Twisted: the socket behind an ASGI ``send`` -- its send-buffer fill level
   (back-pressure detection for media streams) and WebSocket close codes 1008/1013, which autobahn's
   public ``sendClose`` refuses.
4. autobahn 26.11.1 WebSocket frames: three per-frame costs with no effect for daphne's sockets
   (a masker object per inbound frame, debug-log arguments built for every send, a Deferred per
   message for listeners nobody registered) -- about a fifth of a media-stream process's CPU.
5. Twisted 26.10.0 TCP transport, from autobahn's ``sendData``: a WebSocket frame written to an idle
   socket goes out at once instead of through a writer registration and a loop turn.
6. websockets 17.4 asyncio client: a text message sent on an open, idle connection without the
   per-message async context manager (the speech-to-text and realtime sessions' audio appends).

Under another ASGI server than daphne, entries 2 and 3 find nothing and the callers fall back to
what plain ASGI offers (logged once by the media consumer).
"""

from __future__ import annotations

import fcntl
import functools
import struct
import sys
import termios
from collections.abc import Callable
from typing import Any

# --------------------------------------------------------------------------------------------------
# 1. kombu: a worker that survives its Redis broker restarting
# --------------------------------------------------------------------------------------------------

KOMBU_PATCHED_FLAG = "_voicecall_keeps_conninfo"


def keep_kombu_redis_conninfo() -> None:
    """Keep a worker alive when its Redis broker restarts (found by tests/test_reliability_redis.py).

    With celery 5.7.0 / kombu 5.7.0, a worker that loses its Redis connection while it holds
    unacknowledged messages -- a countdown task such as ``enforce_max_duration``, which it holds for
    maxDurationSeconds, or a running ``acks_late`` task -- closes the broken connection twice: the
    first close detaches the transport from its connection, the second tries to put those messages
    back on the queue and needs the connection's host and port, gets ``None`` and raises
    ``AttributeError``; the worker logs "Unrecoverable error" and exits. kombu has no public hook into
    how a channel finds its connection parameters, so ``Channel.__init__`` remembers them and
    ``Channel._connparams`` uses them while the transport is detached: the requeue then goes to the
    (restarted) Redis, or fails with a connection error kombu already tolerates, and the worker
    reconnects as designed. Idempotent.
    """
    from kombu.transport import redis as kombu_redis

    channel = kombu_redis.Channel
    if getattr(channel, KOMBU_PATCHED_FLAG, False):
        return
    original_init, original_connparams = channel.__init__, channel._connparams

    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self._voicecall_conninfo = self.connection.client

    def _connparams(self, asynchronous=False):
        transport = self.connection
        remembered = getattr(self, "_voicecall_conninfo", None)
        if transport.client is not None or remembered is None:
            return original_connparams(self, asynchronous=asynchronous)
        transport.client = remembered  # only for the duration of the lookup
        try:
            return original_connparams(self, asynchronous=asynchronous)
        finally:
            transport.client = None

    channel.__init__ = __init__
    channel._connparams = _connparams
    setattr(channel, KOMBU_PATCHED_FLAG, True)


# --------------------------------------------------------------------------------------------------
# 2. daphne: our own request class, for the early webhook gate
# --------------------------------------------------------------------------------------------------

DAPHNE_GATE_FLAG = "voicecall_early_gate"


def install_daphne_request_class(make_subclass: Callable[[type], type]) -> bool:
    """Make daphne build its HTTP requests from ``make_subclass(daphne's WebRequest)``.

    Twisted buffers a whole request body before daphne calls the ASGI application, so an ASGI
    middleware cannot refuse a request before its body arrives nor time out a stalled upload. daphne
    offers no setting for the request class; its HTTP factory reads the module attribute
    ``daphne.http_protocol.WebRequest``, so that is what is swapped. Only under daphne (its server
    module is loaded, so the asyncio reactor is installed); idempotent. Returns whether it is active.
    The subclass itself uses Twisted's public ``Request`` hooks (``gotLength``,
    ``handleContentChunk``, ``requestReceived``).
    """
    if "daphne.server" not in sys.modules:
        return False
    from daphne import http_protocol

    if getattr(http_protocol.WebRequest, DAPHNE_GATE_FLAG, False):
        return True
    gated = make_subclass(http_protocol.WebRequest)
    setattr(gated, DAPHNE_GATE_FLAG, True)
    http_protocol.WebRequest = gated
    return True


def twisted_request_line(request: Any) -> tuple[bytes, bytes] | None:
    """``(method, target)`` of a Twisted request whose headers are parsed but whose body is not yet
    read. Twisted sets ``Request.method``/``uri`` only once the body is complete; until then the
    request line is held by the channel (``HTTPChannel._command`` / ``_path``, Twisted 26.10). None
    when this Twisted version keeps it elsewhere (the ASGI gate still checks, after the body)."""
    channel = getattr(request, "channel", None)
    command, target = getattr(channel, "_command", None), getattr(channel, "_path", None)
    if not command or target is None:
        return None
    return command, target


# --------------------------------------------------------------------------------------------------
# 3. daphne / Twisted / autobahn: the WebSocket behind an ASGI send
# --------------------------------------------------------------------------------------------------


def daphne_protocol(send: Any) -> Any | None:
    """daphne hands the app ``functools.partial(server.handle_reply, protocol)`` as ``send``: the
    autobahn/Twisted protocol object of this socket, or None under another ASGI server."""
    return send.args[0] if isinstance(send, functools.partial) and send.args else None


def send_buffer_probe(send: Any) -> Callable[[], int] | None:
    """Bytes sent to this socket that the peer has not taken yet: daphne's user-space buffer plus the
    kernel's send queue; None when there is no way to tell.

    ASGI has no back-pressure signal for WebSocket sends. daphne's protocol transport is a Twisted
    ``FileDescriptor`` whose write buffer is ``dataBuffer`` (from ``offset``) plus ``_tempDataBuffer``
    (``_tempDataLen`` bytes). The kernel queue (Linux ``SIOCOUTQ``: unsent plus unacknowledged bytes)
    is counted too, because send-buffer autotuning lets the kernel absorb megabytes before Twisted
    buffers anything.
    """
    transport = getattr(daphne_protocol(send), "transport", None)
    if transport is None or not all(hasattr(transport, a) for a in ("dataBuffer", "offset", "_tempDataLen")):
        return None
    sock = getattr(transport, "socket", None)
    outq = getattr(termios, "TIOCOUTQ", None)  # == SIOCOUTQ on Linux

    def kernel_queue() -> int:
        if sock is None or outq is None:
            return 0
        try:
            return struct.unpack("i", fcntl.ioctl(sock.fileno(), outq, b"\0\0\0\0"))[0]
        except (OSError, ValueError):
            return 0

    def buffered() -> int:
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen + kernel_queue()

    return buffered


def send_close_code(send: Any, code: int, reason: str) -> bool:
    """Close an open daphne WebSocket with ``code``; False when this is not possible here (not
    daphne, or not open), and the caller closes through ASGI instead.

    daphne's ASGI close goes through autobahn's public ``sendClose``, which only allows 1000 and
    3000-4999; RFC 6455 §7.4.1 defines 1008 (policy) and 1013 (try again later) for exactly the
    refusals a media stream makes. So the frame is sent the way daphne itself sends its 1011,
    with autobahn's ``sendCloseFrame``.
    """
    protocol = daphne_protocol(send)
    if protocol is None or getattr(protocol, "state", None) != getattr(protocol, "STATE_OPEN", object()):
        return False
    protocol.sendCloseFrame(code=code, reasonUtf8=reason.encode()[:123] or None, isReply=False)
    return True


# --------------------------------------------------------------------------------------------------
# 4. autobahn: per-frame costs that do nothing for daphne's sockets
# --------------------------------------------------------------------------------------------------

AUTOBAHN_PATCHED_FLAG = "_voicecall_lean_frames"
#: Inbound payloads up to this size are unmasked with Python's integers; larger ones by autobahn.
SMALL_FRAME_BYTES = 64 * 1024


class SmallFrameMasker:
    """XOR (un)masking of one frame's payload (RFC 6455 §5.3: octet i XOR mask[i mod 4]), through
    Python's arbitrary-size integers: one C pass, no object beyond the result. The same interface
    as autobahn's maskers (``process`` may be called once per chunk; ``pointer``/``reset``)."""

    __slots__ = ("_mask", "_ptr")

    def __init__(self, mask: bytes) -> None:
        self._mask = bytes(mask)
        self._ptr = 0

    def pointer(self) -> int:
        return self._ptr

    def reset(self) -> None:
        self._ptr = 0

    def process(self, data: bytes) -> bytes:
        size = len(data)
        if not size:
            return b""
        shift = self._ptr & 3
        key = (self._mask[shift:] + self._mask[:shift]) * ((size >> 2) + 1)
        self._ptr += size
        return (int.from_bytes(data, "little") ^ int.from_bytes(key[:size], "little")).to_bytes(size, "little")


class _Rendered:
    """A log argument rendered only if the message is formatted (autobahn's ``{name}`` format)."""

    __slots__ = ("_args", "_kwargs", "_render")

    def __init__(self, render: Callable[..., str], args: tuple, kwargs: dict) -> None:
        self._render, self._args, self._kwargs = render, args, kwargs

    def __format__(self, spec: str) -> str:
        return format(self._render(*self._args, **self._kwargs), spec)

    def __str__(self) -> str:
        return self._render(*self._args, **self._kwargs)


def lean_autobahn_frames() -> None:
    """Cut three per-frame costs autobahn 26.11.1 adds to every WebSocket under daphne (measured
    with py-spy on ``voicecall serve`` carrying 128 media streams: together ~20 % of its CPU).

    * ``processData`` builds a masker object for every inbound frame (``create_xor_masker``: with
      the NVX extension, a CFFI allocation, a finalizer and an import per frame). Small payloads --
      a media frame is a few hundred bytes -- are unmasked by ``SmallFrameMasker`` instead.
    * ``sendData`` evaluates ``hltype``/``hlval`` (``inspect`` plus three ``click.style`` calls) for
      a debug message on every send, whether or not debug logging is on, and the Twisted adapter's
      ``dataReceived`` does the same for every read. In both modules those helpers now return
      arguments that render only when a message is actually formatted: with debug logging on, the
      output is the same.
    * ``onMessageEnd`` fires the ``message`` event to the observer mechanism for every message and
      attaches an errback to the result; with no listener registered (``_listeners is None``, as
      for daphne's protocol) that is an already-resolved Deferred with nothing to do. It is skipped
      then; with listeners, autobahn's own method runs.

    autobahn has no switch for any of them; the names patched are module globals and one method of
    ``autobahn.websocket.protocol`` (and the two helper names in ``autobahn.twisted.websocket``).
    Idempotent.
    """
    from autobahn.twisted import websocket as twisted_websocket
    from autobahn.websocket import protocol

    base = protocol.WebSocketProtocol
    if getattr(base, AUTOBAHN_PATCHED_FLAG, False):
        return
    autobahn_masker = protocol.create_xor_masker
    autobahn_hltype, autobahn_hlval = protocol.hltype, protocol.hlval
    autobahn_message_end = base.onMessageEnd

    def create_xor_masker(mask, length=None):
        if length is not None and length <= SMALL_FRAME_BYTES:
            return SmallFrameMasker(mask)
        return autobahn_masker(mask, length)

    def hltype(*args, **kwargs):
        return _Rendered(autobahn_hltype, args, kwargs)

    def hlval(*args, **kwargs):
        return _Rendered(autobahn_hlval, args, kwargs)

    def onMessageEnd(self) -> None:
        if self._listeners is not None or self._parent is not None:
            autobahn_message_end(self)
            return
        if not self.failedByMe:
            payload = b"".join(self.message_data)
            if self.trackedTimings:
                self.trackedTimings.track("onMessage")
            self._onMessage(payload, self.message_is_binary)
        self.message_data = None

    protocol.create_xor_masker = create_xor_masker
    protocol.hltype, protocol.hlval = hltype, hlval
    twisted_websocket.hltype, twisted_websocket.hlval = hltype, hlval
    base.onMessageEnd = onMessageEnd
    setattr(base, AUTOBAHN_PATCHED_FLAG, True)


# --------------------------------------------------------------------------------------------------
# 5. Twisted: a WebSocket frame written at once when the socket has nothing queued
# --------------------------------------------------------------------------------------------------

DIRECT_WRITE_FLAG = "_voicecall_writes_at_once"


def write_at_once(transport: Any, data: bytes) -> None:
    """``transport.write(data)``, with the send made now when nothing is queued ahead of it.

    Twisted's ``FileDescriptor.write`` only buffers: it registers the socket as a writer
    (``loop.add_writer`` under the asyncio reactor, an ``epoll_ctl``), waits for the next loop turn
    to report it writable, sends, and unregisters it again (a second ``epoll_ctl``) -- for every
    media frame, every 20 ms on every stream. When the transport is a plain TCP (or UNIX) connection
    with an empty buffer and no close under way, this sends through the transport's own
    ``writeSomeData`` (which already maps ``EWOULDBLOCK`` to "0 bytes") and hands only what the
    kernel did not take to ``write``, so order, back-pressure and buffering stay Twisted's. A send
    that reports the connection lost is handed to ``write`` too: Twisted's writer then meets the same
    error and runs its usual connection-lost path. TLS transports (a wrapping protocol, or the legacy
    ``startTLS`` mixin) always use ``write``.
    """
    from twisted.internet import tcp

    if (
        isinstance(transport, tcp.Connection)
        and not transport._tempDataLen
        and transport.offset == len(transport.dataBuffer)
        and transport.connected
        and not (transport.disconnecting or transport._writeDisconnecting or transport._writeDisconnected)
        and not getattr(transport, "TLS", False)
        and data
    ):
        sent = transport.writeSomeData(data)
        if isinstance(sent, BaseException):
            transport.write(data)
        elif sent < len(data):
            transport.write(data[sent:])
        return
    transport.write(data)


def write_websocket_frames_at_once() -> None:
    """Send each WebSocket frame autobahn 26.11.1 writes straight to an idle socket (see
    ``write_at_once``; measured under ``voicecall serve`` with media streams: the writer registration
    and its loop turn were 7-9 % of the process's samples).

    Only the plain branch of ``WebSocketProtocol.sendData`` is replaced -- no chopping, no ``sync``,
    nothing queued in autobahn's own send queue; those keep autobahn's method. autobahn turns
    ``TCP_NODELAY`` on for its sockets (``tcpNoDelay``), so a frame sent alone is not held back by
    Nagle's algorithm any more than one sent a loop turn later. Idempotent.
    """
    from autobahn.websocket import protocol

    base = protocol.WebSocketProtocol
    if getattr(base, DIRECT_WRITE_FLAG, False):
        return
    autobahn_send_data = base.sendData

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        if sync or chopsize or self.send_queue:
            autobahn_send_data(self, data, sync, chopsize)
            return
        write_at_once(self.transport, data)
        self.log.debug(
            "{func} sent {data_len} bytes for peer {peer}",
            func=protocol.hltype(self.sendData), peer=protocol.hlval(self.peer), data_len=protocol.hlval(len(data)),
        )

    base.sendData = sendData
    setattr(base, DIRECT_WRITE_FLAG, True)


# --------------------------------------------------------------------------------------------------
# 6. websockets: a text message on an open, idle connection without the send context
# --------------------------------------------------------------------------------------------------

WEBSOCKETS_PATCHED_FLAG = "_voicecall_sends_text_directly"


def lean_websockets_text_sends() -> None:
    """Send a ``str`` through websockets 17.4's asyncio ``Connection.send`` without its
    ``send_context`` when nothing can go differently (measured under ``voicecall serve`` with 64
    realtime calls: the context manager and the async-generator hooks it triggers were ~6 % of the
    process's samples -- every caller frame is one ``input_audio_buffer.append`` to the model or to
    speech-to-text).

    ``send_context`` checks that the connection is open, lets the caller frame the message with the
    Sans-I/O ``protocol``, writes ``protocol.data_to_send()`` to the transport (``send_data``) and
    awaits ``drain()`` for flow control; its other branches handle a closing connection and internal
    errors. The direct path takes exactly the calm case: the protocol ``OPEN``, no fragmented send
    in progress, the transport not closing and its write buffer empty (so ``drain`` would not wait),
    debug logging off. It frames the message with ``protocol.send_text`` and writes it with
    ``send_data`` -- the same two calls. Anything else (binary, a fragmented or async-iterable
    message, a backed-up or closing connection) goes to websockets' own ``send``, which then applies
    back-pressure or raises ``ConnectionClosed`` as before. Idempotent.
    """
    from websockets.asyncio.connection import Connection
    from websockets.protocol import OPEN

    if getattr(Connection, WEBSOCKETS_PATCHED_FLAG, False):
        return
    websockets_send = Connection.send

    async def send(self, message, *args, **kwargs):
        if (
            type(message) is str
            and not args
            and not kwargs
            and self.send_in_progress is None
            and self.protocol.state is OPEN
            and not self.debug
            and not self.transport.is_closing()
            and not self.transport.get_write_buffer_size()
        ):
            self.protocol.send_text(message.encode())
            self.send_data()
            return
        await websockets_send(self, message, *args, **kwargs)

    send.__doc__ = websockets_send.__doc__
    Connection.send = send
    setattr(Connection, WEBSOCKETS_PATCHED_FLAG, True)
