"""The real model servers, started the way SageMaker starts them, each behind the local SageMaker
runtime and called by a real boto3 client under its caller's span.

- Multi Model Server with the SageMaker inference toolkit, by
  ``sagemaker_inference.model_server.start_model_server``;
- TorchServe with the SageMaker PyTorch toolkit, by its launcher, batching three requests
  (``SAGEMAKER_TS_BATCH_SIZE=3``);
- TorchServe with a custom handler, ``examples/torchserve`` run as its README says, batching;
- Multi Model Server with the Hugging Face toolkit, by its launcher.

The workers export their spans over OTLP to a receiver here. Each request must be one trace
from its caller: one SERVER span under the client span, the user's functions as its children,
its own echo in its own response, and nothing left over from start-up.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _client_support import make_client
from _model_servers import ROOT, ModelServer, environment, ports, write_model
from _otlp_receiver import OTLPReceiver, ReceivedSpan
from botocore.exceptions import ClientError
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer

import sm_tracing
from sm_tracing.local import LocalRuntime

pytestmark = [pytest.mark.model_servers, pytest.mark.timeout(1200)]

CONTAINER_SPAN = "aws.sagemaker.container.span_id"
PYTHON = Path(sys.executable).parent


@pytest.fixture(scope="module")
def receiver() -> Iterator[OTLPReceiver]:
    """Collects what the workers export."""
    with OTLPReceiver() as receiver:
        yield receiver


class Caller:
    """A real sagemaker-runtime client, instrumented, calling a model server through the local
    SageMaker runtime, each call under a span of its own."""

    def __init__(self, tracer: Tracer, exporter: InMemorySpanExporter, runtime_url: str) -> None:
        self._tracer = tracer
        self._exporter = exporter
        self._client = make_client(endpoint_url=runtime_url)

    def invoke(self, body: Any, custom_attributes: str | None = "accept_eula=true") -> Any:
        """The client span's id and trace id, and what came back (or the error)."""
        params: dict[str, Any] = {
            "EndpointName": "model",
            "Body": json.dumps(body).encode(),
            "ContentType": "application/json",
            "Accept": "application/json",
        }
        if custom_attributes is not None:
            params["CustomAttributes"] = custom_attributes
        with self._tracer.start_as_current_span("caller") as span:
            try:
                response = self._client.invoke_endpoint(**params)
                answer: Any = (
                    json.loads(response["Body"].read()),
                    response.get("CustomAttributes"),
                )
            except ClientError as error:
                answer = error
        return f"{span.get_span_context().trace_id:032x}", answer

    def invoke_together(self, bodies: list[Any]) -> list[Any]:
        """Each body sent at once from its own thread, with its own caller."""
        results: list[Any] = [None] * len(bodies)
        barrier = threading.Barrier(len(bodies))

        def run(index: int) -> None:
            barrier.wait()
            results[index] = self.invoke(bodies[index])

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(bodies))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        return results

    def client_span(self, trace_id: str) -> ReadableSpan:
        (span,) = [
            span
            for span in self._exporter.get_finished_spans()
            if span.kind.name == "CLIENT" and f"{span.context.trace_id:032x}" == trace_id
        ]
        return span


@pytest.fixture
def calling(
    tracer: Tracer, exporter: InMemorySpanExporter, tracer_provider: TracerProvider
) -> Iterator[Callable[[ModelServer], Caller]]:
    """Makes a Caller in front of a server; the runtimes are closed afterwards."""
    runtimes: list[LocalRuntime] = []
    sm_tracing.instrument(tracer_provider=tracer_provider)

    def make(server: ModelServer) -> Caller:
        runtime = LocalRuntime(server.url).start()
        runtimes.append(runtime)
        return Caller(tracer, exporter, runtime.url)

    yield make
    sm_tracing.uninstrument()
    for runtime in runtimes:
        runtime.close()


def trace_of(receiver: OTLPReceiver, trace_id: str, names: set[str]) -> list[ReceivedSpan]:
    """The worker's spans in trace *trace_id*, once every one of *names* has arrived."""

    def arrived(spans: list[ReceivedSpan]) -> bool:
        return names <= {span.name for span in spans if span.trace_id == trace_id}

    return [span for span in receiver.wait_for(arrived, timeout=30) if span.trace_id == trace_id]


