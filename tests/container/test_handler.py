"""@trace_handler on plain, async, generator and async-generator handlers, and in Flask."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import flask
import pytest
from _container_support import HEADER, caller, echoed
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, Tracer

from sm_tracing import WSGIMiddleware, trace_handler


def _current_span_id() -> int:
    return trace.get_current_span().get_span_context().span_id


def test_bare_decorator_passes_the_call_through() -> None:
    """Bare @trace_handler (the global provider) returns what the handler returns."""

    @trace_handler
    def predict_fn(data: Any, model: Any) -> Any:
        return (data, model)

    assert predict_fn("x", model="m") == ("x", "m")
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_no_carrier_gives_a_root_span_named_after_the_function(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """With nothing to continue, the call still gets a root SERVER span, current inside."""

    @trace_handler(tracer_provider=tracer_provider)
    def predict_fn(data: Any, model: Any) -> Any:
        return _current_span_id()

    current = predict_fn([1, 2], object())
    (span,) = exporter.get_finished_spans()
    assert span.name == "predict_fn"
    assert span.kind is SpanKind.SERVER
    assert span.parent is None
    assert current == span.context.span_id


def _toolkit_style(context_param: bool) -> Any:
    if context_param:

        def input_fn(input_data: Any, content_type: str, context: Any = None) -> Any:
            return input_data

    else:

        def input_fn(input_data: Any, content_type: str) -> Any:  # type: ignore[misc]
            return input_data

    return input_fn


@pytest.mark.parametrize("context_param", [True, False])
def test_the_signature_is_kept_exactly(
    tracer_provider: TracerProvider, context_param: bool
) -> None:
    """inspect.signature of the decorated function equals the original's, name and doc too."""
    original = _toolkit_style(context_param)
    decorated = trace_handler(tracer_provider=tracer_provider)(original)
    assert inspect.signature(decorated) == inspect.signature(original)
    assert decorated.__name__ == original.__name__
    assert decorated.__wrapped__ is original


