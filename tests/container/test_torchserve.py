"""@trace_handler on TorchServe handlers, with a real TorchServe Context and RequestProcessors
holding headers the way TorchServe's worker fills them (its ``ts.service`` needs torch, which
these tests do without)."""

from __future__ import annotations

from typing import Any

import pytest
from _container_support import HEADER, caller, echoed
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, Tracer
from ts.context import Context, RequestProcessor

from sm_tracing import trace_handler


def _headers(custom_attributes: str | None) -> dict[str, Any]:
    """A request's headers as the worker stores them: per-parameter content types (dicts)
    next to the request headers (strings)."""
    headers: dict[str, Any] = {
        "body": {"content-type": "application/json"},
        "X-Amzn-SageMaker-Target-Model": "resnet.tar.gz",
    }
    if custom_attributes is not None:
        # The wire case is not known: match it in any case.
        headers[HEADER.lower()] = custom_attributes
    return headers


def _context(*requests: str | None) -> tuple[Context, list[Any]]:
    context = Context("resnet", "/opt/ml/model", {}, len(requests), None, "0.11")
    context.request_processor = [RequestProcessor(_headers(value)) for value in requests]
    context.request_ids = {index: f"r-{index}" for index in range(len(requests))}
    return context, [{"body": b"{}"} for _ in requests]


class Handler:
    """A TorchServe custom handler class: handle(self, data, context) over a batch."""

    def __init__(self, tracer_provider: TracerProvider) -> None:
        self.current: list[int] = []
        self.seen: list[Any] = []
        self.handle = trace_handler(tracer_provider=tracer_provider)(self._handle)

    def _handle(self, data: list[Any], context: Any) -> list[str]:
        self.current.append(trace.get_current_span().get_span_context().span_id)
        for index in range(len(data)):
            self.seen.append(context.get_request_header(index, HEADER.lower()))
            context.set_response_header(index, HEADER, f"x-next-token={index}")
        return ["ok"] * len(data)


def test_a_batch_gets_one_span_per_request_each_with_its_own_parent(
    tracer: Tracer, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Three batched requests from two callers and one without a carrier: three SERVER spans
    with their own parents; the first is current in the handler and the others link to it;
    each response merges its echo after the handler's own value."""
    first, first_parent = caller(tracer, "accept_eula=true")
    second, second_parent = caller(tracer, clear=exporter)
    handler = Handler(tracer_provider)
    context, inputs = _context(first, second, None)
    result = handler.handle(inputs, context)
    assert result == ["ok"] * 3
    spans = exporter.get_finished_spans()
    assert [span.name for span in spans] == ["_handle"] * 3
    assert all(span.kind is SpanKind.SERVER for span in spans)
    assert spans[0].parent is not None and spans[0].parent.span_id == first_parent.span_id
    assert spans[1].parent is not None and spans[1].parent.span_id == second_parent.span_id
    assert spans[1].context.trace_id == second_parent.trace_id
    assert spans[2].parent is None
    assert handler.current == [spans[0].context.span_id]
    assert [link.context.span_id for link in spans[1].links] == [spans[0].context.span_id]
    assert handler.seen == ["accept_eula=true", None, None]
    for index, span in enumerate(spans):
        value = context.get_response_headers(index)[HEADER]
        assert value.startswith(f"x-next-token={index};traceresponse=")
        assert echoed(value).span_id == span.context.span_id
        assert (span.attributes or {})["aws.sagemaker.target_model"] == "resnet.tar.gz"


def test_a_module_level_handle_function_with_batch_size_one(
    tracer: Tracer, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """handle(data, context) for one request: one span, current in the handler."""
    value, parent = caller(tracer, clear=exporter)
    current: list[int] = []

    @trace_handler(tracer_provider=tracer_provider)
    def handle(data: list[Any], context: Any) -> list[str]:
        current.append(trace.get_current_span().get_span_context().span_id)
        return ["ok"]

    context, inputs = _context(value)
    handle(inputs, context)
    (span,) = exporter.get_finished_spans()
    assert span.parent is not None and span.parent.span_id == parent.span_id
    assert current == [span.context.span_id]


@pytest.mark.parametrize("failure", ["raise", "status"])
def test_failures_mark_every_request_span(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter, failure: str
) -> None:
    """A raising handler marks all the batch's spans ERROR and re-raises; a 5xx status set on
    one request marks that request's span."""

    @trace_handler(tracer_provider=tracer_provider)
    def handle(data: list[Any], context: Any) -> list[str]:
        if failure == "raise":
            raise RuntimeError("CUDA out of memory")
        context.set_response_status(503, "busy", idx=1)
        return ["ok"] * len(data)

    context, inputs = _context(None, None)
    if failure == "raise":
        with pytest.raises(RuntimeError, match="CUDA"):
            handle(inputs, context)
        expected = [StatusCode.ERROR, StatusCode.ERROR]
    else:
        handle(inputs, context)
        expected = [StatusCode.UNSET, StatusCode.ERROR]
    assert [span.status.status_code for span in exporter.get_finished_spans()] == expected
