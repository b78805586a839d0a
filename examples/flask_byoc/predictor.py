"""The inference server of a bring-your-own-container image: a Flask app served by gunicorn
(see ``serve``), its invocations joined to the caller's trace by ``sm_tracing.WSGIMiddleware``.

Try it without Docker (port 8080, as SageMaker expects)::

    pip install 'sm-tracing[flask]' gunicorn
    OTEL_SERVICE_NAME=flask-byoc gunicorn --bind 127.0.0.1:8080 predictor:app
    TP=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01
    curl -si localhost:8080/invocations -H 'Content-Type: application/json' \\
        -H "X-Amzn-SageMaker-Custom-Attributes: traceparent=$TP" -d '{"inputs": "a good day"}'
"""

from __future__ import annotations

import json
import os

import flask
from opentelemetry import trace

import sm_tracing

# gunicorn imports this module in each worker after forking (no --preload), so each worker
# gets its own exporter thread. Spans go to OTEL_EXPORTER_OTLP_ENDPOINT (default
# http://localhost:4318): a Collector, Jaeger, or any OTLP/HTTP backend.
sm_tracing.configure(os.environ.get("OTEL_SERVICE_NAME") or "flask-byoc-model")
tracer = trace.get_tracer(__name__)

HEADER = "X-Amzn-SageMaker-Custom-Attributes"
# The "model": a few word weights. A real container loads its model from /opt/ml/model.
WEIGHTS = {"good": 1.0, "great": 2.0, "bad": -1.0, "awful": -2.0}

app = flask.Flask(__name__)


@app.get("/ping")
def ping() -> flask.Response:
    return flask.Response(status=200)


@app.post("/invocations")
def invocations() -> flask.Response:
    # The caller's own CustomAttributes, if any: the middleware has taken its keys out.
    custom_attributes = flask.request.headers.get(HEADER)
    text = str(flask.request.get_json(force=True).get("inputs", ""))
    with tracer.start_as_current_span("predict") as span:
        words = text.lower().split()
        score = sum(WEIGHTS.get(word, 0.0) for word in words)
        span.set_attribute("model.words", len(words))
    body = json.dumps({"score": score, "custom_attributes": custom_attributes})
    headers = {HEADER: custom_attributes} if custom_attributes else {}
    return flask.Response(body, mimetype="application/json", headers=headers)


# Every /invocations request becomes the container span of the caller's trace, and the
# response carries that span back to the caller in its CustomAttributes.
app.wsgi_app = sm_tracing.WSGIMiddleware(app.wsgi_app)  # type: ignore[method-assign]
