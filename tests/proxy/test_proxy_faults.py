"""Faults: a model server that is down, too slow, resets before answering or dies mid-stream
gets the caller a clear answer (502, 504, or a stream that ends in an error), never a hang, and
the proxy's span says why without quoting anything of the request."""

from __future__ import annotations

import json
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from sm_tracing.local import LocalRuntime
from tests._local_support import runtime_client
from tests._otlp_receiver import OTLPReceiver, ReceivedSpan
from tests._serving import Container, closed_port, otlp_env, stop, wait_ready
from tests.proxy._proxy_support import (
    TRACE_ID,
    TRACEPARENT,
    Received,
    raw_upstream,
    request,
    start_proxy,
    wait_listening,
)

pytestmark = pytest.mark.timeout(90)
CARRIED = [("X-Amzn-SageMaker-Custom-Attributes", f"secret=abc;traceparent={TRACEPARENT}")]


def _proxy_span(receiver: OTLPReceiver, service: str) -> ReceivedSpan:
    """The proxy's span of the invocation, exported as *service* (a model server the proxy
    starts exports under the same name: it inherits the environment)."""

    def mine(span: ReceivedSpan) -> bool:
        return span.service == service and span.name == "POST /invocations"

    spans = receiver.wait_for(lambda spans: any(map(mine, spans)), timeout=20)
    (span,) = [s for s in spans if mine(s)]
    assert span.trace_id == TRACE_ID
    return span


def _no_secret(span: ReceivedSpan) -> None:
    assert "secret" not in repr(span.attributes) + repr(span.events)


@pytest.fixture
def started(tmp_path: Path, receiver: OTLPReceiver) -> Iterator[list[Container]]:
    """Proxies started by a test, stopped after it."""
    containers: list[Container] = []
    yield containers
    for container in containers:
        stop(container)


def test_upstream_down_is_502(
    started: list[Container], tmp_path: Path, receiver: OTLPReceiver
) -> None:
    """Nothing listening upstream: 502 at once, and the span is an error of the connection."""
    container = start_proxy(
        f"http://127.0.0.1:{closed_port()}",
        tmp_path,
        env=otlp_env("proxy-down", receiver.traces_url),
    )
    started.append(container)
    wait_listening(container)
    began = time.monotonic()
    status, _, body = request(container.url, "POST", "/invocations", b"{}", CARRIED)
    assert status == 502
    assert time.monotonic() - began < 5
    assert b"could not be reached" in body
    span = _proxy_span(receiver, "proxy-down")
    assert span.status == "error"
    assert span.attributes["http.response.status_code"] == 502
    assert span.attributes["error.type"] == "httpx.ConnectError"
    _no_secret(span)


def test_ping_fails_while_upstream_is_down(started: list[Container], tmp_path: Path) -> None:
    """``/ping`` does not succeed before the model server answers its health route."""
    container = start_proxy(f"http://127.0.0.1:{closed_port()}", tmp_path)
    started.append(container)
    wait_listening(container)
    status, _, _ = request(container.url, "GET", "/ping")
    assert status == 502


def test_slow_upstream_is_504(
    started: list[Container], tmp_path: Path, receiver: OTLPReceiver
) -> None:
    """A server silent for longer than ``--timeout``: 504 after about that long."""
    release = threading.Event()

    def slow(seen: Received, handler: BaseHTTPRequestHandler) -> None:
        if seen.method == "POST":
            release.wait(20)
        handler.send_response(200)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    with raw_upstream(slow) as upstream:
        container = start_proxy(
            upstream.url,
            tmp_path,
            args=["--timeout", "1"],
            env=otlp_env("proxy-slow", receiver.traces_url),
        )
        started.append(container)
        wait_listening(container)
        began = time.monotonic()
        status, _, _ = request(container.url, "POST", "/invocations", b"{}", CARRIED)
        elapsed = time.monotonic() - began
        release.set()
    assert status == 504
    assert 0.9 < elapsed < 5
    span = _proxy_span(receiver, "proxy-slow")
    assert span.attributes["error.type"] == "httpx.ReadTimeout"
    _no_secret(span)


def test_reset_before_response_is_502(started: list[Container], tmp_path: Path) -> None:
    """A server that resets the connection without answering: 502."""

    def reset(seen: Received, handler: BaseHTTPRequestHandler) -> None:
        if seen.method == "GET":
            handler.send_response(200)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        # Linger 0: close() sends a RST.
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.close_connection = True

    with raw_upstream(reset) as upstream:
        container = start_proxy(upstream.url, tmp_path)
        started.append(container)
        wait_listening(container)
        status, _, body = request(container.url, "POST", "/invocations", b"{}")
    assert status == 502
    assert body.startswith(b"the model server")


def test_server_dying_mid_stream_ends_the_stream_and_the_proxy(
    started: list[Container], tmp_path: Path, receiver: OTLPReceiver
) -> None:
    """The server started by the proxy dies mid-stream: the caller's stream ends in an error
    after the chunks already sent, the proxy's span records the broken response, and the
    proxy exits with the server's exit status."""
    port = closed_port()
    command = [
        sys.executable, "-m", "uvicorn", "tests.proxy._model_server:app",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    container = start_proxy(
        f"http://127.0.0.1:{port}",
        tmp_path,
        args=["--invocations-path", "/generate"],
        command=command,
        env=otlp_env("proxy-dies", receiver.traces_url),
    )
    started.append(container)
    wait_ready(container)
    received: list[bytes] = []
    with LocalRuntime(container.url, container_timeout=20) as runtime:
        client = runtime_client(runtime.url)
        response = client.invoke_endpoint_with_response_stream(
            EndpointName="tgi",
            Body=json.dumps({"id": "dies", "stream": True, "chunks": 10, "die_after": 2}),
            CustomAttributes=f"secret=abc;traceparent={TRACEPARENT}",
        )
        with pytest.raises((ClientError, BotoCoreError)):
            for event in response["Body"]:
                received.append(event["PayloadPart"]["Bytes"])
    assert b"".join(received).count(b"data: ") == 3
    assert container.process.wait(30) == 3
    span = _proxy_span(receiver, "proxy-dies")
    assert span.status == "error"
    assert span.attributes["error.type"].startswith("httpx.")
    _no_secret(span)
