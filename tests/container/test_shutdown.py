"""Shutdown: the spans a container still holds are exported when its server exits normally.

The containers configure tracing with :func:`sm_tracing.configure` and a batch schedule of ten
minutes, so nothing is exported while they serve: only the flush at exit can deliver the spans.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path

import pytest
from _otlp_receiver import OTLPReceiver
from _robust_support import CONTAINER_SPAN, HEADER, PREDICT_SPAN, serve
from _serving import stop, wait_ready

from tests.conftest import requires_package

REQUESTS = 12
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
NEVER_MS = 600_000


def invoke(url: str, count: int) -> list[str]:
    """POST *count* invocations straight to a container, each under its own caller span id;
    the caller span ids, in order."""
    parents = []
    for index in range(count):
        parent = f"{index + 1:016x}"
        request = urllib.request.Request(
            url + "/invocations",
            data=json.dumps({"id": str(index)}).encode(),
            headers={
                "Content-Type": "application/json",
                HEADER: f"accept_eula=true;traceparent=00-{TRACE_ID}-{parent}-01",
            },
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.loads(response.read())["id"] == str(index)
        parents.append(parent)
    return parents


def check_flushed(receiver: OTLPReceiver, parents: list[str], elapsed: float) -> None:
    """Every container span (one per caller span) and its ``predict`` span arrived."""
    spans = receiver.wait_for(lambda got: len(got) >= 2 * len(parents), timeout=5)
    containers = [s for s in spans if s.name == CONTAINER_SPAN]
    print(f"\n{len(spans)} spans delivered at exit; the server took {elapsed:.2f} s to exit")
    assert sorted(s.parent_id or "" for s in containers) == sorted(parents)
    assert {s.trace_id for s in spans} == {TRACE_ID}
    predicts = [s for s in spans if s.name == PREDICT_SPAN]
    assert sorted(s.parent_id or "" for s in predicts) == sorted(s.span_id for s in containers)


def served_without_export(receiver: OTLPReceiver, url: str) -> list[str]:
    """Send the requests, and check nothing was exported while serving."""
    parents = invoke(url, REQUESTS)
    time.sleep(0.3)
    assert receiver.spans == []
    return parents


@pytest.mark.parametrize("preload", [True, False], ids=["preload", "no-preload"])
def test_gunicorn_workers_flush_on_graceful_shutdown(
    receiver: OTLPReceiver, tmp_path: Path, preload: bool
) -> None:
    """SIGTERM to the gunicorn arbiter (a graceful stop): each worker exports its spans as it
    exits, with tracing configured before the fork (``--preload``) or in each worker."""
    container = serve(
        "gunicorn", "gunicorn", receiver.traces_url, tmp_path, workers=2, preload=preload,
        schedule_delay_ms=NEVER_MS,
    )  # fmt: skip
    try:
        wait_ready(container)
        parents = served_without_export(receiver, container.url)
    finally:
        started = time.monotonic()
        code = stop(container, signal.SIGTERM)
    assert code == 0, container.output()
    check_flushed(receiver, parents, time.monotonic() - started)


@pytest.mark.parametrize(
    "sig",
    [
        pytest.param(signal.SIGINT, id="SIGINT"),
        pytest.param(signal.SIGTERM, id="SIGTERM"),
    ],
)
def test_uvicorn_flushes_on_exit(receiver: OTLPReceiver, tmp_path: Path, sig: int) -> None:
    """uvicorn stopped with SIGINT (Ctrl-C) or SIGTERM (what ``docker stop`` and SageMaker
    send) exports every span it holds before the process ends."""
    container = serve(
        "uvicorn", "uvicorn", receiver.traces_url, tmp_path, schedule_delay_ms=NEVER_MS
    )
    try:
        wait_ready(container)
        parents = served_without_export(receiver, container.url)
    finally:
        started = time.monotonic()
        stop(container, sig)
    check_flushed(receiver, parents, time.monotonic() - started)


@requires_package(
    "gunicorn", "24.1.0", "earlier releases reset a connection while recycling a worker"
)
def test_gunicorn_worker_recycled_by_max_requests_flushes(
    receiver: OTLPReceiver, tmp_path: Path
) -> None:
    """A worker that gunicorn recycles after ``--max-requests`` exports its spans as it goes,
    while the server keeps serving."""
    container = serve(
        "gunicorn", "recycled", receiver.traces_url, tmp_path, workers=1,
        schedule_delay_ms=NEVER_MS, args=["--max-requests", "4", "--max-requests-jitter", "0"],
    )  # fmt: skip
    try:
        wait_ready(container)
        parents = invoke(container.url, REQUESTS)
        # Two workers have exited by now (after requests 4 and 8), the third holds its spans.
        spans = receiver.wait_for(lambda got: len(got) >= 16, timeout=10)
        print(f"\n{len(spans)} spans delivered by recycled workers while serving")
        assert {s.parent_id for s in spans if s.name == CONTAINER_SPAN} <= set(parents)
    finally:
        started = time.monotonic()
        code = stop(container, signal.SIGTERM)
    assert code == 0, container.output()
    check_flushed(receiver, parents, time.monotonic() - started)
