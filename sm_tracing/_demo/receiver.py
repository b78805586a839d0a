"""A small OTLP/HTTP trace receiver on loopback: the demo collects every process's spans here.

It decodes ``ExportTraceServiceRequest`` protobufs as the OpenTelemetry Collector does, keeps
the spans in memory, and can pass each request on unchanged to another OTLP/HTTP endpoint
(Jaeger, a Collector), so the same spans can also be looked at there.
"""

from __future__ import annotations

import gzip
import logging
import threading
import time
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

_logger = logging.getLogger(__name__)

TRACES_PATH = "/v1/traces"
METRICS_PATH = "/v1/metrics"
_KINDS = {
    Span.SPAN_KIND_INTERNAL: "internal",
    Span.SPAN_KIND_SERVER: "server",
    Span.SPAN_KIND_CLIENT: "client",
    Span.SPAN_KIND_PRODUCER: "producer",
    Span.SPAN_KIND_CONSUMER: "consumer",
}
_STATUSES = {Status.STATUS_CODE_OK: "ok", Status.STATUS_CODE_ERROR: "error"}


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as it arrived over OTLP, ids in lower-case hex."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: str
    start_ns: int
    end_ns: int
    service: str
    scope: str
    attributes: dict[str, Any] = field(default_factory=dict)
    links: tuple[tuple[str, str], ...] = ()
    events: tuple[str, ...] = ()
    status: str = "unset"
    event_times: tuple[tuple[str, int], ...] = ()  # each event's name and time, in ns

    def event_offset(self, name: str) -> float | None:
        """Seconds from the span's start to its first event called *name*; None without one."""
        for event, time_ns in self.event_times:
            if event == name:
                return (time_ns - self.start_ns) / 1e9
        return None

    @property
    def duration_ms(self) -> float:
        """How long the span lasted, in milliseconds."""
        return (self.end_ns - self.start_ns) / 1e6


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return tuple(_value(item) for item in value.array_value.values)
    if which == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, which)


def _attributes(pairs: Sequence[KeyValue]) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def decode(body: bytes) -> list[ReceivedSpan]:
    """The spans of one serialized ``ExportTraceServiceRequest``."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        service = str(resource.get("service.name", ""))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex() or None,
                        name=span.name,
                        kind=_KINDS.get(span.kind, "unspecified"),
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        service=service,
                        scope=scope_spans.scope.name,
                        attributes=_attributes(span.attributes),
                        links=tuple(
                            (link.trace_id.hex(), link.span_id.hex()) for link in span.links
                        ),
                        events=tuple(event.name for event in span.events),
                        event_times=tuple(
                            (event.name, event.time_unix_nano) for event in span.events
                        ),
                        status=_STATUSES.get(span.status.code, "unset"),
                    )
                )
    return spans


class OTLPReceiver:
    """Receives OTLP/HTTP protobuf trace exports on loopback, in a background thread.

    ``traces_url`` is what an ``OTLPSpanExporter`` takes as ``endpoint`` (``url`` is the base,
    for ``OTEL_EXPORTER_OTLP_ENDPOINT``). With ``forward_to``, each request is also posted
    unchanged to that OTLP/HTTP traces URL; failures are kept in ``forward_errors``.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        forward_to: str | None = None,
        metrics: bool = True,
    ) -> None:
        """*metrics*: take OTLP metrics and set them aside (True), or answer 404 for them as
        Jaeger, which takes spans only, does (False)."""
        self.forward_to = forward_to
        self.metrics = metrics
        self.forward_errors: list[str] = []
        self._spans: list[ReceivedSpan] = []
        self._changed = threading.Condition()
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL, ``http://host:port``."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def traces_url(self) -> str:
        """The traces endpoint, ``http://host:port/v1/traces``."""
        return self.url + TRACES_PATH

    @property
    def spans(self) -> list[ReceivedSpan]:
        """A snapshot of every span received so far."""
        with self._changed:
            return list(self._spans)

    def clear(self) -> None:
        """Forget the spans received so far."""
        with self._changed:
            self._spans.clear()

    def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float = 10.0
    ) -> list[ReceivedSpan]:
        """The spans once *predicate* holds for them; raises TimeoutError after *timeout* s."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(list(self._spans)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"spans received so far: {[s.name for s in self._spans]}")
                self._changed.wait(remaining)
            return list(self._spans)

    def start(self) -> OTLPReceiver:
        """Start serving in a daemon thread."""
        self._thread = threading.Thread(
            # A short poll interval: close() waits for the loop to notice the shutdown.
            target=self._server.serve_forever,
            args=(0.05,),
            name="otlp-receiver",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> OTLPReceiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _received(self, body: bytes) -> None:
        spans = decode(body)
        if self.forward_to is not None:
            self._forward(body)
        with self._changed:
            self._spans.extend(spans)
            self._changed.notify_all()

    def _forward(self, body: bytes) -> None:
        request = urllib.request.Request(self.forward_to or "", data=body, method="POST")
        request.add_header("Content-Type", "application/x-protobuf")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                response.read()
        except Exception as exc:  # the demo goes on without the second destination
            _logger.debug("forwarding to %s failed", self.forward_to, exc_info=True)
            self.forward_errors.append(f"{type(exc).__name__}: {exc}")

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?")[0]
                if path == METRICS_PATH and receiver.metrics:
                    # Set aside: the receiver shows spans; a process exporting its metrics
                    # here must not log a refusal at every interval.
                    self._reply(200, b"")
                    return
                if path != TRACES_PATH:
                    self._reply(404, b"")
                    return
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                try:
                    if encoding == "gzip":
                        body = gzip.decompress(body)
                    elif encoding == "deflate":
                        body = zlib.decompress(body)
                    receiver._received(body)
                except Exception:
                    _logger.warning("could not decode an OTLP request", exc_info=True)
                    self._reply(400, b"")
                    return
                self._reply(200, ExportTraceServiceResponse().SerializeToString())

            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the demo's output is the trace trees, not an access log

        return Handler
