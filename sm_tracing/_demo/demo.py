"""``sm-tracing demo``: one trace from a boto3 client into a model container, on this machine.

No AWS account, no Docker, no network: the demo starts two model containers (the Flask app of
:mod:`sm_tracing._demo.app` under gunicorn, one for a real-time endpoint and one for an async
endpoint), a :class:`~sm_tracing.local.LocalRuntime` in front of them, and an instrumented
boto3 client. Every process exports its spans over OTLP/HTTP to a receiver the demo runs, which
can pass them on to Jaeger or a Collector. It makes a plain, a streamed and an async
invocation and prints each trace as a tree.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit

if TYPE_CHECKING:
    # Imported when the demo runs: the receiver needs the OTLP exporter's protobufs, which
    # may be missing, and the demo must say so rather than fail to import.
    from sm_tracing._demo.receiver import OTLPReceiver, ReceivedSpan

CLIENT_SERVICE = "demo-client"
REALTIME = "demo-realtime"
ASYNC = "demo-async"
CONTAINER_SPAN = "POST /invocations"
CUSTOM_ATTRIBUTES = "accept_eula=true"
_REQUIRED = (
    ("flask", "Flask"),
    ("gunicorn", "gunicorn"),
    ("opentelemetry.exporter.otlp.proto.http", "opentelemetry-exporter-otlp-proto-http"),
)
_INSTALL_HINT = "pip install 'sm-tracing[demo]'"


class DemoError(Exception):
    """The demo could not run; the message says why."""


@dataclass(frozen=True)
class Scenario:
    """One invocation of the demo and how it is expected to join the trace."""

    title: str
    operation: str
    linked: bool

    @property
    def client_span(self) -> str:
        return f"SageMaker Runtime.{self.operation}"


SCENARIOS = (
    Scenario("plain", "InvokeEndpoint", linked=False),
    Scenario("streamed", "InvokeEndpointWithResponseStream", linked=False),
    Scenario("async", "InvokeEndpointAsync", linked=True),
)


def missing_packages() -> list[str]:
    """The distributions the demo needs that are not installed."""
    missing = []
    for module, distribution in _REQUIRED:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            missing.append(distribution)
    return missing


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of *endpoint*: ``/v1/traces`` added when it has no path."""
    if urlsplit(endpoint).path in ("", "/"):
        return endpoint.rstrip("/") + "/v1/traces"
    return endpoint


def run(
    *,
    out: TextIO,
    otlp_endpoint: str | None = None,
    jaeger_url: str = "http://localhost:16686",
    timeout: float = 20.0,
) -> int:
    """Run the demo, printing to *out*; 0 when every trace joined, 1 otherwise."""
    missing = missing_packages()
    if missing:
        print(f"sm-tracing demo needs {', '.join(missing)}: {_INSTALL_HINT}", file=sys.stderr)
        return 2
    from sm_tracing._demo.receiver import OTLPReceiver

    deadline = time.monotonic() + timeout
    forward = traces_url(otlp_endpoint) if otlp_endpoint else None
    try:
        with OTLPReceiver(forward_to=forward) as receiver:
            spans = _invoke_all(receiver, deadline)
            problems = _report(spans, out, jaeger_url if forward else None)
            if receiver.forward_errors:
                problems.append(
                    f"could not export to {forward}: {receiver.forward_errors[-1]}"
                    " (is Jaeger or a Collector listening there?)"
                )
    except DemoError as exc:
        print(f"sm-tracing demo failed: {exc}", file=sys.stderr)
        return 1
    if problems:
        for problem in problems:
            print(f"FAILED: {problem}", file=out)
        return 1
    print(
        f"OK: {len(SCENARIOS)} invocations, each traced from the client into the container",
        file=out,
    )
    return 0


def _invoke_all(receiver: OTLPReceiver, deadline: float) -> list[ReceivedSpan]:
    """Start everything, make the three invocations, and collect every span they made."""
    import boto3
    from botocore.config import Config
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    import sm_tracing
    from sm_tracing.local import LocalRuntime

    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sm-tracing-demo-")))
        realtime = stack.enter_context(_container(receiver, work, "realtime"))
        asynchronous = stack.enter_context(
            _container(receiver, work, "async", remote_context="link")
        )
        realtime.wait_ready(deadline)
        asynchronous.wait_ready(deadline)
        runtime = stack.enter_context(
            LocalRuntime(
                {REALTIME: realtime.url, ASYNC: asynchronous.url}, output_location=work / "out"
            )
        )
        # The client's own provider, not the global one: the demo leaves no global state.
        provider = TracerProvider(resource=Resource.create({"service.name": CLIENT_SERVICE}))
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(receiver.traces_url)))
        stack.callback(provider.shutdown)
        sm_tracing.instrument(tracer_provider=provider)
        stack.callback(sm_tracing.uninstrument)
        # Any credentials do: the local runtime wants a SigV4 signature but does not check it.
        session = boto3.session.Session(
            aws_access_key_id="demo",
            aws_secret_access_key="demo",
            region_name="us-east-1",
        )
        client = session.client(
            "sagemaker-runtime",
            endpoint_url=runtime.url,
            config=Config(retries={"max_attempts": 1}, read_timeout=10),
        )
        _call(client, work)
        if not runtime.wait_async(max(0.1, deadline - time.monotonic())):
            raise DemoError("the async invocation did not finish in time")
        expected = len(SCENARIOS)
        try:
            return receiver.wait_for(
                lambda spans: (
                    _count(spans, CLIENT_SERVICE) >= expected
                    and _count(spans, None, CONTAINER_SPAN) >= expected
                ),
                timeout=max(0.1, deadline - time.monotonic()),
            )
        except TimeoutError:
            return receiver.spans


