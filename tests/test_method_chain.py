"""botocore's ``_make_api_call`` wrapped by the SageMaker runtime hook, the transform job hook
and opentelemetry-instrumentation-botocore, installed in any order and taken off in any order:
each one taken off leaves the others in their order, every call still goes through those left,
and the last one off leaves botocore's own method."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import botocore.client
import botocore.session
import pytest
from _client_support import (
    SageMakerWire,
    Wire,
    call_params,
    job,
    make_client,
    remove_upstream_only,
    sagemaker_client,
    traceparent_of,
)
from opentelemetry.instrumentation.botocore import BotocoreInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import sm_tracing
from sm_tracing._telemetry import get_tracer
from sm_tracing.client import _instrumentor, _transform
from sm_tracing.client._hook import ClientOptions, RuntimeHook
from sm_tracing.client._transform import TransformHook

NAMES = ("runtime", "transform", "upstream")


def _kind(node: Any) -> str:
    """Which wrapper *node*, a link of the chain, is."""
    # A wrapt wrapper first: it passes on what it lacks, our attributes included.
    wrapper = getattr(node, "_self_wrapper", None)
    if wrapper is not None:
        assert wrapper.__name__ == "_patched_api_call"
        return "upstream"
    hook = getattr(node, "_sm_tracing_hook", None)
    if isinstance(hook, RuntimeHook):
        return "runtime"
    if isinstance(hook, TransformHook):
        return "transform"
    return "botocore"


def _chain() -> list[str]:
    """The wrappers of ``_make_api_call``, outermost first, down to botocore's own."""
    kinds = []
    node: Any = botocore.client.BaseClient.__dict__["_make_api_call"]
    while True:
        kinds.append(_kind(node))
        if kinds[-1] == "botocore":
            return kinds
        node = node.__wrapped__


class _Stack:
    """The three instrumentations, installed and taken off one by one."""

    def __init__(self, tracer_provider: TracerProvider) -> None:
        self.tracer_provider = tracer_provider
        self.transform: TransformHook | None = None
        self.installed: list[str] = []

    def install(self, name: str) -> None:
        if name == "runtime":
            sm_tracing.instrument(tracer_provider=self.tracer_provider)
        elif name == "transform":
            self.transform = _transform.install(get_tracer(self.tracer_provider))
        else:
            BotocoreInstrumentor().instrument(tracer_provider=self.tracer_provider)
        self.installed.append(name)

    def remove(self, name: str) -> None:
        if name == "runtime":
            sm_tracing.uninstrument()
        elif name == "transform":
            assert self.transform is not None
            _transform.uninstall(self.transform)
        else:
            remove_upstream_only()
        self.installed.remove(name)

    def remove_all(self) -> None:
        for name in list(self.installed):
            self.remove(name)


@pytest.fixture
def stack(tracer_provider: TracerProvider) -> Iterator[_Stack]:
    installed = _Stack(tracer_provider)
    yield installed
    installed.remove_all()


def _check_calls(
    installed: list[str],
    exporter: InMemorySpanExporter,
    runtime: Any,
    wire: Wire,
    jobs: Any,
    job_wire: SageMakerWire,
) -> None:
    """One InvokeEndpoint and one CreateTransformJob, each traced and injected by what is
    installed, with one CLIENT span per call whoever makes it."""
    for _ in range(2):  # the first call may hook the client's events; the second uses them
        exporter.clear()
        response = runtime.invoke_endpoint(**call_params("invoke_endpoint"))
        assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
        spans = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
        sent = wire.custom_attributes()
        if "runtime" in installed:
            (span,) = spans
            assert traceparent_of(sent)[1] == f"{span.context.span_id:016x}"
        else:
            assert sent is None
            assert len(spans) == (1 if "upstream" in installed else 0)
        jobs.create_transform_job(**job())
        injected = "TRACEPARENT" in (job_wire.environment() or {})
        assert injected == ("transform" in installed)


@pytest.mark.parametrize(
    "installs, removals",
    [
        (installs, removals)
        for installs in itertools.permutations(NAMES)
        for removals in itertools.permutations(NAMES)
    ],
)
def test_any_order_in_any_order_out(
    stack: _Stack,
    exporter: InMemorySpanExporter,
    installs: tuple[str, ...],
    removals: tuple[str, ...],
) -> None:
    """Each of the three wrappers installed in turn goes on top; each taken off leaves the
    others in their order, and the calls traced by those left."""
    original = botocore.client.BaseClient.__dict__["_make_api_call"]
    wire = Wire()
    runtime = make_client(wire=wire)
    job_wire = SageMakerWire()
    jobs = sagemaker_client(job_wire)
    for name in installs:
        stack.install(name)
    assert _chain() == [*reversed(stack.installed), "botocore"]
    _check_calls(stack.installed, exporter, runtime, wire, jobs, job_wire)
    for name in removals:
        stack.remove(name)
        assert _chain() == [*reversed(stack.installed), "botocore"]
        _check_calls(stack.installed, exporter, runtime, wire, jobs, job_wire)
    assert botocore.client.BaseClient.__dict__["_make_api_call"] is original


def test_botocore_parameter_names_are_taken(
    instrumented: None, exporter: InMemorySpanExporter, wire: Wire, client: Any
) -> None:
    """A caller that names botocore's parameters reaches botocore through ours, traced."""
    client._make_api_call(
        operation_name="InvokeEndpoint", api_params=call_params("invoke_endpoint")
    )
    (span,) = exporter.get_finished_spans()
    assert traceparent_of(wire.custom_attributes())[1] == f"{span.context.span_id:016x}"


def test_a_method_of_other_parameters_is_left_alone(
    tracer_provider: TracerProvider, caplog: pytest.LogCaptureFixture
) -> None:
    """Should botocore's method ever take other parameters, it is not wrapped, and the log
    says that SageMaker calls are not traced."""

    class Changed(botocore.client.BaseClient):
        def _make_api_call(self, operation_name: str, api_params: Any, context: Any = None) -> Any:
            return None

    method: Callable[..., Any] = Changed.__dict__["_make_api_call"]
    hook = RuntimeHook(ClientOptions.from_keywords({}))
    with caplog.at_level(logging.WARNING, logger="sm_tracing"):
        _instrumentor._patch(Changed, hook, False)
    assert Changed.__dict__["_make_api_call"] is method
    assert "SageMaker calls are not traced" in caplog.text
    assert "context" in caplog.text
