"""The local SageMaker runtime's lifecycle: endpoints, the server, async work."""

from __future__ import annotations

import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

from sm_tracing.local._api import Server
from sm_tracing.local._calls import Call, Observer
from sm_tracing.local._pool import ContainerPool
from sm_tracing.local._storage import Location, local_path, location, write
from sm_tracing.local._transform import Launcher, LocalTransformJob, TransformJobs

_logger = logging.getLogger(__name__)
_CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"


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

    The same ``url`` serves a ``sagemaker`` client's ``create_transform_job`` and
    ``describe_transform_job``: a batch transform job reads its input files (an ``s3://`` prefix
    under *s3_root*, or a ``file://`` folder), calls a model container once per record or
    mini-batch and writes ``<input>.out`` files under its ``S3OutputPath``. With
    *transform_container*, each job starts its own container: it is called with the
    :class:`LocalTransformJob`, whose ``environment`` is what SageMaker would give the container
    process, and returns a context manager that yields the container's base URL while the job
    runs and stops the container on exit. Without it, a job calls the container of its
    ``ModelName`` (the one container, or the mapping's entry), which does not get the job's
    environment.
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
        transform_container: Launcher | None = None,
    ) -> None:
        if isinstance(container_url, str):
            self._default: ContainerPool | None = ContainerPool(container_url, container_timeout)
            self._pools: dict[str, ContainerPool] = {}
        else:
            self._default = None
            self._pools = {
                name: ContainerPool(url, container_timeout) for name, url in container_url.items()
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
        self._server: Server | None = None
        self._threads: list[threading.Thread] = []
        self._owned_dir: str | None = None
        self._lock = threading.Lock()
        self._closed = False
        # Told of every invocation (``sm-tracing local`` prints them); None: nobody listens.
        self._observer: Observer | None = None
        self._transforms = TransformJobs(
            s3_root=self._s3_root,
            launcher=transform_container,
            pool_for=self._pool,
            timeout=container_timeout,
        )

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
            server = Server((self._host, self._port), self)
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
            self._transforms.stop()
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
            self._transforms.join()
            if self._owned_dir is not None:
                shutil.rmtree(self._owned_dir, ignore_errors=True)
                self._owned_dir = None

    def wait_async(self, timeout: float | None = None) -> bool:
        """Wait until every accepted async invocation is written; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def transform_job(self, name: str) -> LocalTransformJob:
        """The transform job called *name*; KeyError when there is none."""
        return self._transforms.get(name)

    def wait_transform_jobs(self, timeout: float | None = None) -> bool:
        """Wait until every transform job created so far has ended; False on timeout."""
        return self._transforms.wait(timeout)

    def __enter__(self) -> LocalRuntime:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _require(self) -> Server:
        server = self._server
        if server is None:
            raise RuntimeError("LocalRuntime is not running: use start() or a with block")
        return server

    def _all_pools(self) -> list[ContainerPool]:
        pools = list(self._pools.values())
        if self._default is not None:
            pools.append(self._default)
        return pools

    def _pool(self, endpoint: str) -> ContainerPool | None:
        if self._default is not None:
            return self._default
        return self._pools.get(endpoint)

    def _observe(self, call: Call) -> None:
        observer = self._observer
        if observer is None:
            return
        try:
            observer(call)
        except Exception:
            # A report that fails must not fail the call it reports.
            _logger.warning("reporting an invocation failed", exc_info=True)

    def _location(self, where: str | os.PathLike[str]) -> Location:
        return location(where, self._s3_root)

    def _local_path(self, uri: str) -> Path:
        """The local file standing for a ``file://`` or ``s3://`` URI."""
        return local_path(uri, self._s3_root)

    def _queue_async(
        self,
        endpoint: str,
        pool: ContainerPool,
        inference_id: str,
        headers: list[tuple[str, str]],
        source: bytes | Path,
        *,
        folders: list[str],
        filename: str,
    ) -> tuple[str, str] | None:
        """Queue an async invocation, its output to be written as *filename* in *folders* under
        the output location; the output and failure URIs, or None when the queue is full."""
        assert self._output is not None and self._failure is not None
        output_uri, output_path = self._output.child(*folders, filename)
        failure_uri, failure_path = self._failure.child(*folders, f"{inference_id}-error.out")
        job = _AsyncJob(
            endpoint, pool, inference_id, headers, source, output_path, failure_path, self._observe
        )
        if not self._submit(job):
            return None
        return output_uri, failure_uri

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
class _AsyncJob:
    endpoint: str
    pool: ContainerPool
    inference_id: str
    headers: list[tuple[str, str]]
    body: bytes | Path
    output: Path
    failure: Path
    observe: Observer

    def run(self) -> None:
        started = time.perf_counter()
        status, answered, error, written = self._run()
        sent = next((value for name, value in self.headers if name == _CUSTOM_ATTRIBUTES), None)
        call = Call(
            operation="InvokeEndpointAsync",
            endpoint=self.endpoint,
            status=status,
            seconds=time.perf_counter() - started,
            sent=sent,
            answered=answered,
            error=error,
            output=str(written),
        )
        self.observe(call)

    def _run(self) -> tuple[int, str | None, str | None, Path]:
        """Call the container and write its answer: its status (0: none), its CustomAttributes,
        what went wrong, the file written."""
        try:
            body = self.body if isinstance(self.body, bytes) else self.body.read_bytes()
        except OSError as exc:
            write(self.failure, f"Could not read the input: {exc}".encode())
            return 0, None, "the input could not be read", self.failure
        try:
            response, data = self.pool.call("/invocations", self.headers, body)
        except (OSError, HTTPException) as exc:
            write(self.failure, f"The model container did not answer: {exc}".encode())
            return 0, None, "the model container did not answer", self.failure
        written = self.output if response.status < 400 else self.failure
        write(written, data)
        error = None if response.status < 400 else "ModelError"
        return response.status, response.getheader(_CUSTOM_ATTRIBUTES), error, written
