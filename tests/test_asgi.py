"""ASGIMiddleware in front of real FastAPI apps and raw ASGI apps, driven in-process."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse
from opentelemetry import baggage, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    Tracer,
    TraceState,
)

import sm_tracing
from sm_tracing import ASGIMiddleware
from tests._container_support import HEADER, caller, echoed, server_spans


def _fastapi_app(response_attributes: str | None = None, status: int = 200) -> FastAPI:
    app = FastAPI()

    async def handler(request: Request) -> Response:
        span_id = trace.get_current_span().get_span_context().span_id
        headers = {} if response_attributes is None else {HEADER.lower(): response_attributes}
        return Response(
            content=f'{{"seen": "{request.headers.get(HEADER)}", "current": "{span_id:016x}"}}',
            status_code=status,
            headers=headers,
        )

    for path in ("/invocations", "/models/{name}/invoke", "/other"):
        app.add_api_route(path, handler, methods=["POST"])
    app.add_api_route("/ping", handler, methods=["GET"])
    return app


def _request(app: Any, method: str, path: str, headers: dict[str, str] | None = None) -> Any:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://model") as client:
            return await client.request(method, path, headers=headers, content=b"{}")

    return asyncio.run(go())


def test_fastapi_invocation_continues_the_callers_trace(
    tracer: Tracer, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """The span is a SERVER child of the caller's, current in the endpoint, with HTTP and
    SageMaker attributes; the app sees the stripped value and the response echoes the span."""
    value, parent = caller(tracer, "accept_eula=true")
    exporter.clear()
    app = ASGIMiddleware(_fastapi_app(), tracer_provider=tracer_provider)
    response = _request(
        app,
        "POST",
        "/invocations",
        {HEADER: value, "X-Amzn-SageMaker-Inference-Id": "inf-1"},
    )
    (span,) = exporter.get_finished_spans()
    assert span.name == "POST /invocations"
    assert span.kind is SpanKind.SERVER
    assert span.context.trace_id == parent.trace_id
    assert span.parent is not None and span.parent.span_id == parent.span_id
    assert response.json() == {
        "seen": "accept_eula=true",
        "current": f"{span.context.span_id:016x}",
    }
    assert dict(span.attributes or {}) == {
        "http.request.method": "POST",
        "url.path": "/invocations",
        "aws.sagemaker.inference_id": "inf-1",
        "http.response.status_code": 200,
    }
    assert echoed(response.headers[HEADER]).span_id == span.context.span_id


def test_only_our_keys_means_no_header_for_the_app(
    tracer: Tracer, tracer_provider: TracerProvider
) -> None:
    """When nothing of the caller's is left, the app sees no CustomAttributes header at all."""
    value, _ = caller(tracer)
    app = ASGIMiddleware(_fastapi_app(), tracer_provider=tracer_provider)
    response = _request(app, "POST", "/invocations", {HEADER: value})
    assert response.json()["seen"] == "None"


