"""sm_tracing leaves the application's own botocore code and test tools as they were: handlers
that set a call's parameters or headers, the parameters a caller passes, botocore's Stubber,
and moto's ``mock_aws``."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _client_support import (
    HEADER,
    OPERATIONS,
    Canned,
    Wire,
    call_params,
    canned_for,
    header,
    instrumenting,
    make_client,
    signed_headers,
    traceparent_of,
)
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import sm_tracing

DEFAULT = "accept_eula=true"
INFERENCE_ID_HEADER = "X-Amzn-SageMaker-Inference-Id"
# Headers that differ between any two sends of the same call.
_PER_SEND = frozenset({"authorization", "x-amz-date", "amz-sdk-invocation-id"})
METHODS = sorted(OPERATIONS)

# What a user's Stubber test stubs for each operation: valid output shapes.
STUBBED: dict[str, dict[str, Any]] = {
    "invoke_endpoint": {
        "Body": b'{"outputs": "stubbed"}',
        "ContentType": "application/json",
        "InvokedProductionVariant": "variant-a",
        "CustomAttributes": "a=1",
    },
    "invoke_endpoint_with_response_stream": {
        "Body": {"PayloadPart": {"Bytes": b'{"token": "a"}\n'}},
        "ContentType": "application/jsonlines",
        "InvokedProductionVariant": "variant-a",
    },
    "invoke_endpoint_async": {
        "InferenceId": "inference-from-sagemaker",
        "OutputLocation": "s3://bucket/out/abc.out",
    },
}


def _read(method: str, response: dict[str, Any]) -> None:
    """Read a stream to its end, so that its span ends."""
    if method == "invoke_endpoint_with_response_stream":
        list(response["Body"])


@pytest.fixture
def traced_call(tracer_provider: TracerProvider, client: Any) -> Callable[..., None]:
    """``traced_call(method, params, **options)``: *method* of ``client`` called with *params*
    under sm_tracing instrumented with this test's provider and *options*, a stream read to its
    end."""

    def call(method: str, params: dict[str, Any], **options: Any) -> None:
        with instrumenting(tracer_provider=tracer_provider, **options):
            _read(method, getattr(client, method)(**params))

    return call


def _only_span(exporter: InMemorySpanExporter, method: str) -> ReadableSpan:
    spans = exporter.get_finished_spans()
    assert [span.name for span in spans] == [f"SageMaker Runtime.{OPERATIONS[method]}"]
    assert spans[0].kind is SpanKind.CLIENT
    return spans[0]


def _traceparent(span: ReadableSpan) -> str:
    context = span.get_span_context()
    assert context is not None
    flags = f"{context.trace_flags:02x}"
    return f"traceparent=00-{context.trace_id:032x}-{context.span_id:016x}-{flags}"


def _comparable(request: Any) -> dict[str, str | None]:
    """The headers of a signed request that two sends of the same call share, without
    CustomAttributes (compared on their own)."""
    skip = _PER_SEND | {HEADER.lower()}
    return {
        key.lower(): header(request.headers, key)
        for key in request.headers
        if key.lower() not in skip
    }


# -- a user's own handlers that set CustomAttributes ------------------------------------


def _provide_client_params(params: dict[str, Any], **_: Any) -> None:
    params.setdefault("CustomAttributes", DEFAULT)


def _before_parameter_build(params: dict[str, Any], **_: Any) -> None:
    params.setdefault("CustomAttributes", DEFAULT)


def _before_sign(request: Any, **_: Any) -> None:
    if not request.headers.get(HEADER):
        request.headers[HEADER] = DEFAULT


_USER_HANDLERS: dict[str, Callable[..., Any]] = {
    "provide-client-params": _provide_client_params,
    "before-parameter-build": _before_parameter_build,
    "before-sign": _before_sign,
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("event", sorted(_USER_HANDLERS))
def test_a_user_handler_setting_custom_attributes_is_kept(
    client: Any,
    wire: Wire,
    exporter: InMemorySpanExporter,
    traced_call: Callable[..., None],
    event: str,
    method: str,
) -> None:
    """A user's botocore handler that defaults CustomAttributes to accept_eula=true still does
    under sm_tracing: the signed request is the one sent without it, plus our traceparent
    joined with ';'."""
    client.meta.events.register(
        f"{event}.sagemaker-runtime.{OPERATIONS[method]}", _USER_HANDLERS[event]
    )
    _read(method, getattr(client, method)(**call_params(method)))
    plain = wire.last
    assert wire.custom_attributes() == DEFAULT  # the handler works without sm_tracing

    traced_call(method, call_params(method))
    traced = wire.last

    span = _only_span(exporter, method)
    sent = wire.custom_attributes()
    assert sent is not None
    assert sm_tracing.strip_context(sent) == DEFAULT
    assert sorted(sent.split(";")) == sorted([DEFAULT, _traceparent(span)])
    assert _comparable(traced) == _comparable(plain)
    assert traced.body == plain.body
    assert traced.url == plain.url
    assert sorted(signed_headers(traced)) == sorted(signed_headers(plain))


@pytest.mark.parametrize("method", METHODS)
def test_a_dict_returned_by_a_user_handler_is_left_as_it_was(
    client: Any,
    wire: Wire,
    exporter: InMemorySpanExporter,
    traced_call: Callable[..., None],
    method: str,
) -> None:
    """The parameters a user's provide-client-params handler returns in place of the caller's
    are sent, with our traceparent merged on the wire, and never changed in place."""
    returned: list[tuple[dict[str, Any], dict[str, Any]]] = []
    defaults = {"CustomAttributes": DEFAULT}
    kept_defaults = copy.deepcopy(defaults)

    def replace(params: dict[str, Any], **_: Any) -> dict[str, Any]:
        new = {**defaults, **params}
        returned.append((new, copy.deepcopy(new)))
        return new

    client.meta.events.register(
        f"provide-client-params.sagemaker-runtime.{OPERATIONS[method]}", replace
    )
    params = call_params(method)
    kept = copy.deepcopy(params)
    traced_call(method, params)

    assert params == kept
    assert defaults == kept_defaults
    ((new, snapshot),) = returned
    assert new == snapshot
    sent = wire.custom_attributes()
    assert sm_tracing.strip_context(sent) == DEFAULT
    assert traceparent_of(sent)[0] == f"{_only_span(exporter, method).context.trace_id:032x}"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("given", [None, "a=1"], ids=["without", "with-custom-attributes"])
def test_user_handlers_see_the_callers_parameters(
    client: Any,
    wire: Wire,
    exporter: InMemorySpanExporter,
    traced_call: Callable[..., None],
    method: str,
    given: str | None,
) -> None:
    """A user's provide-client-params and before-parameter-build handlers are handed what the
    caller passed, with no trace context in it; the context still reaches the wire."""
    seen: dict[str, dict[str, Any]] = {}

    def look(event_name: str, params: dict[str, Any], **_: Any) -> None:
        seen[event_name.split(".", maxsplit=1)[0]] = copy.deepcopy(params)

    operation = OPERATIONS[method]
    for event in ("provide-client-params", "before-parameter-build"):
        client.meta.events.register(f"{event}.sagemaker-runtime.{operation}", look)
    params = call_params(method) if given is None else call_params(method, CustomAttributes=given)
    traced_call(method, params)

    assert seen == {"provide-client-params": params, "before-parameter-build": params}
    sent = wire.custom_attributes()
    assert sm_tracing.strip_context(sent) == (given or "")
    assert traceparent_of(sent)[1] == f"{_only_span(exporter, method).context.span_id:016x}"


# -- botocore's Stubber -------------------------------------------------------------------


def _stubbed_call(client: Any, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """A user's Stubber test: one stubbed response, expected with exactly *params*."""
    with Stubber(client) as stubber:
        stubber.add_response(method, copy.deepcopy(STUBBED[method]), expected_params=params)
        response: dict[str, Any] = getattr(client, method)(**params)
        stubber.assert_no_pending_responses()
    return response


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("given", [None, DEFAULT], ids=["without", "with-custom-attributes"])
def test_a_stubber_test_passes_unchanged(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter, method: str, given: str | None
) -> None:
    """A Stubber test with expected_params passes under sm_tracing's default options, gets the
    response it stubbed, and its call gets its CLIENT span."""
    params = call_params(method) if given is None else call_params(method, CustomAttributes=given)
    plain = _stubbed_call(make_client(), method, params)

    with instrumenting(tracer_provider=tracer_provider):
        traced = _stubbed_call(make_client(), method, params)

    assert traced == plain
    span = _only_span(exporter, method)
    assert span.attributes is not None
    assert span.attributes["aws.sagemaker.endpoint.name"] == "my-endpoint"


