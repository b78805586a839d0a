"""The one lifecycle of a traced botocore call, and the one patch that drives it.

``_make_api_call`` of botocore's client base class (and aiobotocore's) is patched once per
``instrument()``. A call of an operation an extension covers goes like this:

1. the patch gives the call its span: the CLIENT span another instrumentation
   (opentelemetry-instrumentation-botocore) already made current for it, which then gains our
   attributes, or else one of ours, made current for the call. The patch is the innermost
   wrapper (see :mod:`sm_tracing._patching`), so every other tool's wrapper has started by then,
   whatever order they were installed in. Where it had to go on top of a wrapper left bound in
   the class, the call gets its span at its first event (``before-parameter-build``) instead,
   once the wrappers under the patch have started;
2. the extension writes the trace context where the operation carries it: into the built
   request's CustomAttributes header at ``before-sign``, after the user's own handlers (so the
   caller's parameters, and botocore's Stubber, never see it), or into the parameters at
   ``before-parameter-build``;
3. the extension records the response on the span: our own span's when the call returns, the
   other instrumentation's at ``after-call``, while that span is still open;
4. when the call returns or raises, our own span ends, or is handed to the response stream.
"""

from __future__ import annotations

import inspect
import logging
import os
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
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.trace import Span, SpanKind, Tracer
from opentelemetry.util.types import AttributeValue

from sm_tracing import _patching
from sm_tracing._attributes import CLOUD_REGION, SERVER_ADDRESS, SERVER_PORT
from sm_tracing._guard import guard
from sm_tracing.client._streams import record_failure

_logger = logging.getLogger(__name__)

_METHOD = "_make_api_call"
# After the instance, whatever another wrapper names it.
_PARAMETERS = ["operation_name", "api_params"]
_AIO_MODULE = "aiobotocore.client"
_DEFAULT_PORTS = {"https": 443, "http": 80}
# The first event of every call: before the parameters are checked, before a Stubber answers.
_FIRST_EVENT = "before-parameter-build"
_now = time.time_ns
_UNTRACEABLE = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
# The scope names of OpenTelemetry's instrumentations: botocore's and aiobotocore's among them.
_INSTRUMENTATIONS = "opentelemetry.instrumentation."

# The call under way in this context, as the patch noted it: the client's event handlers find
# it here. Reset when the call returns, so a call made inside another finds its own.
_CALL: ContextVar[Call | None] = ContextVar("sm_tracing_call", default=None)

# Every hook's lock is new in a forked child: a fork while another thread held one would leave
# the child's copy held forever.
_hooks: weakref.WeakSet[ClientHook] = weakref.WeakSet()


def _new_locks_in_child() -> None:
    for hook in list(_hooks):
        hook._lock = threading.Lock()


os.register_at_fork(after_in_child=_new_locks_in_child)


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
    events: ClassVar[tuple[str, ...]] = ("before-sign",)
    """The client events whose step the extension takes on every call
    (``before-parameter-build``, ``before-sign``); ``after-call`` is added on a client once a
    span of another instrumentation's is seen there."""

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
        "context",
        "extension",
        "labels",
        "late",
        "name",
        "noted",
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
        self, client: Any, known: _Client, operation: str, params: Mapping[str, Any]
    ) -> None:
        self.client = client
        self.name = known.names[operation]
        self.static = known.static
        self.extension = known.extension
        self.operation = operation
        self.params = params
        self.parent = otel_context.get_current()
        self.started = _now()
        self.span: Span | None = None
        self.context = self.parent
        """The context whose span is the call's, once it has one."""
        self.own = False
        self.token: object | None = None
        self.labels: dict[str, AttributeValue] | None = None
        """The metric attributes of the call, set by extensions that measure it."""
        self.late: Callable[[Call], None] | None = None
        """What gives the call its span, where that waits for the call's first event (see
        :meth:`ClientHook._start`)."""

    def settle(self) -> None:
        """Give the call its span now, if that was left for later."""
        late, self.late = self.late, None
        if late is not None:
            guard("start the span of a SageMaker call", None, late, self)

    def __enter__(self) -> Call:
        self.noted = _CALL.set(self)
        if self.own:
            self.token = otel_context.attach(self.context)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        _CALL.reset(self.noted)
        if self.token is not None:
            otel_context.detach(self.token)  # type: ignore[arg-type]
            self.token = None
        if error is not None and self.late is not None:
            self.settle()
        if error is not None and self.own:
            guard("end the span of a SageMaker call", None, self._end, error)

    def returned(self, result: Any) -> Any:
        """*result*, once our own span has ended or been handed to the response stream."""
        if self.late is not None:
            self.settle()
        if self.own:
            guard("end the span of a SageMaker call", None, self._returned, result)
        return result

    def _returned(self, result: Any) -> None:
        self.extension.after_call(self, result)
        if not self.extension.finish(self, result):
            self._end(None)

    def _end(self, error: BaseException | None) -> None:
        span = self.span
        if span is None:
            return
        try:
            if error is not None:
                record_failure(span, error)
        finally:
            span.end()
        self.extension.ended(self, error)