def test_echo_is_merged_after_the_apps_own_header(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """One response CustomAttributes header: the app's value, then our traceresponse."""
    app = ASGIMiddleware(_fastapi_app("x-next-token=abc"), tracer_provider=tracer_provider)
    response = _request(app, "POST", "/invocations")
    values = response.headers.get_list(HEADER)
    assert len(values) == 1 and values[0].startswith("x-next-token=abc;traceresponse=00-")
    (span,) = exporter.get_finished_spans()
    assert echoed(values[0]).span_id == span.context.span_id


def test_ping_and_other_paths_are_not_traced_unless_asked(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """/ping and unknown paths make no span by default; trace_ping and paths= add them."""
    _request(ASGIMiddleware(_fastapi_app(), tracer_provider=tracer_provider), "GET", "/ping")
    assert exporter.get_finished_spans() == ()
    app = ASGIMiddleware(
        _fastapi_app(), tracer_provider=tracer_provider, trace_ping=True, paths=["/other"]
    )
    _request(app, "GET", "/ping")
    _request(app, "POST", "/other")
    assert [span.name for span in exporter.get_finished_spans()] == ["GET /ping", "POST /other"]


def test_multi_model_invocations_carry_the_target_model(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """/models/{name}/invoke is traced under the route name, with the target model header."""
    app = ASGIMiddleware(_fastapi_app(), tracer_provider=tracer_provider)
    _request(app, "POST", "/models/m1/invoke", {"X-Amzn-SageMaker-Target-Model": "m1.tar.gz"})
    (span,) = exporter.get_finished_spans()
    assert span.name == "POST /models/{name}/invoke"
    assert (span.attributes or {})["aws.sagemaker.target_model"] == "m1.tar.gz"


def test_a_5xx_response_sets_error(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A 503 from the app marks the span ERROR with the status recorded."""
    app = ASGIMiddleware(_fastapi_app(status=503), tracer_provider=tracer_provider)
    _request(app, "POST", "/invocations")
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["http.response.status_code"] == 503


class _ModelError(Exception):
    pass


def test_the_apps_exception_propagates_unchanged(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """The ASGI app's exception comes out as the same object, recorded on an ERROR span."""
    error = _ModelError("boom")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise error

    middleware = ASGIMiddleware(app, tracer_provider=tracer_provider)
    scope = {"type": "http", "method": "POST", "path": "/invocations", "headers": []}

    async def go() -> None:
        await middleware(scope, _receive_nothing, _drop)

    with pytest.raises(_ModelError) as raised:
        asyncio.run(go())
    assert raised.value is error
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR


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
    value, parent = caller(tracer)
    exporter.clear()
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
    middleware = ASGIMiddleware(_fastapi_app(), tracer_provider=provider)
    _request(middleware, "POST", "/invocations")
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


# --- inject_headers: the app sees our span's context in its request headers ---------------------

TRACE_HEADERS = ("traceparent", "tracestate", "baggage")
# A traceparent of some other trace, as a local proxy or a direct caller might send.
STALE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _trace_app() -> FastAPI:
    """A FastAPI app answering the trace headers it was given and the span current in it."""
    app = FastAPI()

    @app.post("/invocations")
    async def invocations(request: Request) -> dict[str, Any]:
        current = trace.get_current_span().get_span_context()
        return {
            **{name: request.headers.get(name) for name in TRACE_HEADERS},
            "custom_attributes": request.headers.get(HEADER),
            "current": f"{current.span_id:016x}",
        }

    return app


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


@pytest.fixture
def no_inject_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No SM_TRACING_INJECT_HEADERS from the shell; set it through the returned monkeypatch."""
    monkeypatch.delenv("SM_TRACING_INJECT_HEADERS", raising=False)
    return monkeypatch


def test_inject_headers_gives_the_app_our_span_as_parent(
    tracer: Tracer, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """inject_headers=True: the FastAPI app reads a traceparent with the caller's trace id and
    the container span's id, beside CustomAttributes without our keys."""
    value, parent = caller(tracer, "accept_eula=true")
    exporter.clear()
    app = ASGIMiddleware(_trace_app(), tracer_provider=tracer_provider, inject_headers=True)
    seen = _request(app, "POST", "/invocations", {HEADER: value}).json()
    (span,) = exporter.get_finished_spans()
    assert span.context.trace_id == parent.trace_id
    assert seen["traceparent"] == _traceparent(span)
    assert seen["current"] == f"{span.context.span_id:016x}"
    assert seen["custom_attributes"] == "accept_eula=true"


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
    value, parent = caller(tracer, mine)
    exporter.clear()
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


def test_nothing_is_written_for_an_invalid_span_context() -> None:
    """A tracer that makes no valid span (no SDK) writes nothing, not even the baggage the
    caller sent: the app gets the server's scope as it came."""
    value = sm_tracing.inject_context(None, baggage.set_baggage("user", "alice"))
    assert value is not None and "baggage=" in value
    app = _ScopeApp()
    middleware = ASGIMiddleware(
        app, tracer_provider=trace.NoOpTracerProvider(), inject_headers=True
    )
    headers = [(HEADER.lower().encode(), value.encode()), (b"traceparent", STALE.encode())]
    _call(middleware, headers)
    assert app.headers(b"traceparent") == [STALE.encode()]
    assert app.headers(b"baggage") == []


def test_injection_is_off_by_default(
    tracer: Tracer, tracer_provider: TracerProvider, no_inject_env: pytest.MonkeyPatch
) -> None:
    """Without the option or the variable, the app gets the server's scope and headers."""
    app = _ScopeApp()
    middleware = ASGIMiddleware(app, tracer_provider=tracer_provider)
    headers = [(b"traceparent", STALE.encode())]
    scope = _call(middleware, headers)
    assert app.scopes[0] is scope and scope["headers"] == [(b"traceparent", STALE.encode())]


@pytest.mark.parametrize(("env", "on"), [("TRUE", True), ("off", False), ("sometimes", False)])
def test_inject_headers_from_the_environment(
    tracer_provider: TracerProvider, no_inject_env: pytest.MonkeyPatch, env: str, on: bool
) -> None:
    """SM_TRACING_INJECT_HEADERS turns injection on for a middleware built with the app only,
    as a server's --middleware flag builds it; an unknown value means off."""
    no_inject_env.setenv("SM_TRACING_INJECT_HEADERS", env)
    app = _ScopeApp()
    _call(ASGIMiddleware(app, tracer_provider=tracer_provider), [])
    assert len(app.headers(b"traceparent")) == (1 if on else 0)


def test_the_argument_wins_over_the_environment(
    tracer_provider: TracerProvider, no_inject_env: pytest.MonkeyPatch
) -> None:
    """inject_headers=False keeps the headers as they came even with the variable on."""
    no_inject_env.setenv("SM_TRACING_INJECT_HEADERS", "true")
    app = _ScopeApp()
    _call(ASGIMiddleware(app, tracer_provider=tracer_provider, inject_headers=False), [])
    assert app.headers(b"traceparent") == []


@pytest.mark.parametrize("policy", ["link", "ignore"])
def test_under_link_and_ignore_the_app_is_still_our_child(
    tracer: Tracer,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    policy: Any,
) -> None:
    """Whatever the remote-context policy, the traceparent the app reads names our span, in
    our span's trace, not the caller's."""
    value, parent = caller(tracer)
    exporter.clear()
    app = ASGIMiddleware(
        _trace_app(), tracer_provider=tracer_provider, inject_headers=True, remote_context=policy
    )
    seen = _request(app, "POST", "/invocations", {HEADER: value}).json()
    (span,) = exporter.get_finished_spans()
    assert span.context.trace_id != parent.trace_id
    assert seen["traceparent"] == _traceparent(span)


def test_a_raising_propagator_leaves_the_headers_as_they_were(
    tracer: Tracer,
    tracer_provider: TracerProvider,
    raising_propagator: Callable[[], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A propagator that raises costs the app nothing: the request is served, its headers are
    the ones sent, and one warning says what went wrong."""
    value, _ = caller(tracer, "accept_eula=true")
    raising_propagator()
    app = ASGIMiddleware(_trace_app(), tracer_provider=tracer_provider, inject_headers=True)
    with caplog.at_level(logging.WARNING, logger="sm_tracing"):
        response = _request(app, "POST", "/invocations", {HEADER: value, "traceparent": STALE})
    assert response.status_code == 200
    seen = response.json()
    assert (seen["traceparent"], seen["custom_attributes"]) == (STALE, "accept_eula=true")
    assert len([r for r in caplog.records if "request headers" in r.getMessage()]) == 1


def test_tracestate_and_baggage_are_forwarded(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """The composite propagator's tracestate and baggage, sent in CustomAttributes, reach the
    app next to our traceparent."""
    parent = SpanContext(
        0x4BF92F3577B34DA6A3CE929D0E0E4736,
        0x00F067AA0BA902B7,
        is_remote=False,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("vendor", "value")]),
    )
    context = trace.set_span_in_context(NonRecordingSpan(parent))
    value = sm_tracing.inject_context(None, baggage.set_baggage("user", "alice", context))
    assert value is not None
    app = ASGIMiddleware(_trace_app(), tracer_provider=tracer_provider, inject_headers=True)
    seen = _request(app, "POST", "/invocations", {HEADER: value}).json()
    (span,) = exporter.get_finished_spans()
    assert span.parent is not None and span.parent.span_id == parent.span_id
    assert seen["traceparent"] == _traceparent(span)
    assert (seen["tracestate"], seen["baggage"]) == ("vendor=value", "user=alice")


def test_fastapis_own_request_span_is_our_child(
    tracer: Tracer, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """FastAPI's built-in request span, which takes its parent only from the request headers,
    is a child of our container span in the caller's trace."""
    if "telemetry" not in inspect.signature(FastAPI).parameters:
        pytest.skip("this FastAPI has no built-in tracing")
    value, parent = caller(tracer)
    exporter.clear()
    api = FastAPI(telemetry={"tracer_provider": tracer_provider, "operation_spans": False})

    @api.post("/invocations")
    async def invocations() -> dict[str, str]:
        return {}

    _request(
        ASGIMiddleware(api, tracer_provider=tracer_provider, inject_headers=True),
        "POST",
        "/invocations",
        {HEADER: value},
    )
    spans = exporter.get_finished_spans()
    (ours,) = server_spans(spans)
    (theirs,) = [span for span in spans if span is not ours]
    assert theirs.kind is SpanKind.SERVER
    assert ours.parent is not None and ours.parent.span_id == parent.span_id
    assert theirs.context.trace_id == parent.trace_id
    assert theirs.parent is not None and theirs.parent.span_id == ours.context.span_id
