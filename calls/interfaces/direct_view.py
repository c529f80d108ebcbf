"""The carrier webhook served straight from ASGI, without Django's middleware stack.

Why: under ASGI Django runs a sync view behind its middleware, and each stock middleware
(``MiddlewareMixin``) in async mode moves its ``process_request`` and ``process_response`` to a
worker thread and back, WhiteNoise (sync only) switches the stack back again, the request signals
take hops of their own, and every request gets a new thread (``ThreadSensitiveContext``): about a
dozen thread hand-offs for one request. Measured under daphne, that cost more CPU than the webhook's
own work (bench/README.md, "Webhooks"). None of those middlewares does anything for the webhook: it
is csrf-exempt and uses no session, user, message, static file or frame.

So the ASGI gate (``webhook_gate``), which has already read the body, hands a guarded request to
``DirectView``: one hop to a worker thread of its own pool, where the request runs as Django would run it --
``request_started`` / ``request_finished`` (the thread's database connection goes back to the pool
afterwards, as after any request), the ``ALLOWED_HOSTS`` check CommonMiddleware would have made, and
Django's own exception-to-response conversion (a crash is a logged 500, as elsewhere). Every other
path still goes through Django's full stack.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import sync_to_async
from django.core import signals
from django.core.handlers.asgi import ASGIRequest
from django.core.handlers.exception import convert_exception_to_response
from django.http import HttpRequest, HttpResponse, HttpResponseBase

from calls.interfaces.limits import VERIFIED_IN_FLIGHT

# Worker threads (started as needed, then reused): every verified request the process admits at
# once, plus room for unverified ones being checked. A request waiting on a database lock holds its
# thread, so a pool much smaller than the admitted load would stall the requests queued behind it.
THREADS = VERIFIED_IN_FLIGHT + 32


class DirectView:
    """Serve one sync view from an ASGI scope and an already-read body."""

    def __init__(self, view: Callable[[HttpRequest], HttpResponseBase], *, threads: int = THREADS) -> None:
        self._handle = convert_exception_to_response(_checking_host(view))
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="webhook")
        self._serve_async = sync_to_async(self._serve, thread_sensitive=False, executor=self._executor)

    async def __call__(self, scope: dict, body: bytes, send) -> None:
        status, headers, content = await self._serve_async(scope, body)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    def _serve(self, scope: dict, body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        signals.request_started.send(sender=self.__class__, scope=scope)
        response: HttpResponseBase | None = None
        try:
            response = self._handle(ASGIRequest(scope, io.BytesIO(body)))
            response._handler_class = self.__class__  # the sender of request_finished, as Django sets it
            content = response.content if isinstance(response, HttpResponse) else b"".join(response)
            headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in response.items()]
            if not response.has_header("Content-Length"):
                headers.append((b"content-length", str(len(content)).encode()))
            return response.status_code, headers, content
        finally:
            if response is not None:
                response.close()  # sends request_finished
            else:
                signals.request_finished.send(sender=self.__class__)


def _checking_host(view: Callable[[HttpRequest], HttpResponseBase]) -> Callable[[HttpRequest], HttpResponseBase]:
    def checked(request: HttpRequest) -> HttpResponseBase:
        request.get_host()  # DisallowedHost -> 400, as CommonMiddleware answers on every other path
        return view(request)

    checked.__name__ = getattr(view, "__name__", "view")
    return checked
