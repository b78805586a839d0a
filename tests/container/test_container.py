"""continue_trace and the Invocation primitive every container adapter is built on."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from _container_support import caller, echoed
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, Tracer

from sm_tracing import _codec, continue_trace
from sm_tracing.container._primitive import remote_context_policy


def test_continue_trace_joins_the_callers_trace(
    tracer: Tracer, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """The container span is a SERVER child of the caller's span, current inside the block."""
    value, parent = caller(tracer, "accept_eula=true", clear=exporter)
    with continue_trace(value, tracer_provider=tracer_provider) as span:
        assert trace.get_current_span() is span
    assert trace.get_current_span() is trace.INVALID_SPAN
    (finished,) = exporter.get_finished_spans()
    assert finished.name == "invocations"
    assert finished.kind is SpanKind.SERVER
    assert finished.context.trace_id == parent.trace_id
    assert finished.parent is not None and finished.parent.span_id == parent.span_id


def test_continue_trace_under_an_active_span_is_internal(
    tracer: Tracer, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Under a local span of the same trace the container span is an INTERNAL child of it."""
    value, _ = caller(tracer)
    with continue_trace(value, tracer_provider=tracer_provider) as outer:  # noqa: SIM117
        with continue_trace(value, name="inner", tracer_provider=tracer_provider):
            pass
    inner = exporter.get_finished_spans()[-2]
    assert inner.name == "inner"
    assert inner.kind is SpanKind.INTERNAL
    assert inner.parent is not None
    assert inner.parent.span_id == outer.get_span_context().span_id


def test_link_policy_starts_a_new_trace_linked_to_the_caller(
    tracer: Tracer, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """remote_context="link" gives a new root whose link names the caller's span."""
    value, parent = caller(tracer)
    with continue_trace(value, tracer_provider=tracer_provider, remote_context="link"):
        pass
    span = exporter.get_finished_spans()[-1]
    assert span.parent is None
    assert span.context.trace_id != parent.trace_id
    assert [link.context.span_id for link in span.links] == [parent.span_id]


@pytest.mark.parametrize("source", ["argument", "environment"])
def test_ignore_policy_starts_an_unrelated_root(
    tracer: Tracer,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    monkeypatch: pytest.MonkeyPatch,
    source: str,
) -> None:
    """ "ignore", by argument or SM_TRACING_REMOTE_CONTEXT, makes a root with no link."""
    value, parent = caller(tracer)
    if source == "environment":
        monkeypatch.setenv("SM_TRACING_REMOTE_CONTEXT", " Ignore ")
        policy = None
    else:
        policy = "ignore"
    with continue_trace(value, tracer_provider=tracer_provider, remote_context=policy):
        pass
    span = exporter.get_finished_spans()[-1]
    assert span.parent is None
    assert span.context.trace_id != parent.trace_id
    assert not span.links


def test_policy_argument_wins_and_bad_values_are_handled(monkeypatch: pytest.MonkeyPatch) -> None:
    """The argument beats the environment; a bad argument raises, a bad variable is ignored."""
    monkeypatch.setenv("SM_TRACING_REMOTE_CONTEXT", "link")
    assert remote_context_policy() == "link"
    assert remote_context_policy("continue") == "continue"
    monkeypatch.setenv("SM_TRACING_REMOTE_CONTEXT", "follow")
    assert remote_context_policy() == "continue"
    with pytest.raises(ValueError, match="remote_context"):
        remote_context_policy("follow")


def test_sampling_follows_the_callers_flag(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Under "continue" an unsampled caller gives an unsampled (unexported) container span."""
    unsampled = "traceparent=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
    with continue_trace(unsampled, tracer_provider=tracer_provider) as span:
        assert not span.is_recording()
        assert span.get_span_context().trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert exporter.get_finished_spans() == ()


HOSTILE = [
    pytest.param("traceparent=00-zzzz-b7ad6b7169203331-01", id="malformed"),
    pytest.param("traceparent=00-" + "0" * 32 + "-b7ad6b7169203331-01", id="zero-trace-id"),
    pytest.param(
        "traceparent=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01;x=" + "a" * 1100,
        id="oversized",
    ),
    pytest.param(
        "traceparent=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\x07", id="control"
    ),
    pytest.param(
        "traceparent=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01;é=1", id="non-ascii"
    ),
    pytest.param(
        "traceparent=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        id="version-00-with-extra",
    ),
]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_input_gives_a_new_root_and_records_nothing_raw(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter, value: str
) -> None:
    """Malformed, oversized, control-character or non-ASCII carriers mean no parent, and
    nothing of the raw value lands on the span."""
    from sm_tracing._telemetry import get_tracer
    from sm_tracing.container._primitive import Invocation

    invocation = Invocation(value, tracer=get_tracer(tracer_provider), policy="continue")
    with invocation:
        pass
    (span,) = exporter.get_finished_spans()
    assert span.parent is None
    assert span.context.trace_id != 0x0AF7651916CD43DD8448EB211C80319C
    recorded = repr(dict(span.attributes or {})) + repr(span.events) + span.name
    assert "traceparent" not in recorded
    assert "b7ad6b7169203331" not in recorded


def test_a_raising_propagator_gives_a_new_root(
    tracer: Tracer,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    raising_propagator: Callable[[], None],
) -> None:
    """A propagator that raises is survived: the request gets a new root span."""
    value, parent = caller(tracer)
    raising_propagator()
    from sm_tracing._telemetry import get_tracer
    from sm_tracing.container._primitive import Invocation

    with Invocation(value, tracer=get_tracer(tracer_provider), policy="continue"):
        pass
    span = exporter.get_finished_spans()[-1]
    assert span.parent is None
    assert span.context.trace_id != parent.trace_id


class _AppError(Exception):
    pass


def test_an_exception_is_recorded_and_reraised_unchanged(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """The block's exception propagates as the same object; the span has ERROR and the event,
    and the context is detached."""
    error = _AppError("model failed")
    with pytest.raises(_AppError) as raised, continue_trace(None, tracer_provider=tracer_provider):
        raise error
    assert raised.value is error
    assert trace.get_current_span() is trace.INVALID_SPAN
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert [event.name for event in span.events] == ["exception"]


def test_echo_merges_traceresponse_after_the_apps_value(
    tracer_provider: TracerProvider,
) -> None:
    """echo() gives the app's response value with this span's traceresponse after it."""
    invocation = continue_trace(None, tracer_provider=tracer_provider)
    with invocation as span:
        value = invocation.echo("x-next-token=abc")
    assert value is not None and value.startswith("x-next-token=abc;traceresponse=")
    assert echoed(value).span_id == span.get_span_context().span_id


def test_start_without_attach_and_attach_later(tracer_provider: TracerProvider) -> None:
    """start(attach=False) leaves the current context alone until attach()."""
    from sm_tracing._telemetry import get_tracer
    from sm_tracing.container._primitive import Invocation

    invocation = Invocation(None, tracer=get_tracer(tracer_provider), policy="continue")
    span = invocation.start(attach=False)
    assert trace.get_current_span() is trace.INVALID_SPAN
    invocation.attach()
    assert trace.get_current_span() is span
    invocation.detach()
    invocation.detach()
    assert trace.get_current_span() is trace.INVALID_SPAN
    invocation.end()
    assert otel_context.get_current() == Context()


class _NoTracerProvider(TracerProvider):
    def get_tracer(self, *args: object, **kwargs: object) -> Tracer:  # type: ignore[override]
        raise RuntimeError("no tracer")


class _NoSpanProvider(TracerProvider):
    def get_tracer(self, *args: object, **kwargs: object) -> Tracer:  # type: ignore[override]
        tracer = super().get_tracer(*args, **kwargs)  # type: ignore[arg-type]

        def start_span(*_args: object, **_kwargs: object) -> trace.Span:
            raise RuntimeError("no span")

        tracer.start_span = start_span  # type: ignore[method-assign]
        return tracer


@pytest.mark.parametrize("provider", [_NoTracerProvider, _NoSpanProvider])
def test_a_failing_tracer_provider_never_breaks_the_block(
    tracer: Tracer, provider: type[TracerProvider], caplog: pytest.LogCaptureFixture
) -> None:
    """A provider that fails to give a tracer, or a tracer that fails to start a span: the
    block runs untraced, its exception comes through unchanged, and the failure is logged."""
    value, _ = caller(tracer)
    ran = []
    with continue_trace(value, tracer_provider=provider()) as span:
        ran.append(span.is_recording())
    assert ran == [False]
    error = _AppError("the block's own")
    with pytest.raises(_AppError) as raised, continue_trace(value, tracer_provider=provider()):
        raise error
    assert raised.value is error
    assert any(record.name.startswith("sm_tracing") for record in caplog.records)


def test_the_echo_carries_the_containers_time_and_gives_it_up_first(
    tracer_provider: TracerProvider,
) -> None:
    """Beside traceresponse the echo says how long the container took (whole microseconds);
    when the app's value leaves no room for both, the time goes and the echo stays."""
    invocation = continue_trace(None, tracer_provider=tracer_provider)
    with invocation:
        value = invocation.echo("x-next-token=abc")
        assert value is not None
        pairs = dict(token.split("=", 1) for token in value.split(";"))
        assert int(pairs["sm-container-us"]) >= 0
        assert list(pairs) == ["x-next-token", "traceresponse", "sm-container-us"]
        room = 1024 - len(";traceresponse=") - 55
        tight = invocation.echo("k=" + "v" * (room - 2))
        assert tight is not None and len(tight) == 1024
        assert "sm-container-us" not in tight and "traceresponse=" in tight
    assert _codec.read(value, _codec.ECHO_KEYS) == (
        {"traceresponse": pairs["traceresponse"], "sm-container-us": pairs["sm-container-us"]},
        "x-next-token=abc",
    )
