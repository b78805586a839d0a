"""The client configurations: a real botocore ``sagemaker-runtime`` client whose requests are
built and SigV4-signed, then answered on the wire (``before-send``) by a canned response.

Three shapes of call: InvokeEndpoint answered as a container without our middleware answers;
the same answered with the ``traceresponse`` echo a container running our middleware sends
back; InvokeEndpointWithResponseStream answered by an AWS event stream, read to the end.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

from benchmarks._base import (
    APP_ATTRIBUTES,
    REQUEST_BODY,
    RESPONSE_BODY,
    TOKENS,
    TRACE_ID,
    CountingExporter,
    Metrics,
    Scenario,
    closing,
    expect,
    nothing,
    per_call,
    provider,
)

HEADER = "X-Amzn-SageMaker-Custom-Attributes"
REGION = "us-east-1"
# The parameters of every call measured.
REQUEST: dict[str, Any] = {
    "EndpointName": "bench-endpoint",
    "Body": REQUEST_BODY,
    "ContentType": "application/json",
    "Accept": "application/json",
    "CustomAttributes": APP_ATTRIBUTES,
}
STREAM_REQUEST: dict[str, Any] = {key: REQUEST[key] for key in REQUEST if key != "Accept"}
# What the container wants its caller to see, and the span id of the container's span.
CONTAINER_ATTRIBUTES = "session=abc"
CONTAINER_SPAN_ID = "53995c3f42cd8ad8"

# What ours records on the span of every InvokeEndpoint call above.
START_ATTRIBUTES = {
    "rpc.system": "aws-api",
    "rpc.service": "SageMaker Runtime",
    "rpc.method": "InvokeEndpoint",
    "cloud.region": REGION,
    "server.address": f"runtime.sagemaker.{REGION}.amazonaws.com",
    "aws.sagemaker.endpoint.name": "bench-endpoint",
}
RESPONSE_ATTRIBUTES = ("aws.request_id", "http.response.status_code")
VARIANT_ATTRIBUTE = "aws.sagemaker.invoked_production_variant"
SPAN_ATTRIBUTES = frozenset({*START_ATTRIBUTES, *RESPONSE_ATTRIBUTES, VARIANT_ATTRIBUTE})


def _payload_part() -> Callable[[bytes], bytes]:
    """The local runtime's event-stream encoder, wherever it lives in this version."""
    try:
        from sm_tracing.local._eventstream import payload_part
    except ImportError:
        from sm_tracing._eventstream import payload_part
    return payload_part


class _CannedBody(io.BytesIO):
    """A raw response body: readable like urllib3's, ``stream()`` for botocore's ``content``."""

    def stream(self, **_kwargs: Any) -> Iterator[bytes]:
        yield self.read()


class _CannedStream:
    """A raw event-stream body delivering one message per read, as the tokens of a model that
    generates them one by one arrive."""

    def __init__(self, messages: tuple[bytes, ...], count: int) -> None:
        self._messages = messages
        self._count = count
        self.closed = False

    def stream(self, **_kwargs: Any) -> Iterator[bytes]:
        messages = self._messages
        cycle = len(messages)
        for index in range(self._count):
            yield messages[index % cycle]

    def close(self) -> None:
        self.closed = True


