"""LocalRuntime: the SageMaker runtime API on loopback, driven by a plain boto3 client."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pytest
from _local_support import ModelContainer, Reply, Seen, echo, runtime_client, streaming
from botocore import UNSIGNED
from botocore.exceptions import ClientError, EventStreamError

from sm_tracing.local import LocalRuntime
from tests.conftest import BOTOCORE_ASYNC_INLINE_BODY, BOTOCORE_PREFIX_AWARE_ID, requires_botocore

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
FAKE_AUTH = (
    "AWS4-HMAC-SHA256 Credential=AKIDLOCAL/20260101/us-east-1/sagemaker/aws4_request, "
    "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64
)


@pytest.fixture
def container() -> Iterator[ModelContainer]:
    """A model container on a loopback thread, echoing by default."""
    with ModelContainer() as container:
        yield container


@pytest.fixture
def runtime(container: ModelContainer, tmp_path: Path) -> Iterator[LocalRuntime]:
    """A LocalRuntime in front of ``container``, mapping s3:// under ``tmp_path/s3``."""
    with LocalRuntime(container.url, s3_root=tmp_path / "s3") as runtime:
        yield runtime


@pytest.fixture
def client(runtime: LocalRuntime) -> Any:
    """A boto3 sagemaker-runtime client pointed at ``runtime``."""
    return runtime_client(runtime.url)


# Members an older botocore (the declared floor) does not know, and refuses to send.
_INLINE_BODY = requires_botocore(BOTOCORE_ASYNC_INLINE_BODY, "sends InvokeEndpointAsync a Body")
_PREFIX_AWARE_ID = requires_botocore(BOTOCORE_PREFIX_AWARE_ID, "sends PrefixAwareId")


def _add_tracing_headers(request: Any, **kwargs: Any) -> None:
    # Signed in like any other header: the runtime must still drop them.
    request.headers["traceparent"] = TRACEPARENT
    request.headers["X-Amzn-Trace-Id"] = "Root=1-5759e988-bd862e3fe1be46a994272793"


def _path(uri: str) -> Path:
    return Path(url2pathname(urlsplit(uri).path))


def _raw_post(runtime: LocalRuntime, path: str, headers: dict[str, str]) -> Any:
    conn = http.client.HTTPConnection(urlsplit(runtime.url).netloc, timeout=5)
    try:
        conn.request("POST", path, body=b"{}", headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read())
    finally:
        conn.close()


# InvokeEndpoint


# What each operation's API carries, and the headers the container gets for it: the HTTP
# headers a real client adds (traceparent, X-Amzn-Trace-Id, Authorization...) never arrive.
_SAGEMAKER_FIELDS = {
    "CustomAttributes": ("x-amzn-sagemaker-custom-attributes", "accept_eula=true"),
    "InferenceId": ("x-amzn-sagemaker-inference-id", "inference-1"),
}
_ROUTING_FIELDS = {
    "TargetVariant": ("x-amzn-sagemaker-target-variant", "blue"),
    "InferenceComponentName": ("x-amzn-sagemaker-inference-component", "component-a"),
    "SessionId": ("x-amzn-sagemaker-session-id", "session-1"),
    "PrefixAwareId": ("x-amzn-sagemaker-prefix-aware-id", "tenant-a"),
}
_FORWARDED = {
    "invoke_endpoint": {
        **_SAGEMAKER_FIELDS,
        **_ROUTING_FIELDS,
        "EnableExplanations": ("x-amzn-sagemaker-enable-explanations", "`true`"),
    },
    "invoke_endpoint_with_response_stream": {**_SAGEMAKER_FIELDS, **_ROUTING_FIELDS},
    "invoke_endpoint_async": _SAGEMAKER_FIELDS,
}


