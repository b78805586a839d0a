"""Faults: a propagator that raises, a tracer provider that raises, an exporter that fails,
raises or hangs, and an OTLP collector that is down. Every invocation and every container
request still succeeds with the result it has without tracing, none waits on the exporter,
memory stays bounded, and the failure is logged."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
import tracemalloc
import urllib.request
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask, Response, request
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.propagate import get_global_textmap, set_global_textmap
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import INVALID_SPAN_CONTEXT, get_current_span

import sm_tracing
from tests._client_support import (
    CREDENTIALS,
    HEADER,
    OPERATIONS,
    Wire,
    call_params,
    endpoint_url,
    header,
    loopback,
    make_client,
    traceparent_of,
)
from tests._robust_support import (
    Boom,
    FailingExporter,
    HangingExporter,
    RaisingPropagator,
    RaisingSpanTracerProvider,
    RaisingTracerProvider,
    serve,
)
from tests._serving import closed_port, stop, wait_ready

MINE = "accept_eula=true"
TRACEPARENT = "traceparent=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
CARRIED = f"{MINE};{TRACEPARENT}"
METHODS = ("invoke_endpoint", "invoke_endpoint_with_response_stream", "invoke_endpoint_async")


# -- what a call and a request give without tracing, to compare with ---------------------------


def outcome(method: str, response: dict[str, Any]) -> dict[str, Any]:
    """What the caller gets from *response*: its status, payload and CustomAttributes."""
    result = {
        "status": response["ResponseMetadata"]["HTTPStatusCode"],
        "custom_attributes": response.get("CustomAttributes"),
    }
    if method == "invoke_endpoint":
        result["body"] = response["Body"].read()
    elif method == "invoke_endpoint_with_response_stream":
        result["body"] = [event["PayloadPart"]["Bytes"] for event in response["Body"]]
    else:
        result["output"] = response["OutputLocation"]
    return result


def call(method: str) -> tuple[dict[str, Any], str | None]:
    """One call of *method* with the caller's CustomAttributes, on a fresh client: what the
    caller got and the CustomAttributes that went on the wire."""
    wire = Wire()
    client = make_client(wire=wire)
    response = getattr(client, method)(**call_params(method, CustomAttributes=MINE))
    return outcome(method, response), wire.custom_attributes()


def call_traced(method: str, provider: TracerProvider) -> tuple[dict[str, Any], str | None]:
    """:func:`call` with sm_tracing instrumented with *provider*, uninstrumented after."""
    sm_tracing.instrument(tracer_provider=provider)
    try:
        return call(method)
    finally:
        sm_tracing.uninstrument()


@pytest.fixture(scope="module")
def untraced() -> dict[str, dict[str, Any]]:
    """The outcome of each method with no instrumentation at all."""
    sm_tracing.uninstrument()
    return {method: call(method)[0] for method in METHODS}


def flask_app() -> Flask:
    """A model app answering with its input upper-cased and the CustomAttributes it got."""
    app = Flask("faults")

    @app.post("/invocations")
    def invocations() -> Response:
        seen = request.headers.get(HEADER, "")
        return Response(request.get_data().upper() + b"|" + seen.encode("latin-1"), status=200)

    return app


async def asgi_app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    """The ASGI twin of :func:`flask_app`."""
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    seen = dict(scope["headers"]).get(HEADER.lower().encode(), b"")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body.upper() + b"|" + seen})


def wsgi_request(app: Any, custom_attributes: str = CARRIED) -> tuple[int, bytes]:
    """POST /invocations to a WSGI *app* through Flask's test client."""
    flask = Flask("host")
    flask.wsgi_app = app  # type: ignore[method-assign]
    response = flask.test_client().post(
        "/invocations", data=b"payload", headers={HEADER: custom_attributes}
    )
    return response.status_code, response.get_data()


