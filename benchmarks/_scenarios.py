"""The configurations measured, each one operation repeated: a client call, a container
request or a codec operation.

Every configuration builds its own SDK ``TracerProvider`` with a ``SimpleSpanProcessor`` and an
exporter that only counts (so every configuration pays the same, synchronous export path and no
background thread adds noise), and checks after the run that it really did its work: a
benchmark of an instrumentation that silently did nothing would look excellent.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SPAN_ID = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-01"
# What a JumpStart caller sends anyway: our pairs must be merged after it.
APP_ATTRIBUTES = "accept_eula=true"
REQUEST_BODY = b'{"inputs":"hello"}'
RESPONSE_BODY = b'{"generated_text":"hi"}'
# The parameters of every client call measured.
REQUEST: dict[str, Any] = {
    "EndpointName": "bench-endpoint",
    "Body": REQUEST_BODY,
    "ContentType": "application/json",
    "Accept": "application/json",
    "CustomAttributes": APP_ATTRIBUTES,
}

PROCESSOR = "SimpleSpanProcessor -> counting no-op exporter"


class ScenarioError(RuntimeError):
    """A configuration did not do what it is meant to measure."""


class CountingExporter(SpanExporter):
    """Exports nothing; counts spans and keeps the last one, for the after-run check."""

    def __init__(self) -> None:
        self.exported = 0
        self.last: ReadableSpan | None = None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exported += len(spans)
        self.last = spans[-1]
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def _provider() -> tuple[TracerProvider, CountingExporter]:
    exporter = CountingExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@dataclass
class Scenario:
    """One configuration: ``op()`` is the unit measured, ``check(ops)`` raises ScenarioError
    when *ops* operations did not have the expected effect, ``close()`` undoes global state."""

    op: Callable[[], object]
    check: Callable[[int], None]
    close: Callable[[], None]


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise ScenarioError(message)


def _nothing() -> None:
    pass


# --- client ------------------------------------------------------------------------------


class _CannedBody(io.BytesIO):
    """The raw response: readable like urllib3's, ``stream()`` for botocore's ``content``."""

    def stream(self, **_kwargs: Any) -> Any:
        yield self.read()


class Wire:
    """A ``before-send`` handler: the request is built and signed, the socket is skipped."""

    def __init__(self) -> None:
        self.last_request: Any = None
        self.headers = {
            "x-amzn-requestid": "0f6e4c1a-5d0b-4c9e-9a51-6a1d2c3b4e5f",
            "Content-Type": "application/json",
            "Content-Length": str(len(RESPONSE_BODY)),
            "x-Amzn-Invoked-Production-Variant": "AllTraffic",
        }

    def answer(self, request: Any, **_kwargs: Any) -> Any:
        from botocore.awsrequest import AWSResponse

        self.last_request = request
        return AWSResponse(request.url, 200, self.headers, _CannedBody(RESPONSE_BODY))

    def sent_attributes(self) -> str | None:
        _expect(self.last_request is not None, "no request reached the wire")
        value = self.last_request.headers.get("X-Amzn-SageMaker-Custom-Attributes")
        return value.decode() if isinstance(value, bytes) else value


def _client(wire: Wire) -> Any:
    import boto3

    client = boto3.session.Session(
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        region_name="us-east-1",
    ).client("sagemaker-runtime")
    client.meta.events.register("before-send.sagemaker-runtime.InvokeEndpoint", wire.answer)
    return client


def _invoke(client: Any) -> Callable[[], object]:
    invoke_endpoint = client.invoke_endpoint

    def call() -> object:
        response = invoke_endpoint(**REQUEST)
        return response["Body"].read()

    return call


def client_bare() -> Scenario:
    wire = Wire()
    call = _invoke(_client(wire))

    def check(ops: int) -> None:
        _expect(call() == RESPONSE_BODY, "the canned response was not read back")
        _expect(wire.sent_attributes() == APP_ATTRIBUTES, "CustomAttributes changed on the wire")

    return Scenario(call, check, _nothing)


def client_floor() -> Scenario:
    from opentelemetry.propagate import inject
    from opentelemetry.trace import SpanKind

    provider, exporter = _provider()
    tracer = provider.get_tracer("bench.floor")
    wire = Wire()
    bare = _invoke(_client(wire))

    def call() -> object:
        with tracer.start_as_current_span("SageMaker Runtime.InvokeEndpoint", kind=SpanKind.CLIENT):
            carrier: dict[str, str] = {}
            inject(carrier)
            return bare()

    def check(ops: int) -> None:
        _expect(exporter.exported == ops, f"{exporter.exported} spans for {ops} calls")

    return Scenario(call, check, provider.shutdown)


# What ours records on the span of every call above: the span the issue asks for.
START_ATTRIBUTES = {
    "rpc.system": "aws-api",
    "rpc.service": "SageMaker Runtime",
    "rpc.method": "InvokeEndpoint",
    "cloud.region": "us-east-1",
    "server.address": "runtime.sagemaker.us-east-1.amazonaws.com",
    "aws.sagemaker.endpoint.name": "bench-endpoint",
}
RESPONSE_ATTRIBUTES = ("aws.request_id", "http.response.status_code")
VARIANT_ATTRIBUTE = "aws.sagemaker.invoked_production_variant"
SPAN_ATTRIBUTES = frozenset({*START_ATTRIBUTES, *RESPONSE_ATTRIBUTES, VARIANT_ATTRIBUTE})


def _expect_attributes(exporter: CountingExporter) -> None:
    """The last span carries exactly the attributes above, the request's with their values."""
    last = exporter.last
    attributes = dict(last.attributes or {}) if last is not None else {}
    _expect(
        set(attributes) == SPAN_ATTRIBUTES
        and all(attributes[key] == value for key, value in START_ATTRIBUTES.items()),
        f"span attributes {attributes}, not the ones compared",
    )


