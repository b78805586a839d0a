"""Failed calls on the client side: what the span says (never a payload), and a tracing SDK
that fails never failing the caller's call."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from _client_support import (
    REQUEST_ID,
    Canned,
    Wire,
    aio_client,
    call_params,
    canned_for,
    instrumenting,
    loopback,
    make_client,
    model_stream_error,
    payloads,
)
from botocore.exceptions import EventStreamError, ParamValidationError
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import sm_tracing

SECRET = "s3cr3t-payload"
STREAM = "invoke_endpoint_with_response_stream"


def _model_error() -> Canned:
    """SageMaker's ModelError, quoting the container's error body as SageMaker does."""
    body = {
        "__type": "ModelError",
        "Message": f'Received client error (400) from primary with message "{SECRET}"',
        "OriginalStatusCode": 400,
        "OriginalMessage": SECRET,
        "LogStreamArn": "arn:aws:logs:us-east-1:123456789012:log-group:/aws/sagemaker/x",
    }
    headers = {"x-amzn-RequestId": REQUEST_ID, "Content-Type": "application/json"}
    return Canned(424, headers, json.dumps(body).encode())


def _everything_recorded(span: ReadableSpan) -> str:
    return repr(
        (
            dict(span.attributes or {}),
            [(event.name, dict(event.attributes or {})) for event in span.events],
            span.status.description,
        )
    )


def _only_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    (span,) = exporter.get_finished_spans()
    return span


def _assert_type_only(span: ReadableSpan, type_suffix: str) -> None:
    """ERROR, the exception event naming the type, and no message anywhere."""
    assert span.status.status_code is StatusCode.ERROR
    assert SECRET not in _everything_recorded(span)
    (event,) = [event for event in span.events if event.name == "exception"]
    assert event.attributes is not None
    assert set(event.attributes) == {"exception.type"}
    assert str(event.attributes["exception.type"]).endswith(type_suffix)
    assert span.attributes is not None
    assert str(span.attributes["error.type"]).endswith(type_suffix)


@pytest.mark.usefixtures("instrumented")
def test_model_error_records_codes_never_the_containers_message(
    client: Any, wire: Wire, exporter: InMemorySpanExporter
) -> None:
    """A ModelError records its type, AWS error code, HTTP status and the container's original
    status; not SageMaker's message, which quotes the container's error body."""
    wire.respond = lambda request: _model_error()
    with pytest.raises(client.exceptions.ModelError) as raised:
        client.invoke_endpoint(**call_params("invoke_endpoint"))
    assert SECRET in str(raised.value)  # the caller still gets all of it
    span = _only_span(exporter)
    _assert_type_only(span, "ModelError")
    assert span.attributes is not None
    assert span.attributes["aws.error.code"] == "ModelError"
    assert span.attributes["aws.sagemaker.original_status_code"] == 400
    assert span.attributes["http.response.status_code"] == 424
    assert span.attributes["aws.request_id"] == REQUEST_ID


@pytest.mark.usefixtures("instrumented")
@pytest.mark.parametrize(
    "params",
    [
        {"Body": {"prompt": SECRET}},
        {"CustomAttributes": [f"api_key={SECRET}"]},
        {"CustomAttributes": f"a={SECRET}", "Accept": 42},
    ],
    ids=["body", "custom-attributes", "other-parameter"],
)
def test_parameter_errors_never_record_the_values(
    client: Any, wire: Wire, exporter: InMemorySpanExporter, params: dict[str, Any]
) -> None:
    """botocore's ParamValidationError quotes the bad value: the span records the type only,
    and nothing leaves on the wire."""
    with pytest.raises(ParamValidationError) as raised:
        client.invoke_endpoint(**call_params("invoke_endpoint", **params))
    assert SECRET in str(raised.value) or "Accept" in str(raised.value)
    assert wire.requests == []
    _assert_type_only(_only_span(exporter), "ParamValidationError")


@pytest.mark.usefixtures("instrumented")
def test_stream_error_records_its_code_not_its_message(
    client: Any, wire: Wire, exporter: InMemorySpanExporter
) -> None:
    """A ModelStreamError mid-stream is recorded by type and code; its message (the model's
    words) is not."""
    wire.respond = lambda request: canned_for(
        "InvokeEndpointWithResponseStream", chunks=[b"a"], tail=model_stream_error(SECRET)
    )
    body = client.invoke_endpoint_with_response_stream(**call_params(STREAM))["Body"]
    with pytest.raises(EventStreamError):
        list(body)
    span = _only_span(exporter)
    _assert_type_only(span, "EventStreamError")
    assert span.attributes is not None
    assert span.attributes["aws.error.code"] == "ModelStreamError"


def test_aio_model_error_records_codes_never_the_message(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """The aiobotocore path records a ModelError the same way."""
    pytest.importorskip("aiobotocore.session")

    async def main() -> None:
        with loopback(lambda path: _model_error()) as server:
            async with aio_client(server) as client:
                with pytest.raises(client.exceptions.ModelError):
                    await client.invoke_endpoint(**call_params("invoke_endpoint"))

    with instrumenting(tracer_provider=tracer_provider):
        asyncio.run(main())
    span = _only_span(exporter)
    _assert_type_only(span, "ModelError")
    assert span.attributes is not None
    assert span.attributes["aws.sagemaker.original_status_code"] == 400


# -- a span processor that raises --------------------------------------------------------------


class _Raising(SpanProcessor):
    def __init__(self, on: str) -> None:
        self.on = on

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if self.on == "start":
            raise RuntimeError("processor failed on start")

    def on_end(self, span: ReadableSpan) -> None:
        if self.on == "end":
            raise RuntimeError("processor failed on end")


@pytest.fixture(params=["start", "end"])
def broken_sdk(request: pytest.FixtureRequest) -> Iterator[InMemorySpanExporter]:
    """instrument() with a provider whose first span processor raises on start or on end;
    an exporter behind it sees what still gets through."""
    provider = TracerProvider()
    provider.add_span_processor(_Raising(request.param))
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    sm_tracing.instrument(tracer_provider=provider)
    yield exporter
    sm_tracing.uninstrument()
    provider.shutdown()


@pytest.mark.usefixtures("broken_sdk")
@pytest.mark.parametrize("method", ["invoke_endpoint", "invoke_endpoint_async", STREAM])
def test_a_raising_span_processor_never_breaks_a_call(wire: Wire, method: str) -> None:
    """Every operation answers as usual, and a stream reads to its end and closes, when the
    SDK raises while starting or ending the span."""
    client = make_client(wire=wire)
    response = getattr(client, method)(**call_params(method, CustomAttributes="a=1"))
    assert response["ResponseMetadata"]["HTTPStatusCode"] in (200, 202)
    if method == STREAM:
        body = response["Body"]
        assert len(payloads(list(body))) == 3
        body.close()
    assert (wire.custom_attributes() or "").startswith("a=1")


@pytest.mark.usefixtures("broken_sdk")
def test_a_raising_span_processor_leaves_the_callers_error_alone(wire: Wire) -> None:
    """A failing call still raises its own error, not the SDK's."""
    wire.respond = lambda request: _model_error()
    client = make_client(wire=wire)
    with pytest.raises(client.exceptions.ModelError):
        client.invoke_endpoint(**call_params("invoke_endpoint"))


@pytest.mark.usefixtures("broken_sdk")
@pytest.mark.parametrize("ending", ["close", "error", "abandoned"])
def test_a_raising_span_processor_never_breaks_a_stream(
    wire: Wire, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    """Closing a stream early, a stream error and an abandoned stream reach the caller as
    botocore gives them, and nothing escapes from the collection of an abandoned one."""
    import gc
    import sys

    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)

    if ending == "error":
        wire.respond = lambda request: canned_for(
            "InvokeEndpointWithResponseStream", chunks=[b"a"], tail=model_stream_error()
        )
    body = make_client(wire=wire).invoke_endpoint_with_response_stream(**call_params(STREAM))[
        "Body"
    ]
    if ending == "close":
        next(iter(body))
        body.close()
    elif ending == "error":
        with pytest.raises(EventStreamError):
            list(body)
    else:
        next(iter(body))
        del body
        gc.collect()
    assert unraisable == []
