"""The SageMaker runtime API on loopback: routes, the signature check, the headers SageMaker
forwards each way, its error answers, and the response stream relayed as AWS events."""

from __future__ import annotations

import json
import logging
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.client import HTTPException, HTTPResponse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import quote, unquote

from sm_tracing.local import _eventstream
from sm_tracing.local._calls import OPERATIONS, Call, Observer
from sm_tracing.local._pool import ContainerPool, cut
from sm_tracing.local._storage import safe_name
from sm_tracing.local._transform import ApiError, TransformJobs


class Runtime(Protocol):
    """What the API server asks of the runtime that serves it (``LocalRuntime``)."""

    _observer: Observer | None
    _transforms: TransformJobs
    _variant: str

    def _observe(self, call: Call) -> None: ...

    def _pool(self, endpoint: str) -> ContainerPool | None: ...

    def _local_path(self, uri: str) -> Path: ...

    @property
    def _queue_async(self) -> Callable[..., tuple[str, str] | None]:
        """Queues an async invocation: see ``LocalRuntime._queue_async``."""


_logger = logging.getLogger(__name__)

# What a container pool's send returns: the whole answer, or the response still to be read.
_Sent = TypeVar("_Sent")

_ACCOUNT = "000000000000"
_CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
_TARGET_MODEL = "X-Amzn-SageMaker-Target-Model"
_TARGET_VARIANT = "X-Amzn-SageMaker-Target-Variant"
_INFERENCE_ID = "X-Amzn-SageMaker-Inference-Id"
_SESSION_ID = "X-Amzn-SageMaker-Session-Id"
_INFERENCE_COMPONENT = "X-Amzn-SageMaker-Inference-Component"
_PREFIX_AWARE_ID = "X-Amzn-SageMaker-Prefix-Aware-Id"
_FILENAME = "X-Amzn-SageMaker-Filename"
_OUTPUT_PATH_EXTENSION = "X-Amzn-SageMaker-S3OutputPathExtension"
_INPUT_LOCATION = "X-Amzn-SageMaker-InputLocation"
# Headers the container may set that SageMaker hands back to the caller.
_RESPONSE_HEADERS = (
    _CUSTOM_ATTRIBUTES,
    "X-Amzn-SageMaker-New-Session-Id",
    "X-Amzn-SageMaker-Closed-Session-Id",
)


def _forwarding(*names: str, **renamed: str) -> dict[str, str]:
    table = {name.lower(): name for name in (_CUSTOM_ATTRIBUTES, _INFERENCE_ID, *names)}
    table.update((source.lower(), target) for target, source in renamed.items())
    return table


# Request header (lower case) -> the name the container receives: the headers each operation's
# API defines; everything else is dropped, as SageMaker drops every header its API does not
# define. The streaming and async calls carry Accept (and, async, Content-Type) in SageMaker
# headers of their own. Whether SageMaker hands its routing fields (TargetVariant,
# InferenceComponentName, PrefixAwareId) to the container is not documented: they are passed
# on, so a container that reads them can be tested, and one that does not is unaffected.
_INVOKE_FORWARD = _forwarding(
    "Content-Type",
    "Accept",
    _TARGET_MODEL,
    _TARGET_VARIANT,
    _SESSION_ID,
    _INFERENCE_COMPONENT,
    _PREFIX_AWARE_ID,
    "X-Amzn-SageMaker-Enable-Explanations",
)
_STREAM_FORWARD = _forwarding(
    "Content-Type",
    _TARGET_VARIANT,
    _SESSION_ID,
    _INFERENCE_COMPONENT,
    _PREFIX_AWARE_ID,
    Accept="X-Amzn-SageMaker-Accept",
)
_ASYNC_FORWARD = _forwarding(
    **{"Content-Type": "X-Amzn-SageMaker-Content-Type", "Accept": "X-Amzn-SageMaker-Accept"}
)


@dataclass(frozen=True)
class _Constraint:
    """A request member's limits in the API model, checked as SageMaker checks them."""

    member: str  # as SageMaker's validation messages name it
    max_length: int
    pattern: re.Pattern[str] | None = None
    min_length: int = 1