class Wire:
    """A ``before-send`` handler: the request is built and signed, the socket is skipped.

    With *echo*, the response carries the CustomAttributes a container running our middleware
    sends back: its own pair and ``traceresponse`` with the trace id of the request's
    ``traceparent`` (a fixed one when the request has none), so every configuration gets a
    response of the same shape and the wire does the same work for each.
    """

    def __init__(self, echo: bool = False) -> None:
        self.last_request: Any = None
        self.echo = echo
        self.chunks = 0
        self.headers = {
            "x-amzn-requestid": "0f6e4c1a-5d0b-4c9e-9a51-6a1d2c3b4e5f",
            "Content-Type": "application/json",
            "Content-Length": str(len(RESPONSE_BODY)),
            "x-Amzn-Invoked-Production-Variant": "AllTraffic",
        }
        self.stream_headers = {
            "x-amzn-requestid": "0f6e4c1a-5d0b-4c9e-9a51-6a1d2c3b4e5f",
            "Content-Type": "application/vnd.amazon.eventstream",
            "X-Amzn-SageMaker-Content-Type": "text/event-stream",
            "x-Amzn-Invoked-Production-Variant": "AllTraffic",
        }
        self.messages = tuple(_payload_part()(token) for token in TOKENS)
        self.echoed: str | None = None

    def answer(self, request: Any, **_kwargs: Any) -> Any:
        from botocore.awsrequest import AWSResponse

        self.last_request = request
        stream = request.url.endswith("/invocations-response-stream")
        headers = self.stream_headers if stream else self.headers
        if self.echo:
            sent = self.sent_attributes() or ""
            at = sent.find("traceparent=00-")
            trace_id = sent[at + 15 : at + 47] if at >= 0 else f"{TRACE_ID:032x}"
            self.echoed = f"00-{trace_id}-{CONTAINER_SPAN_ID}-01"
            headers = {**headers, HEADER: f"{CONTAINER_ATTRIBUTES};traceresponse={self.echoed}"}
        if stream:
            return AWSResponse(request.url, 200, headers, _CannedStream(self.messages, self.chunks))
        return AWSResponse(request.url, 200, headers, _CannedBody(RESPONSE_BODY))

    def sent_attributes(self) -> str | None:
        expect(self.last_request is not None, "no request reached the wire")
        value = self.last_request.headers.get(HEADER)
        return value.decode() if isinstance(value, bytes) else value


_session: Any = None


def prepare() -> None:
    """Load what every client needs once (the service model), before configurations fork."""
    client(Wire())


def client(wire: Wire) -> Any:
    """A ``sagemaker-runtime`` client answered by *wire*."""
    import botocore.session

    global _session  # noqa: PLW0603 - one session, so the service model is read once
    if _session is None:
        _session = botocore.session.get_session()
    made = _session.create_client(
        "sagemaker-runtime",
        region_name=REGION,
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    )
    made.meta.events.register("before-send.sagemaker-runtime", wire.answer)
    return made


def _invoke(made: Any) -> Callable[[], object]:
    invoke_endpoint = made.invoke_endpoint

    def call() -> object:
        response = invoke_endpoint(**REQUEST)
        return response["Body"].read()

    return call


def expect_attributes(exporter: CountingExporter) -> None:
    """The last span carries exactly the attributes above, the request's with their values."""
    last = exporter.last
    attributes = dict(last.attributes or {}) if last is not None else {}
    expect(
        set(attributes) == SPAN_ATTRIBUTES
        and all(attributes[key] == value for key, value in START_ATTRIBUTES.items()),
        f"span attributes {attributes}, not the ones compared",
    )


def _expect_spans(exporter: CountingExporter, calls: int) -> None:
    expect(exporter.exported == calls, f"{exporter.exported} spans for {calls} calls")


def _expect_injected(wire: Wire) -> None:
    sent = wire.sent_attributes() or ""
    expect(
        sent.startswith(APP_ATTRIBUTES) and "traceparent=00-" in sent,
        "the trace context was not merged into CustomAttributes",
    )


def _instrument_ours(**options: Any) -> Callable[[], None]:
    import sm_tracing

    # instrument() leaves an earlier instrumentation as it is: start again with our options.
    sm_tracing.uninstrument()
    sm_tracing.instrument(**options)
    return sm_tracing.uninstrument


def _instrument_upstream(tracer_provider: Any) -> Callable[[], None]:
    from opentelemetry.instrumentation.botocore import BotocoreInstrumentor

    instrumentor = BotocoreInstrumentor()  # type: ignore[no-untyped-call]
    # A singleton: in a process that already instrumented it, start again with our provider.
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
    instrumentor.instrument(tracer_provider=tracer_provider)
    return instrumentor.uninstrument


# --- InvokeEndpoint ------------------------------------------------------------------------


