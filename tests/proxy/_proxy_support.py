"""The proxy in a process of its own, in front of model servers on loopback, as a container
runs it; and the upstream servers the wire tests need to see exactly what reaches a server."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests._client_support import serving_in_thread
from tests._serving import ROOT, Container, closed_port

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment less any ``OTEL_*``/``SM_TRACING_*`` variable, the project importable,
    plus *env*; with no exporter unless *env* names one."""
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OTEL_", "SM_TRACING_"))
    }
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environ.get("PYTHONPATH")]))
    environ.update(OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none")
    environ.update(env or {})
    return environ


def start_proxy(
    upstream: str,
    logs: Path,
    name: str = "proxy",
    *,
    args: Sequence[str] = (),
    command: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Container:
    """``python -m sm_tracing.container._proxy --upstream <upstream>`` on a loopback port, with
    *args*, and *command* after ``--``; its output in ``logs/<name>.log``."""
    port = closed_port()
    argv = [
        sys.executable, "-m", "sm_tracing.container._proxy", "--upstream", upstream,
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *args,
        *(["--", *command] if command else []),
    ]  # fmt: skip
    log = logs / f"{name}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            argv, env=environment(env), cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT
        )
    return Container(name, process, f"http://127.0.0.1:{port}", log)


def wait_listening(container: Container, timeout: float = 30.0) -> None:
    """Wait until *container* accepts connections (whatever ``/ping`` answers)."""
    deadline = time.monotonic() + timeout
    port = int(container.url.rsplit(":", 1)[1])
    while time.monotonic() < deadline:
        if container.process.poll() is not None:
            break
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            connection.request("GET", "/ping")
            connection.getresponse().read()
            connection.close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{container.name} did not listen:\n{container.output()}")


def request(
    url: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Sequence[tuple[str, str]] = (),
    timeout: float = 10.0,
) -> tuple[int, list[tuple[str, str]], bytes]:
    """One request through ``http.client`` (headers sent as spelled, in order); the status,
    the response headers and the body."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        if body is not None:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        connection.close()


@dataclass
class Received:
    """One request as the raw upstream read it: header names as spelled on the wire."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class RawUpstream:
    """An ``http.server`` upstream that records each request with its headers as spelled on the
    wire, and answers with what ``handler`` does (status, headers, body chunks)."""

    handler: Callable[[Received, BaseHTTPRequestHandler], None] | None = None
    received: list[Received] = field(default_factory=list)
    url: str = ""


@contextmanager
def raw_upstream(
    handler: Callable[[Received, BaseHTTPRequestHandler], None] | None = None,
    read_body: bool = True,
) -> Iterator[RawUpstream]:
    """A :class:`RawUpstream` serving on loopback for the ``with`` block. With *read_body*
    false, *handler* reads the body itself (``Received.body`` stays empty)."""
    upstream = RawUpstream(handler)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _any(self) -> None:
            body = b""
            if read_body:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = read_chunked(self.rfile)
                else:
                    body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen = Received(self.command, self.path, list(self.headers.items()), body)
            upstream.received.append(seen)
            if upstream.handler is not None:
                upstream.handler(seen, self)
                return
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        do_GET = do_POST = do_PUT = _any

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    with serving_in_thread(server) as url:
        upstream.url = url
        yield upstream


def read_chunked(stream: Any, on_chunk: Callable[[bytes], None] | None = None) -> bytes:
    """A chunked body read from *stream* to its end; *on_chunk* told of each chunk."""
    body = b""
    while True:
        size = int(stream.readline().split(b";")[0], 16)
        if size == 0:
            stream.readline()
            return body
        chunk = stream.read(size)
        stream.readline()
        body += chunk
        if on_chunk is not None:
            on_chunk(chunk)


def write_chunk(handler: BaseHTTPRequestHandler, data: bytes) -> None:
    """One chunk of a chunked response body, flushed."""
    handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    handler.wfile.flush()
