"""One call to export traces and metrics: global SDK providers, and an exporter for each signal."""

from __future__ import annotations

import atexit
import logging
import math
import os
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import import_module
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit, urlunsplit
from urllib.request import getproxies, proxy_bypass

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    ConsoleMetricExporter,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import (
    Aggregation,
    ExplicitBucketHistogramAggregation,
    ExponentialBucketHistogramAggregation,
)
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)

from sm_tracing._hints import install_hint

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Signal:
    """The standard variables and exporters of one signal."""

    noun: str  # what the warnings say is dropped
    exporter_variable: str
    protocol_variable: str
    endpoint_variable: str
    path: str  # the OTLP/HTTP path under the base endpoint
    module: str  # the OTLP exporter's module, under ...proto.http and ...proto.grpc
    otlp_class: str


_TRACES = _Signal(
    "spans",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "/v1/traces",
    "trace_exporter",
    "OTLPSpanExporter",
)
_METRICS = _Signal(
    "metrics",
    "OTEL_METRICS_EXPORTER",
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "/v1/metrics",
    "metric_exporter",
    "OTLPMetricExporter",
)

# The standard variables, read here only where the exporters and readers do not read them (or
# would fail on a bad value).
_PROTOCOL = "OTEL_EXPORTER_OTLP_PROTOCOL"
_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
_INTERVAL = "OTEL_METRIC_EXPORT_INTERVAL"
_DEFAULT_INTERVAL = 60_000.0
# With one of these set, the HTTP exporters build their own requests session, with credentials.
_CREDENTIAL_VARIABLES = (
    "OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER",
    "OTEL_PYTHON_EXPORTER_OTLP_HTTP_METRICS_CREDENTIAL_PROVIDER",
)

_HTTP_DEFAULT = "http://localhost:4318"
_GRPC_DEFAULT = "http://localhost:4317"
_OTLP_NAMES = frozenset({"otlp", "otlp_proto_http"})
_GRPC_NAMES = frozenset({"otlp_proto_grpc", "grpc"})
_KNOWN = _OTLP_NAMES | _GRPC_NAMES | {"console", "none"}

# How long checking that a collector listens may take, and the export timeout of the flush at
# exit: short, so that a process never hangs on its way out for a collector that is not there.
_CONNECT_TIMEOUT = 1.0
_EXIT_TIMEOUT = 2.0

_lock = threading.Lock()
_installed: Configured | None = None