@pytest.mark.parametrize(
    "operation",
    [
        pytest.param(operation, marks=_INLINE_BODY if "async" in operation else _PREFIX_AWARE_ID)
        for operation in _FORWARDED
    ],
)
def test_each_operation_forwards_only_the_headers_sagemaker_forwards(
    container: ModelContainer, client: Any, operation: str
) -> None:
    """The container gets body, content type, accept and the SageMaker headers each operation
    defines (PrefixAwareId on the two real-time calls), nothing else."""
    client.meta.events.register("before-sign.sagemaker-runtime.*", _add_tracing_headers)
    fields = _FORWARDED[operation]
    response = getattr(client, operation)(
        EndpointName="my-endpoint",
        Body=b'{"x": 1}',
        ContentType="application/json",
        Accept="application/x-echo",
        **{field: value for field, (_, value) in fields.items()},
    )
    if operation == "invoke_endpoint_with_response_stream":
        assert b"".join(e["PayloadPart"]["Bytes"] for e in response["Body"]) == b'{"X": 1}'
    [seen] = _wait_for(container, 1)
    assert seen.path == "/invocations"
    assert seen.body == b'{"x": 1}'
    assert seen.headers == {
        "host": seen.headers["host"],
        "content-length": "8",
        "content-type": "application/json",
        "accept": "application/x-echo",
        **dict(fields.values()),
    }


def test_invoke_answers_with_the_container_body_type_and_variant(client: Any) -> None:
    """InvokeEndpoint answers with the container's body and content type and the variant the
    caller targeted."""
    response = client.invoke_endpoint(EndpointName="e", Body=b'{"x": 1}', TargetVariant="blue")
    assert response["Body"].read() == b'{"X": 1}'
    assert response["ContentType"] == "application/x-echo"
    assert response["InvokedProductionVariant"] == "blue"


@pytest.mark.parametrize(
    "value",
    [
        "accept_eula=true",
        f"accept_eula=true;traceparent={TRACEPARENT}",
        "tfs-model-name=half_plus_three,tfs-method=predict",
        "c000b4f9-df62-4c85-a0bf-7c525f9104a4",
        '{"trace": "id", "n": 1}',
        "x" * 1024,
    ],
    ids=["jumpstart", "with-traceparent", "tfs", "uuid", "json", "max-length"],
)
def test_custom_attributes_pass_both_ways_verbatim(
    container: ModelContainer, client: Any, value: str
) -> None:
    """CustomAttributes reach the container unchanged, and the container's come back unchanged."""
    answer = value[::-1]
    container.handler = lambda seen: Reply(
        b"ok", headers={"X-Amzn-SageMaker-Custom-Attributes": answer}
    )
    response = client.invoke_endpoint(EndpointName="e", Body=b"{}", CustomAttributes=value)
    assert container.seen[0].headers["x-amzn-sagemaker-custom-attributes"] == value
    assert response["CustomAttributes"] == answer


def test_absent_custom_attributes_stay_absent(container: ModelContainer, client: Any) -> None:
    """No CustomAttributes either way when neither side sets them."""
    response = client.invoke_endpoint(EndpointName="e", Body=b"{}")
    assert "x-amzn-sagemaker-custom-attributes" not in container.seen[0].headers
    assert "CustomAttributes" not in response
    assert response["InvokedProductionVariant"] == "AllTraffic"


def test_target_model_uses_the_multi_model_route(container: ModelContainer, client: Any) -> None:
    """With TargetModel the container is called on /models/{name}/invoke, with the header."""
    client.invoke_endpoint(EndpointName="e", Body=b"{}", TargetModel="model-a.tar.gz")
    [seen] = container.seen
    assert seen.path == "/models/model-a.tar.gz/invoke"
    assert seen.headers["x-amzn-sagemaker-target-model"] == "model-a.tar.gz"


@pytest.mark.parametrize("status", [400, 404, 500, 503])
def test_container_failure_is_a_model_error(
    container: ModelContainer, client: Any, status: int
) -> None:
    """A container 4xx/5xx becomes ModelError (424) with the original status and message."""
    container.handler = lambda seen: Reply(b"model says no", status=status)
    with pytest.raises(client.exceptions.ModelError) as raised:
        client.invoke_endpoint(EndpointName="my-endpoint", Body=b"{}")
    error = raised.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert error["Error"]["Code"] == "ModelError"
    assert error["OriginalStatusCode"] == status
    assert error["OriginalMessage"] == "model says no"
    assert error["LogStreamArn"].endswith("/aws/sagemaker/Endpoints/my-endpoint")
    assert f"({status})" in error["Error"]["Message"]


