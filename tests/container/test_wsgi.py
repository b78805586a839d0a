"""What only WSGIMiddleware does: a WSGI app driven step by step as a server drives it, its
body streamed, closed early or failing, and its header list left as it was. The cases both
middlewares share are in test_middleware.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from _container_support import HEADER, caller, echoed
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode, Tracer

from sm_tracing import WSGIMiddleware


class _ModelError(Exception):
    pass


class _Server:
    """Drives a WSGI app as a server does, one step at a time."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None):  # type: ignore[no-untyped-def]
        self.status = status
        self.headers = headers
        return lambda data: None

    def call(self, custom_attributes: str | None = None) -> Any:
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/invocations"}
        if custom_attributes is not None:
            environ["HTTP_X_AMZN_SAGEMAKER_CUSTOM_ATTRIBUTES"] = custom_attributes
        return self.app(environ, self.start_response)


def _streaming_app(events: list[str]) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body() -> Iterator[bytes]:
            try:
                for index in range(3):
                    events.append(f"{trace.get_current_span().get_span_context().span_id:016x}")
                    yield f"chunk {index}\n".encode()
            finally:
                events.append("closed")

        return body()

    return app


def test_a_streamed_body_is_traced_to_its_last_chunk(
    tracer: Tracer, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """The span ends when the body is exhausted, not when the app returns; the span is current
    while the body produces each chunk; the status line and the echo reach the server with the
    first chunk, as the headers leave with it."""
    value, parent = caller(tracer, clear=exporter)
    events: list[str] = []
    server = _Server(WSGIMiddleware(_streaming_app(events), tracer_provider=tracer_provider))
    body = server.call(value)
    assert exporter.get_finished_spans() == ()
    assert server.status is None
    produced = iter(body)
    first = next(produced)
    assert server.status == "200 OK"
    echo = dict(server.headers)[HEADER]
    chunks = [first, *produced]
    (span,) = exporter.get_finished_spans()
    body.close()
    assert len(exporter.get_finished_spans()) == 1
    assert chunks == [b"chunk 0\n", b"chunk 1\n", b"chunk 2\n"]
    assert events == [f"{span.context.span_id:016x}"] * 3 + ["closed"]
    assert echoed(echo).span_id == span.context.span_id
    assert span.parent is not None and span.parent.span_id == parent.span_id
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_a_client_that_goes_away_ends_the_span_on_close(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A server that stops iterating and calls close() ends the span, without an error."""
    events: list[str] = []
    server = _Server(WSGIMiddleware(_streaming_app(events), tracer_provider=tracer_provider))
    body = server.call()
    assert next(iter(body)) == b"chunk 0\n"
    assert exporter.get_finished_spans() == ()
    body.close()
    (span,) = exporter.get_finished_spans()
    assert events[-1] == "closed"
    assert span.status.status_code is StatusCode.UNSET


def test_an_error_while_streaming_is_recorded_and_propagates(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A body that raises mid-stream ends the span with ERROR and the same exception."""
    error = _ModelError("mid-stream")

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"first"
        raise error

    server = _Server(WSGIMiddleware(app, tracer_provider=tracer_provider))
    body = server.call()
    with pytest.raises(_ModelError) as raised:
        list(body)
    assert raised.value is error
    body.close()
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR


def test_the_apps_header_list_is_not_mutated(tracer_provider: TracerProvider) -> None:
    """An app that reuses one header list between responses gets it back unchanged."""
    shared = [("Content-Type", "application/json")]

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", shared)
        return [b"{}"]

    server = _Server(WSGIMiddleware(app, tracer_provider=tracer_provider))
    for _ in range(2):
        server.call()
        assert [name for name, _ in server.headers] == ["Content-Type", HEADER]
    assert shared == [("Content-Type", "application/json")]
