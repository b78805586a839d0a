"""Helpers for the client-side tests: real botocore clients whose signed requests are captured
on the wire, canned SageMaker responses (event streams through the local runtime's encoder) and a
loopback server."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from typing import Any, TypeVar

import botocore.session
from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from opentelemetry.sdk.trace import TracerProvider
from urllib3.response import HTTPResponse

import sm_tracing
from sm_tracing.local._eventstream import exception_event, payload_part

REGION = "us-east-1"
URL = f"https://runtime.sagemaker.{REGION}.amazonaws.com"
HEADER = "X-Amzn-SageMaker-Custom-Attributes"
CREDENTIALS = {
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
    "aws_session_token": "testing",
}
REQUEST_ID = "4b1d2c3e-0000-4000-8000-00000000abcd"
JOB_ARN = "arn:aws:sagemaker:us-east-1:123456789012:transform-job/job-1"
_S = TypeVar("_S", bound="ServedInThread")
TRACEPARENT_RE = re.compile(r"traceparent=00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")

OPERATIONS = {
    "invoke_endpoint": "InvokeEndpoint",
    "invoke_endpoint_with_response_stream": "InvokeEndpointWithResponseStream",
    "invoke_endpoint_async": "InvokeEndpointAsync",
}


def call_params(method: str, **extra: Any) -> dict[str, Any]:
    """The minimal valid parameters of *method*, plus *extra*."""
    params: dict[str, Any] = {"EndpointName": "my-endpoint"}
    if method == "invoke_endpoint_async":
        params["InputLocation"] = "s3://bucket/input.json"
    else:
        params["Body"] = b'{"inputs": "hi"}'
        params["ContentType"] = "application/json"
    params.update(extra)
    return params


# -- canned responses ---------------------------------------------------------------------


@dataclass
class Canned:
    """A response to give on the wire."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def model_stream_error(message: str = "the model failed") -> bytes:
    """A ``ModelStreamError`` exception event."""
    return exception_event("ModelStreamError", {"Message": message, "ErrorCode": "424"})


def canned_for(operation: str, custom_attributes: str | None = None, **kw: Any) -> Canned:
    """A successful response of *operation*, optionally carrying response CustomAttributes."""
    headers = {"x-amzn-RequestId": REQUEST_ID}
    if custom_attributes is not None:
        headers[HEADER] = custom_attributes
    if operation == "InvokeEndpoint":
        headers["Content-Type"] = "application/json"
        headers["x-Amzn-Invoked-Production-Variant"] = "variant-a"
        return Canned(200, headers | kw.get("headers", {}), b'{"outputs": "hello"}')
    if operation == "InvokeEndpointWithResponseStream":
        headers["Content-Type"] = "application/vnd.amazon.eventstream"
        headers["X-Amzn-SageMaker-Content-Type"] = "application/jsonlines"
        headers["x-Amzn-Invoked-Production-Variant"] = "variant-a"
        chunks = kw.get("chunks", [b'{"token": "a"}\n', b'{"token": "b"}\n', b'{"token": "c"}\n'])
        body = b"".join(payload_part(chunk) for chunk in chunks) + kw.get("tail", b"")
        return Canned(200, headers, body)
    headers["Content-Type"] = "application/json"
    headers["X-Amzn-SageMaker-OutputLocation"] = "s3://bucket/out/abc.out"
    headers["X-Amzn-SageMaker-FailureLocation"] = "s3://bucket/failures/abc.out"
    return Canned(202, headers, json.dumps({"InferenceId": "inference-from-sagemaker"}).encode())


def model_error() -> Canned:
    """The 424 ModelError SageMaker answers when the container fails."""
    body = json.dumps(
        {
            "__type": "ModelError",
            "Message": "Received server error (500) from primary",
            "OriginalStatusCode": 500,
            "OriginalMessage": "boom",
            "LogStreamArn": "arn:aws:logs:us-east-1:123456789012:log-group:/aws/sagemaker/x",
        }
    ).encode()
    return Canned(424, {"x-amzn-RequestId": REQUEST_ID, "Content-Type": "application/json"}, body)


# -- capturing the signed request -----------------------------------------------------------


