"""WSGIMiddleware in front of real Flask apps and bare WSGI apps, driven in-process."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import flask
import pytest
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
from werkzeug.test import Client

import sm_tracing
from sm_tracing import WSGIMiddleware
from tests._container_support import HEADER, caller, echoed, server_spans


def _flask_app(response_attributes: str | None = None, status: int = 200) -> flask.Flask:
    app = flask.Flask("wsgi_test")

    @app.route("/invocations", methods=["POST"])
    @app.route("/models/<name>/invoke", methods=["POST"])
    @app.route("/ping", methods=["GET"])
    @app.route("/other", methods=["POST"])
    def handler(name: str | None = None) -> Any:
        response = flask.jsonify(
            {
                "seen": flask.request.headers.get(HEADER),
                "current": f"{trace.get_current_span().get_span_context().span_id:016x}",
            }
        )
        response.status_code = status
        if response_attributes is not None:
            response.headers["x-amzn-sagemaker-custom-attributes"] = response_attributes
        return response

    return app


def _client(app: Any, tracer_provider: TracerProvider, **options: Any) -> Client:
    return Client(WSGIMiddleware(app, tracer_provider=tracer_provider, **options))


def test_flask_invocation_continues_the_callers_trace(
    tracer: Tracer, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """The span is a SERVER child of the caller's, current in the view, with HTTP and SageMaker
    attributes; the app sees the stripped value and the response echoes the span."""
    value, parent = caller(tracer, "accept_eula=true")
    exporter.clear()
    client = _client(_flask_app().wsgi_app, tracer_provider)
    response = client.post(
        "/invocations",
        buffered=True,
        headers={
            HEADER: value,
            "X-Amzn-SageMaker-Inference-Id": "inf-1",
            "X-Amzn-SageMaker-Session-Id": "sess-1",
        },
        json={},
    )
    (span,) = exporter.get_finished_spans()
    assert span.name == "POST /invocations"
    assert span.kind is SpanKind.SERVER
    assert span.context.trace_id == parent.trace_id
    assert span.parent is not None and span.parent.span_id == parent.span_id
    assert response.json == {"seen": "accept_eula=true", "current": f"{span.context.span_id:016x}"}
    assert dict(span.attributes or {}) == {
        "http.request.method": "POST",
        "url.path": "/invocations",
        "aws.sagemaker.inference_id": "inf-1",
        "aws.sagemaker.session_id": "sess-1",
        "http.response.status_code": 200,
    }
    assert echoed(response.headers[HEADER]).span_id == span.context.span_id
    assert span.status.status_code is StatusCode.UNSET


@pytest.mark.parametrize(
    ("sent", "seen"),
    [
        pytest.param(None, None, id="only-ours"),
        pytest.param("accept_eula=true", "accept_eula=true", id="jumpstart"),
        pytest.param("tfs-model-name=m", "tfs-model-name=m", id="tfs"),
    ],
)
def test_the_app_sees_customattributes_without_our_keys(
    tracer: Tracer, tracer_provider: TracerProvider, sent: str | None, seen: str | None
) -> None:
    """Our keys are removed from what the app reads; nothing left means no header at all."""
    value, _ = caller(tracer, sent)
    client = _client(_flask_app().wsgi_app, tracer_provider)
    response = client.post("/invocations", buffered=True, headers={HEADER.lower(): value}, json={})
    assert response.json is not None and response.json["seen"] == seen


def test_echo_is_merged_after_the_apps_own_header_in_any_case(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """The app's response CustomAttributes (lower-case name) is replaced by one header with the
    app's value first and our traceresponse after it."""
    client = _client(_flask_app("x-next-token=abc").wsgi_app, tracer_provider)
    response = client.post("/invocations", buffered=True, json={})
    values = response.headers.getlist(HEADER)
    assert len(values) == 1
    assert values[0].startswith("x-next-token=abc;traceresponse=00-")
    (span,) = exporter.get_finished_spans()
    assert echoed(values[0]).span_id == span.context.span_id


def test_echo_can_be_turned_off(tracer_provider: TracerProvider) -> None:
    """echo=False leaves the response header as the app set it."""
    client = _client(_flask_app("x-next-token=abc").wsgi_app, tracer_provider, echo=False)
    assert client.post("/invocations", buffered=True, json={}).headers[HEADER] == "x-next-token=abc"


