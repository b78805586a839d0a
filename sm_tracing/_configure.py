"""One call to export traces: a global SDK TracerProvider, a batch processor and an exporter."""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
from importlib import import_module
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)

_logger = logging.getLogger(__name__)

# The standard variables, read here only where the exporters do not read them themselves.
_TRACES_EXPORTER = "OTEL_TRACES_EXPORTER"
_PROTOCOL = "OTEL_EXPORTER_OTLP_PROTOCOL"
_TRACES_PROTOCOL = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
_TRACES_ENDPOINT = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"

_HTTP_PATH = "/v1/traces"
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
_installed: TracerProvider | None = None


def configure(
    service_name: str | None = None,
    *,
    exporter: str | SpanExporter | None = None,
    endpoint: str | None = None,
) -> TracerProvider:
    """Install a global SDK ``TracerProvider`` that exports in batches, and return it.

    ``service_name`` overrides ``OTEL_SERVICE_NAME`` and ``service.name`` in
    ``OTEL_RESOURCE_ATTRIBUTES``. ``exporter`` is a SpanExporter, or one of ``"otlp"``
    (OTLP over HTTP, the default), ``"otlp_proto_grpc"`` (or ``"grpc"``), ``"console"`` and
    ``"none"``; without it ``OTEL_TRACES_EXPORTER`` decides (a comma-separated list), and for
    ``otlp`` ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`` chooses ``http/protobuf`` or ``grpc``.
    ``endpoint`` overrides ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``; an OTLP/HTTP endpoint
    without a path gets ``/v1/traces``. The default is ``http://localhost:4318/v1/traces``,
    where Jaeger and the OpenTelemetry Collector listen.

    When nothing listens at the OTLP endpoint, spans are dropped at once, without retries, and
    a warning says so once. Spans still queued are flushed when the interpreter exits, with a
    short timeout. When an SDK provider is already installed globally, by an earlier call or by
    anyone else, this warns and returns that one.
    """
    global _installed  # noqa: PLW0603 - the process-wide provider, set once under the lock
    with _lock:
        if _installed is not None:
            _logger.warning("sm_tracing.configure() was already called; keeping that provider")
            return _installed
        current = trace.get_tracer_provider()
        if isinstance(current, TracerProvider):
            _logger.warning(
                "a TracerProvider is already installed; sm_tracing.configure() keeps it"
            )
            return current
        if not isinstance(current, trace.ProxyTracerProvider):
            raise RuntimeError(
                f"a {type(current).__name__} is already installed as the global tracer provider "
                "and OpenTelemetry does not allow replacing it"
            )
        exporters = _exporters(exporter, endpoint)
        attributes = {SERVICE_NAME: service_name} if service_name else None
        # shutdown_on_exit registers an atexit hook that flushes the batch processors.
        provider = TracerProvider(resource=Resource.create(attributes), shutdown_on_exit=True)
        for span_exporter in exporters:
            provider.add_span_processor(BatchSpanProcessor(span_exporter))
        collectors = [e for e in exporters if isinstance(e, CollectorExporter)]
        if collectors:
            # atexit runs the last registered first: this runs before the provider's flush.
            atexit.register(_exiting, collectors)
        trace.set_tracer_provider(provider)
        _installed = provider
        _logger.debug(
            "tracing configured: %s",
            ", ".join(type(e).__name__ for e in exporters) or "no exporter",
        )
        return provider


class CollectorExporter(SpanExporter):
    """An OTLP exporter that checks that something listens at its endpoint before it sends.

    With no collector there, the OTLP exporters retry each batch for up to their timeout,
    logging each attempt, and the flush at exit waits as long. This one opens a TCP connection
    first whenever it has no reason to believe the collector is up (the first export, and after
    a failed one): when nothing answers, the batch is dropped at once, and a warning says
    where the spans were meant to go, once. At exit it exports through an exporter made with
    a short timeout, and gives up on the rest after a failure.
    """

    def __init__(
        self, make: Callable[[float | None], SpanExporter], endpoint: str, protocol: str
    ) -> None:
        self._make = make
        self.exporter = make(None)
        self.endpoint = endpoint
        self.protocol = protocol
        self._address = _address(endpoint)
        self._check = self._address is not None
        self._warned = False
        self._at_exit: SpanExporter | None = None
        self._failed_at_exit = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._failed_at_exit:
            return SpanExportResult.FAILURE
        if self._check and self._address is not None:
            if not self._listening(self._address):
                self._failed_at_exit = self._at_exit is not None
                return SpanExportResult.FAILURE
            self._check = False
        exporter = self._at_exit or self.exporter
        result = exporter.export(spans)
        if result is not SpanExportResult.SUCCESS:
            self._check = self._address is not None
            self._failed_at_exit = self._at_exit is not None
        return result

    def shutdown(self) -> None:
        self.exporter.shutdown()
        if self._at_exit is not None:
            self._at_exit.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.exporter.force_flush(timeout_millis)

    def exiting(self) -> None:
        """Export what is left with a short timeout: the interpreter is on its way out."""
        self._at_exit = self._make(_EXIT_TIMEOUT)

    def _listening(self, address: tuple[str, int]) -> bool:
        try:
            socket.create_connection(address, timeout=_CONNECT_TIMEOUT).close()
        except OSError:
            if not self._warned:
                self._warned = True
                _logger.warning(
                    "sm_tracing.configure(): nothing is listening at %s (%s), so spans are "
                    "dropped; start Jaeger or an OpenTelemetry Collector there, or set "
                    "OTEL_EXPORTER_OTLP_ENDPOINT (OTEL_TRACES_EXPORTER=console prints them)",
                    self.endpoint,
                    self.protocol,
                )
            return False
        if self._warned:
            _logger.info("sm_tracing.configure(): %s is listening; exporting spans", self.endpoint)
        return True