def test_unreachable_container_is_a_model_error() -> None:
    """A container that refuses connections is answered as ModelError (424)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with LocalRuntime(f"http://127.0.0.1:{closed_port}") as runtime:
        client = runtime_client(runtime.url)
        with pytest.raises(client.exceptions.ModelError) as raised:
            client.invoke_endpoint(EndpointName="e", Body=b"{}")
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 424


def test_slow_container_times_out_as_model_error(container: ModelContainer) -> None:
    """A container slower than container_timeout is answered as ModelError (424)."""
    released = threading.Event()

    def slow(seen: Seen) -> Reply:
        released.wait(5)
        return Reply(b"too late")

    container.handler = slow
    try:
        with LocalRuntime(container.url, container_timeout=0.2) as runtime:
            client = runtime_client(runtime.url)
            with pytest.raises(client.exceptions.ModelError) as raised:
                client.invoke_endpoint(EndpointName="e", Body=b"{}")
    finally:
        released.set()
    assert "timed out" in raised.value.response["Error"]["Message"]


def test_endpoint_mapping_routes_by_name() -> None:
    """With a mapping each endpoint name reaches its container; other names are not found."""
    with ModelContainer() as first, ModelContainer() as second:
        second.handler = lambda seen: Reply(b"second")
        with LocalRuntime({"a": first.url, "b": second.url}) as runtime:
            client = runtime_client(runtime.url)
            assert client.invoke_endpoint(EndpointName="a", Body=b"x")["Body"].read() == b"X"
            assert client.invoke_endpoint(EndpointName="b", Body=b"x")["Body"].read() == b"second"
            with pytest.raises(ClientError) as raised:
                client.invoke_endpoint(EndpointName="c", Body=b"x")
        assert len(first.seen) == len(second.seen) == 1
    assert raised.value.response["Error"]["Code"] == "ValidationError"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


# Authentication and routing


@pytest.mark.parametrize(
    "path",
    [
        "/endpoints/e/invocations",
        "/endpoints/e/invocations-response-stream",
        "/endpoints/e/async-invocations",
    ],
)
@pytest.mark.parametrize(
    ("authorization", "code"),
    [
        (None, "MissingAuthenticationTokenException"),
        ("Basic dXNlcjpwYXNz", "MissingAuthenticationTokenException"),
        ("AWS4-HMAC-SHA256 SignedHeaders=host", "IncompleteSignatureException"),
    ],
    ids=["none", "basic", "incomplete"],
)
def test_requests_without_sigv4_are_refused(
    container: ModelContainer,
    runtime: LocalRuntime,
    path: str,
    authorization: str | None,
    code: str,
) -> None:
    """Every operation answers 403 to a request without a SigV4 Authorization header."""
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    status, response_headers, body = _raw_post(runtime, path, headers)
    assert status == 403
    assert response_headers["x-amzn-ErrorType"] == code
    assert body["__type"] == code
    assert container.seen == []


def test_unsigned_boto3_client_gets_a_client_error(
    container: ModelContainer, runtime: LocalRuntime
) -> None:
    """botocore raises the 403 of an unsigned call as a ClientError."""
    client = runtime_client(runtime.url, signature_version=UNSIGNED)
    with pytest.raises(ClientError) as raised:
        client.invoke_endpoint(EndpointName="e", Body=b"{}")
    assert raised.value.response["Error"]["Code"] == "MissingAuthenticationTokenException"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert container.seen == []


def test_oversized_request_is_refused_and_closed(
    container: ModelContainer, runtime: LocalRuntime
) -> None:
    """A Content-Length beyond the runtime's bound is refused unread, and the connection closed."""
    conn = http.client.HTTPConnection(urlsplit(runtime.url).netloc, timeout=5)
    try:
        conn.putrequest("POST", "/endpoints/e/invocations")
        conn.putheader("Authorization", FAKE_AUTH)
        conn.putheader("Content-Length", str(10**10))
        conn.endheaders()
        response = conn.getresponse()
        assert json.loads(response.read())["__type"] == "ValidationError"
        assert response.status == 400
        assert response.will_close
    finally:
        conn.close()
    assert container.seen == []


