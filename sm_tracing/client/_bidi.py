"""The client hook of InvokeEndpointWithBidirectionalStream, the HTTP/2 API of
``aws-sdk-sagemaker-runtime-http2`` (Python 3.12 and later; ``pip install sm-tracing[bidi]``).

The call has no CustomAttributes. Its ``ModelQueryString``, which SageMaker appends to the
WebSocket URL it opens on the container, carries the trace context instead.

The hook wraps ``invoke_endpoint_with_bidirectional_stream`` on the SDK's client class, under
either of its names (``SageMakerRuntimeHTTP2Client`` up to 0.7, ``AsyncSageMakerRuntimeHTTP2Client``
since), when the application imports the SDK: nothing here imports it. Each call gets a CLIENT
span; the SDK is handed a copy of the input whose query string has the span's context merged
in (the caller's own input object is left as it was), so the context is serialized and signed
like any parameter. The duplex stream comes back proxied: the span lasts as long as the
session and ends when the stream is closed, when the response stream ends or fails, or when the
caller lets go of every part of it, with a ``first_chunk`` event for the first response part
and the count of parts each way.

Why a wrapper and not one of the SDK's interceptors: the stream has to be wrapped in any case,
after-execution interceptor hooks fire when the stream opens rather than when it ends, and an
interceptor lives in each client's configuration. Reaching clients made before
``instrument()`` would mean editing their private configuration, or passing an operation
plugin on every call, which makes the SDK deep-copy its configuration (and its CRT transport,
so a new HTTP/2 connection) per call.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import threading
import weakref
from collections.abc import Callable, Coroutine, MutableSequence
from contextvars import Token
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.propagate import get_global_textmap
from opentelemetry.propagators.textmap import Setter
from opentelemetry.trace import Span, SpanKind
from opentelemetry.util.types import AttributeValue

from sm_tracing import _patching, _propagation, _querystring
from sm_tracing._attributes import (
    CHUNKS,
    ENDPOINT_NAME,
    INVOCATION_PATH,
    INVOKED_VARIANT,
    ORIGINAL_STATUS_CODE,
    OUTCOME,
    REQUEST_CHUNKS,
    REQUEST_ID,
    RPC_METHOD,
    RPC_SERVICE,
    RPC_SYSTEM,
    STATUS_CODE,
    TARGET_VARIANT,
)
from sm_tracing._guard import guard
from sm_tracing._telemetry import end_span, get_tracer
from sm_tracing.client._lifecycle import add_connection
from sm_tracing.client._options import ClientOptions, first_time
from sm_tracing.client._streams import FIRST_CHUNK, Proxy, record_failure

_logger = logging.getLogger(__name__)

MODULE = "aws_sdk_sagemaker_runtime_http2.client"
METHOD = "invoke_endpoint_with_bidirectional_stream"
OPERATION = "InvokeEndpointWithBidirectionalStream"
SERVICE = "SageMaker Runtime HTTP2"
SPAN_NAME = f"{SERVICE}.{OPERATION}"

# Input fields recorded on the span, with the name an endpoints filter sees them under. The
# query string never is: it is the caller's data.
_INPUT_FIELDS = (
    ("endpoint_name", "EndpointName", ENDPOINT_NAME),
    ("target_variant", "TargetVariant", TARGET_VARIANT),
    ("model_invocation_path", "ModelInvocationPath", INVOCATION_PATH),
)
_STATIC: dict[str, AttributeValue] = {
    RPC_SYSTEM: "aws-api",
    RPC_SERVICE: SERVICE,
    RPC_METHOD: OPERATION,
}
_INJECTING = "merge the trace context into a model query string"
# Wrapping and unwrapping happen under one lock: the import hook may run in any thread.
_LOCK = threading.Lock()


def _new_lock_in_child() -> None:
    # A fork while another thread held the lock leaves the child's copy held forever.
    global _LOCK  # noqa: PLW0603 - replaced whole, in the only thread the child has
    _LOCK = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_in_child)


class _QuerySetter(Setter[MutableSequence[tuple[str, str]]]):
    def set(self, carrier: MutableSequence[tuple[str, str]], key: str, value: str) -> None:
        carrier.append((key.lower(), _querystring.encode_value(value)))


_SETTER = _QuerySetter()


class BidiHook:
    """The wrapper of ``invoke_endpoint_with_bidirectional_stream`` of one ``instrument()``."""

    __slots__ = ("__weakref__", "_warned", "enabled", "options", "patches", "tracer")

    def __init__(self, options: ClientOptions) -> None:
        self.options = options
        self.tracer = get_tracer(options.tracer_provider)
        self.enabled = True
        self.patches: list[_patching.Patch] = []
        self._warned: set[str | None] = set()

    def wrap(
        self,
        wrapped: Callable[..., Coroutine[Any, Any, Any]],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Coroutine[Any, Any, Any]:
        """The wrapper of the client's ``invoke_endpoint_with_bidirectional_stream``."""
        if not self.enabled or not is_instrumentation_enabled():
            return wrapped(*args, **kwargs)
        return self._invoke(wrapped, instance, args, kwargs)

    async def _invoke(
        self,
        wrapped: Callable[..., Coroutine[Any, Any, Any]],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        started = guard(
            "start the span of a bidirectional stream", None, self._start, instance, args, kwargs
        )
        if started is None:
            return await wrapped(*args, **kwargs)
        span, token, args, kwargs = started
        try:
            stream = await wrapped(*args, **kwargs)
        except BaseException as error:  # the caller gets the error unchanged
            otel_context.detach(token)
            end_span(span, error, _record_error)
            raise
        otel_context.detach(token)
        traced = guard("follow a bidirectional stream", None, _follow, stream, span)
        if traced is None:
            end_span(span)
            return stream
        return traced

    def _start(
        self, client: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Span, Token[Context], tuple[Any, ...], dict[str, Any]] | None:
        """Start the span and merge its context into a copy of the input; None to stay out."""
        given = args[0] if args else kwargs.get("input")
        if given is None:
            return None
        attributes = _client_attributes(client)
        for field, _, name in _INPUT_FIELDS:
            value = getattr(given, field, None)
            if isinstance(value, str) and value:
                attributes[name] = value
        parent = otel_context.get_current()
        span = self.tracer.start_span(SPAN_NAME, parent, SpanKind.CLIENT, attributes)
        context = trace.set_span_in_context(span, parent)
        merged = guard(_INJECTING, None, self._inject, given, context)
        if merged is not None:
            if args:
                args = (merged, *args[1:])
            else:
                kwargs = {**kwargs, "input": merged}
        return span, otel_context.attach(context), args, kwargs

    def _inject(self, given: Any, context: Context) -> Any:
        """A copy of *given* with *context* in its query string, or None to send it as it is."""
        query = getattr(given, "model_query_string", None)
        if query is not None and not isinstance(query, str):
            return None  # the SDK refuses it before it leaves
        endpoint = getattr(given, "endpoint_name", None)
        options = self.options
        if options.endpoints is not None and not options.wants(endpoint, _filter_params(given)):
            return None  # an endpoint left out is left alone
        propagator = get_global_textmap()
        pairs: list[tuple[str, str]] = []
        propagator.inject(pairs, context=context, setter=_SETTER)
        keys = _propagation.our_keys(propagator)
        merged, reason = _querystring.merge(query, pairs, keys.owns, _propagation.DROP_ORDER)
        if merged is None:
            if reason == _querystring.SKIP_BUDGET:
                if first_time(self._warned, endpoint):
                    _logger.warning(
                        "trace context not sent to endpoint %r: the model query string would "
                        "exceed %d characters",
                        endpoint,
                        _querystring.MAX_LENGTH,
                    )
            else:
                _logger.debug(
                    "model query string for endpoint %r sent as it was: %s", endpoint, reason
                )
            return None
        return _with_query(given, merged)


def _filter_params(given: Any) -> dict[str, Any]:
    """What an endpoints filter is shown of the input *given*: its fields under the names of
    InvokeEndpoint's parameters."""
    params = {key: getattr(given, field, None) for field, key, _ in _INPUT_FIELDS}
    params["ModelQueryString"] = getattr(given, "model_query_string", None)
    return params


def _with_query(given: Any, query: str) -> Any:
    if dataclasses.is_dataclass(given) and not isinstance(given, type):
        return dataclasses.replace(given, model_query_string=query)
    changed = copy.copy(given)
    changed.model_query_string = query
    return changed


def _client_attributes(client: Any) -> dict[str, AttributeValue]:
    """The span attributes of *client*'s configuration that are known before the call."""
    # The SDK resolves its configuration on the first call; until then this may be the
    # caller's, or None. Only what is certainly there is recorded.
    config = getattr(client, "_config", None)
    endpoint = getattr(config, "endpoint_uri", None)
    host: object
    port: object
    scheme: object
    if isinstance(endpoint, str):
        url = urlsplit(endpoint)
        host, port, scheme = url.hostname, url.port, url.scheme
    else:  # smithy's URI, or None
        host, port, scheme = (getattr(endpoint, name, None) for name in ("host", "port", "scheme"))
    return add_connection(dict(_STATIC), getattr(config, "region", None), host, port, scheme)


def _record_error(span: Span, error: BaseException) -> None:
    """Record a failed call or stream: what failed and where, never a message."""
    if not span.is_recording():
        return
    attributes: dict[str, AttributeValue] = {}
    _metadata_attributes(getattr(error, "response_metadata", None), attributes)
    original = getattr(error, "original_status_code", None)
    if isinstance(original, int):
        attributes[ORIGINAL_STATUS_CODE] = original
    span.set_attributes(attributes)
    record_failure(span, error)


def _metadata_attributes(metadata: object, attributes: dict[str, AttributeValue]) -> None:
    """Add to *attributes* the request id and HTTP status of the SDK's response *metadata*."""
    request_id = getattr(metadata, "request_id", None)
    if isinstance(request_id, str) and request_id:
        attributes[REQUEST_ID] = request_id
    status = getattr(metadata, "http_status_code", None)
    if isinstance(status, int):
        attributes[STATUS_CODE] = status


# -- the duplex stream, followed to its end ------------------------------------------------


class _Session:
    """The span of one stream and the parts counted each way. Refers to no proxy, so the
    finalizer that holds it does not keep the proxies alive."""

    __slots__ = ("done", "finalizer", "received", "sent", "span")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.sent = 0
        self.received = 0
        self.done = False
        self.finalizer: weakref.finalize[Any, Any] | None = None

    def received_part(self) -> None:
        self.received += 1
        if self.received == 1:
            guard("record the first part of a response", None, self.span.add_event, FIRST_CHUNK)

    def finish(self, outcome: str, error: BaseException | None = None) -> None:
        """End the span; later calls do nothing."""
        if self.done:
            return
        self.done = True
        if self.finalizer is not None:
            self.finalizer.detach()
        guard("record the end of a bidirectional stream", None, self._record, outcome, error)
        end_span(self.span)

    def _record(self, outcome: str, error: BaseException | None) -> None:
        self.span.set_attributes(
            {REQUEST_CHUNKS: self.sent, CHUNKS: self.received, OUTCOME: outcome}
        )
        if error is not None:
            _record_error(self.span, error)


class _Anchor:
    """Held by every proxy of one stream: collected, with the last of them, when the caller
    has let go of the whole stream."""

    __slots__ = ("__weakref__",)


def _follow(stream: Any, span: Span) -> TracedDuplexStream | None:
    if not span.is_recording():
        return None
    return TracedDuplexStream(stream, span)


class TracedDuplexStream(Proxy):
    """The SDK's ``DuplexEventStream``, ending *span* when the session is over.

    ``input_stream``, ``await_output()``, ``output_stream``, ``close()`` and ``async with`` give
    the traced parts; everything else reaches the SDK's object.
    """

    def __init__(self, wrapped: Any, span: Span) -> None:
        super().__init__(wrapped)
        session = _Session(span)
        anchor = _Anchor()
        finalizer = weakref.finalize(anchor, session.finish, "abandoned")
        # At interpreter exit the exporters may be gone already: a stream still open then
        # leaves its span unended rather than logging errors on the way out.
        finalizer.atexit = False
        session.finalizer = finalizer
        self._self_session = session
        self._self_anchor = anchor
        self._self_input = TracedPublisher(wrapped.input_stream, session, anchor)
        self._self_output: TracedReceiver | None = None

    @property
    def input_stream(self) -> TracedPublisher:
        return self._self_input

    @property
    def output_stream(self) -> TracedReceiver | None:
        return self._self_receiver(self.__wrapped__.output_stream)

    def _self_receiver(self, receiver: Any) -> TracedReceiver | None:
        if receiver is None:
            return None
        traced = self._self_output
        if traced is None or traced.__wrapped__ is not receiver:
            traced = TracedReceiver(receiver, self._self_session, self._self_anchor)
            self._self_output = traced
        return traced

    async def await_output(self) -> tuple[Any, TracedReceiver | None]:
        """The initial response and the traced output stream, once SageMaker has answered."""
        session = self._self_session
        try:
            output, receiver = await self.__wrapped__.await_output()
        except BaseException as error:
            session.finish("error", error)
            raise
        guard(
            "record the response of a bidirectional stream", None, _record_output, session, output
        )
        return output, self._self_receiver(receiver)

    async def close(self) -> None:
        """Close both directions of the stream, and end the span."""
        session = self._self_session
        try:
            await self.__wrapped__.close()
        except BaseException as error:
            session.finish("error", error)
            raise
        session.finish("closed")

    async def __aenter__(self) -> TracedDuplexStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _record_output(session: _Session, output: Any) -> None:
    span = session.span
    attributes: dict[str, AttributeValue] = {}
    variant = getattr(output, "invoked_production_variant", None)
    if isinstance(variant, str) and variant:
        attributes[INVOKED_VARIANT] = variant
    _metadata_attributes(getattr(output, "response_metadata", None), attributes)
    span.set_attributes(attributes)


class TracedPublisher(Proxy):
    """The input stream: counts the parts sent. Closing it only ends the caller's half of the
    session; the span waits for the response."""

    def __init__(self, wrapped: Any, session: _Session, anchor: _Anchor) -> None:
        super().__init__(wrapped)
        self._self_session = session
        self._self_anchor = anchor

    async def send(self, event: Any) -> None:
        session = self._self_session
        try:
            await self.__wrapped__.send(event)
        except BaseException as error:
            session.finish("error", error)
            raise
        session.sent += 1

    async def __aenter__(self) -> TracedPublisher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.__wrapped__.close()


class TracedReceiver(Proxy):
    """The output stream: counts the parts received; its end, an error from it or closing it
    ends the span."""

    def __init__(self, wrapped: Any, session: _Session, anchor: _Anchor) -> None:
        super().__init__(wrapped)
        self._self_session = session
        self._self_anchor = anchor

    async def receive(self) -> Any:
        session = self._self_session
        try:
            event = await self.__wrapped__.receive()
        except BaseException as error:
            session.finish("error", error)
            raise
        if event is None:
            session.finish("complete")
        elif not session.done:
            session.received_part()
        return event

    async def close(self) -> None:
        session = self._self_session
        try:
            await self.__wrapped__.close()
        finally:
            session.finish("closed")

    def __aiter__(self) -> TracedReceiver:
        return self

    async def __anext__(self) -> Any:
        event = await self.receive()
        if event is None:
            await self.__wrapped__.close()
            raise StopAsyncIteration
        return event

    async def __aenter__(self) -> TracedReceiver:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


# -- installing and removing ---------------------------------------------------------------


def install(options: ClientOptions) -> BidiHook:
    """Trace the bidirectional streams of every client of aws-sdk-sagemaker-runtime-http2,
    now if the SDK is imported already, or when it is. Never imports it."""
    hook = BidiHook(options)
    _patching.when_imported(MODULE, "sm_tracing.bidi", partial(_patch_module, hook))
    return hook


def uninstall(hook: BidiHook) -> None:
    """Undo :func:`install`: no more spans or injection, on any client. Streams already open
    keep their spans until they end."""
    _patching.when_imported(MODULE, "sm_tracing.bidi", None)
    with _LOCK:
        hook.enabled = False
        patches, hook.patches = hook.patches, []
    for handle in patches:
        _patching.unpatch(handle)


def _patch_module(hook: BidiHook, module: Any) -> None:
    with _LOCK:
        if not hook.enabled:
            return
        for owner in _client_classes(module):
            handle = guard(
                "patch a bidirectional stream client",
                None,
                _patching.patch,
                owner,
                METHOD,
                hook.wrap,
            )
            if handle is not None:
                hook.patches.append(handle)


def _client_classes(module: Any) -> list[type]:
    """The client classes the SDK's module defines, whatever their name in this release."""
    return [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and METHOD in value.__dict__
        and value.__module__ == module.__name__
    ]
