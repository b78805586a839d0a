"""End to end: Flask behind WSGIMiddleware under a real gunicorn, FastAPI behind ASGIMiddleware
under a real uvicorn, each in its own process on a loopback port, called over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.trace import Tracer

from tests._container_support import (
    HEADER,
    SPANS_ENV,
    caller,
    echoed,
    free_port,
    read_spans,
    wait_until_serving,
)

ROOT = Path(__file__).resolve().parents[1]

SERVERS = {
    "gunicorn": [
        "-m",
        "gunicorn",
        "--workers",
        "1",
        "--bind",
        "127.0.0.1:{port}",
        "tests._container_support:flask_app()",
    ],
    "uvicorn": [
        "-m",
        "uvicorn",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--log-level",
        "warning",
        "tests._container_support:fastapi_app",
    ],
}


class Served:
    """A server process and where it writes its spans."""

    def __init__(self, port: int, spans: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.spans = spans


@pytest.fixture(scope="module", params=sorted(SERVERS))
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """The server of this parameter, started once for the module."""
    spans = tmp_path_factory.mktemp(request.param) / "spans.jsonl"
    port = free_port()
    command = [sys.executable, *(arg.format(port=port) for arg in SERVERS[request.param])]
    env = {**os.environ, SPANS_ENV: str(spans), "PYTHONPATH": str(ROOT)}
    env.pop("SM_TRACING_REMOTE_CONTEXT", None)
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    try:
        wait_until_serving(port)
        yield Served(port, spans)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_an_invocation_continues_the_callers_trace(served: Served, tracer: Tracer) -> None:
    """Over real HTTP: the server's span is a child of the caller's span in the caller's
    trace, the app saw CustomAttributes without our keys, and the response header carries the
    app's value then the echo of the server's span."""
    value, parent = caller(tracer, "accept_eula=true")
    before = len(read_spans(served.spans, 0, timeout=0))
    response = httpx.post(
        served.url + "/invocations",
        headers={HEADER: value, "X-Amzn-SageMaker-Inference-Id": "e2e-1"},
        content=b"{}",
        timeout=10,
    )
    assert response.status_code == 200
    assert response.json() == {"seen": "accept_eula=true"}
    spans = read_spans(served.spans, before + 1)
    (span,) = spans[before:]
    assert span["name"] == "POST /invocations"
    assert span["kind"] == "SERVER"
    assert span["trace_id"] == f"{parent.trace_id:032x}"
    assert span["parent_span_id"] == f"{parent.span_id:016x}"
    assert span["attributes"]["aws.sagemaker.inference_id"] == "e2e-1"
    assert span["attributes"]["http.response.status_code"] == 200
    assert all("traceparent" not in str(item) for item in span["attributes"].values())
    echo = response.headers[HEADER]
    assert echo.startswith("x-next-token=abc;traceresponse=")
    assert f"{echoed(echo).span_id:016x}" == span["span_id"]


def test_ping_makes_no_span(served: Served) -> None:
    """The health check is answered and not traced."""
    before = len(read_spans(served.spans, 0, timeout=0))
    assert httpx.get(served.url + "/ping", timeout=10).status_code == 200
    httpx.post(served.url + "/invocations", content=b"{}", timeout=10)
    spans = read_spans(served.spans, before + 1)
    assert [span["name"] for span in spans[before:]] == ["POST /invocations"]
    assert spans[-1]["parent_span_id"] is None
