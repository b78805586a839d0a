"""Traces as text: each span on a line, under its parent, with its service, its duration and a
small waterfall bar placed on the trace's time line."""

from __future__ import annotations

from collections.abc import Sequence

from sm_tracing._demo.receiver import ReceivedSpan

_UNICODE = {"bar": "█", "last": "└─ ", "branch": "├─ ", "pipe": "│  "}
_ASCII = {"bar": "#", "last": "`- ", "branch": "|- ", "pipe": "|  "}


def by_trace(spans: Sequence[ReceivedSpan]) -> dict[str, list[ReceivedSpan]]:
    """*spans* grouped by trace id, each group by start time, the groups in order of start."""
    groups: dict[str, list[ReceivedSpan]] = {}
    for span in sorted(spans, key=lambda s: s.start_ns):
        groups.setdefault(span.trace_id, []).append(span)
    return groups


def render_trace(
    spans: Sequence[ReceivedSpan],
    *,
    title: str,
    width: int = 20,
    unicode: bool = True,
    indent: str = "  ",
) -> list[str]:
    """The lines of one trace: *title*, then one line per span, children under parents.

    A span whose parent is not among *spans* (the trace's root, or a span whose parent was
    never received) starts a tree of its own; a span with links says what it is linked to.
    """
    glyphs = _UNICODE if unicode else _ASCII
    if not spans:
        return [title]
    ids = {span.span_id for span in spans}
    children: dict[str | None, list[ReceivedSpan]] = {}
    for span in sorted(spans, key=lambda s: (s.start_ns, s.end_ns)):
        parent = span.parent_id if span.parent_id in ids else None
        children.setdefault(parent, []).append(span)
    start = min(span.start_ns for span in spans)
    total = max(span.end_ns for span in spans) - start or 1

    rows: list[tuple[str, ReceivedSpan]] = []

    def walk(span: ReceivedSpan, prefix: str, branch: str) -> None:
        rows.append((prefix + branch, span))
        kids = children.get(span.span_id, [])
        below = prefix + (
            "" if not branch else ("   " if branch == glyphs["last"] else glyphs["pipe"])
        )
        for index, kid in enumerate(kids):
            walk(kid, below, glyphs["last"] if index == len(kids) - 1 else glyphs["branch"])

    for root in children.get(None, []):
        walk(root, "", "")

    name_width = max(len(prefix) + len(span.name) for prefix, span in rows)
    service_width = max(len(span.service) for _, span in rows)
    lines = [title]
    for prefix, span in rows:
        left = round((span.start_ns - start) / total * width)
        right = max(left + 1, round((span.end_ns - start) / total * width))
        right = min(right, width)
        left = min(left, right - 1)
        bar = " " * left + glyphs["bar"] * (right - left) + " " * (width - right)
        line = (
            f"{indent}{(prefix + span.name).ljust(name_width)}  {span.kind:<8} "
            f"{span.service.ljust(service_width)}  {span.duration_ms:8.1f} ms  |{bar}|"
        )
        if span.status == "error":
            line += "  error"
        for trace_id, span_id in span.links:
            line += f"  (linked to span {span_id} of trace {trace_id[:8]})"
        lines.append(line)
    return lines
