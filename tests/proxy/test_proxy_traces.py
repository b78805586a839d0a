"""One trace from an instrumented boto3 client, through LocalRuntime and the proxy, into the
spans of a model server that continues traces from ``traceparent`` only (a FastAPI app with
OpenTelemetry's FastAPI instrumentation): sync, streamed, multi-model and many at once."""

from __future__ import annotations

import contextlib
import json
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from sm_tracing._attributes import CONTAINER_SPAN_ID, TARGET_MODEL
from sm_tracing.local import LocalRuntime
from tests._local_support import runtime_client
from tests._otlp_receiver import OTLPReceiver, ReceivedSpan
from tests._serving import Container, in_memory, instrument_client

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def traced() -> Iterator[tuple[Any, InMemorySpanExporter]]:
    """A ``sagemaker-runtime`` client factory's exporter: sm_tracing instrumented with a
    provider of this test's own."""
    provider, exporter = in_memory()
    with contextlib.ExitStack() as stack:
        instrument_client(stack, provider)
        yield provider, exporter


def _client_span(exporter: InMemorySpanExporter, count: int = 1) -> ReadableSpan:
    spans = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert len(spans) == count, [s.name for s in spans]
    return spans[-1]


def _hex(value: int, width: int) -> str:
    return f"{value:0{width}x}"


def _trace_of(
    receiver: OTLPReceiver,
    trace_id: str,
    names: set[tuple[str, str]],
    *,
    model_server: bool = False,
) -> list[ReceivedSpan]:
    """The received spans of *trace_id*, once every one of *names* (service, span name) is
    among them and, with *model_server*, the model server's SERVER span (it ends after its
    inner spans, and may be exported in a later batch)."""

    def arrived(spans: list[ReceivedSpan]) -> bool:
        ours = [s for s in spans if s.trace_id == trace_id]
        if model_server and not any(
            s.service == "model-server" and s.kind == "server" for s in ours
        ):
            return False
        return names <= {(s.service, s.name) for s in ours}

    return [s for s in receiver.wait_for(arrived, timeout=20) if s.trace_id == trace_id]


def _one(spans: list[ReceivedSpan], service: str, name: str) -> ReceivedSpan:
    found = [s for s in spans if s.service == service and s.name == name]
    assert len(found) == 1, [(s.service, s.name) for s in spans]
    return found[0]


def _check_chain(spans: list[ReceivedSpan], client: ReadableSpan, inner: str) -> ReceivedSpan:
    """The proxy's SERVER span is the client span's child, the model server's SERVER span the
    proxy's child, and *inner* the model server's own span under it; the proxy's span."""
    proxy = _one(spans, "proxy", "POST /invocations")
    assert proxy.kind == "server"
    assert proxy.parent_id == _hex(client.context.span_id, 16)
    server = next(s for s in spans if s.service == "model-server" and s.kind == "server")
    assert server.parent_id == proxy.span_id
    assert _one(spans, "model-server", inner).parent_id == server.span_id
    return proxy


def _chain(
    receiver: OTLPReceiver, exporter: InMemorySpanExporter, served: str
) -> tuple[ReadableSpan, str, ReceivedSpan]:
    """The one client span, its trace id and the proxy's span, once the proxy's span, the
    model server's *served* span and its SERVER span have arrived, the chain checked as
    :func:`_check_chain` does (the server's own span ``generate``)."""
    span = _client_span(exporter)
    trace_id = _hex(span.context.trace_id, 32)
    spans = _trace_of(
        receiver,
        trace_id,
        {("proxy", "POST /invocations"), ("model-server", served)},
        model_server=True,
    )
    return span, trace_id, _check_chain(spans, span, "generate")


def test_sync_invocation_is_one_trace(
    runtime: LocalRuntime, receiver: OTLPReceiver, traced: Any
) -> None:
    """A sync call: client, proxy and model-server spans in one trace; the server gets the
    proxy span's traceparent and CustomAttributes without our keys; the caller gets the
    server's own CustomAttributes and the proxy span as the container span."""
    _, exporter = traced
    client = runtime_client(runtime.url)
    response = client.invoke_endpoint(
        EndpointName="tgi",
        Body=json.dumps({"id": "sync-1"}),
        ContentType="application/json",
        CustomAttributes="accept_eula=true",
    )
    seen = json.loads(response["Body"].read())
    assert response["CustomAttributes"] == "page=2"
    span, trace_id, proxy = _chain(receiver, exporter, "generate")
    assert seen["trace_id"] == trace_id
    assert seen["headers"]["traceparent"].split("-")[2] == proxy.span_id
    assert seen["headers"]["x-amzn-sagemaker-custom-attributes"] == "accept_eula=true"
    assert span.attributes[CONTAINER_SPAN_ID] == proxy.span_id
    assert proxy.attributes["http.response.status_code"] == 200
    assert proxy.attributes["url.path"] == "/invocations"