def _count(spans: list[ReceivedSpan], service: str | None, name: str | None = None) -> int:
    return sum(
        1
        for span in spans
        if (service is None or span.service == service) and (name is None or span.name == name)
    )


def _call(client: Any, work: Path) -> None:
    """The three invocations, each checking that the caller's CustomAttributes came back."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        response = client.invoke_endpoint(
            EndpointName=REALTIME,
            Body=json.dumps({"inputs": "hello from the demo"}),
            ContentType="application/json",
            CustomAttributes=CUSTOM_ATTRIBUTES,
        )
        response["Body"].read()
        _check_echo("plain", response.get("CustomAttributes"))

        response = client.invoke_endpoint_with_response_stream(
            EndpointName=REALTIME,
            Body=json.dumps({"inputs": "token", "stream": True, "chunks": 5, "delay": 0.02}),
            ContentType="application/json",
            CustomAttributes=CUSTOM_ATTRIBUTES,
        )
        for _event in response["Body"]:
            pass
        _check_echo("streamed", response.get("CustomAttributes"))

        source = work / "async-input.json"
        source.write_text(json.dumps({"inputs": "later"}))
        client.invoke_endpoint_async(
            EndpointName=ASYNC,
            InputLocation=source.as_uri(),
            ContentType="application/json",
            CustomAttributes=CUSTOM_ATTRIBUTES,
        )
    except (BotoCoreError, ClientError) as exc:
        raise DemoError(f"an invocation failed: {exc}") from exc


def _check_echo(title: str, value: str | None) -> None:
    if value != CUSTOM_ATTRIBUTES:
        raise DemoError(
            f"the {title} invocation's CustomAttributes came back as {value!r}, "
            f"not {CUSTOM_ATTRIBUTES!r}"
        )


def _report(spans: list[ReceivedSpan], out: TextIO, jaeger_url: str | None) -> list[str]:
    """Print each scenario's trace; the problems found, if any."""
    from sm_tracing._demo.tree import render_trace

    unicode = (getattr(out, "encoding", None) or "").lower().replace("-", "") == "utf8"
    problems = []
    print(file=out)
    for scenario in SCENARIOS:
        clients = [
            s for s in spans if s.service == CLIENT_SERVICE and s.name == scenario.client_span
        ]
        if len(clients) != 1:
            problems.append(f"{scenario.title}: expected one client span, got {len(clients)}")
            continue
        client = clients[0]
        containers = [s for s in spans if s.name == CONTAINER_SPAN and s.service != CLIENT_SERVICE]
        if scenario.linked:
            joined = [s for s in containers if (client.trace_id, client.span_id) in s.links]
        else:
            joined = [s for s in containers if s.parent_id == client.span_id]
        note = ", the container's trace linked to it" if scenario.linked else ""
        print(f"{scenario.title}: {scenario.operation}{note}", file=out)
        for trace_id in dict.fromkeys([client.trace_id, *(s.trace_id for s in joined)]):
            title = f"  trace {trace_id}"
            if jaeger_url:
                title += f"  ({jaeger_url.rstrip('/')}/trace/{trace_id})"
            members = [s for s in spans if s.trace_id == trace_id]
            for line in render_trace(members, title=title, unicode=unicode, indent="    "):
                print(line, file=out)
        print(file=out)
        if not joined:
            how = "linked to" if scenario.linked else "a child of"
            problems.append(f"{scenario.title}: no container span is {how} the client span")
    return problems


class _Container:
    """A gunicorn process serving the demo app on a socket the demo bound for it."""

    def __init__(self, process: subprocess.Popen[bytes], url: str, log: Path, name: str) -> None:
        self.process = process
        self.url = url
        self.log = log
        self.name = name

    def wait_ready(self, deadline: float) -> None:
        """Return once ``/ping`` answers 200; DemoError if the process dies or time runs out."""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise DemoError(f"the {self.name} container exited:\n{self._log_tail()}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(self.url + "/ping", timeout=1) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.05)
        raise DemoError(f"the {self.name} container did not start in time:\n{self._log_tail()}")

    def stop(self) -> None:
        """Stop gunicorn; its worker flushes its spans on the way out."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no log)"


@contextlib.contextmanager
def _container(
    receiver: OTLPReceiver,
    work: Path,
    name: str,
    *,
    remote_context: str = "continue",
) -> Iterator[_Container]:
    """A demo container under gunicorn, exporting to *receiver*, stopped on exit. Readiness
    is awaited apart (``wait_ready``), so that both containers start at the same time."""
    with socket.socket() as listener:
        # Bound here and handed over, so no other process can take the port in between.
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port = listener.getsockname()[1]
        env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
        env.update(
            OTEL_SERVICE_NAME=f"demo-{name}-model",
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=receiver.traces_url,
            OTEL_BSP_SCHEDULE_DELAY="50",
            SM_TRACING_REMOTE_CONTEXT=remote_context,
            PYTHONUNBUFFERED="1",
        )
        log = work / f"{name}-container.log"
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"fd://{listener.fileno()}",
            "--workers",
            "1",
            "--threads",
            "4",
            "--graceful-timeout",
            "2",
            "--log-level",
            "warning",
            "sm_tracing._demo.app:create_app()",
        ]
        with log.open("wb") as sink:
            process = subprocess.Popen(
                command,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                pass_fds=(listener.fileno(),),
            )
    container = _Container(process, f"http://127.0.0.1:{port}", log, name)
    try:
        yield container
    finally:
        container.stop()
