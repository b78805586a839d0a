"""Trace context in and out of CustomAttributes, written and read by the configured propagator."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, MutableSequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagate import get_global_textmap
from opentelemetry.propagators.textmap import Getter, Setter, TextMapPropagator
from opentelemetry.trace import SpanContext, TraceFlags

from sm_tracing import _codec

_logger = logging.getLogger(__name__)

TRACERESPONSE = "traceresponse"
"""The key the container side echoes its span under, in the response CustomAttributes."""

# Always ours, whatever the propagator: nobody else writes these keys into CustomAttributes.
_W3C_KEYS = frozenset({"traceparent", "tracestate", "baggage", TRACERESPONSE})
# Over budget these go first, in this order; the trace parent itself is never dropped.
DROP_ORDER = ("baggage", "tracestate")
_ECHO_KEYS = frozenset({TRACERESPONSE})


class _PairSetter(Setter[MutableSequence[tuple[str, str]]]):
    def set(self, carrier: MutableSequence[tuple[str, str]], key: str, value: str) -> None:
        carrier.append((key.lower(), _codec.encode_value(value)))


class _PairGetter(Getter[Mapping[str, str]]):
    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        value = carrier.get(key.lower())
        return None if value is None else [value]

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return list(carrier)


_TRACERESPONSE_RE = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_SETTER = _PairSetter()
_GETTER = _PairGetter()
_keys_cache: tuple[TextMapPropagator | None, frozenset[str]] = (None, _W3C_KEYS)


def our_keys(propagator: TextMapPropagator | None = None) -> frozenset[str]:
    """Lower-cased keys this library owns in CustomAttributes under *propagator*."""
    global _keys_cache  # noqa: PLW0603 - a one-entry cache, swapped whole, so no lock is needed
    if propagator is None:
        propagator = get_global_textmap()
    cached_for, keys = _keys_cache
    if cached_for is propagator:
        return keys
    try:
        fields = {field.lower() for field in propagator.fields}
    except Exception:
        _logger.warning("propagator %r failed to list its fields", propagator, exc_info=True)
        fields = set()
    keys = _W3C_KEYS | fields
    _keys_cache = (propagator, keys)
    return keys


def merge_context(
    custom_attributes: str | None,
    context: Context | None = None,
    *,
    opaque: bool = False,
) -> tuple[str | None, str | None]:
    """The value to send with *context* merged in, or ``(None, reason)`` to send as it was."""
    propagator = get_global_textmap()
    pairs: list[tuple[str, str]] = []
    try:
        propagator.inject(pairs, context=context, setter=_SETTER)
    except Exception:
        _logger.warning(
            "propagator %r failed to inject; sending as it was", propagator, exc_info=True
        )
        return None, "the propagator failed"
    if not pairs:
        return None, "no trace context to send"
    return _codec.merge(custom_attributes, pairs, our_keys(propagator), DROP_ORDER, opaque=opaque)


def inject_context(
    custom_attributes: str | None = None, context: Context | None = None
) -> str | None:
    """The CustomAttributes to send: *custom_attributes* with the current (or given) trace
    context merged in by the configured propagator.

    The caller's pairs keep their order and separator, an earlier ``traceparent`` is replaced,
    and the result stays within 1024 characters (``baggage``, then ``tracestate``, are dropped
    first). A value that is not a ``key=value`` list, is invalid, or has no room is returned
    unchanged, as it is when there is no trace context. Never raises.
    """
    try:
        merged, reason = merge_context(custom_attributes, context)
    except Exception:  # a defect of ours must not cost the caller their value
        _logger.warning("could not merge the trace context", exc_info=True)
        return custom_attributes
    if merged is None:
        _logger.debug("CustomAttributes left as they were: %s", reason)
        return custom_attributes
    return merged


def extract_context(custom_attributes: str | None, context: Context | None = None) -> Context:
    """The trace context carried in *custom_attributes*, read by the configured propagator.

    Never raises: a missing, malformed, oversized or non-ASCII value gives *context* (an empty
    context by default), that is, no parent.
    """
    base = Context() if context is None else context
    if not custom_attributes:
        return base
    try:
        if not _codec.is_valid(custom_attributes):
            _logger.debug("CustomAttributes ignored: %s", _codec.SKIP_INVALID)
            return base
        propagator = get_global_textmap()
        found = _codec.find(custom_attributes, our_keys(propagator))
        if not found:
            return base
        return propagator.extract(found, context=base, getter=_GETTER)
    except Exception:
        _logger.warning("could not read the trace context from CustomAttributes", exc_info=True)
        return base


def strip_context(custom_attributes: str | None) -> str | None:
    """*custom_attributes* without the keys this library adds, the rest in its original order
    and separator. ``""`` when nothing of the caller's is left; None for None. Never raises."""
    if custom_attributes is None:
        return None
    try:
        return _codec.strip(custom_attributes, our_keys())
    except Exception:
        _logger.warning("could not strip CustomAttributes", exc_info=True)
        return custom_attributes


def format_traceresponse(span_context: SpanContext) -> str:
    """The W3C ``traceresponse`` value of *span_context*."""
    ctx = span_context
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"


def parse_traceresponse(value: str) -> SpanContext | None:
    """The span context a ``traceresponse`` value names, or None when it is malformed."""
    match = _TRACERESPONSE_RE.fullmatch(value.strip())
    if match is None:
        return None
    trace_id, span_id = int(match.group(1), 16), int(match.group(2), 16)
    if not trace_id or not span_id:
        return None
    flags = TraceFlags(int(match.group(3), 16))
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=flags)


def echo_value(custom_attributes: str | None, span: trace.Span) -> str | None:
    """*custom_attributes* with *span* echoed as ``traceresponse``, or None where it can't be."""
    span_context = span.get_span_context()
    if not span_context.is_valid:
        return None
    pair = ((TRACERESPONSE, format_traceresponse(span_context)),)
    merged, reason = _codec.merge(custom_attributes, pair, _ECHO_KEYS)
    if merged is None:
        _logger.debug("no trace echo in the response CustomAttributes: %s", reason)
    return merged
