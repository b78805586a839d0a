"""configure(): the global provider, its exporter chosen from arguments and OTEL_* variables."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import sm_tracing
from sm_tracing import _configure
from tests._otlp_receiver import OTLPReceiver, named

_ENV = (
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
)


@pytest.fixture(autouse=True)
def fresh_global(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with no global provider and no OTEL_* variables; both are restored."""
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    # OpenTelemetry lets the global provider be set once per process: reset that guard here
    # and put the previous state back, so no other test sees what these install.
    saved = (trace._TRACER_PROVIDER_SET_ONCE._done, trace._TRACER_PROVIDER)
    trace._TRACER_PROVIDER_SET_ONCE._done = False
    trace._TRACER_PROVIDER = None
    _configure._installed = None
    try:
        yield
    finally:
        provider = trace._TRACER_PROVIDER
        if isinstance(provider, TracerProvider):
            provider.shutdown()
        trace._TRACER_PROVIDER_SET_ONCE._done, trace._TRACER_PROVIDER = saved
        _configure._installed = None


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    """An OTLP/HTTP receiver on a free loopback port."""
    with OTLPReceiver() as running:
        yield running


def exporters(provider: TracerProvider) -> list[SpanExporter]:
    """The exporters behind the provider's batch processors (an OTLP one out of the wrapper
    that checks its collector listens)."""
    processors = provider._active_span_processor._span_processors
    found = [processor.span_exporter for processor in processors]
    return [e.exporter if isinstance(e, _configure.CollectorExporter) else e for e in found]


def export_one(provider: TracerProvider, name: str = "work") -> None:
    """End one span and flush it out."""
    provider.get_tracer("tests").start_span(name).end()
    assert provider.force_flush(5_000)


def test_installs_the_global_provider() -> None:
    """The returned provider is the global one, with a batch processor."""
    provider = sm_tracing.configure("svc", exporter="console")
    assert trace.get_tracer_provider() is provider
    kinds = [type(p).__name__ for p in provider._active_span_processor._span_processors]
    assert kinds == ["BatchSpanProcessor"]


def test_default_is_otlp_http_on_localhost() -> None:
    """Without arguments or variables it exports OTLP/HTTP to Jaeger's default port."""
    (exporter,) = exporters(sm_tracing.configure())
    assert isinstance(exporter, OTLPSpanExporter)
    assert exporter._endpoint == "http://localhost:4318/v1/traces"


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
    provider = sm_tracing.configure("svc", exporter="none")
    assert provider.resource.attributes["deployment.environment"] == "test"
    assert provider.resource.attributes["service.name"] == "svc"


@pytest.mark.parametrize(
    ("endpoint", "path"),
    [("{base}", "/v1/traces"), ("{base}/", "/v1/traces"), ("{base}/v1/traces", "/v1/traces")],
)
def test_endpoint_argument(receiver: OTLPReceiver, endpoint: str, path: str) -> None:
    """An endpoint without a path gets /v1/traces; a full traces URL is used as it is."""
    provider = sm_tracing.configure("svc", endpoint=endpoint.format(base=receiver.url))
    (exporter,) = exporters(provider)
    assert exporter._endpoint == receiver.url + path
    export_one(provider)
    assert receiver.wait_for(named("work"))


@pytest.mark.parametrize(
    ("variable", "suffix"),
    [("OTEL_EXPORTER_OTLP_ENDPOINT", ""), ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "/v1/traces")],
)
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
    (exporter,) = exporters(sm_tracing.configure(endpoint=receiver.url))
    assert exporter._endpoint == receiver.traces_url


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
    provider = sm_tracing.configure(exporter=argument)
    assert [type(e) for e in exporters(provider)] == expected


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
        (exporter,) = exporters(sm_tracing.configure())
    assert isinstance(exporter, OTLPSpanExporter)
    assert ("not supported" in caplog.text) is warns


def test_repeat_call_warns_and_returns_the_first(caplog: pytest.LogCaptureFixture) -> None:
    """A second call warns and gives back the provider installed by the first."""
    first = sm_tracing.configure("first", exporter="none")
    with caplog.at_level(logging.WARNING, logger="sm_tracing"):
        second = sm_tracing.configure("second", exporter="console")
    assert second is first
    assert exporters(first) == []
    assert "already called" in caplog.text