class Wire:
    """A ``before-send`` handler: records each signed request and answers it with a canned
    response, so the request botocore would send is what the tests read."""

    def __init__(self, respond: Callable[[AWSPreparedRequest], Canned] | None = None) -> None:
        self.requests: list[AWSPreparedRequest] = []
        self.respond = respond or (lambda request: canned_for(_operation_of(request)))

    def __call__(self, request: AWSPreparedRequest, **_: Any) -> AWSResponse:
        self.requests.append(request)
        return answered(request, self.respond(request))

    def attach(self, client: Any) -> Any:
        client.meta.events.register("before-send.sagemaker-runtime", self)
        return client

    @property
    def last(self) -> AWSPreparedRequest:
        return self.requests[-1]

    def custom_attributes(self, index: int = -1) -> str | None:
        """The CustomAttributes header as sent, or None when the request had none."""
        value = header(self.requests[index].headers, HEADER)
        return None if value is None else value


def answered(request: AWSPreparedRequest, canned: Canned) -> AWSResponse:
    """*canned* as the response botocore reads to *request*, unread as from a socket."""
    raw = HTTPResponse(
        body=io.BytesIO(canned.body),
        headers=canned.headers,
        status=canned.status,
        preload_content=False,
    )
    return AWSResponse(request.url, canned.status, canned.headers, raw)


def header(headers: Mapping[str, Any], name: str) -> str | None:
    """*name* from *headers*, matched case-insensitively, as text."""
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def signed_headers(request: AWSPreparedRequest) -> list[str]:
    """The SignedHeaders list of the request's SigV4 Authorization header."""
    authorization = header(request.headers, "Authorization") or ""
    match = re.search(r"SignedHeaders=([^,]+)", authorization)
    assert match is not None, authorization
    return match.group(1).split(";")


def _operation_of(request: AWSPreparedRequest) -> str:
    if request.url.endswith("/invocations-response-stream"):
        return "InvokeEndpointWithResponseStream"
    if request.url.endswith("/async-invocations"):
        return "InvokeEndpointAsync"
    return "InvokeEndpoint"


def make_client(session: Any = None, wire: Wire | None = None, **kwargs: Any) -> Any:
    """A real sagemaker-runtime client with fake credentials, answered by *wire*."""
    if session is None:
        session = botocore.session.get_session()
    client = session.create_client("sagemaker-runtime", region_name=REGION, **CREDENTIALS, **kwargs)
    if wire is not None:
        wire.attach(client)
    return client


@contextmanager
def instrumenting(**options: Any) -> Iterator[None]:
    """``sm_tracing.instrument(**options)`` for the block, uninstrumented after it."""
    sm_tracing.instrument(**options)
    try:
        yield
    finally:
        sm_tracing.uninstrument()


@contextmanager
def beside_upstream(
    order: str, upstream: Any, tracer_provider: TracerProvider, **options: Any
) -> Iterator[None]:
    """sm_tracing (with *options*) and *upstream*, an OpenTelemetry instrumentor, both on with
    *tracer_provider* for the block: ours first when *order* is ``"ours-first"``, theirs first
    otherwise; taken off in reverse order."""
    ours = (
        lambda: sm_tracing.instrument(tracer_provider=tracer_provider, **options),
        sm_tracing.uninstrument,
    )
    theirs = (lambda: upstream.instrument(tracer_provider=tracer_provider), upstream.uninstrument)
    first, second = (ours, theirs) if order == "ours-first" else (theirs, ours)
    first[0]()
    second[0]()
    try:
        yield
    finally:
        second[1]()
        first[1]()


def remove_upstream_only() -> None:
    """Uninstrument opentelemetry-instrumentation-botocore. Its uninstrument() takes off only the
    outermost wrapper: where ours sits above its own, its wrapper stays under ours, and the call's
    one span stays its span."""
    from opentelemetry.instrumentation.botocore import BotocoreInstrumentor

    BotocoreInstrumentor().uninstrument()


