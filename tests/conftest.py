"""Shared fixtures: every test gets its own TracerProvider and in-memory exporter."""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import botocore
import pytest
from opentelemetry import propagate
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer
from packaging.version import Version

# Tests in the folders below import the shared support modules beside this file by name.
sys.path.insert(0, str(Path(__file__).parent))

from tests._client_support import Wire, instrumenting, make_client

if TYPE_CHECKING:
    from tests._otlp_receiver import OTLPReceiver


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
    with instrumenting(tracer_provider=tracer_provider):
        yield


@pytest.fixture
def wire() -> Wire:
    """Captures the signed request of a client on the wire and answers it."""
    return Wire()


@pytest.fixture
def client(wire: Wire) -> Any:
    """A sagemaker-runtime client whose requests ``wire`` answers."""
    return make_client(wire=wire)


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    """An OTLP/HTTP receiver of this test's own on a free loopback port."""
    from tests._otlp_receiver import OTLPReceiver

    with OTLPReceiver() as running:
        yield running


@pytest.fixture
def global_propagator() -> Iterator[None]:
    """Restore the global propagator a test replaces."""
    saved = propagate.get_global_textmap()
    yield
    propagate.set_global_textmap(saved)


@pytest.fixture
def raising_propagator(global_propagator: None) -> Callable[[], None]:
    """Installs, when called, a global propagator whose inject and extract raise; restored
    after the test."""
    from tests._robust_support import RaisingPropagator

    return lambda: propagate.set_global_textmap(RaisingPropagator(fields={"traceparent"}))


# The first botocore releases whose SageMaker Runtime model has these members: a test that sends
# one skips under an older botocore (the declared floor is older), where validation refuses it.
BOTOCORE_SESSION_ID = "1.35.15"  # InvokeEndpoint and the stream call: SessionId
BOTOCORE_ASYNC_OUTPUT_NAMES = "1.42.54"  # InvokeEndpointAsync: Filename, S3OutputPathExtension
BOTOCORE_ASYNC_INLINE_BODY = "1.43.29"  # InvokeEndpointAsync: Body, InputLocation optional
BOTOCORE_PREFIX_AWARE_ID = "1.43.68"  # InvokeEndpoint and the stream call: PrefixAwareId


def requires_botocore(version: str, reason: str) -> pytest.MarkDecorator:
    """A mark that skips the test under a botocore older than *version*, saying *reason*.

    For example ``@requires_botocore(BOTOCORE_PREFIX_AWARE_ID, "sends PrefixAwareId")``, with
    the helpers imported ``from tests.conftest import ...``."""
    return pytest.mark.skipif(
        Version(botocore.__version__) < Version(version),
        reason=f"needs botocore {version} or later ({botocore.__version__} here): {reason}",
    )


def requires_package(distribution: str, version: str, reason: str) -> pytest.MarkDecorator:
    """A mark that skips the test when *distribution* is missing or older than *version*.

    For example ``@requires_package("opentelemetry-instrumentation-botocore", "0.62b0",
    "AiobotocoreInstrumentor")``."""
    try:
        installed = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return pytest.mark.skip(reason=f"needs {distribution} {version} or later: {reason}")
    return pytest.mark.skipif(
        Version(installed) < Version(version),
        reason=f"needs {distribution} {version} or later ({installed} here): {reason}",
    )
