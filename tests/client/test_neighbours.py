"""sm_tracing beside the other tracers of a process: opentelemetry-instrumentation-botocore,
ddtrace, aws-xray-sdk and sentry-sdk, put on and taken off in every order.

Each scenario runs in an interpreter of its own (see ``_neighbours``), and every round of calls
in it is held to the same rules: at most one OpenTelemetry CLIENT span per SageMaker call;
while sm_tracing says it instruments, the call's trace context is on the wire and names that
span, which carries the SageMaker attributes; once it says it does not, nothing of it runs; and
the other tracer still records the call for as long as it is on.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from _neighbours import OUR_SCOPE, play, play_under_ddtrace_otel

ENDPOINT = "my-endpoint"


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


needs_ddtrace = pytest.mark.skipif(not _installed("ddtrace"), reason="ddtrace is not installed")
needs_xray = pytest.mark.skipif(not _installed("aws_xray_sdk"), reason="no aws-xray-sdk")
needs_sentry = pytest.mark.skipif(not _installed("sentry_sdk"), reason="no sentry-sdk")


def _upstream_has_aio() -> bool:
    try:
        import opentelemetry.instrumentation.botocore as upstream
    except ImportError:
        return False
    return hasattr(upstream, "AiobotocoreInstrumentor") and _installed("aiobotocore")


@dataclass
class _Expected:
    """What the steps played so far say should be true: whether sm_tracing instruments, and
    which other tracers are on, and which of them were on before sm_tracing (under its
    wrapper)."""

    ours: bool = False
    others: set[str] = field(default_factory=set)
    under_ours: set[str] = field(default_factory=set)

    def play(self, step: str) -> None:
        name = step[1:]
        if step == "+sm" and not self.ours:
            self.ours = True
            self.under_ours = set(self.others)
        elif step == "-sm":
            self.ours = False
        elif step[0] == "+" and name != "sm":
            self.others.add(name)
        elif step[0] == "-" and name != "sm":
            self.others.discard(name)
            # A tool that puts back the method it saved takes off what went on top of its
            # wrapper since: ours, when it came after.
            if name == "saver" and name in self.under_ours:
                self.ours = False


def check(steps: Sequence[str], records: Sequence[dict[str, Any]]) -> None:
    """Hold every step of a played scenario to the rules in the module's docstring."""
    expected = _Expected()
    for index, (step, record) in enumerate(zip(steps, records, strict=True)):
        where = f"step {index} ({step}) of {list(steps)}"
        if step == "call":
            assert record["instrumented"] is expected.ours, f"reported state, before {where}"
            for call in record["calls"]:
                _check_call(call, expected, f"{call['call']}, {where}")
        else:
            expected.play(step)
            assert record["instrumented_after"] is expected.ours, f"reported state after {where}"


def _check_call(call: dict[str, Any], expected: _Expected, where: str) -> None:
    spans = call["spans"]
    assert len(spans) <= 1, f"{len(spans)} CLIENT spans for one call: {spans}, {where}"
    if expected.ours:
        assert call["sent"] is not None, f"no trace context on the wire, {where}"
        assert len(spans) == 1, f"the context sent names no span, {where}"
        (span,) = spans
        assert call["sent"] == [span["trace_id"], span["span_id"]], f"{call} {where}"
        assert span["endpoint"] == ENDPOINT, f"the span lacks our attributes: {span}, {where}"
    else:
        assert "traceparent=" not in (call["custom_attributes"] or ""), where
        assert not [span for span in spans if span["scope"] == OUR_SCOPE], where
        # Nor do its handlers, left on a client seen before, enrich another tracer's span.
        assert not [span for span in spans if span["endpoint"] is not None], where
    for other in expected.others:
        assert call["recorded_by"][other] == 1, f"{other} did not record the call, {where}"


def _scenario(tool: str, installed: str, removed: str) -> list[str]:
    """Both on in the *installed* order, a round of calls after each change, both off in the
    *removed* order, and sm_tracing on and off again once both are gone."""
    first, second = ("sm", tool) if installed == "ours-first" else (tool, "sm")
    once, then = ("sm", tool) if removed == "ours-removed-first" else (tool, "sm")
    return [
        f"+{first}",
        f"+{second}",
        "call",
        f"-{once}",
        "call",
        f"-{then}",
        "call",
        "+sm",
        "call",
        "-sm",
        "call",
    ]


INSTALLED = ["ours-first", "theirs-first"]
REMOVED = ["ours-removed-first", "theirs-removed-first"]


@pytest.mark.parametrize("removed", REMOVED)
@pytest.mark.parametrize("installed", INSTALLED)
def test_beside_upstream_botocore(installed: str, removed: str) -> None:
    """Beside opentelemetry-instrumentation-botocore (and its aiobotocore instrumentor), in
    every order of instrument and uninstrument: one CLIENT span per call, sync and aio, named
    by the context sent and carrying our attributes while sm_tracing is on."""
    steps = _scenario("upstream", installed, removed)
    check(steps, play(steps, aio=_upstream_has_aio()))


