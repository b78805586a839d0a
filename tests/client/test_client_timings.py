"""Where the time of a call went: the container's time from its echo, SageMaker's share, and a
stream's time to first chunk and time per chunk; on the wire, and end to end through
LocalRuntime into gunicorn and uvicorn containers running the middlewares."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from _client_support import Canned, Wire, call_params, canned_for, echo_left_unread
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import sm_tracing
from sm_tracing.local import LocalRuntime
from tests import _timed_app
from tests._local_support import runtime_client
from tests._serving import ROOT, STACKS, in_memory, launch, stop, wait_ready

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
ECHO = f"traceresponse=00-{TRACE}-00f067aa0ba902b7-01"
STREAM = "invoke_endpoint_with_response_stream"
CONTAINER = "aws.sagemaker.container.duration"
OVERHEAD = "aws.sagemaker.overhead.duration"
FIRST = "aws.sagemaker.stream.time_to_first_chunk"
PER_CHUNK = "aws.sagemaker.stream.time_per_chunk"


def _seconds(span: ReadableSpan) -> float:
    assert span.end_time is not None and span.start_time is not None
    return (span.end_time - span.start_time) / 1e9


def _slow(canned: Canned, seconds: float) -> Any:
    def respond(request: Any) -> Canned:
        time.sleep(seconds)
        return canned

    return respond


@pytest.mark.usefixtures("instrumented")
def test_the_containers_time_and_sagemakers_share(
    client: Any, wire: Wire, exporter: InMemorySpanExporter
) -> None:
    """The container says it took 2 ms of a call answered after 50 ms: the span records both
    shares, which add up to the call's time to its response, and the caller gets the response
    CustomAttributes without either key."""
    canned = canned_for("InvokeEndpoint", f"x=1;{ECHO};sm-container-us=2000")
    wire.respond = _slow(canned, 0.05)
    response = client.invoke_endpoint(**call_params("invoke_endpoint"))
    assert response["CustomAttributes"] == "x=1"
    (span,) = exporter.get_finished_spans()
    attributes = span.attributes or {}
    assert attributes[CONTAINER] == 0.002
    overhead = attributes[OVERHEAD]
    assert isinstance(overhead, float)
    assert overhead >= 0.045
    assert 0.05 <= 0.002 + overhead <= _seconds(span) + 0.001


@pytest.mark.usefixtures("instrumented")
@pytest.mark.parametrize("micros", ["", "12ms", "-5", "1" * 13])
def test_a_malformed_container_time_is_left_out(
    client: Any, wire: Wire, exporter: InMemorySpanExporter, micros: str
) -> None:
    """A container time that is not a whole number of microseconds records nothing, and is
    still taken out of the response."""
    wire.respond = lambda request: canned_for(
        "InvokeEndpoint", f"x=1;{ECHO};sm-container-us={micros}"
    )
    response = client.invoke_endpoint(**call_params("invoke_endpoint"))
    assert response["CustomAttributes"] == "x=1"
    (span,) = exporter.get_finished_spans()
    assert CONTAINER not in (span.attributes or {})
    assert OVERHEAD not in (span.attributes or {})
    assert (span.attributes or {})["aws.sagemaker.container.span_id"] == "00f067aa0ba902b7"


def test_record_echo_off_records_no_time(
    tracer_provider: TracerProvider, client: Any, wire: Wire, exporter: InMemorySpanExporter
) -> None:
    """With record_echo=False, the container's time stays in the response, unread."""
    echo_left_unread(tracer_provider, client, wire, f"{ECHO};sm-container-us=10")
    (span,) = exporter.get_finished_spans()
    assert CONTAINER not in (span.attributes or {})


@pytest.mark.usefixtures("instrumented")
def test_stream_time_to_first_chunk_and_per_chunk(
    client: Any, exporter: InMemorySpanExporter
) -> None:
    """A stream read to its end records its time to first chunk, within the span, and its
    mean time per chunk after the first."""
    body = client.invoke_endpoint_with_response_stream(**call_params(STREAM))["Body"]
    for _ in body:
        time.sleep(0.02)  # the caller's own time between reads counts, as the caller sees it
    (span,) = exporter.get_finished_spans()
    attributes = span.attributes or {}
    first = attributes[FIRST]
    per_chunk = attributes[PER_CHUNK]
    assert isinstance(first, float) and isinstance(per_chunk, float)
    assert 0 < first < _seconds(span)
    assert 0.018 <= per_chunk < _seconds(span) / 2
    assert attributes["aws.sagemaker.stream.chunk_count"] == 3
    (event,) = span.events
    assert span.start_time is not None and event.timestamp is not None
    assert abs((event.timestamp - span.start_time) / 1e9 - first) < 0.005


@pytest.mark.usefixtures("instrumented")
@pytest.mark.parametrize("ending", ["closed", "unread"])
def test_a_stream_not_read_to_its_end_has_no_time_per_chunk(
    client: Any, exporter: InMemorySpanExporter, ending: str
) -> None:
    """Closed after one chunk, or before any, a stream records no mean time per chunk (the
    time until close() is the caller's) and a time to first chunk only when one came."""
    body = client.invoke_endpoint_with_response_stream(**call_params(STREAM))["Body"]
    if ending == "closed":
        next(iter(body))
    body.close()
    (span,) = exporter.get_finished_spans()
    attributes = span.attributes or {}
    assert PER_CHUNK not in attributes
    assert (FIRST in attributes) is (ending == "closed")