@dataclass(frozen=True)
class Configured:
    """What :func:`configure` set up: the providers in force and what it gave them.

    ``tracer_provider`` is the global SDK ``TracerProvider``: the one configure() installed,
    or one it found installed and kept. ``meter_provider`` is the global SDK ``MeterProvider``,
    likewise; None when no metrics are exported (``OTEL_METRICS_EXPORTER=none``) or the global
    one is not the SDK's. ``span_exporters`` are the exporters configure() put behind batch
    span processors, ``metric_readers`` the periodic readers it gave its MeterProvider and
    ``metric_exporters`` their exporters, in the same order: all empty for a provider it kept.
    An OTLP exporter comes wrapped in the check that its collector listens
    (:class:`CollectorExporter`, :class:`CollectorMetricExporter`): the OTLP exporter itself
    is its ``exporter``, and the URL it sends to its ``endpoint``.
    """

    tracer_provider: TracerProvider
    meter_provider: MeterProvider | None = None
    span_exporters: tuple[SpanExporter, ...] = ()
    metric_readers: tuple[PeriodicExportingMetricReader, ...] = ()
    metric_exporters: tuple[MetricExporter, ...] = ()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Export the spans ended so far, then the metrics recorded; True when all went out
        within *timeout_millis* each."""
        flushed = self.tracer_provider.force_flush(timeout_millis)
        if self.meter_provider is not None:
            flushed = self.meter_provider.force_flush(timeout_millis) and flushed
        return flushed


def configure(
    service_name: str | None = None,
    *,
    exporter: str | SpanExporter | None = None,
    endpoint: str | None = None,
) -> Configured:
    """Install a global SDK ``TracerProvider`` that exports in batches, and a global SDK
    ``MeterProvider`` that exports periodically; return what was set up, as a
    :class:`Configured` (its ``tracer_provider``, ``meter_provider``, exporters and readers).

    ``service_name`` overrides ``OTEL_SERVICE_NAME`` and ``service.name`` in
    ``OTEL_RESOURCE_ATTRIBUTES``. ``exporter`` names the exporter of both signals: ``"otlp"``
    (OTLP over HTTP, the default), ``"otlp_proto_grpc"`` (or ``"grpc"``), ``"console"`` or
    ``"none"``; without it ``OTEL_TRACES_EXPORTER`` and ``OTEL_METRICS_EXPORTER`` decide (each a
    comma-separated list), and for ``otlp`` ``OTEL_EXPORTER_OTLP_[TRACES_|METRICS_]PROTOCOL``
    chooses ``http/protobuf`` or ``grpc``. A SpanExporter as ``exporter`` exports the spans;
    the metrics then follow ``OTEL_METRICS_EXPORTER``. With no metrics exporter (``none``), no
    MeterProvider is installed and metric instruments cost nothing.

    ``endpoint`` overrides ``OTEL_EXPORTER_OTLP_[TRACES_|METRICS_]ENDPOINT``; over OTLP/HTTP it
    is a URL (``http://localhost:4318``: one without ``http://`` or ``https://`` raises
    ValueError), one without a path gets ``/v1/traces`` and ``/v1/metrics``, and one ending in
    either path gives the other signal its own. The default is ``http://localhost:4318``, where
    Jaeger (spans only) and the OpenTelemetry Collector listen. ``OTEL_METRIC_EXPORT_INTERVAL``
    sets how often metrics are exported (60 s by default).

    When nothing listens at an OTLP endpoint, what goes there is dropped at once, without
    retries, and one warning says so. Spans and metrics still held are flushed when the
    interpreter exits, with a short timeout. When an SDK provider is already installed
    globally, by anyone else, this warns and keeps it; a second call warns and returns what
    the first set up.
    """
    global _installed  # noqa: PLW0603 - the process-wide setup, made once under the lock
    with _lock:
        if _installed is not None:
            _logger.warning("sm_tracing.configure() was already called; keeping that provider")
            return _installed
        current = trace.get_tracer_provider()
        if not isinstance(current, (TracerProvider, trace.ProxyTracerProvider)):
            raise RuntimeError(
                f"a {type(current).__name__} is already installed as the global tracer provider "
                "and OpenTelemetry does not allow replacing it"
            )
        current_meters = metrics.get_meter_provider()
        _warn_kept(
            [
                type(provider).__name__
                for provider in (current, current_meters)
                if isinstance(provider, (TracerProvider, MeterProvider))
            ]
        )
        # Everything that can fail on a bad argument is built before anything is installed.
        build = _Build(endpoint)
        span_exporters = [] if isinstance(current, TracerProvider) else build.spans(exporter)
        metric_exporters: list[MetricExporter] = []
        if not isinstance(current_meters, MeterProvider):
            names = None if isinstance(exporter, SpanExporter) else exporter
            metric_exporters = build.metrics(names)
        attributes = {SERVICE_NAME: service_name} if service_name else None
        resource = Resource.create(attributes)
        # Both providers register their flush at exit when made, and atexit runs the last
        # registered first: made first, the MeterProvider flushes after the spans.
        meter_provider = None
        readers: list[PeriodicExportingMetricReader] = []
        if metric_exporters:
            interval = _interval()
            readers = [
                PeriodicExportingMetricReader(e, export_interval_millis=interval)
                for e in metric_exporters
            ]
            meter_provider = MeterProvider(
                metric_readers=readers, resource=resource, shutdown_on_exit=True
            )
        if isinstance(current, TracerProvider):
            provider = current
        else:
            provider = TracerProvider(resource=resource, shutdown_on_exit=True)
            for span_exporter in span_exporters:
                provider.add_span_processor(BatchSpanProcessor(span_exporter))
        if build.guards:
            # Registered last, this runs first at exit: before either provider's flush.
            atexit.register(_exiting, build.guards)
        if provider is not current:
            trace.set_tracer_provider(provider)
        if meter_provider is not None:
            metrics.set_meter_provider(meter_provider)
            # The API keeps a meter provider set before (one not the SDK's, which the check
            # above let through) and says so: ours is then undone.
            if metrics.get_meter_provider() is not meter_provider:
                meter_provider.shutdown()
                meter_provider, readers, metric_exporters = None, [], []
                _warn_kept([type(metrics.get_meter_provider()).__name__])
        elif isinstance(current_meters, MeterProvider):
            meter_provider = current_meters
        _installed = Configured(
            tracer_provider=provider,
            meter_provider=meter_provider,
            span_exporters=tuple(span_exporters),
            metric_readers=tuple(readers),
            metric_exporters=tuple(metric_exporters),
        )
        _logger.debug(
            "telemetry configured: spans to %s; metrics to %s",
            ", ".join(type(e).__name__ for e in span_exporters) or "no exporter",
            ", ".join(type(e).__name__ for e in metric_exporters) or "no exporter",
        )
        return _installed


def _warn_kept(kept: list[str]) -> None:
    """Say that the providers named *kept*, installed before, stay."""
    if kept:
        _logger.warning(
            "%s %s already installed; sm_tracing.configure() keeps %s",
            " and ".join(f"a {name}" for name in kept),
            "is" if len(kept) == 1 else "are",
            "it" if len(kept) == 1 else "them",
        )


class _Collector:
    """A collector's address as the exporters of every signal sending there know it: whether it
    is believed to listen, the one warning when it does not, and giving up on it at exit.

    Nothing is believed until seen: a TCP connection is opened before the first export and
    after a failed one, and when nothing answers the export is dropped at once. Exiting, one
    failure drops whatever is left, of any signal.
    """

    def __init__(self, address: tuple[str, int] | None, protocol: str) -> None:
        self.address = address
        self.protocol = protocol
        self.destinations: dict[_Signal, str] = {}  # what goes there, and to which URL
        self.exiting = False
        self._check = address is not None
        self._warned = False
        self._failed_at_exit = False
        self._lock = threading.Lock()

    def ready(self) -> bool:
        """Whether to send now; when nothing listens, warns (once) and says no."""
        if self._failed_at_exit:
            return False
        if self._check and self.address is not None:
            if not self._listening(self.address):
                self._failed_at_exit = self.exiting
                return False
            self._check = False
        return True

    def sent(self, ok: bool) -> None:
        """After an export: a failed one makes the next export check again (or, exiting, stop)."""
        if not ok:
            self._check = self.address is not None
            self._failed_at_exit = self.exiting

    def _listening(self, address: tuple[str, int]) -> bool:
        try:
            socket.create_connection(address, timeout=_CONNECT_TIMEOUT).close()
        except OSError:
            with self._lock:
                warn, self._warned = not self._warned, True
            if warn:
                signals = list(self.destinations)
                _logger.warning(
                    "sm_tracing.configure(): nothing is listening at %s (%s), so %s are dropped; "
                    "start Jaeger or an OpenTelemetry Collector there, or set "
                    "OTEL_EXPORTER_OTLP_ENDPOINT (%s)",
                    " and ".join(self.destinations.values()),
                    self.protocol,
                    " and ".join(signal.noun for signal in signals),
                    " and ".join(f"{signal.exporter_variable}=console" for signal in signals)
                    + (" prints them" if len(signals) == 1 else " print them"),
                )
            return False
        if self._warned:
            _logger.info(
                "sm_tracing.configure(): %s is listening; exporting",
                " and ".join(self.destinations.values()),
            )
        return True


_E = TypeVar("_E")


class _Guarded(Generic[_E]):
    """An OTLP exporter, sending only while its collector is believed to listen.

    With no collector there, the OTLP exporters retry each export for up to their timeout,
    logging each attempt, and the flush at exit waits as long. The collector's check drops the
    export at once instead. At exit, exports go through an exporter made with a short timeout.
    """

    def __init__(
        self, make: Callable[[float | None], _E], collector: _Collector, endpoint: str
    ) -> None:
        self._make = make
        self.exporter = make(None)
        """The OTLP exporter."""
        self.collector = collector
        self.endpoint = endpoint
        """The URL (or, over gRPC, the address) the exporter sends to."""
        self._at_exit: _E | None = None

    def exiting(self) -> None:
        """Export what is left with a short timeout: the interpreter is on its way out."""
        self.collector.exiting = True
        self._at_exit = self._make(_EXIT_TIMEOUT)

    def _sender(self) -> _E | None:
        if not self.collector.ready():
            return None
        return self._at_exit or self.exporter

    def _exporters(self) -> list[_E]:
        return [self.exporter] if self._at_exit is None else [self.exporter, self._at_exit]


class CollectorExporter(_Guarded[SpanExporter], SpanExporter):
    """The OTLP span exporter, sending only while its collector is believed to listen."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        exporter = self._sender()
        if exporter is None:
            return SpanExportResult.FAILURE
        try:
            result = exporter.export(spans)
        except Exception:
            # Older OTLP/HTTP exporters (1.30) let the session's errors out (a ReadTimeout)
            # where later ones report a failure: the same failure, and the batch goes on.
            _logger.debug("the span export raised", exc_info=True)
            result = SpanExportResult.FAILURE
        self.collector.sent(result is SpanExportResult.SUCCESS)
        return result

    def shutdown(self) -> None:
        for exporter in self._exporters():
            exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.exporter.force_flush(timeout_millis)