def test_unknown_route_is_not_found(runtime: LocalRuntime) -> None:
    """Paths outside the runtime API answer 404."""
    status, headers, body = _raw_post(runtime, "/invocations", {"Authorization": FAKE_AUTH})
    assert status == 404
    assert body["__type"] == headers["x-amzn-ErrorType"] == "UnknownOperationException"


def test_client_connection_is_kept_alive(container: ModelContainer, runtime: LocalRuntime) -> None:
    """Several calls share one client connection and one container connection."""
    conn = http.client.HTTPConnection(urlsplit(runtime.url).netloc, timeout=5)
    headers = {"Authorization": FAKE_AUTH, "Content-Type": "text/plain"}
    try:
        conn.request("POST", "/endpoints/e/invocations", body=b"first", headers=headers)
        first_socket = conn.sock
        assert conn.getresponse().read() == b"FIRST"
        # A refused request on the same connection must leave it usable too.
        conn.request("POST", "/endpoints/e/nothing", body=b"ignored", headers=headers)
        refused = conn.getresponse()
        assert json.loads(refused.read())["__type"] == "UnknownOperationException"
        assert refused.status == 404
        conn.request("POST", "/endpoints/e/invocations", body=b"second", headers=headers)
        assert conn.getresponse().read() == b"SECOND"
        assert conn.sock is first_socket
    finally:
        conn.close()
    assert len({seen.port for seen in container.seen}) == 1


def test_one_client_shared_by_threads(container: ModelContainer, client: Any) -> None:
    """Concurrent calls through one client each get their own answer."""
    errors: list[BaseException] = []

    def call(n: int) -> None:
        try:
            for i in range(5):
                body = f"t{n}-{i}".encode()
                answer = client.invoke_endpoint(EndpointName="e", Body=body)["Body"].read()
                assert answer == body.upper()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(container.seen) == 80


def test_concurrent_aiobotocore_invocations(
    container: ModelContainer, runtime: LocalRuntime
) -> None:
    """Hundreds of concurrent aiobotocore calls, plain and streaming, each get their own answer."""
    session_module = pytest.importorskip("aiobotocore.session")
    container.handler = lambda seen: (
        streaming([seen.body, b"-end"])(seen) if seen.body.startswith(b"s") else echo(seen)
    )

    async def call(client: Any, n: int) -> bytes:
        if n % 4:
            response = await client.invoke_endpoint(EndpointName="e", Body=b"c%d" % n)
            return bytes(await response["Body"].read())
        response = await client.invoke_endpoint_with_response_stream(
            EndpointName="e", Body=b"s%d" % n
        )
        return b"".join([event["PayloadPart"]["Bytes"] async for event in response["Body"]])

    async def main() -> list[bytes]:
        session = session_module.get_session()
        async with session.create_client(
            "sagemaker-runtime",
            region_name="us-east-1",
            endpoint_url=runtime.url,
            aws_access_key_id="AKIDLOCAL",
            aws_secret_access_key="local-secret",
        ) as client:
            return list(await asyncio.gather(*(call(client, n) for n in range(200))))

    answers = asyncio.run(main())
    assert answers == [b"s%d-end" % n if n % 4 == 0 else b"C%d" % n for n in range(200)]


# InvokeEndpointWithResponseStream


def test_stream_is_an_event_stream_botocore_parses(container: ModelContainer, client: Any) -> None:
    """Each container chunk arrives as a PayloadPart event; the answer's content type and
    CustomAttributes pass (what reaches the container is pinned with the other operations)."""
    container.handler = streaming([b'{"t": 1}\n', b'{"t": 2}\n', b'{"t": 3}\n'])
    response = client.invoke_endpoint_with_response_stream(
        EndpointName="e",
        Body=b"{}",
        Accept="application/jsonlines",
        CustomAttributes="x-starting-token=1",
    )
    assert response["ContentType"] == "application/jsonlines"
    assert response["CustomAttributes"] == "x-next-token=2"
    assert response["InvokedProductionVariant"] == "AllTraffic"
    headers = response["ResponseMetadata"]["HTTPHeaders"]
    assert headers["content-type"] == "application/vnd.amazon.eventstream"
    events = list(response["Body"])
    assert b"".join(event["PayloadPart"]["Bytes"] for event in events) == (
        b'{"t": 1}\n{"t": 2}\n{"t": 3}\n'
    )
    assert all(set(event) == {"PayloadPart"} for event in events)


