"""instrument() and uninstrument(): every client covered, idempotent, fully reversible."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import botocore.client
import botocore.session
import pytest
from _client_support import (
    CREDENTIALS,
    REGION,
    Wire,
    call_params,
    instrumenting,
    make_client,
    run_python,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import sm_tracing
from sm_tracing import SageMakerInstrumentor


def _boto3_default(wire: Wire) -> Any:
    return wire.attach(boto3.client("sagemaker-runtime", region_name=REGION, **CREDENTIALS))


def _boto3_session(wire: Wire) -> Any:
    session = boto3.Session(region_name=REGION, **CREDENTIALS)
    return wire.attach(session.client("sagemaker-runtime"))


def _botocore_session(wire: Wire) -> Any:
    return make_client(botocore.session.Session(), wire)


MAKERS = {
    "boto3-default": _boto3_default,
    "boto3-session": _boto3_session,
    "botocore-session": _botocore_session,
}


def _injected(wire: Wire) -> bool:
    value = wire.custom_attributes()
    return value is not None and "traceparent=" in value


@pytest.mark.parametrize("made", ["before", "after"])
@pytest.mark.parametrize("maker", sorted(MAKERS))
def test_every_client_is_covered(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter, maker: str, made: str
) -> None:
    """Clients from any session, made before or after instrument(), are traced and inject."""
    wire = Wire()
    client = MAKERS[maker](wire) if made == "before" else None
    with instrumenting(tracer_provider=tracer_provider):
        if client is None:
            client = MAKERS[maker](wire)
        client.invoke_endpoint(**call_params("invoke_endpoint"))
    assert _injected(wire)
    assert len(exporter.get_finished_spans()) == 1


def test_instrument_twice_is_harmless(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter, client: Any, wire: Wire
) -> None:
    """A second instrument() adds no second wrapper: one span and one traceparent per call."""
    with instrumenting(tracer_provider=tracer_provider):
        sm_tracing.instrument(tracer_provider=tracer_provider, endpoints={"none"})
        client.invoke_endpoint(**call_params("invoke_endpoint"))
    assert len(exporter.get_finished_spans()) == 1
    value = wire.custom_attributes()
    assert value is not None and value.count("traceparent=") == 1


def test_uninstrument_stops_everything_on_used_clients(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter, client: Any, wire: Wire
) -> None:
    """After uninstrument(), a client that was already traced neither injects nor makes spans,
    and _make_api_call is botocore's own again."""
    original = botocore.client.BaseClient.__dict__["_make_api_call"]
    sm_tracing.instrument(tracer_provider=tracer_provider)
    client.invoke_endpoint(**call_params("invoke_endpoint"))
    assert _injected(wire)
    sm_tracing.uninstrument()
    client.invoke_endpoint(**call_params("invoke_endpoint"))
    assert wire.custom_attributes() is None
    assert len(exporter.get_finished_spans()) == 1
    assert botocore.client.BaseClient.__dict__["_make_api_call"] is original


def test_uninstrument_without_instrument_is_harmless() -> None:
    """uninstrument() when not instrumented does nothing and raises nothing."""
    sm_tracing.uninstrument()
    sm_tracing.uninstrument()
    assert not SageMakerInstrumentor().is_instrumented_by_opentelemetry


def test_reinstrument_after_uninstrument(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter, client: Any, wire: Wire
) -> None:
    """instrument(), uninstrument(), instrument() again traces once per call."""
    for _ in range(2):
        sm_tracing.instrument(tracer_provider=tracer_provider)
        sm_tracing.uninstrument()
    with instrumenting(tracer_provider=tracer_provider):
        client.invoke_endpoint(**call_params("invoke_endpoint"))
    assert len(exporter.get_finished_spans()) == 1


def test_instrumentor_class_takes_the_same_options(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter, client: Any, wire: Wire
) -> None:
    """SageMakerInstrumentor().instrument() accepts tracer_provider and the options."""
    instrumentor = SageMakerInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, endpoints=["other"])
    try:
        client.invoke_endpoint(**call_params("invoke_endpoint", CustomAttributes="a=1"))
    finally:
        instrumentor.uninstrument()
    assert wire.custom_attributes() == "a=1"
    assert len(exporter.get_finished_spans()) == 1


