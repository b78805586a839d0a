"""What only ASGIMiddleware does: raw ASGI apps and FastAPI driven message by message, a
streamed response, a disconnect, lifespan and other scopes, the scope the app is handed, and
FastAPI's own request span. The cases both middlewares share are in test_middleware.py."""

from __future__ import annotations

import asyncio
import inspect
import types
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from _container_support import ASGI, HEADER, caller, echoed, server_spans
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, Tracer

from sm_tracing import ASGIMiddleware
from sm_tracing.container._private import fastapi_traces_itself

# A traceparent of some other trace, as a local proxy or a direct caller might send.
STALE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def no_inject_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No SM_TRACING_INJECT_HEADERS from the shell."""
    monkeypatch.delenv("SM_TRACING_INJECT_HEADERS", raising=False)
    yield monkeypatch


async def _receive_nothing() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def _request_then_wait() -> Any:
    """A receive channel: the request body once, then nothing until cancelled."""
    messages = [{"type": "http.request", "body": b"{}", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return receive


async def _drop(message: Any) -> None:
    pass


def _streaming_app() -> FastAPI:
    app = FastAPI()

    @app.post("/invocations")
    async def invocations() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for index in range(3):
                await asyncio.sleep(0)
                yield f"{index}".encode()

        return StreamingResponse(chunks(), headers={HEADER: "x-next-token=abc"})

    return app


def test_a_streamed_response_is_traced_to_its_last_chunk(
    tracer: Tracer, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """The echo is in http.response.start, before the first chunk; the span ends only after the
    last body message, and nothing of ours is left current."""
    value, parent = caller(tracer, clear=exporter)
    middleware = ASGIMiddleware(_streaming_app(), tracer_provider=tracer_provider)
    sent: list[tuple[str, int]] = []
    starts: list[Any] = []

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            starts.append(message)
        sent.append((message["type"], len(exporter.get_finished_spans())))

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/invocations",
        "query_string": b"",
        "headers": [(HEADER.lower().encode(), value.encode())],
    }
    asyncio.run(middleware(scope, _request_then_wait(), send))
    (span,) = exporter.get_finished_spans()
    assert span.parent is not None and span.parent.span_id == parent.span_id
    # No span ended while any message went out: the last body message precedes the end.
    assert [ended for _, ended in sent] == [0] * len(sent)
    assert sent[0][0] == "http.response.start" and sent[-1][0] == "http.response.body"
    headers = {key.decode().lower(): val.decode() for key, val in starts[0]["headers"]}
    assert headers[HEADER.lower()].startswith("x-next-token=abc;traceresponse=")
    assert echoed(headers[HEADER.lower()]).span_id == span.context.span_id
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_a_disconnect_ends_the_span(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """An http.disconnect the app receives ends the span there, without an error."""
    ended_at_disconnect: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        message = await receive()
        assert message["type"] == "http.disconnect"
        ended_at_disconnect.append(len(exporter.get_finished_spans()))

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    middleware = ASGIMiddleware(app, tracer_provider=tracer_provider)
    scope = {"type": "http", "method": "POST", "path": "/invocations", "headers": []}
    asyncio.run(middleware(scope, receive, _drop))
    assert ended_at_disconnect == [1]
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.UNSET


@pytest.mark.parametrize("kind", ["http", "websocket"])
def test_headers_given_as_any_iterable_are_read_once(
    tracer: Tracer, tracer_provider: TracerProvider, exporter: InMemorySpanExporter, kind: str
) -> None:
    """ASGI lets a server hand over, and an app send, headers as any iterable, a generator
    included: each is read once, the app gets every request header (CustomAttributes without
    our keys), the server every response header with the echo added."""
    value, parent = caller(tracer, "accept_eula=true", clear=exporter)
    seen: list[list[tuple[bytes, bytes]]] = []
    sent: list[Any] = []
    request = [(b"content-type", b"application/json"), (HEADER.lower().encode(), value.encode())]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(list(scope["headers"]))
        if kind == "websocket":
            await send({"type": "websocket.close", "code": 1000})
            return
        response = (pair for pair in [(b"content-type", b"text/plain")])
        await send({"type": "http.response.start", "status": 200, "headers": response})
        await send({"type": "http.response.body", "body": b"ok"})

    async def send(message: Any) -> None:
        sent.append(message)

    query = b"" if kind == "http" else value.replace(";", "&").encode()
    scope = {
        "type": kind,
        "method": "POST",
        "path": "/invocations",
        "query_string": query,
        "headers": (pair for pair in request),
    }
    middleware = ASGIMiddleware(app, tracer_provider=tracer_provider)
    asyncio.run(middleware(scope, _receive_nothing, send))
    (span,) = exporter.get_finished_spans()
    assert span.parent is not None and span.parent.span_id == parent.span_id
    expected = [(b"content-type", b"application/json")]
    if kind == "http":
        expected.append((HEADER.lower().encode(), b"accept_eula=true"))
    else:
        expected = request
    assert seen == [expected]
    if kind == "http":
        headers = dict(sent[0]["headers"])
        assert headers[b"content-type"] == b"text/plain"
        assert echoed(headers[HEADER.lower().encode()].decode()).span_id == span.context.span_id


def test_lifespan_and_websocket_scopes_pass_through(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Scopes other than http reach the app untouched and make no span."""
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)

    middleware = ASGIMiddleware(app, tracer_provider=tracer_provider)
    scope = {"type": "lifespan"}
    asyncio.run(middleware(scope, _receive_nothing, _drop))
    assert seen == [scope] and seen[0] is scope
    assert exporter.get_finished_spans() == ()


