"""InvokeEndpointWithResponseStream: the span lasts as long as the caller reads the stream."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import pytest
from _client_support import Wire, call_params, canned_for, make_client, model_stream_error, payloads
from botocore.eventstream import EventStream
from botocore.exceptions import EventStreamError
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode, Tracer

import sm_tracing

METHOD = "invoke_endpoint_with_response_stream"
CHUNKS = [b'{"token": "a"}\n', b'{"token": "b"}\n', b'{"token": "c"}\n']


def _stream(client: Any) -> dict[str, Any]:
    return client.invoke_endpoint_with_response_stream(**call_params(METHOD))  # type: ignore[no-any-return]


def _spans(exporter: InMemorySpanExporter) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.name.endswith("ResponseStream")]


@pytest.mark.usefixtures("instrumented")
def test_span_ends_when_the_stream_is_read_to_its_end(
    client: Any, exporter: InMemorySpanExporter
) -> None:
    """The span stays open while events are read and ends after the last, with the first-chunk
    event and the chunk count; the caller reads the same events as without tracing."""
    body = _stream(client)["Body"]
    assert isinstance(body, EventStream)
    iterator = iter(body)
    first = next(iterator)
    assert _spans(exporter) == []
    rest = list(iterator)
    assert payloads([first, *rest]) == CHUNKS
    (span,) = _spans(exporter)
    assert span.attributes["aws.sagemaker.stream.chunk_count"] == 3
    assert span.attributes["aws.sagemaker.stream.outcome"] == "complete"
    assert [event.name for event in span.events] == ["first_chunk"]
    assert span.events[0].timestamp >= span.start_time


@pytest.mark.usefixtures("instrumented")
def test_events_are_the_same_as_without_tracing(wire: Wire) -> None:
    """A traced stream yields exactly what an untraced client's stream yields."""
    traced = payloads(list(_stream(make_client(wire=wire))["Body"]))
    sm_tracing.uninstrument()
    try:
        plain_body = _stream(make_client(wire=wire))["Body"]
        assert type(plain_body) is EventStream
        plain = payloads(list(plain_body))
    finally:
        sm_tracing.instrument()
    assert traced == plain == CHUNKS


@pytest.mark.usefixtures("instrumented")
def test_span_is_not_current_while_the_caller_reads(
    client: Any, exporter: InMemorySpanExporter, tracer: Tracer
) -> None:
    """After the call returns the caller's own span is current again, even mid-stream."""
    with tracer.start_as_current_span("caller") as caller:
        body = _stream(client)["Body"]
        for _ in body:
            assert trace.get_current_span() is caller
    (span,) = _spans(exporter)
    assert span.parent is not None and span.parent.span_id == caller.get_span_context().span_id


def _close_twice(body: Any) -> None:
    body.close()
    body.close()


def _read_on(body: Any) -> None:
    assert len(list(body)) == 2


@pytest.mark.usefixtures("instrumented")
@pytest.mark.parametrize(
    ("then", "chunks", "outcome"),
    [(_close_twice, 1, "closed"), (_read_on, 3, "complete")],
    ids=["close", "read-on"],
)
def test_break_then_close_or_read_on(
    client: Any,
    exporter: InMemorySpanExporter,
    then: Callable[[Any], None],
    chunks: int,
    outcome: str,
) -> None:
    """Leaving a for loop early does not end the span; close() then ends it once with the
    chunks read so far, and reading on to the end ends it complete."""
    body = _stream(client)["Body"]
    for _ in body:
        break
    assert _spans(exporter) == []
    then(body)
    (span,) = _spans(exporter)
    assert span.attributes["aws.sagemaker.stream.chunk_count"] == chunks
    assert span.attributes["aws.sagemaker.stream.outcome"] == outcome


@pytest.mark.usefixtures("instrumented")
@pytest.mark.parametrize("read", [0, 1], ids=["unread", "partly-read"])
def test_abandoned_stream_ends_its_span_when_collected(
    client: Any, exporter: InMemorySpanExporter, read: int
) -> None:
    """A stream the caller drops ends its span when it is garbage-collected."""
    response = _stream(client)
    if read:
        next(iter(response["Body"]))
    assert _spans(exporter) == []
    del response
    gc.collect()
    (span,) = _spans(exporter)
    assert span.attributes["aws.sagemaker.stream.outcome"] == "abandoned"
    assert span.attributes["aws.sagemaker.stream.chunk_count"] == read


@pytest.mark.usefixtures("instrumented")
def test_close_after_full_read_does_not_end_twice(
    client: Any, exporter: InMemorySpanExporter
) -> None:
    """The span ends exactly once, whatever follows the end of the stream."""
    body = _stream(client)["Body"]
    list(body)
    body.close()
    del body
    gc.collect()
    (span,) = _spans(exporter)
    assert span.attributes["aws.sagemaker.stream.outcome"] == "complete"


@pytest.mark.usefixtures("instrumented")
def test_error_event_ends_the_span_with_error(
    client: Any, wire: Wire, exporter: InMemorySpanExporter
) -> None:
    """A ModelStreamError mid-stream is recorded, ends the span and reaches the caller."""
    wire.respond = lambda request: canned_for(
        "InvokeEndpointWithResponseStream", chunks=CHUNKS[:1], tail=model_stream_error()
    )
    body = _stream(client)["Body"]
    read: list[Any] = []
    with pytest.raises(EventStreamError) as raised:
        for event in body:
            read.append(event)
    assert raised.value.response["Error"]["Code"] == "ModelStreamError"
    assert payloads(read) == CHUNKS[:1]
    (span,) = _spans(exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["aws.sagemaker.stream.outcome"] == "error"
    assert [event.name for event in span.events] == ["first_chunk", "exception"]


@pytest.mark.usefixtures("instrumented")
def test_stream_attributes(client: Any, exporter: InMemorySpanExporter) -> None:
    """The stream span has the request and response attributes of the call."""
    list(_stream(client)["Body"])
    (span,) = _spans(exporter)
    assert span.attributes["aws.sagemaker.endpoint.name"] == "my-endpoint"
    assert span.attributes["aws.sagemaker.invoked_production_variant"] == "variant-a"
    assert span.attributes["rpc.method"] == "InvokeEndpointWithResponseStream"


def test_stream_proxy_keeps_nothing_alive(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter, wire: Wire
) -> None:
    """Many abandoned streams are all collected and all their spans end."""
    sm_tracing.instrument(tracer_provider=tracer_provider)
    try:
        client = make_client(wire=wire)
        for _ in range(20):
            _stream(client)
        gc.collect()
    finally:
        sm_tracing.uninstrument()
    outcomes = [s.attributes["aws.sagemaker.stream.outcome"] for s in _spans(exporter)]
    assert outcomes == ["abandoned"] * 20


def test_sampled_out_stream_is_left_as_it_is(wire: Wire) -> None:
    """When the span is not recorded the caller gets botocore's own stream, and the sampled-out
    decision still travels in the traceparent."""
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    provider = TracerProvider(sampler=ALWAYS_OFF)
    sm_tracing.instrument(tracer_provider=provider)
    try:
        body = _stream(make_client(wire=wire))["Body"]
    finally:
        sm_tracing.uninstrument()
    assert type(body) is EventStream
    assert payloads(list(body)) == CHUNKS
    value = wire.custom_attributes()
    assert value is not None and not int(value[-2:], 16) & 1  # the sampled flag is clear