def test_endpoints_as_a_single_string_is_rejected() -> None:
    """A bare string for endpoints is a mistake (it would be a set of letters): TypeError."""
    with pytest.raises(TypeError):
        sm_tracing.instrument(endpoints="my-endpoint")
    assert not SageMakerInstrumentor().is_instrumented_by_opentelemetry


def test_entry_point_loads_the_instrumentor() -> None:
    """opentelemetry-instrument finds SageMakerInstrumentor under its entry point group."""
    points = importlib.metadata.entry_points(group="opentelemetry_instrumentor")
    (point,) = [p for p in points if p.name == "sm_tracing"]
    assert point.load() is SageMakerInstrumentor
    assert SageMakerInstrumentor().instrumentation_dependencies() == ("botocore >= 1.34",)


def test_aiobotocore_is_patched_when_imported_not_before() -> None:
    """instrument() does not import aiobotocore (and aiohttp), yet patches it once the
    application imports it; a later uninstrument() takes the patch off again."""
    code = (
        "import inspect, sys, sm_tracing\n"
        "sm_tracing.instrument()\n"
        "print('aiobotocore.client' in sys.modules)\n"
        "import aiobotocore.client as c\n"
        "method = c.AioBaseClient.__dict__['_make_api_call']\n"
        "original = method.__wrapped__\n"
        "same = inspect.signature(method) == inspect.signature(original)\n"
        "print(method is not original and same)\n"
        "sm_tracing.uninstrument()\n"
        "print(c.AioBaseClient.__dict__['_make_api_call'] is original)\n"
    )
    done = run_python(code)
    assert done.stdout.split() == ["False", "True", "True"]


def test_zero_code_instrumentation(tmp_path: Any) -> None:
    """``opentelemetry-instrument python app.py`` traces an unmodified app: its call carries
    a traceparent in CustomAttributes."""
    import os
    import shutil
    from pathlib import Path

    command = shutil.which("opentelemetry-instrument", path=str(Path(sys.executable).parent))
    if command is None:
        pytest.skip("opentelemetry-instrument is not installed")
    app = tmp_path / "app.py"
    app.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parents[1])!r})\n"
        "from opentelemetry import trace\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "trace.set_tracer_provider(TracerProvider())\n"
        "from _client_support import Wire, call_params, make_client\n"
        "wire = Wire()\n"
        "client = make_client(wire=wire)\n"
        "client.invoke_endpoint(**call_params('invoke_endpoint', CustomAttributes='a=1'))\n"
        "print(wire.custom_attributes())\n"
    )
    env = dict(os.environ)
    env.update(OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none")
    done = subprocess.run(
        [command, sys.executable, str(app)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("a=1;traceparent=00-"), done.stdout


@pytest.mark.parametrize(
    "endpoints", [42, b"my-endpoint", [1, 2], {"my-endpoint": object()}.values()]
)
def test_endpoints_of_another_kind_is_a_clear_type_error(endpoints: Any) -> None:
    """A number, bytes or names that are not str are refused with a TypeError naming the
    option, before anything is instrumented."""
    with pytest.raises(TypeError, match="endpoints"):
        sm_tracing.instrument(endpoints=endpoints)
    assert not SageMakerInstrumentor().is_instrumented_by_opentelemetry


def _all_at_once(action: Any, threads: int = 8) -> None:
    """Run *action* on *threads* threads released together by a barrier."""
    import threading

    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def run() -> None:
        barrier.wait()
        try:
            action()
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert errors == []


def test_instrument_and_uninstrument_from_many_threads_at_once(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter, client: Any, wire: Wire
) -> None:
    """Eight threads instrumenting at once wrap once: one span and one traceparent per call;
    eight threads uninstrumenting at once leave botocore's own method and no handler."""
    original = botocore.client.BaseClient.__dict__["_make_api_call"]
    for _ in range(3):
        exporter.clear()
        _all_at_once(lambda: sm_tracing.instrument(tracer_provider=tracer_provider))
        try:
            client.invoke_endpoint(**call_params("invoke_endpoint"))
        finally:
            _all_at_once(sm_tracing.uninstrument)
        assert len(exporter.get_finished_spans()) == 1
        value = wire.custom_attributes()
        assert value is not None and value.count("traceparent=") == 1
        assert botocore.client.BaseClient.__dict__["_make_api_call"] is original
        client.invoke_endpoint(**call_params("invoke_endpoint"))
        assert wire.custom_attributes() is None
        assert len(exporter.get_finished_spans()) == 1


def test_the_client_side_never_imports_the_container_side() -> None:
    """instrument() and a traced call load the client modules only."""
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parents[1])!r})\n"
        "import sm_tracing\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from _client_support import Wire, call_params, make_client\n"
        "sm_tracing.instrument(tracer_provider=TracerProvider())\n"
        "make_client(wire=Wire()).invoke_endpoint(**call_params('invoke_endpoint'))\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('sm_tracing.'))))\n"
    )
    done = run_python(code)
    loaded = set(done.stdout.split())
    assert "sm_tracing.client._lifecycle" in loaded
    assert not {name for name in loaded if name.startswith("sm_tracing.container")}


