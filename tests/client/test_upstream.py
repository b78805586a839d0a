"""Alongside opentelemetry-instrumentation-botocore: one CLIENT span per call, theirs, enriched,
and the injected parent is that span, whichever was instrumented first."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from _client_support import (
    Wire,
    call_params,
    canned_for,
    make_client,
    remove_upstream_only,
    traceparent_of,
)
from opentelemetry.instrumentation.botocore import BotocoreInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import sm_tracing

OTHER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture(params=["ours-first", "theirs-first"])
def both(request: pytest.FixtureRequest, tracer_provider: TracerProvider) -> Iterator[str]:
    """Both instrumentations on, in either order; both off afterwards, in reverse order."""
    ours: Callable[[], None] = lambda: sm_tracing.instrument(tracer_provider=tracer_provider)  # noqa: E731
    theirs: Callable[[], None] = lambda: BotocoreInstrumentor().instrument(  # noqa: E731
        tracer_provider=tracer_provider
    )
    order = [ours, theirs] if request.param == "ours-first" else [theirs, ours]
    for install in order:
        install()
    yield request.param
    if request.param == "ours-first":
        BotocoreInstrumentor().uninstrument()
        sm_tracing.uninstrument()
    else:
        sm_tracing.uninstrument()
        BotocoreInstrumentor().uninstrument()


def _client_spans(exporter: InMemorySpanExporter) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]


@pytest.mark.usefixtures("both")
@pytest.mark.parametrize(
    "method", ["invoke_endpoint", "invoke_endpoint_async", "invoke_endpoint_with_response_stream"]
)
def test_one_client_span_and_it_is_the_injected_parent(
    exporter: InMemorySpanExporter, method: str
) -> None:
    """Exactly one CLIENT span per call, carrying our SageMaker attributes, and the
    traceparent sent names it."""
    wire = Wire()
    client = make_client(wire=wire)
    for _ in range(2):  # the first call registers the handlers; the second uses them
        response = getattr(client, method)(**call_params(method, CustomAttributes="a=1"))
        if method == "invoke_endpoint_with_response_stream":
            list(response["Body"])
    spans = _client_spans(exporter)
    assert len(spans) == 2
    for index, span in enumerate(spans):
        sent = wire.custom_attributes(index)
        assert sent is not None and sent.startswith("a=1;traceparent=")
        assert traceparent_of(sent) == (
            f"{span.context.trace_id:032x}",
            f"{span.context.span_id:016x}",
        )
        assert span.attributes["aws.sagemaker.endpoint.name"] == "my-endpoint"
        assert span.attributes["rpc.service"] == "SageMaker Runtime"


@pytest.mark.usefixtures("both")
def test_their_span_gets_the_response_attributes_and_echo(exporter: InMemorySpanExporter) -> None:
    """The invoked variant, the container echo and its time are recorded on their span, and
    the echo is taken out of the response."""
    wire = Wire(
        lambda request: canned_for(
            "InvokeEndpoint",
            f"x=1;traceresponse=00-{OTHER_TRACE}-00f067aa0ba902b7-01;sm-container-us=1000",
        )
    )
    client = make_client(wire=wire)
    response = client.invoke_endpoint(**call_params("invoke_endpoint"))
    assert response["CustomAttributes"] == "x=1"
    (span,) = _client_spans(exporter)
    assert span.attributes["aws.sagemaker.invoked_production_variant"] == "variant-a"
    assert span.attributes["aws.sagemaker.container.trace_id"] == OTHER_TRACE
    assert len(span.links) == 1
    assert span.attributes["aws.sagemaker.container.duration"] == 0.001
    assert span.attributes["aws.sagemaker.overhead.duration"] >= 0


def test_uninstrument_ours_leaves_theirs_working(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Removing ours (instrumented first) keeps their wrapper and span, and stops injection,
    including the handlers on a client already used."""
    sm_tracing.instrument(tracer_provider=tracer_provider)
    BotocoreInstrumentor().instrument(tracer_provider=tracer_provider)
    try:
        wire = Wire()
        client = make_client(wire=wire)
        client.invoke_endpoint(**call_params("invoke_endpoint"))
        sm_tracing.uninstrument()
        client.invoke_endpoint(**call_params("invoke_endpoint"))
    finally:
        BotocoreInstrumentor().uninstrument()
        sm_tracing.uninstrument()
    assert wire.custom_attributes(0) is not None
    assert wire.custom_attributes(1) is None
    first, second = _client_spans(exporter)
    assert "aws.sagemaker.endpoint.name" in first.attributes
    assert "aws.sagemaker.endpoint.name" not in second.attributes


@contextmanager
def _theirs_then_ours(tracer_provider: TracerProvider) -> Iterator[tuple[Wire, Any]]:
    """The upstream instrumentation, then ours on top of it, and a client that has made one
    call through both; both are off afterwards."""
    BotocoreInstrumentor().instrument(tracer_provider=tracer_provider)
    sm_tracing.instrument(tracer_provider=tracer_provider)
    try:
        wire = Wire()
        client = make_client(wire=wire)
        client.invoke_endpoint(**call_params("invoke_endpoint"))
        yield wire, client
    finally:
        sm_tracing.uninstrument()
        remove_upstream_only()


