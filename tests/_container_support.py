"""What the container-side tests share: a caller's context, the WSGI and ASGI middlewares in front
of Flask and FastAPI driven in-process, spans written to a file by a server process, apps served
by real gunicorn and uvicorn, and DJL-shaped Input/Output."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from opentelemetry import baggage, propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    TraceFlags,
    Tracer,
    TraceState,
)

import sm_tracing

HEADER = "X-Amzn-SageMaker-Custom-Attributes"
SPANS_ENV = "SM_TRACING_TEST_SPANS"
_TRACERESPONSE = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def caller(
    tracer: Tracer, value: str | None = None, *, clear: InMemorySpanExporter | None = None
) -> tuple[str, SpanContext]:
    """CustomAttributes as a caller under its own span sends them, and that span's context;
    the exporter *clear*, when given, is emptied afterwards, so that a test reads only the
    spans made from then on."""
    with tracer.start_as_current_span("caller") as span:
        merged = sm_tracing.inject_context(value)
    assert merged is not None and "traceparent=" in merged
    if clear is not None:
        clear.clear()
    return merged, span.get_span_context()


def sampled_parent(
    trace_id: int,
    span_id: int,
    *,
    remote: bool = True,
    trace_state: Sequence[tuple[str, str]] = (),
    baggage_items: Mapping[str, str] | None = None,
) -> tuple[Context, SpanContext]:
    """A context whose current span is a sampled parent of these ids (with *trace_state*),
    carrying *baggage_items*; and the parent's span context."""
    parent = SpanContext(
        trace_id,
        span_id,
        is_remote=remote,
        trace_flags=TraceFlags(1),
        trace_state=TraceState(list(trace_state)),
    )
    context = trace.set_span_in_context(NonRecordingSpan(parent))
    for key, value in (baggage_items or {}).items():
        context = baggage.set_baggage(key, value, context)
    return context, parent


def echoed(value: str | None) -> SpanContext:
    """The span context a response's CustomAttributes echo as ``traceresponse``, read here from
    the W3C format rather than by the library under test."""
    assert value is not None
    pairs = dict(token.split("=", 1) for token in value.replace(",", ";").split(";") if token)
    match = _TRACERESPONSE.fullmatch(pairs["traceresponse"].strip())
    assert match is not None, value
    trace_id, span_id, flags = (int(group, 16) for group in match.groups())
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))


def server_spans(spans: Sequence[ReadableSpan]) -> list[ReadableSpan]:
    """The spans this library's tracer made."""
    return [
        span
        for span in spans
        if span.instrumentation_scope is not None
        and span.instrumentation_scope.name == "sm_tracing"
    ]


# --- the middlewares in front of Flask and FastAPI, driven in-process through httpx -----------

TRACE_HEADERS = ("traceparent", "tracestate", "baggage")
# The routes of the apps below: SageMaker's, the multi-model one, and one of the app's own.
POST_ROUTES = ("/invocations", "/models/{name}/invoke", "/other")


@dataclass(frozen=True)
class Answer:
    """How the app answers: its status and the response CustomAttributes it sets (under a
    lower-case name)."""

    status: int = 200
    custom_attributes: str | None = None


def answer_body(headers: Any) -> dict[str, Any]:
    """What the app answers: the CustomAttributes it read, the span current in it, and every
    value of each trace header it was given."""
    current = trace.get_current_span().get_span_context()
    return {
        "seen": headers.get(HEADER),
        "current": f"{current.span_id:016x}",
        **{name: headers.getlist(name) for name in TRACE_HEADERS},
    }


