"""``ASGIMiddleware``: each invocation of an ASGI app (FastAPI, Starlette, uvicorn) becomes the
container span of the caller's trace.

The same routes, options and span names as the WSGI middleware. The app sees
CustomAttributes without our keys (each CustomAttributes header it was sent keeps its own
value); ``traceresponse`` is merged into the response CustomAttributes in the
``http.response.start`` message. The span ends with the app's return or exception, or an
``http.disconnect``, whichever is first.
At ``lifespan`` shutdown the tracer provider is flushed before the server is told the app has
stopped. With ``inject_headers`` the app gets a copy of the scope whose ``headers`` carry the
span's context, written by the configured propagator.

FastAPI's built-in request tracing takes its parent from HTTP headers only, which SageMaker
strips: for the requests this middleware traces, and for ``/ping``, it is told to stand
aside (ours is the request's one SERVER span), unless ``inject_headers`` asks for its spans as
children of ours.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Sequence
from typing import Any, TypeAlias

from opentelemetry import trace
from opentelemetry.trace import TracerProvider

from sm_tracing._attributes import (
    HEADER_LOWER,
    HTTP_METHOD,
    SAGEMAKER_HEADERS,
    TARGET_MODEL,
    URL_PATH,
)
from sm_tracing._guard import guard
from sm_tracing._propagation import strip_context
from sm_tracing.container import _websocket
from sm_tracing.container._middleware import (
    MODEL_ROUTE,
    ASGIApp,
    Exchange,
    Message,
    Middleware,
    Receive,
    Scope,
    Send,
    model_name,
    with_trace_headers,
)
from sm_tracing.container._primitive import Invocation
from sm_tracing.container._private import FASTAPI_TELEMETRY, fastapi_traces_itself
from sm_tracing.container._websocket import BIDI_PATH

# The ASGI types go with the middleware, for the modules that build on it.
__all__ = ["ASGIApp", "ASGIMiddleware", "Message", "Receive", "Scope", "Send", "flush"]

RawHeaders: TypeAlias = Sequence[tuple[bytes, bytes]]

_HEADER = HEADER_LOWER.encode("ascii")
# The request headers read: CustomAttributes (None), and the SageMaker ones recorded on the
# span, each with its attribute.
_READ: dict[bytes, str | None] = {
    _HEADER: None,
    **{name.encode("ascii"): attribute for name, attribute in SAGEMAKER_HEADERS},
}


class ASGIMiddleware(Middleware[ASGIApp]):
    """Trace the SageMaker invocations an ASGI app serves, continuing the caller's trace.

    ``ASGIMiddleware(app, **options)``, the options described on ``__init__``.
    """

    def _setup(self) -> None:
        # Only a FastAPI app with its own tracing is told to stand aside; any other app gets
        # the server's scope as it came where nothing else has to change.
        quiet = not self.inject_headers and fastapi_traces_itself(self.app)
        self._quiet: dict[str, Any] = {FASTAPI_TELEMETRY: None} if quiet else {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "lifespan":
                return await self.app(scope, receive, self._lifespan_send(send))
            if kind == "websocket":
                path = scope.get("path") or ""
                if path == BIDI_PATH or path in self._routes:
                    return await _websocket.serve(self, self._quiet, path, scope, receive, send)
            return await self.app(scope, receive, send)
        path = scope.get("path") or ""
        route = self._routes.get(path)
        model = None
        if route is None:
            model = model_name(path)
            if model is None:
                if path == "/ping" and self._quiet:
                    scope = {**scope, **self._quiet}
                return await self.app(scope, receive, send)
            route = MODEL_ROUTE
        started = guard("start the container span", None, self._start, scope, path, route, model)
        if started is None:
            return await self.app(scope, receive, send)
        scope, invocation, attributes, measured = started
        exchange = _Exchange(invocation, attributes, measured, self._echo, receive, send)
        with exchange:
            await self.app(scope, exchange.receive, exchange.send)

    def _lifespan_send(self, send: Send) -> Send:
        """*send*, flushing the tracer provider before the server hears the app shut down:
        servers stopped by SIGTERM (uvicorn, SageMaker) may exit without running atexit."""
        provider = self._tracer_provider

        async def lifespan_send(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                flush(provider)
            await send(message)

        return lifespan_send

    def _start(
        self, scope: Scope, path: str, route: str, model: str | None
    ) -> tuple[Scope, Invocation, dict[str, Any], dict[str, Any] | None]:
        method = scope.get("method") or "GET"
        # The span's HTTP attributes, set with the response's status.
        attributes: dict[str, Any] = {HTTP_METHOD: method, URL_PATH: path}
        headers: RawHeaders = scope.get("headers") or ()
        read: RawHeaders | None = None
        if type(headers) is not list and not isinstance(headers, tuple):
            # Any iterable will do in ASGI: read once, here, and the app gets what was read.
            headers = read = list(headers)
        found: tuple[bytes, bytes] | None = None
        duplicates = False
        for pair in headers:
            if pair[0] in _READ:
                attribute = _READ[pair[0]]
                if attribute is None:
                    duplicates = found is not None
                    if found is None:
                        found = pair
                else:
                    attributes[attribute] = pair[1].decode("latin-1")
        if model is not None and TARGET_MODEL not in attributes:
            attributes[TARGET_MODEL] = model
        custom_attributes = None if found is None else found[1].decode("latin-1")
        invocation, measured = self.begin(custom_attributes, method, route)
        remainder = invocation.remainder
        replaced: RawHeaders | None = None
        if duplicates:
            replaced = _strip_each(headers)
        elif found is not None and remainder is not custom_attributes:
            # A copy: the server's header list stays as it came.
            replaced = list(headers)
            at = replaced.index(found)
            if remainder:
                replaced[at] = (_HEADER, remainder.encode("latin-1"))
            else:
                del replaced[at]
        if self.inject_headers:
            injected = with_trace_headers(headers if replaced is None else replaced, invocation)
            if injected is not None:
                replaced = injected
        if replaced is None:
            replaced = read
        # A copy: the server's scope and header list stay as they came.
        if replaced is not None:
            scope = {**scope, "headers": replaced}
        if self._quiet:
            scope = {**scope, **self._quiet}
        return scope, invocation, attributes, measured


def flush(tracer_provider: TracerProvider | None) -> None:
    """Export the spans *tracer_provider* (or the global one) holds; never raises."""
    provider = tracer_provider or trace.get_tracer_provider()
    force_flush = getattr(provider, "force_flush", None)
    if force_flush is not None:
        guard("flush the spans at shutdown", None, force_flush)


def _strip_each(headers: RawHeaders) -> list[tuple[bytes, bytes]]:
    """*headers* with our keys taken out of each CustomAttributes header on its own."""
    replaced: list[tuple[bytes, bytes]] = []
    for key, value in headers:
        if key != _HEADER:
            replaced.append((key, value))
            continue
        stripped = strip_context(value.decode("latin-1"))
        if stripped:
            replaced.append((key, stripped.encode("latin-1")))
    return replaced


class _Exchange(Exchange):
    """The messages of one traced request: the status and echo go into the response's start;
    the span ends on a disconnect, or when told (the app returned or raised).

    ``send`` is what the app sends through: our own function until the response starts, then
    the server's send itself: a streamed body's messages go straight to the server.
    """

    __slots__ = ("_receive", "_send", "send")

    def __init__(  # noqa: PLR0917 - the request's own parts, none of them optional
        self,
        invocation: Invocation,
        attributes: dict[str, Any],
        measured: dict[str, Any] | None,
        echo: bool,
        receive: Receive,
        send: Send,
    ) -> None:
        super().__init__(invocation, attributes, measured, echo)
        self._receive = receive
        self._send = send
        self.send = functools.partial(self._send_start)

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self.end()
        return message

    def _send_start(self, message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            given = message.get("headers") or ()
            read: list[Any] | None = None
            if type(given) is not list and not isinstance(given, tuple):
                # Any iterable will do in ASGI: read once, here, and the server gets what was
                # read.
                given = read = list(given)
            headers = guard(
                "trace the response status", None, self.respond, message.get("status"), given, True
            )
            if headers is None:
                headers = read
            if headers is not None:
                # A copy: the app may reuse its message.
                message = {**message, "headers": headers}
            # From here on the app's messages go straight to the server: a partial's target
            # can be swapped, a plain function's cannot, and the app keeps what it was given.
            self.send.__setstate__((self._send, (), None, None))  # type: ignore[attr-defined]
        return self._send(message)