def asgi_requests(
    app: Any, count: int, custom_attributes: str = CARRIED
) -> list[tuple[int, bytes]]:
    """*count* POSTs to /invocations of an ASGI *app* through httpx's ASGITransport."""

    async def run() -> list[tuple[int, bytes]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://model") as client:
            results = []
            for _ in range(count):
                response = await client.post(
                    "/invocations",
                    content=b"payload",
                    headers={HEADER: custom_attributes.encode("latin-1")},
                )
                results.append((response.status_code, response.content))
            return results

    return asyncio.run(run())


# The app's answer: it sees the caller's own CustomAttributes, whether or not the trace
# context could be read.
EXPECTED_BODY = b"PAYLOAD|" + MINE.encode()
# Where no span could be started, the app may see the value as it came, as it does untraced.
UNTRACED_OR_TRACED = ((200, EXPECTED_BODY), (200, b"PAYLOAD|" + CARRIED.encode()))


def logged(
    caplog: pytest.LogCaptureFixture, prefix: str, level: int = logging.WARNING
) -> list[str]:
    """Messages logged at *level* or above by loggers under *prefix*."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith(prefix) and record.levelno >= level
    ]


# -- a propagator that raises ------------------------------------------------------------------


@pytest.fixture
def raising_propagator() -> Iterator[None]:
    """The global propagator raises in inject, extract and fields; restored afterwards."""
    previous = get_global_textmap()
    set_global_textmap(RaisingPropagator())
    yield
    set_global_textmap(previous)


@pytest.mark.usefixtures("raising_propagator")
@pytest.mark.parametrize("method", METHODS)
def test_client_call_survives_a_raising_propagator(
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    untraced: dict[str, dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
    method: str,
) -> None:
    """With a propagator that raises, each call gives what it gives untraced, sends the
    caller's CustomAttributes unchanged, is still traced, and the failure is logged."""
    result, sent = call_traced(method, tracer_provider)
    assert result == untraced[method]
    assert sent == MINE
    assert [span.name for span in exporter.get_finished_spans()] == [
        f"SageMaker Runtime.{OPERATIONS[method]}"
    ]
    assert any(
        "could not merge the trace context" in message for message in logged(caplog, "sm_tracing")
    )


@pytest.mark.usefixtures("raising_propagator")
def test_container_requests_survive_a_raising_propagator(
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With a propagator that raises, WSGI and ASGI requests succeed with the app's answer,
    the app still sees only the caller's CustomAttributes, each request gets a root span, and
    the failure is logged."""
    wsgi = sm_tracing.WSGIMiddleware(flask_app().wsgi_app, tracer_provider=tracer_provider)
    assert wsgi_request(wsgi) == (200, EXPECTED_BODY)
    asgi = sm_tracing.ASGIMiddleware(asgi_app, tracer_provider=tracer_provider)
    assert asgi_requests(asgi, 1) == [(200, EXPECTED_BODY)]
    spans = exporter.get_finished_spans()
    assert [span.name for span in spans] == ["POST /invocations"] * 2
    assert all(span.parent is None for span in spans)
    assert logged(caplog, "sm_tracing")


@pytest.mark.usefixtures("raising_propagator")
def test_codec_entry_points_survive_a_raising_propagator(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With a propagator that raises, inject gives the value back, extract gives no parent,
    strip still takes our keys out, and none raises."""
    assert sm_tracing.inject_context(MINE) == MINE
    context = sm_tracing.extract_context(CARRIED)
    assert get_current_span(context).get_span_context() == INVALID_SPAN_CONTEXT
    assert sm_tracing.strip_context(CARRIED) == MINE
    assert logged(caplog, "sm_tracing")


# -- a tracer provider that raises -------------------------------------------------------------

PROVIDERS: dict[str, Callable[[], TracerProvider]] = {
    "get_tracer": RaisingTracerProvider,
    "start_span": RaisingSpanTracerProvider,
}
FAULTS = ["get_tracer", "start_span"]


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("method", METHODS)
def test_client_call_survives_a_raising_tracer_provider(
    untraced: dict[str, dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
    fault: str,
    method: str,
) -> None:
    """With a tracer provider that raises, ``instrument()`` does not, and each call gives
    what it gives untraced, sends the caller's CustomAttributes unchanged, and is logged."""
    result, sent = call_traced(method, PROVIDERS[fault]())
    assert result == untraced[method]
    assert sent == MINE
    assert logged(caplog, "sm_tracing")


AIO_FAULTS = ("propagator", "start_span")


@pytest.mark.parametrize("fault", AIO_FAULTS)
def test_aiobotocore_calls_survive_faults(
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
    fault: str,
) -> None:
    """Through aiobotocore, with a propagator or a tracer that raises, every call succeeds
    with the caller's CustomAttributes sent unchanged, and the failure is logged (with only
    the propagator failing, every call is still traced)."""
    from aiobotocore.session import AioSession

    provider = tracer_provider if fault == "propagator" else RaisingSpanTracerProvider()
    previous = get_global_textmap()
    if fault == "propagator":
        set_global_textmap(RaisingPropagator())

    async def run(url: str) -> list[bytes]:
        session = AioSession()
        async with session.create_client(
            "sagemaker-runtime", region_name="us-east-1", endpoint_url=url, **CREDENTIALS
        ) as client:
            params = call_params("invoke_endpoint", CustomAttributes=MINE)
            calls = [client.invoke_endpoint(**params) for _ in range(20)]
            return [await response["Body"].read() for response in await asyncio.gather(*calls)]

    sm_tracing.instrument(tracer_provider=provider)
    try:
        with loopback() as server:
            bodies = asyncio.run(run(endpoint_url(server)))
            sent = [header(received.headers, HEADER) for received in server.received]
    finally:
        sm_tracing.uninstrument()
        set_global_textmap(previous)
    assert bodies == [b'{"outputs": "hello"}'] * 20
    assert sent == [MINE] * 20
    assert logged(caplog, "sm_tracing")
    traced = 20 if fault == "propagator" else 0
    assert len(exporter.get_finished_spans()) == traced


@pytest.mark.parametrize("fault", FAULTS)
def test_container_requests_survive_a_raising_tracer_provider(
    caplog: pytest.LogCaptureFixture, fault: str
) -> None:
    """With a tracer provider that raises, the WSGI and ASGI middleware can be built and each
    request succeeds with the app's answer, the failure logged."""
    provider = PROVIDERS[fault]()
    wsgi = sm_tracing.WSGIMiddleware(flask_app().wsgi_app, tracer_provider=provider)
    assert wsgi_request(wsgi) in UNTRACED_OR_TRACED
    asgi = sm_tracing.ASGIMiddleware(asgi_app, tracer_provider=provider)
    assert asgi_requests(asgi, 1)[0] in UNTRACED_OR_TRACED
    assert logged(caplog, "sm_tracing")


@pytest.mark.parametrize("fault", FAULTS)
def test_continue_trace_survives_a_raising_tracer_provider(
    caplog: pytest.LogCaptureFixture, fault: str
) -> None:
    """With a tracer provider that raises, ``continue_trace`` runs the handler's block, gives
    its result, and lets the handler's own exception through unchanged."""
    provider = PROVIDERS[fault]()
    ran = []
    with sm_tracing.continue_trace(CARRIED, tracer_provider=provider):
        ran.append("block")
    assert ran == ["block"]
    error = ValueError("the handler's own")
    with (
        pytest.raises(ValueError) as raised,
        sm_tracing.continue_trace(CARRIED, tracer_provider=provider),
    ):
        raise error
    assert raised.value is error
    assert logged(caplog, "sm_tracing")


@pytest.mark.parametrize("fault", FAULTS)
def test_trace_handler_survives_a_raising_tracer_provider(
    caplog: pytest.LogCaptureFixture, fault: str
) -> None:
    """With a tracer provider that raises, a ``trace_handler`` handler runs and returns its
    result."""
    provider = PROVIDERS[fault]()

    @sm_tracing.trace_handler(tracer_provider=provider)
    def predict_fn(data: bytes, model: object) -> bytes:
        return data.upper()

    assert predict_fn(b"payload", None) == b"PAYLOAD"


# -- hostile carriers ---------------------------------------------------------------------------

HOSTILE = {
    "empty-pairs": ";;;,,,",
    "bare-key": "traceparent",
    "empty-value": "traceparent=",
    "garbage": "traceparent=garbage;tracestate=;baggage==,;",
    "all-zero-ids": "traceparent=00-" + "0" * 32 + "-" + "0" * 16 + "-01",
    "version-ff": "traceparent=ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "oversized": "a=" + "x" * 5000 + ";" + TRACEPARENT,
    "latin-1": "caf\xe9=1;" + TRACEPARENT.replace("01", "\xe9"),
    "control": "a=1\t;" + TRACEPARENT + "\x7f",
    "repeated": ";".join([TRACEPARENT.replace("b7ad", "0000")] * 40),
    "json": '{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}',
}


@pytest.mark.parametrize("value", list(HOSTILE.values()), ids=list(HOSTILE))
def test_container_requests_survive_hostile_custom_attributes(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter, value: str
) -> None:
    """A malformed, oversized, non-ASCII or repeated carrier never fails a WSGI or ASGI request:
    the app answers, sees what ``strip_context`` leaves of the value, and the span is a root
    (or, for a value SageMaker accepts with one usable traceparent, the caller's child)."""
    expected_seen = (sm_tracing.strip_context(value) or "").encode("latin-1")
    wsgi = sm_tracing.WSGIMiddleware(flask_app().wsgi_app, tracer_provider=tracer_provider)
    assert wsgi_request(wsgi, value) == (200, b"PAYLOAD|" + expected_seen)
    asgi = sm_tracing.ASGIMiddleware(asgi_app, tracer_provider=tracer_provider)
    assert asgi_requests(asgi, 1, value) == [(200, b"PAYLOAD|" + expected_seen)]
    parents = {
        None if span.parent is None else f"{span.parent.span_id:016x}"
        for span in exporter.get_finished_spans()
    }
    assert len(exporter.get_finished_spans()) == 2
    extracted = get_current_span(sm_tracing.extract_context(value)).get_span_context()
    assert parents == {f"{extracted.span_id:016x}" if extracted.is_valid else None}


# -- exporters that fail, raise or hang, and a collector that is down --------------------------


@dataclass
class Sink:
    """A tracer provider over a faulty exporter, and what to expect of it."""

    provider: TracerProvider
    exporter: SpanExporter
    log: str | None  # a logger prefix that reports the failure, when anyone reports it

    def close(self) -> None:
        if isinstance(self.exporter, HangingExporter):
            self.exporter.release()
        self.provider.shutdown()


def _sink(kind: str) -> Sink:
    provider = TracerProvider()
    exporter: SpanExporter
    log: str | None
    if kind == "failing-simple":
        exporter, log = FailingExporter(), None
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif kind == "raising-simple":
        exporter, log = FailingExporter(raises=True), "opentelemetry.sdk"
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif kind == "failing-batch":
        exporter, log = FailingExporter(), None
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=10))
    elif kind == "raising-batch":
        # A small queue: what waits for the export thread is bounded by it, not by the calls.
        exporter, log = FailingExporter(raises=True), "opentelemetry.sdk"
        provider.add_span_processor(
            BatchSpanProcessor(
                exporter, max_queue_size=32, max_export_batch_size=8, schedule_delay_millis=10
            )
        )
    elif kind == "hanging-batch":
        # A small queue, so it fills: what does not fit is dropped, and that is logged.
        exporter, log = HangingExporter(), "opentelemetry.sdk"
        provider.add_span_processor(
            BatchSpanProcessor(
                exporter, max_queue_size=32, max_export_batch_size=8, schedule_delay_millis=10
            )
        )
    elif kind == "otlp-down":
        url = f"http://127.0.0.1:{closed_port()}/v1/traces"
        # The exporter logs the failure; an older one (1.30) raises it, and the batch
        # processor of the SDK logs it.
        exporter, log = OTLPSpanExporter(endpoint=url, timeout=1), "opentelemetry"
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=10))
    else:
        raise ValueError(kind)
    return Sink(provider, exporter, log)


