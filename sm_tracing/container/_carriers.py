"""Where the CustomAttributes of a request are, in each serving stack's own objects.

A carrier gives the raw CustomAttributes of each request it holds (one, or one per request of
a batch), the SageMaker attributes of the container span, hides our keys from the application
and puts the trace echo into the response. Discovery is by shape, not by import, so no serving
stack is imported here: a toolkit / Multi Model Server / TorchServe ``context`` (it has
``request_processor``), a DJL Serving ``Input`` (``get_property`` and ``get_batches``), or the
current Flask request.
"""

from __future__ import annotations

import contextlib
import sys
import weakref
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any, Protocol

from opentelemetry.trace import SpanContext
from opentelemetry.util.types import AttributeValue

from sm_tracing import _propagation
from sm_tracing._attributes import (
    HEADER,
    HEADER_LOWER,
    SAGEMAKER_ENVIRON_KEYS,
    SAGEMAKER_HEADERS,
    environ_key,
)
from sm_tracing._guard import guard
from sm_tracing._telemetry import set_status_code
from sm_tracing.container._primitive import Invocation

CustomAttributesGetter = Callable[[tuple[Any, ...], dict[str, Any]], "str | None"]

# The raw value each model-server request came with, kept after we strip it from the headers
# the handler sees, so a second decorated function of the same request still finds its parent.
_originals: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


class Carrier(Protocol):
    """The CustomAttributes of the request(s) one handler call serves."""

    def values(self) -> Sequence[str | None]:
        """The raw CustomAttributes of each request: one entry, or one per batched request."""

    def attributes(self, index: int) -> dict[str, AttributeValue]:
        """The SageMaker span attributes of request *index*."""

    def links(self) -> Sequence[SpanContext]:
        """Spans to link: the callers of a batch whose requests can't be told apart."""

    def reveal(self) -> None:
        """Show the handler the CustomAttributes without our keys."""

    def respond(self, index: int, invocation: Invocation, result: object) -> None:
        """Echo *invocation*'s span into request *index*'s response; note a 5xx status."""


def find_header(headers: Mapping[Any, Any], lowered: str) -> tuple[Any, Any]:
    """The ``(key, value)`` of the string header named *lowered*, in any case, or Nones."""
    for key, value in headers.items():
        if isinstance(key, str) and isinstance(value, str) and key.lower() == lowered:
            return key, value
    return None, None


def answer(context: Any, index: int, invocation: Invocation, code: object) -> None:
    """Note the status *code* of request *index* of a model-server *context* on *invocation*'s
    span, and echo the span into the request's response headers, after what the handler set."""
    if isinstance(code, int):
        set_status_code(invocation.span, code)
    key, value = find_header(context.get_response_headers(index) or {}, HEADER_LOWER)
    merged = invocation.echo(value)
    if merged is not None:
        context.set_response_header(index, key or HEADER, merged)


def sagemaker_attributes(headers: Mapping[Any, Any]) -> dict[str, AttributeValue]:
    """The span attributes of the SageMaker headers present in *headers* (any case)."""
    attributes: dict[str, AttributeValue] = {}
    wanted = dict(SAGEMAKER_HEADERS)
    for key, value in headers.items():
        if isinstance(key, str) and isinstance(value, str):
            attribute = wanted.get(key.lower())
            if attribute is not None:
                attributes[attribute] = value
    return attributes


class ExplicitCarrier:
    """CustomAttributes the user's own callable pulls out of the handler's arguments."""

    __slots__ = ("_value",)

    def __init__(self, value: str | None) -> None:
        self._value = value

    def values(self) -> Sequence[str | None]:
        return (self._value,)

    def attributes(self, index: int) -> dict[str, AttributeValue]:
        return {}

    def links(self) -> Sequence[SpanContext]:
        return ()

    def reveal(self) -> None:
        pass  # the handler reads the value its own way: nothing of ours to rewrite

    def respond(self, index: int, invocation: Invocation, result: object) -> None:
        pass  # no response object is known


