"""@trace_handler on DJL Serving handlers. djl_python is not on PyPI: the Input and Output here
are test-local classes shaped like djl_python.inputs.Input and djl_python.outputs.Output."""

from __future__ import annotations

from typing import Any

from _container_support import HEADER, DJLInput, DJLOutput, caller, djl_properties, echoed
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode, Tracer

from sm_tracing import trace_handler


def test_a_djl_handler_continues_the_trace_from_split_properties(
    tracer: Tracer, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """DJL splits CustomAttributes into properties: the trace is rebuilt from them, the
    handler's span is current, and the Output gets the echo merged after its own value."""
    value, parent = caller(tracer, "accept_eula=true", clear=exporter)
    current: list[int] = []

    @trace_handler(tracer_provider=tracer_provider)
    def handle(inputs: Any) -> Any:
        current.append(trace.get_current_span().get_span_context().span_id)
        assert inputs.get_property("accept_eula") == "true"
        return DJLOutput().add_property(HEADER.lower(), "x-next-token=abc").add("hi")

    properties = {"Content-Type": "application/json", **djl_properties(value)}
    output = handle(DJLInput(properties))
    (span,) = exporter.get_finished_spans()
    assert span.context.trace_id == parent.trace_id
    assert span.parent is not None and span.parent.span_id == parent.span_id
    assert current == [span.context.span_id]
    assert list(output.properties) == [HEADER.lower()]
    assert output.properties[HEADER.lower()].startswith("x-next-token=abc;traceresponse=")
    assert echoed(output.properties[HEADER.lower()]).span_id == span.context.span_id


def test_the_whole_header_as_a_property_is_read_too(
    tracer: Tracer, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A property named like the header (any case) carries the value whole."""
    value, parent = caller(tracer, clear=exporter)

    @trace_handler(tracer_provider=tracer_provider)
    def handle(inputs: Any) -> Any:
        return DJLOutput()

    output = handle(DJLInput({HEADER.upper(): value}))
    (span,) = exporter.get_finished_spans()
    assert span.parent is not None and span.parent.span_id == parent.span_id
    assert echoed(output.properties[HEADER]).span_id == span.context.span_id


def test_a_djl_batch_gets_one_span_per_request(
    tracer: Tracer, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """batch_XXX_ properties give each batched request its own span and parent."""
    first, first_parent = caller(tracer)
    second, second_parent = caller(tracer, clear=exporter)
    properties = {"batch_size": "2"}
    for index, value in enumerate((first, second)):
        for key, item in djl_properties(value).items():
            properties[f"batch_{index:03d}_{key}"] = item

    @trace_handler(tracer_provider=tracer_provider)
    def handle(inputs: Any) -> Any:
        return DJLOutput()

    handle(DJLInput(properties))
    spans = exporter.get_finished_spans()
    assert [span.parent.span_id for span in spans if span.parent] == [
        first_parent.span_id,
        second_parent.span_id,
    ]


def test_a_5xx_output_code_marks_the_span(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """An Output with a server-error code sets ERROR; no carrier still gives a span."""

    @trace_handler(tracer_provider=tracer_provider)
    def handle(inputs: Any) -> Any:
        return DJLOutput(code=500, message="prediction failure")

    handle(DJLInput({}))
    (span,) = exporter.get_finished_spans()
    assert span.parent is None
    assert span.status.status_code is StatusCode.ERROR
