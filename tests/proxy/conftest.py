"""A model server that traces from ``traceparent``, the proxy in front of it and a local
SageMaker runtime in front of both, shared by the tests of a module; every process exports its
spans over OTLP/HTTP to one receiver."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sm_tracing.local import LocalRuntime
from tests._otlp_receiver import OTLPReceiver
from tests._serving import Container, launch, otlp_env, serving
from tests.proxy._proxy_support import start_proxy


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for the processes' output."""
    return tmp_path_factory.mktemp("proxy-logs")


@pytest.fixture(scope="module")
def receiver() -> Iterator[OTLPReceiver]:
    """The OTLP/HTTP receiver every process exports to."""
    with OTLPReceiver() as started:
        yield started


@pytest.fixture(scope="module")
def model_server(receiver: OTLPReceiver, logs: Path) -> Iterator[Container]:
    """The FastAPI model server under uvicorn, exporting as service ``model-server``."""
    container = launch(
        "uvicorn",
        "tests.proxy._model_server:app",
        "model-server",
        logs,
        env=otlp_env("model-server", receiver.traces_url),
    )
    with serving(container) as ready:
        yield ready


@pytest.fixture(scope="module")
def proxy(model_server: Container, receiver: OTLPReceiver, logs: Path) -> Iterator[Container]:
    """The proxy in front of the model server, ``/invocations`` mapped to ``/generate``,
    exporting as service ``proxy``."""
    container = start_proxy(
        model_server.url,
        logs,
        args=["--invocations-path", "/generate"],
        env=otlp_env("proxy", receiver.traces_url),
    )
    with serving(container) as ready:
        yield ready


@pytest.fixture(scope="module")
def runtime(proxy: Container) -> Iterator[LocalRuntime]:
    """A local SageMaker runtime in front of the proxy."""
    with LocalRuntime(proxy.url, container_timeout=20) as started:
        yield started
