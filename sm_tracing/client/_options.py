"""What :func:`sm_tracing.instrument` was asked to do."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, fields
from typing import Any

from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from sm_tracing._guard import guard

EndpointFilter = Callable[[str, Mapping[str, Any]], bool]
GenAIModels = Callable[[str, Mapping[str, Any]], "str | None"]

_MAX_WARNED = 1024


def _endpoint_names(endpoints: object) -> frozenset[str] | EndpointFilter | None:
    if endpoints is None or callable(endpoints):
        return endpoints
    kind = type(endpoints).__name__
    if isinstance(endpoints, (str, bytes)):
        raise TypeError(f"endpoints must be a collection of endpoint names, not a single {kind}")
    if not isinstance(endpoints, Collection) or not all(isinstance(n, str) for n in endpoints):
        raise TypeError(
            "endpoints must be None, a collection of endpoint names (str) or a callable "
            f"(endpoint_name, params) -> bool, not {kind}"
        )
    return frozenset(endpoints)


def _check_genai_models(models: object) -> None:
    if models is None or callable(models) or isinstance(models, Mapping):
        return
    raise TypeError(
        "genai_models must be None, a mapping of endpoint names to models or a callable "
        f"(endpoint_name, params) -> model or None, not {type(models).__name__}"
    )


@dataclass(frozen=True)
class ClientOptions:
    """What :func:`sm_tracing.instrument` was asked to do; checked when made.

    ``endpoints`` comes out as None, a frozenset of endpoint names or the callable given.
    """

    tracer_provider: TracerProvider | None = None
    endpoints: Collection[str] | EndpointFilter | None = None
    inject_opaque: bool = False
    inference_id_from_trace: bool = False
    record_echo: bool = True
    meter_provider: MeterProvider | None = None
    genai_models: Mapping[str, str] | GenAIModels | None = None
    transform_jobs: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "endpoints", _endpoint_names(self.endpoints))
        _check_genai_models(self.genai_models)

    @classmethod
    def from_keywords(cls, keywords: Mapping[str, Any]) -> ClientOptions:
        """The options among *keywords* (an instrumentor's); other keywords are not ours."""
        return cls(**{f.name: keywords[f.name] for f in fields(cls) if f.name in keywords})

    def differences(self, other: ClientOptions) -> list[str]:
        """The names of the options *other* sets otherwise."""
        return [f.name for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]

    def wants(self, endpoint: object, params: Mapping[str, Any]) -> bool:
        """Whether the trace context goes to *endpoint*, called with *params* (what a filter
        is shown): to every endpoint without ``endpoints``; not where a filter raises."""
        endpoints = self.endpoints
        if endpoints is None:
            return True
        if isinstance(endpoints, frozenset):
            return endpoint in endpoints
        if not callable(endpoints) or not isinstance(endpoint, str):
            return False
        return guard(
            "run the endpoints filter; not injecting", False, _ask, endpoints, endpoint, params
        )

    def model(self, endpoint: object, params: Mapping[str, Any]) -> str | None:
        """The model ``genai_models`` names for *endpoint*, or None."""
        models = self.genai_models
        if models is None or not isinstance(endpoint, str):
            return None
        if callable(models):
            model = guard("ask genai_models for a model", None, models, endpoint, params)
        else:
            model = models.get(endpoint)
        return model if isinstance(model, str) and model else None


def _ask(endpoints: EndpointFilter, endpoint: str, params: Mapping[str, Any]) -> bool:
    return bool(endpoints(endpoint, params))


def first_time(warned: set[str | None], endpoint: str | None) -> bool:
    """Whether *endpoint* is not yet in *warned*, which then holds it: a warning about an
    endpoint is logged once, for the first 1024 endpoints warned about (every time after)."""
    if endpoint in warned:
        return False
    if len(warned) < _MAX_WARNED:
        warned.add(endpoint)
    return True