def flask_wsgi_app(answer: Answer) -> Any:
    """A Flask app on :data:`POST_ROUTES` and ``GET /ping``, as its WSGI callable."""
    import flask

    app = flask.Flask("middleware_test")

    def view(name: str | None = None) -> flask.Response:
        response = flask.jsonify(answer_body(flask.request.headers))
        response.status_code = answer.status
        if answer.custom_attributes is not None:
            response.headers[HEADER.lower()] = answer.custom_attributes
        return response

    for path in POST_ROUTES:
        rule = path.replace("{", "<").replace("}", ">")
        app.add_url_rule(rule, path, view, methods=["POST"])
    app.add_url_rule("/ping", "/ping", view, methods=["GET"])
    return app.wsgi_app


def fastapi_asgi_app(answer: Answer) -> Any:
    """A FastAPI app on :data:`POST_ROUTES` and ``GET /ping``."""
    from fastapi import FastAPI, Request, Response

    app = FastAPI()

    async def view(request: Request) -> Response:
        headers = {}
        if answer.custom_attributes is not None:
            headers[HEADER.lower()] = answer.custom_attributes
        return Response(
            json.dumps(answer_body(request.headers)),
            status_code=answer.status,
            headers=headers,
            media_type="application/json",
        )

    # The annotations are strings here (postponed evaluation) and Request is local.
    view.__annotations__["request"] = Request
    for path in POST_ROUTES:
        app.add_api_route(path, view, methods=["POST"])
    app.add_api_route("/ping", view, methods=["GET"])
    return app


Headers = Mapping[str, str] | Sequence[tuple[str, str]]


def _send_wsgi(app: Any, method: str, path: str, headers: Headers | None) -> httpx.Response:
    transport = httpx.WSGITransport(app=app)
    with httpx.Client(transport=transport, base_url="http://model") as client:
        return client.request(method, path, headers=headers, content=b"{}")


def _send_asgi(app: Any, method: str, path: str, headers: Headers | None) -> httpx.Response:
    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://model") as client:
            return await client.request(method, path, headers=headers, content=b"{}")

    return asyncio.run(send())


def _upstream_wsgi(app: Any, tracer_provider: TracerProvider) -> Any:
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

    return OpenTelemetryMiddleware(app, tracer_provider=tracer_provider)


def _upstream_asgi(app: Any, tracer_provider: TracerProvider) -> Any:
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    # One server span, as the WSGI one makes, without a span per message.
    return OpenTelemetryMiddleware(
        app, tracer_provider=tracer_provider, exclude_spans=["receive", "send"]
    )


@dataclass(frozen=True)
class Transport:
    """One of the two interfaces: its middleware, the framework app behind it, the upstream
    OpenTelemetry middleware of the same interface, how httpx drives an app over it, and a bare
    app that raises a given exception."""

    name: str
    middleware_name: str
    framework: Callable[[Answer], Any]
    upstream: Callable[[Any, TracerProvider], Any]
    send: Callable[[Any, str, str, Headers | None], httpx.Response]
    raising: Callable[[Exception], Any]

    def serve(
        self,
        tracer_provider: trace.TracerProvider,
        answer: Answer | None = None,
        *,
        inner: Any = None,
        **options: Any,
    ) -> Served:
        """The framework app answering *answer* (or *inner*) behind the middleware built with
        *tracer_provider* and *options*, and a client for it."""
        app = self.framework(answer or Answer()) if inner is None else inner
        return Served(self, self.middleware(app, tracer_provider=tracer_provider, **options))

    @property
    def middleware(self) -> Any:
        """``sm_tracing.WSGIMiddleware`` or ``sm_tracing.ASGIMiddleware``."""
        return getattr(sm_tracing, self.middleware_name)


@dataclass(frozen=True)
class Served:
    """An app as a server would run it, and a client calling it in-process."""

    transport: Transport
    app: Any

    def request(self, method: str, path: str, headers: Headers | None = None) -> httpx.Response:
        return self.transport.send(self.app, method, path, headers)

    def post(self, headers: Headers | None = None) -> httpx.Response:
        """``POST /invocations`` with *headers*."""
        return self.request("POST", "/invocations", headers)

    def answer(self, headers: Headers | None = None) -> dict[str, Any]:
        """What the app answered ``POST /invocations`` with *headers*, checked to be a 200."""
        response = self.post(headers)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result


