"""The demo's model containers: a small Flask app behind :class:`sm_tracing.WSGIMiddleware`,
and a WebSocket app behind :class:`sm_tracing.ASGIMiddleware` for bidirectional streams.

Served by gunicorn as ``sm_tracing._demo.app:create_app()``. It answers ``GET /ping`` and
``POST /invocations`` with a JSON body ``{"inputs": "...", "stream": false, "chunks": 3,
"delay": 0.05}``: a plain request gets JSON back, a streamed one gets ``chunks`` lines, the
app sleeping ``delay`` seconds before each. The handler's own spans (``preprocess``,
``predict``, ``generate``) sit under the container span. The CustomAttributes the handler
received are returned in the response body and as the response's CustomAttributes, so a
caller can see that its own values arrived and came back, and logged on stdout as one JSON
line per request with its inference id (the demo reads them back from the container's log).

The WebSocket app, served by uvicorn as ``sm_tracing._demo.app:create_ws_app`` (a factory),
answers ``GET /ping`` and, on ``/invocations-bidirectional-stream``, each text message with
the text upper-cased, after ``delay`` seconds (a query parameter, default 0.02) spent in an
``answer`` span under the session's span.

Tracing is set up with :func:`sm_tracing.configure` from the usual ``OTEL_*`` variables, in
each worker, after gunicorn forks it (in the one uvicorn process for the WebSocket app).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from sm_tracing._hints import install_hint
from sm_tracing.container._asgi import ASGIMiddleware, Receive, Scope, Send
from sm_tracing.container._websocket import BIDI_PATH
from sm_tracing.container._wsgi import WSGIMiddleware

if TYPE_CHECKING:
    from flask import Flask

SERVICE_NAME = "demo-model-container"
HEADER = "X-Amzn-SageMaker-Custom-Attributes"
INFERENCE_ID = "X-Amzn-SageMaker-Inference-Id"
# The "event" of the log line saying what a request's CustomAttributes were.
RECEIVED_EVENT = "custom_attributes_received"


def create_app() -> Flask:
    """Configure tracing and build the traced Flask app."""
    try:
        from flask import Flask, Response, request
    except ImportError as exc:
        raise ImportError(f"the demo container needs Flask: {install_hint('demo')}") from exc
    from opentelemetry import trace

    import sm_tracing

    sm_tracing.configure(os.environ.get("OTEL_SERVICE_NAME") or SERVICE_NAME)
    tracer = trace.get_tracer("sm_tracing.demo")
    flask_app = Flask("sm_tracing_demo")

    @flask_app.get("/ping")
    def ping() -> Response:
        return Response("", status=200)

    @flask_app.post("/invocations")
    def invocations() -> Response:
        custom_attributes = request.headers.get(HEADER)
        record = {
            "event": RECEIVED_EVENT,
            "inference_id": request.headers.get(INFERENCE_ID),
            "custom_attributes": custom_attributes,
        }
        print(json.dumps(record), flush=True)
        headers = {HEADER: custom_attributes} if custom_attributes else {}
        with tracer.start_as_current_span("preprocess"):
            payload: dict[str, Any] = json.loads(request.get_data() or b"{}")
            text = str(payload.get("inputs", ""))
            chunks = int(payload.get("chunks", 3))
            delay = float(payload.get("delay", 0.05))
        if payload.get("stream"):

            def generate() -> Iterator[bytes]:
                # Runs as gunicorn sends the body: the middleware keeps the container span
                # open, and current here, until the last chunk has gone.
                with tracer.start_as_current_span("generate") as span:
                    for index in range(chunks):
                        time.sleep(delay)
                        yield f"{text} {index + 1}/{chunks}\n".encode()
                    span.set_attribute("demo.chunks", chunks)

            return Response(generate(), mimetype="text/plain", headers=headers)
        with tracer.start_as_current_span("predict"):
            time.sleep(delay)
            outputs = text.upper()
        body = {"outputs": outputs, "custom_attributes": custom_attributes}
        return Response(json.dumps(body), mimetype="application/json", headers=headers)

    flask_app.wsgi_app = WSGIMiddleware(flask_app.wsgi_app)  # type: ignore[method-assign]
    return flask_app


def create_ws_app() -> ASGIMiddleware:
    """Configure tracing and build the traced WebSocket app of bidirectional streams."""
    from opentelemetry import trace

    import sm_tracing

    sm_tracing.configure(os.environ.get("OTEL_SERVICE_NAME") or SERVICE_NAME)
    tracer = trace.get_tracer("sm_tracing.demo")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            found = scope["path"] == "/ping"
            await send({"type": "http.response.start", "status": 200 if found else 404})
            await send({"type": "http.response.body", "body": b""})
            return
        if scope["type"] != "websocket":
            return
        if scope["path"] != BIDI_PATH:
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})
            return
        # The query string as the caller passed it: the middleware took its own keys out.
        params = dict(parse_qsl(scope["query_string"].decode("latin-1")))
        delay = float(params.get("delay", 0.02))
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                text = bytes(message.get("bytes") or b"").decode("utf-8", "replace")
            with tracer.start_as_current_span("answer"):
                await asyncio.sleep(delay)
                await send({"type": "websocket.send", "text": text.upper()})

    return ASGIMiddleware(app)
