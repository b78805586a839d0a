"""The container configurations: a tiny model server app, WSGI or ASGI, called in-process the
way a server calls it, with a request to ``POST /invocations`` whose CustomAttributes carry the
caller's ``traceparent`` (and, for the upstream middlewares, a ``traceparent`` header too).

The ASGI app is a coroutine driven directly, without an event loop: nothing in it waits, so one
``send(None)`` runs it to the end and no loop's cost hides the middleware's.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any

from benchmarks._base import (
    APP_ATTRIBUTES,
    CARRIED_ATTRIBUTES,
    REQUEST_BODY,
    RESPONSE_BODY,
    SPAN_ID,
    TOKEN,
    TOKENS,
    TRACE_ID,
    TRACEPARENT,
    CountingExporter,
    Metrics,
    Scenario,
    ScenarioError,
    closing,
    expect,
    nothing,
    per_call,
    provider,
)

HEADER = b"x-amzn-sagemaker-custom-attributes"


def _expect_child(exporter: CountingExporter, requests: int) -> None:
    """One SERVER span per request, the last one a child of the caller's span."""
    expect(exporter.servers == requests, f"{exporter.servers} spans for {requests} requests")
    span = exporter.last_server
    expect(
        span is not None
        and span.context.trace_id == TRACE_ID
        and span.parent is not None
        and span.parent.span_id == SPAN_ID,
        "the server span did not continue the caller's trace",
    )


def _options(tracer_provider: Any, metrics: Metrics | None) -> dict[str, Any]:
    options: dict[str, Any] = {"tracer_provider": tracer_provider}
    if metrics is not None:
        options["meter_provider"] = metrics.provider
    return options


def _closers(tracer_provider: Any, metrics: Metrics | None) -> Callable[[], None]:
    if metrics is None:
        return tracer_provider.shutdown  # type: ignore[no-any-return]
    return closing(tracer_provider.shutdown, metrics.close)


# --- WSGI ----------------------------------------------------------------------------------

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
    "HTTP_X_AMZN_SAGEMAKER_CUSTOM_ATTRIBUTES": CARRIED_ATTRIBUTES,
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
        expect(self.request() == RESPONSE_BODY, "the app's body did not come through")
        expect(self.status == "200 OK", f"status {self.status!r}")

    def echoed(self) -> bool:
        """The last response's CustomAttributes carry ``traceresponse``."""
        return any(
            name.lower() == HEADER.decode() and "traceresponse=00-" in value
            for name, value in self.headers
        )


def wsgi_bare() -> Scenario:
    server = Server(bare_app)
    return Scenario(per_call(server.request), lambda calls: server.check_answered(), nothing)


# The attributes ours records on every request's span, in one call when the response starts.
SPAN_ATTRIBUTES = {
    "http.request.method": "POST",
    "url.path": "/invocations",
    "http.response.status_code": 200,
}
# What ours measures each request by, when it has a MeterProvider.
METRIC_ATTRIBUTES = {
    "http.request.method": "POST",
    "http.route": "/invocations",
    "http.response.status_code": 200,
}


def _expect_attributes(exporter: CountingExporter) -> None:
    span = exporter.last_server
    attributes = dict(span.attributes or {}) if span is not None else {}
    expect(
        all(attributes.get(key) == value for key, value in SPAN_ATTRIBUTES.items()),
        f"the server span lacks the attributes ours records: {attributes}",
    )


def wsgi_floor() -> Scenario:
    return _wsgi_floor(attributes=False)


def wsgi_floor_attributes() -> Scenario:
    """The floor's span with the attributes ours records: what the SDK itself charges for the
    extract, the span and those attributes, with no code of ours."""
    return _wsgi_floor(attributes=True)


def _wsgi_floor(attributes: bool) -> Scenario:
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    tracer_provider, exporter = provider()
    tracer = tracer_provider.get_tracer("bench.floor")

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        parent = extract({"traceparent": environ["HTTP_TRACEPARENT"]})
        with tracer.start_as_current_span(
            "invocations", context=parent, kind=SpanKind.SERVER
        ) as span:
            body = bare_app(environ, start_response)
            if attributes:
                span.set_attributes(SPAN_ATTRIBUTES)
            return body

    server = Server(app)

    def check(calls: int) -> None:
        _expect_child(exporter, calls)
        server.check_answered()
        if attributes:
            _expect_attributes(exporter)

    return Scenario(per_call(server.request), check, tracer_provider.shutdown)


def wsgi_upstream() -> Scenario:
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

    tracer_provider, exporter = provider()
    server = Server(OpenTelemetryMiddleware(bare_app, tracer_provider=tracer_provider))

    def check(calls: int) -> None:
        _expect_child(exporter, calls)
        server.check_answered()

    return Scenario(per_call(server.request), check, tracer_provider.shutdown)


