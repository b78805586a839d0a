"""``@trace_handler``: a model handler's call becomes the container span of the caller's trace.

The carrier is found in the call's own arguments (a toolkit / Multi Model Server / TorchServe
``context``, a DJL Serving ``Input``) or in the current Flask request, or pulled out by a
callable the user gives. The wrapper keeps the handler's signature, because the toolkits count
its parameters to decide whether to pass ``context``, and is chosen once, when applied: sync,
async, generator or async generator, where the span covers the whole iteration.

Inside a Multi Model Server or TorchServe worker the model server's own dispatch is traced
(see :mod:`sm_tracing.container._model_servers`; applying the decorator there switches it
on): each request already has its span, and a decorated function only makes a child span named
after it. Called
outside a request there (``model_fn`` at start-up, TorchServe's ``handle(None, context)``
probe), it makes no span at all.

Elsewhere, a batch (``handle(data, context)`` with one entry in ``data`` per request) gets one
span per request, each with its own parent. While the handler runs, the first request's span is
current, so the model's own spans go under it; the other requests' spans link to it. A function
that serves one item of a batch without saying which (a toolkit's ``predict_fn`` with the
batch's context) gets a new root linked to every caller of the batch, never another caller's
parent.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncGenerator, Callable, Generator, Iterator, Sequence
from typing import Any, TypeVar, overload

from opentelemetry import trace
from opentelemetry.trace import TracerProvider

from sm_tracing._guard import guard
from sm_tracing._telemetry import get_tracer
from sm_tracing.container import _model_servers
from sm_tracing.container._carriers import IDLE, Carrier, CustomAttributesGetter, discover
from sm_tracing.container._primitive import (
    Invocation,
    Lifecycle,
    RemoteContext,
    remote_context_policy,
)

F = TypeVar("F", bound=Callable[..., Any])


class _Call(Lifecycle):
    """The spans of one handler call and the carrier they came from: the first request's span
    is the one made current."""

    __slots__ = ("_carrier", "_invocations")

    def __init__(self, carrier: Carrier | None, invocations: list[Invocation]) -> None:
        self._carrier = carrier
        self._invocations = invocations
        self._invocation = invocations[0]

    def respond(self, result: object) -> None:
        """Echo each span into its response; never raises."""
        carrier = self._carrier
        if carrier is not None:
            for index, invocation in enumerate(self._invocations):
                guard(
                    "echo the trace into the response",
                    None,
                    carrier.respond,
                    index,
                    invocation,
                    result,
                )

    def end(self, error: BaseException | None = None) -> None:
        for invocation in self._invocations:
            invocation.end(error)

    def stepping(self) -> _Stepping:
        """The call's ``with`` for a generator, which runs in steps: the span is current only
        while a step runs, and the consumer that stops early (``GeneratorExit``) is no error
        of the handler's."""
        return _Stepping(self)


class _Stepping:
    __slots__ = ("_call",)

    def __init__(self, call: _Call) -> None:
        self._call = call

    def __enter__(self) -> _Call:
        return self._call

    def __exit__(self, kind: object, error: BaseException | None, tb: object) -> None:
        self._call.end(None if isinstance(error, GeneratorExit) else error)


class _Steps:
    """The handler's generator, each step run with the call's span current: ``yield from``
    drives it as it would the generator itself, passing on what is sent and thrown in and
    closing it when the consumer stops early."""

    __slots__ = ("_call", "_generator")

    def __init__(self, call: _Call, generator: Generator[Any, Any, Any]) -> None:
        self._call = call
        self._generator = generator

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        with self._call.current():
            return next(self._generator)

    def send(self, value: Any) -> Any:
        with self._call.current():
            return self._generator.send(value)

    def throw(self, kind: Any, value: Any = None, tb: Any = None) -> Any:
        # yield from passes what was thrown as (type, value, traceback).
        with self._call.current():
            return self._generator.throw(kind if value is None else value)

    def close(self) -> None:
        with self._call.current():
            self._generator.close()


