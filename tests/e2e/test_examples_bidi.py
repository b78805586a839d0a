"""examples/bidi run as its README says: ``app.py`` under real uvicorn, and ``client.py`` in a
process of its own, opening a bidirectional stream with the real aws-sdk-sagemaker-runtime-http2
client through ``LocalBidiRuntime``; both export over OTLP/HTTP to a receiver here, so the test
sees whether the client's and the container's spans form one trace.

The SDK needs Python 3.12: CI runs this file in its 3.12 environment (``.ci/run``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("aws_sdk_sagemaker_runtime_http2", reason="the SDK needs Python 3.12")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("h2")
pytest.importorskip("websockets")
pytest.importorskip("trustme")

from tests._otlp_receiver import OTLPReceiver, ReceivedSpan
from tests._serving import ROOT, launch, otlp_env, serving, shell_env

FOLDER = ROOT / "examples" / "bidi"
STREAM_SPAN = "SageMaker Runtime HTTP2.InvokeEndpointWithBidirectionalStream"
SESSION_SPAN = "WS /invocations-bidirectional-stream"
NAMES = {"client.py", STREAM_SPAN, SESSION_SPAN}  # and one "transform" span per message
# The caller's own ModelQueryString: an encoded space, and a mode the container acts on.
QUERY = "model=demo-7&mode=reverse&note=a%20b"
MESSAGES = ["hello", "duplex", "world"]


def test_bidi_example_is_one_trace(tmp_path: Path) -> None:
    """client.py sends its messages and prints the container's answers, which show that the app
    got the caller's query parameters intact and none of ours; the script's span, the stream's
    CLIENT span and the container's session span (with the app's spans under it) are one
    trace, the messages counted each way; no span holds a message or the query string."""
    with OTLPReceiver() as receiver:
        container = launch(
            "uvicorn", "app:app", "bidi-model", tmp_path, cwd=FOLDER,
            env=otlp_env("bidi-model", receiver.traces_url, 20),
        )  # fmt: skip
        with serving(container):
            result = subprocess.run(
                [sys.executable, "client.py", "--local", container.url.replace("http", "ws", 1),
                 "--query", QUERY, *MESSAGES],
                cwd=FOLDER, env=shell_env(receiver.url, OTEL_METRICS_EXPORTER="none"),
                check=False, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert result.returncode == 0, result.stdout + result.stderr + container.output()
            *answers, last = result.stdout.splitlines()
            trace_id = last.split()[1].rstrip(":")

            def complete(spans: list[ReceivedSpan]) -> bool:
                names = [s.name for s in spans if s.trace_id == trace_id]
                return set(names) >= NAMES and names.count("transform") == len(MESSAGES)

            received = receiver.wait_for(complete, timeout=20)

    params = {"model": "demo-7", "mode": "reverse", "note": "a b"}
    assert [json.loads(answer) for answer in answers] == [
        {"text": message[::-1], "params": params} for message in MESSAGES
    ]
    assert last.endswith(f"http://localhost:16686/trace/{trace_id}")
    # A clean ending: no traceback, no task left failing unseen.
    assert "Traceback" not in result.stderr, result.stderr
    assert "never retrieved" not in result.stderr, result.stderr
    # Every span the container made is in the caller's trace: no other server span started a
    # trace of its own for the session.
    assert {s.trace_id for s in received if s.service == "bidi-model"} == {trace_id}
    mine = [s for s in received if s.trace_id == trace_id]
    (script,) = [s for s in mine if s.name == "client.py"]
    (stream,) = [s for s in mine if s.name == STREAM_SPAN]
    (session,) = [s for s in mine if s.name == SESSION_SPAN]
    transforms = [s for s in mine if s.name == "transform"]
    assert script.service == stream.service == "bidi-client"
    assert stream.kind == "client"
    assert stream.parent_id == script.span_id
    assert stream.attributes["aws.sagemaker.stream.request_chunk_count"] == len(MESSAGES)
    assert stream.attributes["aws.sagemaker.stream.chunk_count"] == len(MESSAGES)
    assert session.service == "bidi-model"
    assert session.kind == "server"
    assert session.parent_id == stream.span_id
    assert session.attributes["aws.sagemaker.stream.messages_received"] == len(MESSAGES)
    assert session.attributes["aws.sagemaker.stream.messages_sent"] == len(MESSAGES)
    assert {s.parent_id for s in transforms} == {session.span_id}
    assert stream.start_ns <= session.start_ns
    assert session.end_ns <= stream.end_ns <= script.end_ns
    leaked = [
        (span.name, value)
        for span in mine
        for value in map(str, span.attributes.values())
        if "demo-7" in value or any(message in value for message in MESSAGES)
    ]
    assert leaked == []
