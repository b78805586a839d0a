"""What the client and the container side both need: the tracer and meter, the current
context, error recording and the one way to end a span, the SageMaker header names and
attributes, the calling and undoing of a method wrapper, and the guard that keeps a failure of
ours out of the user's call."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from contextvars import ContextVar, Token
from functools import lru_cache
from types import FunctionType
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.metrics import Histogram, MeterProvider
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider

from sm_tracing.version import __version__

_logger = logging.getLogger("sm_tracing")

T = TypeVar("T")

HEADER = "X-Amzn-SageMaker-Custom-Attributes"
HEADER_LOWER = HEADER.lower()
STATUS_CODE = "http.response.status_code"
ERROR_TYPE = "error.type"
INFERENCE_ID = "aws.sagemaker.inference_id"
SESSION_ID = "aws.sagemaker.session_id"
TARGET_MODEL = "aws.sagemaker.target_model"
# The SageMaker headers that reach a container, and the span attribute each one becomes.
SAGEMAKER_HEADERS = (
    ("x-amzn-sagemaker-inference-id", INFERENCE_ID),
    ("x-amzn-sagemaker-target-model", TARGET_MODEL),
    ("x-amzn-sagemaker-session-id", SESSION_ID),
)
RECORD_MESSAGES_ENV = "SM_TRACING_RECORD_EXCEPTION_MESSAGES"


def environ_key(name: str) -> str:
    """The WSGI environ key of the request header *name*."""
    return "HTTP_" + name.upper().replace("-", "_")


SAGEMAKER_ENVIRON_KEYS = tuple(
    (environ_key(name), attribute) for name, attribute in SAGEMAKER_HEADERS
)
"""``SAGEMAKER_HEADERS`` with the WSGI environ key of each header."""


_ERROR = Status(StatusCode.ERROR)
# The span kinds, looked up once: an enum member's lookup costs on every call.
CLIENT, SERVER, INTERNAL = SpanKind.CLIENT, SpanKind.SERVER, SpanKind.INTERNAL


def guard(what: str, default: T, function: Callable[..., T], *args: Any) -> T:
    """``function(*args)``, or *default* when it raises: the failure is logged as "could not
    *what*" and goes no further. The one guard of every entry point that must never break the
    user's call."""
    try:
        return function(*args)
    except Exception as error:
        failed(what, error)
        return default


def failed(what: str, error: Exception) -> None:
    """Log *error* as "could not *what*". For the few steps on every call that keep their guard
    inline (``try``, then this in ``except Exception``): a call through :func:`guard` costs
    them more than the step."""
    _logger.warning("could not %s", what, exc_info=error)


def _context_variable() -> ContextVar[Context] | None:
    """The ContextVar in which OpenTelemetry's default runtime context keeps the current
    context; None under another runtime context (``OTEL_PYTHON_CONTEXT``)."""
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    variable = getattr(runtime, "_current_context", None)
    if type(runtime).__name__ == "ContextVarsRuntimeContext" and isinstance(variable, ContextVar):
        return variable
    return None


# The current context, as OpenTelemetry's context API keeps it: read and set in its ContextVar
# where the default runtime context keeps it there. The API's functions go two calls deep for
# each step, and these run on every call of a client and every request of a container.
_CURRENT = _context_variable()
current_context: Callable[[], Context] = (
    otel_context.get_current if _CURRENT is None else _CURRENT.get
)
"""The current context: ``opentelemetry.context.get_current()``."""
attach_context: Callable[[Context], Token[Context]] = (
    otel_context.attach if _CURRENT is None else _CURRENT.set
)
"""Make *context* current: ``opentelemetry.context.attach()``."""
_reset: Callable[[Token[Context]], None] = (
    otel_context.detach if _CURRENT is None else _CURRENT.reset
)


def detach_context(token: Token[Context]) -> None:
    """Make current again what *token*'s ``attach`` replaced, as
    ``opentelemetry.context.detach()`` does: a token that can't be used (made in another
    context, or used already) is logged and goes no further."""
    try:
        _reset(token)
    except Exception as error:
        failed("make the earlier context current again", error)


@lru_cache(maxsize=32)
def get_tracer(tracer_provider: TracerProvider | None = None) -> trace.Tracer:
    """This library's tracer from *tracer_provider*, or from the global one; a tracer that
    records nothing (logged) when the provider fails to give one."""
    no_op: trace.Tracer = trace.NoOpTracer()
    return guard(
        "get a tracer; not tracing",
        no_op,
        trace.get_tracer,
        "sm_tracing",
        __version__,
        tracer_provider,
    )


# The HTTP server duration's bucket advice, from the semantic conventions, in seconds.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
SERVER_DURATION = "http.server.request.duration"
INVOCATION_DURATION = "aws.sagemaker.container.invocation.duration"


