"""WSGIMiddleware in front of Flask and ASGIMiddleware in front of FastAPI, driven in-process
through httpx's WSGI and ASGI transports: every case here runs on both."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _container_support import (
    ASGI,
    HEADER,
    WSGI,
    Answer,
    Served,
    Transport,
    caller,
    echoed,
    sampled_parent,
    server_spans,
)
from opentelemetry import baggage, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, Tracer

import sm_tracing

# A traceparent of some other trace, as a local proxy or a direct caller might send.
STALE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
# What a caller under the trace below sends.
TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CALLER_SPAN_ID = 0x00F067AA0BA902B7
SENT = f"traceparent=00-{TRACE_ID:032x}-{CALLER_SPAN_ID:016x}-01"


@pytest.fixture(params=[WSGI, ASGI], ids=lambda transport: transport.name)
def transport(request: pytest.FixtureRequest) -> Transport:
    """Each interface in turn: WSGIMiddleware before Flask, ASGIMiddleware before FastAPI."""
    chosen: Transport = request.param
    return chosen


Serve = Callable[..., Served]


@pytest.fixture
def serve(transport: Transport, tracer_provider: TracerProvider) -> Serve:
    """``serve(answer=None, inner=None, **options)``: the app behind this interface's
    middleware, built with this test's tracer provider and *options*, and its client."""
    return functools.partial(transport.serve, tracer_provider)


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No SM_TRACING_INJECT_HEADERS or SM_TRACING_REMOTE_CONTEXT from the shell; set them
    through the returned monkeypatch."""
    monkeypatch.delenv("SM_TRACING_INJECT_HEADERS", raising=False)
    monkeypatch.delenv("SM_TRACING_REMOTE_CONTEXT", raising=False)
    yield monkeypatch


def _traceparent(trace_id: int, span_id: int, flags: int) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"


def _ours(span: Any, trace_id: int | None = None) -> list[str]:
    """The one traceparent naming *span* (in *trace_id*, by default its own) the app reads."""
    context = span.context
    trace_id = context.trace_id if trace_id is None else trace_id
    return [_traceparent(trace_id, context.span_id, context.trace_flags)]


def test_an_invocation_continues_the_callers_trace(
    serve: Serve, tracer: Tracer, exporter: InMemorySpanExporter
) -> None:
    """The span is a SERVER child of the caller's, current in the view, with HTTP and SageMaker
    attributes; the app sees the stripped value and the response echoes the span."""
    value, parent = caller(tracer, "accept_eula=true", clear=exporter)
    response = serve().post(
        {
            HEADER: value,
            "X-Amzn-SageMaker-Inference-Id": "inf-1",
            "X-Amzn-SageMaker-Session-Id": "sess-1",
        }
    )
    (span,) = exporter.get_finished_spans()
    assert span.name == "POST /invocations"
    assert span.kind is SpanKind.SERVER
    assert span.context.trace_id == parent.trace_id
    assert span.parent is not None and span.parent.span_id == parent.span_id
    assert response.json() == {
        "seen": "accept_eula=true",
        "current": f"{span.context.span_id:016x}",
        "traceparent": [],
        "tracestate": [],
        "baggage": [],
    }
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
    serve: Serve, tracer: Tracer, sent: str | None, seen: str | None
) -> None:
    """Our keys are removed from what the app reads; nothing left means no header at all."""
    value, _ = caller(tracer, sent)
    assert serve().answer({HEADER.lower(): value})["seen"] == seen


def test_echo_is_merged_after_the_apps_own_header_in_any_case(
    serve: Serve, exporter: InMemorySpanExporter
) -> None:
    """The app's response CustomAttributes (lower-case name) is replaced by one header with the
    app's value first and our traceresponse after it."""
    served = serve(Answer(custom_attributes="x-next-token=abc"))
    values = served.post().headers.get_list(HEADER)
    assert len(values) == 1
    assert values[0].startswith("x-next-token=abc;traceresponse=00-")
    (span,) = exporter.get_finished_spans()
    assert echoed(values[0]).span_id == span.context.span_id


def test_echo_can_be_turned_off(serve: Serve) -> None:
    """echo=False leaves the response header as the app set it."""
    served = serve(Answer(custom_attributes="x-next-token=abc"), echo=False)
    assert served.post().headers.get_list(HEADER) == ["x-next-token=abc"]


