"""The container's metrics, read through the SDK's in-memory metric reader."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from _container_support import ASGI, HEADER, WSGI, Answer, Transport, caller, server_spans
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer

import sm_tracing


@pytest.fixture(params=[WSGI, ASGI], ids=lambda transport: transport.name)
def transport(request: pytest.FixtureRequest) -> Transport:
    """WSGIMiddleware before Flask, then ASGIMiddleware before FastAPI."""
    chosen: Transport = request.param
    return chosen


@pytest.fixture
def reader() -> InMemoryMetricReader:
    """An in-memory reader of this test's own."""
    return InMemoryMetricReader()


@pytest.fixture
def meter_provider(reader: InMemoryMetricReader) -> MeterProvider:
    """A MeterProvider of this test's own, read by ``reader``."""
    return MeterProvider(metric_readers=[reader])


def _points(reader: InMemoryMetricReader, name: str) -> list[HistogramDataPoint]:
    data = reader.get_metrics_data()
    points: list[HistogramDataPoint] = []
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    assert metric.unit == "s"
                    points.extend(metric.data.data_points)  # type: ignore[arg-type]
    return points


@pytest.mark.parametrize(
    ("status", "path", "route", "error"),
    [
        (200, "/invocations", "/invocations", None),
        (503, "/invocations", "/invocations", "503"),
        (200, "/models/m1/invoke", "/models/{name}/invoke", None),
    ],
)
def test_each_request_is_measured_by_route_and_status(
    transport: Transport,
    tracer: Tracer,
    tracer_provider: TracerProvider,
    meter_provider: MeterProvider,
    reader: InMemoryMetricReader,
    status: int,
    path: str,
    route: str,
    error: str | None,
) -> None:
    """http.server.request.duration counts each request once, in seconds, by method, route,
    status and error type, and never by a per-request value."""
    value, _ = caller(tracer, "a=1")
    served = transport.serve(tracer_provider, Answer(status=status), meter_provider=meter_provider)
    for _ in range(3):
        response = served.request(
            "POST", path, {HEADER: value, "X-Amzn-SageMaker-Inference-Id": "inf-1"}
        )
        assert response.status_code == status
    (point,) = _points(reader, "http.server.request.duration")
    expected: dict[str, Any] = {
        "http.request.method": "POST",
        "http.route": route,
        "http.response.status_code": status,
    }
    if error is not None:
        expected["error.type"] = error
    assert dict(point.attributes or {}) == expected
    assert point.count == 3
    assert 0 < point.sum < 10


def test_an_exception_is_measured_by_its_type(
    transport: Transport,
    tracer_provider: TracerProvider,
    meter_provider: MeterProvider,
    reader: InMemoryMetricReader,
) -> None:
    """An app that raises is measured with the exception's type as error.type."""
    served = transport.serve(
        tracer_provider, inner=transport.raising(KeyError("x")), meter_provider=meter_provider
    )
    with pytest.raises(KeyError):
        served.post({HEADER: "a=1"})
    (point,) = _points(reader, "http.server.request.duration")
    assert dict(point.attributes or {})["error.type"] == "KeyError"
    assert "http.response.status_code" not in dict(point.attributes or {})


