"""``sm-tracing demo``: one trace from a boto3 client into a model container, on this machine.

No AWS account, no Docker, no network: the demo starts two model containers (the Flask app of
:mod:`sm_tracing._demo.app` under gunicorn, one for a real-time endpoint and one for an async
endpoint), a :class:`~sm_tracing.local.LocalRuntime` in front of them, and an instrumented
boto3 client. Every process exports its spans over OTLP/HTTP to a receiver the demo runs, which
can pass them on to Jaeger or a Collector. It makes a plain, a streamed and an async
invocation and prints, for each, the CustomAttributes value at every hop (as the caller passed
it, as it went on the wire with the trace context merged in, as the container app received it,
as the container answered, as the caller got it back), where its time went as the client
span records it (the container's time, SageMaker's share, a stream's chunks) and the trace as
a tree.

With Python 3.12 and the HTTP/2 SDK (``sm-tracing[demo,bidi]``) it also opens a bidirectional
stream through a :class:`~sm_tracing.local.LocalBidiRuntime` to a third container, a WebSocket
app of :mod:`sm_tracing._demo.app` behind :class:`sm_tracing.ASGIMiddleware` under uvicorn;
elsewhere it says in one line what that run needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit

from sm_tracing._hints import install_hint

if TYPE_CHECKING:
    # Imported when the demo runs: the receiver needs the OTLP exporter's protobufs, which
    # may be missing, and the demo must say so rather than fail to import.
    from sm_tracing._demo.receiver import OTLPReceiver, ReceivedSpan

CLIENT_SERVICE = "demo-client"
REALTIME = "demo-realtime"
ASYNC = "demo-async"
BIDI = "demo-bidi"
CONTAINER_SPAN = "POST /invocations"
BIDI_QUERY = "delay=0.02"
BIDI_MESSAGES = ("hello", "from", "the", "demo")
CUSTOM_ATTRIBUTES = "accept_eula=true"
HEADER = "X-Amzn-SageMaker-Custom-Attributes"
SHARE_MEANS = (
    "SageMaker's share is the client's time to the response's headers less the container's"
    " time: SageMaker's front door, the network and any queueing; here, the local runtime"
    " and loopback."
)
_REQUIRED = (
    ("flask", "Flask"),
    ("gunicorn", "gunicorn"),
    ("opentelemetry.exporter.otlp.proto.http", "opentelemetry-exporter-otlp-proto-http"),
)
_INSTALL_HINT = install_hint("demo")
# The bidirectional run: the HTTP/2 SDK (the bidi extra), and what the local runtime and the
# WebSocket container need (the demo extra, from Python 3.12).
_BIDI_REQUIRED = (
    ("aws_sdk_sagemaker_runtime_http2", "aws-sdk-sagemaker-runtime-http2"),
    ("h2", "h2"),
    ("trustme", "trustme"),
    ("uvicorn", "uvicorn"),
    ("websockets", "websockets"),
)
BIDI_NEEDS = (
    "the bidirectional run (InvokeEndpointWithBidirectionalStream) needs Python 3.12 or later"
    f" and {install_hint('demo', 'bidi')}"
)


class DemoError(Exception):
    """The demo could not run; the message says why."""


class OutOfTime(DemoError):
    """Something the demo waits for did not happen before its deadline."""

    def __init__(self, what: str, detail: str = "") -> None:
        super().__init__(f"{what} in time{detail}")
        self.what = what
        self.detail = detail


@dataclass(frozen=True)
class Scenario:
    """One invocation of the demo and how it is expected to join the trace."""

    title: str
    operation: str
    linked: bool
    service: str = "SageMaker Runtime"
    container_span: str = CONTAINER_SPAN

    @property
    def client_span(self) -> str:
        return f"{self.service}.{self.operation}"

    @property
    def inference_id(self) -> str:
        """The InferenceId the demo sends, which the container app logs beside what it saw."""
        return f"demo-{self.title}"


@dataclass
class Carried:
    """One invocation's CustomAttributes at each hop; None where there was none."""

    sent: str | None = None  # on the wire, the trace context merged in by sm_tracing
    received: str | None = None  # what the container app read, sm_tracing's keys taken out
    answered: str | None = None  # the container's answer on the wire, with its echo
    returned: str | None = None  # what the caller's code got back