class CollectorMetricExporter(_Guarded[MetricExporter], MetricExporter):
    """The OTLP metric exporter, sending only while its collector is believed to listen.

    A collector that answers the metrics path with 404 (Jaeger takes spans only) gets one
    warning, and no metrics after it.
    """

    def __init__(
        self,
        make: Callable[[float | None], MetricExporter],
        collector: _Collector,
        endpoint: str,
        answers: _Answers | None = None,
    ) -> None:
        _Guarded.__init__(self, make, collector, endpoint)
        # The periodic reader takes its temporality and aggregation from the exporter it is
        # given, this one: the same as the OTLP exporter inside is made with.
        temporality, aggregation = _metric_preferences()
        MetricExporter.__init__(
            self, preferred_temporality=temporality, preferred_aggregation=aggregation
        )
        self._answers = answers
        self._refused = False

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        if self._refused:
            return MetricExportResult.FAILURE
        if not _has_points(metrics_data):  # nothing recorded: no reason to reach the collector
            return MetricExportResult.SUCCESS
        exporter = self._sender()
        if exporter is None:
            return MetricExportResult.FAILURE
        try:
            result = exporter.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception:
            # As for spans: an error let out is a failed export.
            _logger.debug("the metric export raised", exc_info=True)
            result = MetricExportResult.FAILURE
        if (
            result is not MetricExportResult.SUCCESS
            and self._answers is not None
            and self._answers.not_found
        ):
            self._refused = True
            _logger.warning(
                "sm_tracing.configure(): %s answered 404 Not Found: it takes no metrics (Jaeger "
                "takes spans only), so metrics are dropped from now on; send them to an "
                "OpenTelemetry Collector with OTEL_EXPORTER_OTLP_METRICS_ENDPOINT, or set "
                "OTEL_METRICS_EXPORTER=none",
                self.collector.destinations[_METRICS],
            )
            return result
        self.collector.sent(result is MetricExportResult.SUCCESS)
        return result

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        for exporter in self._exporters():
            exporter.shutdown()

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.exporter.force_flush(timeout_millis)


