"""``@trace_handler``: a model handler's call becomes the container span of the caller's trace.

The carrier is found in the call's own arguments (a toolkit / Multi Model Server / TorchServe
``context``, a DJL Serving ``Input``) or in the current Flask request, or pulled out by a
callable the user gives. The wrapper keeps the handler's signature, because the toolkits count
its parameters to decide whether to pass ``context``, and is chosen once, when applied: sync,
async, generator or async generator, where the span covers the whole iteration.

Inside a Multi Model Server or TorchServe worker the model server's own dispatch is traced
(see :mod:`sm_tracing.container._model_servers`; applying the decorator there switches it
on): each request
already has its span, and a decorated function only makes a child span named after it. Called
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
import logging
from collections.abc import AsyncGenerator, Callable, Generator, Sequence
from typing import Any, TypeVar, overload

from opentelemetry import trace
from opentelemetry.trace import TracerProvider

from sm_tracing._guard import guard
from sm_tracing._telemetry import get_tracer
from sm_tracing.container import _model_servers as _toolkit
from sm_tracing.container._carriers import IDLE, Carrier, CustomAttributesGetter, discover
from sm_tracing.container._primitive import Invocation, RemoteContext, remote_context_policy

_logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


class _Call:
    """The spans of one handler call and the carrier they came from."""

    __slots__ = ("_carrier", "_invocations")

    def __init__(self, carrier: Carrier | None, invocations: list[Invocation]) -> None:
        self._carrier = carrier
        self._invocations = invocations

    def attach(self) -> None:
        self._invocations[0].attach()

    def detach(self) -> None:
        self._invocations[0].detach()

    def respond(self, result: object) -> None:
        """Echo each span into its response; never raises."""
        carrier = self._carrier
        if carrier is None:
            return
        for index, invocation in enumerate(self._invocations):
            try:
                carrier.respond(index, invocation, result)
            except Exception:
                _logger.warning("could not echo the trace into the response", exc_info=True)

    def end(self, error: BaseException | None) -> None:
        for invocation in self._invocations:
            invocation.end(error)


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

    def begin(self, args: tuple[Any, ...], kwargs: dict[str, Any], attach: bool) -> _Call | None:
        """Start the call's spans; None (and the handler runs untraced) if that fails."""
        try:
            # Under the model server's traced dispatch the request already has its span (or
            # the batch has): this call is a child span, with no carrier of its own.
            carrier: Carrier | None = None
            values: Sequence[str | None] = (None,)
            if not _toolkit.serving():
                carrier = discover(args, kwargs, self._getter, self._batch)
                if carrier is IDLE:
                    return None  # a model server loading or probing the handler
                if carrier is None and _toolkit.instrumented() and not _active():
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
        except Exception:
            _logger.warning("could not start the container span", exc_info=True)
            return None
        call = _Call(carrier, invocations)
        if attach:
            call.attach()
        return call


def _active() -> bool:
    return trace.get_current_span().get_span_context().is_valid


@overload
def trace_handler(func: F, /) -> F: ...


@overload
def trace_handler(
    *,
    name: str | None = None,
    tracer_provider: TracerProvider | None = None,
    custom_attributes: CustomAttributesGetter | None = None,
    remote_context: RemoteContext | None = None,
    batch: bool | None = None,
) -> Callable[[F], F]: ...


def trace_handler(
    func: F | None = None,
    /,
    *,
    name: str | None = None,
    tracer_provider: TracerProvider | None = None,
    custom_attributes: CustomAttributesGetter | None = None,
    remote_context: RemoteContext | None = None,
    batch: bool | None = None,
) -> F | Callable[[F], F]:
    """Trace each call of a model handler as the container span of the caller's trace.

    Bare (``@trace_handler``) or with keywords: ``name`` (the span's, by default the
    function's name), ``tracer_provider``, ``custom_attributes`` (a callable ``(args, kwargs)
    -> str | None`` returning the raw CustomAttributes, where they can't be found by
    themselves), ``remote_context`` (``"continue"``, ``"link"`` or ``"ignore"``) and
    ``batch`` (True: one span per request of a model-server ``context``; False: one span for
    the first; by default a batch when the argument before the context is a list with one
    entry per request). The handler sees CustomAttributes without our keys; its exceptions are
    recorded and re-raised unchanged. No carrier found means a new root span, never an error.
    """
    if func is None:

        def decorate(function: F) -> F:
            return _wrap(
                function,
                name=name,
                tracer_provider=tracer_provider,
                getter=custom_attributes,
                remote_context=remote_context,
                batch=batch,
            )

        return decorate
    return _wrap(
        func,
        name=name,
        tracer_provider=tracer_provider,
        getter=custom_attributes,
        remote_context=remote_context,
        batch=batch,
    )


