"""The container side keeps its promises: the caller's CustomAttributes reach the app as they
were less only our keys, under every propagator OpenTelemetry ships; no payload or message
lands on a span; a failing span processor never breaks a request; a default FastAPI app gives
one trace per invocation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, Tracer

import sm_tracing
from sm_tracing import _propagation
from sm_tracing._attributes import environ_key
from tests._container_support import (
    ASGI,
    HEADER,
    SPANS_ENV,
    WSGI,
    Transport,
    caller,
    provider_from_env,
    read_spans,
    sampled_parent,
)
from tests._serving import launch, serving


@pytest.fixture(params=[WSGI, ASGI], ids=lambda transport: transport.name)
def transport(request: pytest.FixtureRequest) -> Transport:
    """WSGIMiddleware before Flask, then ASGIMiddleware before FastAPI."""
    chosen: Transport = request.param
    return chosen


# --- the caller's value, byte for byte ------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        '{"note": "a;baggage=b"}',
        '{"note": "a;traceparent=b", "x": 1}',
        "3f2b6c1e-8a4d-4c2b-9a77-2d1c5e6f7a80;tracestate=x",
        "a=1;justtext;baggage=k%3Dv",
        "my-api-name",
    ],
)
def test_a_value_no_merge_wrote_into_reaches_the_app_untouched(
    transport: Transport, tracer_provider: TracerProvider, value: str
) -> None:
    """JSON or text that only looks like it holds a pair of ours is the caller's, whole."""
    served = transport.serve(tracer_provider)
    assert served.answer({HEADER: value})["seen"] == value


