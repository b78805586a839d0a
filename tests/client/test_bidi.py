"""InvokeEndpointWithBidirectionalStream traced end to end: a real aws-sdk-sagemaker-runtime-http2
client (CRT transport, HTTP/2 over TLS, full duplex), sm_tracing's local bidirectional runtime,
and a WebSocket container under real uvicorn; the trace context travels in the model query
string, the one thing of the caller's that reaches the container."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("aws_sdk_sagemaker_runtime_http2", reason="the SDK needs Python 3.12")
pytest.importorskip("h2")
pytest.importorskip("websockets")
pytest.importorskip("trustme")

from aws_sdk_sagemaker_runtime_http2.client import AsyncSageMakerRuntimeHTTP2Client
from aws_sdk_sagemaker_runtime_http2.models import InputValidationError, ModelError
from opentelemetry import context as otel_context
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, Tracer

import sm_tracing
from sm_tracing.client import _bidi
from sm_tracing.client._options import ClientOptions
from sm_tracing.local import LocalBidiRuntime
from tests._bidi_support import (
    EchoContainer,
    Input,
    bidi_stack,
    part,
    payload,
    with_client,
)

SPAN = "SageMaker Runtime HTTP2.InvokeEndpointWithBidirectionalStream"
USER_QUERY = "model=nova-3&language=en"


@pytest.fixture
def stack(tracer_provider: TracerProvider) -> Iterator[tuple[EchoContainer, LocalBidiRuntime]]:
    """The uvicorn container and the local runtime in front of it."""
    with bidi_stack(tracer_provider) as pair:
        yield pair


@pytest.fixture
def container(stack: tuple[EchoContainer, LocalBidiRuntime]) -> EchoContainer:
    """The container of ``stack``."""
    return stack[0]


@pytest.fixture
def runtime(stack: tuple[EchoContainer, LocalBidiRuntime]) -> LocalBidiRuntime:
    """The local runtime of ``stack``."""
    return stack[1]


@pytest.fixture
def hooked(tracer_provider: TracerProvider) -> Iterator[_bidi.BidiHook]:
    """The bidirectional-stream hook installed with this test's provider, removed afterwards."""
    hook = _bidi.install(ClientOptions(tracer_provider=tracer_provider))
    yield hook
    _bidi.uninstall(hook)


def client_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    spans = [span for span in exporter.get_finished_spans() if span.name == SPAN]
    assert len(spans) == 1, [span.name for span in exporter.get_finished_spans()]
    return spans[0]


def traceparent(span: ReadableSpan) -> str:
    context = span.context
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def container_span(exporter: InMemorySpanExporter, timeout: float = 10.0) -> ReadableSpan:
    """The container's session span, once it has ended: the container ends it when it sees
    the WebSocket close, which may come after the caller's stream is done."""
    deadline = time.monotonic() + timeout
    while True:
        spans = [s for s in exporter.get_finished_spans() if s.name == "websocket session"]
        if spans or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert len(spans) == 1, [span.name for span in exporter.get_finished_spans()]
    return spans[0]


async def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def converse(runtime: Any, given: Any, texts: list[str], tracer: Tracer | None = None) -> list[str]:
    """Open a stream, send each text and read its answer, close; the answers."""

    async def scenario(client: Any) -> list[str]:
        if tracer is None:
            return await _exchange(client, given, texts)
        with tracer.start_as_current_span("caller"):
            return await _exchange(client, given, texts)

    return with_client(runtime, scenario)


async def _opened(client: AsyncSageMakerRuntimeHTTP2Client, *texts: str) -> Any:
    """A stream to endpoint ``e``, with *texts* sent on it."""
    stream = await client.invoke_endpoint_with_bidirectional_stream(Input(endpoint_name="e"))
    for text in texts:
        await stream.input_stream.send(part(text))
    return stream


async def _exchange(client: AsyncSageMakerRuntimeHTTP2Client, given: Any, texts: list[str]) -> Any:
    stream = await client.invoke_endpoint_with_bidirectional_stream(given)
    answers = []
    await stream.input_stream.send(part(texts[0]))
    _, output = await stream.await_output()
    answers.append(payload(await output.receive()).decode())
    for text in texts[1:]:
        await stream.input_stream.send(part(text))
        answers.append(payload(await output.receive()).decode())
    await stream.close()
    return answers


