"""CreateTransformJob: the job's trace context in its Environment, merged with the caller's
variables within the API's limits, under a CLIENT span; and, end to end, every record of a job
run through LocalRuntime in the job's trace."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import botocore.client
import botocore.session
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from opentelemetry import baggage, trace
from opentelemetry.context import attach, detach
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, Tracer
from opentelemetry.trace.span import TraceState

import sm_tracing
from sm_tracing import _codec, _propagation
from sm_tracing.client import _transform
from sm_tracing.local import LocalRuntime
from tests._client_support import (
    CREDENTIALS,
    JOB_ARN,
    REGION,
    REQUEST_ID,
    SageMakerWire,
    Wire,
    beside_upstream,
    endpoint_url,
    instrumenting,
    job,
    job_answer,
    loopback,
    sagemaker_client,
    signed_headers,
)
from tests._local_support import SERVING_APPS, TransformContainers, put, runtime_client
from tests._otlp_receiver import OTLPReceiver, ReceivedSpan
from tests._serving import in_memory, otlp_env

MINE = {"MODEL_SERVER_WORKERS": "2", "LOG_LEVEL": "debug"}
CONTAINER_SPAN = "POST /invocations"


@pytest.fixture
def hook(tracer_provider: TracerProvider) -> Iterator[None]:
    """CreateTransformJob traced with this test's provider, untraced afterwards."""
    with instrumenting(tracer_provider=tracer_provider, transform_jobs=True):
        yield


@pytest.fixture
def wire() -> SageMakerWire:
    return SageMakerWire()


@pytest.fixture
def sagemaker(wire: SageMakerWire) -> Any:
    return sagemaker_client(wire)


def job_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    """The one CreateTransformJob span finished so far."""
    spans = [s for s in exporter.get_finished_spans() if s.name == _transform.SPAN_NAME]
    assert len(spans) == 1, [s.name for s in exporter.get_finished_spans()]
    return spans[0]


def parent_of(span: ReadableSpan) -> str:
    """The TRACEPARENT that names *span* as the parent."""
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


@contextlib.contextmanager
def with_baggage(**entries: str) -> Iterator[None]:
    """*entries* in the current baggage while the block runs."""
    context = None
    for key, value in entries.items():
        context = baggage.set_baggage(key, value, context)
    token = attach(context) if context is not None else None
    try:
        yield
    finally:
        if token is not None:
            detach(token)


# -- the request on the wire ---------------------------------------------------------------


@pytest.mark.usefixtures("hook")
def test_environment_gets_the_job_span_after_the_callers_variables(
    sagemaker: Any, wire: SageMakerWire, exporter: InMemorySpanExporter, tracer: Tracer
) -> None:
    """The signed request's Environment is the caller's variables, in their order, then
    TRACEPARENT (the CLIENT span, child of the caller's) and BAGGAGE; the caller's own map is
    left as it was."""
    mine = dict(MINE)
    with tracer.start_as_current_span("caller") as caller, with_baggage(tenant="acme"):
        response = sagemaker.create_transform_job(**job(Environment=mine))
    assert response["TransformJobArn"] == JOB_ARN
    span = job_span(exporter)
    sent = wire.environment()
    assert sent == {**MINE, "TRACEPARENT": parent_of(span), "BAGGAGE": "tenant=acme"}
    assert list(sent)[:2] == list(MINE)
    assert mine == MINE
    assert span.kind is SpanKind.CLIENT
    assert span.parent is not None
    assert span.parent.span_id == caller.get_span_context().span_id
    assert dict(span.attributes or {}) == {
        "rpc.system": "aws-api",
        "rpc.service": "SageMaker",
        "rpc.method": "CreateTransformJob",
        "cloud.region": REGION,
        "server.address": f"api.sagemaker.{REGION}.amazonaws.com",
        "aws.sagemaker.transform_job.name": "job-1",
        "aws.request_id": REQUEST_ID,
        "http.response.status_code": 200,
    }
    assert span.status.status_code is StatusCode.UNSET


