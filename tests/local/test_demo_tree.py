"""The text trees the demo prints: nesting, order, durations, bars, links."""

from __future__ import annotations

import re

import pytest

from sm_tracing._demo.receiver import ReceivedSpan
from sm_tracing._demo.tree import by_trace, render_trace

T1 = "1" * 32
T2 = "2" * 32
MS = 1_000_000


def span(
    name: str,
    span_id: str,
    parent: str | None,
    start_ms: int,
    end_ms: int,
    *,
    trace_id: str = T1,
    service: str = "svc",
    kind: str = "internal",
    links: tuple[tuple[str, str], ...] = (),
    status: str = "unset",
) -> ReceivedSpan:
    """A received span with times in milliseconds."""
    return ReceivedSpan(
        trace_id=trace_id,
        span_id=span_id * 16,
        parent_id=None if parent is None else parent * 16,
        name=name,
        kind=kind,
        start_ns=start_ms * MS,
        end_ns=end_ms * MS,
        service=service,
        scope="s",
        links=links,
        status=status,
    )


def labels(lines: list[str]) -> list[str]:
    """The tree column (branches and names) of rendered span lines."""
    return [re.match(r"  (.*?\S)  ", line).group(1) for line in lines]  # type: ignore[union-attr]


CLIENT = span("SageMaker Runtime.InvokeEndpoint", "a", None, 0, 20, kind="client", service="caller")
SERVER = span("POST /invocations", "b", "a", 5, 15, kind="server", service="model")
PREDICT = span("predict", "c", "b", 6, 10, service="model")
POST = span("postprocess", "d", "b", 11, 14, service="model")


def test_nesting_and_order() -> None:
    """Children sit under their parent in start order; the last child gets the closing
    branch, and the glyph column under a non-last child continues."""
    lines = render_trace([POST, PREDICT, SERVER, CLIENT], title="t", width=20)
    assert lines[0] == "t"
    assert labels(lines[1:]) == [
        "SageMaker Runtime.InvokeEndpoint",
        "└─ POST /invocations",
        "   ├─ predict",
        "   └─ postprocess",
    ]


def test_columns_and_durations() -> None:
    """Each line shows the kind, the service and the duration in milliseconds."""
    lines = render_trace([CLIENT, SERVER], title="t")
    assert "client" in lines[1] and "caller" in lines[1] and "20.0 ms" in lines[1]
    assert "server" in lines[2] and "model" in lines[2] and "10.0 ms" in lines[2]


@pytest.mark.parametrize(
    ("spans", "bars"),
    [
        ([CLIENT, SERVER], ["|####################|", "|     ##########     |"]),
        # A span of no length still shows one mark, inside the frame.
        (
            [CLIENT, span("instant", "e", "a", 20, 20)],
            ["|####################|", "|                   #|"],
        ),
    ],
)
def test_waterfall_bars(spans: list[ReceivedSpan], bars: list[str]) -> None:
    """Bars are placed on the trace's own time line, at least one mark wide."""
    lines = render_trace(spans, title="t", width=20, unicode=False)
    assert [line[line.index("|") :] for line in lines[1:]] == bars


def test_ascii_glyphs() -> None:
    """Without unicode, branches and bars use plain ASCII."""
    text = "\n".join(render_trace([CLIENT, SERVER, PREDICT, POST], title="t", unicode=False))
    assert text.isascii()
    assert "`- POST /invocations" in text and "|- predict" in text


def test_orphan_becomes_a_root() -> None:
    """A span whose parent never arrived is shown as a root rather than dropped."""
    lines = render_trace([CLIENT, span("orphan", "f", "9", 1, 2)], title="t")
    assert labels(lines[1:]) == [
        "SageMaker Runtime.InvokeEndpoint",
        "orphan",
    ]


def test_links_and_errors_are_shown() -> None:
    """A linked span names what it is linked to; a failed span says so."""
    linked = span("POST /invocations", "e", None, 0, 5, trace_id=T2, links=((T1, "a" * 16),))
    failed = span("predict", "f", "e", 1, 2, trace_id=T2, status="error")
    lines = render_trace([linked, failed], title="t")
    assert f"(linked to span {'a' * 16} of trace {T1[:8]})" in lines[1]
    assert lines[2].endswith("error")


def test_empty_trace_is_its_title() -> None:
    """No spans: only the title."""
    assert render_trace([], title="nothing") == ["nothing"]


def test_by_trace_groups_in_start_order() -> None:
    """Spans are grouped by trace, groups and members in order of start."""
    other = span("later", "e", None, 30, 40, trace_id=T2)
    groups = by_trace([other, SERVER, CLIENT])
    assert list(groups) == [T1, T2]
    assert [s.name for s in groups[T1]] == [CLIENT.name, SERVER.name]
