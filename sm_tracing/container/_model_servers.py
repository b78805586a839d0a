"""The model servers' own per-request dispatch, traced: one container span per request.

Multi Model Server and TorchServe hand every batch of requests to the model from
``Service.predict`` (``mms.service``, ``ts.service``), through the entry point the model
declared: the SageMaker inference toolkit's handler service (and the PyTorch and Hugging Face
toolkits built on it) or a TorchServe custom handler. Wrapping ``predict`` gives each request
its own SERVER span in its own caller's trace, whatever the handler's signature, shows the
handler the request's CustomAttributes without our keys and echoes each span into its own
response. Code that serves a whole batch at once belongs to no single caller: it runs under a
new root, linked to every caller of the batch. Where a toolkit serves the items of a batch one
by one (the inference toolkit's ``Transformer`` calls its transform function once per item, in
order), each item runs under its own request's span.

Nothing is imported here: each hook is put in place when its module is imported, or at once if
it already is.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
from collections.abc import Callable, MutableMapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import wrapt
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, TracerProvider

from sm_tracing import _propagation
from sm_tracing._attributes import HEADER_LOWER
from sm_tracing._common import attach_context, detach_context, unwrap
from sm_tracing._guard import guard
from sm_tracing._telemetry import end_span, get_tracer, set_status_code
from sm_tracing.container._carriers import answer, find_header, sagemaker_attributes
from sm_tracing.container._primitive import Invocation, RemoteContext, remote_context_policy

_logger = logging.getLogger(__name__)

REQUEST_SPAN = "invocations"
BATCH_SPAN = "batch"
# The model servers' services: each calls the model's entry point from ``predict``.
_SERVICES = ("mms.service", "ts.service")
_TRANSFORMER = "sagemaker_inference.transformer"
_LOCK = threading.RLock()
# The hook in force: none, or the one instrument_model_server() installed.
_installed: list[_Hook] = []
# The batch being served in this context, while the entry point runs.
_serving: ContextVar[_Batch | None] = ContextVar("sm_tracing_model_server_batch", default=None)


def reveal(headers: MutableMapping[Any, Any], key: Any, invocation: Invocation) -> None:
    """Show the handler *invocation*'s CustomAttributes without our keys, under *key*."""
    remainder = invocation.remainder
    if key is None or remainder is headers.get(key):
        return
    if remainder:
        headers[key] = remainder
    else:
        del headers[key]


def callers(values: Sequence[str | None]) -> list[SpanContext]:
    """The span context of each caller that sent one in *values*."""
    found = []
    for value in values:
        span_context = _propagation.remote_span_context(value) if value else None
        if span_context is not None:
            found.append(span_context)
    return found


def start_batch_span(tracer: trace.Tracer, name: str, links: Sequence[SpanContext]) -> Span:
    """A new root for the work of a batch, linked to *links* (its callers). Never raises."""
    span: Span | None = guard(
        "start the batch span",
        None,
        functools.partial(
            tracer.start_span,
            name,
            context=otel_context.Context(),
            kind=SpanKind.INTERNAL,
            links=[Link(link) for link in links] or None,
        ),
    )
    return trace.INVALID_SPAN if span is None else span


