"""The ``websocket`` scope of ``ASGIMiddleware``: a bidirectional stream's session.

SageMaker opens a WebSocket on the container for InvokeEndpointWithBidirectionalStream, at
``/invocations-bidirectional-stream`` (or the caller's ``ModelInvocationPath``) with the
caller's ``ModelQueryString`` appended: the one carrier that reaches the container. The whole
session is one SERVER span in the caller's trace; the messages each way are counted on it, not
spanned one by one. The app sees the query string without our keys.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import Span

from sm_tracing._attributes import SAGEMAKER_HEADERS
from sm_tracing._guard import guard
from sm_tracing.container._middleware import FASTAPI_TELEMETRY, with_trace_headers
from sm_tracing.container._primitive import Invocation

if TYPE_CHECKING:
    from sm_tracing.container._asgi import ASGIMiddleware

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

BIDI_PATH = "/invocations-bidirectional-stream"
RECEIVED = "aws.sagemaker.stream.messages_received"
SENT = "aws.sagemaker.stream.messages_sent"
CLOSE_CODE = "websocket.close_code"
_HEADERS = {name.encode("ascii"): attribute for name, attribute in SAGEMAKER_HEADERS}


async def serve(
    middleware: ASGIMiddleware, route: str, scope: Scope, receive: Receive, send: Send
) -> None:
    """Run one WebSocket session of *middleware*'s app as the span of *route*."""
    started = guard("start the session span", None, _start, middleware, route, scope)
    if started is None:
        return await middleware.app(scope, receive, send)
    scope, invocation = started
    session = _Session(invocation, receive, send)
    try:
        await middleware.app(scope, session.receive, session.send)
    except BaseException as exc:
        session.end(exc)
        raise
    finally:
        invocation.detach()
    session.end(None)


def _start(middleware: ASGIMiddleware, route: str, scope: Scope) -> tuple[Scope, Invocation]:
    attributes: dict[str, Any] = {"url.path": scope.get("path") or route}
    changes: dict[str, Any] = {}
    headers = scope.get("headers") or ()
    if type(headers) is not list and not isinstance(headers, tuple):
        # Any iterable will do in ASGI: read once, here, and the app gets what was read.
        headers = changes["headers"] = list(headers)
    for key, value in headers:
        attribute = _HEADERS.get(key.lower())
        if attribute is not None:
            attributes[attribute] = value.decode("latin-1")
    query = (scope.get("query_string") or b"").decode("latin-1")
    invocation = middleware.begin(query or None, "WS", route, query=True)
    if invocation.span.is_recording():
        invocation.span.set_attributes(attributes)
    if query and invocation.remainder is not query:
        changes["query_string"] = (invocation.remainder or "").encode("latin-1")
    if middleware._inject_headers:
        injected = with_trace_headers(headers, invocation)
        if injected is not None:
            changes["headers"] = injected
    if middleware._quiet_fastapi:
        # FastAPI's own session span would start a trace of its own: ours is the session's.
        changes[FASTAPI_TELEMETRY] = None
    # A copy: the server's scope stays as it came.
    return ({**scope, **changes} if changes else scope), invocation


class _Session:
    """The messages of one session: counted each way; the span ends at a close, a disconnect,
    or the app's return or exception, whichever is first."""

    __slots__ = ("_ended", "_invocation", "_receive", "_send", "received", "sent")

    def __init__(self, invocation: Invocation, receive: Receive, send: Send) -> None:
        self._invocation = invocation
        self._receive = receive
        self._send = send
        self._ended = False
        self.received = 0
        self.sent = 0

    async def receive(self) -> Message:
        message = await self._receive()
        kind = message["type"]
        if kind == "websocket.receive":
            self.received += 1
        elif kind == "websocket.disconnect":
            self.end(None, message.get("code"))
        return message

    def send(self, message: Message) -> Awaitable[None]:
        kind = message["type"]
        if kind == "websocket.send":
            self.sent += 1
            return self._send(message)
        if kind == "websocket.close":
            return self._close(message)
        return self._send(message)

    async def _close(self, message: Message) -> None:
        try:
            await self._send(message)
        finally:
            self.end(None, message.get("code", 1000))

    def end(self, error: BaseException | None, code: object = None) -> None:
        """End the span once, with the counts, the close code and *error* when given."""
        if self._ended:
            return
        self._ended = True
        span: Span = self._invocation.span
        attributes: dict[str, Any] = {RECEIVED: self.received, SENT: self.sent}
        if isinstance(code, int):
            attributes[CLOSE_CODE] = code
        guard("record the session", None, span.set_attributes, attributes)
        self._invocation.end(error)
