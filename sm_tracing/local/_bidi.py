"""InvokeEndpointWithBidirectionalStream on loopback: HTTP/2 over TLS in front of a WebSocket
model container.

What SageMaker does with a bidirectional stream, as far as tracing can tell: the caller's
request stream reaches the container over a WebSocket opened at
``<container>/<ModelInvocationPath>?<ModelQueryString>`` (the path defaults to
``invocations-bidirectional-stream``), one frame per request PayloadPart (text for
``DataType=UTF8``, binary otherwise); each frame the container sends comes back as a response
PayloadPart. No request header reaches the container: the query string is the only thing of
the caller's that does. The session ends when the caller ends its request stream (the
WebSocket is then closed) or when the container closes the WebSocket (the response stream then
ends, with a ``ModelStreamError`` event if it closed with an error code).

Needs ``h2``, ``websockets`` and ``trustme`` (all in sm-tracing's ``test`` extra).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import re
import shutil
import ssl
import struct
import tempfile
import threading
import uuid
from binascii import crc32
from pathlib import Path
from typing import Any

from sm_tracing import _querystring
from sm_tracing._hints import install_hint
from sm_tracing.local._eventstream import (
    CONTENT_TYPE,
    encode_headers,
    encode_message,
    exception_event,
)

_logger = logging.getLogger(__name__)

DEFAULT_PATH = "invocations-bidirectional-stream"
_REQUEST_PATH = re.compile(r"/endpoints/([^/?]+)/invocations-bidirectional-stream")
# The API model's patterns and limits for the members that shape the container's URL.
_NAME = re.compile(r"[a-zA-Z0-9](?:-*[a-zA-Z0-9])*")
_INVOCATION_PATH = re.compile(r"[A-Za-z0-9\-._]+(?:/[A-Za-z0-9\-._]+)*")
_PRELUDE = struct.Struct(">III")
_HEADER_SIZES = {2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}  # fixed-size header value types
_MAX_MESSAGE = 24 * 1024 * 1024
_END_GRACE = 5.0  # seconds
_PART_HEADERS = {
    data_type: encode_headers(
        {
            ":event-type": "PayloadPart",
            ":content-type": "application/octet-stream",
            ":message-type": "event",
            "DataType": data_type,
        }
    )
    for data_type in ("UTF8", "BINARY")
}


class LocalBidiRuntime:
    """Serve InvokeEndpointWithBidirectionalStream on loopback in front of a WebSocket container.

    *container_url* is the container's base URL (``ws://127.0.0.1:8080``), behind every
    endpoint name. ``url`` is the ``endpoint_uri`` for an ``aws-sdk-sagemaker-runtime-http2``
    client, and :meth:`transport` the client's HTTP transport: the SDK's CRT client, trusting
    the certificate authority this runtime makes when it starts (``ca_file``), so the stream is
    full duplex over HTTP/2 as it is against SageMaker.

    A ``ModelQueryString``, ``ModelInvocationPath``, ``TargetVariant`` or endpoint name the API
    would refuse is answered with ``InputValidationError`` (400), a container that does not
    accept the WebSocket with ``ModelError`` (424). Requests without a SigV4 ``Authorization``
    header are refused; signatures are not verified, so any credentials will do. The runtime
    pings the container as SageMaker does, every *ping_interval* seconds.
    """

    def __init__(
        self,
        container_url: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        variant: str = "AllTraffic",
        ping_interval: float | None = 60.0,
    ) -> None:
        self._container_url = container_url.rstrip("/")
        self._host = host
        self._port = port
        self.variant = variant
        self.ping_interval = ping_interval
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._address: tuple[str, int] | None = None
        self._dir: str | None = None
        self._connections: set[_Connection] = set()
        self._closed = False

    @property
    def url(self) -> str:
        """The runtime's base URL, for a client's ``endpoint_uri``."""
        if self._address is None:
            raise RuntimeError("LocalBidiRuntime is not running: use start() or a with block")
        host, port = self._address
        return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"

    @property
    def ca_file(self) -> str:
        """The PEM file of the certificate authority that signed the runtime's certificate."""
        if self._dir is None:
            raise RuntimeError("LocalBidiRuntime is not running: use start() or a with block")
        return str(Path(self._dir) / "ca.pem")

    def container_url(self, path: str | None, query: str | None) -> str:
        """The WebSocket URL the container is called on for *path* and *query*."""
        url = f"{self._container_url}/{path or DEFAULT_PATH}"
        return f"{url}?{query}" if query else url

    def transport(self) -> Any:
        """An HTTP/2 transport for ``aws-sdk-sagemaker-runtime-http2`` that trusts this
        runtime's certificate: pass it as the client configuration's ``transport``."""
        return _trusting_transport(self.ca_file)

    def start(self) -> LocalBidiRuntime:
        """Make the certificates, bind and start serving; a second call does nothing."""
        with self._lock:
            if self._thread is not None:
                return self
            if self._closed:
                raise RuntimeError("a closed LocalBidiRuntime cannot be started again")
            context = self._tls_context()
            loop = asyncio.new_event_loop()
            started = threading.Event()
            failure: list[BaseException] = []

            def serve() -> None:
                asyncio.set_event_loop(loop)
                try:
                    loop.run_until_complete(self._listen(context))
                except BaseException as error:
                    failure.append(error)
                    started.set()
                    return
                started.set()
                loop.run_forever()

            thread = threading.Thread(target=serve, name="sm-tracing-local-bidi", daemon=True)
            thread.start()
            started.wait()
            if failure:
                thread.join()
                loop.close()
                self._remove_dir()
                raise failure[0]
            self._loop, self._thread = loop, thread
            _logger.debug("local bidirectional stream runtime listening on %s", self.url)
            return self

    def close(self) -> None:
        """Stop serving, end open sessions and their WebSockets; a second call does nothing."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
            self._address = None
            self._closed = True
            if loop is None or thread is None:
                return
            future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            try:
                future.result(timeout=10)
            except Exception:
                _logger.warning(
                    "the local bidirectional runtime did not stop cleanly", exc_info=True
                )
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            self._remove_dir()

    def __enter__(self) -> LocalBidiRuntime:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _tls_context(self) -> ssl.SSLContext:
        try:
            import trustme
        except ImportError as error:  # pragma: no cover - the test extra has it
            raise ImportError(
                f"LocalBidiRuntime needs trustme, h2 and websockets: {install_hint('test')}"
            ) from error
        authority = trustme.CA()
        certificate = authority.issue_cert(self._host, "127.0.0.1", "localhost")
        self._dir = tempfile.mkdtemp(prefix="sm-tracing-bidi-")
        authority.cert_pem.write_to_path(str(Path(self._dir) / "ca.pem"))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        certificate.configure_cert(context)
        context.set_alpn_protocols(["h2"])
        return context

    def _remove_dir(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    async def _listen(self, context: ssl.SSLContext) -> None:
        server = await asyncio.start_server(self._accept, self._host, self._port, ssl=context)
        self._server = server
        address = server.sockets[0].getsockname()
        self._address = (address[0], address[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(self, reader, writer)
        self._connections.add(connection)
        try:
            await connection.run()
        finally:
            self._connections.discard(connection)

    async def _shutdown(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        tasks: list[asyncio.Task[Any]] = []
        for connection in list(self._connections):
            tasks.extend(connection.abort())
        # Wait for every session to close its WebSocket, so none is left half-open on the
        # container when the loop stops.
        await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()


class _Connection:
    """One HTTP/2 connection from a client and the exchanges on it."""

    def __init__(
        self,
        runtime: LocalBidiRuntime,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        import h2.config
        import h2.connection

        self.runtime = runtime
        self.reader = reader
        self.writer = writer
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        self.exchanges: dict[int, _Exchange] = {}
        self.window = asyncio.Event()
        self.task: asyncio.Task[Any] | None = None

    async def run(self) -> None:
        import h2.events
        import h2.exceptions

        self.task = asyncio.current_task()
        self.h2.initiate_connection()
        try:
            await self.flush()
            while data := await self.reader.read(65536):
                try:
                    events = self.h2.receive_data(data)
                except h2.exceptions.ProtocolError:
                    _logger.debug("HTTP/2 protocol error from the client", exc_info=True)
                    await self.flush()
                    return
                for event in events:
                    self._dispatch(event, h2.events)
                await self.flush()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            sessions = [exchange.task for exchange in self.exchanges.values()]
            for task in sessions:
                task.cancel()
            # Each session closes its WebSocket on the way out: wait for that.
            await asyncio.gather(*sessions, return_exceptions=True)
            self.writer.close()

    def _dispatch(self, event: Any, events: Any) -> None:
        if isinstance(event, events.RequestReceived):
            headers = {name.lower(): value for name, value in event.headers}
            self.exchanges[event.stream_id] = _Exchange(self, event.stream_id, headers)
        elif isinstance(event, events.DataReceived):
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            exchange = self.exchanges.get(event.stream_id)
            if exchange is not None:
                exchange.inbound.put_nowait(event.data)
        elif isinstance(event, events.StreamEnded):
            exchange = self.exchanges.get(event.stream_id)
            if exchange is not None:
                exchange.inbound.put_nowait(None)
        elif isinstance(event, events.StreamReset):
            exchange = self.exchanges.pop(event.stream_id, None)
            if exchange is not None:
                exchange.abort()
        elif isinstance(event, (events.WindowUpdated, events.RemoteSettingsChanged)):
            self.window.set()
        elif isinstance(event, events.ConnectionTerminated):
            self.writer.close()

    async def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def send_data(self, stream_id: int, data: bytes) -> None:
        """Send *data* on *stream_id* within the flow-control windows."""
        view = memoryview(data)
        while view:
            size = min(
                self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size
            )
            if size <= 0:
                self.window.clear()
                await self.window.wait()
                continue
            self.h2.send_data(stream_id, bytes(view[:size]))
            view = view[size:]
            await self.flush()

    def abort(self) -> list[asyncio.Task[Any]]:
        """Cancel the connection and its exchanges; the tasks to wait for."""
        tasks = [exchange.task for exchange in self.exchanges.values()]
        if self.task is not None:
            tasks.append(self.task)
        for task in tasks:
            task.cancel()
        return tasks


class _Exchange:
    """One InvokeEndpointWithBidirectionalStream call: its HTTP/2 stream and its WebSocket."""

    def __init__(self, connection: _Connection, stream_id: int, headers: dict[str, str]) -> None:
        self.connection = connection
        self.stream_id = stream_id
        self.headers = headers
        self.inbound: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._run())

    def abort(self) -> None:
        self.task.cancel()

    async def _run(self) -> None:
        from h2.exceptions import StreamClosedError

        connection = self.connection
        try:
            await self._exchange()
        except (asyncio.CancelledError, StreamClosedError):
            pass  # the caller went away
        except Exception:
            _logger.warning("a bidirectional stream failed in the local runtime", exc_info=True)
            await self._reset()
        finally:
            connection.exchanges.pop(self.stream_id, None)

    async def _exchange(self) -> None:
        refusal = self._refusal()
        if refusal is not None:
            await self._answer(400, "InputValidationError", refusal)
            return
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus, WebSocketException

        runtime = self.connection.runtime
        url = runtime.container_url(
            self.headers.get("x-amzn-sagemaker-model-invocation-path"),
            self.headers.get("x-amzn-sagemaker-model-query-string"),
        )
        try:
            websocket = await connect(
                url,
                ping_interval=runtime.ping_interval,
                max_size=None,
                open_timeout=30,
                compression=None,
            )
        except InvalidStatus as error:
            status = error.response.status_code
            await self._answer(
                424,
                "ModelError",
                f"The model container refused the WebSocket with status {status}.",
                OriginalStatusCode=status,
            )
            return
        except (OSError, TimeoutError, WebSocketException):
            await self._answer(
                424, "ModelError", "The model container did not accept the WebSocket."
            )
            return
        async with websocket:
            await self._open()
            forwarding = asyncio.get_running_loop().create_task(self._forward(websocket))
            try:
                await self._relay(websocket)
            finally:
                forwarding.cancel()
                await asyncio.gather(forwarding, return_exceptions=True)
        await self._end()

    def _refusal(self) -> str | None:
        headers = self.headers
        path = headers.get(":path", "").partition("?")[0]
        match = _REQUEST_PATH.fullmatch(path)
        if headers.get(":method") != "POST" or match is None:
            return "Unknown operation."
        if not headers.get("authorization", "").startswith("AWS4-HMAC-SHA256 "):
            return "Missing Authentication Token."
        name = match.group(1)
        if len(name) > 63 or _NAME.fullmatch(name) is None:
            return "EndpointName does not match the API's pattern."
        query = headers.get("x-amzn-sagemaker-model-query-string")
        if query is not None and not _querystring.is_valid(query):
            return "ModelQueryString must be k=v pairs joined by & within 2048 characters."
        invocation_path = headers.get("x-amzn-sagemaker-model-invocation-path")
        if invocation_path is not None and (
            len(invocation_path) > 100 or _INVOCATION_PATH.fullmatch(invocation_path) is None
        ):
            return "ModelInvocationPath does not match the API's pattern."
        variant = headers.get("x-amzn-sagemaker-target-variant")
        if variant is not None and (len(variant) > 63 or _NAME.fullmatch(variant) is None):
            return "TargetVariant does not match the API's pattern."
        return None

    async def _answer(self, status: int, error_type: str, message: str, **extra: Any) -> None:
        body = json.dumps({"Message": message, **extra}).encode()
        connection = self.connection
        connection.h2.send_headers(
            self.stream_id,
            [
                (":status", str(status)),
                ("content-type", "application/json"),
                ("x-amzn-errortype", error_type),
                ("x-amzn-requestid", str(uuid.uuid4())),
                ("content-length", str(len(body))),
            ],
        )
        await connection.send_data(self.stream_id, body)
        await self._end()

    async def _open(self) -> None:
        variant = (
            self.headers.get("x-amzn-sagemaker-target-variant") or self.connection.runtime.variant
        )
        self.connection.h2.send_headers(
            self.stream_id,
            [
                (":status", "200"),
                ("content-type", CONTENT_TYPE),
                ("x-amzn-invoked-production-variant", variant),
                ("x-amzn-requestid", str(uuid.uuid4())),
            ],
        )
        await self.connection.flush()

    async def _end(self) -> None:
        from h2.exceptions import ProtocolError

        try:
            self.connection.h2.end_stream(self.stream_id)
        except ProtocolError:
            return  # the caller reset the stream already
        await self.connection.flush()

    async def _reset(self) -> None:
        from h2.exceptions import ProtocolError

        try:
            self.connection.h2.reset_stream(self.stream_id)
        except ProtocolError:
            return
        await self.connection.flush()

    async def _forward(self, websocket: Any) -> None:
        """The caller's request parts to the container, one frame each; at the end of the
        request stream, the WebSocket is closed."""
        try:
            await self._send_parts(websocket)
        finally:
            await websocket.close()

    async def _send_parts(self, websocket: Any) -> None:
        buffer = bytearray()
        while (chunk := await self.inbound.get()) is not None:
            buffer += chunk
            for message in _messages(buffer):
                event = _unsign(message)
                if event is None:  # the signed empty frame: the caller sends nothing more
                    # The HTTP/2 end of the request follows it. Ending the response (which
                    # closing the WebSocket does) before that makes the CRT client fail to
                    # write its own end of stream, so wait for it a moment.
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._request_end(), _END_GRACE)
                    return
                headers, payload = event
                if headers.get(":event-type") != "PayloadPart":
                    continue
                if headers.get("DataType") == "UTF8":
                    await websocket.send(payload.decode("utf-8", errors="replace"))
                else:
                    await websocket.send(payload)

    async def _request_end(self) -> None:
        while await self.inbound.get() is not None:
            pass

    async def _relay(self, websocket: Any) -> None:
        """The container's frames to the caller, one response part each."""
        from websockets.exceptions import ConnectionClosedError

        connection = self.connection
        try:
            async for frame in websocket:
                if isinstance(frame, str):
                    message = encode_message(_PART_HEADERS["UTF8"], frame.encode("utf-8"))
                else:
                    message = encode_message(_PART_HEADERS["BINARY"], bytes(frame))
                await connection.send_data(self.stream_id, message)
        except ConnectionClosedError as error:
            code = error.rcvd.code if error.rcvd is not None else 1006
            await connection.send_data(
                self.stream_id,
                exception_event(
                    "ModelStreamError",
                    {"Message": f"The model container closed the WebSocket with code {code}."},
                ),
            )