def _wsgi_ours(metrics: Metrics | None) -> Scenario:
    import sm_tracing

    tracer_provider, exporter = provider()
    server = Server(sm_tracing.WSGIMiddleware(bare_app, **_options(tracer_provider, metrics)))

    def check(calls: int) -> None:
        _expect_child(exporter, calls)
        server.check_answered()
        expect(server.echoed(), "the response carries no traceresponse")
        if metrics is not None:
            metrics.check(calls + 1)

    return Scenario(per_call(server.request), check, _closers(tracer_provider, metrics))


def wsgi_ours() -> Scenario:
    return _wsgi_ours(None)


def wsgi_ours_metrics() -> Scenario:
    return _wsgi_ours(Metrics())


def wsgi_ours_record() -> Scenario:
    """Ours without metrics, and one SDK ``Histogram.record`` per request with the attributes
    ours measures by: what the SDK itself charges for the measurement ours makes."""
    scenario = _wsgi_ours(None)
    return _with_record(scenario, calls_per_unit=1)


def _with_record(scenario: Scenario, calls_per_unit: int) -> Scenario:
    metrics = Metrics()
    record = metrics.histogram("bench.request.duration").record

    def run(n: int) -> int:
        done = scenario.run(n)
        for _ in range(n * calls_per_unit):
            record(0.001, METRIC_ATTRIBUTES)
        return done

    return Scenario(run, scenario.check, closing(scenario.close, metrics.close))


# --- ASGI ----------------------------------------------------------------------------------

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[dict[str, Any], Receive, Send], Coroutine[Any, Any, None]]

SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.3"},
    "http_version": "1.1",
    "method": "POST",
    "scheme": "http",
    "path": "/invocations",
    "raw_path": b"/invocations",
    "query_string": b"",
    "root_path": "",
    "headers": [
        (b"host", b"127.0.0.1:8080"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(REQUEST_BODY)).encode()),
        (HEADER, CARRIED_ATTRIBUTES.encode()),
        # Only the upstream middleware and the floor read it; every configuration gets it.
        (b"traceparent", TRACEPARENT.encode()),
    ],
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 8080),
}
_HEADERS = (
    (b"content-type", b"application/json"),
    (b"content-length", str(len(RESPONSE_BODY)).encode()),
)
_STREAM_HEADERS = ((b"content-type", b"text/event-stream"),)


def drive(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run *coroutine*, which never waits, to its end."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    coroutine.close()
    raise ScenarioError("the app waited for something: it cannot be driven without a loop")


class AsgiServer:
    """A minimal ASGI server in-process: one ``http.request`` message in, the response's
    messages collected; *chunks* body messages per response for the streaming app."""

    def __init__(self) -> None:
        self.chunks = 1
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.parts = 0
        self.body = b""
        self.seen: dict[str, Any] | None = None

    async def receive(self) -> Message:
        return {"type": "http.request", "body": REQUEST_BODY, "more_body": False}

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = message.get("headers") or []
            self.parts = 0
        elif message["type"] == "http.response.body":
            self.parts += 1
            self.body = message.get("body", b"")

    async def app(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        """The model server: reads the request, answers a small JSON body."""
        self.seen = scope
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [*_HEADERS]})
        await send({"type": "http.response.body", "body": RESPONSE_BODY})

    async def stream_app(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        """The model server streaming its answer, one token per body message."""
        self.seen = scope
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [*_STREAM_HEADERS]})
        for index in range(self.chunks - 1):
            body = TOKENS[index % len(TOKENS)]
            await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": TOKEN})

    def caller(self, app: ASGIApp) -> Callable[[], object]:
        """One request to *app*."""
        receive, send = self.receive, self.send

        def request() -> object:
            drive(app(dict(SCOPE), receive, send))
            return self.body

        return request

    def check_answered(self, request: Callable[[], object], body: bytes, parts: int) -> None:
        self.status = None
        expect(request() == body, "the app's body did not come through")
        expect(self.status == 200, f"status {self.status!r}")
        expect(self.parts == parts, f"{self.parts} body messages of {parts}")

    def app_saw(self) -> bytes | None:
        """The CustomAttributes of the last request as the app saw them."""
        headers = self.seen["headers"] if self.seen is not None else ()
        return next((value for key, value in headers if key == HEADER), None)

    def echoed(self) -> bool:
        """The last response's CustomAttributes carry ``traceresponse``."""
        return any(key == HEADER and b"traceresponse=00-" in value for key, value in self.headers)


