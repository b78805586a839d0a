"""Bidirectional streams end to end: a WebSocket model container under real uvicorn (in a thread
of this process, so its spans reach the test's exporter), sm_tracing's local bidirectional
runtime in front of it, and a real ``aws-sdk-sagemaker-runtime-http2`` client on the SDK's CRT
transport, full duplex over HTTP/2 and TLS.

Import it only after ``pytest.importorskip("aws_sdk_sagemaker_runtime_http2")``: the SDK needs
Python 3.12.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import uvicorn
from aws_sdk_sagemaker_runtime_http2.client import AsyncSageMakerRuntimeHTTP2Client
from aws_sdk_sagemaker_runtime_http2.config import AsyncSageMakerRuntimeHTTP2Config
from aws_sdk_sagemaker_runtime_http2.models import (
    InvokeEndpointWithBidirectionalStreamInput,
    RequestPayloadPart,
    RequestStreamEventPayloadPart,
)
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from sm_tracing import _querystring
from sm_tracing.local import LocalBidiRuntime

Input = InvokeEndpointWithBidirectionalStreamInput
T = TypeVar("T")
_W3C = TraceContextTextMapPropagator()


def part(text: str) -> RequestStreamEventPayloadPart:
    """A UTF-8 request part."""
    return RequestStreamEventPayloadPart(
        value=RequestPayloadPart(bytes_=text.encode(), data_type="UTF8")
    )


def payload(event: Any) -> bytes:
    """The bytes of a response part."""
    return bytes(event.value.bytes_)


@dataclass
class Session:
    """What the container saw of one WebSocket session."""

    path: str
    query: str
    headers: dict[str, str]
    received: list[str | bytes] = field(default_factory=list)


class EchoContainer:
    """A WebSocket model container: it answers each text frame with the text upper-cased and
    each binary frame with the bytes reversed. ``bye`` closes the session normally, ``fail``
    with an error code; with ``refuse`` set it refuses every WebSocket, with ``greeting`` set
    it speaks first, before any frame of the caller's.

    Each session is one SERVER span, a child of the ``traceparent`` in its query string, made
    the way a container reads it (the query string is all that reaches it).
    """

    def __init__(
        self, tracer_provider: TracerProvider, *, refuse: bool = False, greeting: str | None = None
    ) -> None:
        self.tracer = tracer_provider.get_tracer("container")
        self.refuse = refuse
        self.greeting = greeting
        self.sessions: list[Session] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        query = scope["query_string"].decode("latin-1")
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        session = Session(scope["path"], query, headers)
        self.sessions.append(session)
        pairs = _querystring.read(query, lambda key: key in ("traceparent", "tracestate")).pairs
        parent = _W3C.extract(pairs, context=Context())
        with self.tracer.start_as_current_span(
            "websocket session", context=parent, kind=SpanKind.SERVER
        ):
            await receive()  # websocket.connect
            if self.refuse:
                await send({"type": "websocket.close", "code": 1008})
                return
            await send({"type": "websocket.accept"})
            if self.greeting is not None:
                await send({"type": "websocket.send", "text": self.greeting})
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return
                text, data = message.get("text"), message.get("bytes")
                session.received.append(text if text is not None else data)
                if text == "bye":
                    await send({"type": "websocket.close", "code": 1000})
                    return
                if text == "fail":
                    await send({"type": "websocket.close", "code": 1011})
                    return
                if text is not None:
                    await send({"type": "websocket.send", "text": text.upper()})
                else:
                    await send({"type": "websocket.send", "bytes": bytes(data)[::-1]})


@contextmanager
def serve_container(app: EchoContainer) -> Iterator[str]:
    """Serve *app* under uvicorn in a thread; yields its ``ws://`` base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", ws_ping_interval=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"ws://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@contextmanager
def bidi_stack(
    tracer_provider: TracerProvider, **options: Any
) -> Iterator[tuple[EchoContainer, LocalBidiRuntime]]:
    """The container (made with *options*) under uvicorn and the local runtime in front of it."""
    container = EchoContainer(tracer_provider, **options)
    with serve_container(container) as url, LocalBidiRuntime(url) as runtime:
        yield container, runtime


async def make_client(runtime: LocalBidiRuntime) -> AsyncSageMakerRuntimeHTTP2Client:
    """A real client of the bidirectional API, pointed at *runtime*."""
    config = await AsyncSageMakerRuntimeHTTP2Config.resolve(
        endpoint_uri=runtime.url,
        region="us-east-1",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="secret",
        transport=runtime.transport(),
    )
    return AsyncSageMakerRuntimeHTTP2Client(config=config)


def with_client(
    runtime: LocalBidiRuntime,
    scenario: Callable[[AsyncSageMakerRuntimeHTTP2Client], Awaitable[T]],
) -> T:
    """Run *scenario* on a new event loop with a client of *runtime*, closed after it; what
    *scenario* returns."""

    async def main() -> T:
        client = await make_client(runtime)
        try:
            return await scenario(client)
        finally:
            await client.close()

    return asyncio.run(main())
