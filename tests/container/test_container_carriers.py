"""The container's other carriers: the WebSocket query string of a bidirectional stream, and
the environment of a batch transform job's containers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from _container_support import (
    SPANS_ENV,
    caller,
    read_spans,
)
from _serving import launch, serving
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind, Tracer

import sm_tracing

PATH = "/invocations-bidirectional-stream"


def _traceparent(tracer: Tracer) -> tuple[str, SpanContext]:
    value, parent = caller(tracer)
    (pair,) = [token for token in value.split(";") if token.startswith("traceparent=")]
    return pair.partition("=")[2], parent


def _session(middleware: Any, path: str, query: bytes, frames: list[str]) -> list[Any]:
    """Run one WebSocket session in-process: the client sends *frames*, the app echoes each;
    what the app saw of the scope and every message sent to the client are returned."""
    incoming = [
        {"type": "websocket.connect"},
        *({"type": "websocket.receive", "text": frame} for frame in frames),
        {"type": "websocket.disconnect", "code": 1000},
    ]
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "path": path,
        "query_string": query,
        "headers": [(b"x-amzn-sagemaker-inference-id", b"inf-7")],
    }
    asyncio.run(middleware(scope, receive, send))
    return sent


def _echo_app(seen: list[Any], close: bool = True) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope["query_string"], trace.get_current_span().get_span_context()))
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": message["text"].upper()})
            if close and message["text"] == "bye":
                await send({"type": "websocket.close", "code": 1000})
                return

    return app


def test_a_session_is_one_span_in_the_callers_trace(
    tracer: Tracer, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """The session is one SERVER span, child of the caller's, current in the app, with the
    messages counted each way; the app sees the caller's own query parameters only."""
    traceparent, parent = _traceparent(tracer)
    exporter.clear()
    seen: list[Any] = []
    middleware = sm_tracing.ASGIMiddleware(_echo_app(seen), tracer_provider=tracer_provider)
    query = f"model=nova-3&language=en&traceparent={traceparent}".encode()
    sent = _session(middleware, PATH, query, ["hello", "world", "bye"])
    assert [m["text"] for m in sent if m["type"] == "websocket.send"] == ["HELLO", "WORLD", "BYE"]
    (span,) = exporter.get_finished_spans()
    assert span.kind is SpanKind.SERVER
    assert span.name == f"WS {PATH}"
    assert span.parent is not None and span.parent.span_id == parent.span_id
    assert span.context.trace_id == parent.trace_id
    assert seen == [(b"model=nova-3&language=en", span.context)]
    assert span.attributes is not None
    assert span.attributes["aws.sagemaker.stream.messages_received"] == 3
    assert span.attributes["aws.sagemaker.stream.messages_sent"] == 3
    assert span.attributes["websocket.close_code"] == 1000
    assert span.attributes["aws.sagemaker.inference_id"] == "inf-7"
    recorded = repr(dict(span.attributes))
    assert "nova-3" not in recorded and traceparent not in recorded


