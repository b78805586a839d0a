"""A real OTLP/HTTP receiver on loopback for tests: exporters post protobuf
``ExportTraceServiceRequest`` bodies to ``receiver.traces_url`` and tests read back the decoded
spans (``receiver.spans``, ``receiver.wait_for(predicate)``).

It is the receiver ``sm-tracing demo`` collects its spans with, so both are one implementation.
"""

from __future__ import annotations

from collections.abc import Callable

from sm_tracing._demo.receiver import OTLPReceiver, ReceivedSpan, decode

__all__ = ["OTLPReceiver", "ReceivedSpan", "decode", "named", "trace_count"]


def named(name: str) -> Callable[[list[ReceivedSpan]], bool]:
    """A ``wait_for`` predicate: a span called *name* has arrived."""
    return lambda spans: any(span.name == name for span in spans)


def trace_count(spans: list[ReceivedSpan]) -> int:
    """How many distinct traces *spans* belong to."""
    return len({span.trace_id for span in spans})