# The worker's spans under a request of the toolkit models here (name: parent's name).
FUNCTIONS = {"input_fn": "invocations", "predict_fn": "invocations", "score": "predict_fn"}


def one_request(
    receiver: OTLPReceiver,
    caller: Caller,
    trace_id: str,
    children: dict[str, str],
    *,
    echoed: bool = True,
) -> tuple[list[ReceivedSpan], ReceivedSpan]:
    """Check the worker's spans in trace *trace_id* (once the SERVER span and *children* have
    arrived) are one request's: one SERVER span, child of the client span, each of *children*
    (name: parent's name) under its parent, and (when *echoed*: a ModelError carries no
    CustomAttributes back) the client told of the SERVER span by the echo; return the spans
    and the SERVER span."""
    spans = trace_of(receiver, trace_id, {"invocations", *children})
    client_span = caller.client_span(trace_id)
    (server,) = [span for span in spans if span.kind == "server"]
    assert server.name == "invocations"
    assert server.parent_id == f"{client_span.context.span_id:016x}"
    by_name = {span.name: span for span in spans}
    assert len(by_name) == len(spans), [span.name for span in spans]
    for name, parent in children.items():
        assert by_name[name].kind == "internal"
        assert by_name[name].parent_id == by_name[parent].span_id, name
    assert set(by_name) == {"invocations", *children}
    if echoed:
        assert (client_span.attributes or {})[CONTAINER_SPAN] == server.span_id
    return spans, server


def batched_requests(
    receiver: OTLPReceiver,
    caller: Caller,
    results: list[Any],
    bodies: list[Any],
    children: dict[str, str],
) -> list[ReadableSpan]:
    """Check each of *results* (from :meth:`Caller.invoke_together`) answered its one of
    *bodies*, with no CustomAttributes, and is one request with *children*; return the client
    spans."""
    clients = []
    for (trace_id, answer), expected in zip(results, bodies, strict=True):
        assert not isinstance(answer, Exception), answer
        body, custom_attributes = answer
        assert body == expected
        assert custom_attributes is None  # the echo, taken out: the model sent none
        one_request(receiver, caller, trace_id, children)
        clients.append(caller.client_span(trace_id))
    return clients


def no_other_traces(receiver: OTLPReceiver, service: str, allowed: set[str]) -> None:
    """Everything *service* exported belongs to the traces in *allowed*: start-up made none."""
    traces = {span.trace_id for span in receiver.spans if span.service == service}
    assert traces <= allowed, [
        (span.name, span.trace_id) for span in receiver.spans if span.trace_id not in allowed
    ]


def batch_and_callers_only(
    receiver: OTLPReceiver, service: str, batch: ReceivedSpan, callers: list[ReadableSpan]
) -> None:
    """Everything *service* exported belongs to the batch's trace or a caller's."""
    no_other_traces(
        receiver, service, {batch.trace_id, *(f"{s.context.trace_id:032x}" for s in callers)}
    )


# --- Multi Model Server, SageMaker inference toolkit ------------------------------------------

TOOLKIT_MODEL = """
import json

from opentelemetry import trace

import sm_tracing
from sm_tracing import trace_handler

sm_tracing.configure()
tracer = trace.get_tracer("model")
HEADER = "X-Amzn-SageMaker-Custom-Attributes"


@trace_handler
def model_fn(model_dir):
    return {"good": 1.0, "great": 2.0}


@trace_handler
def input_fn(body, content_type, context):
    request = json.loads(body)
    request["seen"] = context.get_request_header(0, HEADER)
    return request


@trace_handler
def predict_fn(data, model):
    with tracer.start_as_current_span("score"):
        score = sum(model.get(word, 0.0) for word in data["inputs"].split())
    return {"score": score, "seen": data["seen"], "id": data["id"]}


def output_fn(prediction, accept, context):
    context.set_response_header(0, HEADER, f"x-next-token={prediction['id']}")
    return json.dumps(prediction), "application/json"
"""

MMS_LAUNCHER = """
import sys
from sagemaker_inference import model_server
model_server.MMS_CONFIG_FILE = sys.argv[1]  # beside the model rather than in /etc
model_server.start_model_server()
"""


