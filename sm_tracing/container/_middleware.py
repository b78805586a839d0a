"""What the WSGI and ASGI middlewares share: their options, the routes they trace, one request's
lifecycle from its response status to its end, the trace echo written into a response's header
list, and the propagator's request headers."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from typing import Any, Generic, TypeAlias, TypeVar

from opentelemetry.metrics import MeterProvider
from opentelemetry.propagate import get_global_textmap
from opentelemetry.propagators.textmap import Setter, TextMapPropagator
from opentelemetry.trace import Status, StatusCode, TracerProvider

from sm_tracing._attributes import (
    ERROR_TYPE,
    HEADER,
    HEADER_LOWER,
    HTTP_METHOD,
    HTTP_ROUTE,
    SERVER_DURATION,
    STATUS_CODE,
)
from sm_tracing._codec import format_echo
from sm_tracing._guard import guard
from sm_tracing._propagation import echo_value
from sm_tracing._telemetry import Recording, duration_histogram, get_tracer
from sm_tracing.container._primitive import (
    Invocation,
    Lifecycle,
    RemoteContext,
    inject_headers_option,
    remote_context_policy,
)

_logger = logging.getLogger(__name__)

App = TypeVar("App")
Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]
MODEL_ROUTE = "/models/{name}/invoke"
_HEADER_BYTES = HEADER_LOWER.encode("ascii")
_HEADER_LENGTH = len(HEADER)
_ERROR = Status(StatusCode.ERROR)


def traced_routes(trace_ping: bool, paths: Iterable[str] | None) -> dict[str, str]:
    """The exact paths traced, each with the route its span is named after."""
    routes = {"/invocations": "/invocations"}
    if trace_ping:
        routes["/ping"] = "/ping"
    for path in paths or ():
        routes[path] = path
    return routes


def model_name(path: str) -> str | None:
    """The model of a multi-model path ``/models/{name}/invoke``, or None for another path."""
    if path.startswith("/models/") and path.endswith("/invoke") and len(path) > 15:
        return path[8:-7]
    return None


class Middleware(Generic[App]):
    """The options of a middleware, decided once, at construction."""

    def __init__(
        self,
        app: App,
        *,
        tracer_provider: TracerProvider | None = None,
        remote_context: RemoteContext | None = None,
        trace_ping: bool = False,
        echo: bool = True,
        paths: Iterable[str] | None = None,
        name: str | None = None,
        inject_headers: bool | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        """Wrap *app*. Options: ``tracer_provider``; ``remote_context`` (``"continue"``,
        ``"link"`` or ``"ignore"``, else ``SM_TRACING_REMOTE_CONTEXT``); ``trace_ping``
        (False); ``echo`` (True: ``traceresponse`` in the response CustomAttributes);
        ``paths`` (more exact paths to trace, each span named after its path); ``name`` (one
        span name for all); ``inject_headers`` (else ``SM_TRACING_INJECT_HEADERS``, else False:
        the span's context written by the configured propagator into the request headers the
        app sees, replacing any it had, so an app that traces from a ``traceparent`` header
        makes its spans children of ours); ``meter_provider`` (else the global one: where
        ``http.server.request.duration`` is recorded, by method, route, status and error
        type)."""
        if not callable(app):
            raise TypeError(f"{type(self).__name__} wraps an application, not {app!r}")
        if isinstance(paths, str):
            raise TypeError("paths must be a collection of paths, not a str")
        self.app = app
        self._tracer_provider = tracer_provider
        self._tracer = get_tracer(tracer_provider)
        self._policy = remote_context_policy(remote_context)
        self._routes = traced_routes(trace_ping, paths)
        self.inject_headers = inject_headers_option(inject_headers)
        self._echo = echo
        self._name = name
        self._histogram = duration_histogram(SERVER_DURATION, meter_provider)
        self._recording = Recording(meter_provider)
        self._setup()

    def _setup(self) -> None:
        """What a middleware decides at construction beyond the shared options."""

    def begin(
        self, carrier: str | None, method: str, route: str, *, query: bool = False
    ) -> tuple[Invocation, dict[str, Any] | None]:
        """Begin the invocation of a request of *method* on *route* from its *carrier*
        (CustomAttributes, or with *query* a WebSocket query string, whose session is not
        measured): the one way every request of the middlewares starts. With it, the metric's
        attributes when the request's duration is measured. Raises what fails: the caller
        guards."""
        name = self._name or f"{method} {route}"
        measured: dict[str, Any] | None = None
        if query:
            invocation = Invocation(carrier, self._tracer, self._policy, name, query=True)
        else:
            measure = None
            histogram = self._histogram
            if histogram is not None and self._recording():
                measured = {HTTP_METHOD: method, HTTP_ROUTE: route}
                measure = (histogram, measured)
            invocation = Invocation(carrier, self._tracer, self._policy, name, measure)
        invocation.begin()
        return invocation, measured


class Exchange(Lifecycle):
    """What one traced request's response records, under either middleware: its status on the
    span (and the metric), the echo in its headers, and the span's end, once.

    *attributes* are the span's, set with the status; *measured*, the metric's attributes, None
    when no duration is measured; *echo*, whether to echo."""

    __slots__ = ("_attributes", "_echo", "_measured")

    def __init__(
        self,
        invocation: Invocation,
        attributes: dict[str, Any],
        measured: dict[str, Any] | None,
        echo: bool,
    ) -> None:
        self._invocation = invocation
        self._attributes = attributes
        self._measured = measured
        self._echo = echo

    def respond(
        self, status: Any, headers: Sequence[tuple[Any, Any]], binary: bool
    ) -> list[Any] | None:
        """Called under the caller's guard: may raise.

        Record the response's *status* (ASGI's number, or WSGI's status line, *binary* telling
        which: ``bytes`` headers are ASGI's), ERROR from 500 on; the response *headers* with
        the echo (see :func:`with_echo`), or None when they stay as they are."""
        invocation = self._invocation
        span = invocation.span
        code = int(status) if binary else int(status[:3])
        attributes = self._attributes
        attributes[STATUS_CODE] = code
        span.set_attributes(attributes)
        measured = self._measured
        if measured is not None:
            measured[STATUS_CODE] = code
        if code >= 500:
            span.set_status(_ERROR)
            if measured is not None:
                measured[ERROR_TYPE] = str(code)
        return with_echo(headers, invocation, binary) if self._echo else None

    def end(self, error: BaseException | None = None) -> None:
        """End the span once, with *error* recorded when given; the request's attributes are
        recorded where no response status was."""
        invocation = self._invocation
        if not invocation.ended:
            attributes = self._attributes
            if STATUS_CODE not in attributes:
                guard("record the request", None, invocation.span.set_attributes, attributes)
            invocation.end(error)


def with_echo(
    headers: Sequence[tuple[Any, Any]], invocation: Invocation, binary: bool
) -> list[Any] | None:
    """Called under the caller's guard: may raise.

    A new list of response *headers* (``bytes`` pairs when *binary*, as ASGI has them, else
    ``str``, as WSGI) with *invocation*'s span echoed as ``traceresponse`` in their
    CustomAttributes, the app's own value first, matched in any case and replaced rather than
    repeated; None when nothing is to be added."""
    span_context = invocation.span.get_span_context()
    for pair in headers:
        if len(pair[0]) == _HEADER_LENGTH and pair[0].lower() in (HEADER_LOWER, _HEADER_BYTES):
            name, value = pair
            merged = echo_value(
                value.decode("latin-1") if binary else value, span_context, invocation.elapsed_us()
            )
            if merged is None:
                return None
            copy = list(headers)
            copy[copy.index(pair)] = (name, merged.encode("latin-1") if binary else merged)
            return copy
    # The common case, the app set no CustomAttributes: the echo is all there is. A
    # SpanContext is the tuple (trace id, span id, remote, flags, state, valid).
    trace_id, span_id, _, flags, _, valid = span_context
    if not valid:
        return None
    merged = format_echo(trace_id, span_id, flags, invocation.elapsed_us())
    if binary:
        return [*headers, (_HEADER_BYTES, merged.encode("ascii"))]
    return [*headers, (HEADER, merged)]


class _LowerCaseSetter(Setter[dict[str, str]]):
    def set(self, carrier: dict[str, str], key: str, value: str) -> None:
        carrier[key.lower()] = value


_SETTER = _LowerCaseSetter()
_fields_cache: tuple[TextMapPropagator | None, frozenset[str]] = (None, frozenset())


def _fields(propagator: TextMapPropagator) -> frozenset[str]:
    global _fields_cache  # noqa: PLW0603 - a one-entry cache, swapped whole, so no lock is needed
    cached_for, fields = _fields_cache
    if cached_for is not propagator:
        fields = frozenset(field.lower() for field in propagator.fields)
        _fields_cache = (propagator, fields)
    return fields


def trace_headers(invocation: Invocation) -> tuple[dict[str, str], frozenset[str]] | None:
    """The request headers (lower-cased names) the configured propagator writes for
    *invocation*'s span, and every header name to take out of the request before adding them
    (its fields and what it wrote). None when the span context is invalid or nothing is
    written. Raises what the propagator raises: the caller guards."""
    if not invocation.span.get_span_context().is_valid:
        return None
    propagator = get_global_textmap()
    written: dict[str, str] = {}
    propagator.inject(written, context=invocation.context, setter=_SETTER)
    if not written:
        return None
    return written, _fields(propagator) | frozenset(written)


def with_trace_headers(
    headers: Iterable[tuple[bytes, bytes]], invocation: Invocation
) -> list[tuple[bytes, bytes]] | None:
    """A new list of request *headers* carrying *invocation*'s context as the configured
    propagator writes it, in place of those of its fields they had; None (and the failure
    logged) when there is nothing to write or it can't be written. Never raises."""
    return guard(
        "write the trace context into the request headers",
        None,
        _with_trace_headers,
        headers,
        invocation,
    )


def _with_trace_headers(
    headers: Iterable[tuple[bytes, bytes]], invocation: Invocation
) -> list[tuple[bytes, bytes]] | None:
    found = trace_headers(invocation)
    if found is None:
        return None
    written, drop = found
    names = {name.encode("latin-1") for name in drop}
    items = [(key, value) for key, value in headers if key.lower() not in names]
    items.extend(
        (name.encode("latin-1"), value.encode("latin-1")) for name, value in written.items()
    )
    return items
