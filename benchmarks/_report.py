"""What is compared with what, the targets, the ratio arithmetic and the printed table.

Targets are in instructions, the only measure stable enough to hold a limit against; the
wall-clock figures beside them are printed for information and never judged.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

MET = "MET"
NOT_MET = "NOT MET"
UNKNOWN = "n/a"


@dataclass(frozen=True)
class Target:
    """*ours* costs at most *limit* times *versus*: the cost each adds over the group's bare
    configuration when *added*, the whole cost of one unit otherwise. Without *versus*, the
    cost *ours* adds is at most *limit* instructions."""

    label: str
    ours: str
    versus: str | None
    limit: float
    added: bool = True

    @property
    def absolute(self) -> bool:
        return self.versus is None


@dataclass(frozen=True)
class Comparison:
    """A ratio printed for information, with no target: what *ours* adds over what *versus*
    adds."""

    label: str
    ours: str
    versus: str


@dataclass(frozen=True)
class Group:
    """Configurations measured side by side, and the targets between them.

    A unit is one call, request or codec operation, or one chunk of a streamed body; the cost
    of a unit is always the difference between two stretches of N1 and N2 units, divided by
    N2 - N1 (for wall-clock with N1 = 0, simply the time of N2 units over N2).
    """

    name: str
    title: str
    unit: str
    configs: tuple[str, ...]
    targets: tuple[Target, ...]
    bare: str | None = None
    counts: tuple[int, int] = (200, 1000)
    quick_counts: tuple[int, int] = (20, 100)
    warmup: int = 50
    wall_counts: tuple[int, int] = (0, 2000)
    quick_wall_counts: tuple[int, int] = (0, 200)
    comparisons: tuple[Comparison, ...] = ()
    # Rough instructions per unit, to plan the runs and estimate the time left.
    weight: int = 1
    # Callgrind samples per configuration, each from a process with a different history; the
    # median is kept. Where the tracing adds well under 1% to a unit, the few hundred
    # instructions a unit's cost moves with the interpreter's caches and dict layouts matter.
    samples: int = 1
    quick_samples: int = 1

    def sampled(self, quick: bool) -> int:
        """Callgrind samples per configuration."""
        return self.quick_samples if quick else self.samples

    def sizes(self, quick: bool, wall: bool) -> tuple[int, int]:
        """N1 and N2 for a callgrind or a wall-clock run."""
        if wall:
            return self.quick_wall_counts if quick else self.wall_counts
        return self.quick_counts if quick else self.counts


LABELS = {
    "client-bare": "bare botocore call",
    "client-floor": "floor: SDK span + inject",
    "client-floor-attributes": "floor + ours' 9 span attributes",
    "client-floor-header": "floor + attributes, context in header",
    "client-upstream": "upstream: otel botocore",
    "client-ours": "ours: sm_tracing.instrument",
    "client-ours-metrics": "ours + MeterProvider",
    "client-ours-record": "ours + one SDK Histogram.record",
    "client-openllmetry": "peer: OpenLLMetry sagemaker",
    "client-xray": "peer: X-Ray SDK botocore patch",
    "echo-bare": "bare botocore call",
    "echo-floor": "floor + attributes, echo split",
    "echo-floor-header": "floor + attributes, echo, header",
    "echo-upstream": "upstream: otel botocore",
    "echo-ours": "ours: sm_tracing.instrument",
    "stream-bare": "bare botocore stream",
    "stream-ours": "ours: sm_tracing.instrument",
    "stream-ours-metrics": "ours + MeterProvider",
    "wsgi-bare": "bare WSGI app",
    "wsgi-floor": "floor: extract + SDK span",
    "wsgi-floor-attributes": "floor + ours' 3 span attributes",
    "wsgi-upstream": "upstream: otel wsgi",
    "wsgi-ours": "ours: sm_tracing.WSGIMiddleware",
    "wsgi-ours-metrics": "ours + MeterProvider",
    "wsgi-ours-record": "ours + one SDK Histogram.record",
    "asgi-bare": "bare ASGI app",
    "asgi-floor": "floor: extract + SDK span",
    "asgi-floor-attributes": "floor + ours' 3 span attributes",
    "asgi-upstream": "upstream: otel asgi",
    "asgi-ours": "ours: sm_tracing.ASGIMiddleware",
    "asgi-ours-metrics": "ours + MeterProvider",
    "asgi-ours-record": "ours + one SDK Histogram.record",
    "asgi-stream-bare": "bare ASGI app",
    "asgi-stream-floor": "floor: extract + SDK span",
    "asgi-stream-ours": "ours: sm_tracing.ASGIMiddleware",
    "inject-bare": "propagate.inject(dict)",
    "inject-ours": "sm_tracing.inject_context",
    "extract-bare": "propagate.extract(dict)",
    "extract-ours": "sm_tracing.extract_context",
}

# Recording metrics adds at most this much to what ours adds, the SDK's own charge for the
# measurement (one Histogram.record with the same attributes) counted in, as the SDK's charge
# for a span attribute is in the floors'.
METRICS_LIMIT = 1.15
# Why the plain ratio of metrics is information: the SDK's record alone is most of it.
_METRICS_NOTE = "ours + metrics / ours"


def _container_group(kind: str, title: str, weight: int) -> Group:
    """A middleware's group (``wsgi``, ``asgi``): the same configurations and targets."""
    return Group(
        name=kind,
        title=title,
        unit="request",
        bare=f"{kind}-bare",
        configs=tuple(
            f"{kind}-{config}"
            for config in (
                "bare",
                "floor",
                "floor-attributes",
                "upstream",
                "ours",
                "ours-metrics",
                "ours-record",
            )
        ),
        targets=(
            Target("ours / floor + attributes", f"{kind}-ours", f"{kind}-floor-attributes", 1.2),
            Target("ours / upstream", f"{kind}-ours", f"{kind}-upstream", 0.5),
            Target(
                "ours + metrics / ours + SDK record",
                f"{kind}-ours-metrics",
                f"{kind}-ours-record",
                METRICS_LIMIT,
            ),
        ),
        comparisons=(
            # The floor records no attributes; ours records three, and the SDK charges for each.
            Comparison("ours / floor", f"{kind}-ours", f"{kind}-floor"),
            Comparison("floor + attributes / floor", f"{kind}-floor-attributes", f"{kind}-floor"),
            Comparison(_METRICS_NOTE, f"{kind}-ours-metrics", f"{kind}-ours"),
            Comparison("ours + SDK record / ours", f"{kind}-ours-record", f"{kind}-ours"),
        ),
        counts=(200, 1000),
        quick_counts=(10, 50),
        wall_counts=(0, 1500),
        quick_wall_counts=(0, 300),
        weight=weight,
    )


