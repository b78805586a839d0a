"""``instrument()`` and ``uninstrument()`` as a process lives with them: across ``os.fork()``,
over many cycles, under callers that name botocore's parameters, and when asked twice."""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import botocore.client
import pytest
from _client_support import (
    Wire,
    aio_client,
    call_params,
    instrumenting,
    loopback,
    make_client,
    sent_custom_attributes,
    traceparent_of,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import sm_tracing

TESTS = Path(__file__).resolve().parent.parent
PARAMETERS = ["self", "operation_name", "api_params"]
UUID = "7f9c2f2e-3b1a-4c7e-9d55-0a1b2c3d4e5f"


def _run(script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """*script* in a fresh interpreter that finds the tests' support modules; a hang fails
    the test at *timeout* seconds instead of hanging the run."""
    code = f"import sys\nsys.path.insert(0, {str(TESTS)!r})\n" + textwrap.dedent(script)
    try:
        return subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"the script did not finish in {timeout} s: {expired.stderr!r}")


def _recording() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


# -- os.fork() ----------------------------------------------------------------------------

_FORK = """
import os
import threading
import time

from _client_support import Wire, call_params, make_client
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import sm_tracing

FORKS = 30
CHILD_SECONDS = 10.0

client = make_client(wire=Wire())
churning = TracerProvider(shutdown_on_exit=False)
stop = threading.Event()
cycles = 0


def churn():
    global cycles
    while not stop.is_set() and cycles < 1_000_000:
        sm_tracing.instrument(tracer_provider=churning)
        sm_tracing.uninstrument()
        cycles += 1


def child():
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    sm_tracing.uninstrument()
    sm_tracing.instrument(tracer_provider=provider)
    client.invoke_endpoint(**call_params("invoke_endpoint"))
    sm_tracing.uninstrument()
    client.invoke_endpoint(**call_params("invoke_endpoint"))
    return len(exporter.get_finished_spans()) == 1


thread = threading.Thread(target=churn, daemon=True)
thread.start()
while cycles < 10:
    time.sleep(0.001)
for fork in range(FORKS):
    pid = os.fork()
    if pid == 0:
        try:
            ok = child()
        except BaseException:
            ok = False
        os._exit(0 if ok else 1)
    deadline = time.monotonic() + CHILD_SECONDS
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            print(f"child {fork} did not finish in {CHILD_SECONDS} s")
            sys.exit(3)
        time.sleep(0.005)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        print(f"child {fork} exited {code}")
        sys.exit(4)
    time.sleep(0.002)
stop.set()
thread.join(30)
print(f"forks={FORKS} cycles={cycles}")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
def test_a_child_forked_mid_instrument_can_instrument_and_exit() -> None:
    """A process forked while another thread is inside instrument()/uninstrument() can
    uninstrument, instrument, trace a call and exit: no lock is left held in the child."""
    done = _run(_FORK)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("forks=30 "), done.stdout


# -- many cycles --------------------------------------------------------------------------

_CYCLES = """
import asyncio
import gc
import json
import weakref

from _client_support import (
    CREDENTIALS, HEADER, REGION, Wire, call_params, endpoint_url, loopback, make_client,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import sm_tracing

client = make_client(wire=Wire())
refs = []
for _ in range(100):
    provider = TracerProvider(shutdown_on_exit=False)
    refs.append(weakref.ref(provider))
    sm_tracing.instrument(tracer_provider=provider)
    client.invoke_endpoint(**call_params("invoke_endpoint"))
    sm_tracing.uninstrument()
    del provider
gc.collect()
alive = sum(ref() is not None for ref in refs)
imported_early = "aiobotocore.client" in sys.modules

exporter = InMemorySpanExporter()
final = TracerProvider(shutdown_on_exit=False)
final.add_span_processor(SimpleSpanProcessor(exporter))
sm_tracing.instrument(tracer_provider=final)
import aiobotocore.session


async def aio_call(server):
    session = aiobotocore.session.get_session()
    async with session.create_client(
        "sagemaker-runtime", region_name=REGION, endpoint_url=endpoint_url(server), **CREDENTIALS
    ) as aio_client:
        response = await aio_client.invoke_endpoint(**call_params("invoke_endpoint"))
        await response["Body"].read()


with loopback() as server:
    asyncio.run(aio_call(server))
    sent = {k.lower(): v for k, v in server.received[-1].headers.items()}.get(HEADER.lower())
aio_spans = [span.name for span in exporter.get_finished_spans()]
wire = Wire()
make_client(wire=wire).invoke_endpoint(**call_params("invoke_endpoint"))
spans = exporter.get_finished_spans()
sm_tracing.uninstrument()
print(json.dumps({
    "alive": alive,
    "imported_early": imported_early,
    "aio_spans": aio_spans,
    "aio_sent": sent,
    "aio_span_id": f"{spans[0].context.span_id:016x}" if spans else None,
    "spans": [span.name for span in spans],
    "sent": wire.custom_attributes(),
    "span_id": f"{spans[-1].context.span_id:016x}" if spans else None,
}))
"""


@pytest.fixture(scope="module")
def cycled() -> dict[str, Any]:
    """What a fresh process saw after 100 instrument()/uninstrument() cycles, each with its
    own TracerProvider and a call, then one more instrument() and aiobotocore imported."""
    done = _run(_CYCLES)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["imported_early"] is False  # the import hooks were still pending
    return result


def test_providers_are_collectable_after_uninstrument(cycled: dict[str, Any]) -> None:
    """After uninstrument(), nothing of sm_tracing keeps the TracerProvider that
    instrument() was given: 100 cycles leave none of their providers alive."""
    assert cycled["alive"] == 0


def test_aiobotocore_imported_after_many_cycles_is_traced_once(cycled: dict[str, Any]) -> None:
    """aiobotocore imported after 100 cycles and a final instrument() gets one span per call,
    whose context is the one sent; and so does botocore."""
    assert cycled["aio_spans"] == ["SageMaker Runtime.InvokeEndpoint"]
    assert traceparent_of(cycled["aio_sent"])[1] == cycled["aio_span_id"]
    assert cycled["spans"] == ["SageMaker Runtime.InvokeEndpoint"] * 2
    assert traceparent_of(cycled["sent"])[1] == cycled["span_id"]


# -- the patched method's signature --------------------------------------------------------


def test_the_patched_method_keeps_botocores_signature(tracer_provider: TracerProvider) -> None:
    """While instrumented, BaseClient._make_api_call still names its parameters self,
    operation_name and api_params, as botocore's own does."""
    before = list(inspect.signature(botocore.client.BaseClient._make_api_call).parameters)
    sm_tracing.instrument(tracer_provider=tracer_provider)
    try:
        during = list(inspect.signature(botocore.client.BaseClient._make_api_call).parameters)
    finally:
        sm_tracing.uninstrument()
    assert before == PARAMETERS
    assert during == PARAMETERS


@pytest.mark.usefixtures("instrumented")
def test_the_patched_method_takes_every_parameter_by_name(
    client: Any, wire: Wire, exporter: InMemorySpanExporter
) -> None:
    """A caller that passes self, operation_name and api_params by name gets the traced call,
    and the api_params it passed are left as they were."""
    params = call_params("invoke_endpoint", CustomAttributes="accept_eula=true")
    kept = copy.deepcopy(params)
    response = botocore.client.BaseClient._make_api_call(
        self=client, operation_name="InvokeEndpoint", api_params=params
    )
    assert response["Body"].read() == b'{"outputs": "hello"}'
    assert params == kept
    (span,) = exporter.get_finished_spans()
    assert span.name == "SageMaker Runtime.InvokeEndpoint"
    sent = wire.custom_attributes()
    assert sent is not None and sent.startswith("accept_eula=true;traceparent=")
    assert traceparent_of(sent)[1] == f"{span.context.span_id:016x}"


def test_the_patched_aio_method_takes_every_parameter_by_name(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """aiobotocore's patched _make_api_call names self too, and takes it by name."""
    aio_module = pytest.importorskip("aiobotocore.client")
    pytest.importorskip("aiobotocore.session")
    owner = aio_module.AioBaseClient
    params = call_params("invoke_endpoint")
    kept = copy.deepcopy(params)

    async def main(server: Any) -> None:
        async with aio_client(server) as client:
            response = await owner._make_api_call(
                self=client, operation_name="InvokeEndpoint", api_params=params
            )
            await response["Body"].read()

    with instrumenting(tracer_provider=tracer_provider):
        parameters = list(inspect.signature(owner._make_api_call).parameters)
        with loopback() as server:
            asyncio.run(main(server))
            sent = sent_custom_attributes(server)
    assert parameters == PARAMETERS
    assert params == kept
    (span,) = exporter.get_finished_spans()
    assert traceparent_of(sent)[1] == f"{span.context.span_id:016x}"


# -- instrument() asked twice ------------------------------------------------------------


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.levelno >= logging.WARNING and record.name.split(".")[0] == "sm_tracing"
    ]


@pytest.mark.parametrize(
    "other",
    [
        {"inject_opaque": True},
        {"inference_id_from_trace": True},
        {"record_echo": False},
        {"endpoints": ["other-endpoint"]},
        {"transform_jobs": True},
        {"genai_models": {"my-endpoint": "llama"}},
    ],
    ids=lambda other: next(iter(other)),
)
def test_a_second_instrument_with_other_options_warns_once(
    tracer_provider: TracerProvider, caplog: pytest.LogCaptureFixture, other: dict[str, Any]
) -> None:
    """instrument() again with other options than the first logs one warning under
    sm_tracing that names the option it ignored."""
    sm_tracing.instrument(tracer_provider=tracer_provider)
    try:
        with caplog.at_level(logging.WARNING, logger="sm_tracing"):
            sm_tracing.instrument(tracer_provider=tracer_provider, **other)
    finally:
        sm_tracing.uninstrument()
    (warning,) = _warnings(caplog)
    assert next(iter(other)) in warning.getMessage()


def test_the_second_instruments_options_are_ignored_and_named(
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    client: Any,
    wire: Wire,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A second instrument() with another provider and inject_opaque warns once, naming both;
    the first options stay in force until uninstrument(), which takes everything off."""
    other, other_exporter = _recording()
    sm_tracing.instrument(tracer_provider=tracer_provider)
    try:
        with caplog.at_level(logging.WARNING, logger="sm_tracing"):
            sm_tracing.instrument(tracer_provider=other, inject_opaque=True)
        client.invoke_endpoint(**call_params("invoke_endpoint", CustomAttributes=UUID))
    finally:
        sm_tracing.uninstrument()
    client.invoke_endpoint(**call_params("invoke_endpoint"))

    (warning,) = _warnings(caplog)
    assert "tracer_provider" in warning.getMessage()
    assert "inject_opaque" in warning.getMessage()
    assert wire.custom_attributes(0) == UUID
    assert wire.custom_attributes(1) is None
    assert len(exporter.get_finished_spans()) == 1
    assert other_exporter.get_finished_spans() == ()
    other.shutdown()


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"endpoints": ["my-endpoint"], "inject_opaque": True},
        {"genai_models": {"my-endpoint": "llama"}, "record_echo": False},
    ],
    ids=["defaults", "endpoints", "genai"],
)
def test_a_second_instrument_with_the_same_options_is_silent(
    tracer_provider: TracerProvider,
    caplog: pytest.LogCaptureFixture,
    options: dict[str, Any],
) -> None:
    """instrument() again with options equal to the first (fresh but equal collections) logs
    no warning."""
    sm_tracing.instrument(tracer_provider=tracer_provider, **options)
    try:
        with caplog.at_level(logging.DEBUG, logger="sm_tracing"):
            sm_tracing.instrument(tracer_provider=tracer_provider, **copy.deepcopy(options))
    finally:
        sm_tracing.uninstrument()
    assert _warnings(caplog) == []


def test_a_client_made_after_the_cycles_is_traced(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """After instrument()/uninstrument() cycles in this process, one instrument() traces a
    new client's call once, with its context on the wire."""
    for _ in range(20):
        sm_tracing.instrument(tracer_provider=tracer_provider)
        sm_tracing.uninstrument()
    wire = Wire()
    client = make_client(wire=wire)
    sm_tracing.instrument(tracer_provider=tracer_provider)
    try:
        client.invoke_endpoint(**call_params("invoke_endpoint"))
    finally:
        sm_tracing.uninstrument()
    (span,) = exporter.get_finished_spans()
    assert traceparent_of(wire.custom_attributes())[1] == f"{span.context.span_id:016x}"