@pytest.mark.usefixtures("hooked")
def test_one_trace_from_the_caller_into_the_container_session(
    container: EchoContainer,
    runtime: LocalBidiRuntime,
    exporter: InMemorySpanExporter,
    tracer: Tracer,
) -> None:
    """The caller's span, the stream's CLIENT span and the container's session span are one
    trace; the container gets the caller's query parameters first and intact, then ours."""
    given = Input(endpoint_name="speech", model_query_string=USER_QUERY)

    answers = converse(runtime, given, ["hello", "again"], tracer)

    assert answers == ["HELLO", "AGAIN"]
    caller = next(s for s in exporter.get_finished_spans() if s.name == "caller")
    client = client_span(exporter)
    server = container_span(exporter)
    assert client.kind is SpanKind.CLIENT
    assert client.parent is not None and client.parent.span_id == caller.context.span_id
    assert server.parent is not None and server.parent.span_id == client.context.span_id
    assert server.context.trace_id == caller.context.trace_id
    (session,) = container.sessions
    assert session.path == "/invocations-bidirectional-stream"
    user, _, ours = session.query.partition("&traceparent=")
    assert user == USER_QUERY
    assert ours == traceparent(client)
    assert session.received == ["hello", "again"]
    # The caller's input object is the caller's: the context went in a copy.
    assert given.model_query_string == USER_QUERY


@pytest.mark.usefixtures("hooked")
def test_span_counts_parts_each_way_and_marks_the_first_response_part(
    runtime: LocalBidiRuntime, exporter: InMemorySpanExporter
) -> None:
    """The span records the parts sent and received, a first_chunk event, the SageMaker
    attributes of the call, and never the query string."""
    given = Input(endpoint_name="speech", model_query_string="secret=quux")

    converse(runtime, given, ["a", "b", "c"])

    span = client_span(exporter)
    attributes = dict(span.attributes or {})
    assert attributes["aws.sagemaker.stream.request_chunk_count"] == 3
    assert attributes["aws.sagemaker.stream.chunk_count"] == 3
    assert attributes["aws.sagemaker.stream.outcome"] == "closed"
    assert attributes["aws.sagemaker.endpoint.name"] == "speech"
    assert attributes["aws.sagemaker.invoked_production_variant"] == "AllTraffic"
    assert attributes["http.response.status_code"] == 200
    assert attributes["rpc.method"] == "InvokeEndpointWithBidirectionalStream"
    assert attributes["server.address"] == "127.0.0.1"
    assert attributes["cloud.region"] == "us-east-1"
    assert isinstance(attributes["aws.request_id"], str)
    assert not any("quux" in str(value) for value in attributes.values())
    assert [event.name for event in span.events] == ["first_chunk"]
    assert span.status.status_code is StatusCode.UNSET


@pytest.mark.usefixtures("hooked")
def test_an_earlier_traceparent_is_replaced_and_the_path_forwarded(
    container: EchoContainer, runtime: LocalBidiRuntime, exporter: InMemorySpanExporter
) -> None:
    """A traceparent already in the query string (a reused input) is replaced, not repeated;
    a ModelInvocationPath reaches the container as its WebSocket path."""
    stale = "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01"
    given = Input(
        endpoint_name="speech",
        model_invocation_path="v1/listen",
        model_query_string=f"traceparent={stale}&model=nova-3",
    )

    converse(runtime, given, ["x"])

    span = client_span(exporter)
    (session,) = container.sessions
    assert session.path == "/v1/listen"
    assert session.query == f"model=nova-3&traceparent={traceparent(span)}"


@pytest.mark.usefixtures("hooked")
def test_the_span_ends_when_the_container_ends_the_session(
    runtime: LocalBidiRuntime, exporter: InMemorySpanExporter
) -> None:
    """Reading the response stream to its end ends the span as complete, before any close."""

    async def scenario(client: Any) -> None:
        stream = await _opened(client, "hi", "bye")
        _, output = await stream.await_output()
        answers = [payload(event) async for event in output]
        assert answers == [b"HI"]
        assert client_span(exporter).attributes["aws.sagemaker.stream.outcome"] == "complete"
        await stream.close()

    with_client(runtime, scenario)
    attributes = client_span(exporter).attributes or {}
    assert attributes["aws.sagemaker.stream.request_chunk_count"] == 2
    assert attributes["aws.sagemaker.stream.chunk_count"] == 1