SINKS = (
    "failing-simple",
    "raising-simple",
    "failing-batch",
    "raising-batch",
    "hanging-batch",
    "otlp-down",
)
CALLS = 60
# Under the OTLP timeout (1 s) and far under the hang (60 s): no call waits on export. A full
# collection of a long test session's heap can hold one call for half a second on its own.
PER_CALL_BOUND = 0.8
# The container requests of one test, WSGI and ASGI: an eighth of what waiting on the OTLP
# timeout once a request would take, and ample for a loaded machine logging every failure.
WHOLE_RUN_BOUND = 2 * CALLS * 1.0 / 8


def _forget_logged_duplicates() -> None:
    # The SDK's batch processor logs a message once per 20 s window; each test must see its own.
    for log_filter in logging.getLogger("opentelemetry.sdk._shared_internal").filters:
        if hasattr(log_filter, "last_log"):
            del log_filter.last_log


@pytest.fixture(params=SINKS)
def sink(request: pytest.FixtureRequest) -> Iterator[Sink]:
    """A tracer provider over each faulty exporter, shut down afterwards."""
    _forget_logged_duplicates()
    sink = _sink(request.param)
    yield sink
    sink.close()


def _wait_for_export_attempt(sink: Sink) -> None:
    if isinstance(sink.exporter, HangingExporter):
        assert sink.exporter.entered.wait(5)
    elif isinstance(sink.exporter, FailingExporter):
        deadline = time.monotonic() + 5
        while not sink.exporter.calls and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sink.exporter.calls
    else:
        sink.provider.force_flush(5_000)