GROUPS = (
    Group(
        name="client",
        title="Client: one InvokeEndpoint call, signed, answered by a canned response",
        unit="call",
        bare="client-bare",
        configs=(
            "client-bare",
            "client-floor",
            "client-floor-attributes",
            "client-floor-header",
            "client-upstream",
            "client-ours",
            "client-ours-metrics",
            "client-ours-record",
            # What a user would pick instead, each with its defaults.
            "client-openllmetry",
            "client-xray",
        ),
        targets=(
            Target("ours / floor + attributes", "client-ours", "client-floor-attributes", 1.1),
            Target("ours / upstream", "client-ours", "client-upstream", 0.7),
            Target(
                "ours + metrics / ours + SDK record",
                "client-ours-metrics",
                "client-ours-record",
                METRICS_LIMIT,
            ),
        ),
        comparisons=(
            # The floor records no attributes; the span ours makes has nine, and the SDK
            # charges for each. These two separate that cost from ours.
            Comparison("ours / floor", "client-ours", "client-floor"),
            Comparison("floor + attributes / floor", "client-floor-attributes", "client-floor"),
            # Ours must also put the context on the wire, in the request's header before it is
            # signed; the floors above only inject it into a dict. This floor does that whole
            # job in the plainest code: ours over it is what ours' own code adds, and it over
            # upstream is the least any code doing the job can add.
            Comparison("ours / floor + header", "client-ours", "client-floor-header"),
            Comparison(
                "floor + header / without header", "client-floor-header", "client-floor-attributes"
            ),
            Comparison("floor + header / upstream", "client-floor-header", "client-upstream"),
            # Likewise the SDK charges for each measurement: these separate that from ours.
            Comparison(_METRICS_NOTE, "client-ours-metrics", "client-ours"),
            Comparison("ours + SDK record / ours", "client-ours-record", "client-ours"),
            # The peers: what ours adds over what each adds.
            Comparison("ours / OpenLLMetry", "client-ours", "client-openllmetry"),
            Comparison("ours / X-Ray SDK", "client-ours", "client-xray"),
        ),
        counts=(40, 200),
        quick_counts=(5, 15),
        warmup=20,
        wall_counts=(0, 150),
        quick_wall_counts=(0, 30),
        weight=2_600_000,
    ),
    Group(
        name="client-echo",
        title=(
            "Client, echoed: the same call answered with the container's CustomAttributes "
            "'session=abc;traceresponse=...'"
        ),
        unit="call",
        bare="echo-bare",
        configs=("echo-bare", "echo-floor", "echo-floor-header", "echo-upstream", "echo-ours"),
        targets=(
            Target("ours / floor + attributes, echo split", "echo-ours", "echo-floor", 1.1),
            Target("ours / upstream", "echo-ours", "echo-upstream", 0.8),
        ),
        comparisons=(
            # As in the client group: the floor that also sends the context in the header.
            Comparison("ours / floor + header", "echo-ours", "echo-floor-header"),
            Comparison("floor + header / without header", "echo-floor-header", "echo-floor"),
            Comparison("floor + header / upstream", "echo-floor-header", "echo-upstream"),
        ),
        counts=(40, 200),
        quick_counts=(5, 15),
        warmup=20,
        wall_counts=(0, 150),
        quick_wall_counts=(0, 30),
        weight=2_700_000,
    ),
    Group(
        name="client-stream",
        title=(
            "Client stream: InvokeEndpointWithResponseStream answered by an event stream, "
            "read to the end (a run of N chunks is one call)"
        ),
        unit="chunk",
        bare="stream-bare",
        configs=("stream-bare", "stream-ours", "stream-ours-metrics"),
        targets=(
            Target("ours per chunk", "stream-ours", None, 500),
            Target("ours / bare per chunk", "stream-ours", "stream-bare", 1.03, added=False),
            Target(
                "ours + metrics / bare per chunk",
                "stream-ours-metrics",
                "stream-bare",
                1.03,
                added=False,
            ),
        ),
        counts=(100, 1000),
        quick_counts=(100, 500),
        warmup=200,
        wall_counts=(100, 1000),
        quick_wall_counts=(100, 1000),
        weight=110_000,
        samples=5,
        quick_samples=3,
    ),
    _container_group(
        "wsgi", "Container, WSGI: one request POST /invocations, driven in-process", 400_000
    ),
    _container_group(
        "asgi", "Container, ASGI: one request POST /invocations, the app called directly", 500_000
    ),
    Group(
        name="asgi-stream",
        title=(
            "Container, ASGI streamed response: body messages with more_body, the last without "
            "(a run of N chunks is 10 responses of N/10)"
        ),
        unit="chunk",
        bare="asgi-stream-bare",
        configs=("asgi-stream-bare", "asgi-stream-floor", "asgi-stream-ours"),
        targets=(Target("ours per chunk", "asgi-stream-ours", None, 500),),
        counts=(100, 1000),
        quick_counts=(100, 1000),
        warmup=100,
        wall_counts=(100, 1000),
        quick_wall_counts=(100, 1000),
        weight=5_000,
    ),
    Group(
        name="codec",
        title="Codec: one operation, whole cost",
        unit="op",
        configs=("inject-bare", "inject-ours", "extract-bare", "extract-ours"),
        targets=(
            Target("inject: ours / bare", "inject-ours", "inject-bare", 1.5, added=False),
            Target("extract: ours / bare", "extract-ours", "extract-bare", 1.5, added=False),
        ),
        counts=(1000, 5000),
        quick_counts=(100, 500),
        warmup=200,
        wall_counts=(0, 10000),
        quick_wall_counts=(0, 2000),
        weight=30_000,
    ),
)
GROUP_NAMES = (*(group.name for group in GROUPS), "memory")

