"""End to end: a real boto3 client, through LocalRuntime, into model containers running in
their own processes (Flask under gunicorn, FastAPI under uvicorn), which export their spans
over OTLP/HTTP to a receiver in the test.

Each stack runs two containers, as SageMaker would: one behind a real-time endpoint, and one
behind an async endpoint started with ``SM_TRACING_REMOTE_CONTEXT=link``, since nobody waits
for an async request and its container span starts a new trace linked to the caller's.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sm_tracing._attributes import CONTAINER_SPAN_ID, CONTAINER_TRACE_ID
from sm_tracing.local import LocalRuntime
from tests._local_support import runtime_client
from tests._otlp_receiver import OTLPReceiver, ReceivedSpan
from tests._serving import (
    ROOT,
    STACKS,
    Container,
    in_memory,
    instrument_client,
    launch,
    otlp_env,
    stop,
    wait_ready,
)

CONTAINER_SPAN = "POST /invocations"
MINE = "accept_eula=true"

# What each container runs: the demo app under gunicorn, the FastAPI example under uvicorn, and
# the Flask BYOC example under gunicorn, each from the folder it is importable from.
APPS = {
    "gunicorn": ("sm_tracing._demo.app:create_app()", ROOT),
    "uvicorn": ("app:app", ROOT / "examples" / "fastapi"),
    "flask_byoc": ("predictor:app", ROOT / "examples" / "flask_byoc"),
}


def launch_container(
    name: str, app: str, receiver: OTLPReceiver, logs: Path, policy: str
) -> Container:
    """Start one container process of *app* (a key of APPS), exporting to *receiver*."""
    target, cwd = APPS[app]
    stack = "uvicorn" if app == "uvicorn" else "gunicorn"
    env = {**otlp_env(name, receiver.traces_url, 20), "SM_TRACING_REMOTE_CONTEXT": policy}
    return launch(stack, target, name, logs, env=env, cwd=cwd)


@dataclass
class World:
    """Everything the tests talk to, started once for the module."""

    receiver: OTLPReceiver
    runtime: LocalRuntime
    client: Any
    exporter: InMemorySpanExporter
    s3_root: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Five container processes, a LocalRuntime naming each as an endpoint, and a client
    instrumented with the module's own tracer provider."""
    logs = tmp_path_factory.mktemp("logs")
    s3_root = tmp_path_factory.mktemp("s3")
    with contextlib.ExitStack() as stack:
        receiver = stack.enter_context(OTLPReceiver())
        launched = [
            launch_container(f"{app}-{kind}", app, receiver, logs, policy)
            for app in STACKS
            for kind, policy in (("realtime", "continue"), ("async", "link"))
        ]
        launched.append(launch_container("flask-byoc", "flask_byoc", receiver, logs, "continue"))
        for server in launched:
            stack.callback(stop, server)
        for server in launched:
            wait_ready(server)
        servers = {server.name: server for server in launched}
        runtime = stack.enter_context(
            LocalRuntime(
                {name: server.url for name, server in servers.items()},
                s3_root=s3_root,
                output_location="s3://results/out",
            )
        )
        provider, exporter = in_memory()
        instrument_client(stack, provider)
        yield World(receiver, runtime, runtime_client(runtime.url), exporter, s3_root)


def client_span(world: World, operation: str) -> ReadableSpan:
    """The one client span of *operation* since the exporter was last cleared."""
    spans = [
        s for s in world.exporter.get_finished_spans() if s.name == f"SageMaker Runtime.{operation}"
    ]
    assert len(spans) == 1, [s.name for s in world.exporter.get_finished_spans()]
    return spans[0]


def container_spans(world: World, service: str, trace_id: str) -> list[ReceivedSpan]:
    """The spans *service* exported in *trace_id*, once its container span has arrived."""

    def arrived(spans: list[ReceivedSpan]) -> bool:
        return any(
            s.service == service and s.trace_id == trace_id and s.name == CONTAINER_SPAN
            for s in spans
        )

    spans = world.receiver.wait_for(arrived, timeout=10)
    return [s for s in spans if s.service == service and s.trace_id == trace_id]


