"""A WebSocket model container for bidirectional streams, whose sessions join the caller's trace.

For InvokeEndpointWithBidirectionalStream, SageMaker opens a WebSocket on the container at
``/invocations-bidirectional-stream``, with the caller's ``ModelQueryString`` as its query
string: the one thing of the caller's that reaches the container. ``sm_tracing.ASGIMiddleware``
reads the trace context there, makes the whole session one span in the caller's trace, and hands
the app the query string without its own keys.

Run it (port 8080, as SageMaker expects):

    OTEL_SERVICE_NAME=bidi-model uvicorn app:app --host 0.0.0.0 --port 8080

Each text message is answered with one JSON message: the text transformed as the query
parameter ``mode`` says (``upper``, the default, ``lower`` or ``reverse``), and the query
parameters the app received. ``bye`` ends the session from the container's side.
"""

from __future__ import annotations

import os

from opentelemetry import trace
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

import sm_tracing

# Exports over OTLP/HTTP to OTEL_EXPORTER_OTLP_ENDPOINT (default http://localhost:4318).
sm_tracing.configure(os.environ.get("OTEL_SERVICE_NAME") or "bidi-model")
tracer = trace.get_tracer(__name__)

MODES = {"upper": str.upper, "lower": str.lower, "reverse": lambda text: text[::-1]}


async def ping(request: Request) -> Response:
    return Response(status_code=200)


async def session(websocket: WebSocket) -> None:
    # The caller's own parameters, e.g. {"model": "demo", "mode": "reverse"}: the middleware
    # has taken its traceparent out.
    params = dict(websocket.query_params)
    transform = MODES.get(params.get("mode", "upper"), str.upper)
    await websocket.accept()
    try:
        while True:
            text = await websocket.receive_text()
            if text == "bye":
                await websocket.close()
                return
            # A child of the session span, itself a child of the caller's stream span.
            with tracer.start_as_current_span("transform"):
                answer = transform(text)
            await websocket.send_json({"text": answer, "params": params})
    except WebSocketDisconnect:
        pass  # the caller ended its request stream: the session is over


api = Starlette(
    routes=[
        Route("/ping", ping),
        WebSocketRoute("/invocations-bidirectional-stream", session),
    ]
)
# The middleware wraps the whole app: on the WebSocket path it reads the trace context from the
# query string and makes the session one SERVER span, with the messages counted each way.
app = sm_tracing.ASGIMiddleware(api)
