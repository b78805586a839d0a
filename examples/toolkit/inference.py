"""``inference.py`` for the SageMaker inference toolkits (sagemaker-inference, and the PyTorch
and Hugging Face containers built on it): each request is one span of its caller's trace.

Deploy it as the entry point of a framework model, with the tracing settings in the
environment, e.g. with the SageMaker Python SDK::

    PyTorchModel(
        entry_point="inference.py", source_dir="examples/toolkit", ...,
        env={"OTEL_SERVICE_NAME": "toolkit-model",
             "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector.internal:4318"},
    )

and add ``sm-tracing[otlp]`` to the ``requirements.txt`` next to it.

``sm_tracing.instrument_model_server()`` traces the model server's own dispatch (Multi Model
Server or TorchServe): each request becomes one SERVER span, a child of the caller's span read
from its CustomAttributes, whatever the functions' signatures, and each response echoes its
own span. ``@trace_handler`` only adds a child span named after a function; ``model_fn`` runs at
start-up, outside any request, and makes no span.
"""

from __future__ import annotations

import json

from opentelemetry import trace

import sm_tracing
from sm_tracing import trace_handler

# The model server imports this module in each worker: one provider per worker process.
sm_tracing.configure()
sm_tracing.instrument_model_server()
tracer = trace.get_tracer(__name__)


def model_fn(model_dir: str) -> dict[str, float]:
    """Load the model (here: a few word weights instead of files from model_dir)."""
    return {"good": 1.0, "great": 2.0, "bad": -1.0, "awful": -2.0}


@trace_handler
def input_fn(input_data: str | bytes, content_type: str) -> list[str]:
    """Decode the request body into words."""
    if content_type != "application/json":
        raise ValueError(f"unsupported content type {content_type!r}")
    return str(json.loads(input_data)["inputs"]).lower().split()


@trace_handler
def predict_fn(words: list[str], model: dict[str, float]) -> float:
    """Score the words."""
    with tracer.start_as_current_span("score") as span:
        span.set_attribute("model.words", len(words))
        return sum(model.get(word, 0.0) for word in words)


def output_fn(prediction: float, accept: str) -> tuple[str, str]:
    """Encode the answer."""
    return json.dumps({"score": prediction}), "application/json"
