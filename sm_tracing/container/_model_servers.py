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
from types import ModuleType
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanContext, TracerProvider

from sm_tracing import _propagation
from sm_tracing._attributes import HEADER_LOWER
from sm_tracing._guard import guard
from sm_tracing._patching import Patch, patch, unpatch, when_imported
from sm_tracing._telemetry import get_tracer, set_status_code
from sm_tracing.container import _private
from sm_tracing.container._carriers import answer, find_header, sagemaker_attributes
from sm_tracing.container._primitive import (
    Invocation,
    Lifecycle,
    RemoteContext,
    remote_context_policy,
)

_logger = logging.getLogger(__name__)

Function = Callable[..., Any]
Args = tuple[Any, ...]
Kwargs = dict[str, Any]

REQUEST_SPAN = "invocations"
BATCH_SPAN = "batch"
# The model servers' services: each calls the model's entry point from ``predict``.
_SERVICES = ("mms.service", "ts.service")
_TRANSFORMER = "sagemaker_inference.transformer"
# The key of our post-import callbacks.
_KEY = __name__
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


class _Batch(Lifecycle):
    """The spans of the requests one ``predict`` call serves, and the batch span over them;
    the one current while the entry point runs is the request's, or the batch span for a batch
    of several."""

    __slots__ = ("_context", "_invocations", "_next", "_shared")

    def __init__(
        self, context: Any, invocations: list[Invocation], shared: Invocation | None
    ) -> None:
        self._context = context
        self._invocations = invocations
        self._shared = shared
        self._invocation = invocations[0] if shared is None else shared
        self._next = 0

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
            shared = Invocation(
                None,
                hook.tracer,
                "ignore",
                BATCH_SPAN,
                links=() if hook.policy == "ignore" else callers(values),
                root=True,
            )
            span_context = shared.start(attach=False).get_span_context()
            if span_context.is_valid:
                links = (span_context,)
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

    def run_item(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run the next item of the batch under its own request's span."""
        index = self._next
        self._next += 1
        if self._shared is None or index >= len(self._invocations):
            return function(*args, **kwargs)
        with self._invocations[index].current():
            return function(*args, **kwargs)

    def respond(self, result: object) -> None:
        """Record each request's status and echo its span into its own response; never
        raises."""
        guard("echo the trace into the responses", None, self._respond, result)

    def _respond(self, result: object) -> None:
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
            # The status the model server answers the entry point's failure with.
            code = getattr(error, "error_code", None)
            if not isinstance(code, int):
                code = 507 if isinstance(error, MemoryError) else 503
            for invocation in self._invocations:
                guard("record the status", None, set_status_code, invocation.span, code)
        for invocation in self._invocations:
            invocation.end(error)
        if self._shared is not None:
            self._shared.end(error)


class _Hook:
    """What one ``instrument_model_server()`` decided, and the patches it put in place."""

    __slots__ = ("patches", "policy", "tracer")

    def __init__(self, tracer: trace.Tracer, policy: RemoteContext) -> None:
        self.tracer = tracer
        self.policy = policy
        self.patches: list[Patch] = []

    def predict(self, wrapped: Function, instance: Any, args: Args, kwargs: Kwargs) -> Any:
        """``Service.predict``: the entry point is traced for the length of this call."""
        entry = _private.entry_point(instance)
        if entry is None or not guard(
            "trace the model's entry point",
            False,
            _private.set_entry_point,
            instance,
            functools.partial(self.dispatch, entry),
        ):
            return wrapped(*args, **kwargs)
        try:
            return wrapped(*args, **kwargs)
        finally:
            _private.set_entry_point(instance, entry)

    def dispatch(self, entry: Callable[..., Any], data: Any, context: Any) -> Any:
        """The model's entry point called for a batch, with a span per request."""
        batch = guard("start the request spans", None, _Batch.begin, self, data, context)
        if batch is None:
            return entry(data, context)
        token = _serving.set(batch)
        try:
            with batch:
                result = entry(data, context)
                batch.respond(result)
        finally:
            _serving.reset(token)
        return result

    def dispatch_item(self, wrapped: Function, instance: Any, args: Args, kwargs: Kwargs) -> Any:
        """The toolkit ``Transformer``'s dispatch of the user's functions: its transform
        function is called once per item of the batch, in order, so each call is the next
        request's."""
        batch = _serving.get()
        if batch is None or not args or args[0] != _private.transform_function(instance):
            return wrapped(*args, **kwargs)
        return batch.run_item(wrapped, *args, **kwargs)

    def patch_service(self, module: ModuleType) -> None:
        with _LOCK:
            if _installed and _installed[-1] is self and "predict" in module.Service.__dict__:
                self.patches.append(patch(module.Service, "predict", self.predict))

    def patch_transformer(self, module: ModuleType) -> None:
        with _LOCK:
            name = _private.transformer_dispatch(module.Transformer)
            if _installed and _installed[-1] is self and name is not None:
                self.patches.append(patch(module.Transformer, name, self.dispatch_item))


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
            when_imported(name, _KEY, hook.patch_service)
        when_imported(_TRANSFORMER, _KEY, hook.patch_transformer)


def uninstrument_model_server() -> None:
    """Stop tracing the model server's requests."""
    with _LOCK:
        if not _installed:
            return
        hook = _installed.pop()
        for name in (*_SERVICES, _TRANSFORMER):
            when_imported(name, _KEY, None)
        for handle in hook.patches:
            unpatch(handle)
        hook.patches.clear()


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
