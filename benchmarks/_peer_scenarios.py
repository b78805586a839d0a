"""What a user would pick instead of sm_tracing to trace SageMaker calls, measured on the same
call as ours: OpenLLMetry's SageMaker instrumentation and the X-Ray SDK's botocore patch.

Each is set up as its documentation has a user set it up, with its defaults, and checks after
the run that it traced every call. Neither can be undone in a process (the X-Ray SDK has no
unpatch), so each runs only in a process of its own, as every configuration does.
"""

from __future__ import annotations

from typing import Any

from benchmarks._base import APP_ATTRIBUTES, Scenario, closing, expect, per_call, provider
from benchmarks._client_scenarios import Wire, _invoke, client

# The extra of sm-tracing that installs the peers.
EXTRA = "bench-peers"
# The module each peer configuration needs.
MODULES = {
    "client-openllmetry": "opentelemetry.instrumentation.sagemaker",
    "client-xray": "aws_xray_sdk",
}
# The name X-Ray gives a subsegment of a sagemaker-runtime call: the service's endpoint prefix.
XRAY_SUBSEGMENT = "runtime.sagemaker"


def client_openllmetry() -> Scenario:
    """OpenLLMetry's ``opentelemetry-instrumentation-sagemaker`` with its defaults (it records
    the request and response bodies on the span) and our tracer provider; the client is made
    after ``instrument()``, since it instruments clients as they are created."""
    from opentelemetry.instrumentation.sagemaker import SageMakerInstrumentor

    tracer_provider, exporter = provider()
    instrumentor = SageMakerInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider)
    wire = Wire()
    call = _invoke(client(wire))

    def check(calls: int) -> None:
        expect(exporter.exported == calls, f"{exporter.exported} spans for {calls} calls")
        last = exporter.last
        expect(
            last is not None and last.name == "sagemaker.completion",
            "the last span is not OpenLLMetry's",
        )
        # It sends no trace context: the container's side of the trace is lost.
        expect(wire.sent_attributes() == APP_ATTRIBUTES, "CustomAttributes changed on the wire")

    return Scenario(
        per_call(call), check, closing(instrumentor.uninstrument, tracer_provider.shutdown)
    )


class CountingEmitter:
    """An X-Ray emitter that counts the subsegments and segments handed to it and sends nothing,
    as the spans' exporter of every other configuration does."""

    ip = "127.0.0.1"
    port = 2000

    def __init__(self) -> None:
        self.subsegments = 0
        self.segments = 0

    def send_entity(self, entity: Any) -> None:
        if getattr(entity, "type", None) == "subsegment":
            self.subsegments += 1
        else:
            self.segments += 1

    def set_daemon_address(self, address: str) -> None:
        pass


def client_xray() -> Scenario:
    """The X-Ray SDK's botocore patch, ``patch(("botocore",))``, with every call made under an
    open, sampled segment, as a traced request handler makes them: one subsegment per call,
    streamed out as the segment fills, and the ``X-Amzn-Trace-Id`` header on the request."""
    from aws_xray_sdk.core import patch, xray_recorder

    emitter = CountingEmitter()
    xray_recorder.configure(
        emitter=emitter, sampling=False, context_missing="IGNORE_ERROR", service="bench"
    )
    patch(("botocore",))
    segment = xray_recorder.begin_segment("bench", sampling=1)
    wire = Wire()
    call = _invoke(client(wire))

    def check(calls: int) -> None:
        held = sum(sub.name == XRAY_SUBSEGMENT for sub in segment.subsegments)
        traced = emitter.subsegments + held
        expect(traced == calls, f"{traced} subsegments for {calls} calls")
        sent = wire.last_request.headers.get("X-Amzn-Trace-Id") or b""
        sent = sent.decode() if isinstance(sent, bytes) else sent
        expect(f"Root={segment.trace_id}" in sent, "no X-Amzn-Trace-Id of the segment sent")
        expect(wire.sent_attributes() == APP_ATTRIBUTES, "CustomAttributes changed on the wire")

    return Scenario(per_call(call), check, xray_recorder.end_segment)
