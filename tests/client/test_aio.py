"""aiobotocore clients, talking to a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from typing import Any

import pytest
from _client_support import (
    aio_client,
    beside_upstream,
    call_params,
    loopback,
    model_error,
    payloads,
    sent_custom_attributes,
    traceparent_of,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode, Tracer

import sm_tracing
from tests.conftest import requires_package

pytest.importorskip("aiobotocore.session")

CHUNKS = [b'{"token": "a"}\n', b'{"token": "b"}\n', b'{"token": "c"}\n']


@pytest.fixture
def server() -> Iterator[Any]:
    with loopback() as running:
        yield running


@pytest.mark.usefixtures("instrumented")
@pytest.mark.parametrize("method", ["invoke_endpoint", "invoke_endpoint_async"])
def test_aio_call_injects_and_makes_a_span(
    server: Any, exporter: InMemorySpanExporter, tracer: Tracer, method: str
) -> None:
    """An aiobotocore call sends the client span in its signed CustomAttributes, under the
    caller's span."""

    async def main() -> None:
        async with aio_client(server) as client:
            with tracer.start_as_current_span("caller"):
                response = await getattr(client, method)(
                    **call_params(method, CustomAttributes="accept_eula=true")
                )
            if method == "invoke_endpoint":
                assert await response["Body"].read() == b'{"outputs": "hello"}'

    asyncio.run(main())
    (span,) = [s for s in exporter.get_finished_spans() if s.name.startswith("SageMaker")]
    sent = sent_custom_attributes(server)
    assert sent is not None and sent.startswith("accept_eula=true;traceparent=")
    assert traceparent_of(sent)[1] == f"{span.context.span_id:016x}"
    assert span.parent is not None
    headers = {k.lower(): v for k, v in server.received[-1].headers.items()}
    assert "x-amzn-sagemaker-custom-attributes" in headers["authorization"]
    assert span.attributes["aws.sagemaker.endpoint.name"] == "my-endpoint"


@pytest.mark.usefixtures("instrumented")
def test_aio_stream_span_ends_after_async_for(server: Any, exporter: InMemorySpanExporter) -> None:
    """``async for`` over the stream reads every event; the span ends after the last one."""
    seen_open: list[bool] = []

    async def main() -> list[Any]:
        async with aio_client(server) as client:
            response = await client.invoke_endpoint_with_response_stream(
                **call_params("invoke_endpoint_with_response_stream")
            )
            events = []
            async for event in response["Body"]:
                seen_open.append(not exporter.get_finished_spans())
                events.append(event)
            return events

    events = asyncio.run(main())
    assert payloads(events) == CHUNKS
    assert seen_open == [True, True, True]
    (span,) = exporter.get_finished_spans()
    assert span.attributes["aws.sagemaker.stream.chunk_count"] == 3
    assert span.attributes["aws.sagemaker.stream.outcome"] == "complete"
    assert traceparent_of(sent_custom_attributes(server))[1] == f"{span.context.span_id:016x}"


@pytest.mark.usefixtures("instrumented")
def test_aio_stream_closed_early(server: Any, exporter: InMemorySpanExporter) -> None:
    """Closing an aiobotocore stream after one event ends the span as closed."""

    async def main() -> None:
        async with aio_client(server) as client:
            response = await client.invoke_endpoint_with_response_stream(
                **call_params("invoke_endpoint_with_response_stream")
            )
            body = response["Body"]
            async for _ in body:
                break
            body.close()

    asyncio.run(main())
    gc.collect()
    (span,) = exporter.get_finished_spans()
    assert span.attributes["aws.sagemaker.stream.outcome"] == "closed"
    assert span.attributes["aws.sagemaker.stream.chunk_count"] == 1


@pytest.mark.usefixtures("instrumented")
def test_aio_model_error(exporter: InMemorySpanExporter) -> None:
    """A ModelError from an aiobotocore call is recorded and raised unchanged."""

    async def main() -> None:
        with loopback(lambda path: model_error()) as failing:
            async with aio_client(failing) as client:
                with pytest.raises(client.exceptions.ModelError):
                    await client.invoke_endpoint(**call_params("invoke_endpoint"))

    asyncio.run(main())
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["http.response.status_code"] == 424


def test_aio_uninstrument(
    tracer_provider: TracerProvider, server: Any, exporter: InMemorySpanExporter
) -> None:
    """After uninstrument() an aiobotocore client already used neither injects nor traces."""

    async def main() -> None:
        async with aio_client(server) as client:
            sm_tracing.instrument(tracer_provider=tracer_provider)
            await client.invoke_endpoint(**call_params("invoke_endpoint"))
            sm_tracing.uninstrument()
            await client.invoke_endpoint(**call_params("invoke_endpoint"))

    asyncio.run(main())
    assert sent_custom_attributes(server, 0) is not None
    assert sent_custom_attributes(server, 1) is None
    assert len(exporter.get_finished_spans()) == 1


@pytest.mark.parametrize("order", ["ours-first", "theirs-first"])
@requires_package("opentelemetry-instrumentation-botocore", "0.62b0", "has AiobotocoreInstrumentor")
def test_aio_with_upstream_makes_one_span(
    tracer_provider: TracerProvider, server: Any, exporter: InMemorySpanExporter, order: str
) -> None:
    """With the upstream aiobotocore instrumentation on, there is one CLIENT span, theirs,
    with our attributes, and it is the parent sent in CustomAttributes."""
    from opentelemetry.instrumentation.botocore import AiobotocoreInstrumentor
    from opentelemetry.trace import SpanKind

    async def main() -> None:
        async with aio_client(server) as client:
            for _ in range(2):
                await client.invoke_endpoint(**call_params("invoke_endpoint"))

    with beside_upstream(order, AiobotocoreInstrumentor(), tracer_provider):
        asyncio.run(main())
    spans = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert len(spans) == 2
    for index, span in enumerate(spans):
        assert span.instrumentation_scope.name != "sm_tracing"
        assert span.attributes["aws.sagemaker.endpoint.name"] == "my-endpoint"
        assert (
            traceparent_of(sent_custom_attributes(server, index))[1]
            == f"{span.context.span_id:016x}"
        )
