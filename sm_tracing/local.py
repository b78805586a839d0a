"""A local SageMaker runtime: the InvokeEndpoint API on loopback, in front of a model container.

:class:`LocalRuntime` behaves like the SageMaker front door where tracing can tell the
difference: only the headers SageMaker forwards reach the container (a ``traceparent`` HTTP
header does not), CustomAttributes pass both ways verbatim, container failures come back as
``ModelError`` (424), InvokeEndpointWithResponseStream is a real AWS event stream relayed as
the container produces it, and InvokeEndpointAsync answers 202 and runs in the background,
writing the result under an output location. Requests without a SigV4 ``Authorization``
header are refused; signatures are not verified, so any credentials will do.

Standard library only, so it works without any optional extra::

    with LocalRuntime("http://127.0.0.1:8080") as runtime:
        client = boto3.client("sagemaker-runtime", endpoint_url=runtime.url, ...)
        client.invoke_endpoint(EndpointName="any", Body=b"{}")
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import shutil
import socket
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http.client import (
    HTTPConnection,
    HTTPException,
    HTTPResponse,
    HTTPSConnection,
    ImproperConnectionState,
)
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, unquote, urlsplit
from urllib.request import url2pathname

from sm_tracing import _eventstream

__all__ = ["LocalRuntime"]

_logger = logging.getLogger(__name__)

_ACCOUNT = "000000000000"
_CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
_TARGET_MODEL = "X-Amzn-SageMaker-Target-Model"
_TARGET_VARIANT = "X-Amzn-SageMaker-Target-Variant"
_INFERENCE_ID = "X-Amzn-SageMaker-Inference-Id"
# Headers the container may set that SageMaker hands back to the caller.
_RESPONSE_HEADERS = (
    _CUSTOM_ATTRIBUTES,
    "X-Amzn-SageMaker-New-Session-Id",
    "X-Amzn-SageMaker-Closed-Session-Id",
)
_SAGEMAKER_HEADERS = (
    _CUSTOM_ATTRIBUTES,
    _TARGET_MODEL,
    _INFERENCE_ID,
    "X-Amzn-SageMaker-Session-Id",
    _TARGET_VARIANT,
    "X-Amzn-SageMaker-Inference-Component",
    "X-Amzn-SageMaker-Enable-Explanations",
)


def _forwarding(*names: str, **renamed: str) -> dict[str, str]:
    table = {name.lower(): name for name in (*_SAGEMAKER_HEADERS, *names)}
    table.update((source.lower(), target) for target, source in renamed.items())
    return table


# Request header (lower case) -> the name the container receives; everything else is dropped,
# as SageMaker drops every header its API does not define. The streaming and async calls
# carry Accept (and, async, Content-Type) in SageMaker headers of their own.
_INVOKE_FORWARD = _forwarding("Content-Type", "Accept")
_STREAM_FORWARD = _forwarding("Content-Type", Accept="X-Amzn-SageMaker-Accept")
_ASYNC_FORWARD = _forwarding(
    **{"Content-Type": "X-Amzn-SageMaker-Content-Type", "Accept": "X-Amzn-SageMaker-Accept"}
)

_ROUTE = re.compile(
    r"/endpoints/([^/?#]+)/(invocations|invocations-response-stream|async-invocations)"
)
_CREDENTIAL_REGION = re.compile(r"Credential=[^/,]*/[^/,]*/([^/,]*)/")
# A kept-alive connection found unusable when reused: the request is sent again on a new one.
_STALE = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, ImproperConnectionState)
_STREAM_READ = 64 * 1024
_MAX_BODY = 64 * 1024 * 1024
# The two ModelStreamError codes SageMaker documents, as ready-made event-stream messages.
_STREAM_TIMED_OUT = _eventstream.exception_event(
    "ModelStreamError",
    {
        "Message": "The model did not send the rest of its response in time.",
        "ErrorCode": "ModelInvocationTimeExceeded",
    },
)
_STREAM_BROKEN = _eventstream.exception_event(
    "ModelStreamError",
    {
        "Message": "The connection to the model was closed mid-stream.",
        "ErrorCode": "StreamBroken",
    },
)


class LocalRuntime:
    """Serve the SageMaker runtime API on loopback and forward calls to a model container.

    *container_url* is one container behind every endpoint name, or a mapping of endpoint
    name to container URL (other names are answered with ``ValidationError``, as SageMaker
    answers an endpoint that does not exist). ``url`` is the ``endpoint_url`` for a boto3
    ``sagemaker-runtime`` client. Async input may be a ``file://`` URI or an ``s3://bucket/key``
    URI, read from ``<s3_root>/bucket/key``; results are written under *output_location*
    (``file://``, ``s3://`` or a folder; by default a temporary folder removed on close), as
    ``<inference id>.out``, failures as ``<inference id>-error.out`` under *failure_location*
    (by default the output location).
    """

    def __init__(
        self,
        container_url: str | Mapping[str, str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        s3_root: str | os.PathLike[str] | None = None,
        output_location: str | os.PathLike[str] | None = None,
        failure_location: str | os.PathLike[str] | None = None,
        variant: str = "AllTraffic",
        container_timeout: float = 60.0,
        async_workers: int = 2,
        max_async_queue: int = 10_000,
    ) -> None:
        if isinstance(container_url, str):
            self._default: _ContainerPool | None = _ContainerPool(container_url, container_timeout)
            self._pools: dict[str, _ContainerPool] = {}
        else:
            self._default = None
            self._pools = {
                name: _ContainerPool(url, container_timeout) for name, url in container_url.items()
            }
        self._host = host
        self._port = port
        self._s3_root = Path(s3_root).resolve() if s3_root is not None else None
        # Given locations are checked now, so a bad one fails here rather than at start().
        self._output = None if output_location is None else self._location(output_location)
        self._failure = None if failure_location is None else self._location(failure_location)
        self._variant = variant
        self._async_workers = max(1, async_workers)
        self._jobs: queue.Queue[_AsyncJob | None] = queue.Queue(max_async_queue)
        self._pending = 0
        self._idle = threading.Condition()
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._owned_dir: str | None = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def url(self) -> str:
        """The runtime's base URL, for a client's ``endpoint_url``."""
        server = self._require()
        host, port = server.server_address[:2]
        if isinstance(host, bytes):
            host = host.decode()
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def output_location(self) -> str:
        """Where async results are written, as a ``file://`` or ``s3://`` URI."""
        self._require()
        assert self._output is not None
        return self._output.uri

    @property
    def failure_location(self) -> str:
        """Where async failures are written, as a ``file://`` or ``s3://`` URI."""
        self._require()
        assert self._failure is not None
        return self._failure.uri

    def start(self) -> LocalRuntime:
        """Bind and start serving; a second call does nothing."""
        with self._lock:
            if self._server is not None:
                return self
            if self._closed:
                raise RuntimeError("a closed LocalRuntime cannot be started again")
            server = _Server((self._host, self._port), self)
            self._server = server
            if self._output is None:
                self._owned_dir = tempfile.mkdtemp(prefix="sm-tracing-local-")
                self._output = self._location(self._owned_dir)
            if self._failure is None:
                self._failure = self._output
            serving = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="sm-tracing-local-server",
                daemon=True,
            )
            self._threads = [serving]
            self._threads.extend(
                threading.Thread(target=self._work, name=f"sm-tracing-local-async-{n}", daemon=True)
                for n in range(self._async_workers)
            )
            for thread in self._threads:
                thread.start()
            _logger.debug("local SageMaker runtime listening on %s", self.url)
            return self

    def close(self) -> None:
        """Stop serving, end open connections, join every thread; a second call does nothing.

        Async work not yet started is dropped; wait for it first with :meth:`wait_async`.
        """
        with self._lock:
            server, self._server = self._server, None
            if server is None:
                return
            self._closed = True
            server.shutdown()
            # Cut kept-alive callers and the container calls in flight, so every handler
            # thread returns now rather than when its peer gives up.
            server.close_connections()
            for pool in self._all_pools():
                pool.close()
            server.server_close()
            while True:
                try:
                    self._jobs.get_nowait()
                except queue.Empty:
                    break
                self._finished()
            for _ in range(self._async_workers):
                self._jobs.put(None)
            for thread in self._threads:
                thread.join()
            self._threads = []
            if self._owned_dir is not None:
                shutil.rmtree(self._owned_dir, ignore_errors=True)
                self._owned_dir = None

    def wait_async(self, timeout: float | None = None) -> bool:
        """Wait until every accepted async invocation is written; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def __enter__(self) -> LocalRuntime:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _require(self) -> _Server:
        server = self._server
        if server is None:
            raise RuntimeError("LocalRuntime is not running: use start() or a with block")
        return server

    def _all_pools(self) -> list[_ContainerPool]:
        pools = list(self._pools.values())
        if self._default is not None:
            pools.append(self._default)
        return pools

    def _pool(self, endpoint: str) -> _ContainerPool | None:
        if self._default is not None:
            return self._default
        return self._pools.get(endpoint)

    def _location(self, where: str | os.PathLike[str]) -> _Location:
        text = os.fspath(where)
        if "://" in text:
            return _Location(text.rstrip("/"), self._local_path(text))
        path = Path(text).resolve()
        return _Location(path.as_uri(), path)

    def _local_path(self, uri: str) -> Path:
        """The local file standing for a ``file://`` or ``s3://`` URI."""
        parts = urlsplit(uri)
        if parts.scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise ValueError(f"file URI {uri!r} names a remote host")
            return Path(url2pathname(parts.path))
        if parts.scheme == "s3":
            if self._s3_root is None:
                raise ValueError(f"{uri!r} needs LocalRuntime(s3_root=...) to map s3:// locally")
            bucket = parts.netloc
            path = (self._s3_root / bucket / parts.path.lstrip("/")).resolve()
            if not _safe_name(bucket) or not path.is_relative_to(self._s3_root / bucket):
                raise ValueError(f"{uri!r} is not a valid S3 location")
            return path
        raise ValueError(f"unsupported location {uri!r}: expected file:// or s3://")

    def _submit(self, job: _AsyncJob) -> bool:
        with self._idle:
            self._pending += 1
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            self._finished()
            return False
        return True

    def _finished(self) -> None:
        with self._idle:
            self._pending -= 1
            if self._pending == 0:
                self._idle.notify_all()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job.run()
            except Exception:
                _logger.warning("async invocation %s failed", job.inference_id, exc_info=True)
            finally:
                self._finished()


