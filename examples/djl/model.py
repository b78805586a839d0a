"""A DJL Serving (LMI) Python model whose requests join their caller's trace.

DJL Serving hands no raw HTTP header to Python: CustomAttributes arrive split on ``;`` into
request properties, so ``traceparent`` is ``inputs.get_property("traceparent")``.
``@trace_handler`` reads it there, and for a batch (``inputs.get_batches()``) makes one span
per request. Put this file in the model directory with ``serving.properties``::

    engine=Python
    option.entryPoint=model.py

and add ``sm-tracing[otlp]`` to ``requirements.txt``; set ``OTEL_SERVICE_NAME`` and
``OTEL_EXPORTER_OTLP_ENDPOINT`` in the container's environment.
"""

from __future__ import annotations

from djl_python import Input, Output
from opentelemetry import trace

import sm_tracing
from sm_tracing import trace_handler

sm_tracing.configure()
tracer = trace.get_tracer(__name__)
WEIGHTS = {"good": 1.0, "great": 2.0, "bad": -1.0, "awful": -2.0}


@trace_handler
def handle(inputs: Input) -> Output | None:
    """Score each request of the batch; DJL calls once with empty input at start-up."""
    if inputs.is_empty():
        return None
    outputs = Output()
    with tracer.start_as_current_span("score batch"):
        for index, item in enumerate(inputs.get_batches()):
            text = str(item.get_as_json().get("inputs", ""))
            score = sum(WEIGHTS.get(word, 0.0) for word in text.lower().split())
            if inputs.is_batch():
                outputs.add_as_json({"score": score}, batch_index=index)
            else:
                outputs.add_as_json({"score": score})
    return outputs