def test_lifespan_shutdown_flushes_the_provider_first(exporter: InMemorySpanExporter) -> None:
    """Spans a batch processor still holds are exported before the server hears
    lifespan.shutdown.complete (a SIGTERM'd server may never run atexit)."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=600_000))
    served = ASGI.serve(provider)
    assert served.post().status_code == 200
    middleware = served.app
    assert exporter.get_finished_spans() == ()
    exported_at: dict[str, int] = {}
    messages = [{"type": "lifespan.shutdown"}, {"type": "lifespan.startup"}]

    async def receive() -> dict[str, Any]:
        return messages.pop()

    async def send(message: Any) -> None:
        exported_at[message["type"]] = len(exporter.get_finished_spans())

    try:
        asyncio.run(middleware({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send))
    finally:
        provider.shutdown()
    assert exported_at == {"lifespan.startup.complete": 0, "lifespan.shutdown.complete": 1}


# --- inject_headers: the scope the app is handed --------------------------------------------


def _traceparent(span: Any) -> str:
    context = span.context
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


class _ScopeApp:
    """A raw ASGI app that keeps the scope it gets and answers 200."""

    def __init__(self) -> None:
        self.scopes: list[Any] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def headers(self, name: bytes) -> list[bytes]:
        """The values of the header *name* (any case) in the last scope."""
        return [value for key, value in self.scopes[-1]["headers"] if key.lower() == name]


def _call(middleware: ASGIMiddleware, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """Drive one POST /invocations with *headers*; the scope the server handed over."""
    scope = {"type": "http", "method": "POST", "path": "/invocations", "headers": headers}
    asyncio.run(middleware(scope, _receive_nothing, _drop))
    return scope


@pytest.mark.parametrize(
    ("carrier", "mine"),
    [(False, None), (True, None), (True, "accept_eula=true")],
    ids=["no-customattributes", "only-ours", "with-mine"],
)
def test_one_traceparent_and_the_servers_headers_untouched(
    tracer: Tracer,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    carrier: bool,
    mine: str | None,
) -> None:
    """Incoming traceparent headers (any case) and a stale tracestate give way to exactly one
    traceparent, ours; the app gets a copy of the scope, the server's list is not changed."""
    value, parent = caller(tracer, mine, clear=exporter)
    app = _ScopeApp()
    middleware = ASGIMiddleware(app, tracer_provider=tracer_provider, inject_headers=True)
    headers = [
        (b"traceparent", STALE.encode()),
        (b"Traceparent", STALE.encode()),
        (b"tracestate", b"other=1"),
        (b"content-type", b"application/json"),
    ]
    if carrier:
        headers.append((HEADER.lower().encode(), value.encode()))
    sent = list(headers)
    scope = _call(middleware, headers)
    (span,) = exporter.get_finished_spans()
    assert (span.context.trace_id == parent.trace_id) is carrier
    assert app.headers(b"traceparent") == [_traceparent(span).encode()]
    assert app.headers(b"tracestate") == []
    assert app.headers(b"content-type") == [b"application/json"]
    assert app.headers(HEADER.lower().encode()) == ([] if mine is None else [mine.encode()])
    assert app.scopes[0] is not scope
    assert scope["headers"] is headers and headers == sent


