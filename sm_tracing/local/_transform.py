"""Batch transform on this machine: CreateTransformJob and DescribeTransformJob of the
``sagemaker`` API, and jobs that send records read from files to a model container and write
what it answers, as SageMaker's batch transform does.

What SageMaker does, and so this does:

- the container process gets the job's ``Environment`` as environment variables, with
  ``SAGEMAKER_BATCH=true`` and, where the request sets them, ``SAGEMAKER_MAX_PAYLOAD_IN_MB``,
  ``SAGEMAKER_BATCH_STRATEGY`` (``SINGLE_RECORD`` / ``MULTI_RECORD``) and
  ``SAGEMAKER_MAX_CONCURRENT_TRANSFORMS``;
- once ``GET /ping`` answers 200 it asks ``GET /execution-parameters`` (which a container may
  lack) for the settings the request leaves out; the defaults are one call at a time,
  ``MultiRecord`` and 6 MB;
- every file under the input prefix is split into records (``SplitType`` ``None``: the whole
  file; ``Line``: one record a line), which go to ``POST /invocations`` one by one
  (``SingleRecord``) or as many lines at once as fit in ``MaxPayloadInMB`` (``MultiRecord``),
  with ``TransformInput.ContentType`` and ``TransformOutput.Accept``; no CustomAttributes;
- the answers for one file are written to ``<S3OutputPath>/<file below the prefix>.out``, each
  followed by a newline with ``AssembleWith`` ``Line``, else back to back;
- a failed call is tried again ``ModelClientConfig.InvocationsMaxRetries`` times (3 by
  default); then the job fails.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sm_tracing.local._pool import ContainerPool
from sm_tracing.local._storage import Location, local_path, location, write

_logger = logging.getLogger(__name__)

_STRATEGIES = {"SingleRecord": "SINGLE_RECORD", "MultiRecord": "MULTI_RECORD"}
_JOB_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")
_VARIABLE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]{0,1023}")
_MAX_VARIABLES = 16
_MAX_VALUE = 10240
_MB = 1024 * 1024
_PING_EVERY = 0.05

# Starts a job's model container with the job's environment and yields its base URL.
Launcher = Callable[["LocalTransformJob"], AbstractContextManager[str]]


class ApiError(Exception):
    """A SageMaker API error: the HTTP status, the error code and the message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _invalid(message: str) -> ApiError:
    return ApiError(400, "ValidationException", message)


class _Failed(Exception):
    """Ends a job as Failed, the message as its FailureReason."""


class _Stopped(Exception):
    """Ends a job as Stopped: the runtime is closing."""