def ids(span: ReadableSpan) -> tuple[str, str]:
    """A client span's trace and span id in hex."""
    context = span.get_span_context()
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


@pytest.fixture
def fresh(world: World) -> World:
    """The module's world with no client span left from an earlier test."""
    world.exporter.clear()
    return world


@pytest.mark.parametrize("stack", STACKS)
def test_invoke_endpoint_is_one_trace(fresh: World, stack: str) -> None:
    """InvokeEndpoint: the container span is the client span's child in one trace, the caller's
    own CustomAttributes reach the handler and come back, and the echo is on the client span."""
    response = fresh.client.invoke_endpoint(
        EndpointName=f"{stack}-realtime",
        Body=json.dumps({"inputs": "hi", "delay": 0.01}),
        ContentType="application/json",
        CustomAttributes=MINE,
    )
    body = json.loads(response["Body"].read())
    assert body == {"outputs": "HI", "custom_attributes": MINE}
    assert response["CustomAttributes"] == MINE
    client = client_span(fresh, "InvokeEndpoint")
    trace_id, span_id = ids(client)
    spans = container_spans(fresh, f"{stack}-realtime", trace_id)
    (container,) = [s for s in spans if s.name == CONTAINER_SPAN]
    assert container.parent_id == span_id
    assert container.kind == "server"
    (predict,) = [s for s in spans if s.name == "predict"]
    assert predict.parent_id == container.span_id
    assert client.attributes[CONTAINER_TRACE_ID] == trace_id
    assert client.attributes[CONTAINER_SPAN_ID] == container.span_id
    assert {s.trace_id for s in spans} == {trace_id}


@pytest.mark.parametrize("stack", STACKS)
def test_stream_span_lasts_to_the_last_chunk(fresh: World, stack: str) -> None:
    """InvokeEndpointWithResponseStream: one trace, and the container span lasts until the last
    chunk is produced, after every pause between chunks."""
    chunks, delay = 4, 0.05
    response = fresh.client.invoke_endpoint_with_response_stream(
        EndpointName=f"{stack}-realtime",
        Body=json.dumps({"inputs": "tok", "stream": True, "chunks": chunks, "delay": delay}),
        ContentType="application/json",
        CustomAttributes=MINE,
    )
    assert response["CustomAttributes"] == MINE
    text = b"".join(event["PayloadPart"]["Bytes"] for event in response["Body"])
    assert text.decode().splitlines() == [f"tok {n}/{chunks}" for n in range(1, chunks + 1)]
    client = client_span(fresh, "InvokeEndpointWithResponseStream")
    trace_id, span_id = ids(client)
    spans = container_spans(fresh, f"{stack}-realtime", trace_id)
    (container,) = [s for s in spans if s.name == CONTAINER_SPAN]
    (generate,) = [s for s in spans if s.name == "generate"]
    assert container.parent_id == span_id
    assert generate.parent_id == container.span_id
    # Every pause happened inside the container span, which ended only after the generator
    # finished, that is after its last chunk; the client read that chunk before its span ended.
    assert container.duration_ms >= chunks * delay * 1000
    assert container.end_ns >= generate.end_ns
    assert generate.duration_ms >= chunks * delay * 1000
    assert client.end_time is not None and client.end_time >= generate.end_ns
    assert client.attributes[CONTAINER_SPAN_ID] == container.span_id