def _messages(buffer: bytearray) -> list[tuple[dict[str, Any], bytes]]:
    """Take the complete event-stream messages off the front of *buffer*: their headers and
    payloads. Raises ValueError for a corrupt message."""
    found: list[tuple[dict[str, Any], bytes]] = []
    while len(buffer) >= 16:
        total, headers_length, prelude_crc = _PRELUDE.unpack_from(buffer)
        if crc32(buffer[:8]) != prelude_crc or total > _MAX_MESSAGE or headers_length > total - 16:
            raise ValueError("corrupt event-stream prelude")
        if len(buffer) < total:
            break
        message = bytes(buffer[:total])
        del buffer[:total]
        if crc32(message[:-4]) != struct.unpack_from(">I", message, total - 4)[0]:
            raise ValueError("corrupt event-stream message")
        headers = _headers(message[12 : 12 + headers_length])
        found.append((headers, message[12 + headers_length : total - 4]))
    return found


def _unsign(message: tuple[dict[str, Any], bytes]) -> tuple[dict[str, Any], bytes] | None:
    """The event a client sent: the message itself, or the one inside a signed envelope; None
    for the signed empty frame that ends a request stream."""
    headers, payload = message
    if ":chunk-signature" not in headers:
        return message
    if not payload:
        return None
    inner = bytearray(payload)
    messages = _messages(inner)
    if len(messages) != 1 or inner:
        raise ValueError("a signed event must hold exactly one message")
    return messages[0]