@pytest.mark.parametrize("method", METHODS)
def test_a_stubber_test_passes_with_inference_id_from_trace(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter, method: str
) -> None:
    """With inference_id_from_trace, a Stubber test whose expected_params have no InferenceId
    still passes: the id is added to the request, not to the parameters."""
    params = call_params(method)
    with instrumenting(tracer_provider=tracer_provider, inference_id_from_trace=True):
        _stubbed_call(make_client(), method, params)
    _only_span(exporter, method)


# -- InferenceId from the trace -----------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_inference_id_from_trace_on_the_wire(
    wire: Wire,
    exporter: InMemorySpanExporter,
    traced_call: Callable[..., None],
    method: str,
) -> None:
    """With inference_id_from_trace, a call without InferenceId sends the trace id as its
    X-Amzn-SageMaker-Inference-Id, signed; the span records it."""
    wire.respond = _answer_with_the_inference_id_sent
    traced_call(method, call_params(method), inference_id_from_trace=True)
    span = _only_span(exporter, method)
    trace_id = f"{span.context.trace_id:032x}"
    assert header(wire.last.headers, INFERENCE_ID_HEADER) == trace_id
    assert INFERENCE_ID_HEADER.lower() in signed_headers(wire.last)
    assert traceparent_of(wire.custom_attributes())[0] == trace_id
    assert span.attributes is not None
    assert span.attributes["aws.sagemaker.inference_id"] == trace_id