@pytest.mark.usefixtures("hooked")
def test_a_container_failing_mid_stream_fails_the_span(
    runtime: LocalBidiRuntime, exporter: InMemorySpanExporter
) -> None:
    """A container that closes its WebSocket with an error code reaches the caller as a
    ModelStreamError; the span records its type, ERROR, and no message."""

    async def scenario(client: Any) -> type[BaseException]:
        stream = await _opened(client, "fail")
        _, output = await stream.await_output()
        with pytest.raises(Exception) as raised:
            await output.receive()
        return raised.type

    raised = with_client(runtime, scenario)
    span = client_span(exporter)
    assert raised.__name__ == "ModelStreamError"
    assert span.status.status_code is StatusCode.ERROR
    attributes = span.attributes or {}
    assert attributes["aws.sagemaker.stream.outcome"] == "error"
    assert str(attributes["error.type"]).endswith("ModelStreamError")
    assert all("exception.message" not in (event.attributes or {}) for event in span.events)


@pytest.mark.usefixtures("hooked")
def test_a_refused_session_fails_the_span(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A container that refuses the WebSocket makes the call fail with ModelError (424): the
    span ends with the error, the HTTP status and the container's own status."""
    with bidi_stack(tracer_provider, refuse=True) as (_, runtime):

        async def scenario(client: Any) -> None:
            stream = await client.invoke_endpoint_with_bidirectional_stream(
                Input(endpoint_name="e")
            )
            with pytest.raises(ModelError):
                await stream.await_output()

        with_client(runtime, scenario)
    span = client_span(exporter)
    attributes = span.attributes or {}
    assert span.status.status_code is StatusCode.ERROR
    assert attributes["http.response.status_code"] == 424
    assert attributes["aws.sagemaker.original_status_code"] == 403
    assert attributes["aws.sagemaker.stream.outcome"] == "error"


@pytest.mark.usefixtures("hooked")
def test_an_abandoned_stream_ends_its_span(
    runtime: LocalBidiRuntime, exporter: InMemorySpanExporter
) -> None:
    """A stream the caller lets go of without closing ends its span as abandoned."""

    async def scenario(client: Any) -> None:
        stream = await _opened(client, "hi")
        _, output = await stream.await_output()
        await output.receive()
        assert not [s for s in exporter.get_finished_spans() if s.name == SPAN]
        del stream, output
        gc.collect()
        span = client_span(exporter)
        assert span.attributes["aws.sagemaker.stream.outcome"] == "abandoned"
        assert span.attributes["aws.sagemaker.stream.chunk_count"] == 1

    with_client(runtime, scenario)


@pytest.mark.usefixtures("hooked")
def test_async_with_gives_the_traced_stream(
    runtime: LocalBidiRuntime, exporter: InMemorySpanExporter
) -> None:
    """``async with`` on the stream, its input or its output gives the traced object, and
    leaving the stream's block ends the span."""

    async def scenario(client: Any) -> None:
        stream = await client.invoke_endpoint_with_bidirectional_stream(Input(endpoint_name="e"))
        async with stream as entered:
            assert entered is stream
            await entered.input_stream.send(part("one"))
            _, output = await entered.await_output()
            assert entered.output_stream is output
            async with output as reading:
                assert reading is output
                assert payload(await reading.receive()) == b"ONE"
                assert not [s for s in exporter.get_finished_spans() if s.name == SPAN]
        assert client_span(exporter).attributes["aws.sagemaker.stream.outcome"] == "closed"

    with_client(runtime, scenario)


@pytest.mark.usefixtures("hooked")
def test_a_query_string_sagemaker_would_refuse_is_sent_as_it_was(
    container: EchoContainer, runtime: LocalBidiRuntime, exporter: InMemorySpanExporter
) -> None:
    """A ModelQueryString outside the API's pattern goes out untouched, so the caller gets
    SageMaker's own InputValidationError, not one of ours."""

    async def scenario(client: Any) -> None:
        stream = await client.invoke_endpoint_with_bidirectional_stream(
            Input(endpoint_name="e", model_query_string="lang=en us")
        )
        with pytest.raises(InputValidationError):
            await stream.await_output()

    with_client(runtime, scenario)
    assert container.sessions == []
    assert client_span(exporter).status.status_code is StatusCode.ERROR


@pytest.mark.usefixtures("hooked")
def test_no_room_within_2048_characters_sends_the_query_as_it_was(
    container: EchoContainer,
    runtime: LocalBidiRuntime,
    exporter: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A query string too long to take the context is sent unchanged, with one warning."""
    full = "k=" + "v" * 2000
    with caplog.at_level(logging.WARNING, logger="sm_tracing"):
        converse(runtime, Input(endpoint_name="long", model_query_string=full), ["x"])
    assert container.sessions[0].query == full
    assert "would exceed 2048 characters" in caplog.text
    assert client_span(exporter).status.status_code is StatusCode.UNSET


def test_the_endpoints_option_limits_injection(
    container: EchoContainer,
    runtime: LocalBidiRuntime,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    """``endpoints`` names where the context goes: other endpoints get their query string as
    it was, and a span all the same."""
    hook = _bidi.install(ClientOptions(tracer_provider=tracer_provider, endpoints={"traced"}))
    try:
        converse(runtime, Input(endpoint_name="other", model_query_string=USER_QUERY), ["x"])
        converse(runtime, Input(endpoint_name="traced", model_query_string=USER_QUERY), ["x"])
    finally:
        _bidi.uninstall(hook)
    assert container.sessions[0].query == USER_QUERY
    assert container.sessions[1].query.startswith(USER_QUERY + "&traceparent=00-")
    assert len([s for s in exporter.get_finished_spans() if s.name == SPAN]) == 2


def test_clients_made_before_install_are_covered_and_uninstall_undoes_it(
    container: EchoContainer,
    runtime: LocalBidiRuntime,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    """The hook reaches a client made before it was installed; after uninstall, calls go out
    untouched and untraced, and the method is the SDK's own again."""
    original = AsyncSageMakerRuntimeHTTP2Client.__dict__[_bidi.METHOD]

    async def scenario(client: Any) -> None:
        hook = _bidi.install(ClientOptions(tracer_provider=tracer_provider))
        try:
            await _exchange(client, Input(endpoint_name="e", model_query_string="a=1"), ["x"])
        finally:
            _bidi.uninstall(hook)
        assert AsyncSageMakerRuntimeHTTP2Client.__dict__[_bidi.METHOD] is original
        await _exchange(client, Input(endpoint_name="e", model_query_string="a=1"), ["y"])

    with_client(runtime, scenario)
    assert container.sessions[0].query.startswith("a=1&traceparent=")
    assert container.sessions[1].query == "a=1"
    assert len([s for s in exporter.get_finished_spans() if s.name == SPAN]) == 1


@pytest.mark.usefixtures("hooked")
def test_suppressed_instrumentation_makes_no_span_and_injects_nothing(
    container: EchoContainer, runtime: LocalBidiRuntime, exporter: InMemorySpanExporter
) -> None:
    """Under OpenTelemetry's suppression flag the call goes out as it was."""

    async def scenario(client: Any) -> None:
        with suppress_instrumentation():
            await _exchange(client, Input(endpoint_name="e", model_query_string="a=1"), ["x"])

    with_client(runtime, scenario)
    assert container.sessions[0].query == "a=1"
    assert not [s for s in exporter.get_finished_spans() if s.name == SPAN]
    assert otel_context.get_current() == otel_context.Context()


def test_instrument_covers_bidirectional_streams(
    container: EchoContainer,
    runtime: LocalBidiRuntime,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    """``sm_tracing.instrument()`` traces bidirectional streams too; ``uninstrument()`` stops."""
    sm_tracing.instrument(tracer_provider=tracer_provider)
    try:
        converse(runtime, Input(endpoint_name="e", model_query_string="a=1"), ["x"])
    finally:
        sm_tracing.uninstrument()
    assert container.sessions[0].query.startswith("a=1&traceparent=")
    assert client_span(exporter).kind is SpanKind.CLIENT
