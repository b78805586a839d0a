"""A TorchServe handler whose requests each join their caller's trace.

``sm_tracing.instrument_model_server()`` traces TorchServe's own dispatch: each request becomes
one span in its caller's trace, read from its CustomAttributes, and each response echoes its own
span. TorchServe batches requests: ``handle(data, context)`` gets one entry in ``data`` per
request, and the work done for the whole batch (the ``handle`` span, named by ``@trace_handler``,
and the model's own spans under it) goes under one span of the batch, linked to every caller.
See README.md beside this file to package and serve it.
"""

from __future__ import annotations

import json
from typing import Any

from opentelemetry import trace

import sm_tracing
from sm_tracing import trace_handler

# TorchServe imports this module in each worker: one provider per worker process.
sm_tracing.configure()
sm_tracing.instrument_model_server()
tracer = trace.get_tracer(__name__)
WEIGHTS = {"good": 1.0, "great": 2.0, "bad": -1.0, "awful": -2.0}


def _text(row: dict[str, Any]) -> str:
    body = row.get("body") or row.get("data") or b"{}"
    if isinstance(body, (bytes, bytearray)):
        body = json.loads(body)
    return str(body.get("inputs", "")) if isinstance(body, dict) else str(body)


@trace_handler
def handle(data: list[dict[str, Any]] | None, context: Any) -> list[str] | None:
    """Score each request of the batch; one answer per request, in order."""
    if data is None:  # TorchServe calls once with no data while loading the model
        return None
    with tracer.start_as_current_span("score batch") as span:
        span.set_attribute("batch.size", len(data))
        scores = [sum(WEIGHTS.get(w, 0.0) for w in _text(row).lower().split()) for row in data]
    return [json.dumps({"score": score}) for score in scores]
