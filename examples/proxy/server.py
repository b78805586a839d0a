"""A model server that continues traces from a ``traceparent`` header and nothing else, as
Text Generation Inference and vLLM do: a FastAPI app traced by OpenTelemetry's FastAPI
instrumentation. It has ``/generate`` (JSON, or server-sent events with ``"stream": true``)
and ``/health``, no ``/invocations``: ``sm-tracing proxy --invocations-path /generate`` maps it.

    uvicorn server:app --port 8081
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

import sm_tracing

# Any OpenTelemetry SDK set-up does; this one reads the OTEL_* variables, as TGI's
# --otlp-endpoint or vLLM's OTLP options would.
sm_tracing.configure("model-server")
tracer = trace.get_tracer("example.model_server")

# FastAPI's built-in tracing, where the installed FastAPI has it, is off: this server traces
# the way servers that only read traceparent do, through the instrumentation.
app = (
    FastAPI(telemetry={"tracing": False})
    if "telemetry" in inspect.signature(FastAPI).parameters
    else FastAPI()
)
WORDS = ("Traces", " cross", " the", " endpoint", " now", ".")


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/generate")
async def generate(request: Request) -> Any:
    body = await request.json()
    if not body.get("stream"):
        with tracer.start_as_current_span("generate"):
            return {"generated_text": "".join(WORDS)}

    async def tokens() -> AsyncIterator[bytes]:
        with tracer.start_as_current_span("generate_stream"):
            for index, word in enumerate(WORDS):
                await asyncio.sleep(0.02)
                yield f'data: {{"token": {{"id": {index}, "text": "{word}"}}}}\n\n'.encode()

    return StreamingResponse(tokens(), media_type="text/event-stream")


FastAPIInstrumentor.instrument_app(app)