def client_bare() -> Scenario:
    wire = Wire()
    call = _invoke(client(wire))

    def check(calls: int) -> None:
        expect(call() == RESPONSE_BODY, "the canned response was not read back")
        expect(wire.sent_attributes() == APP_ATTRIBUTES, "CustomAttributes changed on the wire")

    return Scenario(per_call(call), check, nothing)


def client_floor() -> Scenario:
    from opentelemetry.propagate import inject
    from opentelemetry.trace import SpanKind

    tracer_provider, exporter = provider()
    tracer = tracer_provider.get_tracer("bench.floor")
    bare = _invoke(client(Wire()))

    def call() -> object:
        with tracer.start_as_current_span("SageMaker Runtime.InvokeEndpoint", kind=SpanKind.CLIENT):
            carrier: dict[str, str] = {}
            inject(carrier)
            return bare()

    def check(calls: int) -> None:
        _expect_spans(exporter, calls)

    return Scenario(per_call(call), check, tracer_provider.shutdown)


def client_floor_attributes() -> Scenario:
    """The floor's span with the attributes ours records: what the SDK itself charges for the
    span, the inject and those attributes, with no code of ours."""
    return _client_floor(header=False)


def client_floor_header() -> Scenario:
    """The floor with attributes that also puts the injected context on the wire the way ours
    must: appended to the request's CustomAttributes header by a ``before-sign`` handler. What
    botocore and the SDK charge for the whole job, with no code of ours."""
    return _client_floor(header=True)


def _client_floor(header: bool) -> Scenario:
    wire = Wire()
    tracer_provider, exporter, call = _floor_with_attributes(wire, read_echo=False, header=header)

    def check(calls: int) -> None:
        _expect_spans(exporter, calls)
        expect_attributes(exporter)
        if header:
            _expect_injected(wire)

    return Scenario(per_call(call), check, tracer_provider.shutdown)


def _send_in_header(made: Any, carrier: dict[str, str]) -> None:
    """On *made*, append *carrier*'s ``traceparent`` to each request's CustomAttributes header
    just before it is signed: the plainest code that does what ours does at that point."""

    def write(request: Any, **_kwargs: Any) -> None:
        headers = request.headers
        pair = f"traceparent={carrier['traceparent']}"
        value = headers.get(HEADER)
        if value is None:
            headers[HEADER] = pair
        else:
            headers.replace_header(HEADER, f"{value};{pair}")

    made.meta.events.register_last("before-sign", write)


def _floor_with_attributes(
    wire: Wire, read_echo: bool, header: bool = False
) -> tuple[Any, Any, Callable[[], object]]:
    """A provider, its exporter, and a call under the floor's span with the attributes ours
    records; with *read_echo*, the echo read by plain string splitting: the container's trace
    and span ids on the span, the echo taken out of what the caller sees; with *header*, the
    injected context sent in the CustomAttributes header (see :func:`_send_in_header`)."""
    from opentelemetry.propagate import inject
    from opentelemetry.trace import SpanKind

    tracer_provider, exporter = provider()
    tracer = tracer_provider.get_tracer("bench.floor")
    made = client(wire)
    invoke_endpoint = made.invoke_endpoint
    # One carrier for every call: each inject writes the call's own traceparent into it.
    carrier: dict[str, str] = {}
    if header:
        _send_in_header(made, carrier)

    def call() -> object:
        with tracer.start_as_current_span(
            "SageMaker Runtime.InvokeEndpoint", kind=SpanKind.CLIENT, attributes=START_ATTRIBUTES
        ) as span:
            inject(carrier)
            response = invoke_endpoint(**REQUEST)
            metadata = response["ResponseMetadata"]
            attributes = {
                "aws.request_id": metadata["RequestId"],
                "http.response.status_code": metadata["HTTPStatusCode"],
                VARIANT_ATTRIBUTE: response["InvokedProductionVariant"],
            }
            if read_echo:
                kept = []
                for pair in response["CustomAttributes"].split(";"):
                    key, _, value = pair.partition("=")
                    if key == "traceresponse":
                        _, trace_id, span_id, _ = value.split("-")
                        attributes["aws.sagemaker.container.trace_id"] = trace_id
                        attributes["aws.sagemaker.container.span_id"] = span_id
                    else:
                        kept.append(pair)
                response["CustomAttributes"] = ";".join(kept)
            span.set_attributes(attributes)
            body = response["Body"].read()
            return response["CustomAttributes"] if read_echo else body

    return tracer_provider, exporter, call


