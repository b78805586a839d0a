"""A tiny model container on a loopback thread, plain boto3 clients, a launcher of container
processes for transform jobs, for LocalRuntime tests; and ``sm-tracing local`` run as a process.

The container is an ``http.server`` speaking HTTP/1.1 with keep-alive, like the serving stacks
behind SageMaker: a fixed-size answer gets a Content-Length, an iterable one is sent chunked,
one chunk at a time, and an iterable that raises cuts the connection mid-body. It records
what reached it, so tests can check what the runtime forwards, and answers with whatever
handler the test installs.
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from sm_tracing.local import LocalTransformJob
from tests._client_support import ServedInThread
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


class ModelContainer(ServedInThread):
    """A model container answering ``/invocations`` and ``/models/<name>/invoke``, ``GET /ping``
    and, when ``execution_parameters`` is set, ``GET /execution-parameters``; served while
    entered."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.handler: Handler = echo
        self.execution_parameters: dict[str, Any] | None = None
        self._lock = threading.Lock()
        server = _ContainerServer(self)
        super().__init__(server)
        self.url = f"http://127.0.0.1:{server.server_address[1]}"

    def record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)


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


# The console script installed beside this interpreter, as a user runs it.
SM_TRACING = Path(sys.executable).with_name("sm-tracing")


def clean_environment(**more: str) -> dict[str, str]:
    """This environment without AWS or OpenTelemetry settings, as on a fresh machine (AWS
    configuration files pointed away), plus *more*."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "OTEL_", "SM_TRACING_"))
    }
    env.update(
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
        PYTHONUNBUFFERED="1",
    )
    env.update(more)
    return env


class LocalCommand:
    """``sm-tracing local`` (or *argv*, a command line that runs it) in a process of its own,
    its output read as it comes: ``banner`` is what it prints before the first call, ``exports``
    the variables its ``export`` lines set, ``line(...)`` waits for a line of a call."""

    def __init__(
        self, *args: str, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
    ) -> None:
        command = [str(SM_TRACING), "local", *args] if argv is None else list(argv)
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=dict(clean_environment() if env is None else env),
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.banner = self._until(lambda line: line.endswith("Ctrl-C stops."), 30.0)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _until(self, wanted: Callable[[str], bool], timeout: float) -> list[str]:
        """The lines read up to the first *wanted* one, included."""
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"waited {timeout} s in vain; got {seen}") from None
            if line is None:
                raise AssertionError(f"it ended ({self.process.wait()}): {seen}\n{self.stderr()}")
            self.lines.append(line)
            seen.append(line)
            if wanted(line):
                return seen

    def line(self, *parts: str, timeout: float = 30.0) -> str:
        """The next line that holds every one of *parts*."""
        return self._until(lambda line: all(part in line for part in parts), timeout)[-1]

    @property
    def exports(self) -> dict[str, str]:
        """The variables the banner's ``export`` lines set."""
        found = {}
        for line in self.banner:
            if line.startswith("export "):
                name, _, value = shlex.split(line)[1].partition("=")
                found[name] = value
        return found

    @property
    def url(self) -> str:
        return self.exports["AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"]

    def stderr(self) -> str:
        """What it wrote on stderr; only once it has ended."""
        assert self.process.stderr is not None
        return self.process.stderr.read() if self.process.poll() is not None else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send *sig* and wait for it to end (killed if it does not); its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(5)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return self.process.returncode

    def __enter__(self) -> LocalCommand:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