def client_floor_attributes() -> Scenario:
    """The floor's span with the attributes ours records: what the SDK itself charges for the
    span, the inject and those attributes, with no code of ours."""
    from opentelemetry.propagate import inject
    from opentelemetry.trace import SpanKind

    provider, exporter = _provider()
    tracer = provider.get_tracer("bench.floor")
    wire = Wire()
    invoke_endpoint = _client(wire).invoke_endpoint

    def call() -> object:
        with tracer.start_as_current_span(
            "SageMaker Runtime.InvokeEndpoint", kind=SpanKind.CLIENT, attributes=START_ATTRIBUTES
        ) as span:
            carrier: dict[str, str] = {}
            inject(carrier)
            response = invoke_endpoint(**REQUEST)
            metadata = response["ResponseMetadata"]
            span.set_attributes(
                {
                    "aws.request_id": metadata["RequestId"],
                    "http.response.status_code": metadata["HTTPStatusCode"],
                    VARIANT_ATTRIBUTE: response["InvokedProductionVariant"],
                }
            )
            return response["Body"].read()

    def check(ops: int) -> None:
        _expect(exporter.exported == ops, f"{exporter.exported} spans for {ops} calls")
        _expect_attributes(exporter)

    return Scenario(call, check, provider.shutdown)


def client_upstream() -> Scenario:
    from opentelemetry.instrumentation.botocore import BotocoreInstrumentor

    provider, exporter = _provider()
    instrumentor = BotocoreInstrumentor()  # type: ignore[no-untyped-call]
    # A singleton: in a process that already instrumented it, start again with our provider.
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
    instrumentor.instrument(tracer_provider=provider)
    wire = Wire()
    call = _invoke(_client(wire))

    def check(ops: int) -> None:
        _expect(exporter.exported == ops, f"{exporter.exported} spans for {ops} calls")
        _expect("X-Amzn-Trace-Id" in wire.last_request.headers, "no X-Amzn-Trace-Id sent")

    def close() -> None:
        instrumentor.uninstrument()
        provider.shutdown()

    return Scenario(call, check, close)


def client_ours() -> Scenario:
    import sm_tracing

    provider, exporter = _provider()
    # instrument() leaves an earlier instrumentation as it is: start again with our provider.
    sm_tracing.uninstrument()
    sm_tracing.instrument(tracer_provider=provider)
    wire = Wire()
    call = _invoke(_client(wire))

    def check(ops: int) -> None:
        _expect(exporter.exported == ops, f"{exporter.exported} spans for {ops} calls")
        sent = wire.sent_attributes() or ""
        _expect(
            sent.startswith(APP_ATTRIBUTES) and "traceparent=00-" in sent,
            "the trace context was not merged into CustomAttributes",
        )
        _expect_attributes(exporter)

    def close() -> None:
        sm_tracing.uninstrument()
        provider.shutdown()

    return Scenario(call, check, close)


# --- container -----------------------------------------------------------------------------

ENVIRON: dict[str, Any] = {
    "REQUEST_METHOD": "POST",
    "SCRIPT_NAME": "",
    "PATH_INFO": "/invocations",
    "QUERY_STRING": "",
    "SERVER_NAME": "127.0.0.1",
    "SERVER_PORT": "8080",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "REMOTE_ADDR": "127.0.0.1",
    "CONTENT_TYPE": "application/json",
    "CONTENT_LENGTH": str(len(REQUEST_BODY)),
    "HTTP_HOST": "127.0.0.1:8080",
    "HTTP_X_AMZN_SAGEMAKER_CUSTOM_ATTRIBUTES": f"{APP_ATTRIBUTES};traceparent={TRACEPARENT}",
    # Only the upstream middleware reads it; every configuration gets the same environ.
    "HTTP_TRACEPARENT": TRACEPARENT,
    "wsgi.version": (1, 0),
    "wsgi.url_scheme": "http",
    "wsgi.errors": sys.stderr,
    "wsgi.multithread": False,
    "wsgi.multiprocess": False,
    "wsgi.run_once": False,
}

_RESPONSE_HEADERS = [
    ("Content-Type", "application/json"),
    ("Content-Length", str(len(RESPONSE_BODY))),
]

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Any]


def bare_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """The model server: reads nothing, answers a small JSON body."""
    start_response("200 OK", _RESPONSE_HEADERS)
    return [RESPONSE_BODY]


