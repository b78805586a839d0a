"""The model server's dispatch traced in-process: Multi Model Server's real ``Service`` fed the
request batches its Java front end sends, calling the sagemaker-inference toolkit's real handler
service and Transformer, or a custom ``handle``. (tests/container/test_model_servers.py runs
the servers themselves.) Without the hook, ``@trace_handler`` on a toolkit function still finds
its request in the context it is given."""

from __future__ import annotations

import importlib.machinery
import os
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _container_support import HEADER, caller, echoed
from mms.context import Context
from mms.service import PredictionException, Service
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind, StatusCode, Tracer
from sagemaker_inference.default_handler_service import DefaultHandlerService
from sagemaker_inference.default_inference_handler import DefaultInferenceHandler
from sagemaker_inference.transformer import Transformer

import sm_tracing
from sm_tracing import trace_handler
from sm_tracing.container import _private

MODULE = "sm_tracing_test_inference"
# What the model server and the toolkit have before anything patches them.
_MMS_PREDICT = Service.__dict__["predict"]
_TRANSFORMER_DISPATCH = Transformer.__dict__["_run_handler_function"]


def _request(custom_attributes: str | None, request_id: str = "r-1") -> dict[str, Any]:
    """One request of a batch, as Multi Model Server's front end sends it to the worker."""
    headers = [
        {"name": b"Content-Type", "value": b"application/json"},
        {"name": b"Accept", "value": b"application/json"},
        {"name": b"X-Amzn-SageMaker-Inference-Id", "value": request_id.encode()},
    ]
    if custom_attributes is not None:
        headers.append({"name": HEADER.encode(), "value": custom_attributes.encode()})
    body = f'{{"id": "{request_id}"}}'.encode()
    return {
        "requestId": request_id.encode(),
        "headers": headers,
        "parameters": [{"name": "body", "contentType": "application/json", "value": body}],
    }