MEMORY_CALLS = 100_000
MEMORY_QUICK_CALLS = 1_000
MEMORY_WARMUP = 2_000
MEMORY_QUICK_WARMUP = 200
MEMORY_LIMIT_MB = 5.0


@dataclass
class Results:
    """Per-unit costs by configuration; a configuration missing was not measured."""

    instructions: dict[str, float] = field(default_factory=dict)
    wall_seconds: dict[str, float] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)


def median(values: Sequence[float]) -> float:
    """The median of *values*."""
    return statistics.median(values)


def cost(config: str, costs: Mapping[str, float], bare: str | None, added: bool) -> float:
    """The cost of *config*: over *bare* when *added*, whole otherwise; KeyError when a
    configuration needed was not measured."""
    value = costs[config]
    if added:
        if bare is None:
            raise ValueError("an added cost needs a bare configuration")
        value -= costs[bare]
    return value


def ratio(numerator: float, denominator: float) -> float | None:
    """*numerator* / *denominator*, or None when the denominator is not positive (a reference
    that adds nothing cannot be compared against)."""
    if denominator <= 0:
        return None
    return numerator / denominator


def verdict(value: float | None, limit: float) -> str:
    """MET when *value* is at most *limit*, NOT MET above, n/a when there is no value."""
    if value is None:
        return UNKNOWN
    return MET if value <= limit else NOT_MET


