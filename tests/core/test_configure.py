"""configure(): the global provider, its exporter chosen from arguments and OTEL_* variables."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry import metrics, trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.metrics import _internal as metrics_internal
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    ConsoleMetricExporter,
    InMemoryMetricReader,
    MetricExporter,
    MetricExportResult,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import sm_tracing
from sm_tracing import _configure
from sm_tracing._configure import Configured
from tests._client_support import ServedInThread
from tests._otlp_receiver import OTLPReceiver, ReceivedSpan, decode, named

_ENV = (
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_METRICS_EXPORTER",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    "OTEL_METRIC_EXPORT_INTERVAL",
)


@pytest.fixture(autouse=True)
def fresh_global(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with no global providers and no OTEL_* variables; all are restored."""
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    # OpenTelemetry lets the global providers be set once per process: reset those guards here
    # and put the previous state back, so no other test sees what these install. The meters'
    # proxy is swapped too: setting a provider binds every meter the proxy handed out to it.
    saved = (trace._TRACER_PROVIDER_SET_ONCE._done, trace._TRACER_PROVIDER)
    saved_meters = (
        metrics_internal._METER_PROVIDER_SET_ONCE._done,
        metrics_internal._METER_PROVIDER,
        metrics_internal._PROXY_METER_PROVIDER,
    )
    trace._TRACER_PROVIDER_SET_ONCE._done = False
    trace._TRACER_PROVIDER = None
    metrics_internal._METER_PROVIDER_SET_ONCE._done = False
    metrics_internal._METER_PROVIDER = None
    metrics_internal._PROXY_METER_PROVIDER = metrics_internal._ProxyMeterProvider()
    _configure._installed = None
    try:
        yield
    finally:
        provider = trace._TRACER_PROVIDER
        if isinstance(provider, TracerProvider):
            provider.shutdown()
        meter_provider = metrics_internal._METER_PROVIDER
        if isinstance(meter_provider, MeterProvider):
            meter_provider.shutdown()
        trace._TRACER_PROVIDER_SET_ONCE._done, trace._TRACER_PROVIDER = saved
        (
            metrics_internal._METER_PROVIDER_SET_ONCE._done,
            metrics_internal._METER_PROVIDER,
            metrics_internal._PROXY_METER_PROVIDER,
        ) = saved_meters
        _configure._installed = None


def exporters(configured: Configured) -> list[SpanExporter]:
    """The span exporters configure() installed (an OTLP one out of the wrapper that checks
    its collector listens)."""
    return [
        e.exporter if isinstance(e, _configure.CollectorExporter) else e
        for e in configured.span_exporters
    ]


def endpoints(exporters: Sequence[object]) -> list[str]:
    """Where each OTLP exporter configure() installed sends."""
    return [e.endpoint for e in exporters if isinstance(e, _configure._Guarded)]


def export_one(configured: Configured, name: str = "work") -> None:
    """End one span and flush it out."""
    provider = configured.tracer_provider
    provider.get_tracer("tests").start_span(name).end()
    assert provider.force_flush(5_000)


def endpoint_variables(signal: str) -> pytest.MarkDecorator:
    """Each test once per standard endpoint variable of *signal* (``traces``, ``metrics``): the
    shared one gets the collector's base URL, the signal's own the full URL; ``suffix`` is
    what follows the base."""
    return pytest.mark.parametrize(
        ("variable", "suffix"),
        [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
            (f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT", f"/v1/{signal}"),
        ],
    )


def test_installs_the_global_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tracer provider configure() names is the global one, and exports in batches: an
    ended span waits for the batch (or a flush), not sent at once."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")
    memory = InMemorySpanExporter()
    configured = sm_tracing.configure("svc", exporter=memory)
    assert trace.get_tracer_provider() is configured.tracer_provider
    assert configured.span_exporters == (memory,)
    trace.get_tracer("tests").start_span("batched").end()
    assert memory.get_finished_spans() == ()
    assert configured.force_flush(5_000)
    assert [span.name for span in memory.get_finished_spans()] == ["batched"]


def test_default_is_otlp_http_on_localhost() -> None:
    """Without arguments or variables it exports OTLP/HTTP to Jaeger's default port: spans,
    and metrics beside them."""
    configured = sm_tracing.configure()
    (exporter,) = exporters(configured)
    assert isinstance(exporter, OTLPSpanExporter)
    assert endpoints(configured.span_exporters) == ["http://localhost:4318/v1/traces"]
    (metric_exporter,) = metric_exporters(configured)
    assert isinstance(metric_exporter, OTLPMetricExporter)
    assert endpoints(configured.metric_exporters) == ["http://localhost:4318/v1/metrics"]


@pytest.mark.parametrize(
    ("argument", "variables", "expected"),
    [
        (None, {"OTEL_SERVICE_NAME": "from-env"}, "from-env"),
        (None, {"OTEL_RESOURCE_ATTRIBUTES": "service.name=attrs,team=ml"}, "attrs"),
        ("arg", {"OTEL_SERVICE_NAME": "from-env"}, "arg"),
        ("arg", {"OTEL_RESOURCE_ATTRIBUTES": "service.name=attrs"}, "arg"),
    ],
)
def test_service_name_precedence(
    monkeypatch: pytest.MonkeyPatch,
    receiver: OTLPReceiver,
    argument: str | None,
    variables: dict[str, str],
    expected: str,
) -> None:
    """The argument wins over OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the exported
    spans carry the chosen service name."""
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    export_one(sm_tracing.configure(argument, endpoint=receiver.traces_url))
    (span,) = receiver.wait_for(named("work"))
    assert span.service == expected


