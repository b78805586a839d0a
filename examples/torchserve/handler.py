"""A TorchServe handler whose requests each join their caller's trace.

TorchServe batches requests: ``handle(data, context)`` gets one entry in ``data`` per request,
and ``@trace_handler`` makes one span per request, each the child of its own caller's span.
Package and serve it::

    torch-model-archiver --model-name words --version 1.0 --handler handler.py \\
        --export-path model_store
    OTEL_SERVICE_NAME=torchserve-model torchserve --start --model-store model_store \\
        --models words=words.mar

No PyTorch is needed for this toy model; a real one would subclass
``ts.torch_handler.base_handler.BaseHandler`` and decorate its ``handle`` the same way.
"""

from __future__ import annotations

import json
from typing import Any

from opentelemetry import trace

import sm_tracing
from sm_tracing import trace_handler

sm_tracing.configure()
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