def value_of(target: Target, costs: Mapping[str, float], bare: str | None) -> float | None:
    """What *target* is about: the ratio, or for an absolute target the cost added; None when
    a configuration needed was not measured or the reference adds nothing."""
    try:
        ours = cost(target.ours, costs, bare, target.added)
        if target.versus is None:
            return ours
        versus = cost(target.versus, costs, bare, target.added)
    except KeyError:
        return None
    return ratio(ours, versus)


def evaluate(
    target: Target, costs: Mapping[str, float], bare: str | None
) -> tuple[float | None, str]:
    """The value *target* is about and its verdict, from per-unit *costs*."""
    value = value_of(target, costs, bare)
    return value, verdict(value, target.limit)


def margin(target: Target, costs: Mapping[str, float], bare: str | None) -> float | None:
    """How far *target*'s limit is from being reached, in the unit of *costs*: positive is
    room to spare, negative is what must go to meet it; None when not measured."""
    try:
        ours = cost(target.ours, costs, bare, target.added)
        if target.versus is None:
            return target.limit - ours
        versus = cost(target.versus, costs, bare, target.added)
    except KeyError:
        return None
    return target.limit * versus - ours


def memory_verdict(before_kib: int, after_kib: int) -> tuple[float, str]:
    """Growth in MB (10^6 bytes) from *before_kib* to *after_kib*, and MET within the limit."""
    growth = (after_kib - before_kib) * 1024 / 1e6
    return growth, MET if growth <= MEMORY_LIMIT_MB else NOT_MET


def _instr(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+,.0f}" if signed else f"{value:,.0f}"