def test_explicit_custom_attributes_callable(
    tracer: Tracer, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """custom_attributes=(args, kwargs) -> str gives the carrier; name= names the span."""
    value, parent = caller(tracer, "accept_eula=true", clear=exporter)

    @trace_handler(
        name="predict",
        tracer_provider=tracer_provider,
        custom_attributes=lambda args, kwargs: kwargs["headers"][HEADER],
    )
    def handle(body: bytes, *, headers: dict[str, str]) -> int:
        return _current_span_id()

    current = handle(b"{}", headers={HEADER: value})
    (span,) = exporter.get_finished_spans()
    assert span.name == "predict"
    assert span.parent is not None and span.parent.span_id == parent.span_id
    assert span.context.trace_id == parent.trace_id
    assert current == span.context.span_id


class _ModelError(Exception):
    pass


def test_an_exception_is_recorded_and_reraised_unchanged(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """The handler's exception is the same object after the decorator, on an ERROR span."""
    error = _ModelError("bad input")

    @trace_handler(tracer_provider=tracer_provider)
    def handle(data: Any) -> Any:
        raise error

    with pytest.raises(_ModelError) as raised:
        handle(1)
    assert raised.value is error
    assert trace.get_current_span() is trace.INVALID_SPAN
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR


Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


@pytest.fixture
def traced(tracer_provider: TracerProvider) -> Decorator:
    """@trace_handler with this test's provider, reading CustomAttributes from the handler's
    first argument."""
    return trace_handler(tracer_provider=tracer_provider, custom_attributes=lambda a, k: a[0])


def test_a_coroutine_handler_is_awaited_under_its_span(
    tracer: Tracer, exporter: InMemorySpanExporter, traced: Decorator
) -> None:
    """An async handler stays a coroutine function and runs under its span."""
    value, parent = caller(tracer, clear=exporter)

    @traced
    async def handle(custom_attributes: str) -> int:
        await asyncio.sleep(0)
        return _current_span_id()

    assert inspect.iscoroutinefunction(handle)
    current = asyncio.run(handle(value))
    (span,) = exporter.get_finished_spans()
    assert current == span.context.span_id
    assert span.parent is not None and span.parent.span_id == parent.span_id


def test_a_generator_handler_is_traced_over_its_whole_iteration(
    tracer: Tracer, exporter: InMemorySpanExporter, traced: Decorator
) -> None:
    """The span of a generator handler ends after its last item, is current only while the
    handler runs, and values sent in reach the handler."""
    value, parent = caller(tracer, clear=exporter)
    received: list[Any] = []

    @traced
    def stream(custom_attributes: str) -> Iterator[int]:
        for _ in range(3):
            received.append((yield _current_span_id()))
        return

    assert inspect.isgeneratorfunction(stream)
    generator = stream(value)
    first = next(generator)
    assert trace.get_current_span() is trace.INVALID_SPAN
    assert exporter.get_finished_spans() == ()
    rest = [generator.send("a"), generator.send("b")]
    with pytest.raises(StopIteration):
        generator.send("c")
    (span,) = exporter.get_finished_spans()
    assert [first, *rest] == [span.context.span_id] * 3
    assert received == ["a", "b", "c"]
    assert span.parent is not None and span.parent.span_id == parent.span_id


def test_a_generator_closed_early_ends_its_span_without_error(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A consumer that stops early closes the handler's generator; the span ends, not ERROR."""
    closed: list[bool] = []

    @trace_handler(tracer_provider=tracer_provider)
    def stream() -> Iterator[int]:
        try:
            yield 1
            yield 2
        finally:
            closed.append(True)

    generator = stream()
    assert next(generator) == 1
    generator.close()
    (span,) = exporter.get_finished_spans()
    assert closed == [True]
    assert span.status.status_code is StatusCode.UNSET


def test_a_generator_that_raises_records_the_error(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """An exception out of a generator handler mid-iteration is recorded and propagates."""
    error = _ModelError("mid-stream")

    @trace_handler(tracer_provider=tracer_provider)
    def stream() -> Iterator[int]:
        yield 1
        raise error

    with pytest.raises(_ModelError) as raised:
        list(stream())
    assert raised.value is error
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR


def test_an_async_generator_handler_is_traced_over_its_whole_iteration(
    tracer: Tracer, exporter: InMemorySpanExporter, traced: Decorator
) -> None:
    """An async-generator handler stays one, and its span covers every item."""
    value, parent = caller(tracer, clear=exporter)

    @traced
    async def stream(custom_attributes: str) -> AsyncIterator[int]:
        for _ in range(3):
            await asyncio.sleep(0)
            yield _current_span_id()

    assert inspect.isasyncgenfunction(stream)

    async def consume() -> tuple[list[int], int]:
        items = []
        async for item in stream(value):
            items.append(item)
            assert exporter.get_finished_spans() == ()
        return items, len(exporter.get_finished_spans())

    items, finished = asyncio.run(consume())
    (span,) = exporter.get_finished_spans()
    assert finished == 1
    assert items == [span.context.span_id] * 3
    assert span.parent is not None and span.parent.span_id == parent.span_id


def test_in_flask_the_request_is_the_carrier(
    tracer: Tracer, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A decorated Flask view finds the current request's header, sees it stripped, and the
    response carries the echo, merged after the view's own value."""
    value, parent = caller(tracer, "accept_eula=true", clear=exporter)
    app = flask.Flask("handler_test")

    @app.post("/invocations")
    @trace_handler(tracer_provider=tracer_provider)
    def invocations() -> Any:
        response = flask.jsonify({"seen": flask.request.headers.get(HEADER)})
        response.headers[HEADER] = "x-next-token=abc"
        return response

    response = app.test_client().post(
        "/invocations", headers={HEADER: value}, json={}, buffered=True
    )
    (span,) = exporter.get_finished_spans()
    assert span.name == "invocations"
    assert span.parent is not None and span.parent.span_id == parent.span_id
    assert response.json == {"seen": "accept_eula=true"}
    assert response.headers[HEADER].startswith("x-next-token=abc;traceresponse=")
    assert echoed(response.headers[HEADER]).span_id == span.context.span_id


def test_in_flask_behind_the_middleware_the_handler_span_is_its_child(
    tracer: Tracer, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """With WSGIMiddleware in front, the decorated view's span is an INTERNAL child of the
    middleware's span, and one echo (the middleware's, the outer span) reaches the caller."""
    value, parent = caller(tracer, clear=exporter)
    app = flask.Flask("handler_mw_test")

    @app.post("/invocations")
    @trace_handler(tracer_provider=tracer_provider)
    def invocations() -> str:
        return "ok"

    app.wsgi_app = WSGIMiddleware(app.wsgi_app, tracer_provider=tracer_provider)  # type: ignore[method-assign]
    response = app.test_client().post(
        "/invocations", headers={HEADER: value}, json={}, buffered=True
    )
    inner, outer = exporter.get_finished_spans()
    assert outer.parent is not None and outer.parent.span_id == parent.span_id
    assert inner.kind is SpanKind.INTERNAL
    assert inner.parent is not None and inner.parent.span_id == outer.context.span_id
    assert echoed(response.headers[HEADER]).span_id == outer.context.span_id


def _named(form: str, tracer_provider: TracerProvider) -> Decorator:
    if form == "positional":
        return trace_handler("score", tracer_provider=tracer_provider)
    return trace_handler(name="score", tracer_provider=tracer_provider)


@pytest.mark.parametrize("form", ["positional", "keyword"])
def test_the_span_is_named_by_a_string_first_or_by_name(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter, form: str
) -> None:
    """@trace_handler("score") names the span as name="score" does, as
    start_as_current_span("score") would; the handler's signature and result are kept."""

    @_named(form, tracer_provider)
    def predict_fn(data: Any, model: Any) -> Any:
        return data

    assert predict_fn(1, model=None) == 1
    assert list(inspect.signature(predict_fn).parameters) == ["data", "model"]
    (span,) = exporter.get_finished_spans()
    assert span.name == "score"


def test_the_empty_call_form_decorates_as_the_bare_one() -> None:
    """@trace_handler() decorates as @trace_handler does: the handler's result and signature
    come through."""

    @trace_handler()
    def predict_fn(data: Any, model: Any) -> Any:
        return (data, model)

    assert predict_fn("x", model="m") == ("x", "m")
    assert list(inspect.signature(predict_fn).parameters) == ["data", "model"]


def test_a_name_given_twice_is_refused() -> None:
    """A positional name and a different name= is a mistake, said at decoration time."""
    with pytest.raises(TypeError):
        trace_handler("a", name="b")


def test_an_exception_thrown_into_a_generator_handler_reaches_it(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """throw() reaches the handler's generator under its span; one it handles goes on, one it
    doesn't ends the span with the error."""
    seen: list[tuple[str, int]] = []

    @trace_handler(tracer_provider=tracer_provider)
    def stream() -> Iterator[str]:
        try:
            yield "first"
        except KeyError:
            seen.append(("handled", _current_span_id()))
        yield "second"

    generator = stream()
    assert next(generator) == "first"
    assert generator.throw(KeyError("k")) == "second"
    assert trace.get_current_span() is trace.INVALID_SPAN
    with pytest.raises(ValueError, match="v"):
        generator.throw(ValueError("v"))
    (span,) = exporter.get_finished_spans()
    assert seen == [("handled", span.context.span_id)]
    assert span.status.status_code is StatusCode.ERROR


def test_an_exception_thrown_into_an_async_generator_handler_reaches_it(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """athrow() reaches an async-generator handler under its span, and aclose() ends the span
    without error."""
    seen: list[int] = []

    @trace_handler(tracer_provider=tracer_provider)
    async def stream() -> AsyncIterator[str]:
        try:
            yield "first"
        except KeyError:
            seen.append(_current_span_id())
        yield "second"
        yield "third"

    async def consume() -> list[str]:
        generator = stream()
        items = [await generator.__anext__(), await generator.athrow(KeyError("k"))]
        await generator.aclose()
        return items

    assert asyncio.run(consume()) == ["first", "second"]
    (span,) = exporter.get_finished_spans()
    assert seen == [span.context.span_id]
    assert span.status.status_code is StatusCode.UNSET