def test_stream_of_a_fixed_length_answer_keeps_the_connection(
    container: ModelContainer, client: Any
) -> None:
    """A Content-Length answer streams as one event, and its connection is then reused."""
    container.handler = lambda seen: Reply(b"whole answer " + seen.body)
    for n in range(3):
        response = client.invoke_endpoint_with_response_stream(EndpointName="e", Body=b"%d" % n)
        assert list(response["Body"]) == [{"PayloadPart": {"Bytes": b"whole answer %d" % n}}]
    assert client.invoke_endpoint(EndpointName="e", Body=b"x")["Body"].read() == b"whole answer x"
    assert len({seen.port for seen in container.seen}) == 1


def test_stream_relays_chunks_as_they_are_produced(container: ModelContainer, client: Any) -> None:
    """The first event reaches the caller before the container has produced the second."""
    gate = threading.Event()
    container.handler = streaming([b"first", b"second"], gate)
    response = client.invoke_endpoint_with_response_stream(EndpointName="e", Body=b"{}")
    events = iter(response["Body"])
    assert next(events) == {"PayloadPart": {"Bytes": b"first"}}
    gate.set()
    assert list(events) == [{"PayloadPart": {"Bytes": b"second"}}]


def test_stream_container_failure_before_body_is_a_model_error(
    container: ModelContainer, client: Any
) -> None:
    """A container error status on a streaming call is a ModelError (424)."""
    container.handler = lambda seen: Reply(b"bad input", status=400)
    with pytest.raises(client.exceptions.ModelError) as raised:
        client.invoke_endpoint_with_response_stream(EndpointName="e", Body=b"{}")
    assert raised.value.response["OriginalStatusCode"] == 400
    assert raised.value.response["OriginalMessage"] == "bad input"


def test_stream_broken_mid_way_is_a_model_stream_error(
    container: ModelContainer, client: Any
) -> None:
    """A container that fails mid-stream ends the stream with a ModelStreamError event."""

    def failing(seen: Seen) -> Reply:
        def body() -> Iterator[bytes]:
            yield b"partial"
            raise RuntimeError("model crashed")

        return Reply(body())

    container.handler = failing
    response = client.invoke_endpoint_with_response_stream(EndpointName="e", Body=b"{}")
    events = iter(response["Body"])
    assert next(events) == {"PayloadPart": {"Bytes": b"partial"}}
    with pytest.raises(EventStreamError) as raised:
        next(events)
    assert raised.value.response["Error"]["Code"] == "ModelStreamError"
    # The runtime stays usable afterwards.
    container.handler = echo
    assert client.invoke_endpoint(EndpointName="e", Body=b"ok")["Body"].read() == b"OK"


def test_stream_stalled_mid_way_is_a_model_stream_error(container: ModelContainer) -> None:
    """A container that stops sending for longer than container_timeout ends the stream."""
    gate = threading.Event()
    container.handler = streaming([b"first", b"second"], gate)
    try:
        with LocalRuntime(container.url, container_timeout=0.2) as runtime:
            client = runtime_client(runtime.url)
            response = client.invoke_endpoint_with_response_stream(EndpointName="e", Body=b"{}")
            events = iter(response["Body"])
            assert next(events) == {"PayloadPart": {"Bytes": b"first"}}
            with pytest.raises(EventStreamError) as raised:
                next(events)
    finally:
        gate.set()
    assert raised.value.response["Error"]["Code"] == "ModelStreamError"
    assert "in time" in raised.value.response["Error"]["Message"]


# InvokeEndpointAsync