# An identifier: a visible first character, then printable ones.
_IDENTIFIER = re.compile(r"\S[\x20-\x7e]*")
_CONSTRAINTS = {
    _CUSTOM_ATTRIBUTES.lower(): _Constraint("customAttributes", 1024, min_length=0),
    _INFERENCE_ID.lower(): _Constraint("inferenceId", 64, _IDENTIFIER),
    _PREFIX_AWARE_ID.lower(): _Constraint("prefixAwareId", 64, _IDENTIFIER),
    _FILENAME.lower(): _Constraint(
        "filename", 32, re.compile(r"(?!.*\..*\.)[a-zA-Z0-9][a-zA-Z0-9\-_.]*")
    ),
    _OUTPUT_PATH_EXTENSION.lower(): _Constraint(
        "s3OutputPathExtension", 512, re.compile(r"(?!s3:|https:)[a-zA-Z0-9!_.*'()/-]+")
    ),
}
# InvokeEndpointAsync takes at most this much inline, instead of an InputLocation.
_MAX_ASYNC_BODY = 128_000

_ROUTE = re.compile(
    r"/endpoints/([^/?#]+)/(invocations|invocations-response-stream|async-invocations)"
)
# The ``sagemaker`` API (JSON 1.1 protocol): POST / naming the operation in X-Amz-Target.
_CONTROL_PREFIX = "SageMaker."
_JSON_1_1 = "application/x-amz-json-1.1"
_CREDENTIAL_REGION = re.compile(r"Credential=[^/,]*/[^/,]*/([^/,]*)/")
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