def test_ping_is_not_traced_unless_asked(
    transport: Transport, serve: Serve, exporter: InMemorySpanExporter
) -> None:
    """GET /ping and untraced paths make no span; trace_ping and paths= add them."""
    app = transport.framework(Answer())
    served = serve(inner=app)
    assert served.request("GET", "/ping").status_code == 200
    assert served.request("POST", "/other").status_code == 200
    assert exporter.get_finished_spans() == ()
    served = serve(inner=app, trace_ping=True, paths=["/other"])
    served.request("GET", "/ping")
    served.request("POST", "/other")
    assert [span.name for span in exporter.get_finished_spans()] == ["GET /ping", "POST /other"]


@pytest.mark.parametrize("header", [True, False], ids=["target-model-header", "path-only"])
def test_multi_model_invocations_are_traced_with_the_target_model(
    serve: Serve, exporter: InMemorySpanExporter, header: bool
) -> None:
    """POST /models/{name}/invoke gets one span named after the route, with the model."""
    headers = {"X-Amzn-SageMaker-Target-Model": "model-a.tar.gz"} if header else {}
    serve().request("POST", "/models/model-a/invoke", headers)
    (span,) = exporter.get_finished_spans()
    assert span.name == "POST /models/{name}/invoke"
    assert (span.attributes or {})["aws.sagemaker.target_model"] == (
        "model-a.tar.gz" if header else "model-a"
    )
    assert (span.attributes or {})["url.path"] == "/models/model-a/invoke"


@pytest.mark.parametrize("status", [500, 503])
def test_a_5xx_response_sets_error(
    serve: Serve, exporter: InMemorySpanExporter, status: int
) -> None:
    """A server-error status marks the span ERROR and is recorded."""
    assert serve(Answer(status)).post().status_code == status
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["http.response.status_code"] == status


def test_a_4xx_response_is_not_an_error(serve: Serve, exporter: InMemorySpanExporter) -> None:
    """A client error is the caller's problem: the status stays UNSET."""
    assert serve(Answer(400)).post().status_code == 400
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.UNSET


class _ModelError(Exception):
    pass


def test_the_apps_exception_propagates_unchanged(
    transport: Transport, serve: Serve, exporter: InMemorySpanExporter
) -> None:
    """An exception out of the app is the same object after the middleware, recorded on an
    ERROR span, and the context is detached."""
    error = _ModelError("boom")
    served = serve(inner=transport.raising(error))
    with pytest.raises(_ModelError) as raised:
        served.post()
    assert raised.value is error
    assert trace.get_current_span() is trace.INVALID_SPAN
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert [event.name for event in span.events] == ["exception"]


@pytest.mark.parametrize("policy", ["link", "ignore"])
def test_the_remote_context_policy_applies(
    serve: Serve,
    tracer: Tracer,
    exporter: InMemorySpanExporter,
    no_env: pytest.MonkeyPatch,
    policy: str,
) -> None:
    """SM_TRACING_REMOTE_CONTEXT, read when the middleware is built: "link" gives a new trace
    linked to the caller, "ignore" an unrelated root; the app still sees the stripped value."""
    value, parent = caller(tracer, "accept_eula=true", clear=exporter)
    no_env.setenv("SM_TRACING_REMOTE_CONTEXT", policy)
    seen = serve().answer({HEADER: value})
    (span,) = exporter.get_finished_spans()
    assert span.parent is None
    assert span.context.trace_id != parent.trace_id
    linked = [link.context.span_id for link in span.links]
    assert linked == ([parent.span_id] if policy == "link" else [])
    assert seen["seen"] == "accept_eula=true"


