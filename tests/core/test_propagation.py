"""inject_context, extract_context and strip_context driven by real OpenTelemetry propagators."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace import Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from sm_tracing import extract_context, inject_context, strip_context
from sm_tracing._codec import format_traceresponse, parse_traceresponse


def test_inject_uses_the_current_span(tracer: Tracer) -> None:
    """Under a span, its W3C traceparent (flags as the SDK set them) is merged in."""
    with tracer.start_as_current_span("caller") as span:
        value = inject_context("accept_eula=true")
    ctx = span.get_span_context()
    assert value == (
        f"accept_eula=true;traceparent=00-{ctx.trace_id:032x}-{ctx.span_id:016x}"
        f"-{ctx.trace_flags:02x}"
    )


def test_inject_without_a_trace_returns_the_input() -> None:
    """No span, no baggage: nothing to add, the caller's value is returned as it was."""
    assert inject_context("accept_eula=true") == "accept_eula=true"
    assert inject_context(None) is None


def test_tracestate_and_baggage_are_encoded_and_read_back(tracer: Tracer) -> None:
    """Values with ',' ';' '=' survive the trip inside a ';' list, and parse back as they were."""
    parent = TraceContextTextMapPropagator().extract(
        {
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
        }
    )
    with tracer.start_as_current_span("caller", context=parent) as span:
        ctx = baggage.set_baggage("tenant", "a;b,c=d")
        value = inject_context("accept_eula=true", ctx)
    assert value is not None
    assert value.startswith("accept_eula=true;traceparent=")
    assert value.count(";") == 3  # only our three separators: the values are encoded
    extracted = extract_context(value)
    assert trace.get_current_span(extracted).get_span_context().span_id == (
        span.get_span_context().span_id
    )
    state = trace.get_current_span(extracted).get_span_context().trace_state
    assert state.get("congo") == "t61rcWkgMzE"
    assert baggage.get_baggage("tenant", extracted) == "a;b,c=d"
    assert strip_context(value) == "accept_eula=true"


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "traceparent=garbage",
        "traceparent=00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "traceparent=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra-" + "x" * 900,
        "traceparent=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\x07",
        "traceparent=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01;é=1",
        "x" * 1025,
        "traceparent=%00%01%02",
    ],
)
def test_extract_gives_no_parent_for_malformed_input(value: str | None) -> None:
    """Malformed, oversized, control or non-ASCII input: a context with no parent, no raise."""
    extracted = extract_context(value)
    assert not trace.get_current_span(extracted).get_span_context().is_valid


def test_a_raising_propagator_costs_nothing_but_a_log(
    raising_propagator: Callable[[], None], caplog: pytest.LogCaptureFixture, tracer: Tracer
) -> None:
    """A propagator that raises: inject returns the input, extract no parent, both logged."""
    raising_propagator()
    with caplog.at_level(logging.WARNING, logger="sm_tracing"), tracer.start_as_current_span("x"):
        assert inject_context("accept_eula=true") == "accept_eula=true"
    value = "traceparent=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with caplog.at_level(logging.WARNING, logger="sm_tracing"):
        assert not trace.get_current_span(extract_context(value)).get_span_context().is_valid
    assert len([r for r in caplog.records if r.name.startswith("sm_tracing")]) == 2


def test_another_propagator_writes_its_own_keys(global_propagator: None, tracer: Tracer) -> None:
    """With the X-Ray propagator configured, its header travels (encoded) and is stripped."""
    from opentelemetry.propagators.aws import AwsXRayPropagator

    propagate.set_global_textmap(CompositePropagator([AwsXRayPropagator()]))
    with tracer.start_as_current_span("caller") as span:
        value = inject_context("accept_eula=true")
    assert value is not None
    assert "x-amzn-trace-id=Root%3D1-" in value
    extracted = trace.get_current_span(extract_context(value)).get_span_context()
    assert extracted.trace_id == span.get_span_context().trace_id
    assert strip_context(value) == "accept_eula=true"


def test_traceresponse_round_trip(tracer: Tracer) -> None:
    """The echo format parses back to the span it names; junk parses to None."""
    with tracer.start_as_current_span("container") as span:
        pass
    context = span.get_span_context()
    value = format_traceresponse(context.trace_id, context.span_id, context.trace_flags)
    parsed = parse_traceresponse(value)
    assert parsed is not None
    assert (int(parsed[0], 16), int(parsed[1], 16)) == (context.trace_id, context.span_id)
    for junk in ["", "00-xyz", "00-" + "0" * 32 + "-" + "1" * 16 + "-01", "01-+abc-1-1"]:
        assert parse_traceresponse(junk) is None


class _SameButNotDefault(CompositePropagator):
    """The default propagator's parts under another type: always the propagators' own path."""


@pytest.mark.parametrize("flags", [0x00, 0x01, 0x03, 0xFF])
@pytest.mark.parametrize("state", [None, "vendor=value"])
@pytest.mark.parametrize("entries", [{}, {"user": "alice"}])
@pytest.mark.parametrize("value", [None, "accept_eula=true", "tfs-model-name=m"])
def test_the_default_propagators_shortcut_writes_what_the_propagators_do(
    global_propagator: None,
    flags: int,
    state: str | None,
    entries: dict[str, str],
    value: str | None,
) -> None:
    """Under OpenTelemetry's default propagator a lone traceparent is written directly: the
    value sent is the very one the propagators' own inject gives, whatever the span carries."""
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

    from sm_tracing._propagation import merge_context

    span = NonRecordingSpan(
        SpanContext(
            0x4BF92F3577B34DA6A3CE929D0E0E4736,
            0x00F067AA0BA902B7,
            is_remote=False,
            trace_flags=TraceFlags(flags),
            trace_state=TraceState.from_header([state]) if state else TraceState(),
        )
    )
    context = trace.set_span_in_context(span)
    for key, entry in entries.items():
        context = baggage.set_baggage(key, entry, context)
    parts = [TraceContextTextMapPropagator(), W3CBaggagePropagator()]
    propagate.set_global_textmap(CompositePropagator(parts))
    shortcut = merge_context(value, context)
    propagate.set_global_textmap(_SameButNotDefault(parts))
    assert merge_context(value, context) == shortcut
    assert shortcut[0] is not None and f"-{flags:02x}" in shortcut[0]