def test_resource_attributes_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """Other OTEL_RESOURCE_ATTRIBUTES stay on the resource next to the given service name."""
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
    provider = sm_tracing.configure("svc", exporter="none").tracer_provider
    assert provider.resource.attributes["deployment.environment"] == "test"
    assert provider.resource.attributes["service.name"] == "svc"


@pytest.mark.parametrize(
    ("endpoint", "path"),
    [("{base}", "/v1/traces"), ("{base}/", "/v1/traces"), ("{base}/v1/traces", "/v1/traces")],
)
def test_endpoint_argument(receiver: OTLPReceiver, endpoint: str, path: str) -> None:
    """An endpoint without a path gets /v1/traces; a full traces URL is used as it is."""
    configured = sm_tracing.configure("svc", endpoint=endpoint.format(base=receiver.url))
    assert endpoints(configured.span_exporters) == [receiver.url + path]
    export_one(configured)
    assert receiver.wait_for(named("work"))


@endpoint_variables("traces")
def test_endpoint_variables(
    monkeypatch: pytest.MonkeyPatch, receiver: OTLPReceiver, variable: str, suffix: str
) -> None:
    """The standard endpoint variables reach the OTLP/HTTP exporter."""
    monkeypatch.setenv(variable, receiver.url + suffix)
    export_one(sm_tracing.configure("svc"))
    assert receiver.wait_for(named("work"))


def test_endpoint_argument_beats_variable(
    monkeypatch: pytest.MonkeyPatch, receiver: OTLPReceiver
) -> None:
    """An explicit endpoint wins over OTEL_EXPORTER_OTLP_TRACES_ENDPOINT."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:9/v1/traces")
    configured = sm_tracing.configure(endpoint=receiver.url)
    assert endpoints(configured.span_exporters) == [receiver.traces_url]
    export_one(configured)
    assert receiver.wait_for(named("work"))


@pytest.mark.parametrize(
    ("endpoint", "written"),
    [
        ("localhost:4318", "http://localhost:4318"),
        ("127.0.0.1:4318/v1/traces", "http://127.0.0.1:4318/v1/traces"),
        ("collector", "http://collector"),
        ("ftp://localhost:4318", "http://localhost:4318"),
        ("", "http://localhost:4318"),
    ],
)
def test_endpoint_without_a_scheme_is_refused(endpoint: str, written: str) -> None:
    """An OTLP/HTTP endpoint that is not an http:// or https:// URL (which the exporter would
    take, then fail every export with "No connection adapters were found") raises at once,
    naming the form to write, and installs nothing."""
    with pytest.raises(ValueError, match="not an http:// or https:// URL") as raised:
        sm_tracing.configure(endpoint=endpoint)
    assert f"written like {written!r}" in str(raised.value)
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)
    assert not isinstance(metrics.get_meter_provider(), MeterProvider)


@pytest.mark.parametrize("exporter", ["console", "grpc"])
def test_endpoint_check_is_for_otlp_http_only(exporter: str) -> None:
    """A console exporter has no endpoint to check, and a gRPC address may go without a
    scheme, as the gRPC exporter takes it."""
    if exporter == "grpc":
        pytest.importorskip("opentelemetry.exporter.otlp.proto.grpc")
    configured = sm_tracing.configure(exporter=exporter, endpoint="localhost:4317")
    assert len(configured.span_exporters) == 1
    if exporter == "grpc":
        assert endpoints(configured.span_exporters) == ["localhost:4317"]


@pytest.mark.parametrize(
    ("variable", "argument", "expected"),
    [
        ("console", None, [ConsoleSpanExporter]),
        ("none", None, []),
        ("otlp,console", None, [OTLPSpanExporter, ConsoleSpanExporter]),
        ("otlp, otlp", None, [OTLPSpanExporter]),
        (" Console ", None, [ConsoleSpanExporter]),
        ("console", "otlp", [OTLPSpanExporter]),
        ("otlp", "console", [ConsoleSpanExporter]),
        ("otlp", "none", []),
        ("bogus,console", None, [ConsoleSpanExporter]),
    ],
)
def test_exporter_choice(
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    argument: str | None,
    expected: list[type[SpanExporter]],
) -> None:
    """OTEL_TRACES_EXPORTER picks the exporters (a list, unknown names skipped); the argument
    wins over it."""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", variable)
    configured = sm_tracing.configure(exporter=argument)
    assert [type(e) for e in exporters(configured)] == expected


def test_exporter_instance(receiver: OTLPReceiver) -> None:
    """A SpanExporter given as ``exporter`` is used, behind a batch processor."""
    memory = InMemorySpanExporter()
    export_one(sm_tracing.configure("svc", exporter=memory))
    assert [span.name for span in memory.get_finished_spans()] == ["work"]


def test_unknown_exporter_argument_raises() -> None:
    """A misspelt exporter argument is a programming error, and installs nothing."""
    with pytest.raises(ValueError, match="unknown exporter 'jaeger'"):
        sm_tracing.configure(exporter="jaeger")
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)


@pytest.mark.parametrize(
    ("argument", "variables"),
    [
        ("grpc", {}),
        ("otlp_proto_grpc", {}),
        (None, {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}),
        ("otlp", {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}),
    ],
)
def test_grpc_needs_its_extra(
    monkeypatch: pytest.MonkeyPatch, argument: str | None, variables: dict[str, str]
) -> None:
    """gRPC is chosen by name or by protocol; without its package the error says what to
    install."""
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    try:
        import opentelemetry.exporter.otlp.proto.grpc  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"sm-tracing\[grpc\]"):
            sm_tracing.configure(exporter=argument)
    else:
        (exporter,) = exporters(sm_tracing.configure(exporter=argument))
        assert "grpc" in type(exporter).__module__


@pytest.mark.parametrize(("protocol", "warns"), [("http/protobuf", False), ("http/json", True)])
def test_http_protocols_use_http(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, protocol: str, warns: bool
) -> None:
    """http/protobuf is the OTLP/HTTP exporter; http/json, which the Python exporters lack,
    falls back to it with a warning."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    with caplog.at_level(logging.WARNING, logger="sm_tracing"):
        configured = sm_tracing.configure()
    (exporter,) = exporters(configured)
    assert isinstance(exporter, OTLPSpanExporter)
    assert isinstance(metric_exporters(configured)[0], OTLPMetricExporter)
    assert caplog.text.count("not supported") == int(warns)  # once for both signals


