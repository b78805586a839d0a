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

The hook is off unless asked for (``instrument(transform_jobs=True)``). It writes into a copy
of the parameters, after every other ``before-parameter-build`` handler: the caller's dict is
left as it was, and botocore's ``Stubber`` compares its ``expected_params`` with the caller's
parameters, without the added variables.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, MutableSequence
from typing import Any, ClassVar

from opentelemetry.context import Context
from opentelemetry.propagate import get_global_textmap
from opentelemetry.propagators.textmap import Setter
from opentelemetry.util.types import AttributeValue

from sm_tracing import _codec, _propagation
from sm_tracing._attributes import JOB_NAME, RPC_METHOD, RPC_SERVICE, RPC_SYSTEM
from sm_tracing.client._lifecycle import Call, Extension
from sm_tracing.client._streams import metadata_attributes

_logger = logging.getLogger(__name__)

SERVICE = "sagemaker"
OPERATION = "CreateTransformJob"
SPAN_NAME = f"SageMaker.{OPERATION}"
MAX_VARIABLES = 16
MAX_VALUE_LENGTH = 10240
_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]{0,1023}")
SKIP_USER_PARENT = "the Environment already holds a trace parent"
SKIP_NO_ROOM = f"the Environment has no room within {MAX_VARIABLES} variables"
SKIP_UNFIT = "the trace parent is not a valid environment variable"
SKIP_NO_PARENT = "no trace parent to send"


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


class TransformJobs(Extension):
    """CreateTransformJob calls of ``sagemaker`` clients."""

    service = SERVICE
    operations = frozenset({OPERATION})
    static: ClassVar[Mapping[str, AttributeValue]] = {
        RPC_SYSTEM: "aws-api",
        RPC_SERVICE: "SageMaker",
        RPC_METHOD: OPERATION,
    }
    sending = "merge the trace context into a transform job's Environment"
    copies_params = True
    events = ("before-parameter-build",)

    def attributes(self, call: Call, params: Mapping[str, Any]) -> dict[str, AttributeValue]:
        name = params.get("TransformJobName")
        return {JOB_NAME: name} if isinstance(name, str) and name else {}

    def before_build(self, call: Call, params: dict[str, Any]) -> None:
        inject_environment(params, call.context)

    def after_call(self, call: Call, parsed: Any) -> None:
        metadata = parsed.get("ResponseMetadata") if isinstance(parsed, dict) else None
        span = call.span
        if metadata and span is not None and span.is_recording():
            attributes: dict[str, AttributeValue] = {}
            metadata_attributes(metadata, attributes)
            span.set_attributes(attributes)
