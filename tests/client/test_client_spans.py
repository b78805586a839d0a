"""The client span: its place in the trace, its attributes, errors, and the container's echo."""

from __future__ import annotations

from typing import Any

import pytest
from _client_support import (
    REQUEST_ID,
    Canned,
    Wire,
    call_params,
    canned_for,
    echo_left_unread,
    instrumenting,
    make_client,
    model_error,
    traceparent_of,
)
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, Tracer

from tests.conftest import (
    BOTOCORE_ASYNC_INLINE_BODY,
    BOTOCORE_PREFIX_AWARE_ID,
    BOTOCORE_SESSION_ID,
    requires_botocore,
)

OTHER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CONTAINER_SPAN = "00f067aa0ba902b7"


def _client_span(exporter: InMemorySpanExporter) -> Any:
    spans = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


@pytest.mark.usefixtures("instrumented")
@requires_botocore(BOTOCORE_SESSION_ID, "sends SessionId")
def test_invoke_endpoint_attributes(client: Any, exporter: InMemorySpanExporter) -> None:
    """The span carries the rpc, server and SageMaker attributes of the request and response."""
    client.invoke_endpoint(
        **call_params(
            "invoke_endpoint",
            TargetModel="model-a.tar.gz",
            TargetVariant="variant-a",
            TargetContainerHostname="container-1",
            InferenceComponentName="ic-1",
            InferenceId="inference-1",
            SessionId="NEW_SESSION",
        )
    )
    span = _client_span(exporter)
    assert span.name == "SageMaker Runtime.InvokeEndpoint"
    assert dict(span.attributes) == {
        "rpc.system": "aws-api",
        "rpc.service": "SageMaker Runtime",
        "rpc.method": "InvokeEndpoint",
        "cloud.region": "us-east-1",
        "server.address": "runtime.sagemaker.us-east-1.amazonaws.com",
        "aws.request_id": REQUEST_ID,
        "http.response.status_code": 200,
        "aws.sagemaker.endpoint.name": "my-endpoint",
        "aws.sagemaker.target_model": "model-a.tar.gz",
        "aws.sagemaker.target_variant": "variant-a",
        "aws.sagemaker.target_container_hostname": "container-1",
        "aws.sagemaker.inference_component": "ic-1",
        "aws.sagemaker.inference_id": "inference-1",
        "aws.sagemaker.session_id": "NEW_SESSION",
        "aws.sagemaker.invoked_production_variant": "variant-a",
    }
    assert span.status.status_code is StatusCode.UNSET


@pytest.mark.usefixtures("instrumented")
@pytest.mark.parametrize("method", ["invoke_endpoint", "invoke_endpoint_with_response_stream"])
@requires_botocore(BOTOCORE_PREFIX_AWARE_ID, "sends PrefixAwareId")
def test_prefix_aware_id_is_recorded_like_the_other_routing_fields(
    client: Any, exporter: InMemorySpanExporter, method: str
) -> None:
    """PrefixAwareId (cache-aware routing) is recorded on the span of both real-time calls."""
    response = getattr(client, method)(**call_params(method, PrefixAwareId="tenant-a"))
    if method != "invoke_endpoint":
        list(response["Body"])
    assert _client_span(exporter).attributes["aws.sagemaker.prefix_aware_id"] == "tenant-a"


@pytest.mark.usefixtures("instrumented")
@requires_botocore(BOTOCORE_ASYNC_INLINE_BODY, "sends InvokeEndpointAsync a Body")
def test_async_call_with_an_inline_body(
    client: Any, wire: Wire, exporter: InMemorySpanExporter
) -> None:
    """InvokeEndpointAsync with an inline Body (no InputLocation) and a named output is traced
    and carries its traceparent; the body is never recorded."""
    params = {
        "EndpointName": "my-endpoint",
        "Body": b'{"inputs": "inline-secret"}',
        "ContentType": "application/json",
        "S3OutputPathExtension": "runs/run-1",
        "Filename": "result.json",
        "CustomAttributes": "a=1",
    }
    response = client.invoke_endpoint_async(**params)
    assert response["OutputLocation"] == "s3://bucket/out/abc.out"
    assert wire.last.body == b'{"inputs": "inline-secret"}'
    span = _client_span(exporter)
    assert span.name == "SageMaker Runtime.InvokeEndpointAsync"
    assert traceparent_of(wire.custom_attributes()) == (
        f"{span.context.trace_id:032x}",
        f"{span.context.span_id:016x}",
    )
    assert "inline-secret" not in repr(dict(span.attributes))