def _floor_app(tracer: Any, app: ASGIApp, attributes: bool = False) -> ASGIApp:
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    async def floor(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        carrier = {}
        for key, value in scope["headers"]:
            if key == b"traceparent":
                carrier["traceparent"] = value.decode("latin-1")
        parent = extract(carrier)
        with tracer.start_as_current_span(
            "invocations", context=parent, kind=SpanKind.SERVER
        ) as span:
            await app(scope, receive, send)
            if attributes:
                span.set_attributes(SPAN_ATTRIBUTES)

    return floor


def _upstream_app(tracer_provider: Any, app: ASGIApp) -> ASGIApp:
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    return OpenTelemetryMiddleware(app, tracer_provider=tracer_provider)  # type: ignore[no-any-return]


def _ours_app(tracer_provider: Any, metrics: Metrics | None, app: ASGIApp) -> ASGIApp:
    import sm_tracing

    return sm_tracing.ASGIMiddleware(app, **_options(tracer_provider, metrics))  # type: ignore[no-any-return]


def _expect_ours(server: AsgiServer) -> None:
    seen = server.app_saw()
    expect(seen == APP_ATTRIBUTES.encode(), f"the app saw CustomAttributes {seen!r}")
    expect(server.echoed(), "the response carries no traceresponse")


def asgi_bare() -> Scenario:
    server = AsgiServer()
    request = server.caller(server.app)

    def check(calls: int) -> None:
        server.check_answered(request, RESPONSE_BODY, 1)
        expect(server.app_saw() == CARRIED_ATTRIBUTES.encode(), "CustomAttributes changed")

    return Scenario(per_call(request), check, nothing)


def asgi_floor() -> Scenario:
    return _asgi_floor(attributes=False)


def asgi_floor_attributes() -> Scenario:
    """The floor's span with the attributes ours records (see ``wsgi_floor_attributes``)."""
    return _asgi_floor(attributes=True)


def _asgi_floor(attributes: bool) -> Scenario:
    tracer_provider, exporter = provider()
    server = AsgiServer()
    tracer = tracer_provider.get_tracer("bench.floor")
    request = server.caller(_floor_app(tracer, server.app, attributes))

    def check(calls: int) -> None:
        _expect_child(exporter, calls)
        server.check_answered(request, RESPONSE_BODY, 1)
        if attributes:
            _expect_attributes(exporter)

    return Scenario(per_call(request), check, tracer_provider.shutdown)


def asgi_upstream() -> Scenario:
    tracer_provider, exporter = provider()
    server = AsgiServer()
    request = server.caller(_upstream_app(tracer_provider, server.app))

    def check(calls: int) -> None:
        _expect_child(exporter, calls)
        server.check_answered(request, RESPONSE_BODY, 1)

    return Scenario(per_call(request), check, tracer_provider.shutdown)


def _asgi_ours(metrics: Metrics | None) -> Scenario:
    tracer_provider, exporter = provider()
    server = AsgiServer()
    request = server.caller(_ours_app(tracer_provider, metrics, server.app))

    def check(calls: int) -> None:
        _expect_child(exporter, calls)
        server.check_answered(request, RESPONSE_BODY, 1)
        _expect_ours(server)
        if metrics is not None:
            metrics.check(calls + 1)

    return Scenario(per_call(request), check, _closers(tracer_provider, metrics))


def asgi_ours() -> Scenario:
    return _asgi_ours(None)


def asgi_ours_metrics() -> Scenario:
    return _asgi_ours(Metrics())


def asgi_ours_record() -> Scenario:
    """Ours without metrics, and one SDK ``Histogram.record`` per request (see
    ``wsgi_ours_record``)."""
    return _with_record(_asgi_ours(None), calls_per_unit=1)


# --- ASGI, a streamed response ------------------------------------------------------------------

# Requests per run: a run of n chunks is this many responses of n / STREAM_REQUESTS chunks each.
STREAM_REQUESTS = 10


def _streaming(server: AsgiServer, app: ASGIApp) -> tuple[Callable[[int], int], Callable[[], None]]:
    """``run(n)``: STREAM_REQUESTS responses of n / STREAM_REQUESTS body messages each; and a
    check that a response's messages all came through."""
    request = server.caller(app)

    def run(n: int) -> int:
        chunks, rest = divmod(n, STREAM_REQUESTS)
        if rest or not chunks:
            raise ValueError(f"a run is a multiple of {STREAM_REQUESTS} chunks, not {n}")
        server.chunks = chunks
        for _ in range(STREAM_REQUESTS):
            request()
        return STREAM_REQUESTS

    def check_answered() -> None:
        server.chunks = 7
        server.check_answered(request, TOKEN, 7)

    return run, check_answered


def asgi_stream_bare() -> Scenario:
    server = AsgiServer()
    run, check_answered = _streaming(server, server.stream_app)
    return Scenario(run, lambda calls: check_answered(), nothing)


def asgi_stream_floor() -> Scenario:
    tracer_provider, exporter = provider()
    server = AsgiServer()
    tracer = tracer_provider.get_tracer("bench.floor")
    run, check_answered = _streaming(server, _floor_app(tracer, server.stream_app))

    def check(calls: int) -> None:
        _expect_child(exporter, calls)
        check_answered()

    return Scenario(run, check, tracer_provider.shutdown)


def asgi_stream_ours() -> Scenario:
    tracer_provider, exporter = provider()
    server = AsgiServer()
    run, check_answered = _streaming(server, _ours_app(tracer_provider, None, server.stream_app))

    def check(calls: int) -> None:
        _expect_child(exporter, calls)
        check_answered()
        _expect_ours(server)

    return Scenario(run, check, tracer_provider.shutdown)
