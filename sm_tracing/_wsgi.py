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

import logging
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Generic, TypeAlias, TypeVar

from opentelemetry import context as otel_context
from opentelemetry.propagate import get_global_textmap
from opentelemetry.propagators.textmap import Setter, TextMapPropagator
from opentelemetry.trace import Span, Status, StatusCode, TracerProvider

from sm_tracing import _propagation
from sm_tracing._carriers import HEADER, HEADER_LOWER, STATUS_CODE, echo_pair
from sm_tracing._container import (
    RemoteContext,
    begin,
    get_tracer,
    inject_headers_option,
    read_carrier,
    record_error,
    remote_context_policy,
)

_logger = logging.getLogger(__name__)

ExcInfo: TypeAlias = tuple[type[BaseException], BaseException, TracebackType | None]
Headers: TypeAlias = list[tuple[str, str]]
StartResponse: TypeAlias = Callable[..., Callable[[bytes], object]]
Environ: TypeAlias = dict[str, Any]
WSGIApp: TypeAlias = Callable[[Environ, StartResponse], Iterable[bytes]]
App = TypeVar("App")

_KEY = "HTTP_X_AMZN_SAGEMAKER_CUSTOM_ATTRIBUTES"
_INFERENCE_ID = "HTTP_X_AMZN_SAGEMAKER_INFERENCE_ID"
_TARGET_MODEL = "HTTP_X_AMZN_SAGEMAKER_TARGET_MODEL"
_SESSION_ID = "HTTP_X_AMZN_SAGEMAKER_SESSION_ID"
_MODEL_ROUTE = "/models/{name}/invoke"
_HEADER_LENGTH = len(HEADER)
_ERROR = Status(StatusCode.ERROR)


def traced_routes(trace_ping: bool, paths: Iterable[str] | None) -> dict[str, str]:
    """The exact paths traced, each with the route its span is named after."""
    routes = {"/invocations": "/invocations"}
    if trace_ping:
        routes["/ping"] = "/ping"
    for path in paths or ():
        routes[path] = path
    return routes


def model_name(path: str) -> str | None:
    """The model of a multi-model path ``/models/{name}/invoke``, or None for another path."""
    if path.startswith("/models/") and path.endswith("/invoke") and len(path) > 15:
        return path[8:-7]
    return None


class Middleware(Generic[App]):
    """What the WSGI and ASGI middlewares share: their options, decided once, at construction."""

    def __init__(
        self,
        app: App,
        *,
        tracer_provider: TracerProvider | None = None,
        remote_context: RemoteContext | None = None,
        trace_ping: bool = False,
        echo: bool = True,
        paths: Iterable[str] | None = None,
        name: str | None = None,
        inject_headers: bool | None = None,
    ) -> None:
        """Wrap *app*. Options: ``tracer_provider``; ``remote_context`` (``"continue"``,
        ``"link"`` or ``"ignore"``, else ``SM_TRACING_REMOTE_CONTEXT``); ``trace_ping``
        (False); ``echo`` (True: ``traceresponse`` in the response CustomAttributes);
        ``paths`` (more exact paths to trace); ``name`` (one span name for all);
        ``inject_headers`` (else ``SM_TRACING_INJECT_HEADERS``, else False: the span's context
        written by the configured propagator into the request headers the app sees, replacing
        any it had, so an app that traces from a ``traceparent`` header makes its spans
        children of ours)."""
        self.app = app
        self._tracer_provider = tracer_provider
        self._tracer = get_tracer(tracer_provider)
        self._policy = remote_context_policy(remote_context)
        self._routes = traced_routes(trace_ping, paths)
        self._inject_headers = inject_headers_option(inject_headers)
        self._echo = echo
        self._name = name


class _LowerCaseSetter(Setter[dict[str, str]]):
    def set(self, carrier: dict[str, str], key: str, value: str) -> None:
        carrier[key.lower()] = value


_SETTER = _LowerCaseSetter()
_fields_cache: tuple[TextMapPropagator | None, dict[str, str]] = (None, {})


def environ_key(name: str) -> str:
    """The WSGI environ key of the request header *name*."""
    return "HTTP_" + name.upper().replace("-", "_")


def _fields(propagator: TextMapPropagator) -> dict[str, str]:
    """The header names *propagator* reads and writes, lower-cased, each with its environ key."""
    global _fields_cache  # noqa: PLW0603 - a one-entry cache, swapped whole, so no lock is needed
    cached_for, fields = _fields_cache
    if cached_for is not propagator:
        fields = {field.lower(): environ_key(field) for field in propagator.fields}
        _fields_cache = (propagator, fields)
    return fields


def trace_headers(
    span: Span, context: otel_context.Context | None
) -> tuple[dict[str, str], dict[str, str]] | None:
    """The request headers (lower-cased names) the configured propagator writes for *context*
    (the current one when None), whose span is *span*, and its fields (see ``_fields``), to
    take out of the request before adding them. None when the span context is invalid, nothing
    is written, or the propagator fails (logged). Never raises."""
    try:
        if not span.get_span_context().is_valid:
            return None
        propagator = get_global_textmap()
        written: dict[str, str] = {}
        propagator.inject(written, context=context, setter=_SETTER)
        if not written:
            return None
        return written, _fields(propagator)
    except Exception:
        _logger.warning("could not write the trace context into the request headers", exc_info=True)
        return None