SCENARIOS = (
    Scenario("plain", "InvokeEndpoint", linked=False),
    Scenario("streamed", "InvokeEndpointWithResponseStream", linked=False),
    Scenario("async", "InvokeEndpointAsync", linked=True),
)
BIDIRECTIONAL = Scenario(
    "bidirectional",
    "InvokeEndpointWithBidirectionalStream",
    linked=False,
    service="SageMaker Runtime HTTP2",
    container_span="WS /invocations-bidirectional-stream",
)


def missing_packages(required: tuple[tuple[str, str], ...] = _REQUIRED) -> list[str]:
    """The distributions the demo needs (or those of *required*) that are not installed."""
    missing = []
    for module, distribution in required:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            missing.append(distribution)
    return missing


def bidi_ready() -> bool:
    """Whether the bidirectional run can be made here."""
    return sys.version_info >= (3, 12) and not missing_packages(_BIDI_REQUIRED)


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
    bidi = bidi_ready()
    scenarios = (*SCENARIOS, BIDIRECTIONAL) if bidi else SCENARIOS
    try:
        with OTLPReceiver(forward_to=forward) as receiver:
            spans, carried = _invoke_all(receiver, deadline, _Progress(out), bidi=bidi)
            problems = _report(spans, out, jaeger_url if forward else None, carried, scenarios)
            if receiver.forward_errors:
                problems.append(
                    f"could not export to {forward}: {receiver.forward_errors[-1]}"
                    " (is Jaeger or a Collector listening there?)"
                )
    except OutOfTime as exc:
        # Named as the command line sets it, so the way to give it longer is plain.
        print(
            f"sm-tracing demo failed: {exc.what} within --timeout {timeout:g} seconds"
            f" (a larger --timeout gives it longer){exc.detail}",
            file=sys.stderr,
        )
        return 1
    except DemoError as exc:
        print(f"sm-tracing demo failed: {exc}", file=sys.stderr)
        return 1
    if problems:
        for problem in problems:
            print(f"FAILED: {problem}", file=out)
        return 1
    if not bidi:
        print(f"Skipped: {BIDI_NEEDS}.", file=out)
    print(
        f"OK: {len(scenarios)} invocations, each traced from the client into the container",
        file=out,
    )
    return 0


def _invoke_all(
    receiver: OTLPReceiver, deadline: float, progress: _Progress, *, bidi: bool = False
) -> tuple[list[ReceivedSpan], dict[str, Carried]]:
    """Start everything, make the three invocations (and with *bidi* the bidirectional
    stream), and collect every span they made and the CustomAttributes of each at every hop
    (by scenario title)."""
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
        progress.say(
            f"Starting {'three' if bidi else 'two'} model containers: a Flask app behind "
            "sm_tracing.WSGIMiddleware, under gunicorn, for the real-time and the async endpoint"
            + ("; a WebSocket app behind sm_tracing.ASGIMiddleware, under uvicorn" if bidi else "")
        )
        containers = [
            stack.enter_context(_container(receiver, work, "realtime")),
            stack.enter_context(_container(receiver, work, "async", remote_context="link")),
        ]
        if bidi:
            containers.append(stack.enter_context(_container(receiver, work, "bidi")))
        # Both are told to stop before either is waited for, so they shut down together.
        for container in containers:
            stack.callback(container.terminate)
        wait_ready(containers, deadline, progress)
        realtime, asynchronous = containers[:2]
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
        carried = {scenario.title: Carried() for scenario in SCENARIOS}
        by_id = {scenario.inference_id: carried[scenario.title] for scenario in SCENARIOS}

        def on_the_wire(request: Any, **_: Any) -> None:
            # The signed request as it leaves: what sm_tracing merged is in it.
            found = by_id.get(_text(request.headers.get("X-Amzn-SageMaker-Inference-Id")) or "")
            if found is not None:
                found.sent = _text(request.headers.get(HEADER))

        client.meta.events.register("before-send.sagemaker-runtime", on_the_wire)
        progress.say(
            f"Calling a local SageMaker runtime ({runtime.url}) with an instrumented boto3 client"
        )
        _call(client, work, carried)
        if bidi:
            from sm_tracing.local import LocalBidiRuntime

            bidi_runtime = stack.enter_context(LocalBidiRuntime(containers[2].ws_url))
            _converse(bidi_runtime, max(0.1, deadline - time.monotonic()))
        if not runtime.wait_async(max(0.1, deadline - time.monotonic())):
            raise OutOfTime("the async invocation did not finish")
        for container in containers:
            for inference_id, value in container.received().items():
                if inference_id in by_id:
                    by_id[inference_id].received = value
        expected = len(SCENARIOS) + bidi
        try:
            spans = receiver.wait_for(
                lambda spans: (
                    _count(spans, CLIENT_SERVICE) >= expected
                    and _count(spans, None, CONTAINER_SPAN) >= len(SCENARIOS)
                    and _count(spans, None, BIDIRECTIONAL.container_span) >= bidi
                ),
                timeout=max(0.1, deadline - time.monotonic()),
            )
        except TimeoutError:
            spans = receiver.spans
        return spans, carried