def test_repeat_call_warns_and_returns_the_first(caplog: pytest.LogCaptureFixture) -> None:
    """A second call warns and gives back what the first set up."""
    first = sm_tracing.configure("first", exporter="none")
    with caplog.at_level(logging.WARNING, logger="sm_tracing"):
        second = sm_tracing.configure("second", exporter="console")
    assert second is first
    assert exporters(first) == []
    assert trace.get_tracer_provider() is first.tracer_provider
    assert "already called" in caplog.text


def test_keeps_a_provider_installed_by_someone_else(caplog: pytest.LogCaptureFixture) -> None:
    """An SDK provider installed before (by auto-instrumentation, say) is kept and named."""
    theirs = TracerProvider()
    trace.set_tracer_provider(theirs)
    with caplog.at_level(logging.WARNING, logger="sm_tracing"):
        configured = sm_tracing.configure("svc", exporter="console")
    assert configured.tracer_provider is theirs
    assert configured.span_exporters == ()
    assert "already installed" in caplog.text


def _python(code: str, **variables: str) -> subprocess.CompletedProcess[str]:
    """Run *code* in a fresh interpreter with no OTEL_* variables but *variables*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(variables)
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_flushes_at_exit(receiver: OTLPReceiver) -> None:
    """Spans still queued in the batch processor are exported when the interpreter exits."""
    code = (
        "import sm_tracing\n"
        "from opentelemetry import trace\n"
        f"sm_tracing.configure('at-exit', endpoint={receiver.url!r})\n"
        "trace.get_tracer('t').start_span('last words').end()\n"
    )
    # A long schedule delay: only the exit flush can send the span in time.
    done = _python(code, OTEL_BSP_SCHEDULE_DELAY="60000")
    assert done.returncode == 0, done.stderr
    (span,) = receiver.wait_for(named("last words"), timeout=5)
    assert span.service == "at-exit"


def _free_port() -> int:
    """A loopback port nothing listens on (bound, then closed, here)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _exit_after(endpoint: str, spans: int, points: int = 0) -> tuple[float, str]:
    """Run a process that configures tracing towards *endpoint*, ends *spans* spans and records
    *points* histogram values (both left for the flush at exit) and returns. How long its exit
    took, from its last line to its end, and what it wrote to stderr."""
    code = (
        "import time, sm_tracing\n"
        "from opentelemetry import metrics, trace\n"
        "sm_tracing.configure('exit-test')\n"
        f"for index in range({spans}):\n"
        "    trace.get_tracer('t').start_span(f'span {index}').end()\n"
        "histogram = metrics.get_meter('t').create_histogram('work.duration', unit='s')\n"
        f"for index in range({points}):\n"
        "    histogram.record(index / 10)\n"
        "print(time.monotonic(), flush=True)\n"
    )
    done = _python(
        code,
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_BSP_SCHEDULE_DELAY="60000",  # nothing is exported before the exit flush
    )
    ended = time.monotonic()
    assert done.returncode == 0, done.stderr
    return ended - float(done.stdout.split()[-1]), done.stderr


@pytest.mark.parametrize("points", [0, 3])
def test_no_collector_costs_one_warning_and_no_wait_at_exit(points: int) -> None:
    """With nothing listening at the OTLP endpoint, the process exits at once (the exporters
    alone retry each export for their 10 s timeout) and says once, for both signals, where
    spans and metrics were meant to go, with no retry lines."""
    base = f"http://127.0.0.1:{_free_port()}"
    took, stderr = _exit_after(base, spans=5, points=points)
    print(f"\nexit with no collector, {points} metric values: {took:.2f} s")
    assert took < 1.5, stderr
    assert stderr.count("nothing is listening at") == 1, stderr
    assert (
        f"nothing is listening at {base}/v1/traces and {base}/v1/metrics (OTLP/HTTP), "
        "so spans and metrics are dropped"
    ) in stderr
    assert "retrying" not in stderr
    assert "Failed to export" not in stderr