@pytest.mark.usefixtures("instrumented")
@requires_botocore(BOTOCORE_SESSION_ID, "sends SessionId")
def test_new_session_id_replaces_the_request_marker(
    client: Any, wire: Wire, exporter: InMemorySpanExporter
) -> None:
    """When SageMaker opens a session the span records its id, not ``NEW_SESSION``."""
    canned = canned_for("InvokeEndpoint")
    canned.headers["X-Amzn-SageMaker-New-Session-Id"] = "sess-42; Expires=2026-12-01T00:00:00Z"
    wire.respond = lambda request: canned
    client.invoke_endpoint(**call_params("invoke_endpoint", SessionId="NEW_SESSION"))
    session = _client_span(exporter).attributes["aws.sagemaker.session_id"]
    assert session.startswith("sess-42")


@pytest.mark.usefixtures("instrumented")
def test_async_attributes(client: Any, exporter: InMemorySpanExporter) -> None:
    """InvokeEndpointAsync records the inference id and the output and failure locations."""
    response = client.invoke_endpoint_async(**call_params("invoke_endpoint_async"))
    assert response["OutputLocation"] == "s3://bucket/out/abc.out"
    attributes = _client_span(exporter).attributes
    assert attributes["aws.sagemaker.inference_id"] == "inference-from-sagemaker"
    assert attributes["aws.sagemaker.output_location"] == "s3://bucket/out/abc.out"
    assert attributes["aws.sagemaker.failure_location"] == "s3://bucket/failures/abc.out"
    assert attributes["http.response.status_code"] == 202