def _text(value: str | bytes | None) -> str | None:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _count(spans: list[ReceivedSpan], service: str | None, name: str | None = None) -> int:
    return sum(
        1
        for span in spans
        if (service is None or span.service == service) and (name is None or span.name == name)
    )


def _call(client: Any, work: Path, carried: dict[str, Carried]) -> None:
    """The three invocations, each checking that the caller's CustomAttributes came back."""
    from botocore.exceptions import BotoCoreError, ClientError

    plain, streamed, asynchronous = SCENARIOS
    try:
        response = client.invoke_endpoint(
            EndpointName=REALTIME,
            Body=json.dumps({"inputs": "hello from the demo"}),
            ContentType="application/json",
            CustomAttributes=CUSTOM_ATTRIBUTES,
            InferenceId=plain.inference_id,
        )
        response["Body"].read()
        _came_back(plain, response, carried[plain.title])

        response = client.invoke_endpoint_with_response_stream(
            EndpointName=REALTIME,
            Body=json.dumps({"inputs": "token", "stream": True, "chunks": 5, "delay": 0.02}),
            ContentType="application/json",
            CustomAttributes=CUSTOM_ATTRIBUTES,
            InferenceId=streamed.inference_id,
        )
        for _event in response["Body"]:
            pass
        _came_back(streamed, response, carried[streamed.title])

        source = work / "async-input.json"
        source.write_text(json.dumps({"inputs": "later"}))
        client.invoke_endpoint_async(
            EndpointName=ASYNC,
            InputLocation=source.as_uri(),
            ContentType="application/json",
            CustomAttributes=CUSTOM_ATTRIBUTES,
            InferenceId=asynchronous.inference_id,
        )
    except (BotoCoreError, ClientError) as exc:
        raise DemoError(f"an invocation failed: {exc}") from exc


def _converse(runtime: Any, timeout: float) -> None:
    """The bidirectional stream: each message sent and its answer read, then the request
    stream ended and the response stream read to its end."""
    # Imported by name: the SDK exists from Python 3.12 only, and the type checker may run
    # where it cannot be installed.
    sdk = "aws_sdk_sagemaker_runtime_http2"
    client_module = importlib.import_module(f"{sdk}.client")
    config_module = importlib.import_module(f"{sdk}.config")
    models = importlib.import_module(f"{sdk}.models")

    async def converse() -> list[str]:
        config = await config_module.AsyncSageMakerRuntimeHTTP2Config.resolve(
            endpoint_uri=runtime.url,
            region="us-east-1",
            aws_access_key_id="demo",
            aws_secret_access_key="demo",
            transport=runtime.transport(),
        )
        client = client_module.AsyncSageMakerRuntimeHTTP2Client(config=config)
        answers = []
        try:
            stream = await client.invoke_endpoint_with_bidirectional_stream(
                models.InvokeEndpointWithBidirectionalStreamInput(
                    endpoint_name=BIDI, model_query_string=BIDI_QUERY
                )
            )
            try:
                output = None
                for text in BIDI_MESSAGES:
                    part = models.RequestPayloadPart(bytes_=text.encode(), data_type="UTF8")
                    event = models.RequestStreamEventPayloadPart(value=part)
                    await stream.input_stream.send(event)
                    if output is None:  # the response opens once the first part is sent
                        _, output = await stream.await_output()
                    answer = await output.receive()
                    if answer is None:
                        break
                    answers.append(bytes(answer.value.bytes_).decode())
                # Ending the request stream ends the session, and the response stream with it.
                await stream.input_stream.close()
                if output is not None:
                    async for _ in output:
                        pass
            finally:
                await stream.close()
        finally:
            await client.close()
        return answers

    try:
        answers = asyncio.run(asyncio.wait_for(converse(), timeout))
    except Exception as exc:  # the SDK's and the transport's own error types
        raise DemoError(f"the bidirectional stream failed: {exc!r}") from exc
    expected = [text.upper() for text in BIDI_MESSAGES]
    if answers != expected:
        raise DemoError(f"the bidirectional stream answered {answers!r}, not {expected!r}")


