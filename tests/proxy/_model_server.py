"""A model server that continues traces from a ``traceparent`` header, as TGI and vLLM do: a
FastAPI app traced by OpenTelemetry's own FastAPI instrumentation, exporting as
:func:`sm_tracing.configure` sets up from the ``OTEL_*`` variables. It has no ``/invocations``:
the proxy maps that route to ``/generate``.

Every answer says what the server was given (the request id from the body, the headers that
matter to the tests, the span it ran under), so a test can tell each caller's request apart.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

import sm_tracing

sm_tracing.configure()
_tracer = trace.get_tracer("model-server")
# Seen by the tests: what the proxy forwarded.
_SHOWN = ("traceparent", "tracestate", "baggage", "x-amzn-sagemaker-custom-attributes")


def _app() -> FastAPI:
    # FastAPI's own built-in tracing, where there is one, would trace each request a second
    # time: this server traces as servers that read only ``traceparent`` do.
    if "telemetry" in inspect.signature(FastAPI).parameters:
        return FastAPI(telemetry={"tracing": False})
    return FastAPI()


app = _app()


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/ping")
async def ping() -> dict[str, str]:
    # What the tests wait for before calling; the proxy's /ping asks /health first.
    return {"status": "pong"}


def _seen(request: Request, body: dict[str, Any]) -> dict[str, Any]:
    span = trace.get_current_span().get_span_context()
    return {
        "id": body.get("id"),
        "headers": {name: request.headers.get(name) for name in _SHOWN},
        "trace_id": f"{span.trace_id:032x}",
        "span_id": f"{span.span_id:016x}",
        "pid": os.getpid(),
    }


@app.post("/generate")
async def generate(request: Request) -> Any:
    body = await request.json()
    with _tracer.start_as_current_span("generate") as span:
        span.set_attribute("request.id", str(body.get("id")))
        seen = _seen(request, body)
        if body.get("delay"):
            await asyncio.sleep(float(body["delay"]))
        if not body.get("stream"):
            return JSONResponse(seen, headers={"X-Amzn-SageMaker-Custom-Attributes": "page=2"})
        chunks = int(body.get("chunks", 5))
        interval = float(body.get("interval", 0.01))
        die_after = body.get("die_after")

    async def events() -> AsyncIterator[bytes]:
        with _tracer.start_as_current_span("generate_stream") as stream_span:
            stream_span.set_attribute("request.id", str(body.get("id")))
            yield f"data: {json.dumps(seen)}\n\n".encode()
            for index in range(chunks):
                if die_after is not None and index == int(die_after):
                    os._exit(3)  # the server dies mid-stream
                await asyncio.sleep(interval)
                yield f'data: {{"token": {index}}}\n\n'.encode()

    return StreamingResponse(events(), media_type="text/event-stream")


@app.post("/models/{name}/invoke")
async def model(name: str, request: Request) -> Any:
    body = await request.json()
    seen = _seen(request, body)
    seen["model"] = name
    seen["target_model"] = request.headers.get("x-amzn-sagemaker-target-model")
    return seen


FastAPIInstrumentor.instrument_app(app)