class Server(ThreadingHTTPServer):
    """One thread per client connection; close ends the connections and joins the threads."""

    # Daemon threads, so a runtime never closed cannot hold the interpreter open; the server
    # joins them itself (socketserver joins only non-daemon threads).
    daemon_threads = True
    # Many clients connect at once under load; the default backlog of 5 drops connections.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], runtime: Runtime) -> None:
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
            cut(request)

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
    server: Server
    # The current call's answer, for its report: status, error code, the container's
    # CustomAttributes.
    _status = 0
    _error_code: str | None = None
    _answered: str | None = None

    def do_POST(self) -> None:
        self.request_id = str(uuid.uuid4())
        path = self.path.partition("?")[0]
        target = self.headers.get("X-Amz-Target", "")
        control = path == "/" and target.startswith(_CONTROL_PREFIX)
        match = _ROUTE.fullmatch(path)
        if match is None and not control:
            self._drain_or_close()
            self._error(404, "UnknownOperationException", "Unknown operation")
            return
        if match is None or self.server.runtime._observer is None:
            self._serve(match)
            return
        # What the call's report needs, filled in as the answer goes out.
        self._status = 0
        self._error_code = None
        self._answered = None
        started = time.perf_counter()
        try:
            self._serve(match)
        finally:
            # An async call accepted is reported by its job, once the container has answered.
            if self._status != 202:
                self._report(match, time.perf_counter() - started)

    def _report(self, match: re.Match[str], seconds: float) -> None:
        call = Call(
            operation=OPERATIONS[match.group(2)],
            endpoint=unquote(match.group(1)),
            status=self._status,
            seconds=seconds,
            sent=self.headers.get(_CUSTOM_ATTRIBUTES),
            answered=self._answered,
            error=self._error_code,
        )
        self.server.runtime._observe(call)

    def _serve(self, match: re.Match[str] | None) -> None:
        """Answer a runtime API call (*match*: its route) or, without one, a control call."""
        target = self.headers.get("X-Amz-Target", "")
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
        if match is None:
            self._control(target.removeprefix(_CONTROL_PREFIX), body)
            return
        invalid = self._invalid()
        if invalid:
            self._error(400, "ValidationError", invalid)
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
            self._invoke_async(endpoint, pool, body)

    def _control(self, operation: str, body: bytes) -> None:
        """The ``sagemaker`` (control plane) operations of batch transform, in its JSON
        protocol."""
        transforms = self.server.runtime._transforms
        try:
            try:
                request = json.loads(body or b"{}")
            except ValueError:
                request = None
            if not isinstance(request, dict):
                raise ApiError(400, "SerializationException", "The request is not a JSON object.")
            if operation == "CreateTransformJob":
                arn = transforms.create(request, self._region(), _ACCOUNT)
                answer: dict[str, Any] = {"TransformJobArn": arn}
            elif operation == "DescribeTransformJob":
                answer = transforms.describe(str(request.get("TransformJobName")))
            else:
                raise ApiError(
                    400, "UnknownOperationException", f"The local runtime has no {operation}."
                )
        except ApiError as exc:
            self._error(exc.status, exc.code, str(exc))
            return
        self._answer(200, json.dumps(answer).encode(), [("Content-Type", _JSON_1_1)])

    def _send(
        self,
        endpoint: str,
        send: Callable[[str, list[tuple[str, str]], bytes], _Sent],
        forward: Mapping[str, str],
        body: bytes,
    ) -> _Sent | None:
        """*send* the request on to the container, or answer that it could not be reached."""
        try:
            return send(self._container_path(), self._forwarded(forward), body)
        except (OSError, HTTPException) as exc:
            self._unreachable(endpoint, exc)
            return None

    def _invoke(self, endpoint: str, pool: ContainerPool, body: bytes) -> None:
        if (sent := self._send(endpoint, pool.call, _INVOKE_FORWARD, body)) is None:
            return
        response, data = sent
        if response.status >= 400:
            self._model_error(endpoint, response.status, data)
            return
        answer = self._from_container(response)
        content_type = response.getheader("Content-Type")
        if content_type:
            answer.append(("Content-Type", content_type))
        self._answer(200, data, answer)

    def _invoke_stream(self, endpoint: str, pool: ContainerPool, body: bytes) -> None:
        if (sent := self._send(endpoint, pool.post, _STREAM_FORWARD, body)) is None:
            return
        conn, response = sent
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
        self._status = 200
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

    def _invalid(self) -> str | None:
        """SageMaker's ValidationError message for the headers that break their constraints;
        it names the member, never the value (which may be the caller's data)."""
        broken = []
        for name, value in self.headers.items():
            constraint = _CONSTRAINTS.get(name.lower())
            if constraint is None:
                continue
            if len(value) > constraint.max_length:
                rule = f"have length less than or equal to {constraint.max_length}"
            elif len(value) < constraint.min_length:
                rule = f"have length greater than or equal to {constraint.min_length}"
            elif constraint.pattern is not None and not constraint.pattern.fullmatch(value):
                rule = f"satisfy regular expression pattern: {constraint.pattern.pattern}"
            else:
                continue
            broken.append(
                f"Value at '{constraint.member}' failed to satisfy constraint: Member must {rule}"
            )
        if not broken:
            return None
        count = f"{len(broken)} validation error{'s' if len(broken) > 1 else ''}"
        return f"{count} detected: {'; '.join(broken)}"

    def _invoke_async(self, endpoint: str, pool: ContainerPool, body: bytes) -> None:
        runtime = self.server.runtime
        inference_id = self.headers.get(_INFERENCE_ID) or str(uuid.uuid4())
        name = self.headers.get(_FILENAME) or f"{inference_id}.out"
        extension = (self.headers.get(_OUTPUT_PATH_EXTENSION) or "").strip("/")
        names = [part for part in extension.split("/") if part]
        if any(not safe_name(part) for part in (*names, name, inference_id)):
            self._error(400, "ValidationError", "InferenceId, Filename and extension are unsafe")
            return
        input_location = self.headers.get(_INPUT_LOCATION)
        source: bytes | Path
        if input_location and body:
            self._error(400, "ValidationError", "Body and InputLocation are mutually exclusive.")
            return
        if len(body) > _MAX_ASYNC_BODY:
            self._error(
                400,
                "ValidationError",
                "1 validation error detected: Value at 'body' failed to satisfy constraint: "
                f"Member must have length less than or equal to {_MAX_ASYNC_BODY}",
            )
            return
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
        headers = self._forwarded(_ASYNC_FORWARD)
        if not any(header == _INFERENCE_ID for header, _ in headers):
            headers.append((_INFERENCE_ID, inference_id))
        queued = runtime._queue_async(
            endpoint, pool, inference_id, headers, source, folders=names, filename=name
        )
        if queued is None:
            self._error(503, "ServiceUnavailable", "Too many async invocations are queued.")
            return
        output_uri, failure_uri = queued
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
                if name is _CUSTOM_ATTRIBUTES:
                    self._answered = value
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
        self._status = status
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
        self._error_code = code
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

    def _region(self) -> str:
        """The region the caller signed for."""
        found = _CREDENTIAL_REGION.search(self.headers.get("Authorization", ""))
        return found.group(1) if found else "us-east-1"

    def _log_stream(self, endpoint: str) -> str:
        region = self._region()
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