def client_upstream() -> Scenario:
    tracer_provider, exporter = provider()
    uninstrument = _instrument_upstream(tracer_provider)
    wire = Wire()
    call = _invoke(client(wire))

    def check(calls: int) -> None:
        _expect_spans(exporter, calls)
        expect("X-Amzn-Trace-Id" in wire.last_request.headers, "no X-Amzn-Trace-Id sent")

    return Scenario(per_call(call), check, closing(uninstrument, tracer_provider.shutdown))


def _client_ours(metrics: Metrics | None) -> Scenario:
    tracer_provider, exporter = provider()
    options: dict[str, Any] = {"tracer_provider": tracer_provider}
    if metrics is not None:
        options["meter_provider"] = metrics.provider
    uninstrument = _instrument_ours(**options)
    wire = Wire()
    call = _invoke(client(wire))

    def check(calls: int) -> None:
        _expect_spans(exporter, calls)
        _expect_injected(wire)
        expect_attributes(exporter)
        if metrics is not None:
            metrics.check(calls)

    closers = [uninstrument, tracer_provider.shutdown]
    if metrics is not None:
        closers.append(metrics.close)
    return Scenario(per_call(call), check, closing(*closers))


def client_ours() -> Scenario:
    return _client_ours(None)


def client_ours_metrics() -> Scenario:
    """Ours with a ``MeterProvider`` read in memory: what recording metrics adds."""
    return _client_ours(Metrics())


# What ours measures a call above by, when it has a MeterProvider.
METRIC_ATTRIBUTES = {
    "rpc.method": "InvokeEndpoint",
    "aws.sagemaker.endpoint.name": "bench-endpoint",
    VARIANT_ATTRIBUTE: "AllTraffic",
}


def client_ours_record() -> Scenario:
    """Ours without metrics, and one SDK ``Histogram.record`` per call with the attributes ours
    measures by: what the SDK itself charges for the measurement ours makes."""
    scenario = _client_ours(None)
    metrics = Metrics()
    record = metrics.histogram("bench.operation.duration").record

    def run(n: int) -> int:
        done = scenario.run(n)
        for _ in range(n):
            record(0.001, METRIC_ATTRIBUTES)
        return done

    return Scenario(run, scenario.check, closing(scenario.close, metrics.close))


# --- InvokeEndpoint answered with the container's echo ----------------------------------------


def _invoke_echoed(made: Any) -> Callable[[], object]:
    invoke_endpoint = made.invoke_endpoint

    def call() -> object:
        response = invoke_endpoint(**REQUEST)
        response["Body"].read()
        return response.get("CustomAttributes")

    return call


def echo_bare() -> Scenario:
    wire = Wire(echo=True)
    call = _invoke_echoed(client(wire))

    def check(calls: int) -> None:
        expect(call() == f"{CONTAINER_ATTRIBUTES};traceresponse={wire.echoed}", "echo lost")

    return Scenario(per_call(call), check, nothing)


def echo_floor() -> Scenario:
    """The floor with the attributes ours records, reading the echo by plain string splitting:
    what the SDK charges for that, with no code of ours."""
    return _echo_floor(header=False)


def echo_floor_header() -> Scenario:
    """The echo's floor that also sends the context in the CustomAttributes header, as
    :func:`client_floor_header` does."""
    return _echo_floor(header=True)