def _headers(raw: bytes) -> dict[str, Any]:
    """The headers of an event-stream message, every value type read (strings decoded)."""
    headers: dict[str, Any] = {}
    at = 0
    while at < len(raw):
        size = raw[at]
        name = raw[at + 1 : at + 1 + size].decode("utf-8")
        kind = raw[at + 1 + size]
        at += 2 + size
        value: Any
        if kind in (0, 1):
            value = kind == 0
        elif kind in (6, 7):
            (length,) = struct.unpack_from(">H", raw, at)
            value = raw[at + 2 : at + 2 + length]
            at += 2 + length
            if kind == 7:
                value = value.decode("utf-8")
        elif kind in _HEADER_SIZES:
            value = raw[at : at + _HEADER_SIZES[kind]]
            at += _HEADER_SIZES[kind]
        else:
            raise ValueError(f"unknown event-stream header type {kind}")
        headers[name] = value
    return headers


def _trusting_transport(ca_file: str) -> Any:
    """The SDK's CRT HTTP client, with a TLS context that trusts *ca_file*.

    The CRT client has no TLS option of its own yet, so the context it made is replaced; it
    copies itself into every client configuration that is copied, and the copy keeps the
    trust.
    """
    try:
        from awscrt import io
        from smithy_http.aio.crt import AWSCRTHTTPClient
    except ImportError as error:
        raise ImportError(
            "a bidirectional stream needs aws-sdk-sagemaker-runtime-http2 with its CRT "
            f"transport: {install_hint('bidi')}"
        ) from error

    class _TrustingCRTClient(AWSCRTHTTPClient):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if not hasattr(self, "_tls_ctx"):
                raise RuntimeError(
                    "this smithy-http release keeps its TLS context elsewhere; trust "
                    f"{ca_file} through the SSL_CERT_FILE environment variable instead"
                )
            options = io.TlsContextOptions()
            options.override_default_trust_store_from_path(None, ca_file)
            self._tls_ctx = io.ClientTlsContext(options)

        def __deepcopy__(self, memo: Any) -> _TrustingCRTClient:
            return _TrustingCRTClient(
                eventloop=self._eventloop, client_config=copy.deepcopy(self._config)
            )

    return _TrustingCRTClient()