@pytest.fixture
def user_module(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Install an inference module with the given functions where the toolkit looks for it."""
    # The handler service puts the model's code folder on PYTHONPATH when it loads.
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))

    def install(**functions: Any) -> None:
        module = types.ModuleType(MODULE)
        module.__spec__ = importlib.machinery.ModuleSpec(MODULE, None)
        for name, function in functions.items():
            setattr(module, name, function)
        monkeypatch.setitem(sys.modules, MODULE, module)
        monkeypatch.setenv("SAGEMAKER_PROGRAM", MODULE)

    return install


@pytest.fixture
def model_server(tracer_provider: TracerProvider) -> Iterator[None]:
    """The model server's dispatch traced with this test's provider."""
    sm_tracing.uninstrument_model_server()
    sm_tracing.instrument_model_server(tracer_provider=tracer_provider)
    yield
    sm_tracing.uninstrument_model_server()


Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


@pytest.fixture
def traced(tracer_provider: TracerProvider) -> Decorator:
    """@trace_handler with this test's provider."""
    return trace_handler(tracer_provider=tracer_provider)


def toolkit_service(batch_size: int = 1) -> Service:
    """The toolkit's handler service loaded into a Multi Model Server Service, as a worker
    loads it."""
    handler = DefaultHandlerService(Transformer(DefaultInferenceHandler()))
    service = Service("model", "/opt/ml/model", None, handler.handle, None, batch_size)
    handler.initialize(service.context)
    return service


def _model_fn(model_dir: str) -> dict[str, str]:
    return {"model": model_dir}


def by_name(spans: tuple[ReadableSpan, ...] | list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def parent_id(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def ids(span_context: SpanContext) -> tuple[int, int]:
    return span_context.trace_id, span_context.span_id


def links(span: ReadableSpan) -> list[tuple[int, int]]:
    return [ids(link.context) for link in span.links]


@pytest.mark.usefixtures("model_server")
def test_a_request_is_one_span_whatever_the_signatures(
    tracer: Tracer,
    exporter: InMemorySpanExporter,
    traced: Decorator,
    user_module: Callable[..., None],
) -> None:
    """input_fn with context, predict_fn without (the usual signature), output_fn undecorated:
    one SERVER span, child of the caller's, the decorated functions INTERNAL children of it;
    the handler sees CustomAttributes without our keys; the response merges the echo after
    the handler's own value; model_fn at start-up makes no span."""
    seen: list[Any] = []

    @traced
    def model_fn(model_dir: str) -> str:
        return "model"

    @traced
    def input_fn(data: Any, content_type: str, context: Any) -> Any:
        seen.append(context.get_request_header(0, HEADER))
        return data

    @traced
    def predict_fn(data: Any, model: Any) -> Any:
        seen.append(trace.get_current_span().get_span_context().span_id)
        return data

    def output_fn(prediction: Any, accept: str, context: Any) -> Any:
        context.set_response_header(0, HEADER, "x-next-token=abc")
        return prediction

    user_module(model_fn=model_fn, input_fn=input_fn, predict_fn=predict_fn, output_fn=output_fn)
    service = toolkit_service()
    assert exporter.get_finished_spans() == ()
    value, parent = caller(tracer, "accept_eula=true", clear=exporter)
    service.predict([_request(value)])
    spans = exporter.get_finished_spans()
    (server,) = by_name(spans, "invocations")
    assert server.kind is SpanKind.SERVER
    assert server.context.trace_id == parent.trace_id and parent_id(server) == parent.span_id
    assert (server.attributes or {})["aws.sagemaker.inference_id"] == "r-1"
    assert (server.attributes or {})["http.response.status_code"] == 200
    for name in ("input_fn", "predict_fn"):
        (span,) = by_name(spans, name)
        assert span.kind is SpanKind.INTERNAL and parent_id(span) == server.context.span_id
    assert len(spans) == 3
    assert seen == ["accept_eula=true", by_name(spans, "predict_fn")[0].context.span_id]
    echo = service.context.get_response_headers(0)[HEADER]
    assert echo.startswith("x-next-token=abc;traceresponse=")
    assert echoed(echo).span_id == server.context.span_id


@pytest.mark.usefixtures("model_server")
def test_a_batch_keeps_each_item_in_its_callers_trace(
    tracer: Tracer,
    exporter: InMemorySpanExporter,
    traced: Decorator,
    user_module: Callable[..., None],
) -> None:
    """Three requests from three callers in one batch: the Transformer calls the functions
    once per item with the batch's context and no index, yet each item's spans go under its
    own request's span, each response echoes its own span, and the batch span is a new root
    linked to every caller (the request spans link to it)."""
    current: list[int] = []

    @traced
    def input_fn(data: Any, content_type: str) -> Any:
        current.append(trace.get_current_span().get_span_context().span_id)
        return data

    @traced
    def predict_fn(data: Any, model: Any) -> Any:
        return data

    user_module(model_fn=_model_fn, input_fn=input_fn, predict_fn=predict_fn)
    service = toolkit_service(batch_size=3)
    callers = [caller(tracer, f"n={number}") for number in range(3)]
    exporter.clear()
    service.predict([_request(value, f"r-{n}") for n, (value, _) in enumerate(callers)])
    spans = exporter.get_finished_spans()
    servers = by_name(spans, "invocations")
    (batch,) = by_name(spans, "batch")
    assert batch.parent is None and batch.kind is SpanKind.INTERNAL
    assert links(batch) == [ids(parent) for _, parent in callers]
    inputs, predicts = by_name(spans, "input_fn"), by_name(spans, "predict_fn")
    for index, (_, parent) in enumerate(callers):
        server = servers[index]
        assert (server.attributes or {})["aws.sagemaker.inference_id"] == f"r-{index}"
        assert server.context.trace_id == parent.trace_id and parent_id(server) == parent.span_id
        assert links(server) == [ids(batch.context)]
        assert parent_id(inputs[index]) == parent_id(predicts[index]) == server.context.span_id
        assert inputs[index].context.trace_id == parent.trace_id
        echo = service.context.get_response_headers(index)[HEADER]
        assert echoed(echo).span_id == server.context.span_id
    assert current == [span.context.span_id for span in inputs]
    assert len(spans) == 10


@pytest.mark.usefixtures("model_server")
def test_a_batch_handler_runs_under_the_batch_span(
    tracer: Tracer, exporter: InMemorySpanExporter, tracer_provider: TracerProvider
) -> None:
    """A custom handle(data, context) serving a whole batch: its span (and anything under it)
    is a child of the batch span, never of one caller's; each request still gets its own span
    under its own caller and its own echo. The handler sees each value without our keys."""
    seen: list[Any] = []

    @trace_handler(tracer_provider=tracer_provider)
    def handle(data: list[Any], context: Any) -> list[str]:
        seen.extend(context.get_request_header(index, HEADER) for index in range(len(data)))
        return ["ok"] * len(data)

    service = Service("model", "/opt/ml/model", None, handle, None, 2)
    first, first_parent = caller(tracer, "accept_eula=true")
    second, second_parent = caller(tracer, clear=exporter)
    service.predict([_request(first, "a"), _request(second, "b")])
    spans = exporter.get_finished_spans()
    (batch,) = by_name(spans, "batch")
    (handler,) = by_name(spans, "handle")
    assert parent_id(handler) == batch.context.span_id
    assert handler.context.trace_id == batch.context.trace_id
    assert links(batch) == [ids(first_parent), ids(second_parent)]
    servers = by_name(spans, "invocations")
    assert [parent_id(span) for span in servers] == [first_parent.span_id, second_parent.span_id]
    assert seen == ["accept_eula=true", None]
    for index, server in enumerate(servers):
        echo = service.context.get_response_headers(index)[HEADER]
        assert echoed(echo).span_id == server.context.span_id


@pytest.mark.usefixtures("model_server")
def test_a_request_without_a_caller_is_a_root(
    exporter: InMemorySpanExporter, tracer_provider: TracerProvider
) -> None:
    """No CustomAttributes (or none of ours): a new root SERVER span, and the echo alone."""

    def handle(data: list[Any], context: Any) -> list[str]:
        return ["ok"]

    service = Service("model", "/opt/ml/model", None, handle, None, 1)
    service.predict([_request("session=abc")])
    (server,) = exporter.get_finished_spans()
    assert server.parent is None and server.kind is SpanKind.SERVER
    assert service.context.get_request_header(0, HEADER) == "session=abc"
    assert ids(echoed(service.context.get_response_headers(0)[HEADER])) == ids(server.context)


@pytest.mark.parametrize(
    ("error", "code", "recorded"),
    [
        (RuntimeError("boom"), 503, "RuntimeError"),
        (MemoryError(), 507, "MemoryError"),
        (PredictionException("bad", 400), 400, "mms.service.PredictionException"),
    ],
)
@pytest.mark.usefixtures("model_server")
def test_a_failing_handler_marks_every_request(
    exporter: InMemorySpanExporter, error: BaseException, code: int, recorded: str
) -> None:
    """The entry point raises: each request's span gets the status the server answers with and
    the exception's type (no message); the server answers as it would without us."""

    def handle(data: list[Any], context: Any) -> list[str]:
        raise error

    service = Service("model", "/opt/ml/model", None, handle, None, 2)
    wire = service.predict([_request(None, "a"), _request(None, "b")])
    assert int.from_bytes(bytes(wire[:4]), "big") == code
    servers = by_name(exporter.get_finished_spans(), "invocations")
    assert len(servers) == 2
    for span in servers:
        assert (span.attributes or {})["http.response.status_code"] == code
        assert span.status.status_code is StatusCode.ERROR
        assert [event.attributes for event in span.events] == [{"exception.type": recorded}]


@pytest.mark.usefixtures("model_server")
def test_an_answer_of_the_wrong_length_is_a_503(
    exporter: InMemorySpanExporter, tracer_provider: TracerProvider
) -> None:
    """The server answers 503 to every request when the handler's list doesn't match the
    batch; the spans say so."""
    service = Service("model", "/opt/ml/model", None, lambda data, context: ["one"], None, 2)
    service.predict([_request(None, "a"), _request(None, "b")])
    codes = [
        (span.attributes or {})["http.response.status_code"]
        for span in by_name(exporter.get_finished_spans(), "invocations")
    ]
    assert codes == [503, 503]


@pytest.mark.usefixtures("model_server")
def test_loading_and_probing_make_no_span(
    exporter: InMemorySpanExporter, traced: Decorator
) -> None:
    """Outside a request, in a process whose model server is traced: a decorated model_fn
    and TorchServe's handle(None, context) probe run untraced."""
    model_fn = traced(_model_fn)

    @traced
    def handle(data: Any, context: Any) -> Any:
        return data

    assert model_fn("/opt/ml/model") == {"model": "/opt/ml/model"}
    assert handle(None, Context("model", "/opt/ml/model", {}, 1, None, "1.1")) is None
    assert exporter.get_finished_spans() == ()


@pytest.mark.usefixtures("model_server")
def test_uninstrumenting_takes_the_hook_out(
    exporter: InMemorySpanExporter, tracer_provider: TracerProvider
) -> None:
    """After uninstrument_model_server() the service's predict is MMS's own again and serves
    without a span; instrumenting twice changes nothing."""
    sm_tracing.instrument_model_server(tracer_provider=tracer_provider)
    assert Service.__dict__["predict"] is not _MMS_PREDICT
    sm_tracing.uninstrument_model_server()
    assert Service.__dict__["predict"] is _MMS_PREDICT
    service = Service("model", "/opt/ml/model", None, lambda data, context: ["ok"], None, 1)
    value = "traceparent=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    service.predict([_request(value)])
    assert exporter.get_finished_spans() == ()
    assert service.context.get_request_header(0, HEADER) == value


def test_instrument_cycles_leave_one_hook(
    tracer: Tracer, exporter: InMemorySpanExporter, tracer_provider: TracerProvider
) -> None:
    """Many instrument/uninstrument cycles leave MMS's own predict and Transformer behind,
    and once instrumented again a request is one span, as after the first."""
    for _ in range(20):
        sm_tracing.instrument_model_server(tracer_provider=tracer_provider)
        sm_tracing.uninstrument_model_server()
    assert Service.__dict__["predict"] is _MMS_PREDICT
    assert Transformer.__dict__["_run_handler_function"] is _TRANSFORMER_DISPATCH
    sm_tracing.instrument_model_server(tracer_provider=tracer_provider)
    try:
        service = Service("model", "/opt/ml/model", None, lambda data, context: ["ok"], None, 1)
        value, parent = caller(tracer, clear=exporter)
        service.predict([_request(value)])
    finally:
        sm_tracing.uninstrument_model_server()
    (span,) = exporter.get_finished_spans()
    assert parent_id(span) == parent.span_id


@pytest.mark.usefixtures("model_server")
def test_a_release_without_the_entry_point_attribute_is_served_untraced(
    tracer: Tracer, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where a model server's Service keeps its entry point under another name, predict
    serves as it would untraced: the handler's answer, our keys left alone, no span."""
    monkeypatch.setattr(_private, "SERVICE_ENTRY_POINT", "_renamed_entry_point")
    service = Service("model", "/opt/ml/model", None, lambda data, context: ["ok"], None, 1)
    value, _ = caller(tracer, clear=exporter)
    answered = service.predict([_request(value)])
    assert answered[:4] == (200).to_bytes(4, "big")  # the status MMS's protocol answers with
    assert exporter.get_finished_spans() == ()
    assert service.context.get_request_header(0, HEADER) == value


def test_a_toolkit_without_its_dispatch_method_runs_items_under_the_batch_span(
    tracer: Tracer,
    exporter: InMemorySpanExporter,
    traced: Decorator,
    user_module: Callable[..., None],
    tracer_provider: TracerProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where the toolkit's Transformer has no per-item dispatch to hook, each request still has
    its span and answer, and the per-item functions run under the batch's span."""
    monkeypatch.setattr(_private, "TRANSFORMER_DISPATCH", "_renamed_dispatch")
    sm_tracing.uninstrument_model_server()
    sm_tracing.instrument_model_server(tracer_provider=tracer_provider)
    try:
        assert Transformer.__dict__["_run_handler_function"] is _TRANSFORMER_DISPATCH

        @traced
        def predict_fn(data: Any, model: Any) -> Any:
            return data

        user_module(model_fn=_model_fn, predict_fn=predict_fn)
        service = toolkit_service(batch_size=2)
        callers = [caller(tracer, f"n={number}") for number in range(2)]
        exporter.clear()
        service.predict([_request(value, f"r-{n}") for n, (value, _) in enumerate(callers)])
    finally:
        sm_tracing.uninstrument_model_server()
    spans = exporter.get_finished_spans()
    servers = by_name(spans, "invocations")
    (batch,) = by_name(spans, "batch")
    assert [parent_id(server) for server in servers] == [parent.span_id for _, parent in callers]
    for index in range(2):
        assert (servers[index].attributes or {})["http.response.status_code"] == 200
    assert [parent_id(span) for span in by_name(spans, "predict_fn")] == [batch.context.span_id] * 2


# --- without the model server's hook: the decorator on its own --------------------------------


def _context(batch: list[dict[str, Any]]) -> tuple[Context, list[dict[str, Any]]]:
    processors, inputs, ids = Service.retrieve_data_for_inference(batch)
    context = Context("model", "/opt/ml/model", {}, len(batch), None, "1.1")
    context.request_processor = processors
    context.request_ids = ids
    return context, inputs


def test_transform_fn_with_context_continues_the_callers_trace(
    tracer: Tracer,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    user_module: Callable[..., None],
) -> None:
    """A decorated transform_fn taking context, run by the Transformer alone: its span is the
    container span, child of the caller's; the handler sees CustomAttributes stripped and the
    response carries the echo."""
    value, parent = caller(tracer, "accept_eula=true", clear=exporter)
    seen: list[Any] = []

    @trace_handler(tracer_provider=tracer_provider)
    def transform_fn(model: Any, data: Any, content_type: str, accept: str, context: Any) -> Any:
        seen.append(context.get_request_header(0, HEADER))
        return data, accept

    user_module(model_fn=_model_fn, transform_fn=transform_fn)
    context, inputs = _context([_request(value)])
    result = Transformer(DefaultInferenceHandler()).transform(inputs, context)
    assert result == ['{"id": "r-1"}']
    (span,) = exporter.get_finished_spans()
    assert span.name == "transform_fn" and span.kind is SpanKind.SERVER
    assert parent_id(span) == parent.span_id
    assert seen == ["accept_eula=true"]
    assert echoed(context.get_response_headers(0)[HEADER]).span_id == span.context.span_id


def test_an_item_of_a_batch_that_cant_be_told_apart_is_a_linked_root(
    tracer: Tracer, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A toolkit function given a batch's context and one item: which request it serves is
    not known, so its span is a new root linked to every caller, never one caller's child,
    and no response gets its echo."""
    callers = [caller(tracer, f"n={number}") for number in range(3)]
    exporter.clear()

    @trace_handler(tracer_provider=tracer_provider)
    def input_fn(data: Any, content_type: str, context: Any) -> Any:
        return data

    context, inputs = _context([_request(value, f"r-{n}") for n, (value, _) in enumerate(callers)])
    input_fn(inputs[1]["body"], "application/json", context)
    (span,) = exporter.get_finished_spans()
    assert span.parent is None
    assert span.context.trace_id not in {parent.trace_id for _, parent in callers}
    assert links(span) == [ids(parent) for _, parent in callers]
    for index in range(3):
        assert context.get_request_header(index, HEADER) == f"n={index}"
        assert HEADER not in context.get_response_headers(index)