def _answer_with_the_inference_id_sent(request: Any) -> Canned:
    """SageMaker's answer, whose InvokeEndpointAsync response names the InferenceId sent."""
    if request.url.endswith("/invocations-response-stream"):
        return canned_for("InvokeEndpointWithResponseStream")
    if not request.url.endswith("/async-invocations"):
        return canned_for("InvokeEndpoint")
    canned = canned_for("InvokeEndpointAsync")
    sent = header(request.headers, INFERENCE_ID_HEADER)
    canned.body = json.dumps({"InferenceId": sent}).encode()
    return canned


def _default_inference_id(params: dict[str, Any], **_: Any) -> None:
    params.setdefault("InferenceId", "from-handler")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("source", ["caller", "handler"])
def test_inference_id_from_trace_leaves_a_set_one(
    client: Any,
    wire: Wire,
    exporter: InMemorySpanExporter,
    traced_call: Callable[..., None],
    method: str,
    source: str,
) -> None:
    """An InferenceId the caller passes, or a user's handler defaults, wins over the trace id."""
    if source == "caller":
        params, expected = call_params(method, InferenceId="mine"), "mine"
    else:
        event = f"before-parameter-build.sagemaker-runtime.{OPERATIONS[method]}"
        client.meta.events.register(event, _default_inference_id)
        params, expected = call_params(method), "from-handler"
    traced_call(method, params, inference_id_from_trace=True)
    assert header(wire.last.headers, INFERENCE_ID_HEADER) == expected
    span = _only_span(exporter, method)
    assert traceparent_of(wire.custom_attributes())[0] == f"{span.context.trace_id:032x}"


# -- moto ---------------------------------------------------------------------------------