class _Answers:
    """A requests response hook: whether the collector has answered 404."""

    def __init__(self) -> None:
        self.not_found = False

    def __call__(self, response: Any, *args: Any, **kwargs: Any) -> None:
        if response.status_code == 404:
            self.not_found = True


def _has_points(data: MetricsData) -> bool:
    return any(
        metric.data.data_points
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    )


# The OTLP metric exporters' temporality for each instrument under each value of
# OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE, as the specification gives them.
_CUMULATIVE = AggregationTemporality.CUMULATIVE
_DELTA = AggregationTemporality.DELTA
_TEMPORALITIES: dict[str, dict[type, AggregationTemporality]] = {
    "CUMULATIVE": {
        Counter: _CUMULATIVE,
        UpDownCounter: _CUMULATIVE,
        Histogram: _CUMULATIVE,
        ObservableCounter: _CUMULATIVE,
        ObservableUpDownCounter: _CUMULATIVE,
        ObservableGauge: _CUMULATIVE,
    },
    "DELTA": {
        Counter: _DELTA,
        UpDownCounter: _CUMULATIVE,
        Histogram: _DELTA,
        ObservableCounter: _DELTA,
        ObservableUpDownCounter: _CUMULATIVE,
        ObservableGauge: _CUMULATIVE,
    },
    "LOWMEMORY": {
        Counter: _DELTA,
        UpDownCounter: _CUMULATIVE,
        Histogram: _DELTA,
        ObservableCounter: _CUMULATIVE,
        ObservableUpDownCounter: _CUMULATIVE,
        ObservableGauge: _CUMULATIVE,
    },
}
_TEMPORALITY = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"
_HISTOGRAM_AGGREGATION = "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION"


