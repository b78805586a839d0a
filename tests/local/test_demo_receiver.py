"""The OTLP/HTTP receiver the demo and the end-to-end tests collect spans with."""

from __future__ import annotations

import gzip
import urllib.error
import urllib.request

import pytest
from _otlp_receiver import OTLPReceiver, named, trace_count
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Link, SpanKind, StatusCode


def provider_to(url: str, compression: Compression = Compression.NoCompression) -> TracerProvider:
    """A provider exporting each span at once over OTLP/HTTP to *url*."""
    provider = TracerProvider(resource=Resource.create({"service.name": "probe"}))
    exporter = OTLPSpanExporter(endpoint=url, compression=compression)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
def test_decodes_real_exports(receiver: OTLPReceiver, compression: Compression) -> None:
    """Spans exported by the SDK arrive with ids, parent, kind, attributes, links, events,
    status and service, plain or gzipped."""
    provider = provider_to(receiver.traces_url, compression)
    tracer = provider.get_tracer("probe-scope")
    with tracer.start_as_current_span("parent", kind=SpanKind.CLIENT) as parent:
        child = tracer.start_span(
            "child",
            kind=SpanKind.SERVER,
            attributes={"s": "v", "i": 3, "f": 1.5, "b": True, "a": ("x", "y")},
            links=[Link(parent.get_span_context())],
        )
        child.add_event("first_chunk")
        child.set_status(StatusCode.ERROR)
        child.end()
    provider.shutdown()
    spans = receiver.wait_for(lambda spans: len(spans) == 2)
    got = {span.name: span for span in spans}
    context = parent.get_span_context()
    assert got["parent"].trace_id == f"{context.trace_id:032x}"
    assert got["parent"].parent_id is None
    assert got["parent"].kind == "client"
    assert got["child"].parent_id == f"{context.span_id:016x}"
    assert got["child"].kind == "server"
    assert got["child"].attributes == {"s": "v", "i": 3, "f": 1.5, "b": True, "a": ("x", "y")}
    assert got["child"].links == ((f"{context.trace_id:032x}", f"{context.span_id:016x}"),)
    assert got["child"].events == ("first_chunk",)
    assert got["child"].status == "error"
    assert {span.service for span in spans} == {"probe"}
    assert {span.scope for span in spans} == {"probe-scope"}
    assert got["parent"].duration_ms >= got["child"].duration_ms >= 0
    assert trace_count(spans) == 1


def test_wrong_path_is_404(receiver: OTLPReceiver) -> None:
    """Only /v1/traces is read; /v1/metrics is taken and set aside unless the receiver plays
    Jaeger (spans only); anything else is not found."""
    request = urllib.request.Request(receiver.url + "/v1/logs", data=b"", method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)
    assert caught.value.code == 404
    metrics = urllib.request.Request(receiver.url + "/v1/metrics", data=b"x", method="POST")
    with urllib.request.urlopen(metrics, timeout=5) as response:
        assert response.status == 200
    with OTLPReceiver(metrics=False) as jaeger, pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(
            urllib.request.Request(jaeger.url + "/v1/metrics", data=b"x", method="POST"),
            timeout=5,
        )
    assert caught.value.code == 404


def test_garbage_is_400(receiver: OTLPReceiver) -> None:
    """A body that is not a gzip stream of a request is refused, and nothing is stored."""
    request = urllib.request.Request(receiver.traces_url, data=b"\x00garbage", method="POST")
    request.add_header("Content-Encoding", "gzip")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)
    assert caught.value.code == 400
    assert receiver.spans == []


def test_forwards_each_request(receiver: OTLPReceiver) -> None:
    """With forward_to, what arrives is also posted unchanged to the next receiver."""
    with OTLPReceiver(forward_to=receiver.traces_url) as front:
        provider = provider_to(front.traces_url)
        provider.get_tracer("t").start_span("passed on").end()
        provider.shutdown()
        assert [span.name for span in front.spans] == ["passed on"]
    (forwarded,) = receiver.wait_for(named("passed on"))
    assert forwarded == front.spans[0]
    assert front.forward_errors == []


def test_forward_failure_is_kept_not_raised() -> None:
    """A destination that is down is reported in forward_errors; the spans are still kept."""
    with OTLPReceiver() as closed:
        dead = closed.traces_url
    with OTLPReceiver(forward_to=dead) as front:
        provider = provider_to(front.traces_url)
        provider.get_tracer("t").start_span("kept").end()
        provider.shutdown()
        assert [span.name for span in front.spans] == ["kept"]
        assert len(front.forward_errors) == 1


def test_wait_for_times_out(receiver: OTLPReceiver) -> None:
    """wait_for raises TimeoutError when the spans never come."""
    with pytest.raises(TimeoutError):
        receiver.wait_for(named("never"), timeout=0.1)


def test_clear(receiver: OTLPReceiver) -> None:
    """clear() forgets what was received."""
    provider = provider_to(receiver.traces_url)
    provider.get_tracer("t").start_span("old").end()
    provider.shutdown()
    receiver.wait_for(named("old"))
    receiver.clear()
    assert receiver.spans == []


def test_gzip_body_by_hand(receiver: OTLPReceiver) -> None:
    """A gzip-encoded empty request is accepted with a protobuf response."""
    request = urllib.request.Request(receiver.traces_url, data=gzip.compress(b""), method="POST")
    request.add_header("Content-Encoding", "gzip")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/x-protobuf"