class Server:
    """A minimal WSGI server loop in-process: environ, start_response, iterate, close."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.body = b""

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        self.status = status
        self.headers = headers
        return self._write

    def _write(self, data: bytes) -> None:
        pass

    def request(self) -> object:
        environ = ENVIRON.copy()
        environ["wsgi.input"] = io.BytesIO(REQUEST_BODY)
        result = self.app(environ, self.start_response)
        try:
            for chunk in result:
                self.body = chunk
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return self.body

    def check_answered(self) -> None:
        self.status = None
        _expect(self.request() == RESPONSE_BODY, "the app's body did not come through")
        _expect(self.status == "200 OK", f"status {self.status!r}")


def _check_child(exporter: CountingExporter, ops: int) -> None:
    _expect(exporter.exported == ops, f"{exporter.exported} spans for {ops} requests")
    span = exporter.last
    _expect(
        span is not None
        and span.context.trace_id == TRACE_ID
        and span.parent is not None
        and span.parent.span_id == SPAN_ID,
        "the server span did not continue the caller's trace",
    )


def container_bare() -> Scenario:
    server = Server(bare_app)
    return Scenario(server.request, lambda ops: server.check_answered(), _nothing)


def container_floor() -> Scenario:
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    provider, exporter = _provider()
    tracer = provider.get_tracer("bench.floor")

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        parent = extract({"traceparent": environ["HTTP_TRACEPARENT"]})
        with tracer.start_as_current_span("invocations", context=parent, kind=SpanKind.SERVER):
            return bare_app(environ, start_response)

    server = Server(app)

    def check(ops: int) -> None:
        _check_child(exporter, ops)
        server.check_answered()

    return Scenario(server.request, check, provider.shutdown)


def container_upstream() -> Scenario:
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

    provider, exporter = _provider()
    server = Server(OpenTelemetryMiddleware(bare_app, tracer_provider=provider))

    def check(ops: int) -> None:
        _check_child(exporter, ops)
        server.check_answered()

    return Scenario(server.request, check, provider.shutdown)


def container_ours() -> Scenario:
    import sm_tracing

    provider, exporter = _provider()
    server = Server(sm_tracing.WSGIMiddleware(bare_app, tracer_provider=provider))

    def check(ops: int) -> None:
        _check_child(exporter, ops)
        server.check_answered()

    return Scenario(server.request, check, provider.shutdown)


# --- codec ---------------------------------------------------------------------------------


def _context() -> Any:
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    span_context = SpanContext(TRACE_ID, SPAN_ID, is_remote=False, trace_flags=TraceFlags(1))
    return trace.set_span_in_context(NonRecordingSpan(span_context))


def inject_bare() -> Scenario:
    from opentelemetry.propagate import inject

    context = _context()

    def op() -> dict[str, str]:
        carrier: dict[str, str] = {}
        inject(carrier, context=context)
        return carrier

    def check(ops: int) -> None:
        _expect(op().get("traceparent") == TRACEPARENT, "inject wrote no traceparent")

    return Scenario(op, check, _nothing)


def inject_ours() -> Scenario:
    from sm_tracing import inject_context

    context = _context()

    def op() -> object:
        return inject_context(APP_ATTRIBUTES, context)

    def check(ops: int) -> None:
        expected = f"{APP_ATTRIBUTES};traceparent={TRACEPARENT}"
        _expect(op() == expected, "inject_context did not merge the traceparent")

    return Scenario(op, check, _nothing)


def _check_extracted(context: Any) -> None:
    from opentelemetry import trace

    span_context = trace.get_current_span(context).get_span_context()
    _expect(
        span_context.trace_id == TRACE_ID and span_context.span_id == SPAN_ID,
        "the traceparent was not extracted",
    )


def extract_bare() -> Scenario:
    from opentelemetry.propagate import extract

    carrier = {"traceparent": TRACEPARENT}

    def op() -> object:
        return extract(carrier)

    return Scenario(op, lambda ops: _check_extracted(op()), _nothing)


def extract_ours() -> Scenario:
    from sm_tracing import extract_context

    value = f"{APP_ATTRIBUTES};traceparent={TRACEPARENT}"

    def op() -> object:
        return extract_context(value)

    return Scenario(op, lambda ops: _check_extracted(op()), _nothing)


BUILDERS: dict[str, Callable[[], Scenario]] = {
    "client-bare": client_bare,
    "client-floor": client_floor,
    "client-floor-attributes": client_floor_attributes,
    "client-upstream": client_upstream,
    "client-ours": client_ours,
    "container-bare": container_bare,
    "container-floor": container_floor,
    "container-upstream": container_upstream,
    "container-ours": container_ours,
    "inject-bare": inject_bare,
    "inject-ours": inject_ours,
    "extract-bare": extract_bare,
    "extract-ours": extract_ours,
}

# The private module each of our configurations needs: absent, the row says so.
REQUIRES = {
    "client-ours": "sm_tracing._instrumentor",
    "container-ours": "sm_tracing._wsgi",
}


def build(config: str) -> Scenario:
    """The scenario named *config*; KeyError for an unknown name."""
    return BUILDERS[config]()
