"""The per-call hook of ``sagemaker-runtime`` clients.

For InvokeEndpoint, InvokeEndpointWithResponseStream and InvokeEndpointAsync it starts a CLIENT
span, merges the trace context into the ``CustomAttributes`` parameter (before botocore
serializes and signs the request), records the SageMaker attributes of the call and its
response, and takes the container's ``traceresponse`` echo out of the response.

Where opentelemetry-instrumentation-botocore already makes a span for the call, it makes no
span of its own: event handlers on the client inject under that span and enrich it instead,
through the same request and response steps.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, fields
from functools import partial
from typing import Any, ClassVar
from urllib.parse import urlsplit

from opentelemetry import metrics, trace
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, Context
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)
from opentelemetry.instrumentation.utils import _SUPPRESS_INSTRUMENTATION_KEY_PLAIN
from opentelemetry.metrics import Histogram, Meter, MeterProvider
from opentelemetry.trace import Span, SpanContext, TraceFlags, TracerProvider
from opentelemetry.util.types import AttributeValue

from sm_tracing import _codec, _propagation
from sm_tracing._attributes import ERROR_TYPE, INFERENCE_ID, SESSION_ID, TARGET_MODEL
from sm_tracing._common import (
    _DEFERRED_METER_PROVIDER,
    CLIENT,
    HOOK_ATTRIBUTE,
    REWIRE_ATTRIBUTE,
    attach_context,
    current_context,
    detach_context,
    method_caller,
)
from sm_tracing._guard import failed, guard
from sm_tracing._telemetry import end_span, error_type, get_meter, get_tracer
from sm_tracing.client._streams import (
    AioTracedEventStream,
    StreamTimes,
    TracedEventStream,
    metadata_attributes,
    record_failure,
)

_logger = logging.getLogger(__name__)

EndpointFilter = Callable[[str, Mapping[str, Any]], bool]
GenAIModels = Callable[[str, Mapping[str, Any]], "str | None"]

SERVICE = "sagemaker-runtime"
INVOKE = "InvokeEndpoint"
INVOKE_STREAM = "InvokeEndpointWithResponseStream"
INVOKE_ASYNC = "InvokeEndpointAsync"
OPERATIONS = frozenset({INVOKE, INVOKE_STREAM, INVOKE_ASYNC})
_SPAN_NAMES = {operation: f"SageMaker Runtime.{operation}" for operation in OPERATIONS}

ENDPOINT_NAME = "aws.sagemaker.endpoint.name"
INVOKED_VARIANT = "aws.sagemaker.invoked_production_variant"
CONTAINER_TRACE_ID = "aws.sagemaker.container.trace_id"
CONTAINER_SPAN_ID = "aws.sagemaker.container.span_id"
CONTAINER_DURATION = "aws.sagemaker.container.duration"
OVERHEAD = "aws.sagemaker.overhead.duration"
RPC_METHOD = "rpc.method"
GENAI_PROVIDER = "gen_ai.provider.name"
GENAI_OPERATION = "gen_ai.operation.name"
GENAI_MODEL = "gen_ai.request.model"
# The conventions have no provider value for SageMaker yet, and a call's body is never read to
# tell a chat from a completion: SageMaker's model servers take a prompt and complete it.
SAGEMAKER_PROVIDER = "aws.sagemaker"
COMPLETION = "text_completion"

# Request parameters recorded on the span besides EndpointName; CustomAttributes and Body
# never are.
_OPTIONAL_REQUEST_ATTRIBUTES = {
    "TargetModel": TARGET_MODEL,
    "TargetVariant": "aws.sagemaker.target_variant",
    "TargetContainerHostname": "aws.sagemaker.target_container_hostname",
    "InferenceComponentName": "aws.sagemaker.inference_component",
    "InferenceId": INFERENCE_ID,
    "SessionId": SESSION_ID,
    "PrefixAwareId": "aws.sagemaker.prefix_aware_id",
}
_OPTIONAL_REQUEST_KEYS = frozenset(_OPTIONAL_REQUEST_ATTRIBUTES)
_RESPONSE_ATTRIBUTES = {
    INVOKE: (("InvokedProductionVariant", INVOKED_VARIANT), ("NewSessionId", SESSION_ID)),
    INVOKE_STREAM: (("InvokedProductionVariant", INVOKED_VARIANT),),
    INVOKE_ASYNC: (
        ("InferenceId", INFERENCE_ID),
        ("OutputLocation", "aws.sagemaker.output_location"),
        ("FailureLocation", "aws.sagemaker.failure_location"),
    ),
}
_STATIC: dict[str, AttributeValue] = {"rpc.system": "aws-api", "rpc.service": "SageMaker Runtime"}
_DEFAULT_PORTS = {"https": 443, "http": 80}
_MAX_WARNED = 1024
_UPSTREAM_MODULE = "opentelemetry.instrumentation.botocore"
_UNTRACEABLE = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
_INJECTING = "merge the trace context"
_RECORDING = "record the response of a SageMaker call"
_now = time.time_ns
_RECHECK = 100_000_000  # nanoseconds between two looks for a global meter provider
_LABELS = (ENDPOINT_NAME, GENAI_PROVIDER, GENAI_OPERATION, GENAI_MODEL)

# Bucket advice of the GenAI client metrics, in seconds; SageMaker's own share is small.
_DURATION_BUCKETS = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)
_FIRST_CHUNK_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
_PER_CHUNK_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
_OVERHEAD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)


def _endpoint_names(endpoints: object) -> frozenset[str] | EndpointFilter | None:
    if endpoints is None or callable(endpoints):
        return endpoints
    kind = type(endpoints).__name__
    if isinstance(endpoints, (str, bytes)):
        raise TypeError(f"endpoints must be a collection of endpoint names, not a single {kind}")
    if not isinstance(endpoints, Collection) or not all(isinstance(n, str) for n in endpoints):
        raise TypeError(
            "endpoints must be None, a collection of endpoint names (str) or a callable "
            f"(endpoint_name, params) -> bool, not {kind}"
        )
    return frozenset(endpoints)


def _genai_models(models: object) -> Mapping[str, str] | GenAIModels | None:
    if models is None or callable(models) or isinstance(models, Mapping):
        return models
    raise TypeError(
        "genai_models must be None, a mapping of endpoint names to models or a callable "
        f"(endpoint_name, params) -> model or None, not {type(models).__name__}"
    )


@dataclass(frozen=True)
class ClientOptions:
    """What :func:`sm_tracing.instrument` was asked to do; checked when made.

    ``endpoints`` comes out as None, a frozenset of endpoint names or the callable given.
    """

    tracer_provider: TracerProvider | None = None
    endpoints: Collection[str] | EndpointFilter | None = None
    inject_opaque: bool = False
    inference_id_from_trace: bool = False
    record_echo: bool = True
    meter_provider: MeterProvider | None = None
    genai_models: Mapping[str, str] | GenAIModels | None = None
    transform_jobs: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "endpoints", _endpoint_names(self.endpoints))
        _genai_models(self.genai_models)

    @classmethod
    def from_keywords(cls, keywords: Mapping[str, Any]) -> ClientOptions:
        """The options among *keywords* (an instrumentor's); other keywords are not ours."""
        return cls(**{f.name: keywords[f.name] for f in fields(cls) if f.name in keywords})

    def wants(self, endpoint: object, params: Mapping[str, Any]) -> bool:
        """Whether the trace context goes to *endpoint*, called with *params* (what a filter
        is shown): to every endpoint without ``endpoints``; not where a filter raises."""
        endpoints = self.endpoints
        if endpoints is None:
            return True
        if isinstance(endpoints, frozenset):
            return endpoint in endpoints
        if not callable(endpoints) or not isinstance(endpoint, str):
            return False
        return guard(
            "run the endpoints filter; not injecting", False, _ask, endpoints, endpoint, params
        )


def first_time(warned: set[str | None], endpoint: str | None) -> bool:
    """Whether *endpoint* is not yet in *warned*, which then holds it: a warning about an
    endpoint is logged once, for the first 1024 endpoints warned about (every time after)."""
    if endpoint in warned:
        return False
    if len(warned) < _MAX_WARNED:
        warned.add(endpoint)
    return True


def add_connection(
    attributes: dict[str, AttributeValue],
    region: object,
    host: object,
    port: object,
    scheme: object,
) -> dict[str, AttributeValue]:
    """*attributes* with where a client's calls go added: its region, the server's address,
    and its port where that is not the *scheme*'s default."""
    if isinstance(region, str) and region:
        attributes["cloud.region"] = region
    if isinstance(host, str) and host:
        attributes["server.address"] = host
    if isinstance(port, int) and port != _DEFAULT_PORTS.get(str(scheme)):
        attributes["server.port"] = port
    return attributes


def client_attributes(meta: Any, static: Mapping[str, AttributeValue]) -> dict[str, AttributeValue]:
    """*static* with where the botocore client of *meta* sends its calls."""
    url = urlsplit(meta.endpoint_url or "")
    return add_connection(dict(static), meta.region_name, url.hostname, url.port, url.scheme)


def suppressed(context: Context) -> bool:
    """What ``not is_instrumentation_enabled()`` answers, read from a context already in hand:
    the helper reads the current context twice more, which is 5% of the cost of a traced call.
    The same keys: the context's own and the plain one older instrumentations set."""
    return bool(
        context.get(_SUPPRESS_INSTRUMENTATION_KEY)
        or context.get(_SUPPRESS_INSTRUMENTATION_KEY_PLAIN)
    )


# The upstream instrumentors found, by class name.
_upstream: dict[str, type[BaseInstrumentor]] = {}


def _upstream_active(name: str) -> bool:
    instrumentor = _upstream.get(name)
    if instrumentor is None:
        # Only looked at when the module is already loaded: importing it here would cost
        # every process that does not use it.
        found = getattr(sys.modules.get(_UPSTREAM_MODULE), name, None)
        if not (isinstance(found, type) and issubclass(found, BaseInstrumentor)):
            return False
        instrumentor = _upstream[name] = found
    # Both are BaseInstrumentor's: its one instance, once made, and whether it instruments.
    instance: Any = instrumentor._instance
    return instance is not None and instance._is_instrumented_by_opentelemetry is True


# Asked on every call of a client; a partial costs less to call than a function of ours.
upstream_botocore = partial(_upstream_active, "BotocoreInstrumentor")
"""True while opentelemetry-instrumentation-botocore traces botocore clients."""
upstream_aiobotocore = partial(_upstream_active, "AiobotocoreInstrumentor")
"""True while opentelemetry-instrumentation-botocore traces aiobotocore clients."""


class TracedCall:
    """One call traced by a span of ours, made current by *token*. The call hands it the
    result (``finish``) or the error it raised (``fail``), which goes on to the caller
    unchanged."""

    __slots__ = ("span", "token")

    def __init__(self, span: Span, token: object) -> None:
        self.span = span
        self.token = token

    def fail(self, error: BaseException) -> None:
        """Make current again what was before the call, and record that it raised *error*."""
        detach_context(self.token)  # type: ignore[arg-type]
        end_span(self.span, error, record_failure)
        self._failed(error)

    def finish(self, result: Any) -> Any:
        """Make current again what was before the call, and record *result*: see ``_close``."""
        detach_context(self.token)  # type: ignore[arg-type]
        try:
            self._close(result)
        except Exception as error:
            failed(_RECORDING, error)
        return result

    def _close(self, result: Any) -> None:
        """Record *result* on the span and end it."""
        self.span.end()

    def _failed(self, error: BaseException) -> None:
        """Called once the span of a call that raised *error* has ended."""


class ClientHook:
    """A hook on botocore clients: the wrappers of botocore's and aiobotocore's
    ``_make_api_call`` that trace the calls of *operations*, and the client event handlers that
    take over on clients whose calls opentelemetry-instrumentation-botocore makes the span of.

    Each kind of hook (:class:`RuntimeHook`, the transform job's) says how a call starts
    (``_start``, which may hook the client's events instead) and which handler goes with each
    of *events*.
    """

    __slots__ = ("__weakref__", "_hooked", "_lock", "enabled")

    operations: ClassVar[frozenset[str]]
    """The operations traced; any other call goes straight through."""
    events: ClassVar[tuple[tuple[str, str], ...]]
    """The client events handled, each with the unique id of its handler."""
    _starting: ClassVar[str]
    """What could not be done when ``_start`` fails, for the log."""
    _hooked_by: ClassVar[str]
    """The key, in a client's own ``__dict__``, of the hook that handles its events."""
    _described_by: ClassVar[str]
    """The key, in a client's own ``__dict__``, of what ``_describe`` said of it."""

    def __init__(self) -> None:
        self.enabled = True
        self._lock = threading.Lock()
        self._hooked: weakref.WeakSet[Any] = weakref.WeakSet()

    def method(self, original: Any, aio: bool) -> Any:
        """*original*, botocore's ``_make_api_call`` (aiobotocore's when *aio*), traced for
        *operations*.

        A plain function, not a wrapt wrapper: Python calls a function found on the class as a
        method for a fraction of what a wrapper object costs, and this is on every call of
        every client. It takes botocore's parameters, by position or by name.
        :func:`~sm_tracing._common.unwrap` finds it by its hook, and splices it out or points it
        at another inner method.
        """
        call = method_caller(original)
        operations = self.operations
        start = self._start
        starting = self._starting

        def _make_api_call(client: Any, operation_name: str, api_params: Any) -> Any:
            if operation_name not in operations:
                return call(client, operation_name, api_params)
            try:
                traced = start(client, operation_name, api_params, False)
            except Exception as error:
                failed(starting, error)
                traced = None
            if traced is None:
                return call(client, operation_name, api_params)
            try:
                result = call(client, operation_name, api_params)
            except BaseException as error:
                traced.fail(error)
                raise
            return traced.finish(result)

        async def _make_api_call_aio(client: Any, operation_name: str, api_params: Any) -> Any:
            if operation_name not in operations:
                return await call(client, operation_name, api_params)
            try:
                traced = start(client, operation_name, api_params, True)
            except Exception as error:
                failed(starting, error)
                traced = None
            if traced is None:
                return await call(client, operation_name, api_params)
            try:
                result = await call(client, operation_name, api_params)
            except BaseException as error:
                traced.fail(error)
                raise
            return traced.finish(result)

        def rewire(inner: Any) -> None:
            nonlocal call
            call = method_caller(inner)
            wrapper.__wrapped__ = inner

        wrapper: Any = _make_api_call_aio if aio else _make_api_call
        wrapper.__wrapped__ = original
        setattr(wrapper, HOOK_ATTRIBUTE, self)
        setattr(wrapper, REWIRE_ATTRIBUTE, rewire)
        return wrapper

    def _start(self, client: Any, operation: str, params: Any, aio: bool) -> TracedCall | None:
        """Start the span of a call of *operation* with *params* by *client* (aiobotocore's
        when *aio*) and merge its context into the parameters; None to stay out."""
        raise NotImplementedError

    def _handlers(self, upstream: Callable[[], bool]) -> tuple[Callable[..., None], ...]:
        """The handler of each of *events*, in order, for a client that *upstream* traces."""
        raise NotImplementedError

    def _describe(self, client: Any) -> Any:
        """What the traced calls of *client* share (their static span attributes); empty for a
        client of another service."""
        raise NotImplementedError

    def _traced(self, client: Any, aio: bool) -> Any:
        """What the traced calls of *client* share (see ``_describe``, asked once per client),
        or None to leave its calls alone: a client of another service, or one whose calls
        opentelemetry-instrumentation-botocore makes the span of (its events are hooked
        instead)."""
        described = client.__dict__.get(self._described_by)
        if described is None:
            described = client.__dict__[self._described_by] = self._describe(client)
        if not described:
            return None
        upstream = upstream_aiobotocore if aio else upstream_botocore
        if _UPSTREAM_MODULE in sys.modules and upstream():
            self._hook_events(client, upstream)
            return None
        return described

    def _hook_events(self, client: Any, upstream: Callable[[], bool]) -> None:
        """Register, once per client, the handlers that work under the upstream span."""
        # The client's own dict answers "already hooked?" without a weakref per call.
        if client.__dict__.get(self._hooked_by) is self:
            return
        handlers = self._handlers(upstream)
        with self._lock:
            if not self.enabled:
                return
            events = client.meta.events
            for (event, unique_id), handler in zip(self.events, handlers, strict=True):
                events.register(event, handler, unique_id=unique_id)
            client.__dict__[self._hooked_by] = self
            self._hooked.add(client)

    def unhook(self) -> None:
        """Stop for good: the wrappers pass calls through, the client handlers go."""
        with self._lock:
            self.enabled = False
            clients = list(self._hooked)
            self._hooked.clear()
        for client in clients:
            guard("unregister the handlers of a client", None, self._unregister, client)

    def _unregister(self, client: Any) -> None:
        events = client.meta.events
        for event, unique_id in self.events:
            events.unregister(event, unique_id=unique_id)
        client.__dict__.pop(self._hooked_by, None)


class _Meters:
    """The client's histograms, in seconds: each under the GenAI client metric's name for an
    endpoint that ``genai_models`` names, under ``aws.sagemaker.client.operation.*`` for any
    other; and SageMaker's own share of a call.

    *live* says whether anything records them: a provider was given, or an SDK provider is
    installed globally. Until one is, calls are not measured at all, and whether one has come
    is looked at again at most every tenth of a second."""

    __slots__ = ("duration", "first_chunk", "live", "overhead", "per_chunk", "recheck_at")

    def __init__(self, meter: Meter, given: bool) -> None:
        self.live = given or _meter_provider_installed()
        self.recheck_at = 0 if given else _now() + _RECHECK

        def pair(
            name: str, description: str, buckets: tuple[float, ...]
        ) -> tuple[Histogram, Histogram]:
            return (
                meter.create_histogram(
                    f"aws.sagemaker.client.operation.{name}",
                    "s",
                    description,
                    explicit_bucket_boundaries_advisory=buckets,
                ),
                meter.create_histogram(
                    f"gen_ai.client.operation.{name}",
                    "s",
                    description,
                    explicit_bucket_boundaries_advisory=buckets,
                ),
            )

        self.duration = pair(
            "duration",
            "Duration of SageMaker endpoint invocations, a stream's until it ends.",
            _DURATION_BUCKETS,
        )
        self.first_chunk = pair(
            "time_to_first_chunk",
            "Time from a streamed invocation's request to its first chunk.",
            _FIRST_CHUNK_BUCKETS,
        )
        self.per_chunk = pair(
            "time_per_output_chunk",
            "Mean time between the chunks after the first, of a stream read to its end.",
            _PER_CHUNK_BUCKETS,
        )
        self.overhead = meter.create_histogram(
            OVERHEAD,
            "s",
            "SageMaker's share of an invocation: the time to its response less the container's.",
            explicit_bucket_boundaries_advisory=_OVERHEAD_BUCKETS,
        )

    def awake(self, now: int) -> bool:
        """Whether an SDK provider has been installed since last looked at, *now*."""
        self.recheck_at = now + _RECHECK
        self.live = _meter_provider_installed()
        return self.live

    def measure_stream(
        self, labels: dict[str, AttributeValue], times: StreamTimes, error: BaseException | None
    ) -> None:
        """Record a stream that ended, by how it ended."""
        genai = GENAI_MODEL in labels
        if error is not None:
            labels = {**labels, ERROR_TYPE: error_type(error)}
        self.duration[genai].record((times.ended - times.started) / 1e9, labels)
        first = times.time_to_first_chunk
        if first is not None:
            self.first_chunk[genai].record(first, labels)
        per_chunk = times.time_per_chunk
        if per_chunk is not None:
            self.per_chunk[genai].record(per_chunk, labels)


def _meter_provider_installed() -> bool:
    kind = type(metrics.get_meter_provider())
    return (kind.__module__, kind.__name__) != _DEFERRED_METER_PROVIDER


def _meters(meter_provider: MeterProvider | None) -> _Meters:
    given = meter_provider is not None
    meter = get_meter(meter_provider)
    meters = guard("create the client's metrics; not measuring", None, _Meters, meter, given)
    return meters if meters is not None else _Meters(metrics.NoOpMeter("sm_tracing"), False)


def _labels(operation: str, attributes: Mapping[str, AttributeValue]) -> dict[str, AttributeValue]:
    """The metric attributes of a call, from its span's: few values each, never per request."""
    labels: dict[str, AttributeValue] = {RPC_METHOD: operation}
    for key in _LABELS:
        value = attributes.get(key)
        if value is not None:
            labels[key] = value
    return labels


class _Call(TracedCall):
    """One call traced by our own span: ended with the response, or handed to its stream.

    *labels* are the metric attributes of the call, None when it is not measured; *started* is
    when it began, in ``time.time_ns()`` nanoseconds."""

    __slots__ = ("hook", "labels", "operation", "started", "stream_type")

    def __init__(  # noqa: PLR0917 - built on every call, where keywords cost more
        self,
        hook: RuntimeHook,
        span: Span,
        operation: str,
        token: object,
        stream_type: type[TracedEventStream],
        started: int,
        labels: dict[str, AttributeValue] | None,
    ) -> None:
        # TracedCall's two, set here: this is on every call.
        self.span = span
        self.token = token
        self.hook = hook
        self.operation = operation
        self.stream_type = stream_type
        self.started = started
        self.labels = labels

    def _failed(self, error: BaseException) -> None:
        if self.labels is not None:
            labels = {**self.labels, ERROR_TYPE: error_type(error)}
            guard("measure a SageMaker call", None, self._measure, labels)

    def _close(self, result: Any) -> None:
        """Record *result* on the span and end it, or let the stream in it end it."""
        span = self.span
        followed = False
        try:
            self.hook.record_response(span, self.operation, result, self.started, self.labels)
            followed = self.operation == INVOKE_STREAM and self._follow(result)
        finally:
            if not followed:
                try:
                    span.end()
                finally:
                    if self.labels is not None:
                        self._measure(self.labels)

    def _measure(self, labels: dict[str, AttributeValue]) -> None:
        genai = GENAI_MODEL in labels
        self.hook.meters.duration[genai].record((_now() - self.started) / 1e9, labels)

    def _follow(self, result: Any) -> bool:
        body = result.get("Body")
        if body is None or not self.span.is_recording():
            return False
        # The span now ends, and the call is measured, when the caller is done reading.
        report = None if self.labels is None else self._report
        result["Body"] = self.stream_type(body, self.span, self.started, report)
        return True

    def _report(self, times: StreamTimes, error: BaseException | None) -> None:
        if self.labels is not None:
            self.hook.meters.measure_stream(self.labels, times, error)


class RuntimeHook(ClientHook):
    """The hook of the ``sagemaker-runtime`` calls, installed by one ``instrument()``."""

    __slots__ = ("_warned", "_watch_provider", "meters", "options", "tracer")

    operations = OPERATIONS
    events = (
        (f"before-parameter-build.{SERVICE}", "sm_tracing.inject"),
        (f"after-call.{SERVICE}", "sm_tracing.response"),
    )
    _starting = "start the span of a SageMaker call"
    _hooked_by = "_sm_tracing_hooked_by"
    _described_by = "_sm_tracing_span_attributes"

    def __init__(self, options: ClientOptions) -> None:
        super().__init__()
        self.options = options
        self.tracer = get_tracer(options.tracer_provider)
        # The global meter provider's instruments wait for an SDK provider to be installed.
        self.meters = _meters(options.meter_provider)
        # Until the first call that can't be recorded says whether a provider is missing.
        self._watch_provider = options.tracer_provider is None
        self._warned: set[str | None] = set()

    # -- the wrappers: our own span -------------------------------------------------------

    def _start(self, client: Any, operation: str, params: Any, aio: bool) -> _Call | None:
        if not self.enabled:
            return None
        operations = self._traced(client, aio)
        if operations is None:
            return None
        parent = current_context()
        # suppressed(), inline: this is on every call.
        if parent.get(_SUPPRESS_INSTRUMENTATION_KEY) or parent.get(
            _SUPPRESS_INSTRUMENTATION_KEY_PLAIN
        ):
            return None
        attributes = _request_attributes(params, operations[operation].copy())
        if self.options.genai_models is not None:
            self._genai(params, attributes)
        # The span starts when we say, so the times measured from it add up to its duration.
        started = _now()
        span = self.tracer.start_span(
            _SPAN_NAMES[operation], parent, CLIENT, attributes, None, started
        )
        meters = self.meters
        labels = None
        if meters.live or (started >= meters.recheck_at and meters.awake(started)):
            labels = _labels(operation, attributes)
        if self._watch_provider:
            self._check_provider(span)
        context = trace.set_span_in_context(span, parent)
        try:
            self._inject(params, context, span)
        except Exception as error:
            failed(_INJECTING, error)
        token = attach_context(context)
        stream_type = AioTracedEventStream if aio else TracedEventStream
        return _Call(self, span, operation, token, stream_type, started, labels)

    def _describe(self, client: Any) -> dict[str, dict[str, AttributeValue]]:
        """The span attributes that are the same on every call of *client*, per operation."""
        meta = client.meta
        operations: dict[str, dict[str, AttributeValue]] = {}
        if meta.service_model.service_name == SERVICE:
            static = client_attributes(meta, _STATIC)
            for operation in OPERATIONS:
                operations[operation] = {**static, "rpc.method": operation}
        return operations

    def _genai(self, params: Mapping[str, Any], attributes: dict[str, AttributeValue]) -> None:
        """Add the GenAI attributes of an endpoint ``genai_models`` names."""
        endpoint = attributes.get(ENDPOINT_NAME)
        if not isinstance(endpoint, str):
            return
        models = self.options.genai_models
        if callable(models):
            model = guard("ask genai_models for a model", None, models, endpoint, params)
        else:
            model = models.get(endpoint) if models else None
        if isinstance(model, str) and model:
            attributes[GENAI_PROVIDER] = SAGEMAKER_PROVIDER
            attributes[GENAI_OPERATION] = COMPLETION
            attributes[GENAI_MODEL] = model

    def _check_provider(self, span: Span) -> None:
        # Looked at once, on the first call: a span that records nothing is either sampled out
        # or made by the API's stand-in provider, and then nothing in this process is traced
        # until the application sets a provider; say so.
        with self._lock:
            if not self._watch_provider:
                return
            self._watch_provider = False
        if not span.is_recording() and isinstance(trace.get_tracer_provider(), _UNTRACEABLE):
            _logger.warning(
                "SageMaker calls are instrumented but not traced: no OpenTelemetry SDK "
                "TracerProvider is set. Call sm_tracing.configure(), or set one with "
                "opentelemetry.trace.set_tracer_provider(TracerProvider()), before the first "
                "call; or pass tracer_provider= to sm_tracing.instrument()."
            )

    # -- shared by our span and opentelemetry-instrumentation-botocore's -------------------

    def _inject(self, params: dict[str, Any], context: Context, span: Span) -> None:
        options = self.options
        if options.endpoints is not None and not options.wants(params.get("EndpointName"), params):
            return  # an endpoint left out is left alone
        if options.inference_id_from_trace and not params.get("InferenceId"):
            span_context = span.get_span_context()
            if span_context.is_valid:
                inference_id = f"{span_context.trace_id:032x}"
                params["InferenceId"] = inference_id
                span.set_attribute(INFERENCE_ID, inference_id)
        value = params.get("CustomAttributes")
        if value is not None and not isinstance(value, str):
            return  # botocore rejects it before it leaves
        merged, reason = _propagation.merge_context(value, context, options.inject_opaque, span)
        if merged is not None:
            params["CustomAttributes"] = merged
        elif reason == _codec.SKIP_BUDGET:
            endpoint = params.get("EndpointName")
            if first_time(self._warned, endpoint):
                _logger.warning(
                    "trace context not sent to endpoint %r: CustomAttributes would exceed %d "
                    "characters",
                    endpoint,
                    _codec.MAX_LENGTH,
                )
        else:
            _logger.debug(
                "CustomAttributes for endpoint %r sent as they were: %s",
                params.get("EndpointName"),
                reason,
            )

    def record_response(
        self,
        span: Span,
        operation: str,
        result: Mapping[str, Any],
        started: int | None,
        labels: dict[str, AttributeValue] | None,
    ) -> None:
        """Record the SageMaker attributes of *result* and take the echo out of it; with the
        container's time in the echo, SageMaker's share of the call since *started*."""
        attributes: dict[str, AttributeValue] = {}
        for key, name in _RESPONSE_ATTRIBUTES[operation]:
            value = result.get(key)
            if value:
                attributes[name] = value
        if labels is not None:
            variant = attributes.get(INVOKED_VARIANT)
            if variant is not None:
                labels[INVOKED_VARIANT] = variant
        returned = result.get("CustomAttributes")
        if self.options.record_echo and isinstance(returned, str):
            container = _take_echo(span, result, returned, attributes)
            if container is not None and started:
                # From the request to the response's headers, less the container's time until
                # its response started: the front door, the network and the queueing.
                overhead = max(0.0, (_now() - started) / 1e9 - container)
                attributes[OVERHEAD] = overhead
                if labels is not None:
                    self.meters.overhead.record(overhead, labels)
        metadata = result.get("ResponseMetadata")
        if metadata:
            metadata_attributes(metadata, attributes)
        span.set_attributes(attributes)

    # -- with opentelemetry-instrumentation-botocore: enrich its span ---------------------

    def _handlers(self, upstream: Callable[[], bool]) -> tuple[Callable[..., None], ...]:
        def before_parameter_build(params: dict[str, Any], model: Any, **_: Any) -> None:
            guard(_INJECTING, None, self._before_parameter_build, params, model, upstream)

        def after_call(parsed: Any, model: Any, **_: Any) -> None:
            guard(_RECORDING, None, self._after_call, parsed, model, upstream)

        return before_parameter_build, after_call

    def _before_parameter_build(
        self, params: dict[str, Any], model: Any, upstream: Callable[[], bool]
    ) -> None:
        span = self._upstream_span(model, upstream)
        if span is not None:
            if span.is_recording():
                span.set_attributes(_request_attributes(params, {}))
            self._inject(params, current_context(), span)

    def _after_call(self, parsed: Any, model: Any, upstream: Callable[[], bool]) -> None:
        span = self._upstream_span(model, upstream)
        if span is not None and isinstance(parsed, dict):
            started = getattr(span, "start_time", None)
            self.record_response(span, model.name, parsed, started, None)

    def _upstream_span(self, model: Any, upstream: Callable[[], bool]) -> Span | None:
        # The handlers stay registered after the upstream instrumentation goes; from then on
        # the wrapper makes the span and the handlers keep out of its way.
        if model.name not in OPERATIONS or not self.enabled or not upstream():
            return None
        current = current_context()
        return None if suppressed(current) else trace.get_current_span(current)


def _ask(endpoints: EndpointFilter, endpoint: str, params: Mapping[str, Any]) -> bool:
    return bool(endpoints(endpoint, params))


def _request_attributes(
    params: Mapping[str, Any], attributes: dict[str, AttributeValue]
) -> dict[str, AttributeValue]:
    """*attributes* with the span attributes of the request parameters added."""
    endpoint = params.get("EndpointName")
    if isinstance(endpoint, str):
        attributes[ENDPOINT_NAME] = endpoint
    # The others are rare: looked for one by one only when one of them is there.
    if not _OPTIONAL_REQUEST_KEYS.isdisjoint(params):
        for key, name in _OPTIONAL_REQUEST_ATTRIBUTES.items():
            value = params.get(key)
            if isinstance(value, str):
                attributes[name] = value
    return attributes


def _take_echo(
    span: Span, result: Any, value: str, attributes: dict[str, AttributeValue]
) -> float | None:
    """Record the container's ``traceresponse`` echo and hand the caller the value without it;
    anything else the container sent, keys named like a propagator's included, stays. The
    container's time until its response started, in seconds, when the echo carries it.
    *value* is the response's CustomAttributes."""
    echo = _codec.read_echo(value)
    if echo is None:
        return None
    remote, micros, rest = echo
    container: float | None = None
    if micros is not None and micros.isdigit() and len(micros) <= 12:
        container = int(micros) / 1e6
        attributes[CONTAINER_DURATION] = container
    if remote is not None:
        trace_id, span_id, flags = remote
        attributes[CONTAINER_TRACE_ID] = trace_id
        attributes[CONTAINER_SPAN_ID] = span_id
        # The span's own trace id (first in the SpanContext tuple) spelled as the echo's.
        if trace_id != span.get_span_context()[0].to_bytes(16, "big").hex():
            span.add_link(SpanContext(int(trace_id, 16), int(span_id, 16), True, TraceFlags(flags)))
    if rest:
        result["CustomAttributes"] = rest
    else:
        del result["CustomAttributes"]
    return container