def test_non_default_port_is_recorded(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """An endpoint_url on another port records server.port; the default port is left out."""
    wire = Wire()
    client = make_client(wire=wire, endpoint_url="http://127.0.0.1:8080")
    with instrumenting(tracer_provider=tracer_provider):
        client.invoke_endpoint(**call_params("invoke_endpoint"))
    attributes = _client_span(exporter).attributes
    assert attributes["server.address"] == "127.0.0.1"
    assert attributes["server.port"] == 8080


@pytest.mark.usefixtures("instrumented")
def test_span_is_a_child_of_the_callers_span_and_context_is_restored(
    client: Any, wire: Wire, exporter: InMemorySpanExporter, tracer: Tracer
) -> None:
    """The client span is a child of the caller's span, and afterwards the caller's span is
    current again."""
    with tracer.start_as_current_span("caller") as caller:
        client.invoke_endpoint(**call_params("invoke_endpoint"))
        assert trace.get_current_span() is caller
    span = _client_span(exporter)
    assert span.parent is not None
    assert span.parent.span_id == caller.get_span_context().span_id
    assert span.context.trace_id == caller.get_span_context().trace_id
    assert traceparent_of(wire.custom_attributes())[0] == f"{span.context.trace_id:032x}"


@pytest.mark.usefixtures("instrumented")
def test_a_callers_span_named_like_the_call_is_a_parent_not_the_calls_span(
    client: Any, wire: Wire, exporter: InMemorySpanExporter, tracer: Tracer
) -> None:
    """An application's own CLIENT span named "SageMaker Runtime.InvokeEndpoint" around two
    calls is their parent: each call has a span of its own, sent as its context, and the
    application's span gets none of the calls' attributes."""
    sent = []
    name = "SageMaker Runtime.InvokeEndpoint"
    with tracer.start_as_current_span(name, kind=SpanKind.CLIENT) as caller:
        for endpoint in ("first", "second"):
            client.invoke_endpoint(**call_params("invoke_endpoint", EndpointName=endpoint))
            sent.append(traceparent_of(wire.custom_attributes()))
    caller_id = caller.get_span_context().span_id
    (mine,) = [s for s in exporter.get_finished_spans() if s.context.span_id == caller_id]
    calls = [s for s in exporter.get_finished_spans() if s.context.span_id != caller_id]
    assert [s.attributes["aws.sagemaker.endpoint.name"] for s in calls] == ["first", "second"]
    for span, context_sent in zip(calls, sent, strict=True):
        assert span.parent is not None
        assert span.parent.span_id == caller_id
        assert context_sent == (f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}")
    assert "aws.sagemaker.endpoint.name" not in (mine.attributes or {})


@pytest.mark.usefixtures("instrumented")
def test_custom_attributes_and_bodies_are_never_recorded(
    client: Any, wire: Wire, exporter: InMemorySpanExporter
) -> None:
    """Neither the CustomAttributes value nor the request or response body shows on the span."""
    wire.respond = lambda request: canned_for("InvokeEndpoint", "secret-response=1")
    client.invoke_endpoint(
        **call_params("invoke_endpoint", CustomAttributes="api_key=secret-request")
    )
    span = _client_span(exporter)
    recorded = repr(dict(span.attributes)) + repr([e.attributes for e in span.events])
    for needle in ("secret-request", "secret-response", "traceparent", "inputs", "outputs"):
        assert needle not in recorded


@pytest.mark.usefixtures("instrumented")
def test_model_error_is_recorded_and_raised_unchanged(
    client: Any, wire: Wire, exporter: InMemorySpanExporter
) -> None:
    """A ModelError sets ERROR status, records the exception, the request id and the status
    code, and reaches the caller as botocore raised it."""
    wire.respond = lambda request: model_error()
    with pytest.raises(client.exceptions.ModelError) as raised:
        client.invoke_endpoint(**call_params("invoke_endpoint"))
    assert raised.value.response["OriginalStatusCode"] == 500
    span = _client_span(exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["aws.request_id"] == REQUEST_ID
    assert span.attributes["http.response.status_code"] == 424
    (event,) = span.events
    assert event.name == "exception"
    assert event.attributes["exception.type"].endswith("ModelError")


@pytest.mark.usefixtures("instrumented")
def test_parameter_validation_error_is_recorded_and_raised(
    client: Any, exporter: InMemorySpanExporter
) -> None:
    """An error raised before the request leaves (bad parameters) is recorded and re-raised."""
    from botocore.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        client.invoke_endpoint(EndpointName="my-endpoint", Body=b"x", Unknown=1)
    span = _client_span(exporter)
    assert span.status.status_code is StatusCode.ERROR


@pytest.mark.usefixtures("instrumented")
@pytest.mark.parametrize(
    ("returned", "handed_back"),
    [
        (f"traceresponse=00-{OTHER_TRACE}-{CONTAINER_SPAN}-01", None),
        (
            f"x-next-token=abc;traceresponse=00-{OTHER_TRACE}-{CONTAINER_SPAN}-01",
            "x-next-token=abc",
        ),
        (f"traceresponse=00-{OTHER_TRACE}-{CONTAINER_SPAN}-01,tfs-x=1", "tfs-x=1"),
    ],
    ids=["only-echo", "with-app-pairs", "comma"],
)
def test_container_echo_is_recorded_and_removed(
    client: Any,
    wire: Wire,
    exporter: InMemorySpanExporter,
    returned: str,
    handed_back: str | None,
) -> None:
    """The container's traceresponse becomes span attributes and a link (another trace), and
    the caller gets the response CustomAttributes without it."""
    wire.respond = lambda request: canned_for("InvokeEndpoint", returned)
    response = client.invoke_endpoint(**call_params("invoke_endpoint"))
    assert response.get("CustomAttributes") == handed_back
    span = _client_span(exporter)
    assert span.attributes["aws.sagemaker.container.trace_id"] == OTHER_TRACE
    assert span.attributes["aws.sagemaker.container.span_id"] == CONTAINER_SPAN
    (link,) = span.links
    assert f"{link.context.trace_id:032x}" == OTHER_TRACE
    assert f"{link.context.span_id:016x}" == CONTAINER_SPAN


@pytest.mark.usefixtures("instrumented")
def test_echo_in_the_same_trace_is_not_linked(
    client: Any, wire: Wire, exporter: InMemorySpanExporter
) -> None:
    """A container span of the same trace (a true child) is recorded, not linked."""

    def respond(request: Any) -> Canned:
        sent = request.headers["X-Amzn-SageMaker-Custom-Attributes"].decode()
        trace_id, _ = traceparent_of(sent)
        return canned_for("InvokeEndpoint", f"traceresponse=00-{trace_id}-{CONTAINER_SPAN}-01")

    wire.respond = respond
    response = client.invoke_endpoint(**call_params("invoke_endpoint"))
    assert "CustomAttributes" not in response
    span = _client_span(exporter)
    assert span.attributes["aws.sagemaker.container.span_id"] == CONTAINER_SPAN
    assert span.links == ()


@pytest.mark.usefixtures("instrumented")
@pytest.mark.parametrize(
    "returned",
    ["x-next-token=abc", "traceresponse=garbage;x=1", "7f9c2f2e-3b1a-4c7e"],
    ids=["no-echo", "malformed-echo", "opaque"],
)
def test_response_without_a_valid_echo(
    client: Any, wire: Wire, exporter: InMemorySpanExporter, returned: str
) -> None:
    """Without a well-formed echo nothing is recorded; the caller's own pairs come back."""
    wire.respond = lambda request: canned_for("InvokeEndpoint", returned)
    response = client.invoke_endpoint(**call_params("invoke_endpoint"))
    expected = "x=1" if returned.startswith("traceresponse=") else returned
    assert response["CustomAttributes"] == expected
    span = _client_span(exporter)
    assert "aws.sagemaker.container.trace_id" not in span.attributes
    assert span.links == ()


@pytest.mark.usefixtures("instrumented")
@pytest.mark.parametrize(
    ("returned", "handed_back"),
    [
        (f"session=abc;traceparent=00-{OTHER_TRACE}-{CONTAINER_SPAN}-01",) * 2,
        (f"tracestate=v%3D1,baggage=u%3D1,traceparent=00-{OTHER_TRACE}-{CONTAINER_SPAN}-01",) * 2,
        (
            f"session=abc;traceparent=00-{OTHER_TRACE}-{CONTAINER_SPAN}-01;"
            f"traceresponse=00-{OTHER_TRACE}-{CONTAINER_SPAN}-01",
            f"session=abc;traceparent=00-{OTHER_TRACE}-{CONTAINER_SPAN}-01",
        ),
        ("x-next-token=a b ; baggage=k%3Dv ;", "x-next-token=a b ; baggage=k%3Dv ;"),
        ('{"traceparent": "x", "baggage": "y"}',) * 2,
    ],
    ids=["traceparent", "all-w3c-keys", "with-echo", "spaces", "json"],
)
def test_response_custom_attributes_lose_only_the_echo(
    client: Any, wire: Wire, returned: str, handed_back: str
) -> None:
    """The container's own pairs come back byte for byte, even under keys a propagator uses;
    only our traceresponse is taken out."""
    wire.respond = lambda request: canned_for("InvokeEndpoint", returned)
    response = client.invoke_endpoint(**call_params("invoke_endpoint"))
    assert response["CustomAttributes"] == handed_back


def test_record_echo_off_leaves_the_response_alone(
    tracer_provider: TracerProvider, wire: Wire, client: Any, exporter: InMemorySpanExporter
) -> None:
    """With record_echo=False the response CustomAttributes come back exactly as sent."""
    echo_left_unread(
        tracer_provider, client, wire, f"a=1;traceresponse=00-{OTHER_TRACE}-{CONTAINER_SPAN}-01"
    )
    assert "aws.sagemaker.container.trace_id" not in _client_span(exporter).attributes
