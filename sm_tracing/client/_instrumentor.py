"""Installing and removing the client hooks: ``instrument()``, ``uninstrument()`` and the
``SageMakerInstrumentor`` that ``opentelemetry-instrument`` loads from its entry point.

The runtime (and, when asked, transform job) hook patches ``_make_api_call`` on botocore's (and
aiobotocore's) client base class, so every client is covered, whichever session made it and
whether it was made before or after ``instrument()``; the bidirectional stream hook patches the
HTTP/2 SDK's client when the application imports it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Collection, Mapping
from typing import Any

from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from sm_tracing._guard import guard
from sm_tracing._telemetry import get_tracer
from sm_tracing.client import _bidi
from sm_tracing.client._lifecycle import ClientHook, Extension
from sm_tracing.client._metrics import meters
from sm_tracing.client._options import ClientOptions, EndpointFilter, GenAIModels
from sm_tracing.client._runtime import Runtime
from sm_tracing.client._transform import TransformJobs

_logger = logging.getLogger(__name__)

# Installing and removing happen under one lock, from whichever thread: the instrumentor's
# check-then-install would otherwise install twice when two threads instrument at once.
_LOCK = threading.RLock()


def _new_lock_in_child() -> None:
    # A fork while another thread held the lock leaves the child's copy held forever.
    global _LOCK  # noqa: PLW0603 - replaced whole, in the only thread the child has
    _LOCK = threading.RLock()


os.register_at_fork(after_in_child=_new_lock_in_child)


class SageMakerInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Traces every SageMaker runtime invocation and carries its context in CustomAttributes.

    ``instrument()`` takes ``tracer_provider`` and the options of :func:`instrument`; like every
    OpenTelemetry instrumentor it is a singleton. A second ``instrument()`` changes nothing (it
    warns when its options differ), unless another tool took the hook away since: then it puts
    the hook back. Both are safe to call from several threads at once.
    """

    _hook: ClientHook | None = None
    _bidi: _bidi.BidiHook | None = None
    _options: ClientOptions | None = None

    def __new__(cls, *args: Any, **kwargs: Any) -> SageMakerInstrumentor:
        with _LOCK:  # the first instance is the one instance, whichever thread makes it
            instance: SageMakerInstrumentor = super().__new__(cls)
            return instance

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("botocore >= 1.34",)

    @property
    def is_instrumented_by_opentelemetry(self) -> bool:
        """Whether SageMaker calls are traced: instrumented, and the hook still in place."""
        hook = self._hook
        instrumented: bool = super().is_instrumented_by_opentelemetry
        return instrumented and hook is not None and hook.installed()

    def instrument(self, **kwargs: Any) -> Any:
        with _LOCK:
            hook = self._hook
            if hook is not None:
                if hook.installed():
                    self._same_options(ClientOptions.from_keywords(_options_of(kwargs)))
                    return None
                _logger.warning(
                    "sm_tracing's hook on botocore's BaseClient._make_api_call was taken away by "
                    "another tool; installing it again"
                )
                super().uninstrument()
            return super().instrument(**kwargs)

    def uninstrument(self, **kwargs: Any) -> Any:
        with _LOCK:
            return super().uninstrument(**kwargs)

    def _same_options(self, options: ClientOptions) -> None:
        installed = self._options
        if installed is None:
            return
        differences = installed.differences(options)
        if differences:
            _logger.warning(
                "SageMaker calls are already instrumented; these options of the second "
                "instrument() were ignored: %s. Call sm_tracing.uninstrument() first to change "
                "them.",
                ", ".join(differences),
            )

    def _instrument(self, **kwargs: Any) -> None:
        options = ClientOptions.from_keywords(_options_of(kwargs))
        extensions: list[Extension] = [Runtime(options, meters(options.meter_provider))]
        if options.transform_jobs:
            extensions.append(TransformJobs())
        watch = options.tracer_provider is None
        hook = ClientHook(get_tracer(options.tracer_provider), extensions, watch)
        hook.install()
        self._hook = hook
        self._options = options
        self._bidi = _bidi.install(options)

    def _uninstrument(self, **kwargs: Any) -> None:
        hook, self._hook = self._hook, None
        bidi, self._bidi = self._bidi, None
        self._options = None
        if bidi is not None:
            guard("remove the bidirectional stream hook", None, _bidi.uninstall, bidi)
        if hook is not None:
            hook.uninstall()


def _options_of(kwargs: Mapping[str, Any]) -> Mapping[str, Any]:
    options = kwargs.get("options")
    if isinstance(options, ClientOptions):
        return {name: getattr(options, name) for name in ClientOptions.__dataclass_fields__}
    return kwargs


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
    aws-sdk-sagemaker-runtime-http2, whose context goes in ``ModelQueryString``. The context is
    written into the signed request's CustomAttributes header, merged with what the call's
    parameters and the application's own botocore handlers put there; the parameters are left
    as they were, so botocore's ``Stubber`` sees the caller's.

    - ``endpoints``: where to inject: None for every endpoint, a collection of endpoint names,
      or a callable ``(endpoint_name, params) -> bool``. Spans are made either way.
    - ``inject_opaque``: also append to a CustomAttributes value that is not a ``key=value``
      list (a bare UUID, JSON), which is otherwise sent untouched.
    - ``inference_id_from_trace``: send the trace id as the request's InferenceId when the
      caller set none, so Data Capture records join the trace.
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

    Calling it again while instrumented changes nothing and warns when the options differ;
    ``uninstrument()`` first to change them. Raises TypeError for ``endpoints`` or
    ``genai_models`` of another kind.
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
    SageMakerInstrumentor().instrument(options=options)


def uninstrument() -> None:
    """Stop tracing SageMaker calls: no more spans or injection, on any client."""
    instrumentor = SageMakerInstrumentor()
    with _LOCK:
        if instrumentor._hook is not None:
            instrumentor.uninstrument()
