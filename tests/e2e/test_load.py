"""Load: 10,000 invocations through :class:`sm_tracing.local.LocalRuntime` into a multi-worker
gunicorn container, client and container exporting over OTLP/HTTP to a receiver in a process
of its own. No invocation fails, no span is lost once everything has shut down, and the client
process's resident memory stays flat.

Run with ``pytest -m load -s`` (the figures are printed); deselect with ``-m 'not load'``.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from sm_tracing.local import LocalRuntime
from tests._local_support import runtime_client
from tests._robust_support import CountingReceiver, rss_bytes, serve
from tests._serving import instrument_client, stop, wait_ready

INVOCATIONS = 10_000
THREADS = 8
FIRST = 1_000
# Allocator and thread-stack noise; a span, a connection or a response kept per call would be
# tens of MB over 9,000 calls.
MAX_RSS_GROWTH = 8 * 1024 * 1024
CLIENT_SERVICE = "load-client"
CONTAINER_SERVICE = "load-container"


@pytest.mark.load
def test_ten_thousand_invocations_lose_nothing(tmp_path: Path) -> None:
    """10,000 invocations from 8 threads sharing one client: zero failures, every answer the
    caller's own, 10,000 client spans and 10,000 container spans (each under its client span)
    received after shutdown, and the client's RSS flat from the first 1,000 calls to the end."""
    with contextlib.ExitStack() as stack:
        receiver = stack.enter_context(CountingReceiver())
        container = serve(
            "gunicorn", CONTAINER_SERVICE, receiver.traces_url, tmp_path,
            workers=2, schedule_delay_ms=200,
        )  # fmt: skip
        stack.callback(stop, container)
        wait_ready(container)
        runtime = stack.enter_context(LocalRuntime(container.url))
        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: CLIENT_SERVICE}))
        provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(endpoint=receiver.traces_url), schedule_delay_millis=200
            )
        )
        instrument_client(stack, provider)
        client = runtime_client(runtime.url, max_pool_connections=THREADS)

        lock = threading.Lock()
        done = 0
        failures: list[str] = []
        rss: dict[str, int] = {}

        def caller(index: int) -> None:
            nonlocal done
            for call in range(INVOCATIONS // THREADS):
                request_id = f"{index}-{call}"
                try:
                    response = client.invoke_endpoint(
                        EndpointName="load",
                        Body=json.dumps({"id": request_id}),
                        ContentType="application/json",
                        CustomAttributes="accept_eula=true",
                    )
                    answer: dict[str, Any] = json.loads(response["Body"].read())
                    if answer["id"] != request_id or answer["custom_attributes"] != (
                        "accept_eula=true"
                    ):
                        failures.append(f"{request_id}: {answer}")
                except Exception as exc:
                    failures.append(f"{request_id}: {exc!r}")
                with lock:
                    done += 1
                    if done == FIRST:
                        rss["first"] = rss_bytes()

        started = time.perf_counter()
        threads = [threading.Thread(target=caller, args=(n,)) for n in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        rss["end"] = rss_bytes()

        # Everything shuts down as in production: the client flushes, gunicorn stops gracefully.
        provider.shutdown()
        assert stop(container, signal.SIGTERM) == 0, container.output()[-2000:]
        stats = receiver.wait_for(
            lambda s: s["client_spans"] >= INVOCATIONS and s["container_spans"] >= INVOCATIONS,
            timeout=30,
        )
        total = time.perf_counter() - started

    growth = rss["end"] - rss["first"]
    print(
        f"\n{INVOCATIONS} invocations from {THREADS} threads in {elapsed:.1f} s "
        f"({INVOCATIONS / elapsed:.0f}/s), {total:.1f} s with shutdown and delivery; "
        f"failures {len(failures)}; spans received: {stats['client_spans']} client, "
        f"{stats['container_spans']} container, {stats['predict_spans']} predict; "
        f"client RSS {rss['first'] / 2**20:.1f} MiB after {FIRST}, "
        f"{rss['end'] / 2**20:.1f} MiB at the end ({growth / 2**20:+.2f} MiB)"
    )
    assert failures == [], failures[:5]
    assert stats["client_spans"] == INVOCATIONS
    assert stats["container_spans"] == INVOCATIONS
    assert stats["predict_spans"] == INVOCATIONS
    assert stats["containers_under_a_client_span"] == INVOCATIONS
    assert stats["predicts_under_a_container_span"] == INVOCATIONS
    assert stats["distinct_span_ids"] == stats["spans"] == 3 * INVOCATIONS
    assert growth < MAX_RSS_GROWTH
