"""The one container primitive: extract, start, attach, and in the end detach and end.

Every container adapter (the decorator, WSGI, ASGI, the model-server contexts) is built on
:class:`Invocation`, so they all pick the parent, the span kind and the remote-context policy
the same way.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from functools import lru_cache
from types import TracebackType
from typing import Literal

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.util.types import AttributeValue

from sm_tracing import _propagation
from sm_tracing.version import __version__

_logger = logging.getLogger(__name__)

RemoteContext = Literal["continue", "link", "ignore"]
REMOTE_CONTEXT_ENV = "SM_TRACING_REMOTE_CONTEXT"
_POLICIES: tuple[RemoteContext, ...] = ("continue", "link", "ignore")


def remote_context_policy(remote_context: str | None = None) -> RemoteContext:
    """The policy in force: the argument, else ``SM_TRACING_REMOTE_CONTEXT``, else continue.

    An unknown argument is a programming error and raises ValueError; an unknown value in the
    environment is logged and ignored, since it must not take a serving container down.
    """
    if remote_context is not None:
        for policy in _POLICIES:
            if remote_context == policy:
                return policy
        raise ValueError(f"remote_context must be one of {_POLICIES}, not {remote_context!r}")
    value = os.environ.get(REMOTE_CONTEXT_ENV, "").strip().lower()
    for policy in _POLICIES:
        if value == policy:
            return policy
    if value:
        _logger.warning("ignoring %s=%r: expected one of %s", REMOTE_CONTEXT_ENV, value, _POLICIES)
    return "continue"


@lru_cache(maxsize=32)
def get_tracer(tracer_provider: TracerProvider | None = None) -> trace.Tracer:
    """This library's tracer from *tracer_provider*, or from the global one."""
    return trace.get_tracer("sm_tracing", __version__, tracer_provider=tracer_provider)


class Invocation:
    """One traced invocation in a container.

    ``start()`` extracts the caller's context from CustomAttributes, starts the span (SERVER
    where no span is active, INTERNAL under one) and makes it current; ``detach()`` restores
    the context that was current before; ``end()`` ends the span, recording an error if one
    is given. Adapters whose response outlives the handler (streamed bodies) detach when the
    handler returns and end when the last chunk is sent. As a context manager it does all three.
    """

    __slots__ = ("_attributes", "_custom_attributes", "_name", "_policy", "_token", "_tracer", "span")

    def __init__(
        self,
        custom_attributes: str | None,
        *,
        name: str = "invocations",
        attributes: Mapping[str, AttributeValue] | None = None,
        tracer: trace.Tracer,
        policy: RemoteContext,
    ) -> None:
        self._custom_attributes = custom_attributes
        self._name = name
        self._attributes = attributes
        self._tracer = tracer
        self._policy = policy
        self._token: object | None = None
        self.span: Span = trace.INVALID_SPAN

    def start(self) -> Span:
        """Start the span and make it current; never raises for bad input."""
        current = otel_context.get_current()
        active = trace.get_current_span(current).get_span_context()
        parent = current
        links: list[Link] | None = None
        if self._custom_attributes and self._policy != "ignore":
            remote = _propagation.extract_context(
                self._custom_attributes, current if self._policy == "continue" else None
            )
            remote_span = trace.get_current_span(remote).get_span_context()
            if remote_span.is_valid:
                if self._policy == "link":
                    links = [Link(remote_span)]
                elif not active.is_valid or active.trace_id != remote_span.trace_id:
                    # Under a local span of the same trace (our middleware, say) we are its
                    # child; otherwise the caller's span is the parent, which joins the trace.
                    parent = remote
        kind = SpanKind.INTERNAL if active.is_valid else SpanKind.SERVER
        span = self._tracer.start_span(
            self._name, context=parent, kind=kind, attributes=self._attributes, links=links
        )
        self.span = span
        self._token = otel_context.attach(trace.set_span_in_context(span, parent))
        return span

    def detach(self) -> None:
        """Make current again what was current before ``start()``; safe to call twice."""
        token, self._token = self._token, None
        if token is not None:
            otel_context.detach(token)  # type: ignore[arg-type]

    def end(self, error: BaseException | None = None) -> None:
        """End the span, with ERROR status and the exception recorded when *error* is given."""
        span = self.span
        if error is not None:
            record_error(span, error)
        span.end()

    def echo(self, custom_attributes: str | None) -> str | None:
        """The response CustomAttributes with this span echoed as ``traceresponse``, after what
        the application set; None where the echo can't be added (then send the app's value)."""
        return _propagation.echo_value(custom_attributes, self.span)

    def __enter__(self) -> Span:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        try:
            self.end(exc)
        finally:
            self.detach()
        return False


def record_error(span: Span, error: BaseException) -> None:
    """Record *error* on *span* and set its status to ERROR."""
    if span.is_recording():
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


def continue_trace(
    custom_attributes: str | None,
    *,
    name: str = "invocations",
    attributes: Mapping[str, AttributeValue] | None = None,
    tracer_provider: TracerProvider | None = None,
    remote_context: RemoteContext | None = None,
) -> Invocation:
    """Continue the caller's trace from the CustomAttributes of a request.

    A context manager: extracts the remote context, starts the container span (SERVER where no
    span is active, INTERNAL under one) and yields it; an exception is recorded and re-raised
    unchanged, and the context is always detached. ``remote_context`` (or the environment
    variable ``SM_TRACING_REMOTE_CONTEXT``) chooses ``"continue"`` (a child of the caller's
    span), ``"link"`` (a new trace linked to it) or ``"ignore"``. Malformed input gives a new
    root span. The returned object's ``echo(value)`` gives the response CustomAttributes with
    the span's ``traceresponse`` merged in.
    """
    return Invocation(
        custom_attributes,
        name=name,
        attributes=attributes,
        tracer=get_tracer(tracer_provider),
        policy=remote_context_policy(remote_context),
    )
