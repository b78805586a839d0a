"""The model-server examples, run for real in their own process: the sagemaker-inference
toolkit's Transformer calling ``examples/toolkit/inference.py`` with a Multi Model Server
``Context``, and TorchServe's ``Context`` passed to ``examples/torchserve/handler.py``. Each
exports over OTLP/HTTP to a receiver in the test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests._otlp_receiver import OTLPReceiver, ReceivedSpan

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
OTHER_TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "00f067aa0ba902b7"
OTHER_PARENT = "b7ad6b7169203331"
HEADER = "X-Amzn-SageMaker-Custom-Attributes"


def run_driver(
    receiver: OTLPReceiver, folder: str, service: str, code: str
) -> tuple[dict[str, object], list[ReceivedSpan]]:
    """Run *code* with the example folder importable, exporting as *service*; the JSON it
    prints and the spans it exported (flushed when the process exits)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    env.update(
        OTEL_SERVICE_NAME=service,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
        PYTHONPATH=os.pathsep.join([str(EXAMPLES / folder), env.get("PYTHONPATH", "")]),
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout.strip().splitlines()[-1])
    spans = [s for s in receiver.spans if s.service == service]
    return output, spans


TOOLKIT = """
import json
from mms.service import Service
from sagemaker_inference.default_handler_service import DefaultHandlerService

# As a Multi Model Server worker loads the model and serves a request.
handler = DefaultHandlerService()
service = Service("words", "/tmp", None, handler.handle, None, 1)
handler.initialize(service.context)
wire = service.predict([{
    "requestId": b"r-1",
    "headers": [
        {"name": b"Content-Type", "value": b"application/json"},
        {"name": b"Accept", "value": b"application/json"},
        {"name": b"X-Amzn-SageMaker-Custom-Attributes", "value": CUSTOM_ATTRIBUTES.encode()},
    ],
    "parameters": [{
        "name": "body",
        "contentType": "application/json",
        "value": b'{"inputs": "a great good day"}',
    }],
}])
print(json.dumps({
    "wire": bytes(wire).decode("latin-1"),
    "response_headers": service.context.request_processor[0].get_response_headers(),
}))
"""


@pytest.mark.parametrize(
    "mine",
    [
        "",
        "accept_eula=true;",
    ],
)
def test_toolkit_example(mine: str) -> None:
    """Served by Multi Model Server's own Service, each request is one SERVER span, the child
    of the caller's span (with or without the caller's own pairs next to ours); the decorated
    functions are its children, the model's own span nests under predict_fn, loading the model
    makes no span, and the answer and the trace echo come back."""
    value = f"{mine}traceparent=00-{TRACE}-{PARENT}-01"
    code = f"CUSTOM_ATTRIBUTES = {value!r}\n" + TOOLKIT
    with OTLPReceiver() as receiver:
        output, spans = run_driver(receiver, "toolkit", "toolkit-example", code)
    assert json.dumps({"score": 3.0}) in str(output["wire"])
    by_name = {span.name: span for span in spans}
    assert set(by_name) == {"invocations", "input_fn", "predict_fn", "score"}
    server = by_name["invocations"]
    assert (server.kind, server.trace_id, server.parent_id) == ("server", TRACE, PARENT)
    for name in ("input_fn", "predict_fn"):
        assert by_name[name].parent_id == server.span_id
    assert by_name["score"].parent_id == by_name["predict_fn"].span_id
    headers = output["response_headers"]
    assert isinstance(headers, dict)
    assert headers[HEADER].startswith(f"traceresponse=00-{TRACE}-{server.span_id}-01")


TORCHSERVE = f"""
import json
from ts.context import Context, RequestProcessor
import handler

context = Context("words", "/tmp", {{}}, 2, None, "0.11")
context.request_processor = [
    RequestProcessor({{"{HEADER}": "traceparent=00-{TRACE}-{PARENT}-01"}}),
    RequestProcessor({{"{HEADER}": "traceparent=00-{OTHER_TRACE}-{OTHER_PARENT}-01"}}),
]
rows = [{{"body": b'{{"inputs": "good"}}'}}, {{"body": b'{{"inputs": "awful bad"}}'}}]
print(json.dumps({{"result": handler.handle(rows, context)}}))
"""


def test_torchserve_example() -> None:
    """A TorchServe batch of two requests from two callers: the answers come back in order and
    each request gets its own span, the child of its own caller's span."""
    with OTLPReceiver() as receiver:
        output, spans = run_driver(receiver, "torchserve", "torchserve-example", TORCHSERVE)
    assert output["result"] == [json.dumps({"score": 1.0}), json.dumps({"score": -3.0})]
    handles = sorted((s for s in spans if s.name == "handle"), key=lambda s: s.trace_id)
    assert [(s.trace_id, s.parent_id) for s in handles] == sorted(
        [(TRACE, PARENT), (OTHER_TRACE, OTHER_PARENT)]
    )
    (batch,) = [s for s in spans if s.name == "score batch"]
    assert batch.parent_id in {s.span_id for s in handles}


def test_djl_example() -> None:
    """The DJL Serving example, where djl_python is installed: a request's traceparent
    property makes its span a child of the caller's."""
    pytest.importorskip("djl_python", reason="DJL Serving's Python engine is not installed")
    code = f"""
import json
from djl_python import Input
import model

inputs = Input()
inputs.properties["traceparent"] = "00-{TRACE}-{PARENT}-01"
inputs.content.add(key="data", value=b'{{"inputs": "good"}}')
model.handle(inputs)
print(json.dumps({{}}))
"""
    with OTLPReceiver() as receiver:
        _, spans = run_driver(receiver, "djl", "djl-example", code)
    (handle,) = [s for s in spans if s.name == "handle"]
    assert (handle.trace_id, handle.parent_id) == (TRACE, PARENT)