@pytest.fixture
def silent_collector() -> Iterator[str]:
    """The base URL of a collector that accepts connections and never answers."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # connections queue up; nothing reads them
        yield f"http://127.0.0.1:{silent.getsockname()[1]}"


def test_exit_flush_to_a_collector_that_never_answers_is_bounded(silent_collector: str) -> None:
    """A collector that accepts connections and never answers costs the flush at exit one
    short timeout, not the exporter's 10 s."""
    took, stderr = _exit_after(silent_collector, spans=5)
    print(f"\nexit with a silent collector: {took:.2f} s")
    assert 1.5 < took < 4.5, stderr
    assert "nothing is listening" not in stderr


def test_exit_flush_of_both_signals_to_a_silent_collector_costs_one_timeout(
    silent_collector: str,
) -> None:
    """Metrics left at exit, beside the spans, add no second timeout: the spans' failed flush
    drops the metrics bound for the same collector."""
    took, stderr = _exit_after(silent_collector, spans=5, points=3)
    print(f"\nexit with a silent collector, spans and metrics: {took:.2f} s")
    assert 1.5 < took < 1.5 + _configure._EXIT_TIMEOUT, stderr
    assert "nothing is listening" not in stderr


def test_at_exit_one_failed_batch_drops_the_rest(silent_collector: str) -> None:
    """Exiting, the exporter gives up after one failed batch instead of waiting a timeout for
    each of the batches left."""
    configured = sm_tracing.configure("exiting", endpoint=silent_collector)
    (exporter,) = configured.span_exporters
    assert isinstance(exporter, _configure.CollectorExporter)
    tracer = configured.tracer_provider.get_tracer("tests")
    batches = []
    for index in range(3):
        span = tracer.start_span(f"batch {index}")
        span.end()
        batches.append([span])
    exporter.exiting()
    started = time.monotonic()
    results = [exporter.export(batch) for batch in batches]
    took = time.monotonic() - started
    assert results == [SpanExportResult.FAILURE] * 3
    assert 1.5 < took < 2 * _configure._EXIT_TIMEOUT


