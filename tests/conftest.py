"""Shared fixtures: every test gets its own TracerProvider and in-memory exporter."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer

import sm_tracing
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