def echo_left_unread(
    tracer_provider: TracerProvider, client: Any, wire: Wire, returned: str
) -> None:
    """Call InvokeEndpoint with ``record_echo=False``, the response's CustomAttributes
    *returned*, and check they come back to the caller exactly as sent."""
    wire.respond = lambda request: canned_for("InvokeEndpoint", returned)
    with instrumenting(tracer_provider=tracer_provider, record_echo=False):
        response = client.invoke_endpoint(**call_params("invoke_endpoint"))
    assert response["CustomAttributes"] == returned


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    """Run *code* in a fresh interpreter, which must exit 0; the finished process, its output
    captured as text."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done


def traceparent_of(value: str | None) -> tuple[str, str]:
    """The (trace id, span id) of the traceparent in a CustomAttributes value."""
    assert value is not None
    match = TRACEPARENT_RE.search(value)
    assert match is not None, value
    return match.group(1), match.group(2)


# -- a loopback server, for clients that can't be answered in-process ------------------------


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        self.server.received.append(
            Received("POST", self.path, {k: v for k, v in self.headers.items()}, body)
        )
        canned = self.server.respond(self.path)
        self.send_response(canned.status)
        for name, value in canned.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(canned.body)))
        self.end_headers()
        self.wfile.write(canned.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, respond: Callable[[str], Canned]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.respond = respond
        self.received: list[Received] = []


def _respond_by_path(path: str) -> Canned:
    if path.endswith("/invocations-response-stream"):
        return canned_for("InvokeEndpointWithResponseStream")
    if path.endswith("/async-invocations"):
        return canned_for("InvokeEndpointAsync")
    return canned_for("InvokeEndpoint")


@contextmanager
def serving_in_thread(server: HTTPServer) -> Iterator[str]:
    """Serve *server* on a thread of its own for the block, then shut it down and close its
    socket; its ``http://host:port`` URL."""
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host!s}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


class ServedInThread:
    """Serves *server* on a thread of its own while entered as a context manager."""

    def __init__(self, server: HTTPServer) -> None:
        self._server = server
        self._stack = ExitStack()

    def __enter__(self: _S) -> _S:
        self._stack.enter_context(serving_in_thread(self._server))
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()


@contextmanager
def loopback(respond: Callable[[str], Canned] = _respond_by_path) -> Iterator[_Server]:
    """A threaded HTTP server on 127.0.0.1 and an ephemeral port, answering with *respond*."""
    server = _Server(respond)
    with serving_in_thread(server):
        yield server


def endpoint_url(server: _Server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def aio_client(server: _Server) -> Any:
    """An aiobotocore ``sagemaker-runtime`` client for *server*, to be entered with
    ``async with``."""
    import aiobotocore.session

    return aiobotocore.session.get_session().create_client(
        "sagemaker-runtime", region_name=REGION, endpoint_url=endpoint_url(server), **CREDENTIALS
    )


def sent_custom_attributes(server: _Server, index: int = -1) -> str | None:
    """The CustomAttributes header of the *index*-th request *server* received."""
    headers = {key.lower(): value for key, value in server.received[index].headers.items()}
    return headers.get(HEADER.lower())


def payloads(events: Sequence[Mapping[str, Any]]) -> list[bytes]:
    """The bytes of the PayloadPart events of a stream."""
    return [event["PayloadPart"]["Bytes"] for event in events]


# --- CreateTransformJob, on a ``sagemaker`` client ------------------------------------------


def job_answer(status: int = 200, body: dict[str, Any] | None = None) -> Canned:
    """SageMaker's answer to CreateTransformJob: *body* (the job's ARN by default)."""
    headers = {"x-amzn-RequestId": REQUEST_ID, "Content-Type": "application/x-amz-json-1.1"}
    return Canned(status, headers, json.dumps(body or {"TransformJobArn": JOB_ARN}).encode())


class SageMakerWire:
    """A ``before-send`` handler of a ``sagemaker`` client: keeps each signed request and
    answers it with *answer*."""

    def __init__(self, answer: Canned | None = None) -> None:
        self.requests: list[AWSPreparedRequest] = []
        self.answer = answer or job_answer()

    def __call__(self, request: AWSPreparedRequest, **_: Any) -> AWSResponse:
        self.requests.append(request)
        return answered(request, self.answer)

    def environment(self, index: int = -1) -> Any:
        """The Environment of a CreateTransformJob request as sent; None when it had none."""
        return json.loads(self.requests[index].body).get("Environment")


def sagemaker_client(wire: SageMakerWire) -> Any:
    """A real botocore ``sagemaker`` client with fake credentials, answered by *wire*."""
    session = botocore.session.get_session()
    client = session.create_client("sagemaker", region_name=REGION, **CREDENTIALS)
    client.meta.events.register("before-send.sagemaker", wire)
    return client


def job(**params: Any) -> dict[str, Any]:
    """A valid CreateTransformJob request, plus *params*."""
    request: dict[str, Any] = {
        "TransformJobName": "job-1",
        "ModelName": "model-a",
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://in/records/"}},
            "SplitType": "Line",
        },
        "TransformOutput": {"S3OutputPath": "s3://out/job-1"},
        "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": 1},
    }
    request.update(params)
    return request
