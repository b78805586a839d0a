"""sm_tracing beside the other tracers of a process, one scenario per interpreter.

The tracers patch botocore process-wide and some cannot be taken off again, so each scenario
runs in a fresh interpreter: this file, run as a script, plays a list of steps (a tracer put on
or taken off, or a round of SageMaker calls) and prints, as JSON, what each step did: the
OpenTelemetry CLIENT spans of each call, the trace context sent on the wire, what the other
tracer recorded of the call, whether ``SageMakerInstrumentor`` says it instruments, and the
warnings logged under ``sm_tracing``. The tests import :func:`play` and assert on that.

Steps: ``+NAME`` puts a tracer on, ``-NAME`` takes it off through its own API, ``call`` makes a
round of calls. NAME is ``sm`` (sm_tracing), ``upstream`` (opentelemetry-instrumentation-
botocore, and its aiobotocore instrumentor where the installed version has one), ``ddtrace``,
``xray`` (aws-xray-sdk ``patch_all()``) or ``sentry`` (sentry-sdk's boto3 integration).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MARK = "NEIGHBOURS-RESULT "
ENDPOINT_NAME = "aws.sagemaker.endpoint.name"
OUR_SCOPE = "sm_tracing"
UPSTREAM_SCOPE = "opentelemetry.instrumentation."  # botocore's and aiobotocore's

# ddtrace and sentry-sdk reach nothing outside this process: no agent, telemetry, remote
# configuration or crash tracker, and an address on loopback where nothing listens.
QUIET = {
    "DD_TRACE_AGENT_URL": "http://127.0.0.1:9",
    "DD_DOGSTATSD_URL": "udp://127.0.0.1:9",
    "DD_INSTRUMENTATION_TELEMETRY_ENABLED": "false",
    "DD_REMOTE_CONFIGURATION_ENABLED": "false",
    "DD_CRASHTRACKING_ENABLED": "false",
    "DD_TRACE_STARTUP_LOGS": "false",
    "DD_DATA_STREAMS_ENABLED": "false",
    "AWS_XRAY_DAEMON_ADDRESS": "127.0.0.1:9",
}


def play(
    steps: Sequence[str], *, aio: bool = False, env: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Play *steps* in a fresh interpreter (aiobotocore calls too when *aio*); what each step
    did, in order."""
    scenario = json.dumps({"steps": list(steps), "aio": aio})
    return _run([str(Path(__file__)), scenario], env)


def play_under_ddtrace_otel() -> dict[str, Any]:
    """A traced call under ddtrace's own OpenTelemetry provider (``DD_TRACE_OTEL_ENABLED``,
    then ``import ddtrace.auto``), in a fresh interpreter; what it sent and recorded."""
    (result,) = _run([str(Path(__file__)), "ddtrace-otel"], {"DD_TRACE_OTEL_ENABLED": "true"})
    return result


