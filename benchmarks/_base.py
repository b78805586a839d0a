"""What every configuration shares: the unit of work, the exporter that counts, the checks.

Every configuration builds its own SDK ``TracerProvider`` with a ``SimpleSpanProcessor`` and an
exporter that only counts (so every configuration pays the same, synchronous export path and no
background thread adds noise), and checks after the run that it really did its work: a
benchmark of an instrumentation that silently did nothing would look excellent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SPAN_ID = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-01"
# What a JumpStart caller sends anyway: our pairs must be merged after it.
APP_ATTRIBUTES = "accept_eula=true"
# The request's CustomAttributes as a container receives them from an instrumented caller.
CARRIED_ATTRIBUTES = f"{APP_ATTRIBUTES};traceparent={TRACEPARENT}"
REQUEST_BODY = b'{"inputs":"hello"}'
RESPONSE_BODY = b'{"generated_text":"hi"}'
# The tokens of a streamed answer, as an LLM server sends them (server-sent events), of the
# different lengths real tokens have: so the buffers a chunk goes through are not always
# aligned the same way, which would make the cost of a chunk depend on the process's heap.
TOKENS = tuple(
    f'data:{{"token":{{"id":{2159 + index},"text":"{text}","logprob":-0.37,"special":false}}}}'
    "\n\n".encode()
    for index, text in enumerate((" the", " quick", ",", " brown", " fox", " jumps", ".", " It"))
)
TOKEN = TOKENS[0]

PROCESSOR = "SimpleSpanProcessor -> counting no-op exporter"


class ScenarioError(RuntimeError):
    """A configuration did not do what it is meant to measure."""


class CountingExporter(SpanExporter):
    """Exports nothing; counts spans (SERVER spans apart) and keeps the last of each, for the
    after-run checks."""

    def __init__(self) -> None:
        self.exported = 0
        self.servers = 0
        self.last: ReadableSpan | None = None
        self.last_server: ReadableSpan | None = None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exported += len(spans)
        for span in spans:
            if span.kind is SpanKind.SERVER:
                self.servers += 1
                self.last_server = span
        self.last = spans[-1]
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def provider() -> tuple[TracerProvider, CountingExporter]:
    """A tracer provider of its own, exporting synchronously to a counting exporter."""
    exporter = CountingExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracer_provider, exporter


class Metrics:
    """A ``MeterProvider`` read in memory, and the check that it recorded every operation."""

    def __init__(self) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])

    def counts(self) -> dict[str, int]:
        """The number of measurements each histogram holds, by metric name."""
        counts: dict[str, int] = {}
        data = self.reader.get_metrics_data()
        for resource_metrics in data.resource_metrics if data is not None else ():
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    points: Any = metric.data.data_points
                    total = sum(getattr(point, "count", 0) for point in points)
                    counts[metric.name] = counts.get(metric.name, 0) + total
        return counts

    def check(self, calls: int) -> None:
        """Some histogram recorded exactly one measurement per call."""
        counts = self.counts()
        expect(calls in counts.values(), f"no metric recorded each of {calls} calls: {counts}")

    def close(self) -> None:
        self.provider.shutdown()

    def histogram(self, name: str) -> Any:
        """A histogram of this provider with the bucket advice ours uses: one ``record`` on it
        is what the SDK itself charges for a measurement, with no code of ours."""
        from sm_tracing._attributes import DURATION_BUCKETS

        meter = self.provider.get_meter("bench.sdk")
        return meter.create_histogram(
            name, unit="s", explicit_bucket_boundaries_advisory=DURATION_BUCKETS
        )


@dataclass
class Scenario:
    """One configuration.

    ``run(n)`` does *n* units of work (a call, a request, a codec operation, or a chunk of a
    streamed body) and returns how many calls or requests that made; ``check(calls)`` raises
    ScenarioError when *calls* in all did not have the expected effect; ``close()`` undoes any
    global state.
    """

    run: Callable[[int], int]
    check: Callable[[int], None]
    close: Callable[[], None]


def per_call(op: Callable[[], object]) -> Callable[[int], int]:
    """``run`` for a configuration whose unit is one call of *op*."""

    def run(n: int) -> int:
        for _ in range(n):
            op()
        return n

    return run


def expect(condition: bool, message: str) -> None:
    """Raise ScenarioError with *message* unless *condition*."""
    if not condition:
        raise ScenarioError(message)


def nothing() -> None:
    """A ``close`` for configurations that leave no global state."""


def closing(*closers: Callable[[], None]) -> Callable[[], None]:
    """One ``close`` calling each of *closers* in turn."""

    def close() -> None:
        for closer in closers:
            closer()

    return close
