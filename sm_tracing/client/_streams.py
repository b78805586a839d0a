"""The response stream of InvokeEndpointWithResponseStream, proxied so its span lasts as long
as the caller reads it; and how a failed call or stream is recorded.

The caller gets an object that behaves like botocore's (or aiobotocore's) event stream:
``isinstance``, attributes, ``close()`` and iteration all reach the real stream. The span ends
exactly once, at whichever comes first: the last event, an error while reading, ``close()``,
or the proxy being garbage-collected.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import wrapt
from botocore.exceptions import ClientError
from opentelemetry.trace import Span
from opentelemetry.util.types import AttributeValue

from sm_tracing._attributes import (
    CHUNKS,
    ERROR_CODE,
    ORIGINAL_STATUS_CODE,
    OUTCOME,
    REQUEST_ID,
    STATUS_CODE,
    TIME_PER_CHUNK,
    TIME_TO_FIRST_CHUNK,
)
from sm_tracing._guard import guard
from sm_tracing._telemetry import end_span, record_error

_logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    Proxy = wrapt.ObjectProxy[Any]
else:  # wrapt's proxy is generic only to type checkers
    Proxy = wrapt.ObjectProxy

FIRST_CHUNK = "first_chunk"
COMPLETE = "complete"
_END: Any = object()
_now = time.time_ns

Report = Callable[["StreamTimes", "BaseException | None"], None]
"""Told, once the stream has ended, how long it took and how it ended."""


def record_failure(span: Span, error: BaseException) -> None:
    """Record a failed call, or a failure while reading its stream, on *span*.

    What is recorded says what failed and where, never what was sent or answered: the
    exception type, and for an AWS error its code, the request id, the HTTP status and the
    status the container answered SageMaker with (``OriginalStatusCode`` of a ModelError).
    The messages are left out: botocore's quote the parameter values, SageMaker's the
    container's error body.
    """
    if not span.is_recording():
        return
    if isinstance(error, ClientError):
        response = error.response
        attributes: dict[str, AttributeValue] = {}
        code = (response.get("Error") or {}).get("Code")
        if isinstance(code, str) and code:
            attributes[ERROR_CODE] = code
        metadata = response.get("ResponseMetadata")
        if metadata:
            metadata_attributes(metadata, attributes)
        original = response.get("OriginalStatusCode")
        if isinstance(original, int):
            attributes[ORIGINAL_STATUS_CODE] = original
        span.set_attributes(attributes)
    record_error(span, error)


def metadata_attributes(metadata: Mapping[str, Any], attributes: dict[str, AttributeValue]) -> None:
    """Add to *attributes* the request id and HTTP status of botocore's ``ResponseMetadata``."""
    request_id = metadata.get("RequestId")
    if request_id:
        attributes[REQUEST_ID] = request_id
    status = metadata.get("HTTPStatusCode")
    if isinstance(status, int):
        attributes[STATUS_CODE] = status


_RECORDING = "record the end of a response stream"
_FIRST = "record the first chunk of a response stream"


class StreamTimes:
    """The span of one stream and what was read of it, in nanoseconds of ``time.time_ns()``;
    never refers back to the proxy, so the proxy's finalizer can hold it without keeping the
    proxy alive."""

    __slots__ = ("chunks", "done", "ended", "first", "outcome", "report", "span", "started")

    def __init__(self, span: Span, started: int, report: Report | None) -> None:
        self.span = span
        self.started = started
        self.report = report
        self.chunks = 0
        self.first = 0
        self.ended = 0
        self.outcome = ""
        self.done = False

    @property
    def time_to_first_chunk(self) -> float | None:
        """Seconds from the request to the first chunk; None before one came."""
        return (self.first - self.started) / 1e9 if self.chunks else None

    @property
    def time_per_chunk(self) -> float | None:
        """The mean seconds between two chunks after the first, of a stream read to its end
        (whose end comes with its last chunk); None for any other."""
        if self.outcome != COMPLETE or self.chunks < 2:
            return None
        return (self.ended - self.first) / (self.chunks - 1) / 1e9

    def first_chunk(self) -> None:
        self.first = _now()
        self.chunks = 1
        guard(_FIRST, None, self.span.add_event, FIRST_CHUNK, None, self.first)

    def finish(self, outcome: str, error: BaseException | None = None) -> None:
        """End the span; later calls do nothing."""
        if self.done:
            return
        self.done = True
        self.ended = _now()
        self.outcome = outcome
        guard(_RECORDING, None, self._record, error)
        end_span(self.span)
        if self.report is not None:
            guard("measure a response stream", None, self.report, self, error)

    def _record(self, error: BaseException | None) -> None:
        attributes: dict[str, AttributeValue] = {CHUNKS: self.chunks, OUTCOME: self.outcome}
        first = self.time_to_first_chunk
        if first is not None:
            attributes[TIME_TO_FIRST_CHUNK] = first
        per_chunk = self.time_per_chunk
        if per_chunk is not None:
            attributes[TIME_PER_CHUNK] = per_chunk
        self.span.set_attributes(attributes)
        if error is not None:
            record_failure(self.span, error)


class TracedEventStream(Proxy):
    """botocore's event stream, ending *span* when the caller is done with it."""

    def __init__(
        self, wrapped: Any, span: Span, started: int, report: Report | None = None
    ) -> None:
        super().__init__(wrapped)
        state = StreamTimes(span, started, report)
        self._self_state = state
        finalizer = weakref.finalize(self, state.finish, "abandoned")
        # At interpreter exit the exporters may be gone already; an unread stream then simply
        # leaves its span unended rather than logging errors on the way out.
        finalizer.atexit = False
        self._self_finalizer = finalizer

    def _self_finish(self, outcome: str, error: BaseException | None = None) -> None:
        self._self_finalizer.detach()
        self._self_state.finish(outcome, error)

    def __iter__(self) -> Iterator[Any]:
        state = self._self_state
        try:
            events = iter(self.__wrapped__)
            if not state.chunks:
                first = next(events, _END)
                if first is not _END:
                    state.first_chunk()
                    yield first
            # The hottest loop of the library: one counter stored per event, nothing called.
            start = state.chunks + 1
            for state.chunks, event in enumerate(events, start):
                yield event
        except GeneratorExit:
            # The caller stopped early (``break``); they may read on later, so only close(),
            # the end of the stream or the proxy's collection ends the span.
            raise
        except BaseException as error:
            self._self_finish("error", error)
            raise
        self._self_finish(COMPLETE)

    def close(self) -> None:
        """Close the underlying stream and end the span."""
        try:
            self.__wrapped__.close()
        finally:
            self._self_finish("closed")


class AioTracedEventStream(TracedEventStream):
    """aiobotocore's event stream, read with ``async for``."""

    def __iter__(self) -> Iterator[Any]:
        # aiobotocore's stream refuses sync iteration; let it say so, without ending the span.
        return iter(self.__wrapped__)

    async def __aiter__(self) -> AsyncIterator[Any]:
        state = self._self_state
        try:
            events = aiter(self.__wrapped__)
            if not state.chunks:
                first = await anext(events, _END)
                if first is not _END:
                    state.first_chunk()
                    yield first
            chunks = state.chunks
            async for event in events:
                chunks += 1
                state.chunks = chunks
                yield event
        except GeneratorExit:
            raise
        except BaseException as error:
            self._self_finish("error", error)
            raise
        self._self_finish(COMPLETE)
