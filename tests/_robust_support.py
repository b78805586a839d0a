"""Support for the fault, concurrency, load and shutdown tests.

- Model containers served in their own processes: a Flask app under gunicorn (several workers,
  ``--preload`` when asked) and a FastAPI app under uvicorn, both traced by the middleware and
  exporting with :func:`sm_tracing.configure` to the ``OTEL_*`` endpoint they are given. Each
  answers ``POST /invocations`` with the request id it was sent and records it on a ``predict``
  span under the container span, so a test can match every container span to its caller.
- An OTLP receiver that runs in a process of its own (``python -m tests._robust_support``),
  for the load test, so the spans it keeps do not count in the client process's memory.
- Faulty parts: a propagator, tracer providers and exporters that raise, fail or hang.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opentelemetry import trace as trace_api
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.trace import ReadableSpan, Tracer, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from tests._container_support import HEADER
from tests._serving import ROOT, Container, launch, otlp_env

if TYPE_CHECKING:
    from fastapi import FastAPI
    from flask import Flask

CONTAINER_SPAN = "POST /invocations"
PREDICT_SPAN = "predict"
REQUEST_ID = "request.id"


# -- the container apps, imported by gunicorn and uvicorn in their own processes ---------------


def _answer(payload: dict[str, Any], custom_attributes: str | None) -> dict[str, Any]:
    return {"id": payload.get("id"), "pid": os.getpid(), "custom_attributes": custom_attributes}


def create_flask_app() -> Flask:
    """A Flask container: tracing configured from ``OTEL_*``, then the traced app."""
    from flask import Flask, Response, request
    from opentelemetry import trace

    import sm_tracing

    sm_tracing.configure()
    tracer = trace.get_tracer("tests.robust")
    app = Flask("robust")

    @app.get("/ping")
    def ping() -> Response:
        return Response("", status=200)

    @app.post("/invocations")
    def invocations() -> Response:
        payload: dict[str, Any] = json.loads(request.get_data() or b"{}")
        with tracer.start_as_current_span(PREDICT_SPAN, attributes={REQUEST_ID: payload["id"]}):
            time.sleep(float(payload.get("delay", 0)))
        body = _answer(payload, request.headers.get(HEADER))
        return Response(json.dumps(body), mimetype="application/json")

    app.wsgi_app = sm_tracing.WSGIMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    return app


def create_asgi_app() -> Any:
    """A FastAPI container: tracing configured from ``OTEL_*``, then the traced app."""
    import asyncio

    from fastapi import FastAPI, Request, Response
    from fastapi.responses import JSONResponse
    from opentelemetry import trace

    import sm_tracing

    sm_tracing.configure()
    tracer = trace.get_tracer("tests.robust")
    # FastAPI's own request span would stand between ours and the handler's spans.
    api: FastAPI = FastAPI(telemetry={"tracing": False})

    async def ping(request: Request) -> Response:
        return Response(status_code=200)

    async def invocations(request: Request) -> Response:
        payload: dict[str, Any] = await request.json()
        with tracer.start_as_current_span(PREDICT_SPAN, attributes={REQUEST_ID: payload["id"]}):
            # Yields to the loop, so requests interleave inside their container spans.
            await asyncio.sleep(float(payload.get("delay", 0)))
        return JSONResponse(_answer(payload, request.headers.get(HEADER)))

    # Plain routes: FastAPI's parameter injection would need these annotations at module level.
    api.router.add_route("/ping", ping, methods=["GET"])
    api.router.add_route("/invocations", invocations, methods=["POST"])
    return sm_tracing.ASGIMiddleware(api)


# -- container processes -----------------------------------------------------------------------

APPS = {
    "gunicorn": "tests._robust_support:create_flask_app()",
    "uvicorn": "tests._robust_support:create_asgi_app()",
}


def serve(
    stack: str,
    name: str,
    traces_url: str,
    logs: Path,
    *,
    workers: int = 2,
    preload: bool = True,
    schedule_delay_ms: int = 50,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Container:
    """Start the app above under *stack* (``"gunicorn"`` or ``"uvicorn"``), exporting its spans
    over OTLP to *traces_url* in batches every *schedule_delay_ms*; *args* are more gunicorn
    options, *env* more variables."""
    environ = {**otlp_env(name, traces_url, schedule_delay_ms), **(env or {})}
    return launch(
        stack, APPS[stack], name, logs, env=environ, workers=workers, preload=preload, args=args
    )


def rss_bytes() -> int:
    """This process's resident memory."""
    import psutil

    return int(psutil.Process().memory_info().rss)


# -- an OTLP receiver in a process of its own --------------------------------------------------


