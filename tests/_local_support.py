"""A tiny model container on a loopback thread, plain boto3 clients, and a launcher of container
processes for transform jobs, for LocalRuntime tests.

The container is an ``http.server`` speaking HTTP/1.1 with keep-alive, like the serving stacks
behind SageMaker: a fixed-size answer gets a Content-Length, an iterable one is sent chunked,
one chunk at a time, and an iterable that raises cuts the connection mid-body. It records
what reached it, so tests can check what the runtime forwards, and answers with whatever
handler the test installs.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from sm_tracing.local import LocalTransformJob
from tests._serving import ROOT, Container, launch, stop


@dataclass(frozen=True)
class Seen:
    """One request as the container received it."""

    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    port: int  # the runtime's side of the connection it came on


@dataclass
class Reply:
    """What the container answers: a body (bytes, or chunks to stream), status and headers."""

    body: bytes | Iterable[bytes]
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None


Handler = Callable[[Seen], Reply]


def echo(seen: Seen) -> Reply:
    """Answer with the body upper-cased, as ``application/x-echo``."""
    return Reply(seen.body.upper(), content_type="application/x-echo")


class _ContainerHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _ContainerServer

    def do_GET(self) -> None:
        """``/ping``, and ``/execution-parameters`` when the test gives some."""
        suggested = self.server.container.execution_parameters
        if self.path == "/ping":
            body = b""
        elif self.path == "/execution-parameters" and suggested is not None:
            body = json.dumps(suggested).encode()
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        container = self.server.container
        if self.path != "/invocations" and not (
            self.path.startswith("/models/") and self.path.endswith("/invoke")
        ):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        seen = Seen(
            self.path,
            {name.lower(): value for name, value in self.headers.items()},
            body,
            self.client_address[1],
        )
        container.record(seen)
        reply = container.handler(seen)
        self.send_response(reply.status)
        if reply.content_type:
            self.send_header("Content-Type", reply.content_type)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if isinstance(reply.body, bytes):
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for chunk in reply.body:
                self.wfile.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        except Exception:
            # A model that fails mid-stream: the connection ends without the last chunk.
            self.close_connection = True
            return
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ContainerServer(ThreadingHTTPServer):
    def __init__(self, container: ModelContainer) -> None:
        self.container = container
        super().__init__(("127.0.0.1", 0), _ContainerHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the runtime cut a connection on close: expected in some tests


class ModelContainer:
    """A model container answering ``/invocations`` and ``/models/<name>/invoke``, ``GET /ping``
    and, when ``execution_parameters`` is set, ``GET /execution-parameters``."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.handler: Handler = echo
        self.execution_parameters: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._server = _ContainerServer(self)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    def __enter__(self) -> ModelContainer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def runtime_client(url: str, service: str = "sagemaker-runtime", **config: Any) -> Any:
    """A plain boto3 client of *service* (``sagemaker-runtime``, or ``sagemaker`` for batch
    transform) for *url*, with fake credentials."""
    return boto3.session.Session().client(
        service,
        region_name="us-east-1",
        endpoint_url=url,
        aws_access_key_id="AKIDLOCAL",
        aws_secret_access_key="local-secret",
        config=Config(retries={"total_max_attempts": 1}, **config),
    )


class TransformContainers:
    """A ``LocalRuntime(transform_container=...)`` launcher: each transform job's container is
    *app* under *stack* (``"gunicorn"`` or ``"uvicorn"``, started by :func:`tests._serving.launch`
    from *cwd*), with the job's environment over *env*, as SageMaker starts a batch container,
    and stopped when the job ends. ``containers`` keeps every one started."""

    def __init__(
        self,
        stack: str,
        app: str,
        logs: Path,
        *,
        cwd: Path = ROOT,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.stack = stack
        self.app = app
        self.logs = logs
        self.cwd = cwd
        self.env = dict(env or {})
        self.containers: list[Container] = []

    @contextmanager
    def __call__(self, job: LocalTransformJob) -> Iterator[str]:
        env = {**self.env, **job.environment}
        container = launch(self.stack, self.app, job.name, self.logs, env=env, cwd=self.cwd)
        self.containers.append(container)
        try:
            yield container.url
        finally:
            stop(container)


def put(root: Path, key: str, data: bytes) -> None:
    """Store *data* as the object *key* of a LocalRuntime whose ``s3_root`` is ``root/s3``."""
    path = root / "s3" / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# The serving half of a model app for a transform job's container process: ``_wsgi`` (for
# gunicorn) and ``_asgi`` (for uvicorn) answer every request with ``answer(path, body)``, which
# the code put before this defines.
SERVING_APPS = """

def _wsgi(environ, start_response):
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    data = answer(environ["PATH_INFO"], body)
    start_response("200 OK", [("Content-Length", str(len(data)))])
    return [data]


async def _asgi(scope, receive, send):
    if scope["type"] != "http":
        return
    body, more = b"", True
    while more:
        message = await receive()
        body, more = body + message.get("body", b""), message.get("more_body", False)
    data = answer(scope["path"], body)
    headers = [(b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": data})

"""


def streaming(parts: list[bytes], gate: threading.Event | None = None) -> Handler:
    """A handler streaming *parts*; with a *gate*, the second part waits for it (5 s at most)."""

    def handler(seen: Seen) -> Reply:
        def body() -> Iterator[bytes]:
            yield parts[0]
            if gate is not None:
                yield parts[1] if gate.wait(5) else b"late"
                return
            yield from parts[1:]

        return Reply(
            body(),
            content_type="application/jsonlines",
            headers={"X-Amzn-SageMaker-Custom-Attributes": "x-next-token=2"},
        )

    return handler