def _micros(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value * 1e6:+,.2f}" if signed else f"{value * 1e6:,.2f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _shown(target: Target, value: float | None, wall: bool = False) -> str:
    """*value* as the target reads it: a ratio (to three places where two would read as the
    limit itself), or an added cost in instructions or us."""
    if value is not None and not target.absolute and f"{value:.2f}" == f"{target.limit:.2f}":
        return f"{value:.3f}"
    if not target.absolute or value is None:
        return _ratio(value)
    if wall:
        return _micros(value, signed=True) + " us"
    return _instr(value, signed=True) + " instr"


def _limit(target: Target) -> str:
    if target.absolute:
        return f"<= {target.limit:+,.0f}"
    return f"<= {target.limit:.2f}"


def _sizes(
    group: Group,
    counts: tuple[int, int] | None,
    wall_counts: tuple[int, int] | None,
    samples: int,
) -> str:
    measured = []
    if counts is not None:
        measured.append(
            f"callgrind N1={counts[0]:,} N2={counts[1]:,} after {group.warmup:,} warm-up"
            + (f", median of {samples} samples" if samples > 1 else "")
        )
    if wall_counts is not None:
        n_1, n_2 = wall_counts
        stretch = f"N2={n_2:,}" if not n_1 else f"N1={n_1:,} N2={n_2:,}"
        measured.append(f"wall-clock median of repeats of {stretch}")
    return f"  per {group.unit}; " + ("; ".join(measured) or "nothing measured")


def group_table(
    group: Group,
    results: Results,
    counts: tuple[int, int] | None,
    wall_counts: tuple[int, int] | None,
    skipped: Mapping[str, str] | None = None,
    *,
    samples: int = 1,
) -> str:
    """The rows of *group*: costs, costs added over bare, targets and verdicts.

    Verdicts come from instructions only; the wall-clock ratio beside each is information.
    *counts* and *wall_counts* are the stretches measured, None when that measure was not
    taken; *skipped* gives why a configuration was not run, where that is expected.
    """
    instr, wall = results.instructions, results.wall_seconds
    skipped = skipped or {}
    show_wall = wall_counts is not None
    lines = [group.title, _sizes(group, counts, wall_counts, samples)]
    head = f"  {'configuration':<40}{'instr':>13}{'added':>12}"
    if show_wall:
        head += f"{'wall us':>12}{'added':>10}"
    lines += [head, "  " + "-" * (len(head) - 2)]
    bare = group.bare
    for config in group.configs:
        problem = results.problems.get(config) or skipped.get(config)
        if problem is not None:
            lines.append(f"  {LABELS[config]:<40}  {problem}")
            continue
        added_i = added_w = None
        if bare is not None and config != bare:
            if config in instr and bare in instr:
                added_i = instr[config] - instr[bare]
            if config in wall and bare in wall:
                added_w = wall[config] - wall[bare]
        line = (
            f"  {LABELS[config]:<40}{_instr(instr.get(config)):>13}"
            f"{_instr(added_i, signed=True):>12}"
        )
        if show_wall:
            line += f"{_micros(wall.get(config)):>12}{_micros(added_w, signed=True):>10}"
        lines.append(line)
    heading = f"  {'target, in instructions':<40}{'value':>13}   {'limit':<10}verdict"
    lines.append(heading + " " * 29 + "wall-clock, information" if show_wall else heading)
    for target in group.targets:
        what = f"{target.label}, {'added' if target.added else 'whole'}"
        value, result = evaluate(target, instr, bare)
        why = skipped.get(target.ours) or skipped.get(target.versus or "")
        if value is None and why is not None:
            result = f"{UNKNOWN}: {why.split(':')[0]}"
        elif value is None and not instr:
            result = f"{UNKNOWN}: no instruction counts"
        else:
            left = margin(target, instr, bare)
            if left is not None and left >= 0:
                result += f" ({left:,.0f} instr to spare)"
            elif left is not None:
                result += f" (over by {-left:,.0f} instr)"
        line = f"  {what:<40}{_shown(target, value):>13}   {_limit(target):<10}"
        if show_wall:
            line += f"{result:<36}{_shown(target, value_of(target, wall, bare), wall=True)}"
        else:
            line += result
        lines.append(line)
    for comparison in group.comparisons:
        as_target = Target(comparison.label, comparison.ours, comparison.versus, 0.0)
        line = (
            f"  {comparison.label + ', added':<40}{_ratio(value_of(as_target, instr, bare)):>13}"
            f"   {'none':<10}information"
        )
        if show_wall:
            line += " " * 25 + _ratio(value_of(as_target, wall, bare))
        lines.append(line)
    return "\n".join(lines)


def memory_table(
    calls: int, warmup: int, before_kib: int | None, after_kib: int | None, problem: str
) -> str:
    """The memory row: RSS after warm-up and after *calls* instrumented calls."""
    title = (
        f"Memory: {calls:,} instrumented client calls (ours), RSS after {warmup:,} "
        "warm-up calls vs after"
    )
    if problem or before_kib is None or after_kib is None:
        return f"{title}\n  {problem or 'not measured'}"
    growth, result = memory_verdict(before_kib, after_kib)
    return (
        f"{title}\n  RSS {before_kib:,} KiB -> {after_kib:,} KiB: {growth:+.2f} MB"
        f"   target <= {MEMORY_LIMIT_MB:.0f} MB   {result}"
    )