def sagemaker_env(
    base: Path, port: int, python_bin: Path, receiver: OTLPReceiver
) -> dict[str, str]:
    """What SageMaker sets for a model container, on loopback ports of the test's."""
    return {
        "SAGEMAKER_BASE_DIR": str(base),
        "SAGEMAKER_BIND_TO_PORT": str(port),
        "SAGEMAKER_PROGRAM": "inference",
        "SAGEMAKER_MODEL_SERVER_WORKERS": "1",
        "PATH": f"{python_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
    }


def toolkit_server(
    model: str,
    launcher: str,
    *,
    config: str,
    service: str,
    python_from: str | None = None,
    torchserve: bool = False,
    **variables: str,
) -> Any:
    """A class-scoped fixture: a toolkit's model server started by the code *launcher* with the
    Python of environment *python_from* (this one's by default), serving *model* from
    ``<base>/model`` with its configuration at ``<base>/<config>``, in the environment SageMaker
    gives it (TorchServe's other listeners moved when *torchserve*) plus *variables*."""

    @pytest.fixture(scope="class")
    def server(
        tmp_path_factory: pytest.TempPathFactory, receiver: OTLPReceiver
    ) -> Iterator[ModelServer]:
        python_bin = PYTHON if python_from is None else environment(python_from)
        base = tmp_path_factory.mktemp(service)
        write_model(base / "model", model)
        (port,) = ports(1)
        env = sagemaker_env(base, port, python_bin, receiver)
        if torchserve:
            torchserve_ports(env, port)
        env.update(variables)
        command = [str(python_bin / "python"), "-c", launcher, str(base / config)]
        with ModelServer(command, port=port, env=env, cwd=base, service=service) as running:
            yield running

    return server


mms_server = toolkit_server(
    TOOLKIT_MODEL, MMS_LAUNCHER, config="mms.properties", service="mms-toolkit"
)


class TestInferenceToolkitOnMultiModelServer:
    def test_each_call_is_one_trace_from_its_caller(
        self,
        mms_server: ModelServer,
        receiver: OTLPReceiver,
        calling: Callable[[ModelServer], Caller],
    ) -> None:
        """Two calls: each one SERVER span under its client span, input_fn and predict_fn
        (taking no context) its children; the handler sees the caller's CustomAttributes
        without our keys, the caller gets the model's own response value as it set it, and
        the echo names the request's span."""
        caller = calling(mms_server)
        traces = set()
        for number in range(2):
            trace_id, (body, custom_attributes) = caller.invoke(
                {"inputs": "a good great day", "id": number}
            )
            assert body == {"score": 3.0, "seen": "accept_eula=true", "id": number}
            # The model's own value, as it set it: the echo merged after it was taken out.
            assert custom_attributes == f"x-next-token={number}"
            _, server_span = one_request(receiver, caller, trace_id, FUNCTIONS)
            assert server_span.attributes["http.response.status_code"] == 200
            traces.add(trace_id)
        no_other_traces(receiver, mms_server.service, traces)

    def test_a_failing_function_marks_its_request(
        self,
        mms_server: ModelServer,
        receiver: OTLPReceiver,
        calling: Callable[[ModelServer], Caller],
    ) -> None:
        """predict_fn raises: the toolkit answers 500, the caller gets ModelError, and the
        request's span has status 500, ERROR, under the caller's span; predict_fn's span
        records the exception's type."""
        caller = calling(mms_server)
        trace_id, error = caller.invoke({"inputs": 3, "id": 0})
        assert isinstance(error, ClientError)
        assert error.response["Error"]["Code"] == "ModelError"
        spans, server_span = one_request(receiver, caller, trace_id, FUNCTIONS, echoed=False)
        assert server_span.attributes["http.response.status_code"] == 500
        assert server_span.status == "error"
        (predict,) = [span for span in spans if span.name == "predict_fn"]
        assert predict.status == "error"
        assert predict.attributes["error.type"] == "AttributeError"


# --- TorchServe, SageMaker PyTorch toolkit, batching ------------------------------------------