def _came_back(scenario: Scenario, response: dict[str, Any], carried: Carried) -> None:
    """Note the answer's CustomAttributes, on the wire and as the caller got them; the caller's
    own value must come back unchanged."""
    headers = response["ResponseMetadata"]["HTTPHeaders"]
    carried.answered = headers.get(HEADER.lower())
    carried.returned = response.get("CustomAttributes")
    if carried.returned != CUSTOM_ATTRIBUTES:
        raise DemoError(
            f"the {scenario.title} invocation's CustomAttributes came back as "
            f"{carried.returned!r}, not {CUSTOM_ATTRIBUTES!r}"
        )


def _report(
    spans: list[ReceivedSpan],
    out: TextIO,
    jaeger_url: str | None,
    carried: dict[str, Carried] | None = None,
    scenarios: tuple[Scenario, ...] = SCENARIOS,
) -> list[str]:
    """Print each scenario's CustomAttributes hop by hop (when *carried* says), where its time
    went and its trace; the problems found, if any."""
    from sm_tracing._demo.tree import render_trace

    unicode = (getattr(out, "encoding", None) or "").lower().replace("-", "") == "utf8"
    problems = []
    print(file=out)
    print(textwrap.fill(SHARE_MEANS, width=96), file=out)
    print(file=out)
    for scenario in scenarios:
        clients = [
            s for s in spans if s.service == CLIENT_SERVICE and s.name == scenario.client_span
        ]
        if len(clients) != 1:
            problems.append(f"{scenario.title}: expected one client span, got {len(clients)}")
            continue
        client = clients[0]
        containers = [
            s for s in spans if s.name == scenario.container_span and s.service != CLIENT_SERVICE
        ]
        if scenario.linked:
            joined = [s for s in containers if (client.trace_id, client.span_id) in s.links]
        else:
            joined = [s for s in containers if s.parent_id == client.span_id]
        note = ", the container's trace linked to it" if scenario.linked else ""
        print(f"{scenario.title}: {scenario.operation}{note}", file=out)
        if scenario is BIDIRECTIONAL:
            print(
                "  No CustomAttributes here: the trace context goes in ModelQueryString", file=out
            )
        elif carried is not None:
            problems.extend(_show_hops(scenario, carried[scenario.title], out))
        problems.extend(_show_times(scenario, client, out))
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


def _show_hops(scenario: Scenario, carried: Carried, out: TextIO) -> list[str]:
    """Print the CustomAttributes of one invocation at each hop; the problems they show."""
    rows = [
        ("the caller passed", CUSTOM_ATTRIBUTES),
        ("sent on the wire", carried.sent),
        ("the app received", carried.received),
    ]
    if scenario.linked:
        rows.append(("the answer carried", "(nothing: an async call is answered 202 at once)"))
    else:
        rows.append(("the container answered", carried.answered))
        rows.append(("the caller got back", carried.returned))
    print("  CustomAttributes, hop by hop:", file=out)
    for label, value in rows:
        print(f"    {label:<24}{'(none)' if value is None else value}", file=out)
    problems = []
    if carried.sent is None or "traceparent=" not in carried.sent:
        problems.append(f"{scenario.title}: no trace context was sent in CustomAttributes")
    if carried.received != CUSTOM_ATTRIBUTES:
        problems.append(
            f"{scenario.title}: the app received {carried.received!r}, "
            f"not the caller's {CUSTOM_ATTRIBUTES!r}"
        )
    return problems


