"""The client hook of CreateTransformJob (service ``sagemaker``): the job's trace context in its
``Environment``, where its containers find it.

A batch transform job calls its containers with no CustomAttributes, but starts them with the
job's ``Environment``. Each CreateTransformJob call gets a CLIENT span, and the span's context,
written by the configured propagator, goes into that map under environment-variable names
(each key upper-cased, ``-`` as ``_``: ``TRACEPARENT``, ``TRACESTATE``, ``BAGGAGE``) before
botocore serializes and signs the request. The container side reads them back from its own
environment, so every record of the job joins the job's trace.

The caller's variables are never replaced, and when they already hold a trace parent nothing
is added. The map stays within the API's limits (16 entries, names
``[a-zA-Z_][a-zA-Z0-9_]{0,1023}``, values of at most 10240 characters): baggage goes first,
then tracestate, and when even the parent has no room the request goes as it was, with one
warning. Per-entry baggage keys (Jaeger's ``uberctx-*``) are not carried: the container reads
only the propagator's fixed fields.

The hook is off unless asked for, so it has a wrapper of its own on ``_make_api_call``, which
passes every other call through after one comparison. Where
opentelemetry-instrumentation-botocore already makes a span for the call, no second span is
made: an event handler on the client writes that span's context instead.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, MutableSequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.propagate import get_global_textmap
from opentelemetry.propagators.textmap import Setter
from opentelemetry.trace import Span, Tracer
from opentelemetry.util.types import AttributeValue

from sm_tracing import _codec, _propagation
from sm_tracing._common import CLIENT, attach_context, current_context
from sm_tracing._guard import guard
from sm_tracing.client._hook import (
    ClientHook,
    TracedCall,
    client_attributes,
)
from sm_tracing.client._instrumentor import unwrap_make_api_call, wrap_make_api_call
from sm_tracing.client._streams import metadata_attributes

_logger = logging.getLogger(__name__)

SERVICE = "sagemaker"
OPERATION = "CreateTransformJob"
SPAN_NAME = f"SageMaker.{OPERATION}"
JOB_NAME = "aws.sagemaker.transform_job.name"
MAX_VARIABLES = 16
MAX_VALUE_LENGTH = 10240
_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]{0,1023}")
SKIP_USER_PARENT = "the Environment already holds a trace parent"
SKIP_NO_ROOM = f"the Environment has no room within {MAX_VARIABLES} variables"
SKIP_UNFIT = "the trace parent is not a valid environment variable"
SKIP_NO_PARENT = "no trace parent to send"
_STATIC: dict[str, AttributeValue] = {
    "rpc.system": "aws-api",
    "rpc.service": "SageMaker",
    "rpc.method": OPERATION,
}
# Per-client cache, in the client's own __dict__: the span attributes of a sagemaker client,
# empty for a client of another service.
_INJECTING = "merge the trace context into a transform job's Environment"


def variable_name(key: str) -> str:
    """The environment variable a propagator's field *key* travels in: ``traceparent`` as
    ``TRACEPARENT``, ``uber-trace-id`` as ``UBER_TRACE_ID``."""
    return key.upper().replace("-", "_")


class _PairSetter(Setter[MutableSequence[tuple[str, str]]]):
    def set(self, carrier: MutableSequence[tuple[str, str]], key: str, value: str) -> None:
        carrier.append((key.lower(), value))


_SETTER = _PairSetter()


def merge_environment(
    environment: Mapping[Any, Any] | None,
    pairs: list[tuple[str, str]],
    keys: _codec.Keys,
) -> tuple[dict[Any, Any] | None, str | None]:
    """The Environment to send: *environment* (None for none) with the propagator's *pairs*
    added as variables after the caller's, or ``(None, reason)`` to send it as it was.

    A variable the caller set is never replaced; when the caller set a trace parent (any of
    *keys*' required fields) nothing is added. Pairs that are not *keys*' fixed fields, or
    whose name or value cannot be a variable, are left out; over 16 variables, baggage and
    then tracestate go; when a required field is left out, nothing is added.
    """
    given = environment or {}
    if any(variable_name(key) in given for key in keys.required):
        return None, SKIP_USER_PARENT
    ours: dict[str, str] = {}
    kept: dict[str, str] = {}  # the propagator's key of each variable
    for key, value in pairs:
        name = variable_name(key)
        if key not in keys.exact or name in given:
            continue
        if _NAME.fullmatch(name) is None or len(value) > MAX_VALUE_LENGTH:
            if key in keys.required:
                return None, SKIP_UNFIT
            continue
        ours[name] = value
        kept[name] = key
    if not any(key in keys.required for key in kept.values()):
        return None, SKIP_NO_PARENT
    room = MAX_VARIABLES - len(given)
    for dropped in _propagation.DROP_ORDER:
        if len(ours) <= room:
            break
        for name in [name for name, key in kept.items() if key == dropped]:
            del ours[name]
    if len(ours) > room:
        return None, SKIP_NO_ROOM
    return {**given, **ours}, None


def inject_environment(params: dict[str, Any], context: Context) -> None:
    """Merge *context*, written by the configured propagator, into the ``Environment`` of
    CreateTransformJob *params*; raises what the propagator raises."""
    environment = params.get("Environment")
    if environment is not None and not isinstance(environment, Mapping):
        return  # botocore refuses it before it leaves
    propagator = get_global_textmap()
    pairs: list[tuple[str, str]] = []
    propagator.inject(pairs, context=context, setter=_SETTER)
    merged, reason = merge_environment(environment, pairs, _propagation.our_keys(propagator))
    if merged is not None:
        params["Environment"] = merged  # a new map: the caller's own is left as it was
    elif reason in (SKIP_NO_ROOM, SKIP_UNFIT):
        _logger.warning(
            "trace context not sent to transform job %r: %s", params.get("TransformJobName"), reason
        )
    else:
        _logger.debug(
            "Environment of transform job %r sent as it was: %s",
            params.get("TransformJobName"),
            reason,
        )


class _Call(TracedCall):
    """One CreateTransformJob call traced by our own span, ended when the call returns."""

    __slots__ = ()

    def _close(self, result: Any) -> None:
        try:
            _record_response(self.span, result)
        finally:
            self.span.end()


def _record_response(span: Span, result: Mapping[str, Any]) -> None:
    metadata = result.get("ResponseMetadata")
    if not metadata or not span.is_recording():
        return
    attributes: dict[str, AttributeValue] = {}
    metadata_attributes(metadata, attributes)
    span.set_attributes(attributes)


class TransformHook(ClientHook):
    """The wrappers of ``_make_api_call`` and the client event handler of one
    :func:`install`."""

    __slots__ = ("tracer",)

    operations = frozenset({OPERATION})
    events = ((f"before-parameter-build.{SERVICE}.{OPERATION}", "sm_tracing.transform_job"),)
    _starting = "start the span of a transform job"
    _hooked_by = "_sm_tracing_transform_hooked_by"
    _described_by = "_sm_tracing_transform_attributes"

    def __init__(self, tracer: Tracer) -> None:
        super().__init__()
        self.tracer = tracer

    def _start(self, client: Any, operation: str, params: Any, aio: bool) -> _Call | None:
        if not self.enabled or not is_instrumentation_enabled():
            return None
        static = self._traced(client, aio)
        if static is None:
            return None
        attributes = static.copy()
        name = params.get("TransformJobName")
        if isinstance(name, str) and name:
            attributes[JOB_NAME] = name
        parent = current_context()
        span = self.tracer.start_span(SPAN_NAME, parent, CLIENT, attributes)
        context = trace.set_span_in_context(span, parent)
        guard(_INJECTING, None, inject_environment, params, context)
        return _Call(span, attach_context(context))

    def _describe(self, client: Any) -> dict[str, AttributeValue]:
        """The span attributes every CreateTransformJob call of *client* shares."""
        meta = client.meta
        if meta.service_model.service_name != SERVICE:
            return {}
        return client_attributes(meta, _STATIC)

    # -- with opentelemetry-instrumentation-botocore: inject under its span ----------------

    def _handlers(self, upstream: Callable[[], bool]) -> tuple[Callable[..., None], ...]:
        def before_parameter_build(params: dict[str, Any], **_: Any) -> None:
            guard(_INJECTING, None, self._inject_upstream, params, upstream)

        return (before_parameter_build,)

    def _inject_upstream(self, params: dict[str, Any], upstream: Callable[[], bool]) -> None:
        # The handler stays registered after the upstream instrumentation goes; from then on
        # the wrapper makes the span and the handler keeps out of its way.
        if not self.enabled or not upstream() or not is_instrumentation_enabled():
            return
        span = trace.get_current_span()
        name = params.get("TransformJobName")
        if span.is_recording() and isinstance(name, str) and name:
            span.set_attribute(JOB_NAME, name)
        inject_environment(params, current_context())


# -- installing and removing ---------------------------------------------------------------


def install(tracer: Tracer) -> TransformHook:
    """Trace CreateTransformJob on every ``sagemaker`` client, botocore's now and aiobotocore's
    now or when it is imported, with spans from *tracer*; :func:`uninstall` undoes it."""
    hook = TransformHook(tracer)
    wrap_make_api_call(hook)
    return hook


def uninstall(hook: TransformHook) -> None:
    """Undo :func:`install`: no more spans or injection, on any client."""
    unwrap_make_api_call(hook)