class LocalTransformJob:
    """A batch transform job as :class:`~sm_tracing.local.LocalRuntime` runs it.

    ``environment`` is what the model container process is given: the job's ``Environment``,
    then SageMaker's own batch variables. ``request`` is the CreateTransformJob request as it
    arrived. ``status`` is ``InProgress``, then ``Completed``, ``Failed`` (``failure_reason``
    says why) or ``Stopped`` (the runtime closed first); ``invocations`` counts the calls made
    to the container and ``outputs`` lists the files written, as local paths.
    """

    def __init__(self, request: dict[str, Any], arn: str, environment: dict[str, str]) -> None:
        self.name: str = request["TransformJobName"]
        self.arn = arn
        self.model_name: str = request["ModelName"]
        self.request = request
        self.environment = environment
        self.status = "InProgress"
        self.failure_reason: str | None = None
        self.invocations = 0
        self.outputs: list[Path] = []
        self._created = time.time()
        self._started: float | None = None
        self._ended: float | None = None
        self._lock = threading.Lock()
        self._done = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the job has ended; False on timeout."""
        return self._done.wait(timeout)

    def __repr__(self) -> str:
        return f"<LocalTransformJob {self.name!r} {self.status}>"

    def _called(self) -> None:
        with self._lock:
            self.invocations += 1

    def _end(self, status: str, reason: str | None = None) -> None:
        self.status = status
        self.failure_reason = reason
        self._ended = time.time()
        self._done.set()

    def _describe(self) -> dict[str, Any]:
        """The DescribeTransformJob answer."""
        answer = {
            key: value
            for key, value in self.request.items()
            if key not in ("TransformJobName", "Tags")
        }
        answer.update(
            TransformJobName=self.name,
            TransformJobArn=self.arn,
            TransformJobStatus=self.status,
            CreationTime=self._created,
        )
        if self.failure_reason is not None:
            answer["FailureReason"] = self.failure_reason
        if self._started is not None:
            answer["TransformStartTime"] = self._started
        if self._ended is not None:
            answer["TransformEndTime"] = self._ended
        return answer


@dataclass(frozen=True)
class _Settings:
    concurrency: int
    single_record: bool
    max_payload: int  # bytes; 0 for no limit


@dataclass(frozen=True)
class _Plan:
    """What a CreateTransformJob request asks for, checked and resolved to local paths."""

    source: Path  # the folder the input prefix is read from
    prefix: str  # the start of the names of the input files, below ``source``
    output: Location
    split_lines: bool
    line_output: bool
    headers: list[tuple[str, str]]
    retries: int
    timeout: float | None
    given: Mapping[str, Any]  # the settings the request gives

    @classmethod
    def of(cls, request: Mapping[str, Any], s3_root: Path | None) -> _Plan:
        transform_input = request["TransformInput"]
        data_source = transform_input["DataSource"]["S3DataSource"]
        if data_source.get("S3DataType") != "S3Prefix":
            raise _invalid("The local runtime reads S3DataType S3Prefix only.")
        if transform_input.get("CompressionType", "None") != "None":
            raise _invalid("The local runtime reads uncompressed input only.")
        split = transform_input.get("SplitType", "None")
        if split not in ("None", "Line"):
            raise _invalid("The local runtime splits input by SplitType None or Line only.")
        if "DataProcessing" in request:
            raise _invalid("The local runtime does not support DataProcessing.")
        strategy = request.get("BatchStrategy")
        if strategy is not None and strategy not in _STRATEGIES:
            raise _invalid("BatchStrategy must be SingleRecord or MultiRecord.")
        transform_output = request["TransformOutput"]
        if transform_output.get("AssembleWith", "None") not in ("None", "Line"):
            raise _invalid("AssembleWith must be None or Line.")
        try:
            source, prefix = _input_prefix(data_source["S3Uri"], s3_root)
            output = location(transform_output["S3OutputPath"], s3_root)
        except ValueError as exc:
            raise _invalid(str(exc)) from None
        headers = []
        if transform_input.get("ContentType"):
            headers.append(("Content-Type", transform_input["ContentType"]))
        if transform_output.get("Accept"):
            headers.append(("Accept", transform_output["Accept"]))
        client_config = request.get("ModelClientConfig", {})
        timeout = client_config.get("InvocationsTimeoutInSeconds")
        return cls(
            source=source,
            prefix=prefix,
            output=output,
            split_lines=split == "Line",
            line_output=transform_output.get("AssembleWith") == "Line",
            headers=headers,
            retries=int(client_config.get("InvocationsMaxRetries", 3)),
            timeout=float(timeout) if timeout else None,
            given={
                key: request[key]
                for key in ("MaxConcurrentTransforms", "BatchStrategy", "MaxPayloadInMB")
                if request.get(key) not in (None, 0)
            },
        )

    def settings(self, suggested: Mapping[str, Any]) -> _Settings:
        """The request's settings, else the container's suggestions, else SageMaker's
        defaults."""
        merged: dict[str, Any] = {
            "MaxConcurrentTransforms": 1,
            "BatchStrategy": "MultiRecord",
            "MaxPayloadInMB": 6,
        }
        merged.update(suggested)
        merged.update(self.given)
        strategy = str(merged["BatchStrategy"])
        return _Settings(
            concurrency=max(1, int(merged["MaxConcurrentTransforms"])),
            single_record=strategy in ("SingleRecord", "SINGLE_RECORD"),
            max_payload=max(0, int(merged["MaxPayloadInMB"])) * _MB,
        )

    def inputs(self) -> list[tuple[str, Path]]:
        """The input files, as (name below the prefix, path), in name order."""
        found = []
        if self.source.is_dir():
            for path in sorted(self.source.rglob("*")):
                key = path.relative_to(self.source).as_posix()
                hidden = any(part.startswith(".") for part in path.relative_to(self.source).parts)
                if path.is_file() and not hidden and key.startswith(self.prefix):
                    found.append((key[len(self.prefix) :].lstrip("/") or path.name, path))
        return found

    def payloads(self, data: bytes, settings: _Settings) -> Iterator[bytes]:
        """The request bodies for one file's *data*: records alone or in mini-batches."""
        if not self.split_lines:
            records = [data]
        else:
            records = [line.removesuffix(b"\r") for line in data.split(b"\n")]
            records = [record for record in records if record]
        batch: list[bytes] = []
        size = 0
        for record in records:
            if settings.max_payload and len(record) > settings.max_payload:
                raise _Failed("ClientError: a record is larger than MaxPayloadInMB.")
            if batch and (
                settings.single_record
                or (settings.max_payload and size + 1 + len(record) > settings.max_payload)
            ):
                yield b"\n".join(batch)
                batch, size = [], 0
            size += len(record) + (1 if batch else 0)
            batch.append(record)
        if batch:
            yield b"\n".join(batch)

    def assemble(self, answers: list[bytes]) -> bytes:
        if not self.line_output:
            return b"".join(answers)
        return b"".join(answer if answer.endswith(b"\n") else answer + b"\n" for answer in answers)


