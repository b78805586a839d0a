"""One OpenTelemetry trace from your code, through an Amazon SageMaker endpoint, into the
model container and back, carried in the request's CustomAttributes.

Public names are imported on first use, so ``import sm_tracing`` has no side effects and
loads no optional integration.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from sm_tracing.version import __version__

if TYPE_CHECKING:
    from sm_tracing._configure import configure
    from sm_tracing._propagation import extract_context, inject_context, strip_context
    from sm_tracing.client._instrumentor import SageMakerInstrumentor, instrument, uninstrument
    from sm_tracing.container._asgi import ASGIMiddleware
    from sm_tracing.container._handler import trace_handler
    from sm_tracing.container._model_servers import (
        instrument_model_server,
        uninstrument_model_server,
    )
    from sm_tracing.container._primitive import continue_trace
    from sm_tracing.container._wsgi import WSGIMiddleware

# No handler on the package logger: like OpenTelemetry's own, our warnings reach stderr through
# logging's last resort when the application configured no logging, and its handlers when it did.

_EXPORTS = {
    "ASGIMiddleware": "container._asgi",
    "SageMakerInstrumentor": "client._instrumentor",
    "WSGIMiddleware": "container._wsgi",
    "configure": "_configure",
    "continue_trace": "container._primitive",
    "extract_context": "_propagation",
    "inject_context": "_propagation",
    "instrument": "client._instrumentor",
    "instrument_model_server": "container._model_servers",
    "strip_context": "_propagation",
    "trace_handler": "container._handler",
    "uninstrument": "client._instrumentor",
    "uninstrument_model_server": "container._model_servers",
}

__all__ = [
    "ASGIMiddleware",
    "SageMakerInstrumentor",
    "WSGIMiddleware",
    "__version__",
    "configure",
    "continue_trace",
    "extract_context",
    "inject_context",
    "instrument",
    "instrument_model_server",
    "strip_context",
    "trace_handler",
    "uninstrument",
    "uninstrument_model_server",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sm_tracing' has no attribute {name!r}")
    value = getattr(import_module(f"sm_tracing.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    # The public names and the module's dunders, not what its own imports left behind.
    dunders = {name for name in globals() if name.startswith("__") and name.endswith("__")}
    return sorted(dunders | set(__all__))
