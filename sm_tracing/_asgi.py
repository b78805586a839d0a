"""``ASGIMiddleware``: each invocation of an ASGI app (FastAPI, Starlette, uvicorn) becomes the
container span of the caller's trace.

The same routes, options and span names as the WSGI middleware. The app sees
CustomAttributes without our keys; ``traceresponse`` is merged into the response
CustomAttributes in the ``http.response.start`` message. The span ends with the last
``http.response.body`` (no ``more_body``), an ``http.disconnect``, or the app's exception or
return, whichever is first. At ``lifespan`` shutdown the tracer provider is flushed before
the server is told the app has stopped. With ``inject_headers`` the app gets a copy of the
scope whose ``headers`` carry the span's context, written by the configured propagator.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from typing import Any, TypeAlias

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode, TracerProvider

from sm_tracing import _propagation
from sm_tracing._carriers import HEADER_LOWER, STATUS_CODE, echo_pair
from sm_tracing._container import (
    Invocation,
    read_carrier,
)
from sm_tracing._wsgi import Middleware, model_name, trace_headers

_logger = logging.getLogger(__name__)

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]
RawHeaders: TypeAlias = Sequence[tuple[bytes, bytes]]

_HEADER = HEADER_LOWER.encode("ascii")
_PREFIX = b"x-amzn-sagemaker-"
# The SageMaker request headers recorded on the span, after the common prefix.
_ATTRIBUTES = {
    b"inference-id": "aws.sagemaker.inference_id",
    b"target-model": "aws.sagemaker.target_model",
    b"session-id": "aws.sagemaker.session_id",
}
_MODEL_ROUTE = "/models/{name}/invoke"
_ERROR = Status(StatusCode.ERROR)


class ASGIMiddleware(Middleware[ASGIApp]):
    """Trace the SageMaker invocations an ASGI app serves, continuing the caller's trace.

    ``ASGIMiddleware(app, **options)``, the options described on ``__init__``.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                return await self.app(scope, receive, self._lifespan_send(send))
            return await self.app(scope, receive, send)
        path = scope.get("path") or ""
        route = self._routes.get(path)
        model = None
        if route is None:
            model = model_name(path)
            if model is None:
                return await self.app(scope, receive, send)
            route = _MODEL_ROUTE
        try:
            scope, invocation = self._start(scope, path, route, model)
        except Exception:
            _logger.warning("could not start the container span", exc_info=True)
            return await self.app(scope, receive, send)
        exchange = _Exchange(invocation, receive, send, self._echo)
        try:
            await self.app(scope, exchange.receive, exchange.send)
        except BaseException as exc:
            exchange.end(exc)
            raise
        finally:
            invocation.detach()
        exchange.end(None)

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
    ) -> tuple[Scope, Invocation]:
        method = scope.get("method") or "GET"
        attributes: dict[str, Any] = {"http.request.method": method, "url.path": path}
        headers: RawHeaders = scope.get("headers") or ()
        raw: bytes | None = None
        for key, value in headers:
            if key.startswith(_PREFIX):
                if key == _HEADER:
                    raw = value
                else:
                    attribute = _ATTRIBUTES.get(key[17:])
                    if attribute is not None:
                        attributes[attribute] = value.decode("latin-1")
        if model is not None and "aws.sagemaker.target_model" not in attributes:
            attributes["aws.sagemaker.target_model"] = model
        custom_attributes = pairs = None
        replaced: RawHeaders | None = None
        if raw is not None:
            custom_attributes = raw.decode("latin-1")
            pairs, stripped = read_carrier(custom_attributes)
            if stripped != custom_attributes:
                replaced = _replace(headers, stripped)
        invocation = Invocation(
            custom_attributes,
            name=self._name or f"{method} {route}",
            attributes=attributes,
            tracer=self._tracer,
            policy=self._policy,
            pairs=pairs,
        )
        invocation.start()
        if self._inject_headers:
            # The span's context is the current one now.
            injected = with_trace_headers(
                headers if replaced is None else replaced, invocation.span
            )
            if injected is not None:
                replaced = injected
        if replaced is not None:
            # A copy: the server's scope and header list stay as they came.
            scope = dict(scope)
            scope["headers"] = replaced
        return scope, invocation


