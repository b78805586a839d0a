"""The serving stacks' private names the container side relies on, where they offer no public way
to do the same: each is looked up here and nowhere else, and each has a fallback for a release
that no longer has it (logged at debug: the request is then served untraced, or traced the way
it would be without that stack).

- FastAPI (from 0.142) traces every request itself, taking its parent from HTTP headers only,
  which SageMaker strips; its own middleware stands aside for a scope holding
  :data:`FASTAPI_TELEMETRY`. Whether an app traces itself is read from the public ``telemetry``
  parameter of ``FastAPI``; where that parameter is missing there is nothing to quiet.
- Multi Model Server and TorchServe call the model's entry point through the ``Service``'s
  ``_entry_point`` attribute from ``Service.predict``; where a release has no such attribute,
  ``predict`` runs untraced (``@trace_handler`` still finds each request in its context).
- The sagemaker-inference toolkit's ``Transformer`` calls the transform function of each item of
  a batch through ``_run_handler_function(self._transform_fn, ...)``; where it has no such
  method, each item's function runs under the batch's span.
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Callable
from typing import Any, cast

_logger = logging.getLogger(__name__)

FASTAPI_TELEMETRY = "fastapi.telemetry"
"""The scope key for which FastAPI's built-in telemetry leaves a request alone."""

SERVICE_ENTRY_POINT = "_entry_point"
TRANSFORMER_DISPATCH = "_run_handler_function"
TRANSFORMER_TRANSFORM = "_transform_fn"


def fastapi_traces_itself(app: object) -> bool:
    """Whether *app*, or an app it wraps (``.app``, as middlewares keep it), is a FastAPI app
    of a release that traces its requests by itself."""
    fastapi = sys.modules.get("fastapi")
    if fastapi is None:
        return False
    seen: set[int] = set()
    while app is not None and id(app) not in seen:
        seen.add(id(app))
        if isinstance(app, fastapi.FastAPI):
            try:
                return "telemetry" in inspect.signature(fastapi.FastAPI).parameters
            except (TypeError, ValueError):  # a signature that can't be read: assume none
                return False
        app = getattr(app, "app", None)
    return False


def entry_point(service: object) -> Callable[..., Any] | None:
    """The model's entry point a model server's ``Service`` calls, or None where it has none
    to be found."""
    found = getattr(service, SERVICE_ENTRY_POINT, None)
    if not callable(found):
        _logger.debug("no %s on %r: its requests are served untraced", SERVICE_ENTRY_POINT, service)
        return None
    return cast("Callable[..., Any]", found)


def set_entry_point(service: object, function: Callable[..., Any]) -> bool:
    """Make *service* call *function* as its entry point; True once done."""
    setattr(service, SERVICE_ENTRY_POINT, function)
    return True


def transformer_dispatch(transformer: type) -> str | None:
    """The name of the toolkit ``Transformer``'s method that calls the user's functions, or None
    where this release has none."""
    if TRANSFORMER_DISPATCH in transformer.__dict__:
        return TRANSFORMER_DISPATCH
    _logger.debug(
        "no %s on %r: per-item functions run under the batch's span",
        TRANSFORMER_DISPATCH,
        transformer,
    )
    return None


def transform_function(transformer: object) -> object:
    """The transform function a toolkit ``Transformer`` calls once per item, or None."""
    return getattr(transformer, TRANSFORMER_TRANSFORM, None)