def _metric_preferences() -> tuple[dict[type, AggregationTemporality], dict[type, Aggregation]]:
    """The temporality and the aggregation of each instrument that the OTLP metric exporters'
    standard variables ask for; an unknown value is the default (the exporter warns of it)."""
    preference = os.environ.get(_TEMPORALITY, "").strip().upper()
    temporality = _TEMPORALITIES.get(preference, _TEMPORALITIES["CUMULATIVE"])
    aggregation: Aggregation = ExplicitBucketHistogramAggregation()
    if os.environ.get(_HISTOGRAM_AGGREGATION, "").strip() == "base2_exponential_bucket_histogram":
        aggregation = ExponentialBucketHistogramAggregation()
    return dict(temporality), {Histogram: aggregation}


def _exiting(guards: list[_Guarded[Any]]) -> None:
    for guard in guards:
        try:
            guard.exiting()
        except Exception:  # the flush goes on with the exporter already there
            _logger.debug("could not shorten the export timeout at exit", exc_info=True)


def _address(endpoint: str) -> tuple[str, int] | None:
    """The host and port to check, or None when a proxy stands between (or it is no URL)."""
    parts = urlsplit(endpoint if "://" in endpoint else "http://" + endpoint)
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host:
        return None
    if getproxies().get(parts.scheme) and not proxy_bypass(host):
        return None
    return host, port or (443 if parts.scheme == "https" else 80)


class _Build:
    """The exporters of one configure() call; signals sending to one address share its check."""

    def __init__(self, endpoint: str | None) -> None:
        self.endpoint = endpoint
        self.guards: list[_Guarded[Any]] = []
        self._collectors: dict[tuple[object, str], _Collector] = {}
        self._warned: set[str] = set()

    def spans(self, exporter: str | SpanExporter | None) -> list[SpanExporter]:
        if isinstance(exporter, SpanExporter):
            return [exporter]
        result: list[SpanExporter] = []
        for name in _names(_TRACES, exporter):
            if name == "console":
                result.append(ConsoleSpanExporter())
            else:
                make, collector, _ = self._otlp(_TRACES, name)
                guard = CollectorExporter(make, collector, collector.destinations[_TRACES])
                self.guards.append(guard)
                result.append(guard)
        return result

    def metrics(self, exporter: str | None) -> list[MetricExporter]:
        result: list[MetricExporter] = []
        for name in _names(_METRICS, exporter):
            if name == "console":
                result.append(ConsoleMetricExporter())
            else:
                make, collector, answers = self._otlp(_METRICS, name)
                guard = CollectorMetricExporter(
                    make, collector, collector.destinations[_METRICS], answers
                )
                self.guards.append(guard)
                result.append(guard)
        return result

    def _otlp(
        self, signal: _Signal, name: str
    ) -> tuple[Callable[[float | None], Any], _Collector, _Answers | None]:
        grpc = name in _GRPC_NAMES or self._protocol(signal) == "grpc"
        package = "grpc" if grpc else "http"
        try:
            # Imported by name: the gRPC exporter is an extra, and may not be there to type-check.
            module = import_module(f"opentelemetry.exporter.otlp.proto.{package}.{signal.module}")
        except ImportError as exc:
            if not grpc:
                raise
            raise ImportError(
                "exporting over OTLP/gRPC needs opentelemetry-exporter-otlp-proto-grpc: "
                + install_hint("grpc")
            ) from exc
        otlp_class = getattr(module, signal.otlp_class)
        endpoint = self.endpoint
        if grpc:
            protocol = "OTLP/gRPC"
            # The exporter's own resolution, to name and check where the data goes.
            target = (
                endpoint
                or os.environ.get(signal.endpoint_variable)
                or os.environ.get(_ENDPOINT)
                or _GRPC_DEFAULT
            )
        else:
            protocol = "OTLP/HTTP"
            if endpoint is not None:
                endpoint = _signal_url(_http_url(endpoint), signal)
            target = (
                endpoint
                or os.environ.get(signal.endpoint_variable)
                or (os.environ.get(_ENDPOINT) or _HTTP_DEFAULT).removesuffix("/") + signal.path
            )
        options: dict[str, Any] = {}
        if signal is _METRICS:
            # The reader reads the preferences from our wrapper: the exporter gets the same.
            temporality, aggregation = _metric_preferences()
            options.update(preferred_temporality=temporality, preferred_aggregation=aggregation)
        answers = None
        if signal is _METRICS and not grpc and not any(map(os.environ.get, _CREDENTIAL_VARIABLES)):
            # The exporters report a failure, not its status: a session of ours sees the 404.
            answers = _Answers()
            session = import_module("requests").Session()
            session.hooks["response"].append(answers)
            options["session"] = session

        def make(timeout: float | None) -> Any:
            # Without an endpoint the exporter reads the OTEL_EXPORTER_OTLP_* variables itself.
            return otlp_class(endpoint=endpoint, timeout=timeout, **options)

        address = _address(target)
        key = (address or target, protocol)
        collector = self._collectors.get(key)
        if collector is None:
            collector = self._collectors[key] = _Collector(address, protocol)
        collector.destinations[signal] = target
        return make, collector, answers

    def _protocol(self, signal: _Signal) -> str:
        protocol = (
            (os.environ.get(signal.protocol_variable) or os.environ.get(_PROTOCOL) or "")
            .strip()
            .lower()
        )
        if protocol not in {"", "grpc", "http/protobuf"} and protocol not in self._warned:
            self._warned.add(protocol)
            _logger.warning("OTLP protocol %r is not supported here; using http/protobuf", protocol)
        return protocol