class CountingReceiver:
    """An OTLP/HTTP receiver run as ``python -m tests._robust_support``, in its own process.

    ``stats()`` asks it for a summary of what it received: spans per (service, name), how many
    container spans have a received client span as parent, and how many ``predict`` spans sit
    under a container span.
    """

    def __init__(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests._robust_support"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        self.traces_url = self._process.stdout.readline().strip()
        if not self.traces_url.startswith("http://"):
            raise RuntimeError(f"the receiver did not start: {self.traces_url!r}")
        self._lock = threading.Lock()

    def stats(self) -> dict[str, Any]:
        """The receiver's summary of every span received so far."""
        process = self._process
        assert process.stdin is not None and process.stdout is not None
        with self._lock:
            process.stdin.write("stats\n")
            process.stdin.flush()
            result: dict[str, Any] = json.loads(process.stdout.readline())
            return result

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any]:
        """The summary once *predicate* holds for it, or the last one after *timeout* s."""
        deadline = time.monotonic() + timeout
        stats = self.stats()
        while not predicate(stats) and time.monotonic() < deadline:
            time.sleep(0.2)
            stats = self.stats()
        return stats

    def close(self) -> None:
        """Stop the receiver process."""
        process = self._process
        if process.poll() is None:
            assert process.stdin is not None
            with contextlib.suppress(OSError):
                process.stdin.close()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> CountingReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _run_receiver() -> None:
    from tests._otlp_receiver import OTLPReceiver

    with OTLPReceiver() as receiver:
        print(receiver.traces_url, flush=True)
        for line in sys.stdin:
            if line.strip() != "stats":
                continue
            spans = receiver.spans
            counts: dict[str, int] = {}
            client_ids = set()
            container_ids = set()
            for span in spans:
                key = f"{span.service}|{span.name}"
                counts[key] = counts.get(key, 0) + 1
                if span.kind == "client":
                    client_ids.add(span.span_id)
                elif span.name == CONTAINER_SPAN:
                    container_ids.add(span.span_id)
            containers = [s for s in spans if s.name == CONTAINER_SPAN]
            predicts = [s for s in spans if s.name == PREDICT_SPAN]
            summary = {
                "spans": len(spans),
                "counts": counts,
                "distinct_span_ids": len({s.span_id for s in spans}),
                "client_spans": len(client_ids),
                "container_spans": len(containers),
                "containers_under_a_client_span": sum(
                    1 for s in containers if s.parent_id in client_ids
                ),
                "predict_spans": len(predicts),
                "predicts_under_a_container_span": sum(
                    1 for s in predicts if s.parent_id in container_ids
                ),
            }
            print(json.dumps(summary), flush=True)


# -- faulty parts ------------------------------------------------------------------------------


class Boom(RuntimeError):
    """The failure every faulty part raises."""


class RaisingPropagator(TextMapPropagator):
    """A propagator whose inject and extract raise; ``fields`` raises too, or, given *fields*,
    lists them as a working propagator does."""

    def __init__(self, fields: set[str] | None = None) -> None:
        self._fields = fields

    def inject(self, carrier: object, context: object = None, setter: object = None) -> None:
        raise Boom("inject")

    def extract(self, carrier: object, context: object = None, getter: object = None) -> Context:
        raise Boom("extract")

    @property
    def fields(self) -> set[str]:
        if self._fields is None:
            raise Boom("fields")
        return self._fields


class RaisingTracerProvider(TracerProvider):
    """An SDK provider whose ``get_tracer`` raises."""

    def get_tracer(self, *args: Any, **kwargs: Any) -> Tracer:
        raise Boom("get_tracer")


class _RaisingTracer(trace_api.Tracer):
    def start_span(self, *args: Any, **kwargs: Any) -> trace_api.Span:
        raise Boom("start_span")

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        raise Boom("start_as_current_span")


class RaisingSpanTracerProvider(TracerProvider):
    """An SDK provider whose tracers raise in ``start_span`` and ``start_as_current_span``."""

    def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
        return _RaisingTracer()


class FailingExporter(SpanExporter):
    """An exporter that returns FAILURE, or raises when *raises* is set; counts its calls."""

    def __init__(self, *, raises: bool = False) -> None:
        self.raises = raises
        self.calls = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.calls += 1
        if self.raises:
            raise Boom("export")
        return SpanExportResult.FAILURE


class HangingExporter(SpanExporter):
    """An exporter whose ``export`` blocks until ``release()`` (or *hang* seconds), as one
    stuck on a collector that accepts connections and never answers."""

    def __init__(self, hang: float = 60.0) -> None:
        self.hang = hang
        self.released = threading.Event()
        self.entered = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.entered.set()
        self.released.wait(self.hang)
        return SpanExportResult.FAILURE

    def release(self) -> None:
        """Let every blocked and later export return at once."""
        self.released.set()

    def shutdown(self) -> None:
        self.release()


if __name__ == "__main__":
    _run_receiver()