PYTORCH_MODEL = """
import json

from opentelemetry import trace

import sm_tracing
from sm_tracing import trace_handler

sm_tracing.configure()
sm_tracing.instrument_model_server()
tracer = trace.get_tracer("model")


def model_fn(model_dir):
    return {"good": 1.0, "great": 2.0}


@trace_handler
def input_fn(body, content_type):
    return json.loads(body)


@trace_handler
def predict_fn(data, model):
    with tracer.start_as_current_span("score"):
        score = sum(model.get(word, 0.0) for word in data["inputs"].split())
    return {"score": score, "id": data["id"]}


def output_fn(prediction, accept):
    return json.dumps(prediction), "application/json"
"""

PYTORCH_LAUNCHER = """
import sys
from sagemaker_pytorch_serving_container import serving, torchserve
torchserve.TS_CONFIG_FILE = sys.argv[1]  # beside the model rather than in /etc
serving.main()
"""


def torchserve_ports(env: dict[str, str], inference: int) -> dict[str, str]:
    """TorchServe's other listeners moved to free loopback ports (read from ``TS_*``)."""
    metrics, grpc, grpc_management = ports(3)
    env.update(
        TS_INFERENCE_ADDRESS=f"http://127.0.0.1:{inference}",
        TS_MANAGEMENT_ADDRESS=f"http://127.0.0.1:{inference}",
        TS_METRICS_ADDRESS=f"http://127.0.0.1:{metrics}",
        TS_GRPC_INFERENCE_PORT=str(grpc),
        TS_GRPC_MANAGEMENT_PORT=str(grpc_management),
    )
    return env


def batch_of(spans: list[ReceivedSpan], service: str, callers: list[ReadableSpan]) -> ReceivedSpan:
    """The one batch span *service* exported among *spans*: a root linked to every caller."""
    (batch,) = [span for span in spans if span.name == "batch" and span.service == service]
    assert batch.parent_id is None
    assert batch.kind == "internal"
    assert sorted(batch.links) == sorted(
        (f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}") for span in callers
    )
    return batch


pytorch_server = toolkit_server(
    PYTORCH_MODEL,
    PYTORCH_LAUNCHER,
    config="ts.properties",
    service="pytorch",
    python_from="torchserve",
    torchserve=True,
    SAGEMAKER_TS_BATCH_SIZE="3",
    SAGEMAKER_TS_MAX_BATCH_DELAY="3000",
)


class TestPyTorchToolkitOnTorchServe:
    def test_a_batch_of_three_keeps_each_request_in_its_callers_trace(
        self,
        pytorch_server: ModelServer,
        receiver: OTLPReceiver,
        calling: Callable[[ModelServer], Caller],
    ) -> None:
        """Three concurrent callers, batched into one handler call: each request one SERVER
        span under its own client span, with its own input_fn/predict_fn/score children and its
        own echo; one batch span, a new root linked to the three callers."""
        caller = calling(pytorch_server)
        results = caller.invoke_together(
            [{"inputs": "good " * (number + 1), "id": number} for number in range(3)]
        )
        answers = [{"score": float(number + 1), "id": number} for number in range(3)]
        clients = batched_requests(receiver, caller, results, answers, FUNCTIONS)
        service = pytorch_server.service
        spans = receiver.wait_for(
            lambda spans: any(s.name == "batch" and s.service == service for s in spans)
        )
        batch = batch_of(spans, service, clients)
        assert not [span for span in spans if span.trace_id == batch.trace_id and span is not batch]
        batch_and_callers_only(receiver, service, batch, clients)

    def test_a_lone_request_is_served_unbatched(
        self,
        pytorch_server: ModelServer,
        receiver: OTLPReceiver,
        calling: Callable[[ModelServer], Caller],
    ) -> None:
        """One request alone (the batch waits, then goes with one): the same one trace, and
        no batch span for it."""
        caller = calling(pytorch_server)
        trace_id, answer = caller.invoke({"inputs": "great", "id": 7})
        assert answer == ({"score": 2.0, "id": 7}, None)
        one_request(receiver, caller, trace_id, FUNCTIONS)
        client_span = caller.client_span(trace_id)
        linked = (trace_id, f"{client_span.context.span_id:016x}")
        assert not [span for span in receiver.spans if linked in span.links]


# --- TorchServe, the custom handler of examples/torchserve, as its README says -----------------


