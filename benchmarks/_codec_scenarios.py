"""The codec configurations: writing and reading the trace context, ours in CustomAttributes
against the configured propagator with a plain dict."""

from __future__ import annotations

from typing import Any

from benchmarks._base import (
    APP_ATTRIBUTES,
    CARRIED_ATTRIBUTES,
    SPAN_ID,
    TRACE_ID,
    TRACEPARENT,
    Scenario,
    expect,
    nothing,
    per_call,
)


def _context() -> Any:
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    span_context = SpanContext(TRACE_ID, SPAN_ID, is_remote=False, trace_flags=TraceFlags(1))
    return trace.set_span_in_context(NonRecordingSpan(span_context))


def inject_bare() -> Scenario:
    from opentelemetry.propagate import inject

    context = _context()

    def op() -> dict[str, str]:
        carrier: dict[str, str] = {}
        inject(carrier, context=context)
        return carrier

    def check(calls: int) -> None:
        expect(op().get("traceparent") == TRACEPARENT, "inject wrote no traceparent")

    return Scenario(per_call(op), check, nothing)


def inject_ours() -> Scenario:
    from sm_tracing import inject_context

    context = _context()

    def op() -> object:
        return inject_context(APP_ATTRIBUTES, context)

    def check(calls: int) -> None:
        expect(op() == CARRIED_ATTRIBUTES, "inject_context did not merge the traceparent")

    return Scenario(per_call(op), check, nothing)


def _check_extracted(context: Any) -> None:
    from opentelemetry import trace

    span_context = trace.get_current_span(context).get_span_context()
    expect(
        span_context.trace_id == TRACE_ID and span_context.span_id == SPAN_ID,
        "the traceparent was not extracted",
    )


def extract_bare() -> Scenario:
    from opentelemetry.propagate import extract

    carrier = {"traceparent": TRACEPARENT}

    def op() -> object:
        return extract(carrier)

    return Scenario(per_call(op), lambda calls: _check_extracted(op()), nothing)


def extract_ours() -> Scenario:
    from sm_tracing import extract_context

    def op() -> object:
        return extract_context(CARRIED_ATTRIBUTES)

    return Scenario(per_call(op), lambda calls: _check_extracted(op()), nothing)