def _raising_wsgi(error: Exception) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise error

    return app


def _raising_asgi(error: Exception) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise error

    return app


WSGI = Transport(
    "wsgi", "WSGIMiddleware", flask_wsgi_app, _upstream_wsgi, _send_wsgi, _raising_wsgi
)
ASGI = Transport(
    "asgi", "ASGIMiddleware", fastapi_asgi_app, _upstream_asgi, _send_asgi, _raising_asgi
)


# --- a server process's spans ----------------------------------------------------------------


class JsonLinesExporter(SpanExporter):
    """Writes each span as a JSON line, for a test in another process to read."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = []
        for span in spans:
            parent = span.parent
            lines.append(
                json.dumps(
                    {
                        "name": span.name,
                        "kind": span.kind.name,
                        "trace_id": f"{span.context.trace_id:032x}",
                        "span_id": f"{span.context.span_id:016x}",
                        "parent_span_id": None if parent is None else f"{parent.span_id:016x}",
                        "status": span.status.status_code.name,
                        "attributes": dict(span.attributes or {}),
                    }
                )
            )
        with self._lock, open(self._path, "a", encoding="utf-8") as file:
            file.write("".join(line + "\n" for line in lines))
        return SpanExportResult.SUCCESS


def provider_from_env() -> TracerProvider:
    """A TracerProvider exporting to the file named by ``SM_TRACING_TEST_SPANS``."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(os.environ[SPANS_ENV])))
    return provider