@pytest.fixture
def moto_runtime() -> Iterator[Callable[..., None]]:
    """moto's mock_aws for the test; yields a function that queues moto's answers to
    InvokeEndpoint, the way moto's documentation does it."""
    moto = pytest.importorskip("moto")
    requests = pytest.importorskip("requests")

    def queue(*bodies: str) -> None:
        results = [
            {
                "Body": body,
                "ContentType": "text/plain",
                "InvokedProductionVariant": "variant-a",
                "CustomAttributes": "a=1",
            }
            for body in bodies
        ]
        answer = requests.post(
            "http://motoapi.amazonaws.com/moto-api/static/sagemaker/endpoint-results",
            json={"results": results},
            timeout=10,
        )
        assert answer.status_code == 201

    with moto.mock_aws():
        yield queue


def _bodies(client: Any, calls: int) -> list[bytes]:
    params = call_params("invoke_endpoint", CustomAttributes=DEFAULT)
    return [client.invoke_endpoint(**params)["Body"].read() for _ in range(calls)]


def test_moto_answers_an_instrumented_call(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter, moto_runtime: Any
) -> None:
    """moto's InvokeEndpoint and InvokeEndpointAsync work under sm_tracing: moto's canned
    answers come back, each call with its span."""
    client = make_client()
    with instrumenting(tracer_provider=tracer_provider):
        response = client.invoke_endpoint(**call_params("invoke_endpoint"))
        queued = client.invoke_endpoint_async(**call_params("invoke_endpoint_async"))
    assert response["Body"].read() == b"body"
    assert response["ContentType"] == "content_type"
    assert response["CustomAttributes"] == "custom_attributes"
    assert queued["OutputLocation"].startswith("s3://sagemaker-output-")
    names = [span.name for span in exporter.get_finished_spans()]
    assert names == ["SageMaker Runtime.InvokeEndpoint", "SageMaker Runtime.InvokeEndpointAsync"]


def test_moto_repeats_answers_only_without_a_trace_context(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter, moto_runtime: Any
) -> None:
    """moto gives a repeated request the answer it gave first, keyed on its
    X-Amzn-SageMaker-* headers: each traced call carries its own traceparent, so each takes
    the next queued answer (then moto's default); under suppress_instrumentation the
    repeats come back."""
    client = make_client()
    moto_runtime("first", "second")
    assert _bodies(client, 2) == [b"first", b"first"]

    moto_runtime("third", "fourth")
    with instrumenting(tracer_provider=tracer_provider):
        assert _bodies(client, 3) == [b"second", b"third", b"fourth"]
        assert len(exporter.get_finished_spans()) == 3
        with suppress_instrumentation():
            assert _bodies(client, 2) == [b"first", b"first"]
    assert len(exporter.get_finished_spans()) == 3


def test_moto_reads_the_inference_id_from_the_trace(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter, moto_runtime: Any
) -> None:
    """moto's InvokeEndpointAsync answers with the InferenceId it was sent: with
    inference_id_from_trace, the trace id."""
    client = make_client()
    with instrumenting(tracer_provider=tracer_provider, inference_id_from_trace=True):
        response = client.invoke_endpoint_async(**call_params("invoke_endpoint_async"))
    (span,) = exporter.get_finished_spans()
    assert response["InferenceId"] == f"{span.context.trace_id:032x}"


def test_moto_repeats_answers_for_an_endpoint_left_out(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter, moto_runtime: Any
) -> None:
    """An endpoint left out with ``endpoints=`` gets no trace context, so moto repeats its
    answers to it as without sm_tracing; its calls still get their spans."""
    client = make_client()
    moto_runtime("first", "second")
    with instrumenting(tracer_provider=tracer_provider, endpoints=["another-endpoint"]):
        assert _bodies(client, 2) == [b"first", b"first"]
    assert len(exporter.get_finished_spans()) == 2


def test_moto_has_no_response_stream(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter, moto_runtime: Any
) -> None:
    """moto answers InvokeEndpointWithResponseStream with a 404 "Not yet implemented": the
    error reaches the caller unchanged and the span records it."""
    client = make_client()
    method = "invoke_endpoint_with_response_stream"
    with instrumenting(tracer_provider=tracer_provider), pytest.raises(ClientError) as raised:
        getattr(client, method)(**call_params(method))
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    span = _only_span(exporter, method)
    assert span.status.status_code is StatusCode.ERROR