def test_spans_go_out_once_the_collector_is_there(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Spans ended while nothing listens are dropped with one warning; once a collector
    listens at the endpoint, the next spans reach it."""
    port = _free_port()
    configured = sm_tracing.configure("late", endpoint=f"http://127.0.0.1:{port}")
    with caplog.at_level(logging.WARNING, logger="sm_tracing"):
        export_one(configured, "dropped")
        export_one(configured, "dropped too")
    assert caplog.text.count("nothing is listening") == 1
    with OTLPReceiver(port=port) as receiver:
        export_one(configured, "received")
        receiver.wait_for(named("received"))
        assert [span.name for span in receiver.spans] == ["received"]


def test_the_otlp_http_exporter_is_a_dependency() -> None:
    """The installed package requires the OTLP/HTTP exporter without any extra, so
    ``pip install sm-tracing`` then ``configure()`` exports to Jaeger."""
    requires = importlib.metadata.requires("sm-tracing") or []
    plain = [r for r in requires if "extra ==" not in r]
    assert any(r.startswith("opentelemetry-exporter-otlp-proto-http") for r in plain), requires


# -- metrics -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedPoint:
    """One metric data point as it arrived over OTLP (a histogram's count and sum, or one value
    as a count of 1)."""

    metric: str
    unit: str
    service: str
    attributes: dict[str, Any]
    count: int
    total: float


def _any_value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    return None if which is None else getattr(value, which)


def decode_metrics(
    body: bytes, temporalities: dict[str, AggregationTemporality] | None = None
) -> list[ReceivedPoint]:
    """The data points of one serialized ``ExportMetricsServiceRequest``; each metric's
    aggregation temporality goes into *temporalities*, where it has one."""
    request = ExportMetricsServiceRequest()
    request.ParseFromString(body)
    points = []
    for resource_metrics in request.resource_metrics:
        resource = {a.key: _any_value(a.value) for a in resource_metrics.resource.attributes}
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                data = getattr(metric, metric.WhichOneof("data"))
                temporality = getattr(data, "aggregation_temporality", 0)
                if temporalities is not None and temporality:
                    temporalities[metric.name] = AggregationTemporality(temporality)
                for point in data.data_points:
                    if hasattr(point, "bucket_counts"):
                        count, total = point.count, point.sum
                    else:
                        count, total = 1, getattr(point, point.WhichOneof("value"))
                    points.append(
                        ReceivedPoint(
                            metric=metric.name,
                            unit=metric.unit,
                            service=str(resource.get("service.name", "")),
                            attributes={a.key: _any_value(a.value) for a in point.attributes},
                            count=count,
                            total=total,
                        )
                    )
    return points


class Collector(ServedInThread):
    """An OTLP/HTTP receiver on loopback for both signals: spans at ``/v1/traces`` (decoded as
    the demo's receiver does), metric data points at ``/v1/metrics``."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.points: list[ReceivedPoint] = []
        self.temporalities: dict[str, AggregationTemporality] = {}
        self.requests: list[str] = []
        self._changed = threading.Condition()
        server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        server.daemon_threads = True
        super().__init__(server)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def wait_for(self, predicate: Callable[[Collector], bool], timeout: float = 10.0) -> None:
        """Return once *predicate* holds; raise TimeoutError after *timeout* seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"received so far: {self.requests}")
                self._changed.wait(remaining)

    def _received(self, path: str, body: bytes) -> None:
        with self._changed:
            self.requests.append(path)
            if path == "/v1/traces":
                self.spans.extend(decode(body))
            else:
                self.points.extend(decode_metrics(body, self.temporalities))
            self._changed.notify_all()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        collector = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path not in ("/v1/traces", "/v1/metrics"):
                    self._reply(404, b"")
                    return
                collector._received(self.path, body)
                self._reply(200, ExportMetricsServiceResponse().SerializeToString())

            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def collector() -> Iterator[Collector]:
    """An OTLP/HTTP receiver of spans and metrics on a free loopback port."""
    with Collector() as running:
        yield running


def has_metric(name: str) -> Callable[[Collector], bool]:
    """A ``wait_for`` predicate: a data point of the metric *name* has arrived."""
    return lambda collector: any(point.metric == name for point in collector.points)


def meter_provider() -> MeterProvider:
    """The global MeterProvider, which configure() installed."""
    provider = metrics.get_meter_provider()
    assert isinstance(provider, MeterProvider)
    return provider


def metric_exporters(configured: Configured) -> list[MetricExporter]:
    """The exporters behind the periodic readers configure() installed (an OTLP one out of
    the wrapper that checks its collector listens), after checking they are the global
    MeterProvider's."""
    assert configured.meter_provider is meter_provider()
    assert len(configured.metric_readers) == len(configured.metric_exporters)
    assert all(isinstance(r, PeriodicExportingMetricReader) for r in configured.metric_readers)
    return [
        e.exporter if isinstance(e, _configure.CollectorMetricExporter) else e
        for e in configured.metric_exporters
    ]


def record(value: float = 0.25, name: str = "work.duration") -> None:
    """Record one value on a histogram of the global meter."""
    metrics.get_meter("tests").create_histogram(name, unit="s").record(value, {"route": "/x"})


def export_metric(collector: Collector) -> None:
    """Record one value of ``work.duration``, flush it out, and wait for *collector* to have
    it."""
    record()
    assert meter_provider().force_flush(5_000)
    collector.wait_for(has_metric("work.duration"))


_RECORD = (
    "import sm_tracing\n"
    "from opentelemetry import metrics, trace\n"
    "configured = sm_tracing.configure('metrics-test'{arguments})\n"
    "assert configured.tracer_provider is trace.get_tracer_provider()\n"
    "assert configured.meter_provider in (None, metrics.get_meter_provider())\n"
    "histogram = metrics.get_meter('tests').create_histogram('work.duration', unit='s')\n"
    "histogram.record(0.25, {{'route': '/invocations'}})\n"
    "histogram.record(0.75, {{'route': '/invocations'}})\n"
    "trace.get_tracer('tests').start_span('work').end()\n"
)


def test_metrics_reach_the_collector_at_exit(collector: Collector) -> None:
    """configure(endpoint=) sends both signals to one collector: a histogram recorded through
    the global meter arrives, with its unit, attributes and the service name, flushed at exit
    beside the spans."""
    done = _python(_RECORD.format(arguments=f", endpoint={collector.url!r}"))
    assert done.returncode == 0, done.stderr
    collector.wait_for(lambda c: bool(c.points and c.spans), timeout=5)
    (point,) = collector.points
    assert point == ReceivedPoint(
        metric="work.duration",
        unit="s",
        service="metrics-test",
        attributes={"route": "/invocations"},
        count=2,
        total=1.0,
    )
    assert [span.name for span in collector.spans] == ["work"]
    assert "/v1/metrics" in collector.requests
    assert done.stderr == ""


def test_metrics_are_exported_every_interval(collector: Collector) -> None:
    """OTEL_METRIC_EXPORT_INTERVAL sets how often metrics go out while the process runs."""
    code = (
        _RECORD.format(arguments="")
        + "print('recorded', flush=True)\nimport sys\nsys.stdin.read()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(OTEL_EXPORTER_OTLP_ENDPOINT=collector.url, OTEL_METRIC_EXPORT_INTERVAL="200")
    with subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None and process.stdin is not None
        try:
            assert process.stdout.readline() == "recorded\n"
            # Still running: only the periodic reader can have sent them.
            collector.wait_for(lambda c: c.requests.count("/v1/metrics") >= 2, timeout=10)
            assert process.poll() is None
        finally:
            process.stdin.close()
            process.wait(timeout=30)
    assert collector.points[0].metric == "work.duration"
    assert collector.points[0].count == 2


def test_metrics_none_installs_no_meter_provider() -> None:
    """OTEL_METRICS_EXPORTER=none installs no MeterProvider: meters stay the API's no-op ones,
    and the spans are exported as before."""
    code = (
        "import sm_tracing\n"
        "from opentelemetry import metrics\n"
        "from opentelemetry.sdk.metrics import MeterProvider\n"
        "sm_tracing.configure('none-test', exporter=None)\n"
        "print(isinstance(metrics.get_meter_provider(), MeterProvider))\n"
        "print(type(metrics.get_meter('t').create_histogram('h')).__name__)\n"
    )
    done = _python(code, OTEL_METRICS_EXPORTER="none", OTEL_TRACES_EXPORTER="console")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["False", "_ProxyHistogram"]


def test_console_prints_metrics() -> None:
    """OTEL_METRICS_EXPORTER=console prints the metrics on stdout, flushed at exit."""
    done = _python(
        _RECORD.format(arguments=""), OTEL_METRICS_EXPORTER="console", OTEL_TRACES_EXPORTER="none"
    )
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    (scope,) = printed["resource_metrics"][0]["scope_metrics"]
    (metric,) = scope["metrics"]
    assert metric["name"] == "work.duration"
    assert metric["data"]["data_points"][0]["count"] == 2
    assert metric["data"]["data_points"][0]["sum"] == 1.0


def test_names_both_providers_it_installed() -> None:
    """configure() returns what it set up: the global TracerProvider and MeterProvider, the
    span exporters and the metric readers with their exporters, all typed; flushing it
    flushes both."""
    configured = sm_tracing.configure("both", exporter="console")
    assert isinstance(configured, Configured)
    assert isinstance(configured.tracer_provider, TracerProvider)
    assert trace.get_tracer_provider() is configured.tracer_provider
    assert configured.meter_provider is meter_provider()
    assert [type(e) for e in configured.span_exporters] == [ConsoleSpanExporter]
    assert [type(e) for e in metric_exporters(configured)] == [ConsoleMetricExporter]
    assert configured.force_flush(5_000)


@pytest.mark.parametrize(
    ("preference", "histogram", "counter"),
    [
        ("", AggregationTemporality.CUMULATIVE, AggregationTemporality.CUMULATIVE),
        ("delta", AggregationTemporality.DELTA, AggregationTemporality.DELTA),
        ("LOWMEMORY", AggregationTemporality.DELTA, AggregationTemporality.DELTA),
    ],
)
def test_metrics_temporality_follows_the_otlp_variable(
    monkeypatch: pytest.MonkeyPatch,
    collector: Collector,
    preference: str,
    histogram: AggregationTemporality,
    counter: AggregationTemporality,
) -> None:
    """OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE reaches the metrics sent: a
    histogram and a counter are exported with the temporality it asks for, an up-down counter
    stays cumulative."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", preference)
    configured = sm_tracing.configure("svc", endpoint=collector.url)
    meter = metrics.get_meter("tests")
    meter.create_histogram("work.duration", unit="s").record(0.25)
    meter.create_counter("work.count").add(1)
    meter.create_up_down_counter("work.open").add(1)
    assert configured.force_flush(5_000)
    collector.wait_for(has_metric("work.open"))
    assert collector.temporalities["work.duration"] == histogram
    assert collector.temporalities["work.count"] == counter
    assert collector.temporalities["work.open"] == AggregationTemporality.CUMULATIVE


@pytest.mark.parametrize(
    ("endpoint", "traces", "metrics_path"),
    [
        ("{base}", "/v1/traces", "/v1/metrics"),
        ("{base}/", "/v1/traces", "/v1/metrics"),
        ("{base}/v1/traces", "/v1/traces", "/v1/metrics"),
        ("{base}/v1/metrics", "/v1/traces", "/v1/metrics"),
        ("{base}/otlp/v1/traces", "/otlp/v1/traces", "/otlp/v1/metrics"),
        ("{base}/ingest", "/ingest", "/ingest"),
    ],
)
def test_endpoint_argument_for_both_signals(
    collector: Collector, endpoint: str, traces: str, metrics_path: str
) -> None:
    """An endpoint without a path gets each signal's path; one ending in either signal's path
    gives the other its own; any other path is used as given."""
    configured = sm_tracing.configure("svc", endpoint=endpoint.format(base=collector.url))
    assert endpoints(configured.span_exporters) == [collector.url + traces]
    assert endpoints(configured.metric_exporters) == [collector.url + metrics_path]
    if metrics_path == "/v1/metrics":
        export_metric(collector)


@endpoint_variables("metrics")
def test_metrics_endpoint_variables(
    monkeypatch: pytest.MonkeyPatch, collector: Collector, variable: str, suffix: str
) -> None:
    """The standard endpoint variables reach the OTLP/HTTP metric exporter."""
    monkeypatch.setenv(variable, collector.url + suffix)
    sm_tracing.configure("svc")
    export_metric(collector)
    assert collector.points[0].service == "svc"


def test_endpoint_argument_beats_the_metrics_variable(
    monkeypatch: pytest.MonkeyPatch, collector: Collector
) -> None:
    """An explicit endpoint wins over OTEL_EXPORTER_OTLP_METRICS_ENDPOINT."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://127.0.0.1:9/v1/metrics")
    configured = sm_tracing.configure(endpoint=collector.url)
    assert endpoints(configured.metric_exporters) == [collector.url + "/v1/metrics"]
    export_metric(collector)


@pytest.mark.parametrize(
    ("variable", "argument", "expected"),
    [
        ("console", None, [ConsoleMetricExporter]),
        ("none", None, None),
        ("otlp,console", None, [OTLPMetricExporter, ConsoleMetricExporter]),
        ("otlp, otlp", None, [OTLPMetricExporter]),
        ("prometheus,console", None, [ConsoleMetricExporter]),
        ("console", "otlp", [OTLPMetricExporter]),
        ("otlp", "console", [ConsoleMetricExporter]),
        ("otlp", "none", None),
        ("none", "console", [ConsoleMetricExporter]),
    ],
)
def test_metrics_exporter_choice(
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    argument: str | None,
    expected: list[type[MetricExporter]] | None,
) -> None:
    """OTEL_METRICS_EXPORTER picks the metric exporters (a list, unknown names skipped); a
    name given as ``exporter`` wins over it, for both signals. With none, no MeterProvider."""
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", variable)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    configured = sm_tracing.configure(exporter=argument)
    current = metrics.get_meter_provider()
    if expected is None:
        assert not isinstance(current, MeterProvider)
        assert configured.meter_provider is None
        assert configured.metric_readers == configured.metric_exporters == ()
    else:
        assert [type(e) for e in metric_exporters(configured)] == expected


def test_a_span_exporter_leaves_metrics_to_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A SpanExporter as ``exporter`` exports the spans only; OTEL_METRICS_EXPORTER still
    chooses the metrics' exporter."""
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "console")
    memory = InMemorySpanExporter()
    configured = sm_tracing.configure("svc", exporter=memory)
    export_one(configured)
    assert [span.name for span in memory.get_finished_spans()] == ["work"]
    assert [type(e) for e in metric_exporters(configured)] == [ConsoleMetricExporter]


@pytest.mark.parametrize(
    "variables",
    [{"OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "grpc"}, {"OTEL_METRICS_EXPORTER": "otlp_proto_grpc"}],
)
def test_metrics_over_grpc(monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]) -> None:
    """The metrics' own protocol variable, or the gRPC exporter's name, sends metrics over
    gRPC and leaves the spans on HTTP; without the package the error says what to install,
    and nothing is installed."""
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    try:
        import opentelemetry.exporter.otlp.proto.grpc  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"sm-tracing\[grpc\]"):
            sm_tracing.configure()
        assert not isinstance(trace.get_tracer_provider(), TracerProvider)
        assert not isinstance(metrics.get_meter_provider(), MeterProvider)
    else:
        configured = sm_tracing.configure()
        (span_exporter,) = exporters(configured)
        (metric_exporter,) = metric_exporters(configured)
        assert isinstance(span_exporter, OTLPSpanExporter)
        assert "grpc" in type(metric_exporter).__module__


@pytest.mark.parametrize(
    ("value", "interval", "warns"),
    [
        ("250", 250.0, False),
        ("0", 60_000.0, True),
        ("-5", 60_000.0, True),
        ("soon", 60_000.0, True),
    ],
)
def test_export_interval(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    value: str,
    interval: float,
    warns: bool,
) -> None:
    """OTEL_METRIC_EXPORT_INTERVAL gives the reader's interval; a value the reader would fail
    on is skipped with a warning, and configure() goes on. (The interval's effect on a running
    process: test_metrics_are_exported_every_interval.)"""
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", value)
    with caplog.at_level(logging.WARNING, logger="sm_tracing"):
        configured = sm_tracing.configure(exporter="console")
        assert _configure._interval() == interval
    (reader,) = configured.metric_readers
    assert isinstance(reader, PeriodicExportingMetricReader)
    assert ("OTEL_METRIC_EXPORT_INTERVAL" in caplog.text) is warns


def test_keeps_a_meter_provider_installed_by_someone_else(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An SDK MeterProvider installed before is kept, with a warning; the spans are still set
    up."""
    reader = InMemoryMetricReader()
    theirs = MeterProvider(metric_readers=[reader])
    metrics.set_meter_provider(theirs)
    with caplog.at_level(logging.WARNING, logger="sm_tracing"):
        configured = sm_tracing.configure("svc", exporter="console")
    assert metrics.get_meter_provider() is theirs
    assert configured.meter_provider is theirs
    assert configured.metric_readers == ()
    assert trace.get_tracer_provider() is configured.tracer_provider
    assert caplog.text.count("already installed") == 1
    assert "a MeterProvider is already installed" in caplog.text
    record()
    (point,) = reader.get_metrics_data().resource_metrics[0].scope_metrics[0].metrics
    assert point.name == "work.duration"


def test_keeps_a_meter_provider_that_is_not_the_sdks(caplog: pytest.LogCaptureFixture) -> None:
    """A meter provider of another kind set before (the API's no-op one, say) stays: the
    MeterProvider configure() made is shut down, none is named, and a warning says so."""
    theirs = metrics.NoOpMeterProvider()
    metrics.set_meter_provider(theirs)
    with caplog.at_level(logging.WARNING, logger="sm_tracing"):
        configured = sm_tracing.configure("svc", exporter="console")
    assert metrics.get_meter_provider() is theirs
    assert configured.meter_provider is None
    assert configured.metric_readers == configured.metric_exporters == ()
    assert trace.get_tracer_provider() is configured.tracer_provider
    assert "a NoOpMeterProvider is already installed; sm_tracing.configure() keeps it" in (
        caplog.text
    )


def test_keeps_both_providers_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    """With both SDK providers already installed, one warning says both are kept."""
    theirs = TracerProvider()
    trace.set_tracer_provider(theirs)
    metrics.set_meter_provider(MeterProvider())
    with caplog.at_level(logging.WARNING, logger="sm_tracing"):
        configured = sm_tracing.configure("svc")
    assert configured.tracer_provider is theirs
    assert configured.span_exporters == ()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "a TracerProvider and a MeterProvider are already installed; "
        "sm_tracing.configure() keeps them"
    ]


def test_a_second_call_keeps_the_meter_provider(caplog: pytest.LogCaptureFixture) -> None:
    """A second call warns once and installs no second MeterProvider."""
    sm_tracing.configure("first", exporter="console")
    first = meter_provider()
    with caplog.at_level(logging.WARNING, logger="sm_tracing"):
        sm_tracing.configure("second", exporter="otlp")
    assert metrics.get_meter_provider() is first
    assert caplog.text.count("already called") == 1


def test_nothing_recorded_nothing_checked(caplog: pytest.LogCaptureFixture) -> None:
    """A process that records no metric never reaches for the metrics collector: no check,
    no warning."""
    sm_tracing.configure("quiet", endpoint=f"http://127.0.0.1:{_free_port()}")
    with caplog.at_level(logging.WARNING):
        assert meter_provider().force_flush(5_000)
    assert caplog.text == ""


def test_metrics_go_out_once_the_collector_is_there(caplog: pytest.LogCaptureFixture) -> None:
    """Metrics recorded while nothing listens are dropped with one warning for both signals;
    once a collector listens, the next export reaches it."""
    port = _free_port()
    configured = sm_tracing.configure("late", endpoint=f"http://127.0.0.1:{port}")
    with caplog.at_level(logging.WARNING, logger="sm_tracing"):
        record()
        assert meter_provider().force_flush(5_000)
        export_one(configured, "dropped")
        assert meter_provider().force_flush(5_000)
    assert caplog.text.count("nothing is listening") == 1
    assert "so spans and metrics are dropped" in caplog.text
    with OTLPReceiver(port=port):
        record()
        assert meter_provider().force_flush(5_000)


def test_at_exit_a_failed_span_export_drops_the_metrics(silent_collector: str) -> None:
    """Exiting, once the spans' export to a collector has failed, the metrics bound for it are
    dropped at once instead of waiting a timeout of their own."""
    configured = sm_tracing.configure("exiting", endpoint=silent_collector)
    (span_exporter,) = configured.span_exporters
    (metric_exporter,) = configured.metric_exporters
    assert isinstance(span_exporter, _configure.CollectorExporter)
    assert isinstance(metric_exporter, _configure.CollectorMetricExporter)
    assert metric_exporter.collector is span_exporter.collector
    span = configured.tracer_provider.get_tracer("tests").start_span("last")
    span.end()
    memory = InMemoryMetricReader()
    MeterProvider(metric_readers=[memory]).get_meter("t").create_histogram("h").record(1)
    data = memory.get_metrics_data()
    assert data is not None
    span_exporter.exiting()
    metric_exporter.exiting()
    started = time.monotonic()
    assert span_exporter.export([span]) is SpanExportResult.FAILURE
    failed = time.monotonic()
    assert metric_exporter.export(data) is MetricExportResult.FAILURE
    ended = time.monotonic()
    assert 1.5 < failed - started < 2 * _configure._EXIT_TIMEOUT
    assert ended - failed < 0.1


def test_a_collector_that_takes_spans_only(caplog: pytest.LogCaptureFixture) -> None:
    """A collector that answers 404 for metrics (Jaeger takes spans only) costs one warning
    from us and one from the exporter, then metrics are no longer sent; spans still go."""
    with OTLPReceiver(metrics=False) as receiver:  # /v1/traces only, 404 elsewhere, as Jaeger
        configured = sm_tracing.configure("spans-only", endpoint=receiver.url)
        with caplog.at_level(logging.WARNING):
            for _ in range(3):
                record()
                assert meter_provider().force_flush(5_000)
        export_one(configured)
        receiver.wait_for(named("work"))
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("sm_tracing")]
    assert ours == [
        f"sm_tracing.configure(): {receiver.url}/v1/metrics answered 404 Not Found: it takes "
        "no metrics (Jaeger takes spans only), so metrics are dropped from now on; send them "
        "to an OpenTelemetry Collector with OTEL_EXPORTER_OTLP_METRICS_ENDPOINT, or set "
        "OTEL_METRICS_EXPORTER=none"
    ]
    # The exporter's own report of the 404, however its release words it.
    exporter = "opentelemetry.exporter.otlp.proto.http.metric_exporter"
    assert [r.levelno for r in caplog.records if r.name.startswith(exporter)] == [logging.ERROR]
