"""What the ``sagemaker-runtime`` calls add to the lifecycle: InvokeEndpoint,
InvokeEndpointWithResponseStream and InvokeEndpointAsync.

The trace context goes into the built request's ``X-Amzn-SageMaker-Custom-Attributes`` header
just before it is signed, merged with what the caller and their own botocore handlers put
there; the caller's parameters are never touched. The response's attributes and the
container's ``traceresponse`` echo are recorded on the span, and the echo is taken out of the
CustomAttributes the caller gets back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from opentelemetry.trace import Span, SpanContext, TraceFlags
from opentelemetry.util.types import AttributeValue

from sm_tracing import _codec, _propagation
from sm_tracing._attributes import (
    CONTAINER_DURATION,
    CONTAINER_SPAN_ID,
    CONTAINER_TRACE_ID,
    ENDPOINT_NAME,
    FAILURE_LOCATION,
    GENAI_MODEL,
    GENAI_OPERATION,
    GENAI_PROVIDER,
    HEADER,
    INFERENCE_COMPONENT,
    INFERENCE_ID,
    INFERENCE_ID_HEADER,
    INVOKED_VARIANT,
    OUTPUT_LOCATION,
    OVERHEAD,
    PREFIX_AWARE_ID,
    RPC_METHOD,
    RPC_SERVICE,
    RPC_SYSTEM,
    SESSION_ID,
    TARGET_CONTAINER_HOSTNAME,
    TARGET_MODEL,
    TARGET_VARIANT,
)
from sm_tracing.client._lifecycle import Call, Extension
from sm_tracing.client._metrics import Meters
from sm_tracing.client._options import ClientOptions, first_time
from sm_tracing.client._streams import (
    AioTracedEventStream,
    StreamTimes,
    TracedEventStream,
    metadata_attributes,
)

_logger = logging.getLogger(__name__)

SERVICE = "sagemaker-runtime"
INVOKE = "InvokeEndpoint"
INVOKE_STREAM = "InvokeEndpointWithResponseStream"
INVOKE_ASYNC = "InvokeEndpointAsync"
OPERATIONS = frozenset({INVOKE, INVOKE_STREAM, INVOKE_ASYNC})
# The conventions have no provider value for SageMaker yet, and a call's body is never read to
# tell a chat from a completion: SageMaker's model servers take a prompt and complete it.
SAGEMAKER_PROVIDER = "aws.sagemaker"
COMPLETION = "text_completion"

# Request parameters recorded on the span besides EndpointName; CustomAttributes and Body
# never are.
_REQUEST_ATTRIBUTES = {
    "TargetModel": TARGET_MODEL,
    "TargetVariant": TARGET_VARIANT,
    "TargetContainerHostname": TARGET_CONTAINER_HOSTNAME,
    "InferenceComponentName": INFERENCE_COMPONENT,
    "InferenceId": INFERENCE_ID,
    "SessionId": SESSION_ID,
    "PrefixAwareId": PREFIX_AWARE_ID,
}
_RESPONSE_ATTRIBUTES = {
    INVOKE: (("InvokedProductionVariant", INVOKED_VARIANT), ("NewSessionId", SESSION_ID)),
    INVOKE_STREAM: (("InvokedProductionVariant", INVOKED_VARIANT),),
    INVOKE_ASYNC: (
        ("InferenceId", INFERENCE_ID),
        ("OutputLocation", OUTPUT_LOCATION),
        ("FailureLocation", FAILURE_LOCATION),
    ),
}
_REQUEST_KEYS = frozenset(_REQUEST_ATTRIBUTES)
_LABELS = (RPC_METHOD, ENDPOINT_NAME, GENAI_PROVIDER, GENAI_OPERATION, GENAI_MODEL)
_now = time.time_ns


class Runtime(Extension):
    """The ``sagemaker-runtime`` calls of one ``instrument()``."""

    service = SERVICE
    operations = OPERATIONS
    static: ClassVar[Mapping[str, AttributeValue]] = {
        RPC_SYSTEM: "aws-api",
        RPC_SERVICE: "SageMaker Runtime",
    }

    def __init__(self, options: ClientOptions, meters: Meters | None) -> None:
        self.options = options
        self.meters = meters
        self._warned: set[str | None] = set()

    def attributes(self, call: Call, params: Mapping[str, Any]) -> dict[str, AttributeValue]:
        attributes: dict[str, AttributeValue] = {RPC_METHOD: call.operation}
        endpoint = params.get("EndpointName")
        if isinstance(endpoint, str):
            attributes[ENDPOINT_NAME] = endpoint
        if not _REQUEST_KEYS.isdisjoint(params):  # the others are rare
            for key, name in _REQUEST_ATTRIBUTES.items():
                value = params.get(key)
                if isinstance(value, str):
                    attributes[name] = value
        model = self.options.model(endpoint, params)
        if model is not None:
            attributes[GENAI_PROVIDER] = SAGEMAKER_PROVIDER
            attributes[GENAI_OPERATION] = COMPLETION
            attributes[GENAI_MODEL] = model
        if self.meters is not None and self.meters.recording():
            # The metric attributes: few values each, never per request.
            call.labels = {key: attributes[key] for key in _LABELS if key in attributes}
        return attributes

    def before_sign(self, call: Call, request: Any) -> None:
        """Merge the call's context into the request's CustomAttributes header (and, when asked,
        its trace id into an unset InferenceId header)."""
        options = self.options
        params = call.params
        endpoint = params.get("EndpointName")
        if options.endpoints is not None and not options.wants(endpoint, params):
            return  # an endpoint left out is left alone
        headers = request.headers
        span = call.span
        if (
            options.inference_id_from_trace
            and span is not None
            and not headers.get(INFERENCE_ID_HEADER)
        ):
            span_context = span.get_span_context()
            if span_context.is_valid:
                inference_id = f"{span_context.trace_id:032x}"
                headers[INFERENCE_ID_HEADER] = inference_id
                span.set_attribute(INFERENCE_ID, inference_id)
        value = headers.get(HEADER)
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        merged, reason = _propagation.merge_context(value, call.context, options.inject_opaque)
        if merged is not None:
            if value is None:
                headers[HEADER] = merged
            else:
                headers.replace_header(HEADER, merged)
        elif reason == _codec.SKIP_BUDGET:
            if first_time(self._warned, endpoint if isinstance(endpoint, str) else None):
                _logger.warning(
                    "trace context not sent to endpoint %r: CustomAttributes would exceed %d "
                    "characters",
                    endpoint,
                    _codec.MAX_LENGTH,
                )
        else:
            _logger.debug(
                "CustomAttributes for endpoint %r sent as they were: %s", endpoint, reason
            )

    def after_call(self, call: Call, parsed: Any) -> None:
        """Record the SageMaker attributes of the response and take the echo out of it; with
        the container's time in the echo, SageMaker's share of the call."""
        span = call.span
        if span is None or not isinstance(parsed, dict):
            return
        attributes: dict[str, AttributeValue] = {}
        for key, name in _RESPONSE_ATTRIBUTES[call.operation]:
            value = parsed.get(key)
            if value:
                attributes[name] = value
        variant = attributes.get(INVOKED_VARIANT)
        if variant is not None and call.labels is not None:
            call.labels[INVOKED_VARIANT] = variant
        returned = parsed.get("CustomAttributes")
        if self.options.record_echo and isinstance(returned, str):
            container = _take_echo(span, parsed, returned, attributes)
            if container is not None:
                # From the request to the response's headers, less the container's time until
                # its response started: the front door, the network and the queueing.
                overhead = max(0.0, (_now() - call.started) / 1e9 - container)
                attributes[OVERHEAD] = overhead
                if call.own and self.meters is not None and call.labels is not None:
                    self.meters.overhead.record(overhead, call.labels)
        metadata = parsed.get("ResponseMetadata")
        if metadata:
            metadata_attributes(metadata, attributes)
        span.set_attributes(attributes)

    def finish(self, call: Call, result: Any) -> bool:
        """Hand the span of a stream call to its response stream, which ends it when the caller
        is done reading."""
        span = call.span
        if call.operation != INVOKE_STREAM or span is None or not span.is_recording():
            return False
        body = result.get("Body") if isinstance(result, dict) else None
        if body is None or isinstance(body, (Mapping, bytes, str)):
            return False  # no event stream: a stub's answer, say
        aio = type(call.client).__module__.startswith("aiobotocore")
        stream_type = AioTracedEventStream if aio else TracedEventStream
        result["Body"] = stream_type(body, span, call.started, self._reporter(call))
        return True

    def ended(self, call: Call, error: BaseException | None) -> None:
        if self.meters is not None and call.labels is not None:
            self.meters.measure(call.labels, (_now() - call.started) / 1e9, error)

    def _reporter(self, call: Call) -> Any:
        meters, labels = self.meters, call.labels
        if meters is None or labels is None:
            return None

        def report(times: StreamTimes, error: BaseException | None) -> None:
            meters.measure_stream(labels, times, error)

        return report


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
        if int(trace_id, 16) != span.get_span_context().trace_id:
            span.add_link(SpanContext(int(trace_id, 16), int(span_id, 16), True, TraceFlags(flags)))
    if rest:
        result["CustomAttributes"] = rest
    else:
        del result["CustomAttributes"]
    return container
