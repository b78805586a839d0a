"""``WSGIMiddleware``: each invocation of a WSGI app (Flask, gunicorn, any WSGI server) becomes
the container span of the caller's trace.

Traced: ``/invocations`` and multi-model ``/models/{name}/invoke``, plus ``/ping`` when asked
and any extra ``paths``. The span is named after the method and route (``POST /invocations``,
``POST /models/{name}/invoke``) unless ``name`` is given. The app sees CustomAttributes
without our keys; the response gets ``traceresponse`` merged into its CustomAttributes before
the status line leaves. The span ends when the body is exhausted or closed (a streamed body is
traced to its last chunk), or when the app returns a body already materialised as a list.
The SageMaker attributes are set when the span starts; the HTTP ones (method, path, status)
with the status, in one call, as this is every request's path. With ``inject_headers`` the
configured propagator also writes the span's context into the request headers the app sees
(``HTTP_TRACEPARENT`` ...), for an app that traces from them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, TypeAlias

from sm_tracing._attributes import (
    HEADER,
    HTTP_METHOD,
    INFERENCE_ID,
    SAGEMAKER_ENVIRON_KEYS,
    SESSION_ID,
    TARGET_MODEL,
    URL_PATH,
    environ_key,
)
from sm_tracing._guard import guard
from sm_tracing.container._middleware import (
    MODEL_ROUTE,
    Exchange,
    Middleware,
    model_name,
    trace_headers,
)
from sm_tracing.container._primitive import Invocation

ExcInfo: TypeAlias = tuple[type[BaseException], BaseException, TracebackType | None]
Headers: TypeAlias = list[tuple[str, str]]
StartResponse: TypeAlias = Callable[..., Callable[[bytes], object]]
Environ: TypeAlias = dict[str, Any]
WSGIApp: TypeAlias = Callable[[Environ, StartResponse], Iterable[bytes]]

_KEY = environ_key(HEADER)
# The environ keys of the SageMaker headers recorded on the span, in their table's order.
(_INFERENCE_ID, _), (_TARGET_MODEL, _), (_SESSION_ID, _) = SAGEMAKER_ENVIRON_KEYS
_END: Any = object()


class WSGIMiddleware(Middleware[WSGIApp]):
    """Trace the SageMaker invocations a WSGI app serves, continuing the caller's trace.

    ``WSGIMiddleware(app, **options)``, the options described on ``__init__``.
    """

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or ""
        route = self._routes.get(path)
        model = None
        if route is None:
            model = model_name(path)
            if model is None:
                return self.app(environ, start_response)
            route = MODEL_ROUTE
        method = environ.get("REQUEST_METHOD") or "GET"
        # The span's HTTP attributes, set with the response's status.
        attributes: dict[str, Any] = {HTTP_METHOD: method, URL_PATH: path}
        started = guard(
            "start the container span", None, self._start, environ, attributes, route, model
        )
        if started is None:
            return self.app(environ, start_response)
        invocation, measured = started
        response = _Response(invocation, attributes, measured, self._echo, start_response)
        with response:
            body = self.app(environ, response.start_response)
        if type(body) is list:
            # Already materialised: nothing of the app's runs after this.
            response.whole()
            return body
        response.body = body
        return response

    def _start(
        self, environ: Environ, attributes: dict[str, Any], route: str, model: str | None
    ) -> tuple[Invocation, dict[str, Any] | None]:
        get = environ.get
        value = get(_INFERENCE_ID)
        if value is not None:
            attributes[INFERENCE_ID] = value
        value = get(_TARGET_MODEL) or model
        if value is not None:
            attributes[TARGET_MODEL] = value
        value = get(_SESSION_ID)
        if value is not None:
            attributes[SESSION_ID] = value
        raw = get(_KEY)
        invocation, measured = self.begin(raw, attributes[HTTP_METHOD], route)
        remainder = invocation.remainder
        if remainder is not raw:
            if remainder:
                environ[_KEY] = remainder
            else:
                del environ[_KEY]
        if self.inject_headers:
            inject_environ(environ, invocation)
        return invocation, measured


def inject_environ(environ: Environ, invocation: Invocation) -> None:
    """Write *invocation*'s context into *environ* as the request headers the configured
    propagator reads (``HTTP_TRACEPARENT`` ...), replacing those of its fields the request had.
    Never raises: on failure (logged) the environ is left as it was."""
    guard("write the trace context into the request headers", None, _inject, environ, invocation)


def _inject(environ: Environ, invocation: Invocation) -> None:
    found = trace_headers(invocation)
    if found is None:
        return
    written, drop = found
    for name in drop:
        environ.pop(environ_key(name), None)
    for name, value in written.items():
        environ[environ_key(name)] = value


class _Response(Exchange):
    """One traced request's response.

    The app's status and headers reach the server, the echo merged in, with the body's first
    chunk: when it is ready, or the app writes, or the body turns out empty (WSGI servers send
    the headers no sooner either), so the container's time the echo carries is its time to
    first byte, streamed or not. The body is passed through, current while the app produces
    it; the span ends when it is exhausted or closed, or when the app fails, whichever is
    first. Under ``with``, the span is current, and ends only if the block fails: the app's
    call, or one step of its body.
    """

    __slots__ = ("_iterator", "_pending", "_start_response", "_write", "body")

    def __init__(
        self,
        invocation: Invocation,
        attributes: dict[str, Any],
        measured: dict[str, Any] | None,
        echo: bool,
        start_response: StartResponse,
    ) -> None:
        super().__init__(invocation, attributes, measured, echo)
        self._start_response = start_response
        self._pending: tuple[str, Headers, ExcInfo | None] | None = None
        self._write: Callable[[bytes], object] | None = None
        # Set when the app's body is not a list: the server then iterates this response.
        self.body: Iterable[bytes]
        self._iterator: Iterator[bytes]

    def __exit__(self, kind: object, error: BaseException | None, tb: object) -> None:
        self._invocation.detach()
        if error is not None:
            self.end(error)

    def start_response(
        self, status: str, headers: Headers, exc_info: ExcInfo | None = None
    ) -> Callable[[bytes], object]:
        """What the app calls: holds its status and headers for the first byte."""
        if self._write is not None or (self._pending is not None and exc_info is None):
            # Headers already given: the server's own rules apply (an error replaces them
            # only while unsent; a second call without one is a mistake it reports).
            self.hand_on()
            return self._start_response(status, headers, exc_info)
        self._pending = (status, headers, exc_info)
        return self.write

    def write(self, data: bytes) -> object:
        """The app's ``write()`` (given by ``start_response``): its first call hands the
        headers on."""
        write = self._write or self.hand_on()
        assert write is not None, "start_response comes first"
        return write(data)

    def hand_on(self) -> Callable[[bytes], object] | None:
        """Give the server the app's status and headers, traced and echoed, once; the
        server's ``write``, or None while the app has given no status (the server says so
        when it sees the body)."""
        write = self._write
        if write is None and self._pending is not None:
            status, headers, exc_info = self._pending
            echoed = guard("trace the response status", None, self.respond, status, headers, False)
            write = self._write = self._start_response(status, echoed or headers, exc_info)
        return write

    def whole(self) -> None:
        """The app's body is a list, ready: the headers go, and the span ends."""
        try:
            self.hand_on()
        finally:
            self.end()

    def __iter__(self) -> Iterator[bytes]:
        self._iterator = iter(self.body)
        return self

    def __next__(self) -> bytes:
        # The span is current while the app's body produces a chunk, not while it is sent.
        with self:
            chunk = next(self._iterator, _END)
            if chunk is not _END and self._write is None:
                # Even an empty chunk: gunicorn sends the headers with whatever comes first.
                self.hand_on()
        if chunk is _END:
            self.whole()  # an empty body sends the headers alone
            raise StopIteration
        return chunk

    def close(self) -> None:
        """Close the app's body (WSGI servers call this when done or when the client went
        away) and end the span."""
        close = getattr(self.body, "close", None)
        if close is not None:
            with self:
                close()
        self.end()
