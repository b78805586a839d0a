"""@trace_handler in the sagemaker-inference-toolkit, driven by its real Transformer with a real
Multi Model Server Context built from a request batch the way MMS builds it."""

from __future__ import annotations

import importlib.machinery
import sys
import types
from collections.abc import Callable
from typing import Any

import pytest
from mms.context import Context
from mms.protocol.otf_message_handler import create_predict_response
from mms.service import Service
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, Tracer
from sagemaker_inference.default_inference_handler import DefaultInferenceHandler
from sagemaker_inference.transformer import Transformer

from sm_tracing import trace_handler
from tests._container_support import HEADER, caller, echoed

MODULE = "sm_tracing_test_inference"


def _mms_request(custom_attributes: str | None, request_id: str = "r-1") -> dict[str, Any]:
    """One request of an MMS batch, as MMS's frontend sends it to the Python worker."""
    headers = [
        {"name": b"Content-Type", "value": b"application/json"},
        {"name": b"Accept", "value": b"application/json"},
        {"name": b"X-Amzn-SageMaker-Inference-Id", "value": request_id.encode()},
    ]
    if custom_attributes is not None:
        headers.append({"name": HEADER.encode(), "value": custom_attributes.encode()})
    return {
        "requestId": request_id.encode(),
        "headers": headers,
        "parameters": [{"name": "body", "contentType": "application/json", "value": b"[1, 2]"}],
    }


def _context(batch: list[dict[str, Any]]) -> tuple[Context, list[dict[str, Any]], dict[int, str]]:
    processors, inputs, ids = Service.retrieve_data_for_inference(batch)
    context = Context("model", "/opt/ml/model", {}, len(batch), None, "1.1")
    context.request_processor = processors
    context.request_ids = ids
    return context, inputs, ids


@pytest.fixture
def user_module(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Install an inference module with the given functions where the toolkit looks for it."""

    def install(**functions: Any) -> None:
        module = types.ModuleType(MODULE)
        module.__spec__ = importlib.machinery.ModuleSpec(MODULE, None)
        for name, function in functions.items():
            setattr(module, name, function)
        monkeypatch.setitem(sys.modules, MODULE, module)
        monkeypatch.setenv("SAGEMAKER_PROGRAM", MODULE)

    return install


def _model_fn(model_dir: str) -> str:
    return "model"


def test_transform_fn_with_context_continues_the_callers_trace(
    tracer: Tracer,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    user_module: Callable[..., None],
) -> None:
    """A decorated transform_fn taking context gets it from the toolkit (the signature is
    kept), sees CustomAttributes stripped, runs under a child of the caller's span, and the
    MMS response carries the echo."""
    value, parent = caller(tracer, "accept_eula=true")
    exporter.clear()
    seen: list[Any] = []

    @trace_handler(tracer_provider=tracer_provider)
    def transform_fn(model: Any, data: Any, content_type: str, accept: str, context: Any) -> Any:
        seen.append(context.get_request_header(0, HEADER))
        seen.append(trace.get_current_span().get_span_context().span_id)
        return data, accept

    user_module(model_fn=_model_fn, transform_fn=transform_fn)
    context, inputs, ids = _context([_mms_request(value)])
    result = Transformer(DefaultInferenceHandler()).transform(inputs, context)
    assert result == ["[1, 2]"]
    (span,) = exporter.get_finished_spans()
    assert span.name == "transform_fn"
    assert span.kind is SpanKind.SERVER
    assert span.context.trace_id == parent.trace_id
    assert span.parent is not None and span.parent.span_id == parent.span_id
    assert (span.attributes or {})["aws.sagemaker.inference_id"] == "r-1"
    assert (span.attributes or {})["http.response.status_code"] == 200
    assert seen == ["accept_eula=true", span.context.span_id]
    echo = context.get_response_headers(0)[HEADER]
    assert echoed(echo).span_id == span.context.span_id
    wire = bytes(create_predict_response(result, ids, "ok", 200, context=context))
    assert f"traceresponse=00-{span.context.trace_id:032x}".encode() in wire


def test_input_predict_output_fns_each_continue_the_trace(
    tracer: Tracer,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    user_module: Callable[..., None],
) -> None:
    """Decorated input_fn / predict_fn / output_fn, with and without context, are each called
    with the arguments the toolkit counts; the ones with context find the caller's parent even
    after the first one stripped the header."""
    value, parent = caller(tracer)
    exporter.clear()
    traced = trace_handler(tracer_provider=tracer_provider)

    @traced
    def input_fn(input_data: Any, content_type: str, context: Any) -> Any:
        return input_data

    @traced
    def predict_fn(data: Any, model: Any) -> Any:
        return data

    @traced
    def output_fn(prediction: Any, accept: str, context: Any) -> Any:
        return prediction

    user_module(model_fn=_model_fn, input_fn=input_fn, predict_fn=predict_fn, output_fn=output_fn)
    context, inputs, _ = _context([_mms_request(value)])
    assert Transformer(DefaultInferenceHandler()).transform(inputs, context) == ["[1, 2]"]
    spans = {span.name: span for span in exporter.get_finished_spans()}
    for name in ("input_fn", "output_fn"):
        assert spans[name].parent is not None and spans[name].parent.span_id == parent.span_id
    # predict_fn takes no context: nothing to continue, a root span of its own.
    assert spans["predict_fn"].parent is None
    assert HEADER not in context.get_all_request_header(0)


def test_a_toolkit_error_marks_the_span(
    tracer: Tracer,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    user_module: Callable[..., None],
) -> None:
    """transform_fn's exception is recorded and re-raised to the toolkit, which answers 500."""

    @trace_handler(tracer_provider=tracer_provider)
    def transform_fn(model: Any, data: Any, content_type: str, accept: str, context: Any) -> Any:
        raise ValueError("bad payload")

    user_module(model_fn=_model_fn, transform_fn=transform_fn)
    value, _ = caller(tracer)
    exporter.clear()
    context, inputs, _ = _context([_mms_request(value)])
    Transformer(DefaultInferenceHandler()).transform(inputs, context)
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert [event.attributes["exception.type"] for event in span.events] == ["ValueError"]  # type: ignore[index]
    assert context.get_response_status(0)[0] == 500


def test_a_multi_model_server_batch_gets_one_span_per_request(
    tracer: Tracer, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """An MMS handle(data, context) for a batch of two: one span per request, each child of
    its own caller, each response echoing its own span."""
    first, first_parent = caller(tracer)
    second, second_parent = caller(tracer, "accept_eula=true")
    exporter.clear()

    @trace_handler(tracer_provider=tracer_provider)
    def handle(data: list[Any], context: Any) -> list[Any]:
        return [context.get_request_header(index, HEADER) for index in range(len(data))]

    context, inputs, _ = _context([_mms_request(first, "a"), _mms_request(second, "b")])
    assert handle(inputs, context) == [None, "accept_eula=true"]
    spans = exporter.get_finished_spans()
    assert [span.parent.span_id for span in spans if span.parent] == [
        first_parent.span_id,
        second_parent.span_id,
    ]
    for index, span in enumerate(spans):
        assert echoed(context.get_response_headers(index)[HEADER]).span_id == span.context.span_id