def test_uninstrument_theirs_makes_ours_take_over(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """When the upstream instrumentation goes, our own span takes over on the same client,
    still one CLIENT span per call."""
    with _theirs_then_ours(tracer_provider) as (wire, client):
        remove_upstream_only()
        client.invoke_endpoint(**call_params("invoke_endpoint"))
    first, second = _client_spans(exporter)
    assert first.instrumentation_scope.name.startswith("opentelemetry.instrumentation.botocore")
    assert second.instrumentation_scope.name == "sm_tracing"
    for index, span in enumerate((first, second)):
        assert traceparent_of(wire.custom_attributes(index))[1] == f"{span.context.span_id:016x}"


def test_their_own_uninstrument_under_ours_keeps_the_context_going_out(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Their uninstrument() takes off only the outermost wrapper: ours went in under theirs, so
    it takes off theirs. Every later call still carries the traceparent of a span that is
    exported, and botocore's own method is back once ours goes too."""
    import botocore.client

    original = botocore.client.BaseClient.__dict__["_make_api_call"]
    with _theirs_then_ours(tracer_provider) as (wire, client):
        BotocoreInstrumentor().uninstrument()
        exporter.clear()
        client.invoke_endpoint(**call_params("invoke_endpoint"))
        spans = {span.context.span_id for span in _client_spans(exporter)}
        assert int(traceparent_of(wire.custom_attributes())[1], 16) in spans
    assert botocore.client.BaseClient.__dict__["_make_api_call"] is original


def _pass_through(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    return wrapped(*args, **kwargs)


@contextmanager
def _left_bound(tracer_provider: TracerProvider, upstream: bool) -> Iterator[None]:
    """botocore's method as another tool's removal leaves it: a wrapper (the upstream
    instrumentation's, or a plain wrapt one) under a second wrapt wrapper that is then taken off
    the way opentelemetry's ``unwrap`` does it, which leaves the first bound to no instance in
    the class; then ours. All off afterwards, botocore's own method back."""
    import botocore.client
    import wrapt
    from opentelemetry.instrumentation.utils import unwrap

    owner = botocore.client.BaseClient
    original = owner.__dict__["_make_api_call"]
    if upstream:
        BotocoreInstrumentor().instrument(tracer_provider=tracer_provider)
    else:
        wrapt.wrap_function_wrapper(owner, "_make_api_call", _pass_through)
    wrapt.wrap_function_wrapper(owner, "_make_api_call", _pass_through)
    unwrap(owner, "_make_api_call")
    assert isinstance(owner.__dict__["_make_api_call"], wrapt.BoundFunctionWrapper)
    sm_tracing.instrument(tracer_provider=tracer_provider)
    try:
        yield
    finally:
        sm_tracing.uninstrument()
        if upstream:
            BotocoreInstrumentor().uninstrument()
        owner._make_api_call = original  # type: ignore[method-assign]


def _stubbed_and_failed_calls(client: Any) -> None:
    """A call botocore's Stubber answers, and one that fails before it is built."""
    from botocore.exceptions import ParamValidationError
    from botocore.stub import Stubber

    with Stubber(client) as stubber:
        stubber.add_response("invoke_endpoint", {"Body": b"{}"})
        client.invoke_endpoint(**call_params("invoke_endpoint"))
    with pytest.raises(ParamValidationError):
        client.invoke_endpoint(EndpointName="my-endpoint")


@pytest.mark.parametrize("upstream", [True, False], ids=["upstream-bound", "other-bound"])
def test_on_top_of_a_wrapper_left_bound_every_call_has_one_span(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter, upstream: bool
) -> None:
    """On top of a wrapper left bound in botocore's class, where ours can't go under it: a
    call still has one CLIENT span, named by the context sent and carrying our attributes: the
    upstream instrumentation's when that is the wrapper under ours, else our own; so do a
    stubbed call and one that fails before its request is built."""
    with _left_bound(tracer_provider, upstream):
        wire = Wire()
        client = make_client(wire=wire)
        client.invoke_endpoint(**call_params("invoke_endpoint"))
        (span,) = _client_spans(exporter)
        assert traceparent_of(wire.custom_attributes())[1] == f"{span.context.span_id:016x}"
        _stubbed_and_failed_calls(client)
    spans = _client_spans(exporter)
    assert len(spans) == 3, [s.name for s in spans]
    scope = "opentelemetry.instrumentation.botocore" if upstream else "sm_tracing"
    for span in spans:
        assert span.instrumentation_scope.name.startswith(scope)
        assert span.attributes["aws.sagemaker.endpoint.name"] == "my-endpoint"
    assert spans[2].status.status_code.name == "ERROR"