def test_keeps_a_provider_installed_by_someone_else(caplog: pytest.LogCaptureFixture) -> None:
    """An SDK provider installed before (by auto-instrumentation, say) is kept and returned."""
    theirs = TracerProvider()
    trace.set_tracer_provider(theirs)
    with caplog.at_level(logging.WARNING, logger="sm_tracing"):
        assert sm_tracing.configure("svc", exporter="console") is theirs
    assert exporters(theirs) == []
    assert "already installed" in caplog.text


def test_flushes_at_exit(receiver: OTLPReceiver) -> None:
    """Spans still queued in the batch processor are exported when the interpreter exits."""
    code = (
        "import sm_tracing\n"
        "from opentelemetry import trace\n"
        f"sm_tracing.configure('at-exit', endpoint={receiver.url!r})\n"
        "trace.get_tracer('t').start_span('last words').end()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    # A long schedule delay: only the exit flush can send the span in time.
    env["OTEL_BSP_SCHEDULE_DELAY"] = "60000"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    (span,) = receiver.wait_for(named("last words"), timeout=5)
    assert span.service == "at-exit"


def _free_port() -> int:
    """A loopback port nothing listens on (bound, then closed, here)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _exit_after_spans(endpoint: str, spans: int) -> tuple[float, str]:
    """Run a process that configures tracing towards *endpoint*, ends *spans* spans (left for
    the flush at exit) and returns. How long its exit took, from its last line to its end, and
    what it wrote to stderr."""
    code = (
        "import time, sm_tracing\n"
        "from opentelemetry import trace\n"
        "sm_tracing.configure('exit-test')\n"
        f"for index in range({spans}):\n"
        "    trace.get_tracer('t').start_span(f'span {index}').end()\n"
        "print(time.monotonic(), flush=True)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_BSP_SCHEDULE_DELAY="60000",  # nothing is exported before the exit flush
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    ended = time.monotonic()
    assert done.returncode == 0, done.stderr
    return ended - float(done.stdout.split()[-1]), done.stderr


def test_no_collector_costs_one_warning_and_no_wait_at_exit() -> None:
    """With nothing listening at the OTLP endpoint, the process exits at once (the exporter
    alone retries each batch for its 10 s timeout) and says once where spans were meant to go,
    with no retry lines."""
    base = f"http://127.0.0.1:{_free_port()}"
    took, stderr = _exit_after_spans(base, spans=5)
    print(f"\nexit with no collector: {took:.2f} s")
    assert took < 1.5, stderr
    assert stderr.count("nothing is listening at") == 1, stderr
    assert f"nothing is listening at {base}/v1/traces (OTLP/HTTP)" in stderr
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
    took, stderr = _exit_after_spans(silent_collector, spans=5)
    print(f"\nexit with a silent collector: {took:.2f} s")
    assert 1.5 < took < 4.5, stderr
    assert "nothing is listening" not in stderr


def test_at_exit_one_failed_batch_drops_the_rest(silent_collector: str) -> None:
    """Exiting, the exporter gives up after one failed batch instead of waiting a timeout for
    each of the batches left."""
    provider = sm_tracing.configure("exiting", endpoint=silent_collector)
    (collector,) = provider._active_span_processor._span_processors
    exporter = collector.span_exporter
    assert isinstance(exporter, _configure.CollectorExporter)
    tracer = provider.get_tracer("tests")
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
    provider = sm_tracing.configure("late", endpoint=f"http://127.0.0.1:{port}")
    with caplog.at_level(logging.WARNING, logger="sm_tracing"):
        export_one(provider, "dropped")
        export_one(provider, "dropped too")
    assert caplog.text.count("nothing is listening") == 1
    with OTLPReceiver(port=port) as receiver:
        export_one(provider, "received")
        receiver.wait_for(named("received"))
        assert [span.name for span in receiver.spans] == ["received"]


def test_the_otlp_http_exporter_is_a_dependency() -> None:
    """The installed package requires the OTLP/HTTP exporter without any extra, so
    ``pip install sm-tracing`` then ``configure()`` exports to Jaeger."""
    requires = importlib.metadata.requires("sm-tracing") or []
    plain = [r for r in requires if "extra ==" not in r]
    assert any(r.startswith("opentelemetry-exporter-otlp-proto-http") for r in plain), requires