def _echo_floor(header: bool) -> Scenario:
    wire = Wire(echo=True)
    tracer_provider, exporter, call = _floor_with_attributes(wire, read_echo=True, header=header)

    def check(calls: int) -> None:
        _expect_spans(exporter, calls)
        seen = call()
        expect(seen == CONTAINER_ATTRIBUTES, f"the caller saw {seen!r}, not the container's pair")
        if header:
            _expect_injected(wire)

    return Scenario(per_call(call), check, tracer_provider.shutdown)


def echo_upstream() -> Scenario:
    tracer_provider, exporter = provider()
    uninstrument = _instrument_upstream(tracer_provider)
    wire = Wire(echo=True)
    call = _invoke_echoed(client(wire))

    def check(calls: int) -> None:
        _expect_spans(exporter, calls)
        expect(call() == f"{CONTAINER_ATTRIBUTES};traceresponse={wire.echoed}", "echo lost")

    return Scenario(per_call(call), check, closing(uninstrument, tracer_provider.shutdown))


def echo_ours() -> Scenario:
    tracer_provider, exporter = provider()
    uninstrument = _instrument_ours(tracer_provider=tracer_provider)
    wire = Wire(echo=True)
    call = _invoke_echoed(client(wire))

    def check(calls: int) -> None:
        _expect_spans(exporter, calls)
        _expect_injected(wire)
        seen = call()
        expect(seen == CONTAINER_ATTRIBUTES, f"the caller saw {seen!r}, not the container's pair")
        span = exporter.last
        expect(
            span is not None and (wire.echoed or "")[3:35] == f"{span.context.trace_id:032x}",
            "the echo did not carry the caller's trace",
        )
        assert span is not None
        linked = {link.context.span_id for link in span.links}
        expect(
            CONTAINER_SPAN_ID in (span.attributes or {}).values()
            or int(CONTAINER_SPAN_ID, 16) in linked,
            "the container's echo was not recorded on the span",
        )

    return Scenario(per_call(call), check, closing(uninstrument, tracer_provider.shutdown))


# --- InvokeEndpointWithResponseStream -----------------------------------------------------------


def _read_streams(made: Any, wire: Wire) -> tuple[Callable[[int], int], Callable[[], int]]:
    """``run(n)``: one call whose stream has *n* chunks, read to the end; and the number of
    chunks the last stream gave."""
    invoke = made.invoke_endpoint_with_response_stream
    read = [0]

    def run(n: int) -> int:
        wire.chunks = n
        count = 0
        for event in invoke(**STREAM_REQUEST)["Body"]:
            if event["PayloadPart"]["Bytes"]:
                count += 1
        read[0] = count
        return 1

    return run, lambda: read[0]


def _expect_chunks(run: Callable[[int], int], last: Callable[[], int]) -> None:
    run(3)
    expect(last() == 3, f"{last()} chunks read of 3")


def stream_bare() -> Scenario:
    wire = Wire()
    run, last = _read_streams(client(wire), wire)

    def check(calls: int) -> None:
        _expect_chunks(run, last)
        expect(wire.sent_attributes() == APP_ATTRIBUTES, "CustomAttributes changed on the wire")

    return Scenario(run, check, nothing)


def _stream_ours(metrics: Metrics | None) -> Scenario:
    tracer_provider, exporter = provider()
    options: dict[str, Any] = {"tracer_provider": tracer_provider}
    if metrics is not None:
        options["meter_provider"] = metrics.provider
    uninstrument = _instrument_ours(**options)
    wire = Wire()
    run, last = _read_streams(client(wire), wire)

    def check(calls: int) -> None:
        # The span of a stream ends when it is read to the end: one exported per call.
        _expect_spans(exporter, calls)
        _expect_chunks(run, last)
        _expect_spans(exporter, calls + 1)
        _expect_injected(wire)
        if metrics is not None:
            metrics.check(calls + 1)

    closers = [uninstrument, tracer_provider.shutdown]
    if metrics is not None:
        closers.append(metrics.close)
    return Scenario(run, check, closing(*closers))


def stream_ours() -> Scenario:
    return _stream_ours(None)


def stream_ours_metrics() -> Scenario:
    return _stream_ours(Metrics())