@lru_cache(maxsize=32)
def get_meter(meter_provider: MeterProvider | None = None) -> metrics.Meter:
    """This library's meter from *meter_provider*, or from the global one; a meter that
    records nothing (logged) when the provider fails to give one."""
    no_op: metrics.Meter = metrics.NoOpMeter("sm_tracing")
    return guard(
        "get a meter; not measuring",
        no_op,
        metrics.get_meter,
        "sm_tracing",
        __version__,
        meter_provider,
    )


# The API's stand-in until an SDK MeterProvider is installed: nothing it is given is kept.
_DEFERRED_METER_PROVIDER = ("opentelemetry.metrics._internal", "_ProxyMeterProvider")
# Asking the API for the global provider reads the environment on every call until one is set;
# its own module global says as much for a fraction of the cost, where it is there to read.
_METRICS_STATE: Any = sys.modules.get("opentelemetry.metrics._internal")
_PROVIDER_FROM_ENVIRONMENT = "OTEL_PYTHON_METER_PROVIDER" in os.environ


def duration_histogram(name: str, meter_provider: MeterProvider | None = None) -> Histogram | None:
    """The duration histogram *name* (seconds, the HTTP buckets) of *meter_provider*, or of
    the global one; None while no SDK MeterProvider is installed globally, so an application
    without metrics pays nothing for them."""
    if meter_provider is None:
        if (
            not _PROVIDER_FROM_ENVIRONMENT
            and getattr(_METRICS_STATE, "_METER_PROVIDER", False) is None
        ):
            return None
        meter_provider = metrics.get_meter_provider()
        kind = type(meter_provider)
        if (kind.__module__, kind.__name__) == _DEFERRED_METER_PROVIDER:
            return None
    return _histogram(name, meter_provider)


@lru_cache(maxsize=64)
def _histogram(name: str, meter_provider: MeterProvider) -> Histogram:
    description = (
        "Duration of HTTP server requests."
        if name == SERVER_DURATION
        else "Duration of a model container's invocations."
    )
    return get_meter(meter_provider).create_histogram(
        name,
        unit="s",
        description=description,
        explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
    )


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
    attributes = {"exception.type": name}
    if message if message is not None else _record_messages():
        attributes["exception.message"] = str(error)
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


# A method wrapper of ours that is a plain function (see ``ClientHook.method``) names its hook
# in the first attribute, and takes in the second a new method to call in place of its own.
HOOK_ATTRIBUTE = "_sm_tracing_hook"
REWIRE_ATTRIBUTE = "_sm_tracing_rewire"


def method_caller(method: Any) -> Callable[..., Any]:
    """A function that calls *method*, as found in a class's ``__dict__``, as a method of its
    first argument: *method* itself when it is a plain function, else bound through its
    descriptor on every call (another instrumentation's wrapt wrapper, say)."""
    # Not isinstance(): a wrapt wrapper passes for the function it wraps.
    if type(method) is FunctionType:
        return method

    def call(instance: Any, *args: Any, **kwargs: Any) -> Any:
        return method.__get__(instance, type(instance))(*args, **kwargs)

    return call


def unwrap(owner: Any, name: str, wrapper: object) -> None:
    """Take *wrapper* out of ``owner.name``, wherever it sits in the chain: a wrapt wrapper
    whose wrapper function is *wrapper*, or a plain-function wrapper of ours whose hook is.

    Another instrumentation may have wrapped on top of ours; removing the outermost wrapper,
    as a plain unwrap does, would take theirs away instead. Where ours can't be spliced out it
    stays, and its hook, disabled, passes every call straight through.
    """
    import wrapt  # only ever needed to undo what was wrapped, so never at import

    # wrapt 2 names the common base of its proxies and wrappers BaseObjectProxy; wrapt 1 has
    # only ObjectProxy.
    proxy_types = (getattr(wrapt, "BaseObjectProxy", wrapt.ObjectProxy),)
    parent: Any = None
    node: Any = owner.__dict__.get(name)
    while True:
        if isinstance(node, proxy_types):
            mine = getattr(node, "_self_wrapper", None) == wrapper
        elif callable(getattr(node, REWIRE_ATTRIBUTE, None)):
            mine = getattr(node, HOOK_ATTRIBUTE, None) is wrapper
        else:
            return  # the end of the chain, or a wrapper nobody can see through
        if mine:
            inner = node.__wrapped__
            try:
                if parent is None:  # ours is the outermost wrapper
                    setattr(owner, name, inner)
                elif isinstance(parent, proxy_types):
                    parent.__wrapped__ = inner
                else:
                    getattr(parent, REWIRE_ATTRIBUTE)(inner)
            except Exception:
                _logger.debug("left a disabled wrapper on %s.%s", owner.__name__, name)
            return
        parent, node = node, getattr(node, "__wrapped__", None)