def test_an_opaque_value_the_client_appended_to_gives_back_exactly_the_callers(
    transport: Transport, tracer: Tracer, tracer_provider: TracerProvider
) -> None:
    """With inject_opaque the client appends after ';': the app gets the JSON back whole and
    the span continues the caller's trace."""
    original = '{"note": "a;b=c", "n": 1}'
    with tracer.start_as_current_span("caller") as parent:
        merged, _ = _propagation.merge_context(original, opaque=True)
    assert merged is not None and merged.startswith(original + ";traceparent=")
    exporter = InMemorySpanExporter()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    served = transport.serve(tracer_provider)
    assert served.answer({HEADER: merged})["seen"] == original
    (span,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert span.context.trace_id == parent.get_span_context().trace_id


def _propagators() -> dict[str, Callable[[], TextMapPropagator]]:
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.propagators.aws import AwsXRayPropagator
    from opentelemetry.propagators.b3 import B3MultiFormat, B3SingleFormat
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.propagators.jaeger import JaegerPropagator
    from opentelemetry.propagators.ot_trace import OTTracePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    def with_baggage(propagator: TextMapPropagator) -> Callable[[], TextMapPropagator]:
        return lambda: CompositePropagator([propagator, W3CBaggagePropagator()])

    return {
        "tracecontext": with_baggage(TraceContextTextMapPropagator()),
        "b3": with_baggage(B3SingleFormat()),
        "b3multi": with_baggage(B3MultiFormat()),
        "jaeger": JaegerPropagator,
        "ottrace": OTTracePropagator,
        "xray": with_baggage(AwsXRayPropagator()),
    }


# Baggage each propagator carries itself (Jaeger's uberctx-*, OT's ot-baggage-*) or through W3C.
_BAGGAGE = {"user": "alice", "tier": "gold"}


@pytest.mark.parametrize("name", sorted(_propagators()))
def test_every_propagator_round_trips(
    transport: Transport,
    tracer: Tracer,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    global_propagator: None,
    name: str,
) -> None:
    """Under each propagator OpenTelemetry ships, the context and baggage the caller sent are
    extracted, and the app sees exactly the caller's own pairs."""
    propagate.set_global_textmap(_propagators()[name]())
    # Flags 01: OT's format reads any other value as "not sampled".
    context, parent = sampled_parent(
        0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, baggage_items=_BAGGAGE
    )
    sent = sm_tracing.inject_context("accept_eula=true;x-request=7", context)
    assert sent is not None and sent != "accept_eula=true;x-request=7"

    # OT's format carries the low 64 bits of the trace id only.
    trace_id = parent.trace_id
    if name == "ottrace":
        trace_id &= (1 << 64) - 1
    extracted = sm_tracing.extract_context(sent)
    assert trace.get_current_span(extracted).get_span_context().trace_id == trace_id
    assert dict(baggage.get_all(extracted)) == _BAGGAGE
    assert sm_tracing.strip_context(sent) == "accept_eula=true;x-request=7"

    exporter.clear()
    served = transport.serve(tracer_provider)
    assert served.answer({HEADER: sent})["seen"] == "accept_eula=true;x-request=7"
    (span,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert span.context.trace_id == trace_id
    assert span.parent is not None
    assert span.parent.span_id == parent.span_id


def test_duplicate_headers_each_keep_their_own_value(
    tracer: Tracer, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Two CustomAttributes headers: each reaches the ASGI app with its own value, less ours,
    and the first one's trace is continued."""
    sent, parent = caller(tracer, "a=1")
    seen: list[list[bytes]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append([v for k, v in scope["headers"] if k == HEADER.lower().encode()])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    middleware = sm_tracing.ASGIMiddleware(app, tracer_provider=tracer_provider)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/invocations",
        "headers": [
            (HEADER.lower().encode(), sent.encode()),
            (b"x-other", b"1"),
            (HEADER.lower().encode(), b"session=abc"),
        ],
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: Any) -> None:
        pass

    exporter.clear()
    asyncio.run(middleware(scope, receive, send))
    assert seen == [[b"a=1", b"session=abc"]]
    (span,) = exporter.get_finished_spans()
    assert span.parent is not None and span.parent.span_id == parent.span_id


# --- never a message, never a payload ---------------------------------------------------------


class _SecretError(RuntimeError):
    pass


SECRET = "body-secret-4711"


def _recorded(span: ReadableSpan) -> str:
    return repr(
        (
            dict(span.attributes or {}),
            [(e.name, dict(e.attributes or {})) for e in span.events],
            span.status.description,
        )
    )


@pytest.mark.parametrize("opt_in", [False, True])
def test_an_apps_exception_is_recorded_by_type_only(
    transport: Transport,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    monkeypatch: pytest.MonkeyPatch,
    opt_in: bool,
) -> None:
    """The app's exception propagates unchanged; the span has its type and ERROR, and its
    message only where the user opted in with SM_TRACING_RECORD_EXCEPTION_MESSAGES."""
    if opt_in:
        monkeypatch.setenv("SM_TRACING_RECORD_EXCEPTION_MESSAGES", "true")
    else:
        monkeypatch.delenv("SM_TRACING_RECORD_EXCEPTION_MESSAGES", raising=False)
    error = _SecretError(f"could not parse {SECRET}")
    served = transport.serve(tracer_provider, inner=transport.raising(error))
    with pytest.raises(_SecretError) as raised:
        served.post({HEADER: "a=1"})
    assert raised.value is error
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    (event,) = span.events
    assert event.attributes is not None
    assert event.attributes["exception.type"].endswith("test_promises._SecretError")
    assert (SECRET in _recorded(span)) is opt_in


def test_the_decorator_records_no_message_either(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """@trace_handler: the handler's exception by type, not by what it says."""

    @sm_tracing.trace_handler(tracer_provider=tracer_provider)
    def predict_fn(data: object, model: object) -> object:
        raise _SecretError(SECRET)

    with pytest.raises(_SecretError):
        predict_fn(b"{}", None)
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert SECRET not in _recorded(span)


# --- a span processor that fails on end ---------------------------------------------------------


class _FailingOnEnd(SpanProcessor):
    def __init__(self) -> None:
        self.ended = 0

    def on_end(self, span: ReadableSpan) -> None:
        self.ended += 1
        raise RuntimeError("the processor failed")


@pytest.fixture
def failing_provider() -> Iterator[tuple[TracerProvider, _FailingOnEnd]]:
    """A provider whose only span processor raises in on_end."""
    provider = TracerProvider()
    processor = _FailingOnEnd()
    provider.add_span_processor(processor)
    yield provider, processor
    provider.shutdown()


def test_a_processor_failing_on_end_never_breaks_a_request(
    transport: Transport,
    tracer: Tracer,
    failing_provider: tuple[TracerProvider, _FailingOnEnd],
) -> None:
    """The request is answered as if nothing happened; the span did end."""
    provider, processor = failing_provider
    sent, _ = caller(tracer, "a=1")
    served = transport.serve(provider)
    answer = served.answer({HEADER: sent})
    assert answer["seen"] == "a=1"
    assert processor.ended == 1


def test_a_processor_failing_on_end_never_breaks_a_decorated_handler(
    failing_provider: tuple[TracerProvider, _FailingOnEnd],
) -> None:
    """A decorated handler and continue_trace give their result through."""
    provider, processor = failing_provider

    @sm_tracing.trace_handler(tracer_provider=provider)
    def handler(data: int) -> int:
        return data + 1

    assert handler(1) == 2
    with sm_tracing.continue_trace(None, tracer_provider=provider):
        pass
    assert processor.ended == 2


# --- a default FastAPI app under uvicorn: one trace per invocation, no ping traces ----------


def default_fastapi_app() -> Any:
    """``ASGIMiddleware(FastAPI())`` as the README shows it, with FastAPI's built-in tracing on
    (the default) and a global SDK provider writing to the file named by SM_TRACING_TEST_SPANS.
    """
    from fastapi import FastAPI

    trace.set_tracer_provider(provider_from_env())
    api = FastAPI()

    @api.get("/ping")
    async def ping() -> dict[str, str]:
        return {}

    @api.post("/invocations")
    async def invocations() -> dict[str, str]:
        return {"ok": "yes"}

    return sm_tracing.ASGIMiddleware(api)


def _under_uvicorn(app: str, tmp_path: Path) -> tuple[Path, Any]:
    """*app* of this module under a real uvicorn, and the file its spans are written to."""
    spans = tmp_path / "spans.jsonl"
    container = launch(
        "uvicorn",
        f"tests.e2e.test_promises:{app}",
        "fastapi",
        tmp_path,
        env={SPANS_ENV: str(spans)},
    )
    return spans, container


def test_a_default_fastapi_app_gives_one_trace_per_invocation(
    tracer: Tracer, tmp_path: Path
) -> None:
    """Under a real uvicorn, with FastAPI's own tracing on: each invocation is one SERVER span
    in the caller's trace (no second one of the same name), and pings make no trace."""
    spans, container = _under_uvicorn("default_fastapi_app()", tmp_path)
    with serving(container):
        recorded_before = read_spans(spans, 0, timeout=0)
        for _ in range(3):
            assert httpx.get(container.url + "/ping", timeout=10).status_code == 200
        parents = []
        for _ in range(2):
            sent, parent = caller(tracer, "a=1")
            parents.append(parent)
            response = httpx.post(
                container.url + "/invocations", headers={HEADER: sent}, content=b"{}", timeout=10
            )
            assert response.status_code == 200
        recorded = read_spans(spans, 2)
        # Give anything extra the chance to show up before judging that it did not.
        recorded = read_spans(spans, len(recorded) + 1, timeout=1.0)
    # The readiness probe's own pings make no trace either.
    assert recorded_before == []
    assert [span["name"] for span in recorded] == ["POST /invocations"] * 2
    assert sorted(span["trace_id"] for span in recorded) == sorted(
        f"{parent.trace_id:032x}" for parent in parents
    )
    assert {span["kind"] for span in recorded} == {"SERVER"}


def default_fastapi_websocket_app() -> Any:
    """``ASGIMiddleware(FastAPI())`` serving a bidirectional stream's WebSocket, FastAPI's
    built-in tracing on, the handler making a span of its own per message."""
    from fastapi import FastAPI, WebSocket

    trace.set_tracer_provider(provider_from_env())
    api = FastAPI()
    tracer = trace.get_tracer("app")

    @api.get("/ping")
    async def ping() -> dict[str, str]:
        return {}

    async def stream(websocket: Any) -> None:
        await websocket.accept()
        async for text in websocket.iter_text():
            with tracer.start_as_current_span("answer"):
                await websocket.send_text(text.upper())

    # FastAPI finds the WebSocket parameter by its annotation, which must be the class itself.
    stream.__annotations__["websocket"] = WebSocket
    api.websocket("/invocations-bidirectional-stream")(stream)
    return sm_tracing.ASGIMiddleware(api)


def test_a_default_fastapi_websocket_session_stays_in_the_callers_trace(
    tracer: Tracer, tmp_path: Path
) -> None:
    """Under a real uvicorn, with FastAPI's own tracing on: a bidirectional stream's session is
    one SERVER span in the caller's trace, and the app's spans are its children, not the spans
    of a trace FastAPI would start for the session."""
    from websockets.sync.client import connect

    spans, container = _under_uvicorn("default_fastapi_websocket_app()", tmp_path)
    with serving(container):
        _, parent = caller(tracer)
        traceparent = f"00-{parent.trace_id:032x}-{parent.span_id:016x}-01"
        url = container.url.replace("http://", "ws://")
        with connect(
            f"{url}/invocations-bidirectional-stream?model=m&traceparent={traceparent}"
        ) as websocket:
            for text in ("a", "b"):
                websocket.send(text)
                assert websocket.recv(timeout=10) == text.upper()
        recorded = read_spans(spans, 3)
        recorded = read_spans(spans, len(recorded) + 1, timeout=1.0)
    sessions = [span for span in recorded if span["kind"] == "SERVER"]
    assert [span["name"] for span in sessions] == ["WS /invocations-bidirectional-stream"]
    session = sessions[0]
    assert session["trace_id"] == f"{parent.trace_id:032x}"
    answers = [span for span in recorded if span["name"] == "answer"]
    assert len(answers) == 2
    assert {span["trace_id"] for span in recorded} == {session["trace_id"]}
    assert {span["parent_span_id"] for span in answers} == {session["span_id"]}


# --- the container's time: until its response's headers leave -------------------------------

FIRST_CHUNK_DELAY = 0.3


def slow_first_chunk_app() -> Any:
    """A WSGI app that starts its response at once and takes FIRST_CHUNK_DELAY seconds to
    produce its first chunk, behind WSGIMiddleware."""
    import time

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body() -> Iterator[bytes]:
            time.sleep(FIRST_CHUNK_DELAY)
            yield b"first\n"
            yield b"second\n"

        return body()

    return sm_tracing.WSGIMiddleware(app)


def test_a_wsgi_streams_container_time_runs_to_its_first_chunk(tmp_path: Path) -> None:
    """Under a real gunicorn, which sends the headers with the body's first chunk: the echoed
    container time covers the wait for that chunk, so none of it is counted as SageMaker's."""
    container = launch(
        "gunicorn", "tests.e2e.test_promises:slow_first_chunk_app()", "slow", tmp_path
    )
    with serving(container):
        value = "a=1;traceparent=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        with httpx.stream(
            "POST", container.url + "/invocations", headers={HEADER: value}, timeout=10
        ) as response:
            echo = response.headers[HEADER]
            assert response.read() == b"first\nsecond\n"
    pairs = dict(pair.split("=", 1) for pair in echo.split(";"))
    assert set(pairs) == {"traceresponse", "sm-container-us"}
    assert pairs["traceresponse"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
    assert int(pairs["sm-container-us"]) >= FIRST_CHUNK_DELAY * 1e6


def test_a_wsgi_response_reaches_the_server_with_its_first_chunk() -> None:
    """In-process: the server gets the status and headers, echo included, when the body's first
    chunk is asked for, not when the app calls start_response."""
    given: list[tuple[str, list[tuple[str, str]]]] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter([b"", b"chunk"])

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        given.append((status, headers))
        return lambda data: None

    value = "traceparent=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/invocations", environ_key(HEADER): value}
    body = sm_tracing.WSGIMiddleware(app)(environ, start_response)
    assert given == []
    chunks = iter(body)
    assert next(chunks) == b""
    [(status, headers)] = given
    assert status == "200 OK"
    assert dict(headers)[HEADER].startswith("traceresponse=00-0af7651916cd43dd8448eb211c80319c-")
    assert list(chunks) == [b"chunk"]
    assert len(given) == 1


def test_an_asgi_response_without_headers_gets_the_echo_as_bytes() -> None:
    """An ASGI app may start its response with no headers at all: the echo joins them as a
    bytes pair, as ASGI servers require, not as text."""
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    value = b"traceparent=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/invocations",
        "headers": [(HEADER.lower().encode(), value)],
    }
    asyncio.run(sm_tracing.ASGIMiddleware(app)(scope, receive, send))
    start = sent[0]
    assert all(
        isinstance(name, bytes) and isinstance(field, bytes) for name, field in start["headers"]
    )
    [echo] = [field for name, field in start["headers"] if name == HEADER.lower().encode()]
    assert echo.startswith(b"traceresponse=00-0af7651916cd43dd8448eb211c80319c-")
    assert sent[1]["body"] == b"ok"


@pytest.mark.parametrize("name", ["WSGIMiddleware", "ASGIMiddleware"])
@pytest.mark.parametrize("app", [None, "app", 42])
def test_a_middleware_wraps_only_an_application(name: str, app: object) -> None:
    """Something that cannot be called is refused when the middleware is built, with a
    TypeError naming it, not on the first request."""
    with pytest.raises(TypeError, match=name):
        getattr(sm_tracing, name)(app)
