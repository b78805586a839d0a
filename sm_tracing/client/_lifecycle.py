"""The one lifecycle of a traced botocore call, and the one patch that drives it.

``_make_api_call`` of botocore's client base class (and aiobotocore's) is patched once per
``instrument()``. A call of an operation an extension covers goes like this:

1. the patch notes the call (when it began, the context it began in) and lets it go on, down
   whatever other tools wrapped the same method;
2. at ``before-parameter-build``, after every wrapper has started and the user's own handlers
   have set their defaults, the call gets its span: the CLIENT span another instrumentation
   (opentelemetry-instrumentation-botocore) has already made current for it, which then gains
   our attributes, or else one of ours, made current;
3. the extension writes the trace context where the operation carries it: into the built
   request's CustomAttributes header at ``before-sign`` (so the caller's parameters, and
   botocore's Stubber, never see it), or into the parameters;
4. at ``after-call`` the extension records the response on the span, which is still open
   whoever made it;
5. when the call returns or raises, our own span ends, or is handed to the response stream.

Deciding the span inside the call, instead of in the patch, gives one span per call wherever
the patch sits among the other tools' wrappers: above or below the upstream instrumentation's,
and after that instrumentation was removed from under ours.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from functools import partial
from types import TracebackType
from typing import Any, ClassVar
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.trace import Span, SpanKind, Tracer
from opentelemetry.util.types import AttributeValue

from sm_tracing import _patching
from sm_tracing._guard import guard
from sm_tracing._telemetry import end_span
from sm_tracing.client._streams import record_failure

_logger = logging.getLogger(__name__)

_METHOD = "_make_api_call"
# After the instance, whatever another wrapper names it.
_PARAMETERS = ["operation_name", "api_params"]
_AIO_MODULE = "aiobotocore.client"
_DEFAULT_PORTS = {"https": 443, "http": 80}
_now = time.time_ns

# The call under way in this context, as the patch noted it: the client's event handlers find
# it here. Reset when the call returns, so a call made inside another finds its own.
_CALL: ContextVar[Call | None] = ContextVar("sm_tracing_call", default=None)


class Extension:
    """What one service's traced operations need beyond the lifecycle: the span's attributes,
    where the context goes, what the response says. The lifecycle calls each step under its
    guard."""

    service: ClassVar[str]
    """The botocore service name of the clients covered."""
    operations: ClassVar[frozenset[str]]
    """The operations traced; any other call goes straight through."""
    static: ClassVar[Mapping[str, AttributeValue]]
    """The attributes every call's span has."""
    sending: ClassVar[str] = "merge the trace context"
    """What could not be done when sending the context fails, for the log."""
    copies_params: ClassVar[bool] = False
    """Whether ``before_build`` writes into the parameters: the call is then handed a copy,
    so the caller's own dict is never changed."""

    def attributes(self, call: Call, params: Mapping[str, Any]) -> dict[str, AttributeValue]:
        """The span attributes of *call*'s parameters."""
        return {}

    def before_build(self, call: Call, params: dict[str, Any]) -> None:
        """The span is decided; the parameters are final and not yet serialized."""

    def before_sign(self, call: Call, request: Any) -> None:
        """The request is built, about to be signed (and again on each retry)."""

    def after_call(self, call: Call, parsed: Any) -> None:
        """The response is parsed (or answered by a stub); the span is still open."""

    def finish(self, call: Call, result: Any) -> bool:
        """Our own span's call returned *result*: True when something else (a response stream)
        now ends the span."""
        return False

    def ended(self, call: Call, error: BaseException | None) -> None:
        """Our own span's call ended, having raised *error* if not None; the span has ended."""


class Call:
    """One traced call, from the patch to the end of its span."""

    __slots__ = (
        "client",
        "extension",
        "labels",
        "operation",
        "own",
        "params",
        "parent",
        "span",
        "started",
        "static",
        "token",
    )

    def __init__(
        self,
        client: Any,
        extension: Extension,
        operation: str,
        params: Mapping[str, Any],
        static: dict[str, AttributeValue],
    ) -> None:
        self.client = client
        self.static = static
        self.extension = extension
        self.operation = operation
        self.params = params
        self.parent = otel_context.get_current()
        self.started = _now()
        self.span: Span | None = None
        self.own = False
        self.token: object | None = None
        self.labels: dict[str, AttributeValue] | None = None
        """The metric attributes of the call, set by extensions that measure it."""

    @property
    def context(self) -> Context:
        """The context whose span is the call's."""
        span = self.span
        if span is None:
            return self.parent
        return trace.set_span_in_context(span, otel_context.get_current())


class _Scope:
    """The call's stay in the patch: notes it for the handlers, ends our own span on the way
    out. One body for botocore's call and aiobotocore's awaited one."""

    __slots__ = ("call", "hook", "noted")

    def __init__(self, hook: ClientHook, call: Call) -> None:
        self.hook = hook
        self.call = call

    def __enter__(self) -> Call:
        self.noted = _CALL.set(self.call)
        return self.call

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        _CALL.reset(self.noted)
        call = self.call
        if call.token is not None:
            otel_context.detach(call.token)  # type: ignore[arg-type]
            call.token = None
        if error is not None and call.own and call.span is not None:
            end_span(call.span, error, record_failure)
            guard("measure a SageMaker call", None, call.extension.ended, call, error)


