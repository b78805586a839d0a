"""``sm-tracing local`` as a user runs it: a process on loopback in front of a real container (the
demo's Flask app behind WSGIMiddleware, under gunicorn), called by the AWS CLI and by an
instrumented boto3 client, printing what a client needs and one line per call, and stopping
cleanly on Ctrl-C or SIGTERM."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from _aws_cli import aws_command
from _local_support import SM_TRACING, LocalCommand, clean_environment
from _otlp_receiver import OTLPReceiver, ReceivedSpan
from _serving import closed_port, launch, otlp_env, serving
from botocore.config import Config
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sm_tracing.local import _command

CONTAINER_SPAN = "POST /invocations"


def traceparent(trace_id: str, span_id: str) -> str:
    """The start of the ``traceparent`` pair that carries this span, flags left out."""
    return f"traceparent=00-{trace_id}-{span_id}-"


@pytest.fixture(scope="module")
def receiver() -> Iterator[OTLPReceiver]:
    """Where the container exports its spans."""
    with OTLPReceiver() as running:
        yield running


@pytest.fixture(scope="module")
def container(receiver: OTLPReceiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The demo's model container under gunicorn, exporting to ``receiver``: its URL."""
    logs = tmp_path_factory.mktemp("container")
    env = otlp_env("model", receiver.traces_url)
    app = launch("gunicorn", "sm_tracing._demo.app:create_app()", "model", logs, env=env)
    with serving(app) as started:
        yield started.url


@pytest.fixture(scope="module")
def s3_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder standing in for S3."""
    return tmp_path_factory.mktemp("s3")


@pytest.fixture(scope="module")
def local(container: str, s3_root: Path) -> Iterator[LocalCommand]:
    """``sm-tracing local`` on a free port in front of ``container``."""
    with LocalCommand(
        "--container", container, "--port", "0", "--s3-root", str(s3_root)
    ) as command:
        yield command


def client_for(local: LocalCommand) -> object:
    """A boto3 client configured by nothing but the variables ``sm-tracing local`` printed."""
    exports = local.exports
    session = boto3.session.Session(
        aws_access_key_id=exports["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=exports["AWS_SECRET_ACCESS_KEY"],
        region_name=exports["AWS_DEFAULT_REGION"],
    )
    return session.client(
        "sagemaker-runtime",
        endpoint_url=exports["AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"],
        config=Config(retries={"total_max_attempts": 1}),
    )


def container_span(receiver: OTLPReceiver, trace_id: str) -> ReceivedSpan:
    """The container's span in trace *trace_id*, once it has arrived."""
    spans = receiver.wait_for(
        lambda spans: any(s.trace_id == trace_id and s.name == CONTAINER_SPAN for s in spans)
    )
    (found,) = [s for s in spans if s.trace_id == trace_id and s.name == CONTAINER_SPAN]
    return found