# -- end to end ----------------------------------------------------------------------------------


@dataclass
class Timed:
    client: Any
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader

    def fresh(self) -> Timed:
        """This, with no span or measurement left from an earlier test."""
        self.exporter.clear()
        self.reader.collect()  # delta temporality: what was read is gone
        return self


@pytest.fixture(scope="module")
def timed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Timed]:
    """The timed container under gunicorn (WSGI) and under uvicorn (ASGI), a LocalRuntime
    naming each as an endpoint, and a client instrumented with in-memory providers."""
    logs = tmp_path_factory.mktemp("logs")
    apps = {"gunicorn": "tests._timed_app:wsgi", "uvicorn": "tests._timed_app:asgi"}
    with contextlib.ExitStack() as stack:
        containers = [launch(name, apps[name], name, logs, cwd=ROOT) for name in STACKS]
        for container in containers:
            stack.callback(stop, container)
        for container in containers:
            wait_ready(container)
        runtime = stack.enter_context(LocalRuntime({c.name: c.url for c in containers}))
        provider, exporter = in_memory()
        reader = InMemoryMetricReader(
            preferred_temporality={Histogram: AggregationTemporality.DELTA}
        )
        meter_provider = MeterProvider(metric_readers=[reader])
        stack.callback(meter_provider.shutdown)
        sm_tracing.uninstrument()
        sm_tracing.instrument(tracer_provider=provider, meter_provider=meter_provider)
        stack.callback(sm_tracing.uninstrument)
        yield Timed(runtime_client(runtime.url), exporter, reader)


def _measured(reader: InMemoryMetricReader) -> dict[str, dict[str, Any]]:
    """The histograms measured since the last read, by name: their attributes and count."""
    found: dict[str, dict[str, Any]] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    found[metric.name] = {**dict(point.attributes or {}), "count": point.count}
    return found


def _client_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    (span,) = [s for s in exporter.get_finished_spans() if s.name.startswith("SageMaker")]
    return span


@pytest.mark.parametrize("stack", STACKS)
def test_end_to_end_the_containers_time_is_its_processing_time(timed: Timed, stack: str) -> None:
    """A container that takes 0.2 s before it answers says so in its echo; the client span
    records that time, and SageMaker's share (here LocalRuntime's and loopback's) beside it,
    which is measured too."""
    client, exporter, reader = timed.fresh().client, timed.exporter, timed.reader
    response = client.invoke_endpoint(EndpointName=stack, Body=b"{}", CustomAttributes="a=1")
    assert "CustomAttributes" not in response
    span = _client_span(exporter)
    attributes = span.attributes or {}
    container = attributes[CONTAINER]
    overhead = attributes[OVERHEAD]
    assert isinstance(container, float) and isinstance(overhead, float)
    assert _timed_app.DELAY <= container < _seconds(span)
    assert 0 <= overhead < 0.5
    assert container + overhead <= _seconds(span) + 0.001
    measured = _measured(reader)
    for name in ("aws.sagemaker.client.operation.duration", "aws.sagemaker.overhead.duration"):
        assert measured[name]["count"] == 1
        assert measured[name]["aws.sagemaker.endpoint.name"] == stack


@pytest.mark.parametrize("stack", STACKS)
def test_end_to_end_a_streams_times(timed: Timed, stack: str) -> None:
    """A container streaming three parts 0.1 s apart: its echoed time is its time to first
    byte, well under the stream's; the client records and measures the time to first chunk
    and a mean time per chunk of about 0.1 s."""
    client, exporter, reader = timed.fresh().client, timed.exporter, timed.reader
    response = client.invoke_endpoint_with_response_stream(EndpointName=stack, Body=b"stream")
    events = list(response["Body"])
    assert len(events) == _timed_app.CHUNKS
    span = _client_span(exporter)
    attributes = span.attributes or {}
    assert attributes["aws.sagemaker.stream.outcome"] == "complete"
    assert attributes["aws.sagemaker.stream.chunk_count"] == _timed_app.CHUNKS
    container, first, per_chunk = attributes[CONTAINER], attributes[FIRST], attributes[PER_CHUNK]
    assert isinstance(container, float) and isinstance(first, float)
    assert isinstance(per_chunk, float)
    assert container < _timed_app.GAP
    assert container <= first < _timed_app.GAP
    assert 0.8 * _timed_app.GAP <= per_chunk < 2 * _timed_app.GAP
    assert OVERHEAD in attributes
    measured = _measured(reader)
    for name in ("duration", "time_to_first_chunk", "time_per_output_chunk"):
        point = measured[f"aws.sagemaker.client.operation.{name}"]
        assert point["count"] == 1
        assert point["rpc.method"] == "InvokeEndpointWithResponseStream"
