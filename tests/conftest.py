"""Shared fixtures: every test gets its own TracerProvider and in-memory exporter."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer

import sm_tracing

# Tests in the folders below import the shared support modules beside this file by name.
sys.path.insert(0, str(Path(__file__).parent))

from tests._client_support import Wire, make_client


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    """An in-memory exporter of this test's own."""
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """A TracerProvider of this test's own, exporting synchronously to ``exporter``."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def tracer(tracer_provider: TracerProvider) -> Tracer:
    """A tracer standing for the caller's own code."""
    return tracer_provider.get_tracer("tests")


@pytest.fixture
def instrumented(tracer_provider: TracerProvider) -> Iterator[None]:
    """sm_tracing instrumented with this test's provider, removed afterwards."""
    sm_tracing.instrument(tracer_provider=tracer_provider)
    yield
    sm_tracing.uninstrument()


@pytest.fixture
def wire() -> Wire:
    """Captures the signed request of a client on the wire and answers it."""
    return Wire()


@pytest.fixture
def client(wire: Wire) -> Any:
    """A sagemaker-runtime client whose requests ``wire`` answers."""
    return make_client(wire=wire)


@pytest.fixture
def global_propagator() -> Iterator[None]:
    """Restore the global propagator a test replaces."""
    saved = propagate.get_global_textmap()
    yield
    propagate.set_global_textmap(saved)


class _RaisingPropagator(TextMapPropagator):
    """Raises on inject and extract; lists its fields as the W3C one does."""

    def inject(self, carrier: object, context: object = None, setter: object = None) -> None:
        raise RuntimeError("boom")

    def extract(self, carrier: object, context: object = None, getter: object = None) -> Context:
        raise RuntimeError("boom")

    @property
    def fields(self) -> set[str]:
        return {"traceparent"}


@pytest.fixture
def raising_propagator(global_propagator: None) -> Callable[[], None]:
    """Installs, when called, a global propagator whose inject and extract raise; restored
    after the test."""
    return lambda: propagate.set_global_textmap(_RaisingPropagator())