class ClientHook:
    """The patch of one ``instrument()`` on botocore's (and aiobotocore's) ``_make_api_call``,
    the event handlers it registers on each client it sees, and the *extensions* that know
    each service."""

    def __init__(self, tracer: Tracer, extensions: list[Extension]) -> None:
        self.tracer = tracer
        self.enabled = True
        self.extensions = {extension.service: extension for extension in extensions}
        self.operations = frozenset().union(*(e.operations for e in extensions))
        self._lock = threading.Lock()
        self._patches: list[_patching.Patch] = []
        # Per client: its service's extension (None for another service) and the attributes
        # every traced call of it has.
        self._clients: weakref.WeakKeyDictionary[
            Any, tuple[Extension, dict[str, AttributeValue]] | None
        ] = weakref.WeakKeyDictionary()
        self._lost_warned = False

    # -- installing -------------------------------------------------------------------------

    def install(self) -> None:
        """Patch botocore's client now, aiobotocore's now or when it is imported."""
        import botocore.client

        self._patch(botocore.client.BaseClient, self._traced)
        _patching.when_imported(_AIO_MODULE, "sm_tracing.client", self._patch_aio)

    def _patch_aio(self, module: Any) -> None:
        self._patch(module.AioBaseClient, self._traced_aio)

    def _patch(self, owner: type, wrapper: _patching.Wrapper) -> None:
        with self._lock:
            if not self.enabled:
                return
            original = owner.__dict__.get(_METHOD)
            parameters = _parameters(original)[1:]
            if parameters != _PARAMETERS:
                _logger.warning(
                    "SageMaker calls are not traced: %s.%s takes %s, not the %s it is traced by",
                    owner.__name__,
                    _METHOD,
                    parameters,
                    _PARAMETERS,
                )
                return
            self._patches.append(_patching.patch(owner, _METHOD, wrapper))

    def uninstall(self) -> None:
        """Undo :meth:`install`: the patches go (or pass calls through where another tool's
        wrapper above them can't be repointed), and so do the handlers on every client."""
        _patching.when_imported(_AIO_MODULE, "sm_tracing.client", None)
        with self._lock:
            self.enabled = False
            patches, self._patches = self._patches, []
            clients = list(self._clients.keys())
            self._clients.clear()
        for handle in patches:
            _patching.unpatch(handle)
        for client in clients:
            guard("unregister the handlers of a client", None, self._unregister, client)

    def installed(self) -> bool:
        """Whether botocore's calls still reach the patch: False once another tool has put
        back a method it saved from before it."""
        with self._lock:
            patches = list(self._patches)
        return self.enabled and all(handle.installed() for handle in patches)

    # -- the patch --------------------------------------------------------------------------

    def _traced(self, wrapped: Callable[..., Any], client: Any, args: Any, kwargs: Any) -> Any:
        scope, args, kwargs = self._begin(client, args, kwargs)
        if scope is None:
            return wrapped(*args, **kwargs)
        with scope as call:
            result = wrapped(*args, **kwargs)
        return self._finish(call, result)

    async def _traced_aio(
        self, wrapped: Callable[..., Any], client: Any, args: Any, kwargs: Any
    ) -> Any:
        scope, args, kwargs = self._begin(client, args, kwargs)
        if scope is None:
            return await wrapped(*args, **kwargs)
        with scope as call:
            result = await wrapped(*args, **kwargs)
        return self._finish(call, result)

    def _begin(
        self, client: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[_Scope | None, tuple[Any, ...], dict[str, Any]]:
        """The scope of a call to trace, with the arguments to make it with; None to leave
        the call alone."""
        operation = args[0] if args else kwargs.get("operation_name")
        if operation not in self.operations or not self.enabled:
            return None, args, kwargs
        scope = guard("start tracing a SageMaker call", None, self._note, client, args, kwargs)
        if scope is None:
            return None, args, kwargs
        if scope.call.extension.copies_params:
            params = dict(scope.call.params)
            if len(args) > 1:
                args = (args[0], params, *args[2:])
            else:
                kwargs = {**kwargs, "api_params": params}
        return scope, args, kwargs

    def _note(self, client: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Scope | None:
        if not is_instrumentation_enabled():
            return None
        known = self._known(client)
        if known is None:
            return None
        extension, static = known
        operation = args[0] if args else kwargs["operation_name"]
        params = args[1] if len(args) > 1 else kwargs.get("api_params")
        if not isinstance(params, Mapping) or operation not in extension.operations:
            return None
        return _Scope(self, Call(client, extension, operation, params, static))

    def _finish(self, call: Call, result: Any) -> Any:
        span = call.span
        if not call.own or span is None:
            return result
        followed = guard("follow a response stream", False, call.extension.finish, call, result)
        if not followed:
            end_span(span)
            guard("measure a SageMaker call", None, call.extension.ended, call, None)
        return result

    # -- the client's handlers ----------------------------------------------------------------

    def _known(self, client: Any) -> tuple[Extension, dict[str, AttributeValue]] | None:
        """The extension of *client*'s service and the attributes of all its traced calls;
        None for a client of another service. Its handlers are registered the first time."""
        try:
            return self._clients[client]
        except KeyError:
            pass
        meta = client.meta
        extension = self.extensions.get(meta.service_model.service_name)
        known = None
        if extension is not None:
            url = urlsplit(meta.endpoint_url or "")
            static = dict(extension.static)
            add_connection(static, meta.region_name, url.hostname, url.port, url.scheme)
            known = (extension, static)
        with self._lock:
            if not self.enabled:
                return None
            if known is not None:
                self._register(client)
            self._clients[client] = known
        return known

    def _register(self, client: Any) -> None:
        events = client.meta.events
        ref = weakref.ref(client)
        for event, handler in self._handlers():
            events.register_last(event, partial(handler, ref), unique_id=self._unique_id(event))

    def _unregister(self, client: Any) -> None:
        events = client.meta.events
        for event, _ in self._handlers():
            events.unregister(event, unique_id=self._unique_id(event))

    def _handlers(self) -> tuple[tuple[str, Callable[..., None]], ...]:
        # Registered on the event's bare name, last: they run after the user's own handlers
        # and botocore's Stubber, whatever operation those name.
        return (
            ("before-parameter-build", self._before_build),
            ("before-sign", self._before_sign),
            ("after-call", self._after_call),
        )

    def _unique_id(self, event: str) -> str:
        return f"sm_tracing.{event}.{id(self)}"

    def _call_of(self, client_ref: weakref.ref[Any], operation: str) -> Call | None:
        """The call under way of the client *client_ref* refers to, or None."""
        call = _CALL.get()
        if call is not None and call.client is client_ref() and call.operation == operation:
            return call
        if call is None and operation in self.operations and self.enabled:
            self._check_lost()
        return None

    def _before_build(self, client_ref: Any, params: Any, model: Any, **_: Any) -> None:
        call = self._call_of(client_ref, model.name)
        if call is not None:
            guard("start the span of a SageMaker call", None, self._start_span, call, params)
            if call.span is not None:
                extension = call.extension
                guard(extension.sending, None, extension.before_build, call, params)

    def _before_sign(self, client_ref: Any, request: Any, operation_name: str, **_: Any) -> None:
        call = self._call_of(client_ref, operation_name)
        if call is not None and call.span is not None:
            extension = call.extension
            guard(extension.sending, None, extension.before_sign, call, request)

    def _after_call(self, client_ref: Any, parsed: Any, model: Any, **_: Any) -> None:
        call = self._call_of(client_ref, model.name)
        if call is not None and call.span is not None:
            guard("record the response", None, call.extension.after_call, call, parsed)

    def _start_span(self, call: Call, params: Mapping[str, Any]) -> None:
        """Give *call* its span: the CLIENT span another instrumentation made current for it
        (with our attributes added), or one of ours, made current."""
        if call.span is not None:
            return  # a retried build: the call has its span already
        attributes = call.extension.attributes(call, params)
        current = trace.get_current_span()
        if _made_for(current, call):
            current.set_attributes(attributes)
            call.span = current
            return
        span = self.tracer.start_span(
            _span_name(call),
            call.parent,
            SpanKind.CLIENT,
            {**call.static, **attributes},
            start_time=call.started,
        )
        call.span = span
        call.own = True
        call.token = otel_context.attach(trace.set_span_in_context(span, call.parent))

    def _check_lost(self) -> None:
        """Say once that another tool took the patch away, if it did: a handler of ours ran
        for a call that did not go through it."""
        if self._lost_warned or self.installed():
            return
        self._lost_warned = True
        _logger.warning(
            "SageMaker calls are no longer traced: another tool replaced botocore's "
            "BaseClient._make_api_call with a method it had saved before sm_tracing patched it "
            "(ddtrace's unpatch does this). Call sm_tracing.instrument() again to trace them."
        )


def _made_for(span: Span, call: Call) -> bool:
    """Whether *span* is a CLIENT span another instrumentation started for *call*: named as
    opentelemetry-instrumentation-botocore names it, not one of ours."""
    if not span.is_recording():
        return False
    scope = getattr(span, "instrumentation_scope", None)
    return (
        getattr(span, "kind", None) is SpanKind.CLIENT
        and getattr(span, "name", None) == _span_name(call)
        and getattr(scope, "name", None) != "sm_tracing"
    )


def _span_name(call: Call) -> str:
    """``Service Id.Operation``, as opentelemetry-instrumentation-botocore names the span."""
    return f"{call.client.meta.service_model.service_id}.{call.operation}"


def _parameters(method: object) -> list[str]:
    try:
        return list(inspect.signature(method).parameters)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return []


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