_NO_PROVIDER_APP = """
import logging, sys
sys.path.insert(0, {tests!r})
logging.basicConfig(format="%(levelname)s %(name)s %(message)s")
import sm_tracing
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from _client_support import Wire, call_params, make_client
case = {case!r}
if case == "given":
    sm_tracing.instrument(tracer_provider=trace.NoOpTracerProvider())
else:
    sm_tracing.instrument()
if case == "set-later":
    trace.set_tracer_provider(TracerProvider())
wire = Wire()
client = make_client(wire=wire)
for _ in range(3):
    client.invoke_endpoint(**call_params("invoke_endpoint", CustomAttributes="a=1"))
print(wire.custom_attributes())
"""


@pytest.mark.parametrize(
    ("case", "warned", "sent"),
    [
        ("none", True, "a=1"),
        ("set-later", False, "a=1;traceparent=00-"),
        ("given", False, "a=1"),
    ],
)
def test_a_process_that_can_never_trace_says_so_once(case: str, warned: bool, sent: str) -> None:
    """With no SDK TracerProvider at the first call, one WARNING names the fix; none when a
    provider is set before the call, or one was given to instrument()."""

    code = _NO_PROVIDER_APP.format(tests=str(Path(__file__).parents[1]), case=case)
    done = run_python(code)
    assert done.stdout.strip().startswith(sent)
    warnings = [line for line in done.stderr.splitlines() if line.startswith("WARNING sm_tracing")]
    if warned:
        (warning,) = warnings
        assert "sm_tracing.configure()" in warning and "TracerProvider" in warning
    else:
        assert warnings == [], done.stderr


_OTHER_RUNTIME_CONTEXT_APP = """
import contextvars, sys
sys.path.insert(0, {tests!r})
from opentelemetry import context, trace
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext


class Runtime(ContextVarsRuntimeContext):
    # A runtime context of the application's own, as OTEL_PYTHON_CONTEXT would load: built on
    # the default one, yet keeping the context elsewhere.
    def __init__(self):
        super().__init__()
        self.variable = contextvars.ContextVar("mine", default=context.Context())

    def attach(self, value):
        return self.variable.set(value)

    def get_current(self):
        return self.variable.get()

    def detach(self, token):
        self.variable.reset(token)


context._RUNTIME_CONTEXT = Runtime()
import sm_tracing
from opentelemetry.sdk.trace import TracerProvider
from _client_support import Wire, call_params, make_client, traceparent_of

provider = TracerProvider()
sm_tracing.instrument(tracer_provider=provider)
wire = Wire()
client = make_client(wire=wire)
with provider.get_tracer("app").start_as_current_span("caller") as caller:
    client.invoke_endpoint(**call_params("invoke_endpoint"))
    after = trace.get_current_span()
caller_trace = format(caller.get_span_context().trace_id, "032x")
print(traceparent_of(wire.custom_attributes())[0] == caller_trace)
print(after is caller)
"""


def test_another_runtime_context_is_used_through_the_api() -> None:
    """Under a runtime context other than OpenTelemetry's default, the current context is
    read and set through the API: a call joins the caller's trace, and the caller's span is
    current again after it."""
    done = run_python(_OTHER_RUNTIME_CONTEXT_APP.format(tests=str(Path(__file__).parents[1])))
    assert done.stdout.split() == ["True", "True"], done.stderr