@dataclass(frozen=True)
class _Location:
    uri: str
    path: Path

    def child(self, *names: str) -> tuple[str, Path]:
        return "/".join((self.uri, *names)), self.path.joinpath(*names)


@dataclass(frozen=True)
class _AsyncJob:
    pool: _ContainerPool
    inference_id: str
    headers: list[tuple[str, str]]
    body: bytes | Path
    output: Path
    failure: Path

    def run(self) -> None:
        try:
            body = self.body if isinstance(self.body, bytes) else self.body.read_bytes()
        except OSError as exc:
            _write(self.failure, f"Could not read the input: {exc}".encode())
            return
        try:
            response, data = self.pool.call("/invocations", self.headers, body)
        except (OSError, HTTPException) as exc:
            _write(self.failure, f"The model container did not answer: {exc}".encode())
            return
        _write(self.output if response.status < 400 else self.failure, data)


def _write(path: Path, data: bytes) -> None:
    # Written aside and renamed, so a caller polling for the file never reads half of it.
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
    partial.write_bytes(data)
    os.replace(partial, path)


class _ContainerPool:
    """Keep-alive connections to one model container, reused across requests and threads."""

    def __init__(self, url: str, timeout: float, size: int = 32) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"container URL {url!r} must be http:// or https://host:port")
        self._factory = HTTPSConnection if parts.scheme == "https" else HTTPConnection
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._timeout = timeout
        self._size = size
        self._idle: list[HTTPConnection] = []
        self._busy: set[HTTPConnection] = set()
        self._lock = threading.Lock()
        self._closed = False

    def post(
        self, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[HTTPConnection, HTTPResponse]:
        """Send a POST and return its connection (for :meth:`release`) and response."""
        with self._lock:
            if self._closed:
                raise ConnectionAbortedError("the local runtime is closing")
            reused = bool(self._idle)
            conn = self._idle.pop() if reused else self._new()
            self._busy.add(conn)
        try:
            return conn, self._send(conn, path, headers, body)
        except _STALE:
            self.release(conn, reusable=False)
            if not reused:
                raise
        except BaseException:
            self.release(conn, reusable=False)
            raise
        # The container closed a kept-alive connection before it saw the request: retry once.
        with self._lock:
            conn = self._new()
            self._busy.add(conn)
        try:
            return conn, self._send(conn, path, headers, body)
        except BaseException:
            self.release(conn, reusable=False)
            raise

    def call(
        self, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[HTTPResponse, bytes]:
        """POST and read the whole answer: the response (status, headers) and its body."""
        conn, response = self.post(path, headers, body)
        try:
            data = response.read()
        except BaseException:
            self.release(conn, reusable=False)
            raise
        self.release(conn, reusable=True)
        return response, data

    def release(self, conn: HTTPConnection, *, reusable: bool) -> None:
        """Hand a connection back: kept if its response was read to the end, else closed."""
        with self._lock:
            self._busy.discard(conn)
            if reusable and not self._closed and len(self._idle) < self._size:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close idle connections and cut busy ones, so their readers return at once."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            busy = list(self._busy)
        for conn in idle:
            conn.close()
        for conn in busy:
            _cut(conn.sock)

    def _new(self) -> HTTPConnection:
        return self._factory(self._host, self._port, timeout=self._timeout)

    def _send(
        self, conn: HTTPConnection, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> HTTPResponse:
        if conn.sock is None:
            _connect(conn)
        conn.putrequest("POST", self._prefix + path, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        return conn.getresponse()


def _connect(conn: HTTPConnection) -> None:
    conn.connect()
    # http.client sends the head and the body in two writes: without this, Nagle's algorithm
    # can hold the body back until the container acknowledges the head.
    if conn.sock is not None:
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _cut(sock: socket.socket | None) -> None:
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _Server(ThreadingHTTPServer):
    """One thread per client connection; close ends the connections and joins the threads."""

    # Daemon threads, so a runtime never closed cannot hold the interpreter open; the server
    # joins them itself (socketserver joins only non-daemon threads).
    daemon_threads = True
    # Many clients connect at once under load; the default backlog of 5 drops connections.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], runtime: LocalRuntime) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.runtime = runtime
        self._connections: set[Any] = set()
        self._handlers: list[threading.Thread] = []
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="sm-tracing-local-connection",
            daemon=True,
        )
        with self._connections_lock:
            self._connections.add(request)
            self._handlers = [handler for handler in self._handlers if handler.is_alive()]
            self._handlers.append(thread)
        thread.start()

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        with self._connections_lock:
            handlers, self._handlers = self._handlers, []
        for thread in handlers:
            thread.join()

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for request in connections:
            _cut(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away mid-answer is routine here, not worth a traceback on stderr.
        _logger.debug("connection from %s ended: %r", client_address, sys.exc_info()[1])


class _Handler(BaseHTTPRequestHandler):
    """The runtime API: route, check the signature header, forward, answer as SageMaker."""

    protocol_version = "HTTP/1.1"
    server_version = "sm-tracing-local"
    disable_nagle_algorithm = True
    # Buffered, so a head and a short body leave in one write; streams flush each event.
    wbufsize = 64 * 1024
    # Idle keep-alive connections are dropped after this long, so none is held forever.
    timeout = 120
    server: _Server

    def do_POST(self) -> None:
        self.request_id = str(uuid.uuid4())
        match = _ROUTE.fullmatch(self.path.partition("?")[0])
        if match is None:
            self._drain_or_close()
            self._error(404, "UnknownOperationException", "Unknown operation")
            return
        authorization = self.headers.get("Authorization", "")
        if not authorization.startswith("AWS4-HMAC-SHA256 "):
            self._drain_or_close()
            self._error(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
            return
        if "Signature=" not in authorization or "Credential=" not in authorization:
            self._drain_or_close()
            self._error(403, "IncompleteSignatureException", "Incomplete signature")
            return
        body = self._read_body()
        if body is None:
            return
        endpoint = unquote(match.group(1))
        pool = self.server.runtime._pool(endpoint)
        if pool is None:
            self._error(
                400,
                "ValidationError",
                f"Endpoint {endpoint} of account {_ACCOUNT} not found.",
            )
            return
        operation = match.group(2)
        if operation == "invocations":
            self._invoke(endpoint, pool, body)
        elif operation == "invocations-response-stream":
            self._invoke_stream(endpoint, pool, body)
        else:
            self._invoke_async(pool, body)

    def _invoke(self, endpoint: str, pool: _ContainerPool, body: bytes) -> None:
        headers = self._forwarded(_INVOKE_FORWARD)
        try:
            response, data = pool.call(self._container_path(), headers, body)
        except (OSError, HTTPException) as exc:
            self._unreachable(endpoint, exc)
            return
        if response.status >= 400:
            self._model_error(endpoint, response.status, data)
            return
        answer = self._from_container(response)
        content_type = response.getheader("Content-Type")
        if content_type:
            answer.append(("Content-Type", content_type))
        self._answer(200, data, answer)

    def _invoke_stream(self, endpoint: str, pool: _ContainerPool, body: bytes) -> None:
        headers = self._forwarded(_STREAM_FORWARD)
        try:
            conn, response = pool.post(self._container_path(), headers, body)
        except (OSError, HTTPException) as exc:
            self._unreachable(endpoint, exc)
            return
        if response.status >= 400:
            try:
                data = response.read()
            except (OSError, HTTPException):
                pool.release(conn, reusable=False)
                data = b""
            else:
                pool.release(conn, reusable=True)
            self._model_error(endpoint, response.status, data)
            return
        complete = False
        try:
            complete = self._relay(response)
        finally:
            pool.release(conn, reusable=complete and response.isclosed())

    def _relay(self, response: HTTPResponse) -> bool:
        """Relay the container's body as PayloadPart events, each as soon as it arrives.

        Returns whether the container's body was read to its end.
        """
        self.send_response(200)
        content_type = response.getheader("Content-Type")
        if content_type:
            self.send_header("X-Amzn-SageMaker-Content-Type", content_type)
        for name, value in self._from_container(response):
            self.send_header(name, value)
        self.send_header("x-amzn-RequestId", self.request_id)
        self.send_header("Content-Type", _eventstream.CONTENT_TYPE)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        write = self.wfile.write
        flush = self.wfile.flush
        complete = False
        try:
            flush()
            while True:
                try:
                    data = response.read1(_STREAM_READ)
                except TimeoutError:
                    write(_chunk(_STREAM_TIMED_OUT))
                    break
                except (OSError, HTTPException) as exc:
                    _logger.debug("model stream broken: %r", exc)
                    write(_chunk(_STREAM_BROKEN))
                    break
                if not data:
                    # read1 leaves a Content-Length body open at its end; read() closes it,
                    # so the connection can serve the next request.
                    response.read()
                    complete = True
                    break
                write(_chunk(_eventstream.payload_part(data)))
                flush()
            write(b"0\r\n\r\n")
            flush()
        except OSError:
            # The caller stopped reading: drop its connection and the container's.
            self.close_connection = True
            return False
        return complete

    def _invoke_async(self, pool: _ContainerPool, body: bytes) -> None:
        runtime = self.server.runtime
        inference_id = self.headers.get(_INFERENCE_ID) or str(uuid.uuid4())
        name = self.headers.get("X-Amzn-SageMaker-Filename") or f"{inference_id}.out"
        extension = (self.headers.get("X-Amzn-SageMaker-S3OutputPathExtension") or "").strip("/")
        names = [part for part in extension.split("/") if part]
        if any(not _safe_name(part) for part in (*names, name, inference_id)):
            self._error(400, "ValidationError", "InferenceId, Filename and extension are unsafe")
            return
        input_location = self.headers.get("X-Amzn-SageMaker-InputLocation")
        source: bytes | Path
        if input_location:
            try:
                source = runtime._local_path(input_location)
            except ValueError as exc:
                self._error(400, "ValidationError", str(exc))
                return
        elif body:
            source = body
        else:
            self._error(400, "ValidationError", "InputLocation or Body is required.")
            return
        assert runtime._output is not None and runtime._failure is not None
        output_uri, output_path = runtime._output.child(*names, name)
        failure_uri, failure_path = runtime._failure.child(*names, f"{inference_id}-error.out")
        headers = self._forwarded(_ASYNC_FORWARD)
        if not any(header == _INFERENCE_ID for header, _ in headers):
            headers.append((_INFERENCE_ID, inference_id))
        job = _AsyncJob(pool, inference_id, headers, source, output_path, failure_path)
        if not runtime._submit(job):
            self._error(503, "ServiceUnavailable", "Too many async invocations are queued.")
            return
        self._answer(
            202,
            json.dumps({"InferenceId": inference_id}).encode(),
            [
                ("Content-Type", "application/json"),
                ("X-Amzn-SageMaker-OutputLocation", output_uri),
                ("X-Amzn-SageMaker-FailureLocation", failure_uri),
            ],
        )

    def _forwarded(self, table: Mapping[str, str]) -> list[tuple[str, str]]:
        return [
            (table[lowered], value)
            for name, value in self.headers.items()
            if (lowered := name.lower()) in table
        ]

    def _container_path(self) -> str:
        target = self.headers.get(_TARGET_MODEL)
        return f"/models/{quote(target, safe='')}/invoke" if target else "/invocations"

    def _from_container(self, response: HTTPResponse) -> list[tuple[str, str]]:
        """The container's response headers SageMaker returns, with the variant that answered."""
        variant = self.headers.get(_TARGET_VARIANT) or self.server.runtime._variant
        headers = [("x-Amzn-Invoked-Production-Variant", variant)]
        for name in _RESPONSE_HEADERS:
            value = response.getheader(name)
            if value is not None:
                headers.append((name, value))
        return headers

    def _read_body(self) -> bytes | None:
        length = self.headers.get("Content-Length")
        if length is None:
            if self.headers.get("Transfer-Encoding"):
                self.close_connection = True
                self._error(411, "ValidationError", "A Content-Length is required.")
                return None
            return b""
        try:
            size = int(length)
        except ValueError:
            size = -1
        if not 0 <= size <= _MAX_BODY:
            self.close_connection = True
            self._error(400, "ValidationError", "The request body is missing or too large.")
            return None
        return self.rfile.read(size)

    def _drain_or_close(self) -> None:
        # Read a refused request's body so the kept-alive connection stays in step.
        try:
            size = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            size = -1
        if 0 <= size <= _MAX_BODY:
            self.rfile.read(size)
        else:
            self.close_connection = True

    def _answer(self, status: int, body: bytes, headers: Iterable[tuple[str, str]]) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("x-amzn-RequestId", self.request_id)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, **members: object) -> None:
        body = {"__type": code, "Message": message, **members}
        headers = [("Content-Type", "application/json"), ("x-amzn-ErrorType", code)]
        self._answer(status, json.dumps(body).encode(), headers)

    def _model_error(self, endpoint: str, status: int, data: bytes) -> None:
        original = data.decode("utf-8", "replace")
        side = "client" if status < 500 else "server"
        self._error(
            424,
            "ModelError",
            f'Received {side} error ({status}) from primary with message "{original}". '
            f"See {self._log_stream(endpoint)} for more information.",
            ErrorCode=f"{side.upper()}_ERROR_FROM_MODEL",
            OriginalStatusCode=status,
            OriginalMessage=original,
            LogStreamArn=self._log_stream(endpoint),
        )

    def _unreachable(self, endpoint: str, exc: BaseException) -> None:
        _logger.debug("model container unreachable: %r", exc)
        self._error(
            424,
            "ModelError",
            "Received server error (0) from primary with message "
            f'"The model container did not answer: {exc}". '
            f"See {self._log_stream(endpoint)} for more information.",
            ErrorCode="SERVER_ERROR_FROM_MODEL",
            LogStreamArn=self._log_stream(endpoint),
        )

    def _log_stream(self, endpoint: str) -> str:
        found = _CREDENTIAL_REGION.search(self.headers.get("Authorization", ""))
        region = found.group(1) if found else "us-east-1"
        return f"arn:aws:logs:{region}:{_ACCOUNT}:log-group:/aws/sagemaker/Endpoints/{endpoint}"

    def version_string(self) -> str:
        return self.server_version

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # One line per request on stderr would drown any load test; nothing to log here.
        pass

    def log_message(self, format: str, *args: Any) -> None:
        if _logger.isEnabledFor(logging.DEBUG):
            _logger.debug("%s: %s", self.address_string(), format % args)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def _safe_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name