def _show_times(scenario: Scenario, client: ReceivedSpan, out: TextIO) -> list[str]:
    """Print where the time of one invocation went, as its client span's attributes say (the
    figures Jaeger shows); the problems: a synchronous call's span without them."""
    from sm_tracing._attributes import (
        CHUNKS,
        CONTAINER_DURATION,
        OUTCOME,
        OVERHEAD,
        TIME_PER_CHUNK,
        TIME_TO_FIRST_CHUNK,
    )

    attributes = client.attributes
    if scenario is BIDIRECTIONAL:
        return _show_session(client, out)
    streamed = scenario.operation == "InvokeEndpointWithResponseStream"
    whole = "the call, to the stream's end" if streamed else "the call, in all"
    rows = [(whole, _ms(client.duration_ms / 1e3), "the client span's duration")]
    if scenario.linked:
        rows.append(("the container", "", "not on this span: the call is answered before it runs"))
    else:
        after = ", to its first byte" if streamed else ""
        rows.append(
            ("the container", _ms(attributes.get(CONTAINER_DURATION)), CONTAINER_DURATION + after)
        )
        rows.append(("SageMaker's share", _ms(attributes.get(OVERHEAD)), OVERHEAD))
    if streamed:
        outcome = attributes.get(OUTCOME)
        chunks = attributes.get(CHUNKS)
        rows += [
            ("time to first chunk", _ms(attributes.get(TIME_TO_FIRST_CHUNK)), TIME_TO_FIRST_CHUNK),
            (
                "chunks",
                "(none)" if chunks is None else str(chunks),
                f"{CHUNKS} (the stream's outcome: {outcome})",
            ),
            ("mean time per chunk", _ms(attributes.get(TIME_PER_CHUNK)), TIME_PER_CHUNK),
        ]
    _print_times(rows, out)
    wanted = [] if scenario.linked else [CONTAINER_DURATION, OVERHEAD]
    if streamed:
        wanted += [TIME_TO_FIRST_CHUNK, CHUNKS, TIME_PER_CHUNK]
    return [
        f"{scenario.title}: the client span has no {name}"
        for name in wanted
        if not isinstance(attributes.get(name), (int, float))
    ]


def _show_session(client: ReceivedSpan, out: TextIO) -> list[str]:
    """Print where the time of the bidirectional stream went, as its client span says; the
    problems: a figure missing."""
    from sm_tracing._attributes import CHUNKS, OUTCOME, REQUEST_CHUNKS
    from sm_tracing.client._streams import FIRST_CHUNK

    attributes = client.attributes
    sent, received = attributes.get(REQUEST_CHUNKS), attributes.get(CHUNKS)
    rows = [
        ("the session, to its end", _ms(client.duration_ms / 1e3), "the client span's duration"),
        ("the container", "", "not on this span: this API brings no echo of the container"),
        ("time to first chunk", _ms(client.event_offset(FIRST_CHUNK)), f"its {FIRST_CHUNK} event"),
        ("parts sent", "(none)" if sent is None else str(sent), REQUEST_CHUNKS),
        (
            "parts received",
            "(none)" if received is None else str(received),
            f"{CHUNKS} (the stream's outcome: {attributes.get(OUTCOME)})",
        ),
    ]
    _print_times(rows, out)
    problems = [
        f"bidirectional: the client span has no {name}"
        for name in (REQUEST_CHUNKS, CHUNKS)
        if not isinstance(attributes.get(name), int)
    ]
    if client.event_offset(FIRST_CHUNK) is None:
        problems.append(f"bidirectional: the client span has no {FIRST_CHUNK} event")
    return problems


def _print_times(rows: list[tuple[str, str, str]], out: TextIO) -> None:
    print("  Where the time went, as the client span says:", file=out)
    for label, value, source in rows:
        print(f"    {label:<30}{value:>10}  {source}", file=out)


def _ms(seconds: object) -> str:
    """*seconds* as milliseconds, or "(none)" when it is not a number."""
    if not isinstance(seconds, (int, float)):
        return "(none)"
    return f"{seconds * 1e3:.1f} ms"


