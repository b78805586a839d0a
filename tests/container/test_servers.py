"""End to end: Flask behind WSGIMiddleware under a real gunicorn, FastAPI behind ASGIMiddleware
under a real uvicorn, each in its own process on a loopback port, called over HTTP; then the
same servers with SM_TRACING_INJECT_HEADERS on, in front of apps that trace from the request's
own headers."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _container_support import (
    HEADER,
    SPANS_ENV,
    caller,
    echoed,
    read_spans,
)
from _serving import launch, serving
from opentelemetry.trace import Tracer

# The app each server runs, and the same servers in front of apps that trace from the request
# headers (below).
SERVERS = {
    "gunicorn": "tests._container_support:flask_app()",
    "uvicorn": "tests._container_support:fastapi_app()",
}
INJECTING_SERVERS = {
    "gunicorn": "tests._container_support:injecting_flask_app()",
    "uvicorn": "tests._container_support:injecting_fastapi_app()",
}


class Served:
    """A server process and where it writes its spans."""

    def __init__(self, url: str, spans: Path) -> None:
        self.url = url
        self.spans = spans


@contextlib.contextmanager
def serve(
    stack: str, app: str, directory: Path, environment: dict[str, str] | None = None
) -> Iterator[Served]:
    """*app* under *stack*, writing its spans and its output to *directory*, stopped after."""
    spans = directory / "spans.jsonl"
    env = {SPANS_ENV: str(spans), **(environment or {})}
    with serving(launch(stack, app, stack, directory, env=env)) as container:
        yield Served(container.url, spans)


@pytest.fixture(scope="module", params=sorted(SERVERS))
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """The server of this parameter, started once for the module."""
    directory = tmp_path_factory.mktemp(request.param)
    with serve(request.param, SERVERS[request.param], directory) as server:
        yield server


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


# --- inject_headers: apps that trace from the request's own headers ------------------------------


@pytest.fixture(scope="module", params=sorted(INJECTING_SERVERS))
def injecting(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """The server of this parameter with SM_TRACING_INJECT_HEADERS=true, started once."""
    directory = tmp_path_factory.mktemp(f"injecting-{request.param}")
    environment = {"SM_TRACING_INJECT_HEADERS": "true"}
    with serve(request.param, INJECTING_SERVERS[request.param], directory, environment) as server:
        yield server


def _children(path: Path, parent_id: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The spans in *path* whose parent is *parent_id*, once there is one."""
    deadline = time.monotonic() + timeout
    while True:
        found = [s for s in read_spans(path, 0, timeout=0) if s["parent_span_id"] == parent_id]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def test_the_apps_own_span_joins_the_trace_under_ours(injecting: Served, tracer: Tracer) -> None:
    """Over real HTTP, with SM_TRACING_INJECT_HEADERS=true: the app's own SERVER span, made
    from the request's headers, is a child of the container span, which is a child of the
    caller's span, all in the caller's trace."""
    value, parent = caller(tracer, "accept_eula=true")
    response = httpx.post(
        injecting.url + "/invocations", headers={HEADER: value}, content=b"{}", timeout=10
    )
    assert response.status_code == 200
    (ours,) = _children(injecting.spans, f"{parent.span_id:016x}")
    assert ours["name"] == "POST /invocations" and ours["kind"] == "SERVER"
    (theirs,) = _children(injecting.spans, ours["span_id"])
    assert theirs["kind"] == "SERVER"
    assert theirs["trace_id"] == ours["trace_id"] == f"{parent.trace_id:032x}"
    trace_id, span_id = f"{parent.trace_id:032x}", ours["span_id"]
    assert response.json()["traceparent"].startswith(f"00-{trace_id}-{span_id}-")
