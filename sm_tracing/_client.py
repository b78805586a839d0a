"""The per-call hook of ``sagemaker-runtime`` clients.

For InvokeEndpoint, InvokeEndpointWithResponseStream and InvokeEndpointAsync it starts a CLIENT
span, merges the trace context into the ``CustomAttributes`` parameter (before botocore
serializes and signs the request), records the SageMaker attributes of the call and its
response, and takes the container's ``traceresponse`` echo out of the response.

Where opentelemetry-instrumentation-botocore already makes a span for the call, it makes no
span of its own: event handlers on the client inject under that span and enrich it instead.
"""

from __future__ import annotations

import logging
import sys
import weakref
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import ClientError
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind
from opentelemetry.util.types import AttributeValue

from sm_tracing import _codec, _propagation
from sm_tracing._container import record_error
from sm_tracing._streaming import AioTracedEventStream, TracedEventStream

try:
    from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY
except ImportError:  # pragma: no cover - every supported API release has it
    _SUPPRESS_INSTRUMENTATION_KEY = "suppress_instrumentation"

_logger = logging.getLogger(__name__)

EndpointFilter = Callable[[str, Mapping[str, Any]], bool]

SERVICE = "sagemaker-runtime"
INVOKE = "InvokeEndpoint"
INVOKE_STREAM = "InvokeEndpointWithResponseStream"
INVOKE_ASYNC = "InvokeEndpointAsync"
OPERATIONS = frozenset({INVOKE, INVOKE_STREAM, INVOKE_ASYNC})
_SPAN_NAMES = {operation: f"SageMaker Runtime.{operation}" for operation in OPERATIONS}
# Older instrumentations still set the suppression flag under its plain name.
_SUPPRESS_PLAIN = "suppress_instrumentation"

ENDPOINT_NAME = "aws.sagemaker.endpoint.name"
INFERENCE_ID = "aws.sagemaker.inference_id"
SESSION_ID = "aws.sagemaker.session_id"
INVOKED_VARIANT = "aws.sagemaker.invoked_production_variant"
CONTAINER_TRACE_ID = "aws.sagemaker.container.trace_id"
CONTAINER_SPAN_ID = "aws.sagemaker.container.span_id"
REQUEST_ID = "aws.request_id"
STATUS_CODE = "http.response.status_code"

# Request parameters recorded on the span; CustomAttributes and Body never are.
_REQUEST_ATTRIBUTES = {
    "EndpointName": ENDPOINT_NAME,
    "TargetModel": "aws.sagemaker.target_model",
    "TargetVariant": "aws.sagemaker.target_variant",
    "TargetContainerHostname": "aws.sagemaker.target_container_hostname",
    "InferenceComponentName": "aws.sagemaker.inference_component",
    "InferenceId": INFERENCE_ID,
    "SessionId": SESSION_ID,
}
_RESPONSE_ATTRIBUTES = {
    INVOKE: (("InvokedProductionVariant", INVOKED_VARIANT), ("NewSessionId", SESSION_ID)),
    INVOKE_STREAM: (("InvokedProductionVariant", INVOKED_VARIANT),),
    INVOKE_ASYNC: (
        ("InferenceId", INFERENCE_ID),
        ("OutputLocation", "aws.sagemaker.output_location"),
        ("FailureLocation", "aws.sagemaker.failure_location"),
    ),
}
_ECHO_KEYS = frozenset({_propagation.TRACERESPONSE})
_DEFAULT_PORTS = {"https": 443, "http": 80}
# Per-client cache, in the client's own __dict__: one dict lookup per call.
_CLIENT_ATTRIBUTES = "_sm_tracing_span_attributes"
_HOOKED_BY = "_sm_tracing_hooked_by"
_BEFORE_ID = "sm_tracing.inject"
_AFTER_ID = "sm_tracing.response"
_MAX_WARNED = 1024
_UPSTREAM_MODULE = "opentelemetry.instrumentation.botocore"

Started = tuple[Span, object]


def upstream_botocore() -> bool:
    """True while opentelemetry-instrumentation-botocore traces botocore clients."""
    return _upstream_active("BotocoreInstrumentor")


def upstream_aiobotocore() -> bool:
    """True while opentelemetry-instrumentation-botocore traces aiobotocore clients."""
    return _upstream_active("AiobotocoreInstrumentor")