def _exiting(collectors: list[CollectorExporter]) -> None:
    for collector in collectors:
        try:
            collector.exiting()
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


def _exporters(exporter: str | SpanExporter | None, endpoint: str | None) -> list[SpanExporter]:
    if isinstance(exporter, SpanExporter):
        return [exporter]
    if exporter is not None:
        names = _names(exporter)
        unknown = [name for name in names if name not in _KNOWN]
        if unknown:
            raise ValueError(f"unknown exporter {unknown[0]!r}; expected one of {sorted(_KNOWN)}")
    else:
        names = _names(os.environ.get(_TRACES_EXPORTER, "") or "otlp")
        for name in names:
            if name not in _KNOWN:
                _logger.warning(
                    "ignoring %s entry %r: not one of %s", _TRACES_EXPORTER, name, sorted(_KNOWN)
                )
        names = [name for name in names if name in _KNOWN]
    if "none" in names:
        return []
    result: list[SpanExporter] = []
    for name in dict.fromkeys(names):  # the same exporter twice would send every span twice
        if name == "console":
            result.append(ConsoleSpanExporter())
        elif name in _GRPC_NAMES or (name in _OTLP_NAMES and _protocol() == "grpc"):
            result.append(_grpc_exporter(endpoint))
        else:
            result.append(_http_exporter(endpoint))
    return result


def _names(value: str) -> list[str]:
    return [name.strip().lower() for name in value.split(",") if name.strip()]


def _protocol() -> str:
    protocol = (os.environ.get(_TRACES_PROTOCOL) or os.environ.get(_PROTOCOL) or "").strip().lower()
    if protocol not in {"", "grpc", "http/protobuf"}:
        _logger.warning("OTLP protocol %r is not supported here; using http/protobuf", protocol)
    return protocol


def _http_exporter(endpoint: str | None) -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    if endpoint is not None and urlsplit(endpoint).path in ("", "/"):
        endpoint = endpoint.rstrip("/") + _HTTP_PATH
    # The exporter's own resolution, to name and check where the spans go.
    target = (
        endpoint
        or os.environ.get(_TRACES_ENDPOINT)
        or (os.environ.get(_ENDPOINT) or _HTTP_DEFAULT).removesuffix("/") + _HTTP_PATH
    )

    def make(timeout: float | None) -> SpanExporter:
        # Without an endpoint the exporter reads the OTEL_EXPORTER_OTLP_* variables itself.
        return OTLPSpanExporter(endpoint=endpoint, timeout=timeout)

    return CollectorExporter(make, target, "OTLP/HTTP")


def _grpc_exporter(endpoint: str | None) -> SpanExporter:
    try:
        # Imported by name: the gRPC exporter is an extra, and may not be there to type-check.
        module = import_module("opentelemetry.exporter.otlp.proto.grpc.trace_exporter")
    except ImportError as exc:
        raise ImportError(
            "exporting over OTLP/gRPC needs opentelemetry-exporter-otlp-proto-grpc: "
            "pip install 'sm-tracing[grpc]'"
        ) from exc
    target = (
        endpoint or os.environ.get(_TRACES_ENDPOINT) or os.environ.get(_ENDPOINT) or _GRPC_DEFAULT
    )

    def make(timeout: float | None) -> SpanExporter:
        exporter: SpanExporter = module.OTLPSpanExporter(endpoint=endpoint, timeout=timeout)
        return exporter

    return CollectorExporter(make, target, "OTLP/gRPC")
