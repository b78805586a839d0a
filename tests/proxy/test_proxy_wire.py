"""What reaches the model server through the proxy, byte for byte: header names as SageMaker
spells them, bodies unchanged, both ways streamed as they come, never held whole."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests._serving import Container, stop
from tests.proxy._proxy_support import (
    TRACE_ID,
    TRACEPARENT,
    RawUpstream,
    Received,
    raw_upstream,
    read_chunked,
    request,
    start_proxy,
    wait_listening,
    write_chunk,
)

pytestmark = pytest.mark.timeout(60)
BINARY = bytes(range(256)) * 64


@pytest.fixture
def upstream() -> Iterator[RawUpstream]:
    """A raw upstream answering ``ok``."""
    with raw_upstream() as started:
        yield started


@pytest.fixture
def proxy(upstream: RawUpstream, tmp_path: Path) -> Iterator[Container]:
    """The proxy in front of the raw upstream, ``/invocations`` going to ``/generate``."""
    container = start_proxy(upstream.url, tmp_path, args=["--invocations-path", "/generate"])
    try:
        wait_listening(container)
        yield container
    finally:
        stop(container)


def _calls(upstream: RawUpstream) -> list[Received]:
    """What reached *upstream*, less the health checks of the proxy's ``/ping``."""
    return [seen for seen in upstream.received if seen.path not in ("/health", "/ping")]


def _names(seen: Received) -> dict[str, str]:
    return {name.lower(): name for name, _ in seen.headers}


def test_sagemaker_headers_reach_the_server_in_sagemaker_spelling(
    proxy: Container, upstream: RawUpstream
) -> None:
    """Header names lower-cased by the ASGI server leave the proxy as SageMaker spells them,
    values untouched, and CustomAttributes without our keys beside the W3C headers."""
    status, _, _ = request(
        proxy.url,
        "POST",
        "/invocations?a=1&b=%2F",
        b"{}",
        [
            ("x-amzn-sagemaker-custom-attributes", f"accept_eula=true;traceparent={TRACEPARENT}"),
            ("x-amzn-sagemaker-target-variant", "AllTraffic"),
            ("x-amzn-sagemaker-inference-id", "inf-1"),
            ("content-type", "application/json"),
            ("x-other", "Value\tWith Tab"),
        ],
    )
    assert status == 200
    (seen,) = _calls(upstream)
    assert seen.path == "/generate?a=1&b=%2F"
    names = _names(seen)
    assert names["x-amzn-sagemaker-custom-attributes"] == "X-Amzn-SageMaker-Custom-Attributes"
    assert names["x-amzn-sagemaker-target-variant"] == "X-Amzn-SageMaker-Target-Variant"
    assert names["x-amzn-sagemaker-inference-id"] == "X-Amzn-SageMaker-Inference-Id"
    assert names["content-type"] == "Content-Type"
    headers = {name.lower(): value for name, value in seen.headers}
    assert headers["x-amzn-sagemaker-custom-attributes"] == "accept_eula=true"
    assert headers["x-other"] == "Value\tWith Tab"
    assert headers["traceparent"].split("-")[1] == TRACE_ID
    assert headers["traceparent"].split("-")[2] != TRACEPARENT.split("-")[2]
    assert "connection" not in headers or headers["connection"] == "keep-alive"


def test_bodies_pass_byte_for_byte(proxy: Container, upstream: RawUpstream) -> None:
    """Every byte value passes both ways unchanged, with its length."""

    def answer(seen: Received, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(seen.body)))
        handler.end_headers()
        handler.wfile.write(seen.body[::-1])

    upstream.handler = answer
    status, headers, body = request(proxy.url, "POST", "/invocations", BINARY)
    assert status == 200
    assert _calls(upstream)[0].body == BINARY
    assert body == BINARY[::-1]
    assert dict((k.lower(), v) for k, v in headers)["content-length"] == str(len(BINARY))


def test_other_paths_pass_through_untraced(proxy: Container, upstream: RawUpstream) -> None:
    """A path that is not an invocation reaches the server as it is, with no trace headers."""
    status, _, body = request(proxy.url, "GET", "/v1/models/m%20x?verbose=1")
    assert (status, body) == (200, b"ok")
    (seen,) = _calls(upstream)
    assert seen.path == "/v1/models/m%20x?verbose=1"
    assert "traceparent" not in {name.lower() for name, _ in seen.headers}


def test_response_streams_as_it_comes(proxy: Container, upstream: RawUpstream) -> None:
    """The first chunk reaches the caller while the server still holds the rest back; the
    echo is in the headers before the first chunk."""
    first_read = threading.Event()

    def answer(seen: Received, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        write_chunk(handler, b"data: 1\n\n")
        # Bounded: a proxy that buffers fails the test rather than hanging it.
        first_read.wait(10)
        write_chunk(handler, b"data: 2\n\n")
        write_chunk(handler, b"")

    upstream.handler = answer
    connection = http.client.HTTPConnection(*proxy.url[7:].split(":"), timeout=15)
    connection.request(
        "POST",
        "/invocations",
        b"{}",
        {"X-Amzn-SageMaker-Custom-Attributes": f"traceparent={TRACEPARENT}"},
    )
    response = connection.getresponse()
    echo = response.getheader("x-amzn-sagemaker-custom-attributes") or ""
    assert echo.startswith(f"traceresponse=00-{TRACE_ID}-")
    assert response.read1(64) == b"data: 1\n\n"
    first_read.set()
    assert response.read() == b"data: 2\n\n"
    connection.close()


def test_request_body_streams_as_it_comes(proxy: Container) -> None:
    """A chunked request body reaches the server chunk by chunk: the server reads the first
    chunk before the caller has sent the second."""
    got_first = threading.Event()

    def answer(seen: Received, handler: BaseHTTPRequestHandler) -> None:
        body = b""
        if seen.method == "POST":  # not the health check
            body = read_chunked(handler.rfile, lambda chunk: got_first.set())
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    with raw_upstream(answer, read_body=False) as streaming:
        container = start_proxy(streaming.url, proxy.log.parent, "proxy-body")
        try:
            wait_listening(container)
            host, port = container.url[7:].split(":")
            connection = http.client.HTTPConnection(host, int(port), timeout=15)
            connection.putrequest("POST", "/invocations")
            connection.putheader("Transfer-Encoding", "chunked")
            connection.endheaders()
            connection.send(b"5\r\nfirst\r\n")
            assert got_first.wait(10), "the proxy held the request body back"
            connection.send(b"6\r\nsecond\r\n0\r\n\r\n")
            response = connection.getresponse()
            assert response.read() == b"firstsecond"
            connection.close()
        finally:
            stop(container)