class _Tracing:
    """What one decorated handler decided when it was decorated."""

    __slots__ = ("_batch", "_getter", "_name", "_policy", "_tracer")

    def __init__(
        self,
        name: str,
        tracer_provider: TracerProvider | None,
        getter: CustomAttributesGetter | None,
        remote_context: RemoteContext | None,
        batch: bool | None,
    ) -> None:
        self._name = name
        self._tracer = get_tracer(tracer_provider)
        self._policy = remote_context_policy(remote_context)
        self._getter = getter
        self._batch = batch

    def begin(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Call | None:
        """Start the call's spans, not yet current; None (and the handler runs untraced) when
        there is nothing to trace or starting fails (logged)."""
        return guard("start the container span", None, self._begin, args, kwargs)

    def _begin(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Call | None:
        # Under the model server's traced dispatch the request already has its span (or the
        # batch has): this call is a child span, with no carrier of its own.
        carrier: Carrier | None = None
        values: Sequence[str | None] = (None,)
        if not _model_servers.serving():
            carrier = guard(
                "find the CustomAttributes of this call",
                None,
                discover,
                args,
                kwargs,
                self._getter,
                self._batch,
            )
            if carrier is IDLE:
                return None  # a model server loading or probing the handler
            if carrier is None and _model_servers.instrumented() and not _active():
                return None  # start-up work in a worker whose requests are traced
            values = carrier.values() if carrier is not None else ()
            if not values:
                carrier, values = None, (None,)
        links = tuple(carrier.links()) if carrier is not None else ()
        invocations: list[Invocation] = []
        first = None
        for index, value in enumerate(values):
            invocation = Invocation(
                value,
                name=self._name,
                attributes=None if carrier is None else carrier.attributes(index),
                tracer=self._tracer,
                policy=self._policy,
                links=links if first is None else (first,),
            )
            invocation.start(attach=False)
            if first is None:
                span_context = invocation.span.get_span_context()
                first = span_context if span_context.is_valid else None
            invocations.append(invocation)
        if carrier is not None:
            carrier.reveal()
        return _Call(carrier, invocations)


def _active() -> bool:
    return trace.get_current_span().get_span_context().is_valid


@overload
def trace_handler(func: F, /) -> F: ...


@overload
def trace_handler(
    span_name: str | None = None,
    /,
    *,
    name: str | None = None,
    tracer_provider: TracerProvider | None = None,
    custom_attributes: CustomAttributesGetter | None = None,
    remote_context: RemoteContext | None = None,
    batch: bool | None = None,
) -> Callable[[F], F]: ...


def trace_handler(func: Any = None, /, **options: Any) -> Any:
    """Trace each call of a model handler as the container span of the caller's trace.

    Bare (``@trace_handler``), with the span's name first (``@trace_handler("predict")``) or
    with keywords: ``name`` (the span's, by default the function's name), ``tracer_provider``,
    ``custom_attributes`` (a callable ``(args, kwargs) -> str | None`` returning the raw
    CustomAttributes, where they can't be found by themselves), ``remote_context``
    (``"continue"``, ``"link"`` or ``"ignore"``) and ``batch`` (True: one span per request of
    a model-server ``context``; False: one span for the first; by default a batch when the
    argument before the context is a list with one entry per request). The handler sees
    CustomAttributes without our keys; its exceptions are recorded and re-raised unchanged. No
    carrier found means a new root span, never an error.
    """
    if isinstance(func, str):
        if options.setdefault("name", func) != func:
            raise TypeError("trace_handler takes the span's name once, not twice")
        func = None
    if func is None:
        return functools.partial(_wrap, **options)
    if not callable(func):
        raise TypeError(f"trace_handler decorates a function, not {func!r}")
    return _wrap(func, **options)


def _wrap(
    func: F,
    *,
    name: str | None = None,
    tracer_provider: TracerProvider | None = None,
    custom_attributes: CustomAttributesGetter | None = None,
    remote_context: RemoteContext | None = None,
    batch: bool | None = None,
) -> F:
    tracing = _Tracing(
        name or str(getattr(func, "__name__", "invocations")),
        tracer_provider,
        custom_attributes,
        remote_context,
        batch,
    )
    if _model_servers.in_worker():
        # The model server imports the model's module in each worker: trace its dispatch, so
        # each request has its span whichever of its functions are decorated.
        guard(
            "trace the model server's requests",
            None,
            functools.partial(
                _model_servers.instrument_model_server,
                tracer_provider=tracer_provider,
                remote_context=remote_context,
            ),
        )
    if inspect.isasyncgenfunction(func):
        wrapper: Callable[..., Any] = _async_generator_wrapper(func, tracing)
    elif inspect.iscoroutinefunction(func):
        wrapper = _coroutine_wrapper(func, tracing)
    elif inspect.isgeneratorfunction(func):
        wrapper = _generator_wrapper(func, tracing)
    else:
        wrapper = _function_wrapper(func, tracing)
    # functools.wraps sets __wrapped__, so inspect.signature(wrapper) is func's own signature.
    return functools.wraps(func)(wrapper)  # type: ignore[return-value]


def _function_wrapper(func: Callable[..., Any], tracing: _Tracing) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        call = tracing.begin(args, kwargs)
        if call is None:
            return func(*args, **kwargs)
        with call:
            result = func(*args, **kwargs)
            call.respond(result)
        return result

    return wrapper


def _coroutine_wrapper(func: Callable[..., Any], tracing: _Tracing) -> Callable[..., Any]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        call = tracing.begin(args, kwargs)
        if call is None:
            return await func(*args, **kwargs)
        with call:
            result = await func(*args, **kwargs)
            call.respond(result)
        return result

    return wrapper


# A generator's span is current only while the handler's own code runs, one step at a time:
# between steps the consumer's context is its own. The echo goes out before the first item,
# with the response headers.


def _generator_wrapper(func: Callable[..., Any], tracing: _Tracing) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        call = tracing.begin(args, kwargs)
        if call is None:
            return (yield from func(*args, **kwargs))
        call.respond(None)
        with call.stepping():
            return (yield from _Steps(call, func(*args, **kwargs)))

    return wrapper


def _async_generator_wrapper(func: Callable[..., Any], tracing: _Tracing) -> Callable[..., Any]:
    async def wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        call = tracing.begin(args, kwargs)
        if call is None:
            async for item in func(*args, **kwargs):
                yield item
            return
        call.respond(None)
        with call.stepping():
            generator = func(*args, **kwargs)
            sent: Any = None
            thrown: BaseException | None = None
            while True:
                with call.current():
                    try:
                        if thrown is None:
                            item = await generator.asend(sent)
                        else:
                            item = await generator.athrow(thrown)
                    except StopAsyncIteration:
                        return
                try:
                    sent, thrown = (yield item), None
                except GeneratorExit:
                    with call.current():
                        await generator.aclose()
                    raise
                except BaseException as exc:  # thrown in by the consumer: the handler's to see
                    sent, thrown = None, exc

    return wrapper