class ModelServerCarrier:
    """A sagemaker-inference-toolkit / Multi Model Server / TorchServe ``context``.

    Request headers come from ``get_all_request_header(idx)`` (skipping non-string values,
    which are per-parameter content types), the echo goes back with
    ``set_response_header(idx, ...)``, merged after what the handler set. A *shared* carrier
    stands for a call that serves one item of a batch without saying which (the toolkit's
    per-item functions): its one span is a new root linked to every caller, and no response
    gets an echo, since none of them is known to be its own.
    """

    __slots__ = ("_context", "_headers", "_shared")

    def __init__(self, context: Any, count: int, *, shared: bool = False) -> None:
        self._context = context
        self._shared = shared
        self._headers: list[MutableMapping[Any, Any]] = [
            context.get_all_request_header(index) or {} for index in range(count)
        ]

    def _raw(self) -> list[str | None]:
        values: list[str | None] = []
        processors = self._context.request_processor
        for index, headers in enumerate(self._headers):
            value = find_header(headers, HEADER_LOWER)[1]
            original = _original(processors[index])
            # An earlier decorated function of this request took our keys out of the header
            # the handler sees; the value remembered then still carries them.
            if original is not None and (
                value is None or value == _propagation.strip_context(original)
            ):
                value = original
            values.append(value)
        return values

    def values(self) -> Sequence[str | None]:
        return (None,) if self._shared else self._raw()

    def attributes(self, index: int) -> dict[str, AttributeValue]:
        return {} if self._shared else sagemaker_attributes(self._headers[index])

    def links(self) -> Sequence[SpanContext]:
        if not self._shared:
            return ()
        found = (_propagation.remote_span_context(value) for value in self._raw())
        return [span_context for span_context in found if span_context is not None]

    def reveal(self) -> None:
        processors = self._context.request_processor
        for index, headers in enumerate(self._headers):
            key, value = find_header(headers, HEADER_LOWER)
            if key is None:
                continue
            stripped = _propagation.strip_context(value)
            if stripped == value:
                continue
            # A processor that takes no weak reference has nothing remembered.
            with contextlib.suppress(TypeError):
                _originals[processors[index]] = value
            if stripped:
                headers[key] = stripped
            else:
                del headers[key]

    def respond(self, index: int, invocation: Invocation, result: object) -> None:
        if self._shared:
            return
        status = self._context.get_response_status(index)
        code = status[0] if isinstance(status, tuple) else status
        answer(self._context, index, invocation, code)


class IdleCarrier:
    """A model-server ``context`` that holds no request: the handler is being loaded or
    probed (TorchServe's ``handle(None, context)``), not called for a request."""

    __slots__ = ()

    def values(self) -> Sequence[str | None]:
        return ()

    def attributes(self, index: int) -> dict[str, AttributeValue]:
        return {}

    def links(self) -> Sequence[SpanContext]:
        return ()

    def reveal(self) -> None:
        pass

    def respond(self, index: int, invocation: Invocation, result: object) -> None:
        pass


IDLE = IdleCarrier()


def _original(processor: Any) -> str | None:
    try:
        return _originals.get(processor)
    except TypeError:
        return None