def _expect_logged(sink: Sink, caplog: pytest.LogCaptureFixture) -> None:
    """The exporter's failure is logged where anyone reports it, for the sinks that log one."""
    if sink.log is not None:
        # The OTLP exporter reports only once its retries have run out.
        sink.close()
        assert logged(caplog, sink.log), [r.getMessage() for r in caplog.records]


def test_client_calls_survive_a_faulty_exporter(
    sink: Sink, untraced: dict[str, dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever the exporter does (fail, raise, hang, or a collector that is down), every call
    gives its untraced result, carries the trace context, never waits on the exporter, and
    the failure is logged where anyone reports it."""
    wire = Wire()
    client = make_client(wire=wire)
    params = call_params("invoke_endpoint", CustomAttributes=MINE)
    sm_tracing.instrument(tracer_provider=sink.provider)
    try:
        slowest = 0.0
        for _ in range(CALLS):
            started = time.perf_counter()
            response = client.invoke_endpoint(**params)
            slowest = max(slowest, time.perf_counter() - started)
            assert outcome("invoke_endpoint", response) == untraced["invoke_endpoint"]
            traceparent_of(wire.custom_attributes())
        _wait_for_export_attempt(sink)
    finally:
        sm_tracing.uninstrument()
    print(f"\n{CALLS} calls, slowest {slowest * 1000:.1f} ms")
    assert slowest < PER_CALL_BOUND
    _expect_logged(sink, caplog)


def test_container_requests_survive_a_faulty_exporter(
    sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever the exporter does, every WSGI and ASGI request succeeds with the app's answer
    and none waits on the exporter; the failure is logged where anyone reports it."""
    wsgi = sm_tracing.WSGIMiddleware(flask_app().wsgi_app, tracer_provider=sink.provider)
    started = time.perf_counter()
    for _ in range(CALLS):
        assert wsgi_request(wsgi) == (200, EXPECTED_BODY)
    asgi = sm_tracing.ASGIMiddleware(asgi_app, tracer_provider=sink.provider)
    assert asgi_requests(asgi, CALLS) == [(200, EXPECTED_BODY)] * CALLS
    elapsed = time.perf_counter() - started
    _wait_for_export_attempt(sink)
    print(f"\n{2 * CALLS} requests in {elapsed * 1000:.0f} ms")
    assert elapsed < WHOLE_RUN_BOUND
    _expect_logged(sink, caplog)


# -- memory stays bounded ----------------------------------------------------------------------


def _growth(
    step: Callable[[], None], warm: int, measured: int, settle: Callable[[], object] = gc.collect
) -> int:
    """Bytes still allocated after *measured* more steps than after *warm* steps and *settle*."""
    for _ in range(warm):
        step()
    # One export (and its failure, logged with a traceback) before measuring: the first one
    # fills one-time caches (linecache reads the source files the traceback names).
    settle()
    gc.collect()
    # While measuring, nothing is logged: pytest keeps every record a test logs, and a failed
    # export's record holds its traceback, whose frames hold the batch of spans it failed on;
    # how many such records fall in the window depends on the batch worker's timing.
    logging.disable(logging.CRITICAL)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(measured):
            step()
        # The same settling after: spans still queued for the exporter are in flight, not
        # kept, and how many a batch holds at this instant depends on its worker's timing.
        settle()
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
        logging.disable(logging.NOTSET)
    return sum(stat.size_diff for stat in after.compare_to(before, "filename"))


MEMORY_SINKS = ("raising-batch", "hanging-batch")
# botocore alone grows by 100-200 KiB over a thousand calls (its own caches), and a full
# batch queue holds a few dozen spans; a span kept per call would be over 1 MiB more.
MAX_GROWTH = 512 * 1024
# The middleware alone, garbage collected: about 1 KiB, whatever the exporter does.
CONTAINER_MAX_GROWTH = 128 * 1024


@pytest.mark.parametrize("kind", MEMORY_SINKS)
def test_client_memory_is_bounded_with_a_faulty_exporter(kind: str) -> None:
    """Across a thousand calls whose spans cannot be exported, the client keeps no more
    memory than it held after the first few hundred."""
    sink = _sink(kind)
    wire = Wire()
    client = make_client(wire=wire)
    params = call_params("invoke_endpoint", CustomAttributes=MINE)

    def step() -> None:
        client.invoke_endpoint(**params)["Body"].read()
        wire.requests.clear()

    sm_tracing.instrument(tracer_provider=sink.provider)
    try:
        # A hanging exporter never finishes a flush: there the queue only fills and drops.
        settle = sink.provider.force_flush if kind == "raising-batch" else gc.collect
        growth = _growth(step, warm=300, measured=1000, settle=settle)
    finally:
        sm_tracing.uninstrument()
        sink.close()
    print(f"\nclient, {kind}: {growth / 1024:.1f} KiB more after 1000 calls")
    assert growth < MAX_GROWTH


@pytest.mark.parametrize("kind", MEMORY_SINKS)
def test_container_memory_is_bounded_with_a_faulty_exporter(kind: str) -> None:
    """Across two thousand requests whose spans cannot be exported, the WSGI middleware keeps
    no more memory than it held after the first few hundred."""
    sink = _sink(kind)
    flask = Flask("host")
    flask.wsgi_app = sm_tracing.WSGIMiddleware(  # type: ignore[method-assign]
        flask_app().wsgi_app, tracer_provider=sink.provider
    )
    test_client = flask.test_client()

    def step() -> None:
        response = test_client.post("/invocations", data=b"payload", headers={HEADER: CARRIED})
        assert response.status_code == 200

    try:
        growth = _growth(step, warm=300, measured=2000)
    finally:
        sink.close()
    print(f"\ncontainer, {kind}: {growth / 1024:.1f} KiB more after 2000 requests")
    assert growth < CONTAINER_MAX_GROWTH


def test_extract_with_a_raising_propagator_keeps_the_given_context(
    raising_propagator: None,
) -> None:
    """``extract_context`` with a propagator that raises gives back the context it was given."""
    base = Context({"marker": 1})
    assert sm_tracing.extract_context(CARRIED, base) is base


def test_boom_is_what_the_faulty_parts_raise() -> None:
    """The faulty parts do raise, so the tests above do exercise the failure paths."""
    with pytest.raises(Boom):
        RaisingTracerProvider().get_tracer("x")
    with pytest.raises(Boom):
        RaisingSpanTracerProvider().get_tracer("x").start_span("x")
    with pytest.raises(Boom):
        RaisingPropagator().inject({})
    with pytest.raises(Boom):
        FailingExporter(raises=True).export([])


def test_container_process_with_the_collector_down(tmp_path: Path) -> None:
    """A gunicorn container whose OTLP collector is down (Jaeger not running) answers every
    request at once, logs the failed exports, and still stops gracefully, within the export
    timeout, on SIGTERM."""
    url = f"http://127.0.0.1:{closed_port()}/v1/traces"
    container = serve(
        "gunicorn", "collector-down", url, tmp_path, workers=2,
        env={"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "2"},
    )  # fmt: skip
    try:
        wait_ready(container)
        slowest = 0.0
        for index in range(40):
            request = urllib.request.Request(
                container.url + "/invocations",
                data=json.dumps({"id": str(index)}).encode(),
                headers={HEADER: CARRIED},
            )
            started = time.perf_counter()
            with urllib.request.urlopen(request, timeout=10) as response:
                answer = json.loads(response.read())
            slowest = max(slowest, time.perf_counter() - started)
            assert answer["id"] == str(index)
            assert answer["custom_attributes"] == MINE
        time.sleep(0.5)  # a few export attempts fail meanwhile
    finally:
        started = time.perf_counter()
        code = stop(container)
        stopped = time.perf_counter() - started
    output = container.output()
    print(f"\ncollector down: slowest request {slowest * 1000:.1f} ms, stopped in {stopped:.1f} s")
    assert code == 0, output[-2000:]
    assert slowest < PER_CALL_BOUND
    assert stopped < 10, output[-2000:]
    assert "nothing is listening at " + url in output, output[-2000:]
