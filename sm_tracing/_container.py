"""The one container primitive: extract, start, attach, and in the end detach and end.

Every container adapter (the decorator, WSGI, ASGI, the model-server contexts) is built on
:func:`begin`, directly or through :class:`Invocation`, so they all pick the parent, the span
kind and the remote-context policy the same way.
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
from opentelemetry.propagate import get_global_textmap
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import (
    Link,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TracerProvider,
)
from opentelemetry.util.types import AttributeValue

from sm_tracing import _codec, _propagation
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


@lru_cache(maxsize=32)
def get_tracer(tracer_provider: TracerProvider | None = None) -> trace.Tracer:
    """This library's tracer from *tracer_provider*, or from the global one; a tracer that
    records nothing (logged) when the provider fails to give one."""
    try:
        return trace.get_tracer("sm_tracing", __version__, tracer_provider=tracer_provider)
    except Exception:
        _logger.warning(
            "tracer provider %r failed to give a tracer; not tracing",
            tracer_provider,
            exc_info=True,
        )
        return trace.NoOpTracer()


class _PairGetter(Getter[Mapping[str, str]]):
    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            # Our pairs are keyed in lower case; most fields already are.
            value = carrier.get(key.lower())
        return None if value is None else [value]

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return list(carrier)


_GETTER = _PairGetter()


def read_carrier(value: str) -> tuple[dict[str, str], str]:
    """In one pass over a request's CustomAttributes: the pairs of ours it carries (keys
    lower-cased, values decoded; none when the value is not one SageMaker accepts, which
    means no parent) and the value without them, as ``strip_context`` gives it.

    The common shape (no ``,``) is read here; any other goes through the codec's full rules.
    """
    keys = _propagation.our_keys()
    if (
        "," in value
        or len(value) > _codec.MAX_LENGTH
        or not value.isascii()
        or not value.isprintable()
    ):
        found = _codec.find(value, keys) if _codec.is_valid(value) else {}
        return found, _propagation.strip_context(value) or ""
    # Without ",", the codec's separator is ";" (or there is one token either way).
    found = {}
    kept: list[str] = []
    tokens = value.split(";")
    for token in tokens:
        key, sign, rest = token.partition("=")
        if sign and rest[:1] != "=":
            if key not in keys:
                key = key.strip().lower()
            if key in keys:
                rest = rest.strip()
                found[key] = _codec.decode_value(rest) if "%" in rest else rest
                continue
        kept.append(token)
    if not found:
        return found, value
    if kept and tokens[0][:1] != " ":
        # As the codec does: the caller's first token now leads, without the blank that
        # followed the separator we removed.
        kept[0] = kept[0].lstrip(" ")
    return found, ";".join(kept)


# Positional on purpose: it is called on every request of the middlewares.
def begin(  # noqa: PLR0917
    tracer: trace.Tracer,
    name: str,
    attributes: Mapping[str, AttributeValue] | None,
    policy: RemoteContext,
    custom_attributes: str | None,
    pairs: Mapping[str, str] | None = None,
    link: SpanContext | None = None,
) -> tuple[Span, otel_context.Context]:
    """Start a container span and return it with the context that makes it current.

    The one rule of every adapter: the caller's context read from *custom_attributes* (or
    from *pairs* already read out of them) is the parent under ``"continue"``, a link under
    ``"link"``, nothing under ``"ignore"``; SERVER where no span is active, INTERNAL under one.
    Never raises for bad input: it gives a new root.
    """
    current = otel_context.get_current()
    active = trace.get_current_span(current).get_span_context()
    under_span = active.is_valid
    parent = current
    links: list[Link] | None = None if link is None else [Link(link)]
    if policy != "ignore":
        base = current if policy == "continue" else None
        remote = None
        if pairs is not None:
            if pairs:
                try:
                    remote = get_global_textmap().extract(pairs, context=base, getter=_GETTER)
                except Exception:
                    _logger.warning(
                        "could not read the trace context from CustomAttributes", exc_info=True
                    )
        elif custom_attributes:
            remote = _propagation.extract_context(custom_attributes, base)
        if remote is None:
            pass
        elif policy == "continue" and not under_span:
            # The remote context is the current one plus what came: a valid span in it is
            # the parent, an invalid one makes a root, as no carrier would.
            parent = remote
        else:
            remote_span = trace.get_current_span(remote).get_span_context()
            if not remote_span.is_valid:
                pass  # nothing usable came: a new root, or a child of the active span
            elif policy == "link":
                links = [Link(remote_span)] if links is None else [Link(remote_span), *links]
            elif not under_span or active.trace_id != remote_span.trace_id:
                # Under a local span of the same trace (our middleware, say) we are its
                # child; otherwise the caller's span is the parent, which joins the trace.
                parent = remote
    try:
        span = tracer.start_span(
            name,
            context=parent,
            kind=SpanKind.INTERNAL if under_span else SpanKind.SERVER,
            attributes=attributes,
            links=links,
        )
    except Exception:
        _logger.warning("the tracer failed to start a span; not tracing", exc_info=True)
        span = trace.INVALID_SPAN
    return span, trace.set_span_in_context(span, parent)


class Invocation:
    """One traced invocation in a container.

    ``start()`` extracts the caller's context from CustomAttributes, starts the span (SERVER
    where no span is active, INTERNAL under one) and makes it current; ``detach()`` restores
    the context that was current before; ``end()`` ends the span, recording an error if one
    is given. Adapters whose response outlives the handler (streamed bodies) detach when the
    handler returns and end when the last chunk is sent. As a context manager it does all three.
    *pairs*, when given, are the trace pairs already read from *custom_attributes* (see
    :func:`read_carrier`), so the value is not parsed twice.
    """

    __slots__ = (
        "_attributes",
        "_context",
        "_custom_attributes",
        "_name",
        "_pairs",
        "_policy",
        "_token",
        "_tracer",
        "span",
    )

    def __init__(
        self,
        custom_attributes: str | None,
        *,
        name: str = "invocations",
        attributes: Mapping[str, AttributeValue] | None = None,
        tracer: trace.Tracer,
        policy: RemoteContext,
        pairs: Mapping[str, str] | None = None,
    ) -> None:
        self._custom_attributes = custom_attributes
        self._pairs = pairs
        self._name = name
        self._attributes = attributes
        self._tracer = tracer
        self._policy = policy
        self._token: object | None = None
        self._context: otel_context.Context | None = None
        self.span: Span = trace.INVALID_SPAN

    def start(self, *, attach: bool = True, link: SpanContext | None = None) -> Span:
        """Start the span and, unless *attach* is false, make it current; never raises for
        bad input. *link* adds a link to another span (a batch's shared span, say)."""
        span, context = begin(
            self._tracer,
            self._name,
            self._attributes,
            self._policy,
            self._custom_attributes,
            self._pairs,
            link,
        )
        self.span = span
        self._context = context
        if attach:
            self._token = otel_context.attach(context)
        return span

    def attach(self) -> None:
        """Make the span current (again), after ``start(attach=False)`` or ``detach()``."""
        if self._token is None and self._context is not None:
            self._token = otel_context.attach(self._context)

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