@pytest.mark.usefixtures("hook")
def test_environment_is_added_when_the_request_has_none(
    sagemaker: Any, wire: SageMakerWire, exporter: InMemorySpanExporter
) -> None:
    """A request without Environment gets one holding only the trace parent; with no caller
    span the job's span is a root."""
    sagemaker.create_transform_job(**job())
    span = job_span(exporter)
    assert wire.environment() == {"TRACEPARENT": parent_of(span)}
    assert span.parent is None


@pytest.mark.usefixtures("hook")
def test_the_environment_is_signed(sagemaker: Any, wire: SageMakerWire) -> None:
    """The Environment was merged before signing: SigV4 over the body as sent, with the
    request's own date, gives the signature it carries."""
    sagemaker.create_transform_job(**job(Environment=dict(MINE)))
    sent = wire.requests[-1]
    assert "TRACEPARENT" in wire.environment()
    signed = signed_headers(sent)
    assert "x-amz-target" in signed
    headers = {
        k: v.decode() if isinstance(v, bytes) else v
        for k, v in sent.headers.items()
        if k.lower() in signed
    }
    again = AWSRequest(method=sent.method, url=sent.url, headers=headers, data=sent.body)
    again.context["timestamp"] = headers["X-Amz-Date"]
    auth = SigV4Auth(Credentials("testing", "testing", "testing"), "sagemaker", REGION)
    auth._modify_request_before_signing(again)
    signature = auth.signature(auth.string_to_sign(again, auth.canonical_request(again)), again)
    authorization = sent.headers["Authorization"]
    if isinstance(authorization, bytes):
        authorization = authorization.decode()
    assert authorization.endswith(f"Signature={signature}")


