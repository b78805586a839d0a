"""The response stream of InvokeEndpointWithResponseStream, proxied so its span lasts as long
as the caller reads it.

The caller gets an object that behaves like botocore's (or aiobotocore's) event stream:
``isinstance``, attributes, ``close()`` and iteration all reach the real stream. The span ends
exactly once, at whichever comes first: the last event, an error while reading, ``close()``,
or the proxy being garbage-collected.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import wrapt
from opentelemetry.trace import Span

from sm_tracing._container import record_error

_logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    _Proxy = wrapt.ObjectProxy[Any]
else:  # wrapt's proxy is generic only to type checkers
    _Proxy = wrapt.ObjectProxy

CHUNKS = "aws.sagemaker.stream.chunk_count"
OUTCOME = "aws.sagemaker.stream.outcome"
FIRST_CHUNK = "first_chunk"


class _StreamSpan:
    """The span of one stream and what was read of it; never refers back to the proxy, so the
    proxy's finalizer can hold it without keeping the proxy alive."""

    __slots__ = ("chunks", "done", "span")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.chunks = 0
        self.done = False

    def count(self) -> None:
        if not self.chunks:
            self.span.add_event(FIRST_CHUNK)
        self.chunks += 1

    def finish(self, outcome: str, error: BaseException | None = None) -> None:
        """End the span; later calls do nothing."""
        if self.done:
            return
        self.done = True
        span = self.span
        try:
            span.set_attributes({CHUNKS: self.chunks, OUTCOME: outcome})
            if error is not None:
                record_error(span, error)
        except Exception:
            _logger.debug("could not record the end of a response stream", exc_info=True)
        span.end()


class TracedEventStream(_Proxy):
    """botocore's event stream, ending *span* when the caller is done with it."""

    def __init__(self, wrapped: Any, span: Span) -> None:
        super().__init__(wrapped)
        state = _StreamSpan(span)
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
            for event in self.__wrapped__:
                state.count()
                yield event
        except GeneratorExit:
            # The caller stopped early (``break``); they may read on later, so only close(),
            # the end of the stream or the proxy's collection ends the span.
            raise
        except BaseException as error:
            self._self_finish("error", error)
            raise
        self._self_finish("complete")

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
            async for event in self.__wrapped__:
                state.count()
                yield event
        except GeneratorExit:
            raise
        except BaseException as error:
            self._self_finish("error", error)
            raise
        self._self_finish("complete")