@pytest.fixture(scope="class")
def example_server(
    tmp_path_factory: pytest.TempPathFactory, receiver: OTLPReceiver
) -> Iterator[ModelServer]:
    python_bin = environment("torchserve")
    work = tmp_path_factory.mktemp("torchserve") / "torchserve"
    shutil.copytree(ROOT / "examples" / "torchserve", work)
    env = {
        **os.environ,
        "PATH": f"{python_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
    }
    (work / "model_store").mkdir()
    # The README's steps, with its ports moved to free ones.
    subprocess.run(
        [
            "torch-model-archiver",
            "--model-name",
            "words",
            "--version",
            "1.0",
            "--handler",
            "handler.py",
            "--export-path",
            "model_store",
        ],
        cwd=work,
        env=env,
        check=True,
    )
    (port,) = ports(1)
    env = torchserve_ports({"PATH": env["PATH"], "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url}, port)
    env["TS_MANAGEMENT_ADDRESS"] = f"http://127.0.0.1:{ports(1)[0]}"
    command = [
        "torchserve",
        "--start",
        "--ncs",
        "--disable-token-auth",
        "--ts-config",
        "config.properties",
        "--model-store",
        "model_store",
    ]
    with ModelServer(command, port=port, env=env, cwd=work, service="torchserve-model") as server:
        yield server


class TestTorchServeExample:
    def test_a_batch_of_three_keeps_each_request_in_its_callers_trace(
        self,
        example_server: ModelServer,
        receiver: OTLPReceiver,
        calling: Callable[[ModelServer], Caller],
    ) -> None:
        """Three concurrent callers batched into one ``handle(data, context)``: each request
        one SERVER span under its own client span with its own echo; the handler's span (and
        the model's own under it) belong to the batch span, a new root linked to every caller."""
        caller = calling(example_server)
        results = caller.invoke_together(
            [{"inputs": "good " * (number + 1)} for number in range(3)]
        )
        answers = [{"score": float(number + 1)} for number in range(3)]
        clients = batched_requests(receiver, caller, results, answers, {})
        spans = receiver.wait_for(lambda spans: any(s.name == "score batch" for s in spans))
        batch = batch_of(spans, example_server.service, clients)
        work = [span for span in spans if span.trace_id == batch.trace_id]
        by_name = {span.name: span for span in work}
        assert set(by_name) == {"batch", "handle", "score batch"}
        assert by_name["handle"].parent_id == batch.span_id
        assert by_name["score batch"].parent_id == by_name["handle"].span_id
        batch_and_callers_only(receiver, example_server.service, batch, clients)


# --- Multi Model Server, Hugging Face toolkit -------------------------------------------------

HUGGINGFACE_MODEL = """
import json

import sm_tracing
from sm_tracing import trace_handler

sm_tracing.configure()
sm_tracing.instrument_model_server()


def model_fn(model_dir):
    weights = {"good": 1.0, "great": 2.0}
    return lambda text: {"score": sum(weights.get(word, 0.0) for word in text.split())}


@trace_handler
def predict_fn(data, model):
    return model(data["inputs"])
"""

HUGGINGFACE_LAUNCHER = """
import sys
from sagemaker_inference import model_server
from sagemaker_huggingface_inference_toolkit import mms_model_server, serving
# The configuration goes beside the model rather than in /etc.
model_server.MMS_CONFIG_FILE = mms_model_server.MMS_CONFIG_FILE = sys.argv[1]
serving.main()
"""


huggingface_server = toolkit_server(
    HUGGINGFACE_MODEL,
    HUGGINGFACE_LAUNCHER,
    config="mms.properties",
    service="huggingface",
    python_from="huggingface",
)


class TestHuggingFaceToolkitOnMultiModelServer:
    def test_each_call_is_one_trace_from_its_caller(
        self,
        huggingface_server: ModelServer,
        receiver: OTLPReceiver,
        calling: Callable[[ModelServer], Caller],
    ) -> None:
        """Through the toolkit's own handler service: one SERVER span under the client span,
        the decorated predict_fn (no context) its child, the echo naming it, and no trace from
        loading the model."""
        caller = calling(huggingface_server)
        traces = set()
        for _ in range(2):
            trace_id, answer = caller.invoke({"inputs": "good great"})
            assert answer == ({"score": 3.0}, None)
            one_request(receiver, caller, trace_id, {"predict_fn": "invocations"})
            traces.add(trace_id)
        no_other_traces(receiver, huggingface_server.service, traces)
