"""The trace context as it leaves on the wire: in the signed CustomAttributes of every call."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from _client_support import (
    HEADER,
    OPERATIONS,
    Wire,
    call_params,
    header,
    signed_headers,
    traceparent_of,
)
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.context import attach, detach
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

import sm_tracing

UUID = "7f9c2f2e-3b1a-4c7e-9d55-0a1b2c3d4e5f"


def _only_span(exporter: InMemorySpanExporter) -> Any:
    spans = exporter.get_finished_spans()
    assert len(spans) == 1, [span.name for span in spans]
    return spans[0]


def _read(client: Any, method: str, response: dict[str, Any]) -> None:
    if method == "invoke_endpoint_with_response_stream":
        list(response["Body"])


@pytest.mark.usefixtures("instrumented")
@pytest.mark.parametrize("method", sorted(OPERATIONS))
def test_each_operation_sends_the_client_span_as_a_signed_parameter(
    client: Any, wire: Wire, exporter: InMemorySpanExporter, method: str
) -> None:
    """Every operation carries a traceparent naming its client span, signed by SigV4."""
    response = getattr(client, method)(**call_params(method))
    _read(client, method, response)
    span = _only_span(exporter)
    assert span.name == f"SageMaker Runtime.{OPERATIONS[method]}"
    trace_id, span_id = traceparent_of(wire.custom_attributes())
    assert trace_id == f"{span.context.trace_id:032x}"
    assert span_id == f"{span.context.span_id:016x}"
    assert "x-amzn-sagemaker-custom-attributes" in signed_headers(wire.last)


def _traceparent(span: Any) -> str:
    flags = f"{span.context.trace_flags:02x}"
    return f"traceparent=00-{span.context.trace_id:032x}-{span.context.span_id:016x}-{flags}"


@pytest.mark.usefixtures("instrumented")
@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, "{tp}"),
        ("accept_eula=true", "accept_eula=true;{tp}"),
        ("tfs-model-name=m", "tfs-model-name=m,{tp}"),
        ("tfs-model-name=m,tfs-method=predict", "tfs-model-name=m,tfs-method=predict,{tp}"),
        ("a=1;b=2", "a=1;b=2;{tp}"),
        (
            "a=1;traceparent=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01;b=2",
            "a=1;b=2;{tp}",
        ),
        ("x-starting-token=abc;", "x-starting-token=abc;{tp};"),
        (UUID, UUID),
        ('{"user": "u1"}', '{"user": "u1"}'),
    ],
    ids=["none", "jumpstart", "tfs", "tfs-two", "pairs", "replaces", "trailing", "uuid", "json"],
)
def test_merges_into_what_the_caller_sent(
    client: Any, wire: Wire, exporter: InMemorySpanExporter, given: str | None, expected: str
) -> None:
    """The caller's pairs keep their order and separator, an old traceparent is replaced and
    a value that is not a key=value list goes out untouched."""
    extra = {} if given is None else {"CustomAttributes": given}
    client.invoke_endpoint(**call_params("invoke_endpoint", **extra))
    span = _only_span(exporter)
    assert wire.custom_attributes() == expected.replace("{tp}", _traceparent(span))


def test_inject_opaque_appends_to_a_bare_value(
    tracer_provider: TracerProvider, client: Any, wire: Wire, exporter: InMemorySpanExporter
) -> None:
    """With inject_opaque, a bare UUID gets the traceparent appended after a ';'."""
    sm_tracing.instrument(tracer_provider=tracer_provider, inject_opaque=True)
    try:
        client.invoke_endpoint(**call_params("invoke_endpoint", CustomAttributes=UUID))
    finally:
        sm_tracing.uninstrument()
    assert wire.custom_attributes() == f"{UUID};{_traceparent(_only_span(exporter))}"


@pytest.mark.usefixtures("instrumented")
def test_over_budget_skips_with_one_warning_per_endpoint(
    client: Any, wire: Wire, exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    """A 1000-character value leaves no room: it is sent as it was, never truncated, and the
    endpoint is warned about once."""
    value = "k=" + "v" * 998
    with caplog.at_level(logging.WARNING, logger="sm_tracing"):
        for _ in range(3):
            client.invoke_endpoint(**call_params("invoke_endpoint", CustomAttributes=value))
    assert [wire.custom_attributes(i) for i in range(3)] == [value] * 3
    warnings = [r for r in caplog.records if "1024" in r.getMessage()]
    assert len(warnings) == 1
    assert "my-endpoint" in warnings[0].getMessage()
    assert len(exporter.get_finished_spans()) == 3


@pytest.mark.usefixtures("instrumented")
def test_exactly_at_budget_fits(client: Any, wire: Wire, exporter: InMemorySpanExporter) -> None:
    """A value that leaves exactly room for ';' and the traceparent gets it: 1024 characters."""
    value = "k=" + "v" * (1024 - len(";traceparent=") - 55 - 2)
    client.invoke_endpoint(**call_params("invoke_endpoint", CustomAttributes=value))
    sent = wire.custom_attributes()
    assert sent == f"{value};{_traceparent(_only_span(exporter))}"
    assert sent is not None and len(sent) == 1024


@pytest.mark.usefixtures("instrumented")
def test_tracestate_and_baggage_are_encoded_and_dropped_first(
    client: Any, wire: Wire, exporter: InMemorySpanExporter
) -> None:
    """tracestate and baggage travel percent-encoded; over budget baggage goes first, then
    tracestate, and the traceparent stays."""
    parent = SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C,
        0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("vendor", "a:b")]),
    )
    context = trace.set_span_in_context(NonRecordingSpan(parent))
    context = baggage.set_baggage("user", "u;1", context)
    token = attach(context)
    try:
        client.invoke_endpoint(**call_params("invoke_endpoint", CustomAttributes="a=1"))
        roomy = wire.custom_attributes()
        room = 1024 - len(";traceparent=") - 55 - len(";tracestate=vendor%3Da:b") - 2
        tight = "k=" + "v" * room
        client.invoke_endpoint(**call_params("invoke_endpoint", CustomAttributes=tight))
        squeezed = wire.custom_attributes()
        tighter = "k=" + "v" * (room + 1)
        client.invoke_endpoint(**call_params("invoke_endpoint", CustomAttributes=tighter))
        tightest = wire.custom_attributes()
    finally:
        detach(token)
    assert roomy is not None
    assert roomy.startswith("a=1;traceparent=00-0af7651916cd43dd8448eb211c80319c-")
    assert ";tracestate=vendor%3Da:b" in roomy
    assert ";baggage=user%3Du%253B1" in roomy
    assert squeezed is not None and "tracestate=" in squeezed and "baggage" not in squeezed
    assert len(squeezed) == 1024
    assert tightest is not None and "traceparent=" in tightest
    assert "tracestate" not in tightest and "baggage" not in tightest


@pytest.mark.parametrize(
    ("endpoints", "injected"),
    [
        ({"my-endpoint"}, True),
        (["other"], False),
        (lambda name, params: name.startswith("my-"), True),
        (lambda name, params: params.get("TargetModel") == "x.tar.gz", False),
    ],
    ids=["set-in", "list-out", "callable-in", "callable-out"],
)
def test_per_endpoint_control(
    tracer_provider: TracerProvider,
    client: Any,
    wire: Wire,
    exporter: InMemorySpanExporter,
    *,
    endpoints: Any,
    injected: bool,
) -> None:
    """``endpoints`` turns injection on or off per endpoint; the span is made either way."""
    sm_tracing.instrument(tracer_provider=tracer_provider, endpoints=endpoints)
    try:
        client.invoke_endpoint(**call_params("invoke_endpoint", CustomAttributes="a=1"))
    finally:
        sm_tracing.uninstrument()
    _only_span(exporter)
    assert (wire.custom_attributes() != "a=1") is injected


def test_a_failing_endpoint_filter_does_not_break_the_call(
    tracer_provider: TracerProvider, client: Any, wire: Wire, exporter: InMemorySpanExporter
) -> None:
    """A filter that raises is logged; the call goes out as it was, with its span."""

    def broken(name: str, params: Any) -> bool:
        raise RuntimeError("bad filter")

    sm_tracing.instrument(tracer_provider=tracer_provider, endpoints=broken)
    try:
        response = client.invoke_endpoint(**call_params("invoke_endpoint", CustomAttributes="a=1"))
    finally:
        sm_tracing.uninstrument()
    assert response["Body"].read() == b'{"outputs": "hello"}'
    assert wire.custom_attributes() == "a=1"
    _only_span(exporter)


def test_inference_id_from_trace(
    tracer_provider: TracerProvider, client: Any, wire: Wire, exporter: InMemorySpanExporter
) -> None:
    """With inference_id_from_trace, an unset InferenceId becomes the trace id; a set one stays."""
    sm_tracing.instrument(tracer_provider=tracer_provider, inference_id_from_trace=True)
    try:
        client.invoke_endpoint(**call_params("invoke_endpoint"))
        client.invoke_endpoint(**call_params("invoke_endpoint", InferenceId="mine"))
    finally:
        sm_tracing.uninstrument()
    first, _ = exporter.get_finished_spans()
    trace_id = f"{first.context.trace_id:032x}"
    assert header(wire.requests[0].headers, "X-Amzn-SageMaker-Inference-Id") == trace_id
    assert first.attributes["aws.sagemaker.inference_id"] == trace_id
    assert header(wire.requests[1].headers, "X-Amzn-SageMaker-Inference-Id") == "mine"


@pytest.mark.parametrize(
    "endpoints", [["other"], lambda name, params: False], ids=["names", "callable"]
)
def test_an_excluded_endpoint_is_left_untouched(
    tracer_provider: TracerProvider,
    client: Any,
    wire: Wire,
    exporter: InMemorySpanExporter,
    endpoints: Any,
) -> None:
    """An endpoint left out by ``endpoints`` gets neither the trace context nor an InferenceId
    from inference_id_from_trace; its call is still traced."""
    sm_tracing.instrument(
        tracer_provider=tracer_provider, endpoints=endpoints, inference_id_from_trace=True
    )
    try:
        client.invoke_endpoint(**call_params("invoke_endpoint", CustomAttributes="a=1"))
    finally:
        sm_tracing.uninstrument()
    assert wire.custom_attributes() == "a=1"
    assert header(wire.last.headers, "X-Amzn-SageMaker-Inference-Id") is None
    assert "aws.sagemaker.inference_id" not in (_only_span(exporter).attributes or {})


@pytest.mark.usefixtures("instrumented")
def test_inference_id_left_alone_by_default(client: Any, wire: Wire) -> None:
    """Without the option no InferenceId is added."""
    client.invoke_endpoint(**call_params("invoke_endpoint"))
    assert header(wire.last.headers, "X-Amzn-SageMaker-Inference-Id") is None


@pytest.mark.usefixtures("instrumented")
def test_suppress_instrumentation_is_honoured(
    client: Any, wire: Wire, exporter: InMemorySpanExporter
) -> None:
    """Under suppress_instrumentation there is no span and nothing injected."""
    with suppress_instrumentation():
        client.invoke_endpoint(**call_params("invoke_endpoint", CustomAttributes="a=1"))
    assert wire.custom_attributes() == "a=1"
    assert exporter.get_finished_spans() == ()


@pytest.mark.usefixtures("instrumented")
def test_the_plain_suppression_key_is_honoured(
    client: Any, wire: Wire, exporter: InMemorySpanExporter
) -> None:
    """Under the plain ``suppress_instrumentation`` key alone, as older instrumentations set
    it, there is no span and nothing injected."""
    token = attach(otel_context.set_value("suppress_instrumentation", True))
    try:
        client.invoke_endpoint(**call_params("invoke_endpoint", CustomAttributes="a=1"))
    finally:
        detach(token)
    assert wire.custom_attributes() == "a=1"
    assert exporter.get_finished_spans() == ()


@pytest.mark.usefixtures("instrumented")
def test_no_custom_attributes_header_is_invented_when_nothing_is_traced(
    wire: Wire, exporter: InMemorySpanExporter
) -> None:
    """A call of another service goes untouched and makes no span."""
    import botocore.session

    sts = botocore.session.get_session().create_client(
        "sts", region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b"
    )
    seen: list[Any] = []

    def answer(request: Any, **_: Any) -> Any:
        seen.append(request)
        return Wire(lambda r: _sts_identity())(request)

    sts.meta.events.register("before-send.sts", answer)
    assert sts.get_caller_identity()["Account"] == "123456789012"
    assert header(seen[0].headers, HEADER) is None
    assert exporter.get_finished_spans() == ()


def _sts_identity() -> Any:
    from _client_support import Canned

    body = (
        b"<GetCallerIdentityResponse><GetCallerIdentityResult><Arn>arn:aws:iam::123456789012:"
        b"user/u</Arn><UserId>U</UserId><Account>123456789012</Account>"
        b"</GetCallerIdentityResult></GetCallerIdentityResponse>"
    )
    return Canned(200, {"Content-Type": "text/xml"}, body)


@pytest.mark.usefixtures("instrumented")
def test_a_failing_propagator_does_not_break_the_call(
    client: Any, wire: Wire, exporter: InMemorySpanExporter
) -> None:
    """A propagator that raises costs the trace context, not the call."""
    from opentelemetry.propagators.textmap import TextMapPropagator

    class Broken(TextMapPropagator):
        def extract(self, carrier: Any, context: Any = None, getter: Any = None) -> Any:
            return otel_context.get_current()

        def inject(self, carrier: Any, context: Any = None, setter: Any = None) -> None:
            raise RuntimeError("broken propagator")

        @property
        def fields(self) -> set[str]:
            return {"traceparent"}

    from opentelemetry import propagate

    original = propagate.get_global_textmap()
    propagate.set_global_textmap(Broken())
    try:
        response = client.invoke_endpoint(**call_params("invoke_endpoint", CustomAttributes="a=1"))
    finally:
        propagate.set_global_textmap(original)
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert wire.custom_attributes() == "a=1"
    _only_span(exporter)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "accept_eula=true",
        "tfs-model-name=m",
        "a=1;b=2;",
        "a=1;traceparent=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "x=traceparent=00-00000000000000000000000000000000-0000000000000000-00",
        UUID,
        "k=" + "v" * 955,
        "k=" + "v" * 956,
        "caf\u00e9=1",
    ],
)
@pytest.mark.parametrize("opaque", [False, True])
def test_cached_layout_merges_each_call_its_own_context(
    tracer: Any, value: str | None, opaque: bool
) -> None:
    """The codec lays a value out once; every later merge still carries its own span."""
    from sm_tracing._propagation import merge_context

    results = []
    for _ in range(2):  # the second time the caller's value comes from the cache
        with tracer.start_as_current_span("caller") as span:
            merged, reason = merge_context(value, otel_context.get_current(), opaque=opaque)
        results.append((merged, reason, span.get_span_context()))
    (first, first_reason, first_span), (second, second_reason, second_span) = results
    assert first_reason == second_reason
    if first is None:
        assert second is None
        return
    assert second is not None
    for merged, span_context in ((first, first_span), (second, second_span)):
        assert f"-{span_context.span_id:016x}-" in merged
    assert first.replace(f"{first_span.trace_id:032x}-{first_span.span_id:016x}", "X") == (
        second.replace(f"{second_span.trace_id:032x}-{second_span.span_id:016x}", "X")
    )