def _input_prefix(uri: str, s3_root: Path | None) -> tuple[Path, str]:
    """The folder an ``S3Uri`` prefix is read from, and the start of the names it selects:
    ``s3://bucket/key-prefix`` selects the files of ``<s3_root>/bucket`` whose path starts with
    ``key-prefix``, as S3 selects keys; a ``file://`` folder selects every file in it."""
    parts = urlsplit(uri)
    if parts.scheme == "s3":
        bucket = local_path(f"s3://{parts.netloc}/", s3_root)
        return bucket, parts.path.lstrip("/")
    path = local_path(uri, s3_root)
    return (path, "") if path.is_dir() else (path.parent, path.name)


def _environment(request: Mapping[str, Any]) -> dict[str, str]:
    """The variables the container process gets: the job's Environment, checked against the
    API's limits, then SageMaker's batch variables."""
    given = request.get("Environment") or {}
    if len(given) > _MAX_VARIABLES:
        raise _invalid(
            "1 validation error detected: Value at 'environment' failed to satisfy constraint: "
            f"Member must have length less than or equal to {_MAX_VARIABLES}"
        )
    for key, value in given.items():
        if not _VARIABLE.fullmatch(key) or len(value) > _MAX_VALUE:
            raise _invalid(
                "1 validation error detected: Value at 'environment' failed to satisfy "
                f"constraint: Map keys must satisfy {_VARIABLE.pattern} and values must have "
                f"length less than or equal to {_MAX_VALUE}"
            )
    environment = {str(key): str(value) for key, value in given.items()}
    environment["SAGEMAKER_BATCH"] = "true"
    if request.get("MaxPayloadInMB") is not None:
        environment["SAGEMAKER_MAX_PAYLOAD_IN_MB"] = str(request["MaxPayloadInMB"])
    if request.get("BatchStrategy") in _STRATEGIES:
        environment["SAGEMAKER_BATCH_STRATEGY"] = _STRATEGIES[request["BatchStrategy"]]
    if request.get("MaxConcurrentTransforms") is not None:
        environment["SAGEMAKER_MAX_CONCURRENT_TRANSFORMS"] = str(request["MaxConcurrentTransforms"])
    return environment


