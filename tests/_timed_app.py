"""A model container whose timing is known, behind sm_tracing's middleware: ``wsgi`` for
gunicorn, ``asgi`` for uvicorn. ``/invocations`` answers after DELAY seconds; asked with the
body ``stream`` it streams CHUNKS parts instead, the first at once and then GAP seconds apart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

from opentelemetry.sdk.trace import TracerProvider

from sm_tracing import ASGIMiddleware, WSGIMiddleware

DELAY = 0.2
GAP = 0.1
CHUNKS = 3

# The container's spans are recorded (so it echoes them) and exported nowhere. A provider of
# its own, not the global one: the tests import this module for its constants.
PROVIDER = TracerProvider()


def _wsgi(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    if environ.get("PATH_INFO") == "/ping":
        start_response("200 OK", [("Content-Length", "0")])
        return iter([b""])
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if environ["wsgi.input"].read(length) == b"stream":
        start_response("200 OK", [("Content-Type", "application/jsonlines")])
        return _parts()
    time.sleep(DELAY)
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "2")])
    return iter([b"{}"])


def _parts() -> Iterator[bytes]:
    for index in range(CHUNKS):
        if index:
            time.sleep(GAP)
        yield b'{"token": %d}\n' % index


async def _asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/ping":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    if body == b"stream":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/jsonlines")],
            }
        )
        for index in range(CHUNKS):
            if index:
                await asyncio.sleep(GAP)
            part = b'{"token": %d}\n' % index
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    await asyncio.sleep(DELAY)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": b"{}"})


wsgi = WSGIMiddleware(_wsgi, tracer_provider=PROVIDER)
asgi = ASGIMiddleware(_asgi, tracer_provider=PROVIDER)
