"""Concurrency: many callers at once, one client, containers serving in parallel, and every
container span is the child of its own caller's client span, none crossed.

Callers go through :class:`sm_tracing.local.LocalRuntime` into real container processes: Flask
under gunicorn (three workers, ``--preload``, four threads each) and FastAPI under uvicorn,
exporting over OTLP/HTTP to a receiver in the test. Each request carries an id the container's
``predict`` span records and its answer echoes, so every container span can be matched to the
caller that sent it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer

from sm_tracing._attributes import CONTAINER_SPAN_ID
from sm_tracing.local import LocalRuntime
from tests._local_support import runtime_client
from tests._otlp_receiver import OTLPReceiver, ReceivedSpan
from tests._robust_support import CONTAINER_SPAN, PREDICT_SPAN, REQUEST_ID, serve
from tests._serving import Container, in_memory, instrument_client, stop, wait_ready

STACKS = ("gunicorn", "uvicorn")
CALLER_SPAN = "caller"
CREDENTIALS = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
MINE = "accept_eula=true"


@dataclass
class World:
    """The receiver, the containers, the runtime in front of them and the client's spans."""

    receiver: OTLPReceiver
    containers: dict[str, Container]
    runtime: LocalRuntime
    exporter: InMemorySpanExporter
    tracer: Tracer


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A gunicorn and a uvicorn container, a LocalRuntime naming each as an endpoint, and the
    client side instrumented with the module's own tracer provider."""
    logs: Path = tmp_path_factory.mktemp("logs")
    with contextlib.ExitStack() as stack:
        receiver = stack.enter_context(OTLPReceiver())
        containers = {
            "gunicorn": serve("gunicorn", "gunicorn", receiver.traces_url, logs, workers=3),
            "uvicorn": serve("uvicorn", "uvicorn", receiver.traces_url, logs),
        }
        for container in containers.values():
            stack.callback(stop, container)
        for container in containers.values():
            wait_ready(container)
        runtime = stack.enter_context(LocalRuntime({name: c.url for name, c in containers.items()}))
        provider, exporter = in_memory()
        instrument_client(stack, provider)
        yield World(receiver, containers, runtime, exporter, provider.get_tracer("caller"))


@pytest.fixture
def fresh(world: World) -> World:
    """The module's world with no span left from an earlier test."""
    world.exporter.clear()
    world.receiver.clear()
    return world


def body(request_id: str) -> bytes:
    """A request body: the id to echo, and a short pause in the model so requests overlap."""
    return json.dumps({"id": request_id, "delay": 0.005}).encode()


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    """A span's trace and span id in hex."""
    context = span.get_span_context()
    assert context is not None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def check_uncrossed(world: World, service: str, ids: list[str]) -> None:
    """For every request id: the caller span, its one client span, the container span under
    that client span and the ``predict`` span with the same id under that container span, all
    in the caller's trace; and the client span names that container span as the one that
    answered it."""
    finished = world.exporter.get_finished_spans()
    callers = {str((s.attributes or {})[REQUEST_ID]): s for s in finished if s.name == CALLER_SPAN}
    assert sorted(callers) == sorted(ids)
    by_parent: dict[str, list[ReadableSpan]] = {}
    for span in finished:
        if span.parent is not None and span.name.startswith("SageMaker Runtime."):
            by_parent.setdefault(f"{span.parent.span_id:016x}", []).append(span)

    def arrived(spans: list[ReceivedSpan]) -> bool:
        # The container span ends after the response has left, so it may be exported in a
        # later batch than the predict span under it: wait for both.
        mine = [s for s in spans if s.service == service]
        predicted = sum(s.name == PREDICT_SPAN for s in mine)
        served = sum(s.name == CONTAINER_SPAN for s in mine)
        return predicted >= len(ids) and served >= len(ids)

    received = world.receiver.wait_for(arrived, timeout=30)
    mine = [s for s in received if s.service == service]
    containers = {s.span_id: s for s in mine if s.name == CONTAINER_SPAN}
    predicts = {str(s.attributes[REQUEST_ID]): s for s in mine if s.name == PREDICT_SPAN}
    assert len(containers) == len(ids)
    assert sorted(predicts) == sorted(ids)
    for request_id in ids:
        trace_id, caller_id = hex_ids(callers[request_id])
        (client,) = by_parent[caller_id]
        client_trace, client_id = hex_ids(client)
        assert client_trace == trace_id
        predict = predicts[request_id]
        container = containers[predict.parent_id or ""]
        assert container.parent_id == client_id, request_id
        assert container.trace_id == predict.trace_id == trace_id
        assert client.attributes is not None
        assert client.attributes[CONTAINER_SPAN_ID] == container.span_id