class DJLCarrier:
    """A DJL Serving ``Input``: SageMaker's CustomAttributes arrive split into properties.

    DJL splits the header on ``;`` and each pair on ``=``, so the trace context is rebuilt from
    the properties named like our keys (or read whole from a property named like the header).
    Properties are left as they are: the handler never sees the header itself. The echo goes
    into the returned ``Output`` with ``add_property``, for a single request.
    """

    __slots__ = ("_inputs", "_properties")

    def __init__(self, inputs: Any) -> None:
        self._inputs = inputs
        is_batch = getattr(inputs, "is_batch", None)
        batches = inputs.get_batches() if is_batch is not None and is_batch() else (inputs,)
        self._properties: list[Mapping[Any, Any]] = [
            getattr(item, "properties", None) or {} for item in batches
        ]

    def values(self) -> Sequence[str | None]:
        keys = _propagation.our_keys()
        values: list[str | None] = []
        for properties in self._properties:
            header, pairs = None, []
            for key, value in properties.items():
                if not isinstance(key, str) or not isinstance(value, str):
                    continue
                lowered = key.lower()
                if lowered == HEADER_LOWER:
                    header = value
                elif lowered in keys:
                    pairs.append(f"{lowered}={value}")
            values.append(header if header is not None else ";".join(pairs) or None)
        return values

    def attributes(self, index: int) -> dict[str, AttributeValue]:
        return sagemaker_attributes(self._properties[index])

    def links(self) -> Sequence[SpanContext]:
        return ()

    def reveal(self) -> None:
        pass  # properties named like our keys are harmless to a DJL handler

    def respond(self, index: int, invocation: Invocation, result: object) -> None:
        if len(self._properties) != 1:
            return  # batched outputs have no per-request header we know how to set
        code = getattr(result, "code", None)
        if isinstance(code, int):
            set_status_code(invocation.span, code)
        properties = getattr(result, "properties", None)
        add_property = getattr(result, "add_property", None)
        if not isinstance(properties, Mapping) or add_property is None:
            return
        key, value = find_header(properties, HEADER_LOWER)
        merged = invocation.echo(value)
        if merged is not None:
            add_property(key or HEADER, merged)


class FlaskCarrier:
    """The current Flask request: the header is read and rewritten in its WSGI environ, and
    the echo is added to the response by ``after_this_request``."""

    __slots__ = ("_environ",)

    _KEY = environ_key(HEADER)

    def __init__(self, environ: MutableMapping[str, Any]) -> None:
        self._environ = environ

    def values(self) -> Sequence[str | None]:
        value = self._environ.get(self._KEY)
        return (value if isinstance(value, str) else None,)

    def attributes(self, index: int) -> dict[str, AttributeValue]:
        environ = self._environ
        attributes: dict[str, AttributeValue] = {}
        for key, attribute in SAGEMAKER_ENVIRON_KEYS:
            value = environ.get(key)
            if isinstance(value, str):
                attributes[attribute] = value
        return attributes

    def links(self) -> Sequence[SpanContext]:
        return ()

    def reveal(self) -> None:
        value = self._environ.get(self._KEY)
        if not isinstance(value, str):
            return
        stripped = _propagation.strip_context(value)
        if stripped:
            self._environ[self._KEY] = stripped
        else:
            del self._environ[self._KEY]

    def respond(self, index: int, invocation: Invocation, result: object) -> None:
        import flask

        def add_echo(response: Any) -> Any:
            guard("add the trace echo to the response", None, _echo_into, response, invocation)
            return response

        flask.after_this_request(add_echo)


def _echo_into(response: Any, invocation: Invocation) -> None:
    merged = invocation.echo(response.headers.get(HEADER))
    if merged is not None:
        response.headers[HEADER] = merged


def discover(
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    getter: CustomAttributesGetter | None,
    batch: bool | None,
) -> Carrier | None:
    """The carrier of a handler call, or None when there is none to find; :data:`IDLE` for a
    model-server context that holds no request. Raises what the carrier's objects raise."""
    if getter is not None:
        return ExplicitCarrier(getter(args, kwargs))
    previous: object = None
    for arg in (*args, *kwargs.values()):
        if isinstance(arg, (str, bytes, bytearray, int, float, list, tuple, dict)):
            previous = arg
            continue
        if hasattr(arg, "get_all_request_header") and hasattr(arg, "request_processor"):
            processors = arg.request_processor
            if not processors:
                return IDLE
            count = len(processors)
            if batch is None:
                # A batch handler (TorchServe's handle(data, context)) gets a list of one
                # entry per request just before the context; a toolkit function gets one.
                batch = isinstance(previous, list) and len(previous) == count
            if batch or count == 1:
                return ModelServerCarrier(arg, count)
            return ModelServerCarrier(arg, count, shared=True)
        if hasattr(arg, "get_batches") and hasattr(arg, "get_property"):
            return DJLCarrier(arg)
        previous = arg
    flask = sys.modules.get("flask")
    if flask is not None and flask.has_request_context():
        return FlaskCarrier(flask.request.environ)
    return None
