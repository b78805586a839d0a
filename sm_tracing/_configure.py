"""One call to export traces: a global SDK TracerProvider, a batch processor and an exporter."""

from __future__ import annotations

import logging
import os
import threading
from importlib import import_module
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

_logger = logging.getLogger(__name__)

# The standard variables, read here only where the exporters do not read them themselves.
_TRACES_EXPORTER = "OTEL_TRACES_EXPORTER"
_PROTOCOL = "OTEL_EXPORTER_OTLP_PROTOCOL"
_TRACES_PROTOCOL = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"

_HTTP_PATH = "/v1/traces"
_OTLP_NAMES = frozenset({"otlp", "otlp_proto_http"})
_GRPC_NAMES = frozenset({"otlp_proto_grpc", "grpc"})
_KNOWN = _OTLP_NAMES | _GRPC_NAMES | {"console", "none"}

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

    Spans still queued are flushed when the interpreter exits. When an SDK provider is already
    installed globally, by an earlier call or by anyone else, this warns and returns that one.
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
        trace.set_tracer_provider(provider)
        _installed = provider
        _logger.debug(
            "tracing configured: %s",
            ", ".join(type(e).__name__ for e in exporters) or "no exporter",
        )
        return provider


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
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise ImportError(
            "exporting over OTLP/HTTP needs opentelemetry-exporter-otlp-proto-http: "
            "pip install 'sm-tracing[otlp]'"
        ) from exc
    if endpoint is not None and urlsplit(endpoint).path in ("", "/"):
        endpoint = endpoint.rstrip("/") + _HTTP_PATH
    # Without an endpoint the exporter reads the OTEL_EXPORTER_OTLP_* variables itself.
    return OTLPSpanExporter(endpoint=endpoint)


def _grpc_exporter(endpoint: str | None) -> SpanExporter:
    try:
        # Imported by name: the gRPC exporter is an extra, and may not be there to type-check.
        module = import_module("opentelemetry.exporter.otlp.proto.grpc.trace_exporter")
    except ImportError as exc:
        raise ImportError(
            "exporting over OTLP/gRPC needs opentelemetry-exporter-otlp-proto-grpc: "
            "pip install 'sm-tracing[grpc]'"
        ) from exc
    exporter: SpanExporter = module.OTLPSpanExporter(endpoint=endpoint)
    return exporter