@pytest.mark.parametrize("stack", STACKS)
def test_threads_sharing_one_client_are_not_crossed(fresh: World, stack: str) -> None:
    """32 threads share one botocore client, each call (every other one streamed) under its own
    span: every answer is the caller's own, and every container span is the child of its
    caller's client span."""
    threads, per_thread = 32, 16
    client = runtime_client(fresh.runtime.url, max_pool_connections=threads)
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []
    answers: dict[str, Any] = {}

    def caller(index: int) -> None:
        try:
            barrier.wait(10)
            for call in range(per_thread):
                request_id = f"t{index}-{call}"
                with fresh.tracer.start_as_current_span(
                    CALLER_SPAN, attributes={REQUEST_ID: request_id}
                ):
                    params = {
                        "EndpointName": stack,
                        "Body": body(request_id),
                        "CustomAttributes": MINE,
                    }
                    if call % 2:
                        # Every other call streams: its span ends when the stream is read.
                        response = client.invoke_endpoint_with_response_stream(**params)
                        data = b"".join(e["PayloadPart"]["Bytes"] for e in response["Body"])
                    else:
                        data = client.invoke_endpoint(**params)["Body"].read()
                answers[request_id] = json.loads(data)
        except BaseException as exc:
            errors.append(exc)

    started = time.perf_counter()
    workers = [threading.Thread(target=caller, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    elapsed = time.perf_counter() - started
    assert errors == []
    ids = [f"t{n}-{c}" for n in range(threads) for c in range(per_thread)]
    assert sorted(answers) == sorted(ids)
    for request_id, answer in answers.items():
        assert answer["id"] == request_id
        assert answer["custom_attributes"] == MINE
    pids = {answer["pid"] for answer in answers.values()}
    print(f"\n{stack}: {len(ids)} calls from {threads} threads in {elapsed:.2f} s, "
          f"served by {len(pids)} worker process(es)")  # fmt: skip
    if stack == "gunicorn":
        assert len(pids) > 1  # the calls were spread over the forked workers
    check_uncrossed(fresh, stack, ids)


@pytest.mark.parametrize("stack", STACKS)
def test_concurrent_asyncio_invocations_are_not_crossed(fresh: World, stack: str) -> None:
    """1,000 concurrent asyncio invocations through one aiobotocore client, each task under its
    own span: every answer is the task's own, and every container span is the child of its
    task's client span."""
    count = 1000
    ids = [f"a{n}" for n in range(count)]

    async def run() -> dict[str, Any]:
        session = AioSession()
        config = AioConfig(retries={"total_max_attempts": 1}, max_pool_connections=64)
        async with session.create_client(
            "sagemaker-runtime",
            region_name="us-east-1",
            endpoint_url=fresh.runtime.url,
            config=config,
            **CREDENTIALS,
        ) as client:

            async def one(request_id: str) -> tuple[str, Any]:
                with fresh.tracer.start_as_current_span(
                    CALLER_SPAN, attributes={REQUEST_ID: request_id}
                ):
                    response = await client.invoke_endpoint(
                        EndpointName=stack, Body=body(request_id), CustomAttributes=MINE
                    )
                    data = await response["Body"].read()
                return request_id, json.loads(data)

            return dict(await asyncio.gather(*(one(request_id) for request_id in ids)))

    started = time.perf_counter()
    answers = asyncio.run(run())
    elapsed = time.perf_counter() - started
    assert sorted(answers) == sorted(ids)
    for request_id, answer in answers.items():
        assert answer["id"] == request_id
        assert answer["custom_attributes"] == MINE
    print(f"\n{stack}: {count} concurrent asyncio invocations in {elapsed:.2f} s")
    check_uncrossed(fresh, stack, ids)
