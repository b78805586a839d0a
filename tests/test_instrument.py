"""instrument() and uninstrument(): every client covered, idempotent, fully reversible."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from typing import Any

import boto3
import botocore.client
import botocore.session
import pytest
from _client_support import CREDENTIALS, REGION, Wire, call_params, make_client
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
    sm_tracing.instrument(tracer_provider=tracer_provider)
    try:
        if client is None:
            client = MAKERS[maker](wire)
        client.invoke_endpoint(**call_params("invoke_endpoint"))
    finally:
        sm_tracing.uninstrument()
    assert _injected(wire)
    assert len(exporter.get_finished_spans()) == 1


def test_instrument_twice_is_harmless(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A second instrument() adds no second wrapper: one span and one traceparent per call."""
    wire = Wire()
    client = make_client(wire=wire)
    sm_tracing.instrument(tracer_provider=tracer_provider)
    try:
        sm_tracing.instrument(tracer_provider=tracer_provider, endpoints={"none"})
        client.invoke_endpoint(**call_params("invoke_endpoint"))
    finally:
        sm_tracing.uninstrument()
    assert len(exporter.get_finished_spans()) == 1
    value = wire.custom_attributes()
    assert value is not None and value.count("traceparent=") == 1


def test_uninstrument_stops_everything_on_used_clients(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """After uninstrument(), a client that was already traced neither injects nor makes spans,
    and _make_api_call is botocore's own again."""
    original = botocore.client.BaseClient.__dict__["_make_api_call"]
    wire = Wire()
    client = make_client(wire=wire)
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
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """instrument(), uninstrument(), instrument() again traces once per call."""
    wire = Wire()
    client = make_client(wire=wire)
    for _ in range(2):
        sm_tracing.instrument(tracer_provider=tracer_provider)
        sm_tracing.uninstrument()
    sm_tracing.instrument(tracer_provider=tracer_provider)
    try:
        client.invoke_endpoint(**call_params("invoke_endpoint"))
    finally:
        sm_tracing.uninstrument()
    assert len(exporter.get_finished_spans()) == 1


def test_instrumentor_class_takes_the_same_options(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """SageMakerInstrumentor().instrument() accepts tracer_provider and the options."""
    wire = Wire()
    client = make_client(wire=wire)
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
    (point,) = [p for p in points if p.name == "sagemaker"]
    assert point.load() is SageMakerInstrumentor
    assert SageMakerInstrumentor().instrumentation_dependencies() == ("botocore >= 1.34",)


def test_aiobotocore_is_patched_when_imported_not_before() -> None:
    """instrument() does not import aiobotocore (and aiohttp), yet patches it once the
    application imports it; a later uninstrument() takes the patch off again."""
    code = (
        "import sys, sm_tracing\n"
        "sm_tracing.instrument()\n"
        "print('aiobotocore.client' in sys.modules)\n"
        "import aiobotocore.client as c\n"
        "method = c.AioBaseClient.__dict__['_make_api_call']\n"
        "print(method._self_wrapper.__func__.__qualname__)\n"
        "sm_tracing.uninstrument()\n"
        "print(hasattr(c.AioBaseClient.__dict__['_make_api_call'], '_self_wrapper'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "ClientHook.wrap_aio", "False"]


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
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
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
