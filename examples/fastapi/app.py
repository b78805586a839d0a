"""A FastAPI model container whose invocations join the caller's trace.

Run it (port 8080, as SageMaker expects):

    OTEL_SERVICE_NAME=fastapi-model uvicorn app:app --host 0.0.0.0 --port 8080

POST /invocations takes ``{"inputs": "...", "stream": false, "chunks": 3, "delay": 0.05}``;
with ``"stream": true`` the answer is streamed in ``chunks`` lines, as for
InvokeEndpointWithResponseStream. The CustomAttributes the caller sent (without the trace
context, which the middleware takes out) are sent back in the response.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from opentelemetry import trace

import sm_tracing

# Exports over OTLP/HTTP to OTEL_EXPORTER_OTLP_ENDPOINT (default http://localhost:4318).
sm_tracing.configure(os.environ.get("OTEL_SERVICE_NAME") or "fastapi-model")
tracer = trace.get_tracer(__name__)
HEADER = "X-Amzn-SageMaker-Custom-Attributes"

# FastAPI's own request span reads the trace context only from a traceparent HTTP header,
# which SageMaker strips: the middleware below tells it to stand aside for the requests it
# traces (and for /ping), so each invocation is one trace with the container span at its top.
# To keep FastAPI's spans as well, as children of the container span, build the middleware
# with inject_headers=True (or set SM_TRACING_INJECT_HEADERS=true).
api = FastAPI()


@api.get("/ping")
async def ping() -> Response:
    return Response(status_code=200)


@api.post("/invocations")
async def invocations(request: Request) -> Response:
    # What the caller set, e.g. "accept_eula=true"; our traceparent is already taken out.
    custom_attributes = request.headers.get(HEADER)
    headers = {HEADER: custom_attributes} if custom_attributes else {}
    payload = await request.json()
    text = str(payload.get("inputs", ""))
    chunks = int(payload.get("chunks", 3))
    delay = float(payload.get("delay", 0.05))

    if payload.get("stream"):

        async def generate() -> AsyncIterator[bytes]:
            # Still inside the container span: it ends with the last chunk.
            with tracer.start_as_current_span("generate"):
                for index in range(chunks):
                    await asyncio.sleep(delay)
                    yield f"{text} {index + 1}/{chunks}\n".encode()

        return StreamingResponse(generate(), media_type="text/plain", headers=headers)

    with tracer.start_as_current_span("predict"):
        await asyncio.sleep(delay)
        outputs = text.upper()
    return JSONResponse(
        {"outputs": outputs, "custom_attributes": custom_attributes}, headers=headers
    )


# The middleware wraps the whole app: it reads the trace context from CustomAttributes,
# starts the container span and echoes it back in the response.
app = sm_tracing.ASGIMiddleware(api)
