"""``sm-tracing proxy``: a traced reverse proxy in front of a model server that continues a trace
from a ``traceparent`` header (TGI, TEI, Triton, vLLM) but never gets one, since SageMaker strips
it.

Each invocation (``POST /invocations``, ``/models/{name}/invoke``) becomes the container span of
the caller's trace, made by :class:`sm_tracing.ASGIMiddleware` around a small forwarding app: the
same codec, trust policy, attributes, echo and container time as any ASGI container. The request
goes on to the server with that span's context in the headers the configured propagator writes
(``OTEL_PROPAGATORS``; W3C ``traceparent``, ``tracestate``, ``baggage`` by default) and with
CustomAttributes less our keys; the response streams back as it arrives, with ``traceresponse``
in its CustomAttributes. ``/ping`` is answered by the server's health route, untraced; every
other path passes through untraced. Bodies are streamed both ways, never held whole.

Run under uvicorn with httpx as the client (the ``proxy`` extra), it sets up export as
:func:`sm_tracing.configure` does, from the standard ``OTEL_*`` variables, and can start the
model server itself, as a container's ENTRYPOINT::

    sm-tracing proxy --upstream http://127.0.0.1:8081 -- text-generation-launcher --port 8081
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from opentelemetry import trace
from opentelemetry.trace import TracerProvider

from sm_tracing._attributes import ERROR_TYPE
from sm_tracing._hints import command_parser, install_hint
from sm_tracing._telemetry import error_type

if TYPE_CHECKING:
    import httpx

    from sm_tracing.container._asgi import ASGIApp, Message, Receive, Scope, Send

_logger = logging.getLogger(__name__)

INSTALL_HINT = install_hint("proxy")
DEFAULT_HEALTH_PATHS = ("/health", "/ping")
DEFAULT_TIMEOUT = 300.0
DEFAULT_MAX_CONNECTIONS = 1000
# How long the model server gets to exit after the signal passed on to it, once the proxy is
# told to stop twice, before it is killed.
_KILL_AFTER = 30

# The request headers SageMaker sends, in its spelling: ASGI servers lower-case header names,
# and some model servers read these case-sensitively.
_SPELLING = {
    name.lower().encode("ascii"): name.encode("ascii")
    for name in (
        "X-Amzn-SageMaker-Custom-Attributes",
        "X-Amzn-SageMaker-Target-Model",
        "X-Amzn-SageMaker-Target-Variant",
        "X-Amzn-SageMaker-Target-Container-Hostname",
        "X-Amzn-SageMaker-Inference-Id",
        "X-Amzn-SageMaker-Inference-Component",
        "X-Amzn-SageMaker-Session-Id",
        "X-Amzn-SageMaker-Enable-Explanations",
        "Content-Type",
        "Accept",
    )
}
# Hop-by-hop headers (RFC 9110, 7.6.1) belong to one connection, not to the message; ``host``
# is the upstream's, ``expect`` asks for an interim answer the client here does not wait for.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"expect",
    }
)
_PLAIN_TEXT = [(b"content-type", b"text/plain; charset=utf-8")]


class _ClientGone(Exception):
    """The caller disconnected while its request body was being read."""


def _require() -> None:
    """Raise ImportError with the install hint when uvicorn or httpx is missing."""
    try:
        import httpx  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"sm-tracing proxy needs uvicorn and httpx: {INSTALL_HINT}") from exc


class Forward:
    """An ASGI app that forwards every HTTP request to the model server at *upstream* and
    streams its answer back: the proxy without tracing. ``/ping`` asks the first of
    *health_paths* the server does not answer 404; ``/invocations`` goes to
    *invocations_path* when given. A server that can't be reached, resets or times out (after
    *timeout* seconds without a byte) before its response starts gets the caller a 502 or 504;
    after, the response ends early and the exception goes up to the server (and the span)."""

    def __init__(
        self,
        upstream: str,
        *,
        invocations_path: str | None = None,
        health_paths: Sequence[str] = DEFAULT_HEALTH_PATHS,
        timeout: float = DEFAULT_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        _require()
        import httpx

        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the upstream must be an http:// or https:// URL, not {upstream!r}")
        if not health_paths:
            raise ValueError("at least one health path is needed")
        self._httpx = httpx
        self._base = httpx.URL(upstream)
        self._prefix = parts.path.rstrip("/").encode("ascii")
        self._invocations = None if invocations_path is None else _raw(invocations_path)
        self._health_paths = [_raw(path) for path in health_paths]
        self._health: bytes | None = None if len(self._health_paths) > 1 else self._health_paths[0]
        self._timeout = httpx.Timeout(timeout)
        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        """The client requests go through, made on first use (in the serving event loop)."""
        if self._client is None:
            # trust_env=False: a proxy of the environment's has no business between two
            # processes of one container.
            self._client = self._httpx.AsyncClient(
                timeout=self._timeout, limits=self._limits, trust_env=False
            )
        return self._client

    async def aclose(self) -> None:
        """Close the connections to the server."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            return await self._http(scope, receive, send)
        if kind == "lifespan":
            return await self._lifespan(receive, send)
        if kind == "websocket":
            # Not forwarded: refuse the handshake.
            await send({"type": "websocket.close", "code": 1000})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: bytes = scope.get("raw_path") or quote(scope.get("path") or "/").encode("ascii")
        if path == b"/ping":
            return await self._ping(scope, receive, send)
        if path == b"/invocations" and self._invocations is not None:
            path = self._invocations
        query: bytes = scope.get("query_string") or b""
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        content: bytes | AsyncIterator[bytes] = message.get("body", b"")
        if message.get("more_body", False):
            content = _body(content, receive)  # type: ignore[arg-type]
        await self._forward(scope, path, query, content, send, receive=receive)

    def _request(
        self, scope: Scope, path: bytes, query: bytes, content: bytes | AsyncIterator[bytes]
    ) -> httpx.Request:
        headers = [
            (_SPELLING.get(name, name), value)
            for name, value in scope["headers"]
            if name not in _HOP_BY_HOP
        ]
        raw_path = self._prefix + path + (b"?" + query if query else b"")
        url = self._base.copy_with(raw_path=raw_path)
        # The client's timeout goes with the request: before httpx 0.27.1, send() applies it
        # only to requests the client built, and build_request() would add the client's own
        # headers (User-Agent, Accept-Encoding) to what the caller sent.
        return self._httpx.Request(
            scope["method"],
            url,
            headers=headers,
            content=content,
            extensions={"timeout": self._timeout.as_dict()},
        )

    async def _forward(
        self,
        scope: Scope,
        path: bytes,
        query: bytes,
        content: bytes | AsyncIterator[bytes],
        send: Send,
        *,
        receive: Receive | None = None,
        fallback: bool = False,
    ) -> bool:
        """Send the request and stream the answer back; False (nothing sent) when *fallback*
        and the server answered 404, so another path may be tried."""
        httpx = self._httpx
        try:
            response = await self.client.send(
                self._request(scope, path, query, content), stream=True
            )
        except _ClientGone:
            return True
        except httpx.TimeoutException as exc:
            await _fail(send, 504, "the model server did not answer in time", exc)
            return True
        except httpx.HTTPError as exc:
            await _fail(send, 502, "the model server could not be reached", exc)
            return True
        try:
            if fallback and response.status_code == 404:
                return False
            headers = [
                (name.lower(), value)
                for name, value in response.headers.raw
                if name.lower() not in _HOP_BY_HOP
            ]
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": headers})  # fmt: skip
            gone = _watch(receive)
            try:
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    if gone is not None and gone.done():
                        # The caller left: stop reading what nobody will get.
                        return True
            finally:
                if gone is not None:
                    gone.cancel()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()
        return True

    async def _ping(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The server's health route's answer, untraced: the first of the health paths it does
        not answer 404, remembered once found."""
        if self._health is not None:
            await self._forward(scope, self._health, b"", b"", send)
            return
        last = len(self._health_paths) - 1
        for index, path in enumerate(self._health_paths):
            if await self._forward(scope, path, b"", b"", send, fallback=index < last):
                if index < last:
                    self._health = path
                return


def _raw(path: str) -> bytes:
    """*path* as it goes on the wire, with its leading ``/``."""
    if not path.startswith("/"):
        path = "/" + path
    return quote(path, safe="/:@!$&'()*+,;=-._~%?").encode("ascii")


async def _body(first: bytes, receive: Receive) -> AsyncIterator[bytes]:
    """The request body, chunk by chunk as the server receives it."""
    if first:
        yield first
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


def _watch(receive: Receive | None) -> asyncio.Future[Message] | None:
    """A task that finishes when the caller disconnects (the request body is read by now, so
    ``receive`` has nothing else to give)."""
    if receive is None:
        return None
    return asyncio.ensure_future(receive())


async def _fail(send: Send, status: int, reason: str, error: BaseException) -> None:
    """Answer *status* with a short plain-text *reason*; the error's type goes on the span."""
    kind = type(error).__name__
    _logger.warning("%s (%s): answering %d", reason, kind, status)
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(ERROR_TYPE, error_type(error))
    body = f"{reason} ({kind})\n".encode()
    await send({"type": "http.response.start", "status": status, "headers": _PLAIN_TEXT})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def proxy_app(
    upstream: str,
    *,
    invocations_path: str | None = None,
    health_paths: Sequence[str] = DEFAULT_HEALTH_PATHS,
    timeout: float = DEFAULT_TIMEOUT,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    paths: Iterable[str] | None = None,
    tracer_provider: TracerProvider | None = None,
) -> ASGIApp:
    """The proxy as an ASGI app: :class:`Forward` to *upstream* (its options described there)
    under :class:`sm_tracing.ASGIMiddleware`, which traces the invocations (and the exact
    *paths* given) and writes each span's context into the forwarded request's headers."""
    from sm_tracing.container._asgi import ASGIMiddleware

    forward = Forward(
        upstream,
        invocations_path=invocations_path,
        health_paths=health_paths,
        timeout=timeout,
        max_connections=max_connections,
    )
    return ASGIMiddleware(
        forward, tracer_provider=tracer_provider, paths=paths, inject_headers=True
    )


# -- the command ------------------------------------------------------------------------------

_DESCRIPTION = """\
A traced reverse proxy for model servers that continue a trace from a traceparent header
(TGI, TEI, Triton, vLLM): SageMaker strips that header, so the proxy reads the caller's
context from CustomAttributes, traces the invocation as sm_tracing.ASGIMiddleware does, hands
the context to the server as standard headers (OTEL_PROPAGATORS, W3C by default) and echoes the
container's span back. Spans go where OTEL_* says (OTLP/HTTP to localhost:4318 by default).

After --, a command to start the model server with: the proxy then passes SIGTERM and SIGINT
on to it and exits with its exit status, so it works as a container's ENTRYPOINT:

  sm-tracing proxy --upstream http://127.0.0.1:8081 -- text-generation-launcher --port 8081
"""


def _parser() -> argparse.ArgumentParser:
    parser = command_parser("proxy", _DESCRIPTION)
    parser.add_argument(
        "--upstream", required=True, metavar="URL",
        help="the model server's base URL, such as http://127.0.0.1:8081",
    )  # fmt: skip
    parser.add_argument(
        "--host", default="0.0.0.0", help="address to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=8080, help="port to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--invocations-path", metavar="PATH",
        help="the server's route that POST /invocations goes to, where it has no /invocations "
        "(such as /generate); other paths pass through unchanged",
    )  # fmt: skip
    parser.add_argument(
        "--health-path", action="append", metavar="PATH",
        help="the server's health route that /ping asks (repeatable: the first not answering "
        f"404 is used; default: {' then '.join(DEFAULT_HEALTH_PATHS)})",
    )  # fmt: skip
    parser.add_argument(
        "--trace-path", action="append", metavar="PATH",
        help="another exact path to trace besides /invocations and /models/{name}/invoke "
        "(repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
        help="answer 504 when the server sends nothing for this long before its response "
        "starts, and end a response that stalls as long (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS, metavar="N",
        help="connections to the server at most; requests beyond wait (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--service-name", metavar="NAME",
        help="the proxy's service.name (default: OTEL_SERVICE_NAME, else sm-tracing-proxy)",
    )  # fmt: skip
    parser.add_argument(
        "--log-level", default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="uvicorn's and the proxy's log level (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--access-log", action="store_true", help="log every request, as uvicorn does"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the proxy with *argv* (default: the command line); the exit status: the model
    server's when the proxy started it, else 0 after SIGTERM or SIGINT, 1 on a failure to
    start."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in arguments:
        at = arguments.index("--")
        arguments, command = arguments[:at], arguments[at + 1 :]
    parser = _parser()
    options = parser.parse_args(arguments)
    if options.timeout <= 0:
        parser.error("--timeout must be positive")
    if options.max_connections < 1:
        parser.error("--max-connections must be at least 1")
    try:
        _require()
    except ImportError as exc:
        print(f"sm-tracing proxy: {exc}", file=sys.stderr)
        return 1
    try:
        app, forward = _build(options)
    except ValueError as exc:
        parser.error(str(exc))
    return asyncio.run(_serve(options, app, forward, command))


def _build(options: argparse.Namespace) -> tuple[ASGIApp, Forward]:
    import sm_tracing
    from sm_tracing.container._asgi import ASGIMiddleware

    forward = Forward(
        options.upstream,
        invocations_path=options.invocations_path,
        health_paths=options.health_path or DEFAULT_HEALTH_PATHS,
        timeout=options.timeout,
        max_connections=options.max_connections,
    )
    service = options.service_name
    if service is None and not _service_in_environment():
        service = "sm-tracing-proxy"
    sm_tracing.configure(service)
    middleware = ASGIMiddleware(forward, paths=options.trace_path, inject_headers=True)
    return middleware, forward


def _service_in_environment() -> bool:
    if os.environ.get("OTEL_SERVICE_NAME", "").strip():
        return True
    attributes = os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    return any(pair.strip().startswith("service.name=") for pair in attributes.split(","))


async def _serve(
    options: argparse.Namespace, app: ASGIApp, forward: Forward, command: list[str]
) -> int:
    import uvicorn

    class Server(uvicorn.Server):
        # The proxy handles the signals itself: they go to the model server first.
        @contextlib.contextmanager
        def capture_signals(self) -> Any:
            yield

    config = uvicorn.Config(
        app,
        host=options.host,
        port=options.port,
        lifespan="on",
        log_level=options.log_level,
        access_log=options.access_log,
        # The model server's own Date and Server headers pass through instead.
        server_header=False,
        date_header=False,
        # The model server's requests in flight end with it; the proxy's follow.
        timeout_graceful_shutdown=_KILL_AFTER,
    )
    logging.getLogger("sm_tracing").setLevel(options.log_level.upper())
    server = Server(config)
    loop = asyncio.get_running_loop()
    child: asyncio.subprocess.Process | None = None
    if command:
        try:
            child = await asyncio.create_subprocess_exec(*command)
        except OSError as exc:
            print(f"sm-tracing proxy: cannot start {command[0]!r}: {exc}", file=sys.stderr)
            return 127 if isinstance(exc, FileNotFoundError) else 126
    signals = 0

    def on_signal(sig: int) -> None:
        nonlocal signals
        signals += 1
        if child is not None and child.returncode is None:
            _logger.info("passing %s on to the model server", signal.Signals(sig).name)
            child.send_signal(sig)
            if signals > 1:
                # Told again: the server gets a while to go, then is killed.
                loop.call_later(_KILL_AFTER, _kill, child)
        else:
            server.should_exit = True
            if signals > 1:
                server.force_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    serving = asyncio.ensure_future(_run_server(server))
    try:
        if child is None:
            return 0 if await serving else 1
        waiting = asyncio.ensure_future(child.wait())
        await asyncio.wait((serving, waiting), return_when=asyncio.FIRST_COMPLETED)
        if not waiting.done():
            # The proxy could not serve: the model server is of no use without it.
            _logger.error("the proxy stopped; stopping the model server")
            child.send_signal(signal.SIGTERM)
            loop.call_later(_KILL_AFTER, _kill, child)
            await waiting
            return 1
        server.should_exit = True
        await serving
        status = child.returncode
        assert status is not None
        # A child ended by a signal exits as a shell reports it.
        return 128 - status if status < 0 else status
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await forward.aclose()


async def _run_server(server: Any) -> bool:
    """Serve until told to stop; False when the server could not start (uvicorn exits)."""
    try:
        await server.serve()
    except SystemExit:
        return False
    return bool(server.started)


def _kill(child: asyncio.subprocess.Process) -> None:
    if child.returncode is None:
        child.kill()


if __name__ == "__main__":
    sys.exit(main())