@_INLINE_BODY
def test_async_body_is_accepted_and_written(
    container: ModelContainer, runtime: LocalRuntime, client: Any
) -> None:
    """An inline Body and no InputLocation: 202 with locations, the container gets the call in
    the background, and the output is written."""
    response = client.invoke_endpoint_async(
        EndpointName="e",
        Body=b"async body",
        CustomAttributes="accept_eula=true",
        InferenceId="job-1",
    )
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 202
    assert response["InferenceId"] == "job-1"
    assert "CustomAttributes" not in response
    assert response["OutputLocation"].endswith("/job-1.out")
    assert response["FailureLocation"].endswith("/job-1-error.out")
    assert runtime.wait_async(5)
    [seen] = container.seen
    assert seen.body == b"async body"
    assert _path(response["OutputLocation"]).read_bytes() == b"ASYNC BODY"


@_INLINE_BODY
def test_async_output_and_failure_files(
    container: ModelContainer, runtime: LocalRuntime, client: Any
) -> None:
    """Success writes <id>.out under the output location; a container error writes the failure."""
    ok = client.invoke_endpoint_async(EndpointName="e", Body=b"fine")
    assert runtime.wait_async(5)
    assert _path(ok["OutputLocation"]).read_bytes() == b"FINE"
    assert not _path(ok["FailureLocation"]).exists()
    assert ok["InferenceId"] and ok["OutputLocation"].startswith(runtime.output_location)

    container.handler = lambda seen: Reply(b"cannot", status=500)
    failed = client.invoke_endpoint_async(EndpointName="e", Body=b"broken")
    assert runtime.wait_async(5)
    assert _path(failed["FailureLocation"]).read_bytes() == b"cannot"
    assert not _path(failed["OutputLocation"]).exists()


@pytest.mark.parametrize("scheme", ["file", "s3"])
def test_async_reads_input_location(
    container: ModelContainer, runtime: LocalRuntime, client: Any, tmp_path: Path, scheme: str
) -> None:
    """InputLocation is read from a file:// URI or from an s3:// URI mapped under s3_root."""
    if scheme == "file":
        source = tmp_path / "input.json"
        location = source.as_uri()
    else:
        source = tmp_path / "s3" / "bucket" / "in" / "input.json"
        location = "s3://bucket/in/input.json"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(b'{"from": "' + scheme.encode() + b'"}')
    response = client.invoke_endpoint_async(EndpointName="e", InputLocation=location)
    assert runtime.wait_async(5)
    assert container.seen[0].body == source.read_bytes()
    assert _path(response["OutputLocation"]).read_bytes() == source.read_bytes().upper()


@_INLINE_BODY
def test_async_s3_output_location_maps_under_s3_root(
    container: ModelContainer, tmp_path: Path
) -> None:
    """An s3:// output location is reported as s3:// and written under s3_root."""
    with LocalRuntime(
        container.url,
        s3_root=tmp_path,
        output_location="s3://results/out",
        failure_location="s3://results/failed",
    ) as runtime:
        client = runtime_client(runtime.url)
        response = client.invoke_endpoint_async(
            EndpointName="e", Body=b"data", InferenceId="abc", S3OutputPathExtension="run-1"
        )
        assert runtime.wait_async(5)
    assert response["OutputLocation"] == "s3://results/out/run-1/abc.out"
    assert response["FailureLocation"] == "s3://results/failed/run-1/abc-error.out"
    assert (tmp_path / "results" / "out" / "run-1" / "abc.out").read_bytes() == b"DATA"


def test_async_missing_input_writes_a_failure(
    container: ModelContainer, runtime: LocalRuntime, client: Any, tmp_path: Path
) -> None:
    """An input file that does not exist is reported in the failure file, never sent."""
    missing = (tmp_path / "nowhere.json").as_uri()
    response = client.invoke_endpoint_async(EndpointName="e", InputLocation=missing)
    assert runtime.wait_async(5)
    assert b"Could not read the input" in _path(response["FailureLocation"]).read_bytes()
    assert container.seen == []


@pytest.mark.parametrize(
    ("s3_root", "location"),
    [
        (True, "https://bucket.s3.amazonaws.com/key"),
        (False, "s3://bucket/key"),
        (True, "s3://bucket/../../etc/passwd"),
        (True, "s3:///key"),
    ],
    ids=["https", "s3-without-root", "s3-escaping-root", "s3-without-bucket"],
)
def test_async_bad_input_location_is_a_validation_error(
    container: ModelContainer, tmp_path: Path, s3_root: bool, location: str
) -> None:
    """InputLocations the runtime cannot map are refused with ValidationError at once."""
    with LocalRuntime(container.url, s3_root=tmp_path if s3_root else None) as runtime:
        client = runtime_client(runtime.url)
        with pytest.raises(ClientError) as raised:
            client.invoke_endpoint_async(EndpointName="e", InputLocation=location)
    assert raised.value.response["Error"]["Code"] == "ValidationError"
    assert container.seen == []