@needs_ddtrace
@pytest.mark.parametrize("removed", REMOVED)
@pytest.mark.parametrize("installed", INSTALLED)
def test_beside_ddtrace(installed: str, removed: str) -> None:
    """Beside ddtrace's botocore integration, in every order of patch and unpatch: ddtrace
    records each call while patched, and sm_tracing's hook, which goes in under ddtrace's
    wrapper, stays when ddtrace's unpatch takes off the outermost one."""
    steps = _scenario("ddtrace", installed, removed)
    check(steps, play(steps))


def test_a_restored_method_that_takes_our_hook_is_reported_and_repaired() -> None:
    """When a tool that saved botocore's method before sm_tracing came puts it back, it takes
    sm_tracing's hook with it: sm_tracing stops saying it instruments, warns under its logger by
    the next instrument() at the latest, and that instrument() puts the context back on the
    wire."""
    steps = ["+saver", "+sm", "call", "-saver", "call", "+sm", "call"]
    records = play(steps)
    assert records[2]["calls"][0]["sent"] is not None
    assert records[3]["instrumented_after"] is False
    assert all(call["sent"] is None for call in records[4]["calls"])
    warned = [message for record in records[3:6] for message in record["warnings"]]
    assert [message for message in warned if message.startswith("sm_tracing")], records[3:6]
    assert records[5]["instrumented_after"] is True
    for call in records[6]["calls"]:
        (span,) = call["spans"]
        assert call["sent"] == [span["trace_id"], span["span_id"]], call


@pytest.mark.parametrize("removed", REMOVED)
@pytest.mark.parametrize("installed", INSTALLED)
def test_beside_a_tool_that_restores_a_saved_method(installed: str, removed: str) -> None:
    """Beside a plain monkeypatch that saves and restores botocore's method, in every order:
    what sm_tracing reports is what it does, even when the restore takes its hook off."""
    steps = _scenario("saver", installed, removed)
    check(steps, play(steps))


@pytest.mark.parametrize(
    "tool",
    [pytest.param("xray", marks=needs_xray), pytest.param("sentry", marks=needs_sentry)],
)
@pytest.mark.parametrize("installed", INSTALLED)
def test_beside_tracers_that_stay(tool: str, installed: str) -> None:
    """Beside aws-xray-sdk's patch_all() and sentry-sdk's boto3 integration, which are never
    taken off, in either order: they record every call, and sm_tracing's one span and context
    come and go with instrument() and uninstrument()."""
    first, second = ("sm", tool) if installed == "ours-first" else (tool, "sm")
    steps = [f"+{first}", f"+{second}", "call", "-sm", "call", "+sm", "call"]
    check(steps, play(steps))


# Orders in which one tool's removal leaves, in botocore's class, the wrapper of another bound
# to no instance (opentelemetry's and ddtrace's unwrap put back the outer wrapper's
# ``__wrapped__`` as the class hands it out): sm_tracing, on before or after, must still be
# reached by every call while it says it instruments.
_LEFT_BOUND = {
    "xray, upstream on and off, then ours": (
        ["+xray", "+upstream", "-upstream", "+sm", "call", "-sm", "call", "+sm", "call"],
        ("xray",),
    ),
    "ours, xray, ddtrace on and off, ours off and on": (
        ["+sm", "+xray", "+ddtrace", "-ddtrace", "call", "-sm", "call", "+sm", "call"],
        ("xray", "ddtrace"),
    ),
    "upstream, ddtrace on and off, then ours": (
        ["+upstream", "+ddtrace", "-ddtrace", "+sm", "call", "-sm", "call", "+sm", "call"],
        ("ddtrace",),
    ),
    "xray, ours, upstream on and off, ours off and on": (
        ["+xray", "+sm", "+upstream", "-upstream", "call", "-sm", "call", "+sm", "call"],
        ("xray",),
    ),
}


@pytest.mark.parametrize("order", sorted(_LEFT_BOUND))
def test_beside_a_wrapper_left_bound_by_another_tools_removal(order: str) -> None:
    """When another tool's removal leaves a third tool's wrapper bound in botocore's class,
    sm_tracing, instrumented before or after, still sends the context of one CLIENT span per
    call, sync and aio, and goes quiet again on uninstrument()."""
    steps, tools = _LEFT_BOUND[order]
    needed = {"xray": "aws_xray_sdk", "ddtrace": "ddtrace"}
    for tool in tools:
        if not _installed(needed[tool]):
            pytest.skip(f"{needed[tool]} is not installed")
    check(steps, play(steps, aio=_upstream_has_aio()))


@needs_ddtrace
def test_under_ddtrace_opentelemetry_provider() -> None:
    """Under ddtrace's own OpenTelemetry provider, with ``ddtrace.auto``, a traced call sends
    its context, naming a span of the caller's trace, and logs no failure."""
    result = play_under_ddtrace_otel()
    assert result["provider"].startswith("ddtrace")
    trace_id, span_id = result["sent"]
    assert trace_id == result["caller_trace_id"]
    assert span_id in {span["span_id"] for span in result["ddtrace_spans"]}
    assert {span["trace_id"] for span in result["ddtrace_spans"]} == {trace_id}
    assert result["warnings"] == []