def inject_environ(environ: Environ, span: Span, context: otel_context.Context) -> None:
    """Write *context*, whose span is *span*, into *environ* as the request headers the
    configured propagator reads (``HTTP_TRACEPARENT`` ...), replacing those of its fields the
    request had. Never raises: on failure the environ is left as it was."""
    found = trace_headers(span, context)
    if found is None:
        return
    written, fields = found
    for key in fields.values():
        environ.pop(key, None)
    for name, value in written.items():
        environ[fields.get(name) or environ_key(name)] = value


class WSGIMiddleware(Middleware[WSGIApp]):
    """Trace the SageMaker invocations a WSGI app serves, continuing the caller's trace.

    ``WSGIMiddleware(app, **options)``, the options described on ``__init__``.
    """

    # One function on purpose: each call on this per-request path costs instructions.
    def __call__(  # noqa: PLR0915
        self, environ: Environ, start_response: StartResponse
    ) -> Iterable[bytes]:
        get = environ.get
        path = get("PATH_INFO") or ""
        route = self._routes.get(path)
        model = None
        if route is None:
            model = model_name(path)
            if model is None:
                return self.app(environ, start_response)
            route = _MODEL_ROUTE
        try:
            method = get("REQUEST_METHOD") or "GET"
            # The HTTP attributes go on with the status, in one call: each call costs.
            attributes: dict[str, Any] = {}
            value = get(_INFERENCE_ID)
            if value is not None:
                attributes["aws.sagemaker.inference_id"] = value
            value = get(_TARGET_MODEL) or model
            if value is not None:
                attributes["aws.sagemaker.target_model"] = value
            value = get(_SESSION_ID)
            if value is not None:
                attributes["aws.sagemaker.session_id"] = value
            raw = get(_KEY)
            pairs = None
            if raw is not None:
                pairs, stripped = read_carrier(raw)
                if stripped != raw:
                    if stripped:
                        environ[_KEY] = stripped
                    else:
                        del environ[_KEY]
            span, context = begin(
                self._tracer,
                self._name or f"{method} {route}",
                attributes or None,
                self._policy,
                raw,
                pairs,
            )
            if self._inject_headers:
                inject_environ(environ, span, context)
            token = otel_context.attach(context)
        except Exception:
            _logger.warning("could not start the container span", exc_info=True)
            return self.app(environ, start_response)
        echo = self._echo

        def traced_start_response(
            status: str, headers: Headers, exc_info: ExcInfo | None = None
        ) -> Callable[[bytes], object]:
            try:
                code = int(status[:3])
                span.set_attributes(
                    {"http.request.method": method, "url.path": path, STATUS_CODE: code}
                )
                if code >= 500:
                    span.set_status(_ERROR)
                if echo:
                    for name, _ in headers:
                        if len(name) == _HEADER_LENGTH and name.lower() == HEADER_LOWER:
                            headers = with_echo(headers, span)
                            break
                    else:
                        # The common case, inline: no CustomAttributes of the app's to merge.
                        headers = [*headers, (HEADER, echo_pair(span.get_span_context()))]
            except Exception:
                _logger.warning("could not trace the response status", exc_info=True)
            return start_response(status, headers, exc_info)

        try:
            body = self.app(environ, traced_start_response)
        except BaseException as exc:
            span.set_attributes({"http.request.method": method, "url.path": path})
            record_error(span, exc)
            span.end()
            raise
        finally:
            otel_context.detach(token)
        if type(body) is list:
            # Already materialised: nothing of the app's runs after this.
            span.end()
            return body
        return _Body(span, context, body)


def with_echo(headers: Headers, span: Span) -> Headers:
    """*headers* with *span* merged as ``traceresponse`` into their CustomAttributes (matched in
    any case, replaced rather than repeated); the same list when there is nothing to add."""
    span_context = span.get_span_context()
    if not span_context.is_valid:
        return headers
    for index, (name, value) in enumerate(headers):
        if len(name) == _HEADER_LENGTH and name.lower() == HEADER_LOWER:
            merged = _propagation.echo_value(value, span)
            if merged is None:
                return headers
            # A new list: the app may reuse its own between responses.
            copy = list(headers)
            copy[index] = (name, merged)
            return copy
    echo = echo_pair(span_context)
    return [*headers, (HEADER, echo)]


class _Body:
    """The app's body, passed through; the span ends when it is exhausted or closed, and is
    current while the app's body runs."""

    __slots__ = ("_body", "_context", "_ended", "_iterator", "_span")

    def __init__(self, span: Span, context: otel_context.Context, body: Iterable[bytes]) -> None:
        self._span = span
        self._context = context
        self._body = body
        self._ended = False
        self._iterator: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        # The span is current while the app's body produces a chunk, not while it is sent.
        token = otel_context.attach(self._context)
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
                token = otel_context.attach(self._context)
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
            if error is not None:
                record_error(self._span, error)
            self._span.end()