@pytest.mark.parametrize(
    "params",
    [{"InferenceId": "../escape"}, {"Filename": "a/b.out"}, {"S3OutputPathExtension": "x/../.."}],
    ids=["inference-id", "filename", "extension"],
)
@_INLINE_BODY
def test_async_names_cannot_leave_the_output_location(
    container: ModelContainer, client: Any, params: dict[str, str]
) -> None:
    """Names with path separators or dot segments are refused with ValidationError."""
    with pytest.raises(ClientError) as raised:
        client.invoke_endpoint_async(EndpointName="e", Body=b"x", **params)
    assert raised.value.response["Error"]["Code"] == "ValidationError"
    assert container.seen == []


@_INLINE_BODY
def test_async_filename_and_extension_name_the_output(
    container: ModelContainer, runtime: LocalRuntime, client: Any
) -> None:
    """Filename names the output file and S3OutputPathExtension the folders under the output
    location; a failure is written beside it as <inference id>-error.out."""
    response = client.invoke_endpoint_async(
        EndpointName="e",
        Body=b"named",
        InferenceId="job-2",
        S3OutputPathExtension="runs/run-1",
        Filename="result.json",
    )
    assert response["OutputLocation"] == f"{runtime.output_location}/runs/run-1/result.json"
    assert response["FailureLocation"] == f"{runtime.failure_location}/runs/run-1/job-2-error.out"
    assert runtime.wait_async(5)
    assert _path(response["OutputLocation"]).read_bytes() == b"NAMED"


@_INLINE_BODY
def test_async_body_and_input_location_are_exclusive(
    container: ModelContainer, client: Any, tmp_path: Path
) -> None:
    """An inline Body together with an InputLocation is refused, as SageMaker refuses it."""
    source = tmp_path / "input.json"
    source.write_bytes(b"{}")
    with pytest.raises(ClientError) as raised:
        client.invoke_endpoint_async(EndpointName="e", Body=b"{}", InputLocation=source.as_uri())
    assert raised.value.response["Error"]["Code"] == "ValidationError"
    assert "mutually exclusive" in raised.value.response["Error"]["Message"]
    assert container.seen == []


@pytest.mark.parametrize(
    ("operation", "params", "member"),
    [
        pytest.param(
            "invoke_endpoint",
            {"PrefixAwareId": "p" * 65},
            "prefixAwareId",
            marks=_PREFIX_AWARE_ID,
        ),
        pytest.param(
            "invoke_endpoint_with_response_stream",
            {"PrefixAwareId": "p\x7f"},
            "prefixAwareId",
            marks=_PREFIX_AWARE_ID,
        ),
        ("invoke_endpoint", {"InferenceId": "i" * 65}, "inferenceId"),
        ("invoke_endpoint", {"CustomAttributes": "secret=" + "x" * 1018}, "customAttributes"),
        # The asynchronous call gets an inline Body too (setdefault below).
        pytest.param(
            "invoke_endpoint_async", {"Filename": "a.b.out"}, "filename", marks=_INLINE_BODY
        ),
        pytest.param(
            "invoke_endpoint_async", {"Filename": "f" * 33}, "filename", marks=_INLINE_BODY
        ),
        pytest.param(
            "invoke_endpoint_async",
            {"S3OutputPathExtension": "s3:/bucket"},
            "s3OutputPathExtension",
            marks=_INLINE_BODY,
        ),
        pytest.param(
            "invoke_endpoint_async",
            {"S3OutputPathExtension": "a b"},
            "s3OutputPathExtension",
            marks=_INLINE_BODY,
        ),
        pytest.param("invoke_endpoint_async", {"Body": b"b" * 128_001}, "body", marks=_INLINE_BODY),
    ],
    ids=[
        "prefix-aware-id-too-long",
        "prefix-aware-id-not-printable",
        "inference-id-too-long",
        "custom-attributes-too-long",
        "filename-two-dots",
        "filename-too-long",
        "extension-is-a-uri",
        "extension-with-space",
        "async-body-too-large",
    ],
)
def test_values_beyond_the_api_limits_are_a_validation_error(
    container: ModelContainer, client: Any, operation: str, params: dict[str, Any], member: str
) -> None:
    """Members beyond the limits of the API model (which botocore does not check) are refused
    with a ValidationError naming the member, never quoting the value, before any container
    call."""
    params.setdefault("Body", b"{}")
    with pytest.raises(ClientError) as raised:
        getattr(client, operation)(EndpointName="e", **params)
    error = raised.value.response["Error"]
    assert error["Code"] == "ValidationError"
    assert f"Value at '{member}' failed to satisfy constraint" in error["Message"]
    assert "secret" not in error["Message"]
    assert container.seen == []