def test_a_client_disconnect_ends_the_session(
    tracer: Tracer, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Without a close from the app, the client's disconnect ends the span."""
    traceparent, _ = _traceparent(tracer)
    exporter.clear()
    seen: list[Any] = []
    middleware = sm_tracing.ASGIMiddleware(
        _echo_app(seen, close=False), tracer_provider=tracer_provider
    )
    _session(middleware, PATH, f"traceparent={traceparent}".encode(), ["a"])
    (span,) = exporter.get_finished_spans()
    assert seen[0][0] == b""
    assert span.attributes is not None
    assert span.attributes["aws.sagemaker.stream.messages_received"] == 1


@pytest.mark.parametrize(
    ("path", "options", "traced"),
    [
        ("/other-socket", {}, False),
        ("/my-stream", {"paths": ["/my-stream"]}, True),
    ],
)
def test_other_paths_pass_through_unless_named(
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    path: str,
    options: dict[str, Any],
    traced: bool,
) -> None:
    """A WebSocket on another path is the app's own, unless named in ``paths`` (a caller's
    ModelInvocationPath)."""
    seen: list[Any] = []
    middleware = sm_tracing.ASGIMiddleware(
        _echo_app(seen), tracer_provider=tracer_provider, **options
    )
    _session(middleware, path, b"a=1", ["bye"])
    assert len(exporter.get_finished_spans()) == int(traced)
    assert seen[0][0] == b"a=1"


def test_inject_headers_works_on_the_websocket_too(
    tracer: Tracer, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """With inject_headers the app's scope headers carry the session span as traceparent."""
    traceparent, _ = _traceparent(tracer)
    headers: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers.extend(scope["headers"])
        await receive()
        await send({"type": "websocket.close", "code": 1000})

    exporter.clear()
    middleware = sm_tracing.ASGIMiddleware(
        app, tracer_provider=tracer_provider, inject_headers=True
    )
    _session(middleware, PATH, f"traceparent={traceparent}".encode(), [])
    (span,) = exporter.get_finished_spans()
    written = dict(headers)[b"traceparent"].decode()
    assert written.split("-")[1:3] == [
        f"{span.context.trace_id:032x}",
        f"{span.context.span_id:016x}",
    ]


def test_under_uvicorn_a_websocket_session_joins_the_callers_trace(
    tracer: Tracer, tmp_path: Path
) -> None:
    """A real uvicorn WebSocket server and client: the session span is the caller's child and
    the app read the caller's own query parameters, percent-encoding intact."""
    websockets = pytest.importorskip("websockets.sync.client")
    traceparent, parent = _traceparent(tracer)
    spans = tmp_path / "spans.jsonl"
    container = launch(
        "uvicorn",
        "tests._container_support:websocket_app()",
        "websocket",
        tmp_path,
        env={SPANS_ENV: str(spans)},
    )
    own = f"model=nova-3&prompt={quote('a b&c', safe='')}"
    with serving(container):
        address = container.url.replace("http://", "ws://")
        url = f"{address}{PATH}?{own}&traceparent={traceparent}"
        with websockets.connect(url) as socket:
            assert socket.recv(timeout=10) == own
            socket.send("olleh")
            assert socket.recv(timeout=10) == "hello"
        (span,) = read_spans(spans, 1)
    assert span["kind"] == "SERVER"
    assert span["trace_id"] == f"{parent.trace_id:032x}"
    assert span["parent_span_id"] == f"{parent.span_id:016x}"
    assert span["attributes"]["aws.sagemaker.stream.messages_received"] == 1
    assert span["attributes"]["aws.sagemaker.stream.messages_sent"] == 2


# --- batch transform: the job's context in the environment ------------------------------------


@pytest.fixture
def job(
    tracer: Tracer, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> SpanContext:
    """A batch transform job's span, its TRACEPARENT in this process's environment as in the
    job's containers; the exporter emptied of it."""
    traceparent, context = _traceparent(tracer)
    monkeypatch.setenv("TRACEPARENT", traceparent)
    exporter.clear()
    return context


@pytest.mark.parametrize(("policy", "linked"), [("continue", False), ("link", True)])
def test_without_a_carrier_the_environment_gives_the_jobs_context(
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    job: SpanContext,
    policy: str,
    linked: bool,
) -> None:
    """A request with no CustomAttributes in a container whose environment has TRACEPARENT
    (a batch transform job's) is a child of the job's span, or a new trace linked to it."""
    with sm_tracing.continue_trace(
        None,
        tracer_provider=tracer_provider,
        remote_context=policy,  # type: ignore[arg-type]
    ):
        pass
    (span,) = exporter.get_finished_spans()
    if linked:
        assert span.parent is None
        assert [link.context.span_id for link in span.links] == [job.span_id]
    else:
        assert span.parent is not None and span.parent.span_id == job.span_id
        assert span.context.trace_id == job.trace_id


@pytest.mark.usefixtures("job")
def test_a_carrier_wins_over_the_environment(
    tracer: Tracer, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """CustomAttributes that carry a context are the parent, whatever the environment says."""
    value, parent = caller(tracer, clear=exporter)
    with sm_tracing.continue_trace(value, tracer_provider=tracer_provider):
        pass
    (span,) = exporter.get_finished_spans()
    assert span.parent is not None and span.parent.span_id == parent.span_id


@pytest.mark.usefixtures("job")
def test_ignore_leaves_the_environment_alone(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """remote_context="ignore" starts a root with no link, environment or not."""
    with sm_tracing.continue_trace(None, tracer_provider=tracer_provider, remote_context="ignore"):
        pass
    (span,) = exporter.get_finished_spans()
    assert span.parent is None and not span.links
