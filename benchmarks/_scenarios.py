"""The configurations measured, by name, and what each needs to run."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Callable, Iterable

from benchmarks import _client_scenarios as client
from benchmarks import _codec_scenarios as codec
from benchmarks import _container_scenarios as container
from benchmarks import _peer_scenarios as peers
from benchmarks._base import PROCESSOR, Scenario, ScenarioError

__all__ = ["BUILDERS", "PROCESSOR", "Scenario", "ScenarioError", "build", "prepare", "unavailable"]

BUILDERS: dict[str, Callable[[], Scenario]] = {
    "client-bare": client.client_bare,
    "client-floor": client.client_floor,
    "client-floor-attributes": client.client_floor_attributes,
    "client-floor-header": client.client_floor_header,
    "client-upstream": client.client_upstream,
    "client-ours": client.client_ours,
    "client-ours-metrics": client.client_ours_metrics,
    "client-ours-record": client.client_ours_record,
    "client-openllmetry": peers.client_openllmetry,
    "client-xray": peers.client_xray,
    "echo-bare": client.echo_bare,
    "echo-floor": client.echo_floor,
    "echo-floor-header": client.echo_floor_header,
    "echo-upstream": client.echo_upstream,
    "echo-ours": client.echo_ours,
    "stream-bare": client.stream_bare,
    "stream-ours": client.stream_ours,
    "stream-ours-metrics": client.stream_ours_metrics,
    "wsgi-bare": container.wsgi_bare,
    "wsgi-floor": container.wsgi_floor,
    "wsgi-floor-attributes": container.wsgi_floor_attributes,
    "wsgi-upstream": container.wsgi_upstream,
    "wsgi-ours": container.wsgi_ours,
    "wsgi-ours-metrics": container.wsgi_ours_metrics,
    "wsgi-ours-record": container.wsgi_ours_record,
    "asgi-bare": container.asgi_bare,
    "asgi-floor": container.asgi_floor,
    "asgi-floor-attributes": container.asgi_floor_attributes,
    "asgi-upstream": container.asgi_upstream,
    "asgi-ours": container.asgi_ours,
    "asgi-ours-metrics": container.asgi_ours_metrics,
    "asgi-ours-record": container.asgi_ours_record,
    "asgi-stream-bare": container.asgi_stream_bare,
    "asgi-stream-floor": container.asgi_stream_floor,
    "asgi-stream-ours": container.asgi_stream_ours,
    "inject-bare": codec.inject_bare,
    "inject-ours": codec.inject_ours,
    "extract-bare": codec.extract_bare,
    "extract-ours": codec.extract_ours,
}

# The module each configuration needs beyond the base install: absent, the row says so.
_MODULES = {
    "client-upstream": "opentelemetry.instrumentation.botocore",
    "echo-upstream": "opentelemetry.instrumentation.botocore",
    "wsgi-upstream": "opentelemetry.instrumentation.wsgi",
    "asgi-upstream": "opentelemetry.instrumentation.asgi",
    **peers.MODULES,
}
# The extra of sm-tracing that brings each of those modules.
_EXTRAS = {
    "opentelemetry.instrumentation.botocore": "test",
    "opentelemetry.instrumentation.wsgi": "test",
    "opentelemetry.instrumentation.asgi": "test",
    **{module: peers.EXTRA for module in peers.MODULES.values()},
}
# Configurations that change a process for good (the X-Ray SDK has no unpatch): built only in
# a process of their own, never beside another configuration.
ISOLATED = frozenset(peers.MODULES)
# The entry point whose ``meter_provider=`` a metrics configuration passes.
_METERED = {
    "client-ours-metrics": "instrument",
    "stream-ours-metrics": "instrument",
    "wsgi-ours-metrics": "WSGIMiddleware",
    "asgi-ours-metrics": "ASGIMiddleware",
}


# The configurations that use each public name.
_USERS = {
    "instrument": {name for name in BUILDERS if name.startswith(("client-", "echo-", "stream-"))},
    "WSGIMiddleware": {name for name in BUILDERS if name.startswith("wsgi-")},
    "ASGIMiddleware": {name for name in BUILDERS if name.startswith("asgi-")},
    "inject_context": {"inject-ours"},
    "extract_context": {"extract-ours"},
}


def unavailable(config: str) -> str | None:
    """Why *config* cannot run with what is installed, or None when it can."""
    module = _MODULES.get(config)
    if module is not None and importlib.util.find_spec(module) is None:
        return f"not available: pip install 'sm-tracing[{_EXTRAS[module]}]' ({module} is missing)"
    entry_point = _METERED.get(config)
    if entry_point is not None:
        target = getattr(importlib.import_module("sm_tracing"), entry_point)
        if "meter_provider" not in inspect.signature(target).parameters:
            return f"skipped: sm_tracing.{entry_point} takes no meter_provider= yet"
    return None


def prepare(configs: Iterable[str]) -> None:
    """Import and load, once, what *configs* share, so that each, started from a prepared
    process, pays only for itself."""
    import sm_tracing

    wanted = set(configs)
    modules = ["opentelemetry.propagate", "opentelemetry.sdk.trace"]
    for config in wanted:
        modules.append(_MODULES.get(config, "opentelemetry.sdk.trace"))
        if config in _METERED or config.endswith("-record"):
            modules.append("opentelemetry.sdk.metrics")
    for module in modules:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)
    # Public names are imported on first use.
    for name, users in _USERS.items():
        if wanted & users:
            getattr(sm_tracing, name)
    if wanted & _USERS["instrument"]:
        client.prepare()


def vary_history(config: str, sample: int) -> None:
    """Give the process of *sample* a history of its own before *config* is built: as many
    other clients made first (other classes, strings and service-model objects), so that the
    interpreter's method cache and dict layouts differ from one sample to the next."""
    if sample and config in _USERS["instrument"]:
        for _ in range(sample):
            client.client(client.Wire())


def build(config: str) -> Scenario:
    """The scenario named *config*; KeyError for an unknown name."""
    return BUILDERS[config]()
