"""OpenTelemetry as both sides use it: the library's tracer and meter, histograms that old
API releases can create too, errors recorded without their messages, and spans that end
whatever their processors do."""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Callable, Sequence
from functools import lru_cache

from opentelemetry import metrics, trace
from opentelemetry.metrics import Histogram, Meter, MeterProvider
from opentelemetry.trace import Span, Status, StatusCode, TracerProvider

from sm_tracing._attributes import (
    DURATION_BUCKETS,
    ERROR_TYPE,
    EXCEPTION_MESSAGE,
    EXCEPTION_TYPE,
    SERVER_DURATION,
    STATUS_CODE,
)
from sm_tracing._guard import guard
from sm_tracing.version import __version__

RECORD_MESSAGES_ENV = "SM_TRACING_RECORD_EXCEPTION_MESSAGES"
_ERROR = Status(StatusCode.ERROR)


# The OpenTelemetry metrics API package, whose own providers record nothing.
_API = "opentelemetry.metrics"
# How long, in seconds, the answer to "does the global meter provider record" is kept.
_LOOK_AGAIN = 1.0


class Recording:
    """Whether measurements now reach a meter provider that records them: the one given, or
    the global one once a provider is installed. Until then the global one is the API's
    stand-in, which drops every measurement, so none need be made. Which provider is global is
    looked up at most once a second, as asking costs more than a measurement, and no more once
    one records: the global provider is set once for the life of the process. Call it."""

    __slots__ = ("_answer", "_given", "_look_again")

    def __init__(self, meter_provider: MeterProvider | None) -> None:
        self._given = meter_provider is not None
        self._answer = False
        self._look_again = 0.0

    def __call__(self) -> bool:
        if self._given or self._answer:
            return True
        now = time.monotonic()
        if now >= self._look_again:
            self._look_again = now + _LOOK_AGAIN
            self._answer = records(metrics.get_meter_provider())
        return self._answer


def records(provider: MeterProvider) -> bool:
    """Whether *provider* records anything: every provider does but the API package's own, the
    no-op one and the stand-in it answers with while none is installed (the API package has no
    implementation; the SDK's and any other live elsewhere)."""
    module = type(provider).__module__
    return module != _API and not module.startswith(f"{_API}.")


# Tracers by provider, held no longer than their provider is.
_tracers: weakref.WeakKeyDictionary[TracerProvider, trace.Tracer] = weakref.WeakKeyDictionary()


def get_tracer(tracer_provider: TracerProvider | None = None) -> trace.Tracer:
    """This library's tracer from *tracer_provider*, or from the global one; a tracer that
    records nothing (logged) when the provider fails to give one."""
    if tracer_provider is None:
        return _new_tracer(None)
    tracer = _tracers.get(tracer_provider)
    if tracer is None:
        tracer = _tracers[tracer_provider] = _new_tracer(tracer_provider)
    return tracer


def _new_tracer(tracer_provider: TracerProvider | None) -> trace.Tracer:
    no_op: trace.Tracer = trace.NoOpTracer()
    return guard(
        "get a tracer; not tracing",
        no_op,
        trace.get_tracer,
        "sm_tracing",
        __version__,
        tracer_provider,
    )


def get_meter(meter_provider: MeterProvider | None = None) -> Meter:
    """This library's meter from *meter_provider*, or from the global one; a meter that
    records nothing (logged) when the provider fails to give one."""
    no_op: Meter = metrics.NoOpMeter("sm_tracing")
    return guard(
        "get a meter; not measuring",
        no_op,
        metrics.get_meter,
        "sm_tracing",
        __version__,
        meter_provider,
    )


def create_histogram(
    meter: Meter, name: str, description: str, buckets: Sequence[float], unit: str = "s"
) -> Histogram:
    """The histogram *name* of *meter*, with *buckets* as advice where the API takes it
    (opentelemetry-api 1.30 and later); raises what the meter raises, for the caller's guard."""
    try:
        return meter.create_histogram(
            name, unit=unit, description=description, explicit_bucket_boundaries_advisory=buckets
        )
    except TypeError:  # an API release without bucket advice
        return meter.create_histogram(name, unit=unit, description=description)


def duration_histogram(name: str, meter_provider: MeterProvider | None = None) -> Histogram | None:
    """The container's duration histogram *name* (seconds, the HTTP buckets) of
    *meter_provider*, or of the global one (which records once an SDK provider is set); None,
    logged, when it cannot be made."""
    provider = metrics.get_meter_provider() if meter_provider is None else meter_provider
    return guard("create a duration histogram; not measuring", None, _histogram, name, provider)


@lru_cache(maxsize=64)
def _histogram(name: str, meter_provider: MeterProvider) -> Histogram:
    description = (
        "Duration of HTTP server requests."
        if name == SERVER_DURATION
        else "Duration of a model container's invocations."
    )
    return create_histogram(get_meter(meter_provider), name, description, DURATION_BUCKETS)


def _record_messages() -> bool:
    return os.environ.get(RECORD_MESSAGES_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def record_error(span: Span, error: BaseException, *, message: bool | None = None) -> None:
    """Record *error* on *span* by its type, and set the status to ERROR.

    An exception's message can quote a request body or CustomAttributes, so it is recorded
    only when *message* is true (by default: when ``SM_TRACING_RECORD_EXCEPTION_MESSAGES`` is
    set to true); never is the traceback, whose last line repeats it.
    """
    if not span.is_recording():
        return
    name = error_type(error)
    attributes = {EXCEPTION_TYPE: name}
    if message if message is not None else _record_messages():
        attributes[EXCEPTION_MESSAGE] = str(error)
    span.add_event("exception", attributes)
    span.set_attribute(ERROR_TYPE, name)
    span.set_status(Status(StatusCode.ERROR, type(error).__name__))


def error_type(error: BaseException) -> str:
    """The ``error.type`` of *error*: its class, qualified by module outside the builtins."""
    kind = type(error)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def set_status_code(span: Span, code: int) -> None:
    """Record the HTTP status *code* on *span*, ERROR for a 5xx."""
    span.set_attribute(STATUS_CODE, code)
    if code >= 500:
        span.set_status(_ERROR)


def end_span(
    span: Span,
    error: BaseException | None = None,
    record: Callable[[Span, BaseException], None] = record_error,
) -> None:
    """End *span*, with *error* recorded on it first by *record* when there is one. Never
    raises: a recorder or a span processor that fails costs a log line, not the caller's call,
    and a span whose error could not be recorded is ended all the same."""
    if error is not None:
        guard("record an error on its span", None, record, span, error)
    guard("end a span", None, span.end)
