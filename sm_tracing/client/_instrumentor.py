"""Installing and removing the client hook: ``instrument()``, ``uninstrument()`` and the
``SageMakerInstrumentor`` that ``opentelemetry-instrument`` loads from its entry point.

The hook wraps ``_make_api_call`` on botocore's (and aiobotocore's) client base class, so every
``sagemaker-runtime`` client is covered, whichever session made it and whether it was made
before or after ``instrument()``.
"""

from __future__ import annotations

import inspect
import logging
import sys
import threading
from collections.abc import Callable, Collection, Mapping
from functools import partial
from typing import Any

import wrapt
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from sm_tracing._common import unwrap
from sm_tracing._guard import guard
from sm_tracing.client._hook import (
    ClientHook,
    ClientOptions,
    EndpointFilter,
    GenAIModels,
    RuntimeHook,
)

_logger = logging.getLogger(__name__)

_METHOD = "_make_api_call"
_PARAMETERS = ["self", "operation_name", "api_params"]
_AIO_MODULE = "aiobotocore.client"
# Installing and removing happen under one lock, from whichever thread: the instrumentor's
# check-then-wrap would otherwise wrap twice when two threads instrument at once.
_LOCK = threading.RLock()


class SageMakerInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Traces every SageMaker runtime invocation and carries its context in CustomAttributes.

    ``instrument()`` takes ``tracer_provider`` and the options of :func:`instrument`; like every
    OpenTelemetry instrumentor it is a singleton and a second ``instrument()`` changes nothing.
    Both are safe to call from several threads at once.
    """

    _hook: RuntimeHook | None = None
    _extras: tuple[Callable[[], None], ...] = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> SageMakerInstrumentor:
        with _LOCK:
            instance: SageMakerInstrumentor = super().__new__(cls)
            return instance

    def instrument(self, **kwargs: Any) -> Any:
        with _LOCK:
            return super().instrument(**kwargs)

    def uninstrument(self, **kwargs: Any) -> Any:
        with _LOCK:
            return super().uninstrument(**kwargs)

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("botocore >= 1.34",)

    def _instrument(self, **kwargs: Any) -> None:
        options = kwargs.get("options")
        if not isinstance(options, ClientOptions):
            options = ClientOptions.from_keywords(kwargs)
        hook = RuntimeHook(options)
        wrap_make_api_call(hook)
        self._hook = hook
        self._extras = _install_extras(options, hook)

    def _uninstrument(self, **kwargs: Any) -> None:
        hook, self._hook = self._hook, None
        extras, self._extras = self._extras, ()
        for uninstall in extras:
            guard("remove a SageMaker client hook", None, uninstall)
        if hook is not None:
            unwrap_make_api_call(hook)


def _install_extras(options: ClientOptions, hook: RuntimeHook) -> tuple[Callable[[], None], ...]:
    """The other client hooks: bidirectional streams always (when the HTTP/2 SDK is imported,
    now or later), CreateTransformJob when asked for; how to remove each."""
    from sm_tracing.client import _bidi

    bidi = _bidi.install(options)
    extras: list[Callable[[], None]] = [partial(_bidi.uninstall, bidi)]
    if options.transform_jobs:
        from sm_tracing.client import _transform

        transform = _transform.install(hook.tracer)
        extras.append(partial(_transform.uninstall, transform))
    return tuple(extras)


def wrap_make_api_call(hook: ClientHook) -> None:
    """Wrap ``_make_api_call`` with *hook*'s wrappers: botocore's now, aiobotocore's now or
    when the application imports it."""
    import botocore.client

    with _LOCK:
        _patch(botocore.client.BaseClient, hook, False)
    # aiobotocore (and aiohttp under it) is patched when the application imports it, or now if
    # it already has: importing it here would slow every boto3-only start-up.
    wrapt.register_post_import_hook(partial(_wrap_aio, hook), _AIO_MODULE)


def unwrap_make_api_call(hook: ClientHook) -> None:
    """Undo :func:`wrap_make_api_call`: *hook* stops for good and its wrappers go."""
    import botocore.client

    with _LOCK:
        hook.unhook()
        unwrap(botocore.client.BaseClient, _METHOD, hook)
        aio_client = sys.modules.get(_AIO_MODULE)
        if aio_client is not None:
            unwrap(aio_client.AioBaseClient, _METHOD, hook)


def _wrap_aio(hook: ClientHook, module: Any) -> None:
    # Import hooks can't be unregistered: one left by an earlier install finds its hook
    # disabled and does nothing.
    with _LOCK:
        if hook.enabled:
            _patch(module.AioBaseClient, hook, True)


def _patch(owner: type, hook: ClientHook, aio: bool) -> None:
    """Put *hook*'s method (see ``ClientHook.method``) in place of ``owner._make_api_call``,
    unless the method takes other parameters than the ones it is made for: then say so, and
    leave the calls alone rather than risk them."""
    original = inspect.getattr_static(owner, _METHOD)
    try:
        parameters = list(inspect.signature(original).parameters)
    except (TypeError, ValueError):
        parameters = []
    if parameters != _PARAMETERS:
        _logger.warning(
            "SageMaker calls are not traced: %s.%s takes %s, not the %s it is traced by",
            owner.__name__,
            _METHOD,
            parameters,
            _PARAMETERS,
        )
        return
    setattr(owner, _METHOD, hook.method(original, aio))


def instrument(
    tracer_provider: TracerProvider | None = None,
    *,
    endpoints: Collection[str] | EndpointFilter | None = None,
    inject_opaque: bool = False,
    inference_id_from_trace: bool = False,
    record_echo: bool = True,
    meter_provider: MeterProvider | None = None,
    genai_models: Mapping[str, str] | GenAIModels | None = None,
    transform_jobs: bool = False,
) -> None:
    """Trace every ``sagemaker-runtime`` client call and carry its context in CustomAttributes.

    Covers InvokeEndpoint, InvokeEndpointWithResponseStream and InvokeEndpointAsync on every
    client, made before or after this call, from any boto3 or botocore session, and from
    aiobotocore when it is installed; and InvokeEndpointWithBidirectionalStream of
    aws-sdk-sagemaker-runtime-http2, whose context goes in ``ModelQueryString``.

    - ``endpoints``: where to inject: None for every endpoint, a collection of endpoint names,
      or a callable ``(endpoint_name, params) -> bool``. Spans are made either way.
    - ``inject_opaque``: also append to a CustomAttributes value that is not a ``key=value``
      list (a bare UUID, JSON), which is otherwise sent untouched.
    - ``inference_id_from_trace``: fill an unset ``InferenceId`` with the trace id, so Data
      Capture records join the trace.
    - ``record_echo``: record the container's ``traceresponse`` echo (and its time, with
      SageMaker's share of the call) on the client span and remove it from the response's
      CustomAttributes; False leaves the response as it came.
    - ``meter_provider``: where the client's metrics go; by default the global one, whose
      instruments record nothing until an SDK ``MeterProvider`` is installed.
    - ``genai_models``: what the GenAI endpoints serve: a mapping from endpoint name to model,
      or a callable ``(endpoint_name, params) -> model | None``. Their spans and metrics get
      the GenAI attributes and their metrics the GenAI client metrics' names.
    - ``transform_jobs``: also trace CreateTransformJob calls of ``sagemaker`` clients, their
      context in the job's ``Environment`` (``TRACEPARENT``, ...), where its containers find it.

    Calling it again while instrumented changes nothing; ``uninstrument()`` first to change
    the options. Raises TypeError for ``endpoints`` or ``genai_models`` of another kind.
    """
    options = ClientOptions(
        tracer_provider=tracer_provider,
        endpoints=endpoints,
        inject_opaque=inject_opaque,
        inference_id_from_trace=inference_id_from_trace,
        record_echo=record_echo,
        meter_provider=meter_provider,
        genai_models=genai_models,
        transform_jobs=transform_jobs,
    )
    with _LOCK:
        instrumentor = SageMakerInstrumentor()
        if instrumentor.is_instrumented_by_opentelemetry:
            _logger.debug("SageMaker calls are already instrumented; options left as they were")
            return
        instrumentor.instrument(options=options)


def uninstrument() -> None:
    """Stop tracing SageMaker calls: no more spans or injection, on any client."""
    with _LOCK:
        instrumentor = SageMakerInstrumentor()
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