class _Client:
    """What every traced call of one client shares."""

    __slots__ = ("extension", "names", "static")

    def __init__(self, extension: Extension, client: Any) -> None:
        meta = client.meta
        url = urlsplit(meta.endpoint_url or "")
        self.extension = extension
        # Each span named "Service Id.Operation", as opentelemetry-instrumentation-botocore names
        # it.
        service_id = meta.service_model.service_id
        self.names = {operation: f"{service_id}.{operation}" for operation in extension.operations}
        self.static = add_connection(
            dict(extension.static), meta.region_name, url.hostname, url.port, url.scheme
        )


class ClientHook:
    """The patch of one ``instrument()`` on botocore's (and aiobotocore's) ``_make_api_call``,
    the event handlers it registers on each client it sees, and the *extensions* that know
    each service."""

    def __init__(
        self, tracer: Tracer, extensions: list[Extension], watch_provider: bool = False
    ) -> None:
        self.tracer = tracer
        # Whether to say, on the first call traced by no provider, that none is set.
        self._watch_provider = watch_provider
        self._handlers: dict[str, Callable[..., None]] = {
            "before-parameter-build": self._before_build,
            "before-sign": self._before_sign,
            "after-call": self._after_call,
        }
        self.enabled = True
        self.extensions = {extension.service: extension for extension in extensions}
        self.operations = frozenset().union(*(e.operations for e in extensions))
        self._lock = threading.Lock()
        _hooks.add(self)
        self._patches: list[_patching.Patch] = []
        # Per client: what its traced calls share; None for a client of another service.
        self._clients: weakref.WeakKeyDictionary[Any, _Client | None] = weakref.WeakKeyDictionary()
        self._lost_warned = False
        # Whether a patch went on top of a bound wrapper: calls then get their spans late.
        self._late = False

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
            handle = _patching.patch(owner, _METHOD, wrapper)
            self._patches.append(handle)
            self._late = self._late or handle.over_bound

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
        call, args, kwargs = self._begin(client, args, kwargs)
        if call is None:
            return wrapped(*args, **kwargs)
        with call:
            result = wrapped(*args, **kwargs)
        return call.returned(result)

    async def _traced_aio(
        self, wrapped: Callable[..., Any], client: Any, args: Any, kwargs: Any
    ) -> Any:
        call, args, kwargs = self._begin(client, args, kwargs)
        if call is None:
            return await wrapped(*args, **kwargs)
        with call:
            result = await wrapped(*args, **kwargs)
        return call.returned(result)

    def _begin(
        self, client: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Call | None, tuple[Any, ...], dict[str, Any]]:
        """The call to trace, its span started, with the arguments to make it with; None to
        leave the call alone."""
        operation = args[0] if args else kwargs.get("operation_name")
        if operation not in self.operations or not self.enabled:
            return None, args, kwargs
        call = guard("start the span of a SageMaker call", None, self._start, client, args, kwargs)
        if call is None:
            return None, args, kwargs
        if call.extension.copies_params:
            params = dict(call.params)
            if len(args) > 1:
                args = (args[0], params, *args[2:])
            else:
                kwargs = {**kwargs, "api_params": params}
        return call, args, kwargs

    def _start(self, client: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call | None:
        if not is_instrumentation_enabled():
            return None
        known = self._known(client)
        if known is None:
            return None
        operation = args[0] if args else kwargs["operation_name"]
        params = args[1] if len(args) > 1 else kwargs.get("api_params")
        if not isinstance(params, dict) or operation not in known.extension.operations:
            return None
        call = Call(client, known, operation, params)
        if self._late:
            # Under a bound wrapper, another instrumentation's span of the call starts after
            # ours would: wait for the call's first event (or its end) to see it.
            call.late = self._settle
        else:
            self._start_span(call, call.parent)
        return call

    # -- the client's handlers ----------------------------------------------------------------

    def _known(self, client: Any) -> _Client | None:
        """What the traced calls of *client* share; None for a client of another service.
        Its handlers are registered the first time it is seen."""
        try:
            return self._clients[client]
        except KeyError:
            pass
        extension = self.extensions.get(client.meta.service_model.service_name)
        known = None if extension is None else _Client(extension, client)
        with self._lock:
            if not self.enabled:
                return None
            if known is not None:
                self._register(client, known.extension)
            self._clients[client] = known
        return known

    def _register(self, client: Any, extension: Extension) -> None:
        # On the event's bare name, last: after the user's own handlers and botocore's
        # Stubber, whatever operation those name.
        events = client.meta.events
        ref = weakref.ref(client)
        names = extension.events
        if self._late and _FIRST_EVENT not in names:
            names = (_FIRST_EVENT, *names)  # where a late call gets its span
        for event in names:
            handler = partial(self._handlers[event], ref)
            events.register_last(event, handler, unique_id=self._unique_id(event))

    def _register_after_call(self, client: Any) -> None:
        """Record responses at ``after-call`` on *client*, where the span of a call ends before
        the patch sees its result."""
        handler = partial(self._handlers["after-call"], weakref.ref(client))
        unique_id = self._unique_id("after-call")
        with self._lock:
            if self.enabled:
                client.meta.events.register_last("after-call", handler, unique_id=unique_id)

    def _unregister(self, client: Any) -> None:
        events = client.meta.events
        for event in self._handlers:
            events.unregister(event, unique_id=self._unique_id(event))

    def _unique_id(self, event: str) -> str:
        return f"sm_tracing.{event}.{id(self)}"

    def _call_of(self, client_ref: weakref.ref[Any], operation: str) -> Call | None:
        """The call under way of the client *client_ref* refers to, or None."""
        if not self.enabled:
            return None  # a handler left on a client after uninstall
        call = _CALL.get()
        if call is not None and call.client is client_ref() and call.operation == operation:
            if call.late is not None:
                call.settle()
            return call
        if call is None and operation in self.operations:
            self._check_lost()
        return None

    def _before_build(self, client_ref: Any, params: Any, model: Any, **_: Any) -> None:
        call = self._call_of(client_ref, model.name)
        if call is not None and call.span is not None:
            extension = call.extension
            guard(extension.sending, None, extension.before_build, call, params)

    def _before_sign(self, client_ref: Any, request: Any, operation_name: str, **_: Any) -> None:
        call = self._call_of(client_ref, operation_name)
        if call is not None and call.span is not None:
            extension = call.extension
            guard(extension.sending, None, extension.before_sign, call, request)

    def _after_call(self, client_ref: Any, parsed: Any, model: Any, **_: Any) -> None:
        call = self._call_of(client_ref, model.name)
        if call is not None and call.span is not None and not call.own:
            guard("record the response", None, call.extension.after_call, call, parsed)

    def _settle(self, call: Call) -> None:
        self._start_span(call, otel_context.get_current())

    def _start_span(self, call: Call, context: otel_context.Context) -> None:
        """Give *call* its span: the CLIENT span another instrumentation made current for it
        in *context* (with our attributes added), or one of ours, started now."""
        attributes = call.extension.attributes(call, call.params)
        current = trace.get_current_span(context)
        if _made_for(current, call):
            current.set_attributes(attributes)
            call.span = current
            call.context = context
            self._register_after_call(call.client)
            return
        attributes.update(call.static)
        span = self.tracer.start_span(
            call.name, call.parent, SpanKind.CLIENT, attributes, start_time=call.started
        )
        call.span = span
        call.context = trace.set_span_in_context(span, call.parent)
        call.own = True
        if self._watch_provider and not span.is_recording():
            self._say_untraced()

    def _say_untraced(self) -> None:
        # A span that records nothing is either sampled out or made by the API's stand-in
        # provider; in the second case nothing in this process is traced: say so, once.
        self._watch_provider = False
        if isinstance(trace.get_tracer_provider(), _UNTRACEABLE):
            _logger.warning(
                "SageMaker calls are instrumented but not traced: no OpenTelemetry SDK "
                "TracerProvider is set. Call sm_tracing.configure(), or set one with "
                "opentelemetry.trace.set_tracer_provider(TracerProvider()), before the "
                "first call; or pass tracer_provider= to sm_tracing.instrument()."
            )

    def _check_lost(self) -> None:
        """Say once that another tool took the patch away, if it did: a handler of ours ran
        for a call that did not go through it."""
        if self._lost_warned or self.installed():
            return
        self._lost_warned = True
        _logger.warning(
            "SageMaker calls are no longer traced: another tool replaced botocore's "
            "BaseClient._make_api_call with a method it had saved before sm_tracing patched it "
            "(a plain monkeypatch or unittest.mock.patch.object does this). Call "
            "sm_tracing.instrument() again to trace them."
        )


def _made_for(span: Span, call: Call) -> bool:
    """Whether *span* is a CLIENT span another instrumentation started for *call*: named as
    opentelemetry-instrumentation-botocore names it, by an instrumentation of OpenTelemetry's
    (an application's own span of that name is a parent, not the call's)."""
    if not span.is_recording():
        return False
    scope = getattr(getattr(span, "instrumentation_scope", None), "name", None)
    return (
        getattr(span, "name", None) == call.name
        and getattr(span, "kind", None) is SpanKind.CLIENT
        and isinstance(scope, str)
        and scope.startswith(_INSTRUMENTATIONS)
    )


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
        attributes[CLOUD_REGION] = region
    if isinstance(host, str) and host:
        attributes[SERVER_ADDRESS] = host
    if isinstance(port, int) and port != _DEFAULT_PORTS.get(str(scheme)):
        attributes[SERVER_PORT] = port
    return attributes