def _wrap(
    func: F,
    *,
    name: str | None,
    tracer_provider: TracerProvider | None,
    getter: CustomAttributesGetter | None,
    remote_context: RemoteContext | None,
    batch: bool | None,
) -> F:
    tracing = _Tracing(
        name or str(getattr(func, "__name__", "invocations")),
        tracer_provider,
        getter,
        remote_context,
        batch,
    )
    if _toolkit.in_worker():
        # The model server imports the model's module in each worker: trace its dispatch, so
        # each request has its span whichever of its functions are decorated.
        guard(
            "trace the model server's requests",
            None,
            functools.partial(
                _toolkit.instrument_model_server,
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
        call = tracing.begin(args, kwargs, attach=True)
        if call is None:
            return func(*args, **kwargs)
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            call.end(exc)
            raise
        finally:
            call.detach()
        call.respond(result)
        call.end(None)
        return result

    return wrapper


def _coroutine_wrapper(func: Callable[..., Any], tracing: _Tracing) -> Callable[..., Any]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        call = tracing.begin(args, kwargs, attach=True)
        if call is None:
            return await func(*args, **kwargs)
        try:
            result = await func(*args, **kwargs)
        except BaseException as exc:
            call.end(exc)
            raise
        finally:
            call.detach()
        call.respond(result)
        call.end(None)
        return result

    return wrapper


def _generator_wrapper(func: Callable[..., Any], tracing: _Tracing) -> Callable[..., Any]:
    # The span is current only while the handler's own code runs, one step at a time: between
    # steps the consumer's context is its own.
    def wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        call = tracing.begin(args, kwargs, attach=False)
        if call is None:
            return (yield from func(*args, **kwargs))
        # The echo goes out before the first item, with the response headers.
        call.respond(None)
        error: BaseException | None = None
        try:
            generator = func(*args, **kwargs)
            sent: Any = None
            thrown: BaseException | None = None
            while True:
                call.attach()
                try:
                    item = generator.send(sent) if thrown is None else generator.throw(thrown)
                except StopIteration as stop:
                    return stop.value
                finally:
                    call.detach()
                thrown = None
                try:
                    sent = yield item
                except GeneratorExit:
                    # The consumer went away: not an error of the handler's.
                    call.attach()
                    try:
                        generator.close()
                    finally:
                        call.detach()
                    raise
                except BaseException as exc:
                    sent, thrown = None, exc
        except GeneratorExit:
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            call.end(error)

    return wrapper


def _async_generator_wrapper(func: Callable[..., Any], tracing: _Tracing) -> Callable[..., Any]:
    async def wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        call = tracing.begin(args, kwargs, attach=False)
        if call is None:
            async for item in func(*args, **kwargs):
                yield item
            return
        call.respond(None)
        error: BaseException | None = None
        try:
            generator = func(*args, **kwargs)
            sent: Any = None
            thrown: BaseException | None = None
            while True:
                call.attach()
                try:
                    if thrown is None:
                        item = await generator.asend(sent)
                    else:
                        item = await generator.athrow(thrown)
                except StopAsyncIteration:
                    return
                finally:
                    call.detach()
                thrown = None
                try:
                    sent = yield item
                except GeneratorExit:
                    call.attach()
                    try:
                        await generator.aclose()
                    finally:
                        call.detach()
                    raise
                except BaseException as exc:
                    sent, thrown = None, exc
        except GeneratorExit:
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            call.end(error)

    return wrapper