class _Progress:
    """Says what the demo is doing through its quiet first seconds: a line per step and, on a
    terminal, a running clock while it waits."""

    def __init__(self, out: TextIO | None) -> None:
        self._out = out
        self._live = out is not None and out.isatty()
        self._clock = ""

    def say(self, text: str) -> None:
        if self._out is None:
            return
        if self._clock:
            self._out.write("\r\033[K")
            self._clock = ""
        print(text, file=self._out, flush=True)

    def waiting(self, text: str, seconds: float) -> None:
        clock = f"{text} {seconds:.1f} s"
        if self._out is not None and self._live and clock != self._clock:
            self._out.write(f"\r\033[K{clock}")
            self._out.flush()
            self._clock = clock


def wait_ready(containers: list[_Container], deadline: float, progress: _Progress) -> None:
    """Return once every container's ``/ping`` answers 200, saying when each is ready;
    DemoError if one exits, OutOfTime if time runs out."""
    started = time.monotonic()
    pending = list(containers)
    while pending:
        # A probe waits no longer than the time left, so --timeout holds even on the first one.
        wait = min(1.0, max(0.01, deadline - time.monotonic()))
        for container in [c for c in pending if c.ready(wait)]:
            pending.remove(container)
            elapsed = time.monotonic() - started
            progress.say(f"  {container.name} container ready after {elapsed:.1f} s")
        if not pending:
            return
        if time.monotonic() >= deadline:
            container = pending[0]
            raise OutOfTime(
                f"the {container.name} container did not start", f":\n{container.log_tail()}"
            )
        progress.waiting("  waiting for them to answer /ping:", time.monotonic() - started)
        time.sleep(0.05)


@dataclass
class _Container:
    """A gunicorn process serving the demo app on a socket the demo bound for it."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path
    name: str
    _terminated: bool = False

    @property
    def ws_url(self) -> str:
        """The base URL of the container's WebSockets."""
        return "ws" + self.url.removeprefix("http")

    def ready(self, timeout: float = 1.0) -> bool:
        """Whether ``/ping`` answers 200 now; DemoError if the process has exited."""
        if self.process.poll() is not None:
            raise DemoError(f"the {self.name} container exited:\n{self.log_tail()}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(self.url + "/ping", timeout=timeout) as response,
        ):
            return bool(response.status == 200)
        return False

    def wait_ready(self, deadline: float) -> None:
        """Return once ``/ping`` answers 200; DemoError if the process dies or time runs out."""
        wait_ready([self], deadline, _Progress(None))

    def received(self) -> dict[str, str | None]:
        """What the app logged it received: CustomAttributes by inference id."""
        from sm_tracing._demo.app import RECEIVED_EVENT

        found: dict[str, str | None] = {}
        for line in self._log_lines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if isinstance(record, dict) and record.get("event") == RECEIVED_EVENT:
                        found[str(record.get("inference_id"))] = record.get("custom_attributes")
        return found

    def terminate(self) -> None:
        """Ask gunicorn to stop, without waiting: its worker flushes its spans on the way out."""
        if self.process.poll() is None and not self._terminated:
            self._terminated = True
            self.process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """Stop gunicorn and wait for it."""
        self.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self) -> str:
        return "\n".join(self._log_lines()[-20:]) or "(no log)"

    def _log_lines(self) -> list[str]:
        try:
            return self.log.read_text(errors="replace").splitlines()
        except OSError:
            return []


@contextlib.contextmanager
def _container(
    receiver: OTLPReceiver,
    work: Path,
    name: str,
    *,
    remote_context: str = "continue",
) -> Iterator[_Container]:
    """A demo container, exporting to *receiver*, stopped on exit: the Flask app under
    gunicorn, or for ``bidi`` the WebSocket app under uvicorn. Readiness is awaited apart
    (``wait_ready``), so that the containers start at the same time."""
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
            # The demo shows traces: its containers keep their metrics to themselves.
            OTEL_METRICS_EXPORTER="none",
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
        if name == "bidi":
            command = [
                sys.executable,
                "-m",
                "uvicorn",
                "--fd",
                str(listener.fileno()),
                "--lifespan",
                "off",
                "--timeout-graceful-shutdown",
                "2",
                "--log-level",
                "warning",
                "--factory",
                "sm_tracing._demo.app:create_ws_app",
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