def test_under_the_upstream_middleware_the_span_is_its_child(
    transport: Transport,
    serve: Serve,
    tracer: Tracer,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    """Behind opentelemetry-instrumentation-wsgi or -asgi (which can't see the caller), ours
    continues the caller's trace: the outer span of another trace does not hide it."""
    value, parent = caller(tracer, clear=exporter)
    ours = serve().app
    Served(transport, transport.upstream(ours, tracer_provider)).answer({HEADER: value})
    (span,) = server_spans(exporter.get_finished_spans())
    assert span.name == "POST /invocations"
    assert span.context.trace_id == parent.trace_id
    assert span.parent is not None and span.parent.span_id == parent.span_id


# --- inject_headers: the app sees our span's context in its request headers ---------------------


def test_inject_headers_gives_the_app_our_span_as_parent(
    serve: Serve, tracer: Tracer, exporter: InMemorySpanExporter
) -> None:
    """inject_headers=True: the app reads one traceparent with the caller's trace id and the
    container span's id and flags, beside CustomAttributes without our keys."""
    value, parent = caller(tracer, "accept_eula=true", clear=exporter)
    seen = serve(inject_headers=True).answer({HEADER: value})
    (span,) = exporter.get_finished_spans()
    assert span.context.trace_id == parent.trace_id
    assert seen["traceparent"] == _ours(span, parent.trace_id)
    assert seen["current"] == f"{span.context.span_id:016x}"
    assert seen["seen"] == "accept_eula=true"


def test_an_incoming_traceparent_and_tracestate_are_replaced(
    serve: Serve, tracer: Tracer, exporter: InMemorySpanExporter
) -> None:
    """A traceparent the request already had (any case) gives way to ours, and a tracestate of
    that other trace is not left beside it."""
    value, parent = caller(tracer, clear=exporter)
    served = serve(inject_headers=True)
    seen = served.answer({HEADER: value, "TraceParent": STALE, "tracestate": "other=1"})
    (span,) = exporter.get_finished_spans()
    assert seen["traceparent"] == _ours(span, parent.trace_id)
    assert seen["tracestate"] == []


def test_injection_is_off_by_default(serve: Serve, tracer: Tracer) -> None:
    """Without the option or the variable, the app's trace headers are the ones sent."""
    value, _ = caller(tracer)
    served = serve()
    assert served.answer({HEADER: value, "traceparent": STALE})["traceparent"] == [STALE]
    assert served.answer({HEADER: value})["traceparent"] == []


def _injected(served: Served) -> list[bool]:
    """Whether the app read a traceparent in each of two requests of the caller above, each
    checked to be one value, in the caller's trace, when there is one."""
    seen = [served.answer({HEADER: SENT})["traceparent"] for _ in range(2)]
    for traceparents in seen:
        assert len(traceparents) <= 1
        assert all(value.startswith(f"00-{TRACE_ID:032x}-") for value in traceparents)
    return [bool(traceparents) for traceparents in seen]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ("true", "on"),
        (" YES ", "on"),
        ("1", "on"),
        ("On", "on"),
        ("TRUE", "on"),
        ("false", "off"),
        ("0", "off"),
        ("no", "off"),
        ("OFF", "off"),
        ("off", "off"),
        ("", "off"),
        ("maybe", "warned"),
        ("sometimes", "warned"),
    ],
)
def test_inject_headers_from_the_environment(
    serve: Serve,
    no_env: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    env: str,
    expected: str,
) -> None:
    """SM_TRACING_INJECT_HEADERS, read once when the middleware is built with the app only (as
    a server's --middleware flag builds it), turns injection on or off in any case; an unknown
    value is warned about once and means off."""
    no_env.setenv("SM_TRACING_INJECT_HEADERS", env)
    with caplog.at_level(logging.WARNING, logger="sm_tracing"):
        injected = _injected(serve())
    assert injected == [expected == "on"] * 2
    warnings = [r for r in caplog.records if "SM_TRACING_INJECT_HEADERS" in r.getMessage()]
    assert len(warnings) == (1 if expected == "warned" else 0)


@pytest.mark.parametrize(("env", "argument"), [("true", False), ("false", True), ("maybe", True)])
def test_the_argument_wins_over_the_environment(
    serve: Serve,
    no_env: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    env: str,
    argument: bool,
) -> None:
    """inject_headers= decides whatever SM_TRACING_INJECT_HEADERS says, without reading it."""
    no_env.setenv("SM_TRACING_INJECT_HEADERS", env)
    with caplog.at_level(logging.WARNING, logger="sm_tracing"):
        injected = _injected(serve(inject_headers=argument))
    assert injected == [argument] * 2
    assert not [r for r in caplog.records if "SM_TRACING_INJECT_HEADERS" in r.getMessage()]