def test_prints_what_a_client_needs(local: LocalCommand) -> None:
    """It prints the port it took (asked for 0) and ``export`` lines for the endpoint, a region
    and credentials that a shell takes as they are."""
    exports = local.exports
    assert set(exports) == {
        "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME",
        "AWS_DEFAULT_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    }
    match = re.fullmatch(r"http://127\.0\.0\.1:(\d+)", local.url)
    assert match, local.url
    assert int(match.group(1)) != 0
    assert local.url in local.banner[0]
    pasted = "\n".join(line for line in local.banner if line.startswith("export "))
    shell = subprocess.run(
        ["bash", "-c", f"{pasted}\nenv"],
        env=clean_environment(),
        capture_output=True,
        text=True,
        check=True,
    )
    for name, value in exports.items():
        assert f"{name}={value}" in shell.stdout.splitlines()


@pytest.mark.parametrize("how", ["--endpoint-url", "exported"])
def test_aws_cli_invoke_endpoint(local: LocalCommand, tmp_path: Path, how: str) -> None:
    """``aws sagemaker-runtime invoke-endpoint --custom-attributes`` gets the container's answer
    and its CustomAttributes back, given ``--endpoint-url`` or only the printed variables; the
    command prints the call's line with the CustomAttributes each way."""
    aws = aws_command()
    out = tmp_path / "answer.json"
    args = [
        str(aws), "sagemaker-runtime", "invoke-endpoint",
        "--endpoint-name", f"cli-{how.strip('-')}",
        "--body", '{"inputs": "from the cli"}',
        "--content-type", "application/json",
        "--custom-attributes", "accept_eula=true",
        str(out),
    ]  # fmt: skip
    env = clean_environment(**local.exports)
    if how == "--endpoint-url":
        env.pop("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME")
        args[3:3] = ["--endpoint-url", local.url]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["CustomAttributes"].startswith("accept_eula=true;traceresponse=00-")
    answer = json.loads(out.read_text())
    assert answer == {"outputs": "FROM THE CLI", "custom_attributes": "accept_eula=true"}
    line = local.line(f"InvokeEndpoint cli-{how.strip('-')}: 200 in ")
    assert '| CustomAttributes caller->container: "accept_eula=true" |' in line
    assert f'container->caller: "{printed["CustomAttributes"]}"' in line


def test_instrumented_client_joins_the_container_trace(
    local: LocalCommand,
    receiver: OTLPReceiver,
    exporter: InMemorySpanExporter,
    instrumented: None,
) -> None:
    """An instrumented boto3 client's call is one trace: the container's span is the child of
    the client's span, and the command's line shows the traceparent it carried."""
    client = client_for(local)
    response = client.invoke_endpoint(  # type: ignore[attr-defined]
        EndpointName="boto3",
        Body=b'{"inputs": "hello"}',
        ContentType="application/json",
        CustomAttributes="accept_eula=true",
    )
    assert json.loads(response["Body"].read())["outputs"] == "HELLO"
    assert response["CustomAttributes"] == "accept_eula=true"
    (span,) = exporter.get_finished_spans()
    trace_id, span_id = f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"
    found = container_span(receiver, trace_id)
    assert found.parent_id == span_id
    line = local.line("InvokeEndpoint boto3: 200 in ")
    sent = re.escape(traceparent(trace_id, span_id))
    assert re.search(rf'caller->container: "accept_eula=true;{sent}[0-9a-f]{{2}}" \|', line), line
    assert f"traceresponse=00-{trace_id}-{found.span_id}-" in line


def test_stream_joins_the_container_trace(
    local: LocalCommand,
    receiver: OTLPReceiver,
    exporter: InMemorySpanExporter,
    instrumented: None,
) -> None:
    """InvokeEndpointWithResponseStream through the command: every chunk arrives, the
    container's span is the child of the client's, and the line is printed at the stream's
    end."""
    client = client_for(local)
    response = client.invoke_endpoint_with_response_stream(  # type: ignore[attr-defined]
        EndpointName="stream",
        Body=json.dumps({"inputs": "tok", "stream": True, "chunks": 3, "delay": 0.01}),
        ContentType="application/json",
        CustomAttributes="accept_eula=true",
    )
    parts = b"".join(event["PayloadPart"]["Bytes"] for event in response["Body"])
    assert parts.decode().splitlines() == ["tok 1/3", "tok 2/3", "tok 3/3"]
    (span,) = exporter.get_finished_spans()
    trace_id, span_id = f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"
    assert container_span(receiver, trace_id).parent_id == span_id
    line = local.line("InvokeEndpointWithResponseStream stream: 200 in ")
    assert traceparent(trace_id, span_id) in line


def test_async_writes_the_result_in_the_s3_folder(
    local: LocalCommand,
    receiver: OTLPReceiver,
    s3_root: Path,
    exporter: InMemorySpanExporter,
    instrumented: None,
) -> None:
    """InvokeEndpointAsync reads its InputLocation from the S3 folder and writes the result
    where its OutputLocation says, under that folder; the container continues the caller's
    trace, and the line, printed once the result is written, names the file."""
    source = s3_root / "inputs" / "request.json"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text(json.dumps({"inputs": "later"}))
    client = client_for(local)
    response = client.invoke_endpoint_async(  # type: ignore[attr-defined]
        EndpointName="later",
        InputLocation="s3://inputs/request.json",
        ContentType="application/json",
        CustomAttributes="accept_eula=true",
    )
    output = response["OutputLocation"]
    assert output.startswith(f"{_command.DEFAULT_OUTPUT}/")
    result = s3_root / output.removeprefix("s3://")
    line = local.line("InvokeEndpointAsync later: 200 in ")
    assert f"written to {result} |" in line
    assert json.loads(result.read_text())["outputs"] == "LATER"
    (span,) = exporter.get_finished_spans()
    trace_id, span_id = f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"
    assert container_span(receiver, trace_id).parent_id == span_id
    assert traceparent(trace_id, span_id) in line


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_it_cleanly(container: str, sig: int) -> None:
    """Ctrl-C or SIGTERM, with a client's kept-alive connection open, ends it at once with
    status 0, the port released and the temporary S3 folder removed."""
    with LocalCommand("--container", container, "--port", "0") as local:
        port = int(local.url.rsplit(":", 1)[1])
        (s3,) = re.findall(r"^S3 is (\S+) \(a temporary folder", "\n".join(local.banner), re.M)
        assert Path(s3).is_dir()
        client = client_for(local)
        client.invoke_endpoint(EndpointName="kept", Body=b"{}")  # type: ignore[attr-defined]
        began = time.monotonic()
        assert local.stop(sig) == 0
        assert time.monotonic() - began < 3
    assert local.stderr() == ""
    assert local.lines[-1] == "sm-tracing local: stopping"
    assert not Path(s3).exists()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def run_local(*args: str) -> subprocess.CompletedProcess[str]:
    """``sm-tracing local *args`` run to its end in a clean environment, output captured."""
    return subprocess.run(
        [str(SM_TRACING), "local", *args],
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_a_port_in_use_is_refused(container: str) -> None:
    """A port already taken fails at once, with exit status 1, naming ``--port 0``."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_local("--container", container, "--port", str(port))
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "--port 0" in done.stderr


def test_a_container_that_does_not_answer_is_reported(s3_root: Path) -> None:
    """With nothing at ``--container``, it still serves, says so on stderr, and a call gets
    SageMaker's ModelError, which its line shows."""
    nowhere = f"http://127.0.0.1:{closed_port()}"
    with LocalCommand("--container", nowhere, "--port", "0") as local:
        client = client_for(local)
        with pytest.raises(client.exceptions.ModelError):  # type: ignore[attr-defined]
            client.invoke_endpoint(EndpointName="down", Body=b"{}")  # type: ignore[attr-defined]
        line = local.line("InvokeEndpoint down: 424 ModelError in ")
        assert "caller->container: (none) | container->caller: (none)" in line
    assert f"GET {nowhere}/ping does not answer" in local.stderr()


def test_a_container_url_that_is_not_http_is_refused() -> None:
    """``--container`` must be an http(s) URL: anything else exits 2, saying why."""
    done = run_local("--container", "127.0.0.1:8080")
    assert done.returncode == 2
    assert "must be http:// or https://host:port" in done.stderr


def test_default_port_is_not_the_containers() -> None:
    """The default port is not 8080, where SageMaker containers listen, and help says it."""
    assert _command.parser().get_default("port") == _command.DEFAULT_PORT != 8080
    assert f"(default: {_command.DEFAULT_PORT})" in " ".join(
        _command.parser().format_help().split()
    )