@pytest.mark.parametrize("stack", STACKS)
def test_async_container_span_is_linked(fresh: World, stack: str) -> None:
    """InvokeEndpointAsync: the container starts a new trace linked to the client span, and the
    caller's own CustomAttributes reach the handler, whose answer lands at OutputLocation."""
    source = fresh.s3_root / "inputs" / f"{stack}.json"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text(json.dumps({"inputs": "later", "delay": 0.01}))
    response = fresh.client.invoke_endpoint_async(
        EndpointName=f"{stack}-async",
        InputLocation=f"s3://inputs/{stack}.json",
        ContentType="application/json",
        CustomAttributes=MINE,
    )
    assert "CustomAttributes" not in response
    assert fresh.runtime.wait_async(10)
    location = response["OutputLocation"]
    assert location.startswith("s3://results/out/")
    output = fresh.s3_root / location.removeprefix("s3://")
    assert json.loads(output.read_text()) == {"outputs": "LATER", "custom_attributes": MINE}
    trace_id, span_id = ids(client_span(fresh, "InvokeEndpointAsync"))

    def linked(spans: list[ReceivedSpan]) -> bool:
        return any((trace_id, span_id) in s.links for s in spans)

    spans = fresh.receiver.wait_for(linked, timeout=10)
    (container,) = [s for s in spans if (trace_id, span_id) in s.links]
    assert container.service == f"{stack}-async"
    assert container.name == CONTAINER_SPAN
    assert container.trace_id != trace_id
    assert container.parent_id is None
    assert not [s for s in spans if s.service == f"{stack}-async" and s.trace_id == trace_id]


def test_flask_byoc_example(fresh: World) -> None:
    """examples/flask_byoc under gunicorn: its invocation and its predict span join the
    caller's trace, and the caller's CustomAttributes reach it and come back."""
    response = fresh.client.invoke_endpoint(
        EndpointName="flask-byoc",
        Body=json.dumps({"inputs": "a great good day"}),
        ContentType="application/json",
        CustomAttributes=MINE,
    )
    assert json.loads(response["Body"].read()) == {"score": 3.0, "custom_attributes": MINE}
    assert response["CustomAttributes"] == MINE
    trace_id, span_id = ids(client_span(fresh, "InvokeEndpoint"))
    spans = container_spans(fresh, "flask-byoc", trace_id)
    (container,) = [s for s in spans if s.name == CONTAINER_SPAN]
    (predict,) = [s for s in spans if s.name == "predict"]
    assert container.parent_id == span_id
    assert predict.parent_id == container.span_id
    assert predict.attributes["model.words"] == 4


def test_client_example(world: World) -> None:
    """examples/client/invoke.py, pointed at the local runtime, makes one trace from its own
    span through the client span into the container, and prints that trace's link."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("OTEL_", "AWS_"))}
    env.update(
        AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME=world.runtime.url,
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        OTEL_EXPORTER_OTLP_ENDPOINT=world.receiver.url,
    )
    script = ROOT / "examples" / "client" / "invoke.py"
    result = subprocess.run(
        [sys.executable, str(script), "gunicorn-realtime", '{"inputs": "hi"}',
         "--custom-attributes", MINE, "--jaeger-url", "http://jaeger:16686"],
        check=False, capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert json.loads(lines[0]) == {"outputs": "HI", "custom_attributes": MINE}
    assert lines[1] == f"CustomAttributes: {MINE}"
    trace_id = lines[2].split()[1].rstrip(":")
    assert lines[2].endswith(f"http://jaeger:16686/trace/{trace_id}")
    wanted = {"invoke.py", "SageMaker Runtime.InvokeEndpoint", CONTAINER_SPAN}
    spans = world.receiver.wait_for(
        lambda got: wanted <= {s.name for s in got if s.trace_id == trace_id}
    )
    mine = {s.name: s for s in spans if s.trace_id == trace_id}
    assert mine["SageMaker Runtime.InvokeEndpoint"].parent_id == mine["invoke.py"].span_id
    assert mine[CONTAINER_SPAN].parent_id == mine["SageMaker Runtime.InvokeEndpoint"].span_id
    assert mine["invoke.py"].service == "sagemaker-client"