def test_streamed_invocation_is_one_trace(
    runtime: LocalRuntime, receiver: OTLPReceiver, traced: Any
) -> None:
    """A streamed call: every server-sent event arrives, and the stream's spans join the
    caller's trace through the proxy."""
    _, exporter = traced
    client = runtime_client(runtime.url)
    response = client.invoke_endpoint_with_response_stream(
        EndpointName="tgi",
        Body=json.dumps({"id": "stream-1", "stream": True, "chunks": 6}),
        ContentType="application/json",
    )
    body = b"".join(event["PayloadPart"]["Bytes"] for event in response["Body"])
    events = [line for line in body.split(b"\n\n") if line]
    assert len(events) == 7
    assert events[-1] == b'data: {"token": 5}'
    span, _, proxy = _chain(receiver, exporter, "generate_stream")
    assert proxy.status != "error"
    assert span.attributes[CONTAINER_SPAN_ID] == proxy.span_id


def test_multi_model_route_passes_through_traced(
    runtime: LocalRuntime, receiver: OTLPReceiver, traced: Any
) -> None:
    """A multi-model call reaches the server's ``/models/{name}/invoke`` with the target model
    header, under the proxy's span named after the route."""
    _, exporter = traced
    client = runtime_client(runtime.url)
    response = client.invoke_endpoint(
        EndpointName="mme", TargetModel="llama.tar.gz", Body=json.dumps({"id": "mme-1"})
    )
    seen = json.loads(response["Body"].read())
    assert seen["model"] == "llama.tar.gz"
    assert seen["target_model"] == "llama.tar.gz"
    span = _client_span(exporter)
    trace_id = _hex(span.context.trace_id, 32)
    spans = _trace_of(receiver, trace_id, {("proxy", "POST /models/{name}/invoke")})
    proxy = _one(spans, "proxy", "POST /models/{name}/invoke")
    assert proxy.attributes[TARGET_MODEL] == "llama.tar.gz"
    assert seen["headers"]["traceparent"].split("-")[2] == proxy.span_id
    assert seen["trace_id"] == trace_id


def test_ping_is_the_health_route_untraced(proxy: Container, receiver: OTLPReceiver) -> None:
    """``/ping`` answers what the server's ``/health`` does, and makes no span."""
    before = len(receiver.spans)
    with urllib.request.urlopen(proxy.url + "/ping", timeout=5) as response:
        assert response.status == 200
        assert json.loads(response.read()) == {"status": "ok"}
    with urllib.request.urlopen(proxy.url + "/health", timeout=5) as response:
        assert response.status == 200
    # Spans are exported every 50 ms: an untraced request leaves nothing to wait for.
    receiver.wait_for(lambda spans: True, timeout=0.5)
    after = receiver.spans[before:]
    assert not [s for s in after if s.service == "proxy"], [s.name for s in after]


def _call(client: Any, index: int, stream: bool) -> tuple[dict[str, Any], str]:
    """One invocation; what the server saw, and which request it was."""
    request_id = f"caller-{index}"
    body = json.dumps({"id": request_id, "stream": stream, "chunks": 3, "delay": 0.02})
    if stream:
        response = client.invoke_endpoint_with_response_stream(EndpointName="tgi", Body=body)
        data = b"".join(event["PayloadPart"]["Bytes"] for event in response["Body"])
        first = data.split(b"\n\n")[0].removeprefix(b"data: ")
        return json.loads(first), request_id
    response = client.invoke_endpoint(EndpointName="tgi", Body=body)
    return json.loads(response["Body"].read()), request_id


def test_concurrent_callers_keep_their_own_traces(
    runtime: LocalRuntime, receiver: OTLPReceiver, traced: Any
) -> None:
    """64 callers at once, sync and streamed: each caller's trace holds its own proxy span and
    the model server's spans for its own request, and no other's."""
    _, exporter = traced
    client = runtime_client(runtime.url, max_pool_connections=64)
    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(lambda i: _call(client, i, i % 2 == 1), range(64)))
    clients = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert len(clients) == 64
    trace_ids = {_hex(s.context.trace_id, 32) for s in clients}
    assert len(trace_ids) == 64
    by_trace = {_hex(s.context.trace_id, 32): s for s in clients}
    for seen, request_id in results:
        assert seen["id"] == request_id
        assert seen["trace_id"] in trace_ids

    def arrived(spans: list[ReceivedSpan]) -> bool:
        names = [(s.service, s.name) for s in spans if s.trace_id in trace_ids]
        return (
            names.count(("model-server", "generate")) == 64
            and names.count(("proxy", "POST /invocations")) == 64
        )

    spans = receiver.wait_for(arrived, timeout=30)
    for trace_id, client_span in by_trace.items():
        mine = [s for s in spans if s.trace_id == trace_id]
        proxy = _one(mine, "proxy", "POST /invocations")
        assert proxy.parent_id == _hex(client_span.context.span_id, 16)
        ids = {s.attributes["request.id"] for s in mine if "request.id" in s.attributes}
        assert len(ids) == 1, ids
        assert client_span.attributes[CONTAINER_SPAN_ID] == proxy.span_id
    by_request = {request_id: seen["trace_id"] for seen, request_id in results}
    for span in spans:
        if span.name == "generate" and span.trace_id in trace_ids:
            assert by_request[span.attributes["request.id"]] == span.trace_id