def _upstream_active(name: str) -> bool:
    # Only looked at when the module is already loaded: importing it here would cost every
    # process that does not use it.
    module = sys.modules.get(_UPSTREAM_MODULE)
    if module is None:
        return False
    instance = getattr(getattr(module, name, None), "_instance", None)
    return instance is not None and bool(
        getattr(instance, "_is_instrumented_by_opentelemetry", False)
    )


class ClientHook:
    """The wrappers of ``_make_api_call`` and the client event handlers, with their options."""

    __slots__ = (
        "__weakref__",
        "_hooked",
        "_warned",
        "enabled",
        "endpoint_filter",
        "endpoint_names",
        "filtering",
        "inference_id_from_trace",
        "inject_opaque",
        "record_echo",
        "tracer",
    )

    def __init__(
        self,
        tracer: trace.Tracer,
        *,
        endpoints: Collection[str] | EndpointFilter | None = None,
        inject_opaque: bool = False,
        inference_id_from_trace: bool = False,
        record_echo: bool = True,
    ) -> None:
        self.tracer = tracer
        self.endpoint_names: frozenset[str] | None = None
        self.endpoint_filter: EndpointFilter | None = None
        if callable(endpoints):
            self.endpoint_filter = endpoints
        elif endpoints is not None:
            if isinstance(endpoints, str):
                raise TypeError("endpoints must be a collection of endpoint names, not a str")
            self.endpoint_names = frozenset(endpoints)
        self.filtering = endpoints is not None
        self.inject_opaque = inject_opaque
        self.inference_id_from_trace = inference_id_from_trace
        self.record_echo = record_echo
        self.enabled = True
        self._hooked: weakref.WeakSet[Any] = weakref.WeakSet()
        self._warned: set[str | None] = set()

    # -- the wrappers ---------------------------------------------------------------------

    def wrap_sync(
        self,
        wrapped: Callable[..., Any],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """wrapt wrapper of ``botocore.client.BaseClient._make_api_call``."""
        if not args or args[0] not in OPERATIONS:
            return wrapped(*args, **kwargs)
        started = self._start(instance, args, upstream_botocore)
        if started is None:
            return wrapped(*args, **kwargs)
        span, token = started
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as error:
            self._fail(span, token, error)
            raise
        return self._finish(span, token, args[0], result, TracedEventStream)

    def wrap_aio(
        self,
        wrapped: Callable[..., Awaitable[Any]],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Awaitable[Any]:
        """wrapt wrapper of ``aiobotocore.client.AioBaseClient._make_api_call``."""
        if not args or args[0] not in OPERATIONS:
            return wrapped(*args, **kwargs)
        return self._call_aio(wrapped, instance, args, kwargs)

    async def _call_aio(
        self,
        wrapped: Callable[..., Awaitable[Any]],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        started = self._start(instance, args, upstream_aiobotocore)
        if started is None:
            return await wrapped(*args, **kwargs)
        span, token = started
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as error:
            self._fail(span, token, error)
            raise
        return self._finish(span, token, args[0], result, AioTracedEventStream)

    def _start(
        self, client: Any, args: tuple[Any, ...], upstream: Callable[[], bool]
    ) -> Started | None:
        """Start the span and merge its context into the parameters; None to stay out."""
        try:
            if not self.enabled:
                return None
            operations = client.__dict__.get(_CLIENT_ATTRIBUTES)
            if operations is None:
                operations = _describe(client)
            if not operations:
                return None
            parent = otel_context.get_current()
            if parent.get(_SUPPRESS_INSTRUMENTATION_KEY) or parent.get(_SUPPRESS_PLAIN):
                return None
            if _UPSTREAM_MODULE in sys.modules and upstream():
                self._hook_events(client, upstream)
                return None
            operation = args[0]
            params = args[1]
            attributes = operations[operation].copy()
            for key, value in params.items():
                name = _REQUEST_ATTRIBUTES.get(key)
                if name is not None and isinstance(value, str):
                    attributes[name] = value
            span = self.tracer.start_span(
                _SPAN_NAMES[operation], parent, SpanKind.CLIENT, attributes
            )
            context = trace.set_span_in_context(span, parent)
        except Exception:
            _logger.warning("could not start the span of a SageMaker call", exc_info=True)
            return None
        try:
            self._inject(params, context, span)
        except Exception:
            _logger.warning("could not merge the trace context", exc_info=True)
        return span, otel_context.attach(context)

    def _finish(
        self,
        span: Span,
        token: object,
        operation: str,
        result: Any,
        stream_type: type[TracedEventStream],
    ) -> Any:
        otel_context.detach(token)  # type: ignore[arg-type]
        try:
            attributes: dict[str, AttributeValue] = {}
            for key, name in _RESPONSE_ATTRIBUTES[operation]:
                value = result.get(key)
                if value:
                    attributes[name] = value
            if "CustomAttributes" in result and self.record_echo:
                _take_echo(span, result, attributes)
            metadata = result.get("ResponseMetadata")
            if metadata:
                request_id = metadata.get("RequestId")
                if request_id:
                    attributes[REQUEST_ID] = request_id
                status = metadata.get("HTTPStatusCode")
                if status is not None:
                    attributes[STATUS_CODE] = status
            span.set_attributes(attributes)
            if operation == INVOKE_STREAM and span.is_recording():
                body = result.get("Body")
                if body is not None:
                    # The span now ends when the caller is done reading.
                    result["Body"] = stream_type(body, span)
                    return result
        except Exception:
            _logger.warning("could not record the response of a SageMaker call", exc_info=True)
        span.end()
        return result

    def _fail(self, span: Span, token: object, error: BaseException) -> None:
        otel_context.detach(token)  # type: ignore[arg-type]
        try:
            if isinstance(error, ClientError):
                metadata = error.response.get("ResponseMetadata") or {}
                attributes: dict[str, AttributeValue] = {}
                if metadata.get("RequestId"):
                    attributes[REQUEST_ID] = metadata["RequestId"]
                if metadata.get("HTTPStatusCode") is not None:
                    attributes[STATUS_CODE] = metadata["HTTPStatusCode"]
                span.set_attributes(attributes)
            record_error(span, error)
        except Exception:
            _logger.warning("could not record the error of a SageMaker call", exc_info=True)
        span.end()

    # -- shared by the wrappers and the event handlers ------------------------------------

    def _inject(self, params: dict[str, Any], context: Context, span: Span) -> None:
        if self.inference_id_from_trace and not params.get("InferenceId"):
            span_context = span.get_span_context()
            if span_context.is_valid:
                inference_id = f"{span_context.trace_id:032x}"
                params["InferenceId"] = inference_id
                span.set_attribute(INFERENCE_ID, inference_id)
        if self.filtering and not self._wanted(params):
            return
        merged, reason = _propagation.merge_context(
            params.get("CustomAttributes"), context, opaque=self.inject_opaque
        )
        if merged is not None:
            params["CustomAttributes"] = merged
        elif reason == _codec.SKIP_BUDGET:
            self._warn_budget(params.get("EndpointName"))
        else:
            _logger.debug(
                "CustomAttributes for endpoint %r sent as they were: %s",
                params.get("EndpointName"),
                reason,
            )

    def _wanted(self, params: dict[str, Any]) -> bool:
        endpoint = params.get("EndpointName")
        if self.endpoint_names is not None:
            return endpoint in self.endpoint_names
        if self.endpoint_filter is None or not isinstance(endpoint, str):
            return False
        try:
            return bool(self.endpoint_filter(endpoint, params))
        except Exception:
            _logger.warning(
                "the endpoints filter failed for %r; not injecting", endpoint, exc_info=True
            )
            return False

    def _warn_budget(self, endpoint: str | None) -> None:
        warned = self._warned
        if endpoint in warned:
            return
        if len(warned) < _MAX_WARNED:
            warned.add(endpoint)
        _logger.warning(
            "trace context not sent to endpoint %r: CustomAttributes would exceed %d characters",
            endpoint,
            _codec.MAX_LENGTH,
        )

    def _response_attributes(
        self, span: Span, operation: str, result: Any
    ) -> dict[str, AttributeValue]:
        attributes: dict[str, AttributeValue] = {}
        for key, name in _RESPONSE_ATTRIBUTES[operation]:
            value = result.get(key)
            if value:
                attributes[name] = value
        if self.record_echo and "CustomAttributes" in result:
            _take_echo(span, result, attributes)
        return attributes

    # -- with opentelemetry-instrumentation-botocore: enrich its span ---------------------

    def _hook_events(self, client: Any, upstream: Callable[[], bool]) -> None:
        """Register, once per client, the handlers that inject under the upstream span."""
        # The client's own dict answers "already hooked?" without a weakref per call.
        if client.__dict__.get(_HOOKED_BY) is self:
            return

        def before_parameter_build(params: dict[str, Any], model: Any, **_: Any) -> None:
            self._before_parameter_build(params, model, upstream)

        def after_call(parsed: Any, model: Any, **_: Any) -> None:
            self._after_call(parsed, model, upstream)

        events = client.meta.events
        events.register(
            f"before-parameter-build.{SERVICE}", before_parameter_build, unique_id=_BEFORE_ID
        )
        events.register(f"after-call.{SERVICE}", after_call, unique_id=_AFTER_ID)
        client.__dict__[_HOOKED_BY] = self
        self._hooked.add(client)

    def _active_upstream_span(self, model: Any, upstream: Callable[[], bool]) -> Span | None:
        # The handlers stay registered after the upstream instrumentation goes; from then on
        # the wrapper makes the span and the handlers keep out of its way.
        if model.name not in OPERATIONS or not self.enabled or not upstream():
            return None
        current = otel_context.get_current()
        if current.get(_SUPPRESS_INSTRUMENTATION_KEY) or current.get(_SUPPRESS_PLAIN):
            return None
        return trace.get_current_span(current)

    def _before_parameter_build(
        self, params: dict[str, Any], model: Any, upstream: Callable[[], bool]
    ) -> None:
        try:
            span = self._active_upstream_span(model, upstream)
            if span is None:
                return
            if span.is_recording():
                attributes: dict[str, AttributeValue] = {}
                for key, value in params.items():
                    name = _REQUEST_ATTRIBUTES.get(key)
                    if name is not None and isinstance(value, str):
                        attributes[name] = value
                span.set_attributes(attributes)
            self._inject(params, otel_context.get_current(), span)
        except Exception:
            _logger.warning("could not merge the trace context", exc_info=True)

    def _after_call(self, parsed: Any, model: Any, upstream: Callable[[], bool]) -> None:
        try:
            span = self._active_upstream_span(model, upstream)
            if span is None or not isinstance(parsed, dict):
                return
            span.set_attributes(self._response_attributes(span, model.name, parsed))
        except Exception:
            _logger.warning("could not record the response of a SageMaker call", exc_info=True)

    def unhook(self) -> None:
        """Stop for good: the wrappers pass calls through, the client handlers go."""
        self.enabled = False
        for client in list(self._hooked):
            try:
                events = client.meta.events
                events.unregister(f"before-parameter-build.{SERVICE}", unique_id=_BEFORE_ID)
                events.unregister(f"after-call.{SERVICE}", unique_id=_AFTER_ID)
                client.__dict__.pop(_HOOKED_BY, None)
            except Exception:
                _logger.warning("could not unregister the handlers of %r", client, exc_info=True)
        self._hooked.clear()


def _describe(client: Any) -> dict[str, dict[str, AttributeValue]]:
    """The span attributes that are the same on every call of *client*, per operation; empty
    for clients of other services. Cached on the client."""
    meta = client.meta
    operations: dict[str, dict[str, AttributeValue]] = {}
    if meta.service_model.service_name == SERVICE:
        static: dict[str, AttributeValue] = {
            "rpc.system": "aws-api",
            "rpc.service": "SageMaker Runtime",
        }
        if isinstance(meta.region_name, str):
            static["cloud.region"] = meta.region_name
        url = urlsplit(meta.endpoint_url or "")
        if url.hostname:
            static["server.address"] = url.hostname
        port = url.port
        if port is not None and port != _DEFAULT_PORTS.get(url.scheme):
            static["server.port"] = port
        for operation in OPERATIONS:
            operations[operation] = {**static, "rpc.method": operation}
    client.__dict__[_CLIENT_ATTRIBUTES] = operations
    return operations


def _take_echo(span: Span, result: dict[str, Any], attributes: dict[str, AttributeValue]) -> None:
    """Record the container's ``traceresponse`` echo and hand the caller the value without it."""
    value = result["CustomAttributes"]
    if not isinstance(value, str):
        return
    echo = _codec.find(value, _ECHO_KEYS).get(_propagation.TRACERESPONSE)
    if echo:
        remote = _propagation.parse_traceresponse(echo)
        if remote is not None:
            attributes[CONTAINER_TRACE_ID] = f"{remote.trace_id:032x}"
            attributes[CONTAINER_SPAN_ID] = f"{remote.span_id:016x}"
            if remote.trace_id != span.get_span_context().trace_id:
                span.add_link(remote)
    stripped = _propagation.strip_context(value)
    if stripped:
        result["CustomAttributes"] = stripped
    else:
        del result["CustomAttributes"]
