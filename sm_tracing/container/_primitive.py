"""The one container primitive: read, start, attach, and in the end detach and end.

Every container adapter (the decorator, WSGI, ASGI, the WebSocket session, the model-server
contexts) is built on :class:`Invocation`, so they all read the carrier, pick the parent, the
span kind and the remote-context policy the same way, and end their spans the same way: each
adapter's per-call object is a :class:`Lifecycle`, whose ``with`` makes the span current
around the application's code and ends it with what that code raised.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from contextvars import Token
from time import perf_counter_ns
from typing import Literal

from opentelemetry import trace
from opentelemetry.context import Context, get_current
from opentelemetry.context import attach as attach_context
from opentelemetry.context import detach as detach_context
from opentelemetry.metrics import Histogram, MeterProvider
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, TracerProvider
from opentelemetry.util.types import AttributeValue

from sm_tracing import _propagation
from sm_tracing._attributes import ERROR_TYPE, HANDLER, INVOCATION_DURATION
from sm_tracing._guard import guard
from sm_tracing._propagation import carried
from sm_tracing._telemetry import Recording, duration_histogram, end_span, error_type, get_tracer

_logger = logging.getLogger(__name__)

RemoteContext = Literal["continue", "link", "ignore"]
REMOTE_CONTEXT_ENV = "SM_TRACING_REMOTE_CONTEXT"
_POLICIES: tuple[RemoteContext, ...] = ("continue", "link", "ignore")
SERVER, INTERNAL = SpanKind.SERVER, SpanKind.INTERNAL


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


INJECT_HEADERS_ENV = "SM_TRACING_INJECT_HEADERS"
_ON = frozenset({"true", "1", "yes", "on"})
_OFF = frozenset({"false", "0", "no", "off"})


def inject_headers_option(inject_headers: bool | None = None) -> bool:
    """Whether a middleware writes its span's context into the request headers the app sees:
    the argument, else ``SM_TRACING_INJECT_HEADERS`` (true/false, 1/0, yes/no, on/off, in any
    case), else off. Any other value in the environment is logged and means off."""
    if inject_headers is not None:
        return bool(inject_headers)
    value = os.environ.get(INJECT_HEADERS_ENV, "").strip().lower()
    if value in _ON:
        return True
    if value and value not in _OFF:
        _logger.warning(
            "ignoring %s=%r: expected true or false; not injecting", INJECT_HEADERS_ENV, value
        )
    return False


class Invocation:
    """One traced invocation in a container: the one primitive under every adapter.

    Built from the request's raw CustomAttributes, read once when it starts: ``remainder`` is
    then the value the application should see (our keys removed; the very same string when
    there were none; ``""`` when nothing of the caller's is left). ``start()`` starts the span
    (SERVER where no span is active, INTERNAL under one) with the caller's context as its
    parent under ``"continue"``, as a link under ``"link"``, or not at all under ``"ignore"``;
    ``attach()`` makes it current and ``detach()`` restores the context that was current
    before; ``end()`` ends the span, once, recording an error if one is given. As a context
    manager (what ``continue_trace`` gives) it does all of them.

    With *measure*, a histogram and the attributes (bounded ones: no ids) to record the
    invocation's duration with, in seconds, when it ends, the error's type added when there is
    one. *links* are further spans to link (the callers of a batch whose items can't be told
    apart); a *root* reads no carrier and starts a new trace of its own (the work of a batch
    that serves many callers). With *query*, the carrier is a WebSocket query string rather
    than CustomAttributes. A request that brings no context of ours takes the one in the
    environment (``TRACEPARENT`` ...: a batch transform job's), if any. Bad input never raises:
    it gives a new root.
    """

    __slots__ = (
        "_attributes",
        "_began",
        "_context",
        "_custom_attributes",
        "_links",
        "_measure",
        "_name",
        "_policy",
        "_query",
        "_root",
        "_token",
        "_tracer",
        "ended",
        "remainder",
        "span",
    )

    def __init__(
        self,
        custom_attributes: str | None,
        tracer: trace.Tracer,
        policy: RemoteContext,
        name: str = "invocations",
        measure: tuple[Histogram, dict[str, AttributeValue]] | None = None,
        *,
        query: bool = False,
        attributes: Mapping[str, AttributeValue] | None = None,
        links: Sequence[SpanContext] = (),
        root: bool = False,
    ) -> None:
        self._custom_attributes = custom_attributes
        self._query = query
        self._began = 0  # set when it begins
        self._measure = measure
        self.remainder = custom_attributes
        self._name = name
        self._attributes = attributes
        self._tracer = tracer
        self._policy = policy
        self._links = links
        self._root = root
        self.ended = False
        self._token: Token[Context] | None = None
        self._context: Context | None = None
        self.span: Span = trace.INVALID_SPAN

    def start(self, *, attach: bool = True) -> Span:
        """Read the carrier (setting ``remainder``) and start the span, made current with
        *attach*; never raises: when the span can't be started the call goes on untraced."""
        span = guard("start the container span", None, self.begin)
        if span is None:
            self.span = span = trace.INVALID_SPAN
            self._context = get_current()
        if attach:
            self.attach()
        return span

    def begin(self) -> Span:
        """``start()`` for an adapter that guards its own entry point: raises what fails."""
        self._began = perf_counter_ns()
        current = get_current()
        if self._root:
            parent: Context | None = Context()
            kind, active, under_span = INTERNAL, trace.INVALID_SPAN_CONTEXT, False
        else:
            parent = current
            # A server's request usually starts in an empty context: no span is active there.
            active_span = trace.get_current_span(current) if current else trace.INVALID_SPAN
            if active_span is trace.INVALID_SPAN:
                active, under_span = trace.INVALID_SPAN_CONTEXT, False
            else:
                active = active_span.get_span_context()
                under_span = active.is_valid
            kind = INTERNAL if under_span else SERVER
        links = [Link(link) for link in self._links] if self._links else None
        policy = self._policy
        remote = None
        raw = self._custom_attributes
        base = current if policy == "continue" else None
        if raw:
            self.remainder, remote = carried(raw, base, policy != "ignore", self._query)
        if remote is None and policy != "ignore" and not self._root:
            # No carrier: a batch transform job's records find the job's context in the
            # environment its containers were started with.
            remote = _propagation.environment_context(base)
        if remote is not None:
            if policy == "continue" and not under_span:
                # The remote context is the current one plus what came: a valid span in it is
                # the parent, an invalid one makes a root, as no carrier would.
                parent = remote
            else:
                remote_span = trace.get_current_span(remote).get_span_context()
                if not remote_span.is_valid:
                    pass  # nothing usable came: a new root, or a child of the active span
                elif policy == "link":
                    links = [Link(remote_span), *(links or ())]
                elif active.trace_id != remote_span.trace_id:
                    # Under a local span of the same trace (our middleware, say) we are its
                    # child; otherwise the caller's span is the parent, which joins the trace.
                    parent = remote
        span = self._tracer.start_span(self._name, parent, kind, None, links)
        if span is trace.INVALID_SPAN and parent is not None:
            # Without an SDK, opentelemetry-api before 1.40 gives the invalid span, not one
            # carrying the parent's context as later releases do: the caller's context would
            # neither be echoed nor passed on.
            parent_span = trace.get_current_span(parent).get_span_context()
            if parent_span.is_valid:
                span = trace.NonRecordingSpan(parent_span)
        if self._attributes:
            span.set_attributes(self._attributes)
        self._context = trace.set_span_in_context(span, parent)
        self.span = span
        return span

    @property
    def context(self) -> Context | None:
        """The context that makes the span current, once started."""
        return self._context

    def attach(self) -> None:
        """Make the span current (again), once started."""
        if self._token is None and self._context is not None:
            self._token = attach_context(self._context)

    def detach(self) -> None:
        """Make current again what was current before ``attach()``; safe to call twice."""
        token, self._token = self._token, None
        if token is not None:
            detach_context(token)

    def end(self, error: BaseException | None = None) -> None:
        """End the span, once, with ERROR status and the exception's type recorded when
        *error* is given, and its duration measured. Never raises: a span processor that fails
        on end costs a log line."""
        if self.ended:
            return
        self.ended = True
        guard("end the container span", None, self._end, error)

    def _end(self, error: BaseException | None) -> None:
        measure = self._measure
        try:
            if measure is not None:
                histogram, attributes = measure
                if error is not None:
                    attributes[ERROR_TYPE] = error_type(error)
                histogram.record((perf_counter_ns() - self._began) / 1e9, attributes)
        finally:
            # Ended whatever the measurement did.
            if error is None:
                self.span.end()
            else:
                end_span(self.span, error)

    def echo(self, custom_attributes: str | None) -> str | None:
        """The response CustomAttributes with this span echoed as ``traceresponse``, after what
        the application set; None where the echo can't be added (then send the app's value)."""
        return guard(
            "echo the trace into the response",
            None,
            _propagation.echo_value,
            custom_attributes,
            self.span.get_span_context(),
            self.elapsed_us(),
        )

    def elapsed_us(self) -> int:
        """Whole microseconds since the invocation began."""
        return (perf_counter_ns() - self._began) // 1000

    def current(self) -> Current:
        """A ``with`` inside which the span is current, and which ends nothing."""
        return Current(self)

    def __enter__(self) -> Span:
        return self.start(attach=True)

    def __exit__(self, kind: object, error: BaseException | None, tb: object) -> None:
        # What was current before comes back first: the span ends, and its duration is
        # recorded, in the caller's context, as OpenTelemetry's instrumentations record theirs.
        self.detach()
        self.end(error)


class Current:
    """``Invocation.current()``."""

    __slots__ = ("_invocation",)

    def __init__(self, invocation: Invocation) -> None:
        self._invocation = invocation

    def __enter__(self) -> None:
        self._invocation.attach()

    def __exit__(self, *exc_info: object) -> None:
        self._invocation.detach()


class Lifecycle:
    """One call as an adapter serves it: its spans, and ``_invocation``, the one made current.
    ``with`` it around the code that serves the call: that span is current inside; on the way
    out the spans end, with the exception recorded when the code raised one, and what was
    current before is current again. An adapter whose response outlives the block ends them
    later, through ``end``, which ends them once."""

    __slots__ = ("_invocation",)

    _invocation: Invocation

    def end(self, error: BaseException | None = None) -> None:
        """End the spans, once, with *error* recorded when given. Never raises."""
        raise NotImplementedError

    def current(self) -> Current:
        """A ``with`` inside which the call's span is current, and which ends nothing."""
        return Current(self._invocation)

    def __enter__(self) -> object:
        self._invocation.attach()
        return self

    def __exit__(self, kind: object, error: BaseException | None, tb: object) -> None:
        # As Invocation's: neither step raises.
        self._invocation.detach()
        self.end(error)


# Whether the global meter provider records: one answer for every continue_trace() call.
_global_recording = Recording(None)


def continue_trace(
    custom_attributes: str | None,
    *,
    name: str = "invocations",
    attributes: Mapping[str, AttributeValue] | None = None,
    tracer_provider: TracerProvider | None = None,
    remote_context: RemoteContext | None = None,
    meter_provider: MeterProvider | None = None,
) -> Invocation:
    """Continue the caller's trace from the CustomAttributes of a request.

    A context manager: extracts the remote context, starts the container span (SERVER where no
    span is active, INTERNAL under one) and yields it; an exception is recorded and re-raised
    unchanged, and the context is always detached. ``remote_context`` (or the environment
    variable ``SM_TRACING_REMOTE_CONTEXT``) chooses ``"continue"`` (a child of the caller's
    span), ``"link"`` (a new trace linked to it) or ``"ignore"``. Malformed input gives a new
    root span. The returned object's ``echo(value)`` gives the response CustomAttributes with
    the span's ``traceresponse`` merged in. Its duration is recorded in seconds as
    ``aws.sagemaker.container.invocation.duration`` (by ``name`` and error type) through
    ``meter_provider``, or the global MeterProvider once one is installed (looked up at most once
    a second).
    """
    measure: tuple[Histogram, dict[str, AttributeValue]] | None = None
    if meter_provider is not None or _global_recording():
        histogram = duration_histogram(INVOCATION_DURATION, meter_provider)
        if histogram is not None:
            measure = (histogram, {HANDLER: name})
    return Invocation(
        custom_attributes,
        get_tracer(tracer_provider),
        remote_context_policy(remote_context),
        name,
        measure=measure,
        attributes=attributes,
    )
