"""examples/batch_transform run as its README says: ``run_job.py`` in a process of its own, with
a real boto3 ``sagemaker`` client and ``LocalRuntime``, starting ``app.py`` under real gunicorn
with the job's environment; every process exports over OTLP/HTTP to a receiver here, so the
test sees whether client and container spans form one trace."""

from __future__ import annotations

import ast
import subprocess
import sys
from typing import Any

import pytest

pytest.importorskip("flask")
pytest.importorskip("gunicorn")

from tests._otlp_receiver import OTLPReceiver, ReceivedSpan
from tests._serving import ROOT, _no_control_socket, shell_env

FOLDER = ROOT / "examples" / "batch_transform"
JOB_SPAN = "SageMaker.CreateTransformJob"
RECORD_SPAN = "POST /invocations"
# Records that cannot turn up in a span by chance, and what the model answers to each.
RECORDS = {"3.25,4.75": "3.25,4.75,8", "10,20,30": "10,20,30,60", "0.5,1e3": "0.5,1e3,1000.5"}


def example_env(receiver: OTLPReceiver) -> dict[str, str]:
    """A user's shell with a collector (*receiver*), spans sent every 20 ms."""
    # Recent gunicorn opens a control socket at one fixed path: none, so that servers of
    # other tests running at the same time do not collide with this one.
    return shell_env(
        receiver.url,
        OTEL_BSP_SCHEDULE_DELAY="20",
        GUNICORN_CMD_ARGS=" ".join(_no_control_socket()),
    )


def strings(span: ReceivedSpan) -> list[str]:
    """Every attribute value of *span*, as text."""
    return [str(value) for value in span.attributes.values()]


def test_batch_transform_example_is_one_trace() -> None:
    """run_job.py creates the job through the instrumented client and prints the answers in
    record order; every record's container span is a child of the CreateTransformJob span, in
    the trace of the script's own span; the job's Environment keeps the caller's variable (the
    container's service name) beside the job span's TRACEPARENT; no span holds a record."""
    with OTLPReceiver() as receiver:
        result = subprocess.run(
            [sys.executable, "run_job.py", *RECORDS],
            cwd=FOLDER, env=example_env(receiver),
            check=False, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        status, environment, *answers, last = result.stdout.splitlines()
        assert status == "traced-transform: Completed"
        assert answers == list(RECORDS.values())
        trace_id = last.split()[1].rstrip(":")
        assert last.endswith(f"http://localhost:16686/trace/{trace_id}")

        def complete(spans: list[ReceivedSpan]) -> bool:
            mine = [s for s in spans if s.trace_id == trace_id]
            return (
                len([s for s in mine if s.name == RECORD_SPAN]) == len(RECORDS)
                and len([s for s in mine if s.name == "predict"]) == len(RECORDS)
                and {"run_job.py", JOB_SPAN} <= {s.name for s in mine}
            )

        received = receiver.wait_for(complete, timeout=20)

    mine = [s for s in received if s.trace_id == trace_id]
    by_name: dict[str, list[ReceivedSpan]] = {}
    for span in mine:
        by_name.setdefault(span.name, []).append(span)
    (script,) = by_name["run_job.py"]
    (job,) = by_name[JOB_SPAN]
    assert script.service == job.service == "transform-client"
    assert job.kind == "client"
    assert job.parent_id == script.span_id
    assert job.attributes["aws.sagemaker.transform_job.name"] == "traced-transform"
    label, _, printed = environment.partition(": ")
    assert label == "Environment"
    variables = ast.literal_eval(printed)
    assert list(variables) == ["OTEL_SERVICE_NAME", "TRACEPARENT"]  # the caller's first
    assert variables["OTEL_SERVICE_NAME"] == "transform-model"
    assert variables["TRACEPARENT"].startswith(f"00-{trace_id}-{job.span_id}-")
    containers = by_name[RECORD_SPAN]
    for container in containers:
        assert container.service == "transform-model"  # the caller's own job variable
        assert container.kind == "server"
        assert container.parent_id == job.span_id
    container_ids = {container.span_id for container in containers}
    for predict in by_name["predict"]:
        assert predict.parent_id in container_ids
        assert predict.attributes["model.records"] == 1  # SingleRecord: one call per record
    assert len({p.parent_id for p in by_name["predict"]}) == len(RECORDS)
    leaked: list[Any] = [
        (span.name, text)
        for span in mine
        for text in strings(span)
        if any(record in text for record in RECORDS)
    ]
    assert leaked == []