class TransformJobs:
    """The transform jobs of one runtime, each run on a thread of its own.

    With a *launcher*, each job starts its own container with the job's environment; without
    one, a job calls the container *pool_for* gives for its ModelName (which did not get the
    environment: it is only recorded on the job).
    """

    def __init__(
        self,
        *,
        s3_root: Path | None,
        launcher: Launcher | None,
        pool_for: Callable[[str], ContainerPool | None],
        timeout: float,
    ) -> None:
        self._s3_root = s3_root
        self._launcher = launcher
        self._pool_for = pool_for
        self._timeout = timeout
        self._jobs: dict[str, LocalTransformJob] = {}
        self._threads: list[threading.Thread] = []
        self._pools: set[ContainerPool] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def create(self, request: dict[str, Any], region: str, account: str) -> str:
        """Start the job *request* asks for; its ARN. ApiError when SageMaker would refuse."""
        name = request.get("TransformJobName")
        if not isinstance(name, str) or not _JOB_NAME.fullmatch(name):
            raise _invalid(f"TransformJobName must satisfy {_JOB_NAME.pattern}")
        model = request.get("ModelName")
        if not isinstance(model, str) or (self._launcher is None and not self._pool_for(model)):
            raise _invalid(f"Could not find model {model}.")
        try:
            plan = _Plan.of(request, self._s3_root)
        except (KeyError, TypeError, AttributeError) as exc:
            raise _invalid(f"The request is missing or misshapes {exc}.") from None
        environment = _environment(request)
        arn = f"arn:aws:sagemaker:{region}:{account}:transform-job/{name.lower()}"
        job = LocalTransformJob(request, arn, environment)
        with self._lock:
            if self._stopping.is_set():
                raise ApiError(503, "ServiceUnavailable", "The local runtime is closing.")
            if name in self._jobs:
                raise ApiError(400, "ResourceInUse", f"Job {name} already exists.")
            self._jobs[name] = job
            thread = threading.Thread(
                target=self._run, args=(job, plan), name="sm-tracing-local-transform", daemon=True
            )
            self._threads.append(thread)
        thread.start()
        return arn

    def describe(self, name: str) -> dict[str, Any]:
        with self._lock:
            job = self._jobs.get(name)
        if job is None:
            raise ApiError(400, "ResourceNotFound", f"Could not find job {name}.")
        return job._describe()

    def get(self, name: str) -> LocalTransformJob:
        with self._lock:
            return self._jobs[name]

    def wait(self, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not job.wait(left):
                return False
        return True

    def stop(self) -> None:
        """Stop the jobs: no new one starts, calls in flight are cut."""
        with self._lock:
            self._stopping.set()
            pools = list(self._pools)
        for pool in pools:
            pool.close()

    def join(self) -> None:
        with self._lock:
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join()

    def _run(self, job: LocalTransformJob, plan: _Plan) -> None:
        job._started = time.time()
        try:
            with self._container(job) as pool:
                self._transform(job, plan, pool)
        except (_Stopped, _Failed) as exc:
            stopped = isinstance(exc, _Stopped) or self._stopping.is_set()
            job._end("Stopped" if stopped else "Failed", None if stopped else str(exc))
        except Exception as exc:
            if self._stopping.is_set():
                job._end("Stopped")
            else:
                _logger.warning("transform job %s failed", job.name, exc_info=True)
                job._end("Failed", f"InternalServerError: {type(exc).__name__}")
        else:
            job._end("Completed")

    @contextlib.contextmanager
    def _container(self, job: LocalTransformJob) -> Iterator[ContainerPool]:
        """The job's container, started for it (with its environment) when there is a
        launcher, and answering ``/ping``."""
        if self._launcher is None:
            pool = self._pool_for(job.model_name)
            assert pool is not None  # checked at create
            self._ping(pool)
            yield pool
            return
        with contextlib.ExitStack() as stack:
            try:
                url = stack.enter_context(self._launcher(job))
                timeout = job.request.get("ModelClientConfig", {}).get(
                    "InvocationsTimeoutInSeconds"
                )
                pool = ContainerPool(url, float(timeout or self._timeout))
            except Exception as exc:
                raise _Failed(f"ClientError: the model container did not start: {exc}") from exc
            stack.callback(pool.close)
            with self._lock:
                self._pools.add(pool)
            stack.callback(self._forget, pool)
            if self._stopping.is_set():
                pool.close()
            self._ping(pool)
            yield pool

    def _forget(self, pool: ContainerPool) -> None:
        with self._lock:
            self._pools.discard(pool)

    def _ping(self, pool: ContainerPool) -> None:
        deadline = time.monotonic() + self._timeout
        while not self._stopping.is_set():
            with contextlib.suppress(OSError, HTTPException):
                response, _ = pool.call("/ping", [], b"", method="GET")
                if response.status == 200:
                    return
            if time.monotonic() >= deadline:
                raise _Failed("ClientError: the model container did not answer /ping in time.")
            time.sleep(_PING_EVERY)
        raise _Stopped

    def _transform(self, job: LocalTransformJob, plan: _Plan, pool: ContainerPool) -> None:
        settings = plan.settings(_execution_parameters(pool))
        inputs = plan.inputs()
        if not inputs:
            raise _Failed("ClientError: no input file was found under the S3Uri prefix.")
        with ThreadPoolExecutor(
            settings.concurrency, thread_name_prefix="sm-tracing-local-transform-call"
        ) as calls:
            for name, path in inputs:
                payloads = list(plan.payloads(path.read_bytes(), settings))

                def invoke(payload: bytes, name: str = name) -> bytes:
                    return self._invoke(job, plan, pool, payload, name)

                answers = list(calls.map(invoke, payloads))
                target = plan.output.path / f"{name}.out"
                write(target, plan.assemble(answers))
                job.outputs.append(target)

    def _invoke(
        self, job: LocalTransformJob, plan: _Plan, pool: ContainerPool, payload: bytes, name: str
    ) -> bytes:
        last = ""
        for _ in range(1 + plan.retries):
            if self._stopping.is_set():
                raise _Stopped
            job._called()
            try:
                response, data = pool.call("/invocations", plan.headers, payload)
            except (OSError, HTTPException) as exc:
                last = type(exc).__name__
                continue
            if response.status < 400:
                return data
            last = f"status {response.status}"
        raise _Failed(
            f"ClientError: the model container failed a request for {name} "
            f"{1 + plan.retries} times (last: {last})."
        )


def _execution_parameters(pool: ContainerPool) -> dict[str, Any]:
    """The settings the container suggests at ``GET /execution-parameters``, if it has one."""
    try:
        response, data = pool.call("/execution-parameters", [], b"", method="GET")
        suggested = json.loads(data) if response.status == 200 else {}
    except (OSError, HTTPException, ValueError):
        return {}
    if not isinstance(suggested, dict):
        return {}
    keys = ("MaxConcurrentTransforms", "BatchStrategy", "MaxPayloadInMB")
    return {key: suggested[key] for key in keys if suggested.get(key) is not None}
