"""The client's histograms, in seconds."""

from __future__ import annotations

from opentelemetry.metrics import Histogram, Meter, MeterProvider
from opentelemetry.util.types import AttributeValue

from sm_tracing._attributes import ERROR_TYPE, GENAI_MODEL, OVERHEAD
from sm_tracing._guard import guard
from sm_tracing._telemetry import Recording, create_histogram, error_type, get_meter
from sm_tracing.client._streams import StreamTimes

# Bucket advice of the GenAI client metrics; SageMaker's own share is small.
_DURATION_BUCKETS = (
    *(0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64),
    *(1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92),
)
_FIRST_CHUNK_BUCKETS = (
    *(0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1),
    *(0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0),
)
_PER_CHUNK_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
_OVERHEAD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)


class Meters:
    """The client's histograms: each under the GenAI client metric's name for an endpoint that
    ``genai_models`` names, under ``aws.sagemaker.client.operation.*`` for any other; and
    SageMaker's own share of a call. :attr:`recording` says whether a call is worth
    measuring."""

    def __init__(self, meter: Meter, recording: Recording) -> None:
        self.recording = recording

        def pair(
            name: str, description: str, buckets: tuple[float, ...]
        ) -> tuple[Histogram, Histogram]:
            return (
                create_histogram(
                    meter, f"aws.sagemaker.client.operation.{name}", description, buckets
                ),
                create_histogram(meter, f"gen_ai.client.operation.{name}", description, buckets),
            )

        self.duration = pair(
            "duration",
            "Duration of SageMaker endpoint invocations, a stream's until it ends.",
            _DURATION_BUCKETS,
        )
        self.first_chunk = pair(
            "time_to_first_chunk",
            "Time from a streamed invocation's request to its first chunk.",
            _FIRST_CHUNK_BUCKETS,
        )
        self.per_chunk = pair(
            "time_per_output_chunk",
            "Mean time between the chunks after the first, of a stream read to its end.",
            _PER_CHUNK_BUCKETS,
        )
        self.overhead = create_histogram(
            meter,
            OVERHEAD,
            "SageMaker's share of an invocation: the time to its response less the container's.",
            _OVERHEAD_BUCKETS,
        )

    def measure(
        self, labels: dict[str, AttributeValue], seconds: float, error: BaseException | None
    ) -> None:
        """Record a call that ended after *seconds*."""
        if error is not None:
            labels = {**labels, ERROR_TYPE: error_type(error)}
        self.duration[GENAI_MODEL in labels].record(seconds, labels)

    def measure_stream(
        self, labels: dict[str, AttributeValue], times: StreamTimes, error: BaseException | None
    ) -> None:
        """Record a stream that ended, by how it ended."""
        self.measure(labels, (times.ended - times.started) / 1e9, error)
        genai = GENAI_MODEL in labels
        first = times.time_to_first_chunk
        if first is not None:
            self.first_chunk[genai].record(first, labels)
        per_chunk = times.time_per_chunk
        if per_chunk is not None:
            self.per_chunk[genai].record(per_chunk, labels)


def meters(meter_provider: MeterProvider | None) -> Meters | None:
    """The client's histograms from *meter_provider* (the global one by default); None, logged,
    when they can't be made."""
    return guard("create the client's metrics; not measuring", None, _make, meter_provider)


def _make(meter_provider: MeterProvider | None) -> Meters:
    return Meters(get_meter(meter_provider), Recording(meter_provider))