def test_without_injection_the_app_gets_the_servers_scope(
    tracer_provider: TracerProvider, no_inject_env: pytest.MonkeyPatch
) -> None:
    """Without the option or the variable, the app gets the server's scope and headers."""
    app = _ScopeApp()
    middleware = ASGIMiddleware(app, tracer_provider=tracer_provider)
    headers = [(b"traceparent", STALE.encode())]
    scope = _call(middleware, headers)
    assert app.scopes[0] is scope and scope["headers"] == [(b"traceparent", STALE.encode())]


def test_fastapis_own_request_span_is_our_child(
    tracer: Tracer, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """FastAPI's built-in request span, which takes its parent only from the request headers,
    is a child of our container span in the caller's trace."""
    if "telemetry" not in inspect.signature(FastAPI).parameters:
        pytest.skip("this FastAPI has no built-in tracing")
    value, parent = caller(tracer, clear=exporter)
    api = FastAPI(telemetry={"tracer_provider": tracer_provider, "operation_spans": False})

    @api.post("/invocations")
    async def invocations() -> dict[str, str]:
        return {}

    ASGI.serve(tracer_provider, inner=api, inject_headers=True).post({HEADER: value})
    spans = exporter.get_finished_spans()
    (ours,) = server_spans(spans)
    (theirs,) = [span for span in spans if span is not ours]
    assert theirs.kind is SpanKind.SERVER
    assert ours.parent is not None and ours.parent.span_id == parent.span_id
    assert theirs.context.trace_id == parent.trace_id
    assert theirs.parent is not None and theirs.parent.span_id == ours.context.span_id


def test_fastapis_own_tracing_is_recognised_through_what_wraps_it() -> None:
    """A FastAPI app is told apart by its public telemetry parameter, found through the
    middlewares that wrap it (their .app), and never in a plain ASGI app or a loop of them."""
    builtin = "telemetry" in inspect.signature(FastAPI).parameters
    api = FastAPI()
    wrapper = types.SimpleNamespace(app=types.SimpleNamespace(app=api))
    loop = types.SimpleNamespace()
    loop.app = loop
    assert fastapi_traces_itself(api) is builtin
    assert fastapi_traces_itself(wrapper) is builtin
    assert fastapi_traces_itself(_ScopeApp()) is False
    assert fastapi_traces_itself(loop) is False


@pytest.mark.parametrize("path", ["/invocations", "/ping"])
def test_fastapis_own_tracing_stands_aside_for_ours(
    tracer: Tracer,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    no_inject_env: pytest.MonkeyPatch,
    path: str,
) -> None:
    """With FastAPI's built-in tracing on and no injection, an invocation is our one span and
    /ping none: FastAPI's own request span, which would start a trace of its own, is not made."""
    value, _ = caller(tracer, clear=exporter)
    builtin = "telemetry" in inspect.signature(FastAPI).parameters
    api = FastAPI(telemetry={"tracer_provider": tracer_provider}) if builtin else FastAPI()

    @api.post("/invocations")
    async def invocations() -> dict[str, str]:
        return {}

    @api.get("/ping")
    async def ping() -> str:
        return ""

    served = ASGI.serve(tracer_provider, inner=api)
    response = served.request("POST" if path == "/invocations" else "GET", path, {HEADER: value})
    assert response.status_code == 200
    names = [span.name for span in exporter.get_finished_spans()]
    assert names == (["POST /invocations"] if path == "/invocations" else [])