def _run(arguments: list[str], env: dict[str, str] | None) -> list[dict[str, Any]]:
    child_env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OTEL_", "DD_", "SENTRY_"))
    }
    child_env.update(QUIET)
    child_env.update(env or {})
    done = subprocess.run(
        [sys.executable, *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=child_env,
        cwd=HERE,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    for line in done.stdout.splitlines():
        if line.startswith(MARK):
            result: list[dict[str, Any]] = json.loads(line[len(MARK) :])
            return result
    raise AssertionError(f"no result from the scenario:\n{done.stdout}\n{done.stderr[-4000:]}")


# -- in the child -----------------------------------------------------------------------------


class _Warnings(logging.Handler):
    """Keeps the messages of the warnings logged under ``sm_tracing``."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.name}: {record.getMessage()}")


class _Tracer:
    """Another tracer of the process: how it goes on and off, and what it recorded of a call
    (``around`` wraps each call and returns a function that counts its records of it)."""

    name = ""

    def install(self) -> None:
        raise NotImplementedError

    def remove(self) -> None:
        raise NotImplementedError(f"{self.name} cannot be taken off")

    @contextmanager
    def around(self) -> Iterator[Callable[[list[dict[str, Any]]], int]]:
        yield lambda spans: 0


class _Upstream(_Tracer):
    name = "upstream"

    def __init__(self, provider: Any) -> None:
        import opentelemetry.instrumentation.botocore

        upstream: Any = opentelemetry.instrumentation.botocore
        self.instrumentors = [upstream.BotocoreInstrumentor()]
        aio = getattr(upstream, "AiobotocoreInstrumentor", None)
        if aio is not None:
            self.instrumentors.append(aio())
        self.provider = provider

    def install(self) -> None:
        for instrumentor in self.instrumentors:
            instrumentor.instrument(tracer_provider=self.provider)

    def remove(self) -> None:
        for instrumentor in self.instrumentors:
            instrumentor.uninstrument()

    @contextmanager
    def around(self) -> Iterator[Callable[[list[dict[str, Any]]], int]]:
        yield lambda spans: sum(span["scope"].startswith(UPSTREAM_SCOPE) for span in spans)


class _Saver(_Tracer):
    """A plain monkeypatch that saves botocore's method and puts it back when removed, as
    ``unittest.mock.patch.object`` and hand-written wrappers do: its removal takes off whatever
    was put on top of its wrapper since."""

    name = "saver"

    def __init__(self) -> None:
        self.calls = 0
        self.saved: Any = None

    def install(self) -> None:
        import botocore.client

        saved = self.saved = botocore.client.BaseClient.__dict__["_make_api_call"]

        def _make_api_call(client: Any, operation_name: str, api_params: Any) -> Any:
            self.calls += 1
            return saved(client, operation_name, api_params)

        botocore.client.BaseClient._make_api_call = _make_api_call  # type: ignore[method-assign]

    def remove(self) -> None:
        import botocore.client

        botocore.client.BaseClient._make_api_call = self.saved  # type: ignore[method-assign]

    @contextmanager
    def around(self) -> Iterator[Callable[[list[dict[str, Any]]], int]]:
        before = self.calls
        yield lambda spans: self.calls - before


class _Ddtrace(_Tracer):
    name = "ddtrace"

    def __init__(self) -> None:
        from ddtrace.trace import TraceFilter, tracer

        self.spans: list[Any] = []
        kept = self.spans

        class Keep(TraceFilter):
            """Keeps ddtrace's finished spans here and sends none."""

            def process_trace(self, trace: list[Any]) -> None:
                kept.extend(trace)

        tracer.configure(trace_processors=[Keep()])

    def install(self) -> None:
        import ddtrace

        ddtrace.patch(botocore=True)

    def remove(self) -> None:
        # ddtrace has no top-level unpatch: this is its botocore integration's own.
        from ddtrace.contrib.internal.botocore import patch

        unpatch: Callable[[], None] = patch.unpatch
        unpatch()

    @contextmanager
    def around(self) -> Iterator[Callable[[list[dict[str, Any]]], int]]:
        del self.spans[:]
        yield lambda spans: sum("sagemaker" in str(span.name) for span in self.spans)


class _Emitter:
    """An X-Ray emitter that sends nothing."""

    ip = "127.0.0.1"
    port = 9

    def send_entity(self, entity: Any) -> None:
        pass

    def set_daemon_address(self, address: str) -> None:
        pass


class _XRay(_Tracer):
    name = "xray"

    def __init__(self) -> None:
        from aws_xray_sdk.core import xray_recorder  # type: ignore[import-untyped]

        # No segment open outside a call must never raise.
        xray_recorder.configure(
            emitter=_Emitter(), context_missing="IGNORE_ERROR", sampling=False, service="app"
        )
        self.recorder = xray_recorder

    def install(self) -> None:
        from aws_xray_sdk.core import patch_all

        patch_all()

    @contextmanager
    def around(self) -> Iterator[Callable[[list[dict[str, Any]]], int]]:
        segment = self.recorder.begin_segment("app")
        try:
            yield lambda spans: sum(
                sub.name == "runtime.sagemaker" and sub.namespace == "aws"
                for sub in segment.subsegments
            )
        finally:
            self.recorder.end_segment()


class _Sentry(_Tracer):
    name = "sentry"

    def __init__(self) -> None:
        self.transactions: list[dict[str, Any]] = []

    def install(self) -> None:
        import sentry_sdk
        from sentry_sdk.integrations.boto3 import Boto3Integration
        from sentry_sdk.transport import Transport

        kept = self.transactions

        class Keep(Transport):
            """Keeps the transactions here and sends nothing."""

            def capture_envelope(self, envelope: Any) -> None:
                for item in envelope.items:
                    if item.type == "transaction":
                        kept.append(item.payload.json)

        sentry_sdk.init(
            dsn="http://public@127.0.0.1:9/1",
            transport=Keep,
            integrations=[Boto3Integration()],
            default_integrations=False,
            traces_sample_rate=1.0,
        )

    @contextmanager
    def around(self) -> Iterator[Callable[[list[dict[str, Any]]], int]]:
        import sentry_sdk

        del self.transactions[:]
        with sentry_sdk.start_transaction(name="call"):
            yield self._count

    def _count(self, spans: list[dict[str, Any]]) -> int:
        # Counted once the transaction has ended and gone to the transport; the span of the
        # call itself, not the one of reading its body ("http.client.stream").
        return sum(
            span.get("op") == "http.client" and "sagemaker-runtime" in str(span.get("description"))
            for transaction in self.transactions
            for span in transaction.get("spans", [])
        )


class _Child:
    """The scenario's process: an in-memory exporter, the tracers, a client seen by every
    round of calls and a wire that answers them."""

    def __init__(self, aio: bool) -> None:
        sys.path.insert(0, str(HERE))
        from _client_support import Wire, make_client
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.warnings = _Warnings()
        logging.getLogger("sm_tracing").addHandler(self.warnings)
        self.aio = aio
        self.tracers: dict[str, _Tracer] = {}
        self.wire = Wire()
        self.make_client = make_client
        self.seen = make_client(wire=self.wire)
        self.servers = ExitStack()
        self.server: Any = None

    def tracer(self, name: str) -> _Tracer:
        if name not in self.tracers:
            kinds: dict[str, Callable[[], _Tracer]] = {
                "upstream": lambda: _Upstream(self.provider),
                "ddtrace": _Ddtrace,
                "xray": _XRay,
                "sentry": _Sentry,
                "saver": _Saver,
            }
            self.tracers[name] = kinds[name]()
        return self.tracers[name]

    def step(self, step: str) -> dict[str, Any]:
        import sm_tracing

        del self.warnings.messages[:]
        record: dict[str, Any] = {"step": step, "instrumented": _instrumented()}
        if step == "call":
            record["calls"] = self.round()
        elif step == "+sm":
            sm_tracing.instrument(tracer_provider=self.provider)
        elif step == "-sm":
            sm_tracing.uninstrument()
        elif step[0] == "+":
            self.tracer(step[1:]).install()
        elif step[0] == "-":
            self.tracer(step[1:]).remove()
        else:
            raise ValueError(step)
        record["instrumented_after"] = _instrumented()
        record["warnings"] = list(self.warnings.messages)
        return record

    def round(self) -> list[dict[str, Any]]:
        """One call of each kind: the three operations on the client every round uses, an
        InvokeEndpoint on a new client, and on a new aiobotocore client when asked."""
        from _client_support import call_params

        calls = []
        fresh = self.make_client(wire=self.wire)
        for client, method in [
            (self.seen, "invoke_endpoint"),
            (self.seen, "invoke_endpoint_with_response_stream"),
            (self.seen, "invoke_endpoint_async"),
            (fresh, "invoke_endpoint"),
        ]:

            def sync_call(client: Any = client, method: str = method) -> str | None:
                response = getattr(client, method)(**call_params(method))
                if method == "invoke_endpoint_with_response_stream":
                    list(response["Body"])
                elif method == "invoke_endpoint":
                    response["Body"].read()
                return self.wire.custom_attributes()

            client_kind = "seen" if client is self.seen else "new"
            calls.append(self.traced(f"{client_kind} {method}", sync_call))
        if self.aio:
            calls.append(self.traced("aio invoke_endpoint", self.aio_call))
        return calls

    def aio_call(self) -> str | None:
        """InvokeEndpoint on a new aiobotocore client, answered on loopback (a server kept for
        the whole scenario: stopping one takes half a second); the CustomAttributes it sent."""
        from _client_support import aio_client, call_params, loopback, sent_custom_attributes

        if self.server is None:
            self.server = self.servers.enter_context(loopback())
        server = self.server

        async def call() -> None:
            async with aio_client(server) as client:
                response = await client.invoke_endpoint(**call_params("invoke_endpoint"))
                await response["Body"].read()

        asyncio.run(call())
        return sent_custom_attributes(server)

    def traced(self, what: str, call: Callable[[], str | None]) -> dict[str, Any]:
        """Make *call*, which returns the CustomAttributes it sent; what came of it."""
        from _client_support import TRACEPARENT_RE
        from opentelemetry.trace import SpanKind

        self.exporter.clear()
        counters = {}
        with _all(tracer.around() for tracer in self.tracers.values()) as counts:
            sent = call()
        spans = [
            {
                "scope": getattr(span.instrumentation_scope, "name", ""),
                "name": span.name,
                "trace_id": f"{span.context.trace_id:032x}",
                "span_id": f"{span.context.span_id:016x}",
                "endpoint": (span.attributes or {}).get(ENDPOINT_NAME),
            }
            for span in self.exporter.get_finished_spans()
            if span.kind is SpanKind.CLIENT
        ]
        for tracer, count in zip(self.tracers, counts, strict=True):
            counters[tracer] = count(spans)
        match = TRACEPARENT_RE.search(sent or "")
        return {
            "call": what,
            "spans": spans,
            "custom_attributes": sent,
            "sent": None if match is None else [match.group(1), match.group(2)],
            "recorded_by": counters,
        }


@contextmanager
def _all(managers: Iterator[Any]) -> Iterator[list[Any]]:
    with ExitStack() as stack:
        entered = [stack.enter_context(manager) for manager in managers]
        yield entered


def _instrumented() -> bool:
    import sm_tracing

    return bool(sm_tracing.SageMakerInstrumentor().is_instrumented_by_opentelemetry)


def _ddtrace_otel() -> dict[str, Any]:
    """Under ddtrace's OpenTelemetry provider: a call made in a span of the application's."""
    import ddtrace.auto  # noqa: F401 - sets ddtrace's provider as OpenTelemetry's
    from ddtrace.trace import TraceFilter, tracer
    from opentelemetry import trace

    sys.path.insert(0, str(HERE))
    from _client_support import Wire, call_params, make_client, traceparent_of

    import sm_tracing

    kept: list[Any] = []

    class Keep(TraceFilter):
        def process_trace(self, trace: list[Any]) -> None:
            kept.extend(trace)

    tracer.configure(trace_processors=[Keep()])
    warnings = _Warnings()
    logging.getLogger("sm_tracing").addHandler(warnings)
    sm_tracing.instrument()
    wire = Wire()
    client = make_client(wire=wire)
    with trace.get_tracer("app").start_as_current_span("caller") as caller:
        client.invoke_endpoint(**call_params("invoke_endpoint"))["Body"].read()
        caller_trace = f"{caller.get_span_context().trace_id:032x}"
    sent = wire.custom_attributes()
    trace_id, span_id = traceparent_of(sent)
    sm_tracing.uninstrument()
    return {
        "provider": type(trace.get_tracer_provider()).__module__,
        "caller_trace_id": caller_trace,
        "sent": [trace_id, span_id],
        "ddtrace_spans": [
            {
                "name": span.name,
                "trace_id": f"{span.trace_id:032x}",
                "span_id": f"{span.span_id:016x}",
            }
            for span in kept
        ],
        "warnings": warnings.messages,
    }


def main(argument: str) -> None:
    if argument == "ddtrace-otel":
        results = [_ddtrace_otel()]
    else:
        scenario = json.loads(argument)
        child = _Child(scenario["aio"])
        with child.servers:
            results = [child.step(step) for step in scenario["steps"]]
    print(MARK + json.dumps(results), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