def test_ping_is_not_traced_unless_asked(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """GET /ping and untraced paths make no span; trace_ping and paths= add them."""
    app = _flask_app().wsgi_app
    client = _client(app, tracer_provider)
    client.get("/ping", buffered=True)
    client.post("/other", buffered=True, json={})
    assert exporter.get_finished_spans() == ()
    client = _client(app, tracer_provider, trace_ping=True, paths=["/other"])
    client.get("/ping", buffered=True)
    client.post("/other", buffered=True, json={})
    assert [span.name for span in exporter.get_finished_spans()] == ["GET /ping", "POST /other"]


@pytest.mark.parametrize("header", [True, False], ids=["target-model-header", "path-only"])
def test_multi_model_invocations_are_traced_with_the_target_model(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter, header: bool
) -> None:
    """POST /models/{name}/invoke gets one span named after the route, with the model."""
    client = _client(_flask_app().wsgi_app, tracer_provider)
    headers = {"X-Amzn-SageMaker-Target-Model": "model-a.tar.gz"} if header else {}
    client.post("/models/model-a/invoke", buffered=True, headers=headers, json={})
    (span,) = exporter.get_finished_spans()
    assert span.name == "POST /models/{name}/invoke"
    assert (span.attributes or {})["aws.sagemaker.target_model"] == (
        "model-a.tar.gz" if header else "model-a"
    )
    assert (span.attributes or {})["url.path"] == "/models/model-a/invoke"


@pytest.mark.parametrize("status", [500, 503])
def test_a_5xx_response_sets_error(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter, status: int
) -> None:
    """A server-error status marks the span ERROR and is recorded."""
    _client(_flask_app(status=status).wsgi_app, tracer_provider).post(
        "/invocations", buffered=True, json={}
    )
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["http.response.status_code"] == status


def test_a_4xx_response_is_not_an_error(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A client error is the caller's problem: the status stays UNSET."""
    _client(_flask_app(status=400).wsgi_app, tracer_provider).post(
        "/invocations", buffered=True, json={}
    )
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.UNSET


class _ModelError(Exception):
    pass


def test_the_apps_exception_propagates_unchanged(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """An exception out of the WSGI app is the same object after the middleware, recorded on
    an ERROR span, and the context is detached."""
    error = _ModelError("boom")

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise error

    middleware = WSGIMiddleware(app, tracer_provider=tracer_provider)
    with pytest.raises(_ModelError) as raised:
        middleware({"REQUEST_METHOD": "POST", "PATH_INFO": "/invocations"}, lambda *a: None)
    assert raised.value is error
    assert trace.get_current_span() is trace.INVALID_SPAN
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert [event.name for event in span.events] == ["exception"]


class _Server:
    """Drives a WSGI app as a server does, one step at a time."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None):  # type: ignore[no-untyped-def]
        self.status = status
        self.headers = headers
        return lambda data: None

    def call(self, custom_attributes: str | None = None) -> Any:
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/invocations"}
        if custom_attributes is not None:
            environ["HTTP_X_AMZN_SAGEMAKER_CUSTOM_ATTRIBUTES"] = custom_attributes
        return self.app(environ, self.start_response)


def _streaming_app(events: list[str]) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body() -> Iterator[bytes]:
            try:
                for index in range(3):
                    events.append(f"{trace.get_current_span().get_span_context().span_id:016x}")
                    yield f"chunk {index}\n".encode()
            finally:
                events.append("closed")

        return body()

    return app


def test_a_streamed_body_is_traced_to_its_last_chunk(
    tracer: Tracer, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """The span ends when the body is exhausted, not when the app returns; the span is current
    while the body produces each chunk; the echo leaves with the status line."""
    value, parent = caller(tracer)
    exporter.clear()
    events: list[str] = []
    server = _Server(WSGIMiddleware(_streaming_app(events), tracer_provider=tracer_provider))
    body = server.call(value)
    assert exporter.get_finished_spans() == ()
    echo = dict(server.headers)[HEADER]
    chunks = list(body)
    (span,) = exporter.get_finished_spans()
    body.close()
    assert len(exporter.get_finished_spans()) == 1
    assert chunks == [b"chunk 0\n", b"chunk 1\n", b"chunk 2\n"]
    assert events == [f"{span.context.span_id:016x}"] * 3 + ["closed"]
    assert echoed(echo).span_id == span.context.span_id
    assert span.parent is not None and span.parent.span_id == parent.span_id
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_a_client_that_goes_away_ends_the_span_on_close(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A server that stops iterating and calls close() ends the span, without an error."""
    events: list[str] = []
    server = _Server(WSGIMiddleware(_streaming_app(events), tracer_provider=tracer_provider))
    body = server.call()
    assert next(iter(body)) == b"chunk 0\n"
    assert exporter.get_finished_spans() == ()
    body.close()
    (span,) = exporter.get_finished_spans()
    assert events[-1] == "closed"
    assert span.status.status_code is StatusCode.UNSET


def test_an_error_while_streaming_is_recorded_and_propagates(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A body that raises mid-stream ends the span with ERROR and the same exception."""
    error = _ModelError("mid-stream")

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"first"
        raise error

    server = _Server(WSGIMiddleware(app, tracer_provider=tracer_provider))
    body = server.call()
    with pytest.raises(_ModelError) as raised:
        list(body)
    assert raised.value is error
    body.close()
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR


def test_the_apps_header_list_is_not_mutated(tracer_provider: TracerProvider) -> None:
    """An app that reuses one header list between responses gets it back unchanged."""
    shared = [("Content-Type", "application/json")]

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", shared)
        return [b"{}"]

    server = _Server(WSGIMiddleware(app, tracer_provider=tracer_provider))
    for _ in range(2):
        server.call()
        assert [name for name, _ in server.headers] == ["Content-Type", HEADER]
    assert shared == [("Content-Type", "application/json")]


def test_under_the_upstream_wsgi_middleware_the_span_is_its_child(
    tracer: Tracer, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Behind opentelemetry-instrumentation-wsgi (which can't see the caller), ours continues
    the caller's trace: the outer span of another trace does not hide it."""
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

    value, parent = caller(tracer)
    exporter.clear()
    app = OpenTelemetryMiddleware(
        WSGIMiddleware(_flask_app().wsgi_app, tracer_provider=tracer_provider),
        tracer_provider=tracer_provider,
    )
    Client(app).post("/invocations", buffered=True, headers={HEADER: value}, json={})
    ours = next(s for s in exporter.get_finished_spans() if s.name == "POST /invocations")
    assert ours.context.trace_id == parent.trace_id
    assert ours.parent is not None and ours.parent.span_id == parent.span_id


@pytest.mark.parametrize("policy", ["link", "ignore"])
def test_the_remote_context_policy_applies(
    tracer: Tracer,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    monkeypatch: pytest.MonkeyPatch,
    policy: str,
) -> None:
    """SM_TRACING_REMOTE_CONTEXT, read when the middleware is built: "link" gives a new trace
    linked to the caller, "ignore" an unrelated root; the app still sees the stripped value."""
    value, parent = caller(tracer, "accept_eula=true")
    exporter.clear()
    monkeypatch.setenv("SM_TRACING_REMOTE_CONTEXT", policy)
    client = _client(_flask_app().wsgi_app, tracer_provider)
    response = client.post("/invocations", buffered=True, headers={HEADER: value}, json={})
    (span,) = exporter.get_finished_spans()
    assert span.parent is None
    assert span.context.trace_id != parent.trace_id
    linked = [link.context.span_id for link in span.links]
    assert linked == ([parent.span_id] if policy == "link" else [])
    assert response.json is not None and response.json["seen"] == "accept_eula=true"


# --- inject_headers: the app sees our span's context in its request headers ---------------------

TRACE_HEADERS = ("traceparent", "tracestate", "baggage")
# A traceparent of some other trace, as a local proxy or a direct caller might send.
STALE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _trace_app() -> flask.Flask:
    """A Flask app answering the trace headers it was given, the span current in the view, and
    how many headers named traceparent the WSGI environ holds."""
    app = flask.Flask("inject_test")

    @app.post("/invocations")
    def invocations() -> Any:
        headers = flask.request.headers
        current = trace.get_current_span().get_span_context()
        return {
            **{name: headers.get(name) for name in TRACE_HEADERS},
            "custom_attributes": headers.get(HEADER),
            "current": f"{current.span_id:016x}",
        }

    return app


def _traceparent(trace_id: int, span_id: int, flags: int) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"


def _post(client: Client, headers: dict[str, str]) -> dict[str, Any]:
    response = client.post("/invocations", buffered=True, headers=headers, json={})
    assert response.status_code == 200
    assert response.json is not None
    return response.json


@pytest.fixture
def no_inject_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No SM_TRACING_INJECT_HEADERS from the shell; set it through the returned monkeypatch."""
    monkeypatch.delenv("SM_TRACING_INJECT_HEADERS", raising=False)
    return monkeypatch


def test_inject_headers_gives_the_app_our_span_as_parent(
    tracer: Tracer, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """inject_headers=True: the app reads a traceparent with the caller's trace id and the
    container span's id and flags, beside CustomAttributes without our keys."""
    value, parent = caller(tracer, "accept_eula=true")
    exporter.clear()
    client = _client(_trace_app().wsgi_app, tracer_provider, inject_headers=True)
    seen = _post(client, {HEADER: value})
    (span,) = exporter.get_finished_spans()
    assert span.context.trace_id == parent.trace_id
    assert seen["traceparent"] == _traceparent(
        parent.trace_id, span.context.span_id, span.context.trace_flags
    )
    assert seen["current"] == f"{span.context.span_id:016x}"
    assert seen["custom_attributes"] == "accept_eula=true"


def test_an_incoming_traceparent_and_tracestate_are_replaced(
    tracer: Tracer, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A traceparent the request already had (any case) gives way to ours, and a tracestate of
    that other trace is not left beside it."""
    value, parent = caller(tracer)
    exporter.clear()
    client = _client(_trace_app().wsgi_app, tracer_provider, inject_headers=True)
    seen = _post(client, {HEADER: value, "TraceParent": STALE, "tracestate": "other=1"})
    (span,) = exporter.get_finished_spans()
    assert seen["traceparent"] == _traceparent(
        parent.trace_id, span.context.span_id, span.context.trace_flags
    )
    assert seen["tracestate"] is None


def test_injection_is_off_by_default(
    tracer: Tracer, tracer_provider: TracerProvider, no_inject_env: pytest.MonkeyPatch
) -> None:
    """Without the option or the variable, the app's trace headers are the ones sent."""
    value, _ = caller(tracer)
    client = _client(_trace_app().wsgi_app, tracer_provider)
    seen = _post(client, {HEADER: value, "traceparent": STALE})
    assert seen["traceparent"] == STALE
    assert _post(client, {HEADER: value})["traceparent"] is None


# What a caller under the trace below sends.
TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CALLER_SPAN_ID = 0x00F067AA0BA902B7
SENT = f"traceparent=00-{TRACE_ID:032x}-{CALLER_SPAN_ID:016x}-01"


def _injected(client: Client) -> list[str | None]:
    """The traceparent the app reads in two requests of the caller above, each checked to be
    in the caller's trace when there is one."""
    seen = [_post(client, {HEADER: SENT})["traceparent"] for _ in range(2)]
    for traceparent in seen:
        assert traceparent is None or traceparent.startswith(f"00-{TRACE_ID:032x}-")
    return seen


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ("true", "on"),
        (" YES ", "on"),
        ("1", "on"),
        ("On", "on"),
        ("false", "off"),
        ("0", "off"),
        ("no", "off"),
        ("OFF", "off"),
        ("", "off"),
        ("maybe", "warned"),
    ],
)
def test_inject_headers_from_the_environment(
    tracer_provider: TracerProvider,
    no_inject_env: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    env: str,
    expected: str,
) -> None:
    """SM_TRACING_INJECT_HEADERS, read once when the middleware is built, turns injection on
    or off in any case; an unknown value is warned about once and means off."""
    no_inject_env.setenv("SM_TRACING_INJECT_HEADERS", env)
    with caplog.at_level(logging.WARNING, logger="sm_tracing"):
        client = _client(_trace_app().wsgi_app, tracer_provider)
        seen = _injected(client)
    assert [value is not None for value in seen] == [expected == "on"] * 2
    warnings = [r for r in caplog.records if "SM_TRACING_INJECT_HEADERS" in r.getMessage()]
    assert len(warnings) == (1 if expected == "warned" else 0)


@pytest.mark.parametrize(("env", "argument"), [("true", False), ("false", True), ("maybe", True)])
def test_the_argument_wins_over_the_environment(
    tracer_provider: TracerProvider,
    no_inject_env: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    env: str,
    argument: bool,
) -> None:
    """inject_headers= decides whatever SM_TRACING_INJECT_HEADERS says, without reading it."""
    no_inject_env.setenv("SM_TRACING_INJECT_HEADERS", env)
    with caplog.at_level(logging.WARNING, logger="sm_tracing"):
        client = _client(_trace_app().wsgi_app, tracer_provider, inject_headers=argument)
        seen = _injected(client)
    assert [value is not None for value in seen] == [argument] * 2
    assert not [r for r in caplog.records if "SM_TRACING_INJECT_HEADERS" in r.getMessage()]


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
    client = _client(
        _trace_app().wsgi_app, tracer_provider, inject_headers=True, remote_context=policy
    )
    seen = _post(client, {HEADER: value})
    (span,) = exporter.get_finished_spans()
    assert span.context.trace_id != parent.trace_id
    assert seen["traceparent"] == _traceparent(
        span.context.trace_id, span.context.span_id, span.context.trace_flags
    )


def test_a_sampled_out_span_is_injected_with_flags_00(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A caller that sampled out (flags 00) gets a non-recording container span; the app still
    reads its context, flags 00, so it makes the same decision."""
    value = f"traceparent={_traceparent(TRACE_ID, CALLER_SPAN_ID, 0)}"
    client = _client(_trace_app().wsgi_app, tracer_provider, inject_headers=True)
    seen = _post(client, {HEADER: value})
    assert exporter.get_finished_spans() == ()
    assert seen["current"] != f"{CALLER_SPAN_ID:016x}"
    assert seen["traceparent"] == f"00-{TRACE_ID:032x}-{seen['current']}-00"


def test_nothing_is_written_for_an_invalid_span_context() -> None:
    """A tracer that makes no valid span (no SDK) writes nothing, not even the baggage the
    caller sent: the app's headers stay as they came."""
    context = baggage.set_baggage("user", "alice")
    value = sm_tracing.inject_context(None, context)
    assert value is not None and "baggage=" in value
    client = _client(_trace_app().wsgi_app, trace.NoOpTracerProvider(), inject_headers=True)
    seen = _post(client, {HEADER: value, "traceparent": STALE})
    assert seen["traceparent"] == STALE
    assert seen["baggage"] is None


def test_a_raising_propagator_leaves_the_headers_as_they_were(
    tracer: Tracer,
    tracer_provider: TracerProvider,
    raising_propagator: Callable[[], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A propagator that raises costs the app nothing: the request is served, its trace
    headers are the ones sent, and one warning says what went wrong."""
    value, _ = caller(tracer)
    raising_propagator()
    client = _client(_trace_app().wsgi_app, tracer_provider, inject_headers=True)
    with caplog.at_level(logging.WARNING, logger="sm_tracing"):
        seen = _post(client, {HEADER: value, "traceparent": STALE, "tracestate": "other=1"})
    assert (seen["traceparent"], seen["tracestate"]) == (STALE, "other=1")
    warnings = [r for r in caplog.records if "request headers" in r.getMessage()]
    assert len(warnings) == 1


def test_tracestate_and_baggage_are_forwarded(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """The composite propagator's tracestate and baggage, sent in CustomAttributes, reach the
    app next to our traceparent."""
    value, parent = _caller_with_state_and_baggage()
    client = _client(_trace_app().wsgi_app, tracer_provider, inject_headers=True)
    seen = _post(client, {HEADER: value})
    (span,) = exporter.get_finished_spans()
    assert span.parent is not None and span.parent.span_id == parent.span_id
    assert seen["traceparent"] == _traceparent(
        parent.trace_id, span.context.span_id, span.context.trace_flags
    )
    assert seen["tracestate"] == "vendor=value"
    assert seen["baggage"] == "user=alice"


def _caller_with_state_and_baggage() -> tuple[str, SpanContext]:
    """CustomAttributes from a caller whose span carries a tracestate, with baggage."""
    parent = SpanContext(
        TRACE_ID,
        CALLER_SPAN_ID,
        is_remote=False,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("vendor", "value")]),
    )
    context = baggage.set_baggage(
        "user", "alice", trace.set_span_in_context(NonRecordingSpan(parent))
    )
    value = sm_tracing.inject_context(None, context)
    assert value is not None and "tracestate=" in value and "baggage=" in value
    return value, parent


def test_the_upstream_wsgi_middleware_inside_ours_is_our_child(
    tracer: Tracer, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """opentelemetry-instrumentation-wsgi inside ours, which reads only a traceparent header,
    makes its server span a child of our container span in the caller's trace."""
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

    value, parent = caller(tracer)
    exporter.clear()
    inner = OpenTelemetryMiddleware(_trace_app().wsgi_app, tracer_provider=tracer_provider)
    _post(_client(inner, tracer_provider, inject_headers=True), {HEADER: value})
    spans = exporter.get_finished_spans()
    (ours,) = server_spans(spans)
    (theirs,) = [span for span in spans if span is not ours]
    assert ours.parent is not None and ours.parent.span_id == parent.span_id
    assert theirs.context.trace_id == parent.trace_id
    assert theirs.parent is not None and theirs.parent.span_id == ours.context.span_id