def _wait_for(container: ModelContainer, count: int) -> list[Seen]:
    deadline = time.monotonic() + 5
    while len(container.seen) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return container.seen


# Lifecycle


def _runtime_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("sm-tracing-local")]


def test_close_ends_connections_and_joins_threads(container: ModelContainer) -> None:
    """After close no runtime thread is left, even with a caller's connection kept alive."""
    runtime = LocalRuntime(container.url).start()
    client = runtime_client(runtime.url)
    assert client.invoke_endpoint(EndpointName="e", Body=b"x")["Body"].read() == b"X"
    address = urlsplit(runtime.url).netloc
    # The listener, two async workers and the client's kept-alive connection.
    assert len(_runtime_threads()) == 4
    runtime.close()
    runtime.close()
    assert _runtime_threads() == []
    host, port = address.split(":")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=1).close()
    with pytest.raises(RuntimeError):
        _ = runtime.url
    with pytest.raises(RuntimeError):
        runtime.start()


def test_close_interrupts_a_stream_in_flight(container: ModelContainer) -> None:
    """Closing while a stream waits on the container returns at once and leaves no thread."""
    gate = threading.Event()
    container.handler = streaming([b"first", b"second"], gate)
    try:
        with LocalRuntime(container.url) as runtime:
            client = runtime_client(runtime.url)
            response = client.invoke_endpoint_with_response_stream(EndpointName="e", Body=b"{}")
            assert next(iter(response["Body"])) == {"PayloadPart": {"Bytes": b"first"}}
            started = time.monotonic()
        assert time.monotonic() - started < 2
        assert _runtime_threads() == []
    finally:
        gate.set()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"container_url": "unix:///tmp/model.sock"},
        {"container_url": "http://127.0.0.1:8080", "output_location": "s3://bucket/out"},
        {"container_url": "http://127.0.0.1:8080", "output_location": "ftp://host/out"},
    ],
    ids=["container-scheme", "s3-without-root", "output-scheme"],
)
def test_bad_configuration_fails_at_construction(kwargs: dict[str, Any]) -> None:
    """Container URLs and output locations it cannot use raise ValueError before serving."""
    with pytest.raises(ValueError):
        LocalRuntime(**kwargs)
    assert _runtime_threads() == []


def test_owned_output_folder_is_removed_on_close(container: ModelContainer) -> None:
    """The default output folder belongs to the runtime and goes away with it."""
    with LocalRuntime(container.url) as runtime:
        folder = _path(runtime.output_location)
        assert folder.is_dir()
        assert runtime.failure_location == runtime.output_location
    assert not folder.exists()


@_INLINE_BODY
def test_given_output_folder_is_kept(container: ModelContainer, tmp_path: Path) -> None:
    """An output folder given by the caller is left in place, with its results."""
    with LocalRuntime(container.url, output_location=tmp_path / "out") as runtime:
        client = runtime_client(runtime.url)
        client.invoke_endpoint_async(EndpointName="e", Body=b"kept", InferenceId="k")
        assert runtime.wait_async(5)
        assert runtime.output_location == (tmp_path / "out").as_uri()
    assert (tmp_path / "out" / "k.out").read_bytes() == b"KEPT"
