"""The ``websocket`` scope of ``ASGIMiddleware``: a bidirectional stream's session.

SageMaker opens a WebSocket on the container for InvokeEndpointWithBidirectionalStream, at
``/invocations-bidirectional-stream`` (or the caller's ``ModelInvocationPath``) with the
caller's ``ModelQueryString`` appended: the one carrier that reaches the container. The whole
session is one SERVER span in the caller's trace; the messages each way are counted on it, not
spanned one by one. The app sees the query string without our keys.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any

from sm_tracing._attributes import MESSAGES_RECEIVED, MESSAGES_SENT, SAGEMAKER_HEADERS, URL_PATH
from sm_tracing._guard import guard
from sm_tracing.container._middleware import (
    ASGIApp,
    Message,
    Middleware,
    Receive,
    Scope,
    Send,
    with_trace_headers,
)
from sm_tracing.container._primitive import Invocation, Lifecycle

BIDI_PATH = "/invocations-bidirectional-stream"
CLOSE_CODE = "websocket.close_code"
_HEADERS = {name.encode("ascii"): attribute for name, attribute in SAGEMAKER_HEADERS}


async def serve(  # noqa: PLR0917 - the ASGI call's own arguments, passed on
    middleware: Middleware[ASGIApp],
    extra: Mapping[str, Any],
    route: str,
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    """Run one WebSocket session of *middleware*'s app as the span of *route*, the app's scope
    given the *extra* entries."""
    started = guard("start the session span", None, _start, middleware, extra, route, scope)
    if started is None:
        return await middleware.app(scope, receive, send)
    scope, invocation = started
    session = _Session(invocation, receive, send)
    with session:
        await middleware.app(scope, session.receive, session.send)


def _start(
    middleware: Middleware[ASGIApp], extra: Mapping[str, Any], route: str, scope: Scope
) -> tuple[Scope, Invocation]:
    attributes: dict[str, Any] = {URL_PATH: scope.get("path") or route}
    changes: dict[str, Any] = dict(extra)
    headers = scope.get("headers") or ()
    if type(headers) is not list and not isinstance(headers, tuple):
        # Any iterable will do in ASGI: read once, here, and the app gets what was read.
        headers = changes["headers"] = list(headers)
    for key, value in headers:
        attribute = _HEADERS.get(key.lower())
        if attribute is not None:
            attributes[attribute] = value.decode("latin-1")
    query = (scope.get("query_string") or b"").decode("latin-1")
    invocation, _ = middleware.begin(query or None, "WS", route, query=True)
    if invocation.span.is_recording():
        invocation.span.set_attributes(attributes)
    if query and invocation.remainder is not query:
        changes["query_string"] = (invocation.remainder or "").encode("latin-1")
    if middleware.inject_headers:
        injected = with_trace_headers(headers, invocation)
        if injected is not None:
            changes["headers"] = injected
    # A copy: the server's scope stays as it came.
    return ({**scope, **changes} if changes else scope), invocation


class _Session(Lifecycle):
    """The messages of one session: counted each way; the span ends at a close, a disconnect,
    or the app's return or exception, whichever is first."""

    __slots__ = ("_receive", "_send", "received", "sent")

    def __init__(self, invocation: Invocation, receive: Receive, send: Send) -> None:
        self._invocation = invocation
        self._receive = receive
        self._send = send
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

    def end(self, error: BaseException | None = None, code: object = None) -> None:
        """End the span once, with the counts, the close code and *error* when given."""
        invocation = self._invocation
        if invocation.ended:
            return
        attributes: dict[str, Any] = {MESSAGES_RECEIVED: self.received, MESSAGES_SENT: self.sent}
        if isinstance(code, int):
            attributes[CLOSE_CODE] = code
        guard("record the session", None, invocation.span.set_attributes, attributes)
        invocation.end(error)
