"""``WSGIMiddleware``: each invocation of a WSGI app (Flask, gunicorn, any WSGI server) becomes
the container span of the caller's trace.

Traced: ``/invocations`` and multi-model ``/models/{name}/invoke``, plus ``/ping`` when asked
and any extra ``paths``. The span is named after the method and route (``POST /invocations``,
``POST /models/{name}/invoke``) unless ``name`` is given. The app sees CustomAttributes
without our keys; the response gets ``traceresponse`` merged into its CustomAttributes before
the status line leaves. The span ends when the body is exhausted or closed (a streamed body is
traced to its last chunk), or when the app returns a body already materialised as a list.
The SageMaker attributes are set when the span starts; the HTTP ones (method, path, status)
with the status, in one call, as this is every request's path. With ``inject_headers`` the
configured propagator also writes the span's context into the request headers the app sees
(``HTTP_TRACEPARENT`` ...), for an app that traces from them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, TypeAlias

from opentelemetry import context as otel_context
from opentelemetry.trace import Status, StatusCode

from sm_tracing._common import (
    ERROR_TYPE,
    INFERENCE_ID,
    SERVER_DURATION,
    SESSION_ID,
    STATUS_CODE,
    TARGET_MODEL,
    duration_histogram,
    guard,
)
from sm_tracing._container import Invocation
from sm_tracing._middleware import MODEL_ROUTE, Middleware, model_name, trace_headers, with_echo

ExcInfo: TypeAlias = tuple[type[BaseException], BaseException, TracebackType | None]
Headers: TypeAlias = list[tuple[str, str]]
StartResponse: TypeAlias = Callable[..., Callable[[bytes], object]]
Environ: TypeAlias = dict[str, Any]
WSGIApp: TypeAlias = Callable[[Environ, StartResponse], Iterable[bytes]]

_KEY = "HTTP_X_AMZN_SAGEMAKER_CUSTOM_ATTRIBUTES"
_INFERENCE_ID = "HTTP_X_AMZN_SAGEMAKER_INFERENCE_ID"
_TARGET_MODEL = "HTTP_X_AMZN_SAGEMAKER_TARGET_MODEL"
_SESSION_ID = "HTTP_X_AMZN_SAGEMAKER_SESSION_ID"
_ERROR = Status(StatusCode.ERROR)


def environ_key(name: str) -> str:
    """The WSGI environ key of the request header *name*."""
    return "HTTP_" + name.upper().replace("-", "_")


class WSGIMiddleware(Middleware[WSGIApp]):
    """Trace the SageMaker invocations a WSGI app serves, continuing the caller's trace.

    ``WSGIMiddleware(app, **options)``, the options described on ``__init__``.
    """

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or ""
        route = self._routes.get(path)
        model = None
        if route is None:
            model = model_name(path)
            if model is None:
                return self.app(environ, start_response)
            route = MODEL_ROUTE
        method = environ.get("REQUEST_METHOD") or "GET"
        # Every attribute goes on in one call, with the status: each call costs.
        attributes: dict[str, Any] = {"http.request.method": method, "url.path": path}
        invocation = guard(
            "start the container span", None, self._start, environ, attributes, route, model
        )
        if invocation is None:
            return self.app(environ, start_response)
        span = invocation.span
        echo = self._echo
        measured: dict[str, Any] = {"http.request.method": method, "http.route": route}
        histogram = duration_histogram(SERVER_DURATION, self._meter_provider)
        if histogram is not None:
            invocation.measure(histogram, measured)

        def traced_start_response(
            status: str, headers: Headers, exc_info: ExcInfo | None = None
        ) -> Callable[[bytes], object]:
            headers = guard("trace the response status", headers, respond, status, headers)
            return start_response(status, headers, exc_info)

        def respond(status: str, headers: Headers) -> Headers:
            code = int(status[:3])
            attributes[STATUS_CODE] = measured[STATUS_CODE] = code
            span.set_attributes(attributes)
            if code >= 500:
                span.set_status(_ERROR)
                measured[ERROR_TYPE] = str(code)
            if echo:
                return with_echo(headers, invocation) or headers
            return headers

        try:
            body = self.app(environ, traced_start_response)
        except BaseException as exc:
            if STATUS_CODE not in attributes:
                guard("record the request", None, span.set_attributes, attributes)
            invocation.end(exc)
            raise
        finally:
            invocation.detach()
        if type(body) is list:
            # Already materialised: nothing of the app's runs after this.
            invocation.end()
            return body
        return _Body(invocation, body)

    def _start(
        self, environ: Environ, attributes: dict[str, Any], route: str, model: str | None
    ) -> Invocation:
        get = environ.get
        value = get(_INFERENCE_ID)
        if value is not None:
            attributes[INFERENCE_ID] = value
        value = get(_TARGET_MODEL) or model
        if value is not None:
            attributes[TARGET_MODEL] = value
        value = get(_SESSION_ID)
        if value is not None:
            attributes[SESSION_ID] = value
        raw = get(_KEY)
        invocation = self.begin(raw, attributes["http.request.method"], route)
        remainder = invocation.remainder
        if remainder is not raw:
            if remainder:
                environ[_KEY] = remainder
            else:
                del environ[_KEY]
        if self._inject_headers:
            inject_environ(environ, invocation)
        return invocation


def inject_environ(environ: Environ, invocation: Invocation) -> None:
    """Write *invocation*'s context into *environ* as the request headers the configured
    propagator reads (``HTTP_TRACEPARENT`` ...), replacing those of its fields the request had.
    Never raises: on failure the environ is left as it was."""
    found = trace_headers(invocation)
    if found is None:
        return
    written, drop = found
    for name in drop:
        environ.pop(environ_key(name), None)
    for name, value in written.items():
        environ[environ_key(name)] = value


class _Body:
    """The app's body, passed through; the span ends when it is exhausted or closed, and is
    current while the app's body runs."""

    __slots__ = ("_body", "_ended", "_invocation", "_iterator")

    def __init__(self, invocation: Invocation, body: Iterable[bytes]) -> None:
        self._invocation = invocation
        self._body = body
        self._ended = False
        self._iterator: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        # The span is current while the app's body produces a chunk, not while it is sent.
        token = otel_context.attach(self._invocation.context)  # type: ignore[arg-type]
        try:
            iterator = self._iterator
            if iterator is None:
                iterator = self._iterator = iter(self._body)
            return next(iterator)
        except StopIteration:
            self._end(None)
            raise
        except BaseException as exc:
            self._end(exc)
            raise
        finally:
            otel_context.detach(token)

    def close(self) -> None:
        """Close the app's body (WSGI servers call this when done or when the client went
        away) and end the span."""
        error: BaseException | None = None
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                token = otel_context.attach(self._invocation.context)  # type: ignore[arg-type]
                try:
                    close()
                finally:
                    otel_context.detach(token)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._end(error)

    def _end(self, error: BaseException | None) -> None:
        if not self._ended:
            self._ended = True
            self._invocation.end(error)