def read_spans(path: Path, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The first *count* spans a server wrote to *path*, waiting for them a little."""
    deadline = time.monotonic() + timeout
    while True:
        spans = []
        if path.exists():
            spans = [json.loads(line) for line in path.read_text().splitlines() if line]
        if len(spans) >= count or time.monotonic() > deadline:
            return spans
        time.sleep(0.02)


# --- apps served by real servers ---------------------------------------------------------------


def flask_app() -> Any:
    """A Flask model server behind WSGIMiddleware: answers what CustomAttributes it saw and
    sets a response CustomAttributes of its own."""
    import flask

    app = flask.Flask("container_test")

    @app.post("/invocations")
    def invocations() -> Any:
        seen = flask.request.headers.get(HEADER)
        response = flask.jsonify({"seen": seen})
        response.headers[HEADER] = "x-next-token=abc"
        return response

    @app.get("/ping")
    def ping() -> str:
        return ""

    app.wsgi_app = sm_tracing.WSGIMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, tracer_provider=provider_from_env()
    )
    return app


def fastapi_app() -> Any:
    """A FastAPI model server behind ASGIMiddleware, streaming its answer in chunks."""
    from fastapi import FastAPI, Request
    from fastapi.responses import StreamingResponse

    app = FastAPI()

    async def invocations(request: Request) -> StreamingResponse:
        seen = request.headers.get(HEADER)

        async def chunks() -> Any:
            yield json.dumps({"seen": seen}).encode()
            yield b"\n"

        return StreamingResponse(chunks(), headers={HEADER: "x-next-token=abc"})

    # The annotations are strings here (postponed evaluation) and Request is local.
    invocations.__annotations__["request"] = Request
    app.post("/invocations")(invocations)

    @app.get("/ping")
    async def ping() -> str:
        return ""

    return sm_tracing.ASGIMiddleware(app, tracer_provider=provider_from_env())


# --- DJL Serving's Input and Output, shaped like djl_python's (not on PyPI) ---------------------


class DJLInput:
    """Like ``djl_python.inputs.Input``: properties (request headers and the CustomAttributes
    pairs DJL splits on ``;``), ``batch_XXX_`` prefixed in a batch."""

    def __init__(self, properties: dict[str, str] | None = None) -> None:
        self.properties: dict[str, str] = dict(properties or {})
        self.content: dict[str, bytes] = {}

    def is_batch(self) -> bool:
        return "batch_size" in self.properties

    def get_batch_size(self) -> int:
        return int(self.properties.get("batch_size", "1"))

    def get_batches(self) -> list[DJLInput]:
        if not self.is_batch():
            return [self]
        batch = [DJLInput() for _ in range(self.get_batch_size())]
        for key, value in self.properties.items():
            if key.startswith("batch_") and key != "batch_size":
                batch[int(key[6:9])].properties[key[10:]] = value
        return batch

    def get_properties(self) -> dict[str, str]:
        return self.properties

    def get_property(self, key: str) -> str | None:
        return next((v for k, v in self.properties.items() if k.lower() == key.lower()), None)


class DJLOutput:
    """Like ``djl_python.outputs.Output``: a code, properties (response headers), content."""

    def __init__(self, code: int = 200, message: str = "OK") -> None:
        self.code = code
        self.message = message
        self.properties: dict[str, str] = {}
        self.content: list[Any] = []

    def add_property(self, key: str, val: str) -> DJLOutput:
        self.properties[key] = val
        return self

    def add(self, value: Any, key: str | None = None) -> DJLOutput:
        self.content.append((key, value))
        return self


def djl_properties(custom_attributes: str) -> dict[str, str]:
    """The properties DJL Serving makes of a CustomAttributes value: split on ``;``, each
    token on its first ``=``."""
    properties = {}
    for token in custom_attributes.split(";"):
        key, sign, value = token.partition("=")
        if sign:
            properties[key.strip()] = value.strip()
    return properties


def injecting_flask_app() -> Any:
    """A Flask app whose view starts its own SERVER span from the request's headers, behind a
    WSGIMiddleware built with the app only (SM_TRACING_INJECT_HEADERS decides)."""
    import flask

    import sm_tracing

    provider = provider_from_env()
    tracer = provider.get_tracer("app")
    app = flask.Flask("injecting_test")

    @app.post("/invocations")
    def invocations() -> Any:
        parent = propagate.extract(flask.request.headers)
        with tracer.start_as_current_span("app handler", context=parent, kind=SpanKind.SERVER):
            return {"traceparent": flask.request.headers.get("traceparent")}

    @app.get("/ping")
    def ping() -> str:
        return ""

    app.wsgi_app = sm_tracing.WSGIMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, tracer_provider=provider
    )
    return app


def injecting_fastapi_app() -> Any:
    """A FastAPI app traced by FastAPI itself (its built-in request span, which reads only the
    request headers), or where this FastAPI has none, by its route from the request headers,
    behind an ASGIMiddleware built with the app only but for the provider."""
    from fastapi import FastAPI, Request

    import sm_tracing

    provider = provider_from_env()
    builtin = "telemetry" in inspect.signature(FastAPI).parameters
    api = FastAPI(telemetry={"tracer_provider": provider}) if builtin else FastAPI()
    tracer = provider.get_tracer("app")

    async def invocations(request: Request) -> dict[str, str | None]:
        if not builtin:
            parent = propagate.extract(request.headers)
            with tracer.start_as_current_span("app handler", context=parent, kind=SpanKind.SERVER):
                pass
        return {"traceparent": request.headers.get("traceparent")}

    # The annotations are strings here (postponed evaluation) and Request is local.
    invocations.__annotations__["request"] = Request
    api.post("/invocations")(invocations)

    @api.get("/ping")
    async def ping() -> str:
        return ""

    return sm_tracing.ASGIMiddleware(api, tracer_provider=provider)


def websocket_app() -> Any:
    """An echo WebSocket container behind ASGIMiddleware, exporting to SM_TRACING_TEST_SPANS."""
    provider = provider_from_env()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] == "http":  # the readiness probe's GET /ping
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": scope["query_string"].decode()})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": message["text"][::-1]})

    return sm_tracing.ASGIMiddleware(app, tracer_provider=provider)