def _names(signal: _Signal, exporter: str | None) -> list[str]:
    """The exporters chosen for *signal*, each once; none for ``none``."""
    if exporter is not None:
        names = _split(exporter)
        unknown = [name for name in names if name not in _KNOWN]
        if unknown:
            raise ValueError(f"unknown exporter {unknown[0]!r}; expected one of {sorted(_KNOWN)}")
    else:
        names = _split(os.environ.get(signal.exporter_variable, "") or "otlp")
        for name in names:
            if name not in _KNOWN:
                _logger.warning(
                    "ignoring %s entry %r: not one of %s",
                    signal.exporter_variable,
                    name,
                    sorted(_KNOWN),
                )
        names = [name for name in names if name in _KNOWN]
    if "none" in names:
        return []
    return list(dict.fromkeys(names))  # the same exporter twice would send everything twice


def _split(value: str) -> list[str]:
    return [name.strip().lower() for name in value.split(",") if name.strip()]


def _http_url(endpoint: str) -> str:
    """*endpoint* when it is an ``http://`` or ``https://`` URL with a host; else ValueError,
    naming the form to write: the exporter would take it, and fail on every export."""
    parts = urlsplit(endpoint.strip())
    if parts.scheme.lower() in ("http", "https") and parts.netloc:
        return endpoint.strip()
    bare = endpoint.strip() and "://" not in endpoint
    example = "http://" + endpoint.strip() if bare else _HTTP_DEFAULT
    raise ValueError(
        f"endpoint {endpoint!r} is not an http:// or https:// URL; an OTLP/HTTP endpoint is "
        f"written like {example!r}"
    )


def _signal_url(endpoint: str, signal: _Signal) -> str:
    """*signal*'s OTLP/HTTP URL from an ``endpoint`` argument: a base URL gets the signal's
    path, one ending in another signal's path gets this one's, any other path stays."""
    parts = urlsplit(endpoint)
    path = parts.path.rstrip("/")
    for other in (_TRACES, _METRICS):
        if path.endswith(other.path):
            path = path.removesuffix(other.path)
            break
    else:
        if path:
            return endpoint
    return urlunsplit(parts._replace(path=path + signal.path))


def _interval() -> float | None:
    """``OTEL_METRIC_EXPORT_INTERVAL`` when it is usable (the reader would fail on <= 0)."""
    value = os.environ.get(_INTERVAL, "").strip()
    if not value:
        return None
    try:
        millis = float(value)
    except ValueError:
        millis = math.nan
    if not millis > 0:  # also NaN
        _logger.warning(
            "ignoring %s=%r: not a positive number of milliseconds; exporting every %d s",
            _INTERVAL,
            value,
            _DEFAULT_INTERVAL / 1000,
        )
        return _DEFAULT_INTERVAL
    return millis