@pytest.mark.parametrize("policy", ["link", "ignore"])
def test_under_link_and_ignore_the_app_is_still_our_child(
    serve: Serve, tracer: Tracer, exporter: InMemorySpanExporter, policy: Any
) -> None:
    """Whatever the remote-context policy, the traceparent the app reads names our span, in
    our span's trace, not the caller's."""
    value, parent = caller(tracer, clear=exporter)
    served = serve(inject_headers=True, remote_context=policy)
    seen = served.answer({HEADER: value})
    (span,) = exporter.get_finished_spans()
    assert span.context.trace_id != parent.trace_id
    assert seen["traceparent"] == _ours(span)


def test_a_sampled_out_span_is_injected_with_flags_00(
    serve: Serve, exporter: InMemorySpanExporter
) -> None:
    """A caller that sampled out (flags 00) gets a non-recording container span; the app still
    reads its context, flags 00, so it makes the same decision."""
    value = f"traceparent={_traceparent(TRACE_ID, CALLER_SPAN_ID, 0)}"
    seen = serve(inject_headers=True).answer({HEADER: value})
    assert exporter.get_finished_spans() == ()
    assert seen["current"] != f"{CALLER_SPAN_ID:016x}"
    assert seen["traceparent"] == [f"00-{TRACE_ID:032x}-{seen['current']}-00"]


def test_nothing_is_written_for_an_invalid_span_context(transport: Transport) -> None:
    """A tracer that makes no valid span (no SDK) writes nothing, not even the baggage the
    caller sent: the app's headers stay as they came."""
    value = sm_tracing.inject_context(None, baggage.set_baggage("user", "alice"))
    assert value is not None and "baggage=" in value
    served = transport.serve(trace.NoOpTracerProvider(), inject_headers=True)
    seen = served.answer({HEADER: value, "traceparent": STALE})
    assert seen["traceparent"] == [STALE]
    assert seen["baggage"] == []


def test_a_raising_propagator_leaves_the_headers_as_they_were(
    serve: Serve,
    tracer: Tracer,
    raising_propagator: Callable[[], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A propagator that raises costs the app nothing: the request is served, its trace
    headers are the ones sent, CustomAttributes the caller's own, and one warning says what
    went wrong."""
    value, _ = caller(tracer, "accept_eula=true")
    raising_propagator()
    served = serve(inject_headers=True)
    with caplog.at_level(logging.WARNING, logger="sm_tracing"):
        seen = served.answer({HEADER: value, "traceparent": STALE, "tracestate": "other=1"})
    assert (seen["traceparent"], seen["tracestate"]) == ([STALE], ["other=1"])
    assert seen["seen"] == "accept_eula=true"
    warnings = [r for r in caplog.records if "request headers" in r.getMessage()]
    assert len(warnings) == 1


def test_tracestate_and_baggage_are_forwarded(serve: Serve, exporter: InMemorySpanExporter) -> None:
    """The composite propagator's tracestate and baggage, sent in CustomAttributes, reach the
    app next to our traceparent."""
    context, parent = sampled_parent(
        TRACE_ID,
        CALLER_SPAN_ID,
        remote=False,
        trace_state=[("vendor", "value")],
        baggage_items={"user": "alice"},
    )
    value = sm_tracing.inject_context(None, context)
    assert value is not None and "tracestate=" in value and "baggage=" in value
    seen = serve(inject_headers=True).answer({HEADER: value})
    (span,) = exporter.get_finished_spans()
    assert span.parent is not None and span.parent.span_id == parent.span_id
    assert seen["traceparent"] == _ours(span, parent.trace_id)
    assert (seen["tracestate"], seen["baggage"]) == (["vendor=value"], ["user=alice"])


def test_the_upstream_middleware_inside_ours_is_our_child(
    transport: Transport,
    serve: Serve,
    tracer: Tracer,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    """opentelemetry-instrumentation-wsgi or -asgi inside ours, which reads only a traceparent
    header, makes its span a child of our container span in the caller's trace."""
    value, parent = caller(tracer, clear=exporter)
    inner = transport.upstream(transport.framework(Answer()), tracer_provider)
    serve(inner=inner, inject_headers=True).answer({HEADER: value})
    spans = exporter.get_finished_spans()
    (ours,) = server_spans(spans)
    (theirs,) = [span for span in spans if span is not ours]
    assert ours.parent is not None and ours.parent.span_id == parent.span_id
    assert theirs.context.trace_id == parent.trace_id
    assert theirs.parent is not None and theirs.parent.span_id == ours.context.span_id