def flush(tracer_provider: TracerProvider | None) -> None:
    """Export the spans *tracer_provider* (or the global one) holds; never raises."""
    try:
        provider = tracer_provider or trace.get_tracer_provider()
        force_flush = getattr(provider, "force_flush", None)
        if force_flush is not None:
            force_flush()
    except Exception:
        _logger.warning("could not flush the spans at shutdown", exc_info=True)


def _replace(headers: RawHeaders, stripped: str | None) -> list[tuple[bytes, bytes]]:
    """*headers* with CustomAttributes set to *stripped*, or left out when it is empty."""
    value = stripped.encode("latin-1") if stripped else None
    replaced: list[tuple[bytes, bytes]] = []
    for key, old in headers:
        if key != _HEADER:
            replaced.append((key, old))
        elif value is not None:
            replaced.append((key, value))
    return replaced


def with_trace_headers(headers: RawHeaders, span: Span) -> list[tuple[bytes, bytes]] | None:
    """A new list of request *headers* carrying the context of *span*, the current span, as the
    configured propagator writes it, in place of those of its fields they had; None (and the
    failure logged) when there is nothing to write or it can't be written. Never raises."""
    found = trace_headers(span, None)
    if found is None:
        return None
    written, fields = found
    try:
        drop = {name.encode("latin-1") for name in (*fields, *written)}
        items = [(key, value) for key, value in headers if key.lower() not in drop]
        items.extend(
            (name.encode("latin-1"), value.encode("latin-1")) for name, value in written.items()
        )
    except Exception:
        _logger.warning("could not write the trace context into the request headers", exc_info=True)
        return None
    return items


def with_echo(headers: Iterable[Sequence[bytes]], span: Span) -> list[Sequence[bytes]] | None:
    """Response *headers* with *span* merged as ``traceresponse`` into their CustomAttributes
    (any case, replaced rather than repeated); None when there is nothing to add."""
    span_context = span.get_span_context()
    if not span_context.is_valid:
        return None
    items = list(headers)
    for index, (key, value) in enumerate(items):
        if key.lower() == _HEADER:
            merged = _propagation.echo_value(value.decode("latin-1"), span)
            if merged is None:
                return None
            items[index] = (key, merged.encode("latin-1"))
            return items
    echo = echo_pair(span_context)
    items.append((_HEADER, echo.encode("ascii")))
    return items


class _Exchange:
    """The messages of one traced request: sets the status and echo, ends the span."""

    __slots__ = ("_echo", "_ended", "_invocation", "_receive", "_send")

    def __init__(self, invocation: Invocation, receive: Receive, send: Send, echo: bool) -> None:
        self._invocation = invocation
        self._receive = receive
        self._send = send
        self._echo = echo
        self._ended = False

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self.end(None)
        return message

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            message = self._start(message)
        elif kind == "http.response.body" and not message.get("more_body", False):
            await self._send(message)
            self.end(None)
            return
        await self._send(message)

    def _start(self, message: Message) -> Message:
        try:
            span = self._invocation.span
            code = int(message["status"])
            span.set_attribute(STATUS_CODE, code)
            if code >= 500:
                span.set_status(_ERROR)
            if self._echo:
                headers = with_echo(message.get("headers") or (), span)
                if headers is not None:
                    # A copy: the app may reuse its message.
                    message = {**message, "headers": headers}
        except Exception:
            _logger.warning("could not trace the response status", exc_info=True)
        return message

    def end(self, error: BaseException | None) -> None:
        """End the span once, with *error* recorded when given."""
        if not self._ended:
            self._ended = True
            self._invocation.end(error)