class _Batch:
    """The spans of the requests one ``predict`` call serves, and the batch span over them."""

    __slots__ = ("_context", "_current", "_invocations", "_next", "_shared", "_token")

    def __init__(self, context: Any, invocations: list[Invocation], shared: Span | None) -> None:
        self._context = context
        self._invocations = invocations
        self._shared = shared
        self._next = 0
        self._token: object | None = None
        if shared is None:
            self._current = invocations[0].context
        else:
            self._current = trace.set_span_in_context(shared, otel_context.Context())

    @classmethod
    def begin(cls, hook: _Hook, data: Any, context: Any) -> _Batch | None:
        """Start the spans of the requests in *context*; None when there are none (the
        entry point is being probed, not called for requests)."""
        processors = context.request_processor
        if data is None or not processors:
            return None
        headers: list[MutableMapping[Any, Any]] = [
            context.get_all_request_header(index) or {} for index in range(len(processors))
        ]
        found = [find_header(each, HEADER_LOWER) for each in headers]
        shared = None
        links: tuple[SpanContext, ...] = ()
        if len(headers) > 1:
            values = [value for _, value in found]
            shared = start_batch_span(
                hook.tracer, BATCH_SPAN, () if hook.policy == "ignore" else callers(values)
            )
            if shared.get_span_context().is_valid:
                links = (shared.get_span_context(),)
        invocations = []
        for each, (key, value) in zip(headers, found, strict=True):
            invocation = Invocation(
                value,
                name=REQUEST_SPAN,
                attributes=sagemaker_attributes(each) or None,
                tracer=hook.tracer,
                policy=hook.policy,
                links=links,
            )
            invocation.start(attach=False)
            reveal(each, key, invocation)
            invocations.append(invocation)
        return cls(context, invocations, shared)

    def attach(self) -> None:
        if self._current is not None:
            self._token = attach_context(self._current)

    def detach(self) -> None:
        token, self._token = self._token, None
        if token is not None:
            detach_context(token)  # type: ignore[arg-type]

    def run_item(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run the next item of the batch under its own request's span."""
        index = self._next
        self._next += 1
        if self._shared is None or index >= len(self._invocations):
            return function(*args, **kwargs)
        token = attach_context(self._invocations[index].context)  # type: ignore[arg-type]
        try:
            return function(*args, **kwargs)
        finally:
            detach_context(token)

    def respond(self, result: object) -> None:
        """Record each request's status and echo its span into its own response."""
        context = self._context
        count = len(self._invocations)
        # The server answers 503 to every request when the entry point's answer doesn't
        # hold one entry per request.
        mismatch = not isinstance(result, list) or len(result) != count
        for index, invocation in enumerate(self._invocations):
            status = context.get_response_status(index)
            code = 503 if mismatch else status[0] if isinstance(status, tuple) else status
            answer(context, index, invocation, code)

    def end(self, error: BaseException | None = None) -> None:
        if error is not None:
            code = getattr(error, "error_code", None)
            if not isinstance(code, int):
                code = 507 if isinstance(error, MemoryError) else 503
            for invocation in self._invocations:
                guard("record the status", None, set_status_code, invocation.span, code)
        for invocation in self._invocations:
            invocation.end(error)
        if self._shared is not None:
            end_span(self._shared, error)


class _Hook:
    """What one ``instrument_model_server()`` decided; disabled by uninstrumenting, since
    import hooks can't be taken back."""

    __slots__ = ("enabled", "policy", "tracer")

    def __init__(self, tracer: trace.Tracer, policy: RemoteContext) -> None:
        self.tracer = tracer
        self.policy = policy
        self.enabled = True

    def predict(
        self,
        wrapped: Callable[..., Any],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """``Service.predict``: the entry point is traced for the length of this call."""
        entry = getattr(instance, "_entry_point", None) if self.enabled else None
        if entry is None:
            return wrapped(*args, **kwargs)
        try:
            instance._entry_point = functools.partial(self.dispatch, entry)
        except Exception:
            _logger.warning("could not trace the model's entry point", exc_info=True)
            return wrapped(*args, **kwargs)
        try:
            return wrapped(*args, **kwargs)
        finally:
            instance._entry_point = entry

    def dispatch(self, entry: Callable[..., Any], data: Any, context: Any) -> Any:
        """The model's entry point called for a batch, with a span per request."""
        batch = guard("start the request spans", None, _Batch.begin, self, data, context)
        if batch is None:
            return entry(data, context)
        token = _serving.set(batch)
        batch.attach()
        try:
            result = entry(data, context)
        except BaseException as exc:
            batch.end(exc)
            raise
        finally:
            batch.detach()
            _serving.reset(token)
        guard("echo the trace into the responses", None, batch.respond, result)
        batch.end()
        return result

    def run_handler_function(
        self,
        wrapped: Callable[..., Any],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """``Transformer._run_handler_function``: its transform function is called once per
        item of the batch, in order, so each call is the next request's."""
        batch = _serving.get()
        if batch is None or not args or args[0] != getattr(instance, "_transform_fn", None):
            return wrapped(*args, **kwargs)
        return batch.run_item(wrapped, *args, **kwargs)


def _wrap_service(hook: _Hook, module: Any) -> None:
    with _LOCK:
        if hook.enabled:
            wrapt.wrap_function_wrapper(module, "Service.predict", hook.predict)


def _wrap_transformer(hook: _Hook, module: Any) -> None:
    with _LOCK:
        if hook.enabled and hasattr(module.Transformer, "_run_handler_function"):
            wrapt.wrap_function_wrapper(
                module, "Transformer._run_handler_function", hook.run_handler_function
            )


def instrument_model_server(
    *,
    tracer_provider: TracerProvider | None = None,
    remote_context: RemoteContext | None = None,
) -> None:
    """Trace every request Multi Model Server or TorchServe hands to the model in this process.

    Each request becomes one SERVER span in its caller's trace (read from its CustomAttributes),
    whatever the handler's functions and their signatures: the SageMaker inference toolkit,
    the PyTorch and Hugging Face toolkits, TorchServe custom handlers. The handler sees
    CustomAttributes without our keys, and each response echoes its own span. In a batch,
    code that serves every request at once runs under a new root span linked to each caller;
    the inference toolkit's per-item functions run under their own request's span. Functions
    decorated with ``@trace_handler`` become child spans. Start-up (``model_fn``, TorchServe's
    ``handle(None, context)`` probe) makes no span.

    Call it in the model's module (``inference.py``, the TorchServe handler): the model server
    imports it in each worker. ``@trace_handler`` calls it by itself in a model-server worker.
    ``remote_context`` is as for ``continue_trace``. Calling it again while instrumented
    changes nothing.
    """
    with _LOCK:
        if _installed:
            _logger.debug("the model server is already instrumented; options left as they were")
            return
        hook = _Hook(get_tracer(tracer_provider), remote_context_policy(remote_context))
        _installed.append(hook)
        for name in _SERVICES:
            wrapt.register_post_import_hook(functools.partial(_wrap_service, hook), name)
        wrapt.register_post_import_hook(functools.partial(_wrap_transformer, hook), _TRANSFORMER)


def uninstrument_model_server() -> None:
    """Stop tracing the model server's requests."""
    with _LOCK:
        if not _installed:
            return
        hook = _installed.pop()
        hook.enabled = False
        for name in _SERVICES:
            module = sys.modules.get(name)
            if module is not None:
                unwrap(module.Service, "predict", hook.predict)
        module = sys.modules.get(_TRANSFORMER)
        if module is not None:
            unwrap(module.Transformer, "_run_handler_function", hook.run_handler_function)


def instrumented() -> bool:
    """Whether the model server's requests are traced in this process."""
    return bool(_installed)


def serving() -> bool:
    """Whether a request (or batch) of the model server is being served in this context."""
    return _serving.get() is not None


def in_worker() -> bool:
    """Whether this process is a Multi Model Server or TorchServe Python worker."""
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    if not isinstance(main, str):
        return False
    path = Path(main)
    return path.name == "model_service_worker.py" and path.parent.name in ("mms", "ts")