@pytest.mark.usefixtures("hook")
@pytest.mark.parametrize(
    "theirs",
    [
        {"TRACEPARENT": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
        {"TRACEPARENT": ""},
        {"TRACEPARENT": "not a parent", "BAGGAGE": "mine=1"},
    ],
    ids=["valid", "empty", "with-baggage"],
)
def test_a_trace_parent_the_caller_set_is_left_alone(
    sagemaker: Any,
    wire: SageMakerWire,
    exporter: InMemorySpanExporter,
    tracer: Tracer,
    theirs: dict[str, str],
) -> None:
    """A TRACEPARENT in the caller's Environment, whatever it holds, means nothing is added:
    the map is sent as given. The span is made all the same."""
    with tracer.start_as_current_span("caller"), with_baggage(tenant="acme"):
        sagemaker.create_transform_job(**job(Environment={**MINE, **theirs}))
    assert wire.environment() == {**MINE, **theirs}
    job_span(exporter)


@pytest.mark.usefixtures("hook")
def test_the_callers_baggage_variable_is_never_replaced(
    sagemaker: Any, wire: SageMakerWire, exporter: InMemorySpanExporter, tracer: Tracer
) -> None:
    """With BAGGAGE (but no TRACEPARENT) set by the caller, TRACEPARENT is added and the
    caller's BAGGAGE stays as it was."""
    with tracer.start_as_current_span("caller"), with_baggage(tenant="acme"):
        sagemaker.create_transform_job(**job(Environment={"BAGGAGE": "theirs=1"}))
    span = job_span(exporter)
    assert wire.environment() == {"BAGGAGE": "theirs=1", "TRACEPARENT": parent_of(span)}


def _variables(count: int) -> dict[str, str]:
    return {f"VAR_{n}": str(n) for n in range(count)}


@pytest.mark.usefixtures("hook")
@pytest.mark.parametrize(
    ("given", "added"),
    [
        (13, ["TRACEPARENT", "TRACESTATE", "BAGGAGE"]),
        (14, ["TRACEPARENT", "TRACESTATE"]),
        (15, ["TRACEPARENT"]),
        (16, []),
        (17, []),
    ],
)
def test_at_most_16_variables_baggage_going_first_then_tracestate(
    sagemaker: Any,
    wire: SageMakerWire,
    exporter: InMemorySpanExporter,
    tracer_provider: TracerProvider,
    caplog: pytest.LogCaptureFixture,
    given: int,
    added: list[str],
) -> None:
    """Within 16 variables: baggage is dropped first, then tracestate; with no room for the
    parent the Environment goes as it was, with exactly one warning naming the job."""
    state = TraceState([("vendor", "opaque")])
    remote = trace.SpanContext(0x1234, 0x5678, True, trace.TraceFlags(1), state)
    parent = trace.set_span_in_context(trace.NonRecordingSpan(remote))
    token = attach(baggage.set_baggage("tenant", "acme", parent))
    try:
        with caplog.at_level(logging.DEBUG, logger="sm_tracing"):
            sagemaker.create_transform_job(**job(Environment=_variables(given)))
    finally:
        detach(token)
    sent = wire.environment()
    assert list(sent) == [*_variables(given), *added]
    assert len(sent) <= 16 or not added
    if "TRACESTATE" in added:
        assert sent["TRACESTATE"] == "vendor=opaque"
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    if added:
        assert sent["TRACEPARENT"] == parent_of(job_span(exporter))
        assert warnings == []
    else:
        assert len(warnings) == 1
        assert "job-1" in warnings[0].getMessage()
        assert "no room" in warnings[0].getMessage()
    job_span(exporter)


@pytest.mark.usefixtures("hook")
def test_a_value_over_10240_characters_is_left_out(
    sagemaker: Any, wire: SageMakerWire, exporter: InMemorySpanExporter
) -> None:
    """A tracestate the API would refuse (over 10240 characters) is left out; the parent and
    the baggage go."""
    entries = [(f"v{n:02d}" + "k" * 200, "x" * 250) for n in range(32)]
    state = TraceState(entries)
    assert len(state.to_header()) > _transform.MAX_VALUE_LENGTH
    remote = trace.SpanContext(0x1234, 0x5678, True, trace.TraceFlags(1), state)
    parent = trace.set_span_in_context(trace.NonRecordingSpan(remote))
    token = attach(baggage.set_baggage("tenant", "acme", parent))
    try:
        sagemaker.create_transform_job(**job(Environment=dict(MINE)))
    finally:
        detach(token)
    span = job_span(exporter)
    assert wire.environment() == {
        **MINE,
        "TRACEPARENT": parent_of(span),
        "BAGGAGE": "tenant=acme",
    }


@pytest.mark.usefixtures("hook")
def test_a_raising_propagator_costs_a_log_line(
    sagemaker: Any,
    wire: SageMakerWire,
    exporter: InMemorySpanExporter,
    raising_propagator: Callable[[], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A propagator that raises: the call goes through with the Environment as given, the span
    is still made and ended, and one warning says what could not be done."""
    raising_propagator()
    with caplog.at_level(logging.DEBUG, logger="sm_tracing"):
        response = sagemaker.create_transform_job(**job(Environment=dict(MINE)))
    assert response["TransformJobArn"] == JOB_ARN
    assert wire.environment() == MINE
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "could not merge the trace context into a transform job's Environment"
    ]
    assert job_span(exporter).end_time is not None


@pytest.mark.usefixtures("hook", "global_propagator")
def test_another_propagator_writes_its_own_fields() -> None:
    """Under B3 multi-header propagation the variables are B3's, upper-cased with ``_``."""
    from opentelemetry import propagate
    from opentelemetry.propagators.b3 import B3MultiFormat

    propagate.set_global_textmap(B3MultiFormat())
    wire = SageMakerWire()
    sagemaker_client(wire).create_transform_job(**job(Environment=dict(MINE)))
    sent = wire.environment()
    assert sorted(set(sent) - set(MINE)) == ["X_B3_SAMPLED", "X_B3_SPANID", "X_B3_TRACEID"]


@pytest.mark.usefixtures("hook")
def test_a_failed_call_records_its_error_by_type(
    exporter: InMemorySpanExporter,
) -> None:
    """A refused call raises to the caller unchanged; the span records the error's type, code,
    request id and status, never its message."""
    body = {"__type": "ValidationException", "Message": "Environment VAR_1 secret-value bad"}
    wire = SageMakerWire(job_answer(400, body))
    with pytest.raises(ClientError) as raised:
        sagemaker_client(wire).create_transform_job(**job(Environment=dict(MINE)))
    assert raised.value.response["Error"]["Code"] == "ValidationException"
    span = job_span(exporter)
    assert span.status.status_code is StatusCode.ERROR
    attributes = dict(span.attributes or {})
    assert attributes["error.type"] == "botocore.exceptions.ClientError"
    assert attributes["aws.error.code"] == "ValidationException"
    assert attributes["aws.request_id"] == REQUEST_ID
    assert attributes["http.response.status_code"] == 400
    recorded = json.dumps([attributes, [dict(e.attributes or {}) for e in span.events]])
    assert "secret" not in recorded
    assert span.status.description is None or "secret" not in span.status.description


@pytest.mark.usefixtures("hook")
def test_other_calls_pass_through(
    wire: SageMakerWire, sagemaker: Any, exporter: InMemorySpanExporter
) -> None:
    """Other operations of the sagemaker client, and other services' clients, get no span and
    their parameters go as given."""
    import boto3

    wire.answer = job_answer(body={"Tags": []})
    assert sagemaker.list_tags(ResourceArn=JOB_ARN)["Tags"] == []
    assert json.loads(wire.requests[-1].body) == {"ResourceArn": JOB_ARN}
    other = Wire(respond=lambda request: job_answer())
    sts = boto3.client("sts", region_name=REGION, **CREDENTIALS)
    sts.meta.events.register("before-send", other)
    with contextlib.suppress(Exception):  # the canned answer is not an STS one
        sts.get_caller_identity()
    assert other.requests
    assert exporter.get_finished_spans() == ()


def test_suppressed_instrumentation_is_respected(
    hook: None, sagemaker: Any, wire: SageMakerWire, exporter: Any
) -> None:
    """Inside suppress_instrumentation the call is neither traced nor changed."""
    with suppress_instrumentation():
        sagemaker.create_transform_job(**job(Environment=dict(MINE)))
    assert wire.environment() == MINE
    assert exporter.get_finished_spans() == ()


def test_uninstall_removes_the_wrapper(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """After uninstall the request goes untouched and botocore's method is as it was."""
    before = botocore.client.BaseClient.__dict__["_make_api_call"]
    sm_tracing.instrument(tracer_provider=tracer_provider, transform_jobs=True)
    assert botocore.client.BaseClient.__dict__["_make_api_call"] is not before
    wire = SageMakerWire()
    client = sagemaker_client(wire)
    client.create_transform_job(**job())
    sm_tracing.uninstrument()
    assert botocore.client.BaseClient.__dict__["_make_api_call"] is before
    client.create_transform_job(**job())
    assert wire.environment(0) is not None and "TRACEPARENT" in wire.environment(0)
    assert wire.environment(1) is None
    assert len(exporter.get_finished_spans()) == 1


@pytest.mark.parametrize(
    ("pairs", "given", "expected"),
    [
        ([("traceparent", "tp")], None, ({"TRACEPARENT": "tp"}, None)),
        ([("baggage", "b=1")], {}, (None, _transform.SKIP_NO_PARENT)),
        ([], {"A": "1"}, (None, _transform.SKIP_NO_PARENT)),
        ([("traceparent", "t" * 10241)], {}, (None, _transform.SKIP_UNFIT)),
        (
            [("traceparent", "tp"), ("tracestate", "s" * 10241), ("baggage", "b")],
            {},
            ({"TRACEPARENT": "tp", "BAGGAGE": "b"}, None),
        ),
        ([("traceparent", "tp"), ("x.custom", "c")], {}, ({"TRACEPARENT": "tp"}, None)),
    ],
    ids=["no-environment", "baggage-only", "nothing", "parent-too-long", "state-too-long",
         "not-a-field"],
)  # fmt: skip
def test_merge_environment(
    pairs: list[tuple[str, str]],
    given: dict[str, str] | None,
    expected: tuple[dict[str, str] | None, str | None],
) -> None:
    """The merge itself: what it adds, leaves out, or refuses, and why."""
    keys = _codec.Keys({"traceparent", "tracestate", "baggage"}, required={"traceparent"})
    assert _transform.merge_environment(given, pairs, keys) == expected


def test_a_required_field_that_cannot_be_a_variable_is_refused() -> None:
    """A propagator whose parent field is no valid variable name gets nothing sent."""
    keys = _codec.Keys({"x.trace", "baggage"}, required={"x.trace"})
    merged = _transform.merge_environment({}, [("x.trace", "1"), ("baggage", "b")], keys)
    assert merged == (None, _transform.SKIP_UNFIT)
    assert _propagation.DROP_ORDER == ("baggage", "tracestate")


def test_aiobotocore_calls_are_covered(
    hook: None, exporter: InMemorySpanExporter, tracer: Tracer
) -> None:
    """An aiobotocore ``sagemaker`` client sends the merged Environment to a loopback server,
    under the caller's span."""
    session_module = pytest.importorskip("aiobotocore.session")

    async def main(url: str) -> Any:
        session = session_module.get_session()
        async with session.create_client(
            "sagemaker", region_name=REGION, endpoint_url=url, **CREDENTIALS
        ) as client:
            with tracer.start_as_current_span("caller"):
                return await client.create_transform_job(**job(Environment=dict(MINE)))

    with loopback(lambda path: job_answer()) as server:
        response = asyncio.run(main(endpoint_url(server)))
        body = json.loads(server.received[-1].body)
    assert response["TransformJobArn"] == JOB_ARN
    span = job_span(exporter)
    assert body["Environment"] == {**MINE, "TRACEPARENT": parent_of(span)}
    assert span.parent is not None
    assert span.attributes is not None and span.attributes["server.address"] == "127.0.0.1"


@pytest.mark.parametrize("order", ["ours-first", "theirs-first"])
def test_with_the_botocore_instrumentation_its_span_is_the_parent(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter, order: str
) -> None:
    """With opentelemetry-instrumentation-botocore on, in either order, its span is the only
    one and the TRACEPARENT names it."""
    from opentelemetry.instrumentation.botocore import BotocoreInstrumentor

    wire = SageMakerWire()
    with beside_upstream(order, BotocoreInstrumentor(), tracer_provider, transform_jobs=True):
        sagemaker_client(wire).create_transform_job(**job(Environment=dict(MINE)))
    (span,) = exporter.get_finished_spans()
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name.startswith("opentelemetry.instrumentation.botocore")
    assert wire.environment() == {**MINE, "TRACEPARENT": parent_of(span)}
    assert span.attributes is not None
    assert span.attributes["aws.sagemaker.transform_job.name"] == "job-1"


_WIRED = "transform_jobs" in inspect.signature(sm_tracing.instrument).parameters


@pytest.mark.skipif(not _WIRED, reason="instrument() does not take transform_jobs yet")
def test_instrument_transform_jobs_installs_and_uninstrument_removes(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """``instrument(transform_jobs=True)`` traces CreateTransformJob; by default it does not;
    ``uninstrument()`` stops it."""
    wire = SageMakerWire()
    client = sagemaker_client(wire)
    sm_tracing.uninstrument()
    sm_tracing.instrument(tracer_provider=tracer_provider)
    try:
        client.create_transform_job(**job())
    finally:
        sm_tracing.uninstrument()
    assert wire.environment() is None
    sm_tracing.instrument(tracer_provider=tracer_provider, transform_jobs=True)
    try:
        client.create_transform_job(**job())
    finally:
        sm_tracing.uninstrument()
    assert wire.environment() == {"TRACEPARENT": parent_of(job_span(exporter))}
    client.create_transform_job(**job())
    assert wire.environment() is None
    assert len(exporter.get_finished_spans()) == 1


# -- end to end ------------------------------------------------------------------------------

# A model container under gunicorn (WSGI) or uvicorn (ASGI), traced by sm_tracing's middleware
# and exporting over OTLP. Each answer says which of the job's variables the process has.
_APP = (
    """\
import json, os

import sm_tracing

sm_tracing.configure()


def answer(path, body):
    if path != "/invocations":
        return b""
    names = ("JOB_MARK", "TRACEPARENT")
    return json.dumps({"record": body.decode(), **{n: os.environ.get(n) for n in names}}).encode()
"""
    + SERVING_APPS
    + "wsgi = sm_tracing.WSGIMiddleware(_wsgi)\nasgi = sm_tracing.ASGIMiddleware(_asgi)\n"
)


@pytest.mark.parametrize(
    ("stack", "app", "policy"),
    [
        ("gunicorn", "wsgi", "continue"),
        ("uvicorn", "asgi", "continue"),
        ("gunicorn", "wsgi", "link"),
    ],
    ids=["gunicorn", "uvicorn", "gunicorn-link"],
)  # fmt: skip
def test_every_record_of_a_job_is_in_the_jobs_trace(
    tmp_path: Path, stack: str, app: str, policy: str
) -> None:
    """A job run through LocalRuntime, its container a real server behind sm_tracing's
    middleware: every record's container span is a child of the CreateTransformJob span (or,
    under ``link``, a new trace linked to it), and the job's own variable reaches the app."""
    (tmp_path / "transform_app.py").write_text(_APP)
    records = [b"%d" % n for n in range(5)]
    put(tmp_path, "in/records/a.csv", b"\n".join(records[:3]) + b"\n")
    put(tmp_path, "in/records/b.csv", b"\n".join(records[3:]))
    provider, exporter = in_memory()
    with contextlib.ExitStack() as stack_:
        receiver = stack_.enter_context(OTLPReceiver())
        env = {
            **otlp_env("transform", receiver.traces_url, 20),
            "SM_TRACING_REMOTE_CONTEXT": policy,
        }
        containers = TransformContainers(
            stack, f"transform_app:{app}", tmp_path, cwd=tmp_path, env=env
        )
        runtime = stack_.enter_context(
            LocalRuntime({}, s3_root=tmp_path / "s3", transform_container=containers)
        )
        sm_tracing.instrument(tracer_provider=provider, transform_jobs=True)
        stack_.callback(sm_tracing.uninstrument)
        client = runtime_client(runtime.url, "sagemaker")
        with provider.get_tracer("tests").start_as_current_span("submit"):
            client.create_transform_job(
                **job(
                    BatchStrategy="SingleRecord",
                    Environment={"JOB_MARK": "from-the-job"},
                    TransformOutput={"S3OutputPath": "s3://out/job-1", "AssembleWith": "Line"},
                )
            )
        assert runtime.wait_transform_jobs(60)
        described = client.describe_transform_job(TransformJobName="job-1")
        [container] = containers.containers
        assert described["TransformJobStatus"] == "Completed", (described, container.output())
        span = job_span(exporter)
        trace_id = f"{span.get_span_context().trace_id:032x}"
        span_id = f"{span.get_span_context().span_id:016x}"

        def ours(received: ReceivedSpan) -> bool:
            if policy == "link":
                return (trace_id, span_id) in received.links
            return received.trace_id == trace_id

        def arrived(spans: list[ReceivedSpan]) -> bool:
            return len([s for s in spans if s.name == CONTAINER_SPAN and ours(s)]) >= 5

        received = receiver.wait_for(arrived, timeout=20)
    # The variables the job sent are the caller's and the job span's context.
    assert described["Environment"] == {"JOB_MARK": "from-the-job", "TRACEPARENT": parent_of(span)}
    answers = []
    for name in ("a.csv.out", "b.csv.out"):
        text = (tmp_path / "s3" / "out" / "job-1" / name).read_text()
        answers += [json.loads(line) for line in text.splitlines()]
    assert sorted(a["record"] for a in answers) == [r.decode() for r in records]
    assert {a["JOB_MARK"] for a in answers} == {"from-the-job"}
    assert {a["TRACEPARENT"] for a in answers} == {parent_of(span)}
    spans = [s for s in received if s.service == "transform"]
    assert len(spans) == 5  # one per record; nothing else the container served was traced
    for container_span in spans:
        assert container_span.name == CONTAINER_SPAN
        assert container_span.kind == "server"
        if policy == "link":
            assert container_span.trace_id != trace_id
            assert container_span.parent_id is None
            assert (trace_id, span_id) in container_span.links
        else:
            assert container_span.trace_id == trace_id
            assert container_span.parent_id == span_id
    if policy == "link":
        assert len({s.trace_id for s in spans}) == 5