def test_continue_trace_measures_the_invocation(
    tracer_provider: TracerProvider, meter_provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    """continue_trace records aws.sagemaker.container.invocation.duration by its name."""
    for _ in range(2):
        with sm_tracing.continue_trace(
            None, name="predict", tracer_provider=tracer_provider, meter_provider=meter_provider
        ):
            pass
    (point,) = _points(reader, "aws.sagemaker.container.invocation.duration")
    assert dict(point.attributes or {}) == {"aws.sagemaker.handler": "predict"}
    assert point.count == 2


def test_without_a_meter_provider_nothing_breaks(transport: Transport, tracer: Tracer) -> None:
    """With only the API's global no-op meter provider, requests are served as before."""
    value, _ = caller(tracer, "a=1")
    served = transport.serve(TracerProvider())
    assert served.answer({HEADER: value})["seen"] == "a=1"


_LATER = """
import json
import time
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
import sm_tracing

counted = []
class Counting:
    def __init__(self, histogram):
        self.histogram = histogram
    def record(self, *args, **kwargs):
        counted.append(1)
        self.histogram.record(*args, **kwargs)
reader = InMemoryMetricReader()
SETUP
call()  # no MeterProvider yet: nothing to measure
print(json.dumps(len(counted)))
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
time.sleep(1.05)  # the global provider is looked up again at most once a second
call()
names = [
    (metric.name, point.count)
    for resource in reader.get_metrics_data().resource_metrics
    for scope in resource.scope_metrics
    for metric in scope.metrics
    for point in metric.data.data_points
]
print(json.dumps(names))
"""
_MIDDLEWARE = """
def app(environ, start_response):
    start_response("200 OK", [])
    return [b"{}"]
middleware = sm_tracing.WSGIMiddleware(app)
middleware._histogram = Counting(middleware._histogram)
def call():
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/invocations"}
    list(middleware(environ, lambda *a: None))
"""
_CONTINUE_TRACE = """
from opentelemetry.sdk.trace import TracerProvider
from sm_tracing.container import _primitive
made = _primitive.duration_histogram
_primitive.duration_histogram = lambda *args, **kwargs: Counting(made(*args, **kwargs))
tracer_provider = TracerProvider()
def call():
    with sm_tracing.continue_trace(None, tracer_provider=tracer_provider):
        pass
"""


@pytest.mark.parametrize(
    ("setup", "metric"),
    [
        (_MIDDLEWARE, "http.server.request.duration"),
        (_CONTINUE_TRACE, "aws.sagemaker.container.invocation.duration"),
    ],
    ids=["middleware", "continue_trace"],
)
def test_a_global_meter_provider_installed_later_is_used(setup: str, metric: str) -> None:
    """Without meter_provider=, the middleware and continue_trace() measure into the global SDK
    MeterProvider within a second of its install, and not before: not even into the API's
    stand-in, which would drop it."""
    import json
    import subprocess
    import sys

    code = _LATER.replace("SETUP", setup)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    before, after = done.stdout.splitlines()[-2:]
    assert json.loads(before) == 0
    assert json.loads(after) == [[metric, 1]]


class _FailingMeter:
    """An SDK meter whose histograms fail as *failure* says: ``advice``, as opentelemetry-api
    releases before 1.30 refuse the bucket advice keyword; ``create``, creating any; ``record``,
    recording."""

    def __init__(self, meter: Any, failure: str) -> None:
        self._meter = meter
        self._failure = failure

    def create_histogram(
        self, name: str, unit: str = "", description: str = "", **advice: Any
    ) -> Any:
        if self._failure == "create" or (self._failure == "advice" and advice):
            raise TypeError(f"create_histogram() got an unexpected keyword argument {advice!r}")
        histogram = self._meter.create_histogram(name, unit=unit, description=description)
        return _FailingHistogram() if self._failure == "record" else histogram


class _FailingHistogram:
    def record(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the exporter's queue is full")


class _FailingMeterProvider(MeterProvider):
    def __init__(self, failure: str, reader: InMemoryMetricReader) -> None:
        super().__init__(metric_readers=[reader])
        self._failure = failure

    def get_meter(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return _FailingMeter(super().get_meter(*args, **kwargs), self._failure)


def _requests_and_context(
    transport: Transport, served: Any, value: str, count: int
) -> tuple[list[int], list[otel_context.Context]]:
    """The status of *count* invocations and the current context right after each, in the
    caller's own thread or task, as a server's next request would find it."""
    statuses: list[int] = []
    contexts: list[otel_context.Context] = []
    if transport is WSGI:
        for _ in range(count):
            statuses.append(served.post({HEADER: value}).status_code)
            contexts.append(otel_context.get_current())
        return statuses, contexts

    async def run() -> None:
        client_transport = httpx.ASGITransport(app=served.app)
        async with httpx.AsyncClient(transport=client_transport, base_url="http://model") as client:
            for _ in range(count):
                response = await client.post("/invocations", headers={HEADER: value}, content=b"{}")
                statuses.append(response.status_code)
                contexts.append(otel_context.get_current())

    asyncio.run(run())
    return statuses, contexts


@pytest.mark.parametrize("failure", ["advice", "create", "record"])
def test_a_failing_meter_never_fails_a_request(
    transport: Transport,
    tracer: Tracer,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    reader: InMemoryMetricReader,
    caplog: pytest.LogCaptureFixture,
    failure: str,
) -> None:
    """A meter that refuses the bucket advice (opentelemetry-api before 1.30), that cannot
    create a histogram, or whose histogram cannot record: every request is answered, its span
    ends, and no span stays current after it; without advice the duration is still measured."""
    value, parent = caller(tracer, "a=1", clear=exporter)
    served = transport.serve(tracer_provider, meter_provider=_FailingMeterProvider(failure, reader))
    statuses, contexts = _requests_and_context(transport, served, value, 3)
    assert statuses == [200, 200, 200]
    assert all(trace.get_current_span(context) is trace.INVALID_SPAN for context in contexts)
    spans = server_spans(exporter.get_finished_spans())
    assert len(spans) == 3
    assert all(span.parent is not None and span.parent.span_id == parent.span_id for span in spans)
    points = _points(reader, "http.server.request.duration")
    if failure == "advice":
        assert [point.count for point in points] == [3]
    else:
        assert points == []
        assert any(record.name.startswith("sm_tracing") for record in caplog.records)
