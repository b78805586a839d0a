"""A model container for batch transform, whose records join the trace of the job's caller.

A batch transform job calls the container once per record or mini-batch, with no
CustomAttributes, and starts it with the job's ``Environment`` as environment variables. When
the caller ran ``sm_tracing.instrument(transform_jobs=True)``, that environment holds the job's
trace context (``TRACEPARENT`` ...), and ``sm_tracing.WSGIMiddleware`` puts each request that
brings none of its own under it.

Try it on its own (port 8080, as SageMaker expects):

    pip install 'sm-tracing[flask]' gunicorn
    OTEL_SERVICE_NAME=transform-model gunicorn --bind 127.0.0.1:8080 app:app
    curl -s localhost:8080/invocations -H 'Content-Type: text/csv' --data-binary $'1,2,3\\n4,5'

Each CSV line in is answered by one CSV line out: the record as it came, then its sum.
"""

from __future__ import annotations

import os

import flask
from opentelemetry import trace

import sm_tracing

# gunicorn imports this module in each worker after forking, so each worker gets its own
# exporter thread. Spans go to OTEL_EXPORTER_OTLP_ENDPOINT (default http://localhost:4318).
sm_tracing.configure(os.environ.get("OTEL_SERVICE_NAME") or "transform-model")
tracer = trace.get_tracer(__name__)

app = flask.Flask(__name__)


@app.get("/ping")
def ping() -> flask.Response:
    return flask.Response(status=200)


@app.post("/invocations")
def invocations() -> flask.Response:
    # One record (BatchStrategy SingleRecord) or several, one a line (MultiRecord).
    records = flask.request.get_data(as_text=True).splitlines()
    with tracer.start_as_current_span("predict") as span:
        span.set_attribute("model.records", len(records))
        answers = [f"{record},{sum(float(v) for v in record.split(',')):g}" for record in records]
    return flask.Response("\n".join(answers), mimetype="text/csv")


# Every /invocations request becomes a span in the job's trace: the context comes from the
# request's CustomAttributes when it has any, else from the environment the job started the
# container with.
app.wsgi_app = sm_tracing.WSGIMiddleware(app.wsgi_app)  # type: ignore[method-assign]
