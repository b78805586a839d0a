"""Trace context in and out of CustomAttributes, written and read by the configured propagator.

The codec decides what is ours in a value; this module says which keys those are (every field
the propagator writes, and the per-entry baggage keys of propagators such as Jaeger's
``uberctx-*`` and OT's ``ot-baggage-*``) and turns our pairs into a context and back.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, MutableSequence
from functools import lru_cache

from opentelemetry import baggage, trace
from opentelemetry.context import Context
from opentelemetry.propagate import get_global_textmap
from opentelemetry.propagators.textmap import Getter, Setter, TextMapPropagator
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from sm_tracing import _codec, _querystring
from sm_tracing._codec import CONTAINER_TIME, TRACERESPONSE
from sm_tracing._guard import guard

_logger = logging.getLogger(__name__)

__all__ = ["CONTAINER_TIME", "TRACERESPONSE"]

# Always ours, whatever the propagator: nobody else writes these keys into CustomAttributes.
_W3C_KEYS = frozenset({"traceparent", "tracestate", "baggage", TRACERESPONSE})
# Over budget these go first, in this order; the trace parent itself is never dropped.
DROP_ORDER = ("baggage", "tracestate")
_NOT_REQUIRED = frozenset({*DROP_ORDER, TRACERESPONSE})
_ECHO_DROP = (CONTAINER_TIME,)
# A baggage entry written while listing a propagator's keys: the keys it comes out under
# give the prefixes of per-entry baggage keys.
_PROBE = "smtracingprobe"


class _PairSetter(Setter[MutableSequence[tuple[str, str]]]):
    def set(self, carrier: MutableSequence[tuple[str, str]], key: str, value: str) -> None:
        carrier.append((key.lower(), _codec.encode_value(value)))


class _PairGetter(Getter[Mapping[str, str]]):
    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        value = carrier.get(key.lower())  # our pairs are keyed in lower case
        return None if value is None else [value]

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return list(carrier)


_SETTER = _PairSetter()
GETTER = _PairGetter()
"""Reads our pairs, keyed in lower case, for a propagator's extract."""
_DEFAULT_KEYS = _codec.Keys(_W3C_KEYS, required=("traceparent",))
# The keys of the propagator last asked about: listing them injects a probe context.
_keys_cache: tuple[TextMapPropagator | None, _codec.Keys] = (None, _DEFAULT_KEYS)


def our_keys(propagator: TextMapPropagator | None = None) -> _codec.Keys:
    """The keys this library owns in CustomAttributes under *propagator* (the global one)."""
    global _keys_cache  # noqa: PLW0603 - a one-entry cache, swapped whole, so no lock is needed
    if propagator is None:
        propagator = get_global_textmap()
    cached_for, keys = _keys_cache
    if cached_for is not propagator:
        keys = _list_keys(propagator)
        _keys_cache = (propagator, keys)
    return keys


def _list_keys(propagator: TextMapPropagator) -> _codec.Keys:
    try:
        fields = {field.lower() for field in propagator.fields}
    except Exception:
        _logger.warning("propagator %r failed to list its fields", propagator, exc_info=True)
        fields = set()
    prefixes: set[str] = set()
    try:
        probe = SpanContext(1, 1, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
        context = trace.set_span_in_context(NonRecordingSpan(probe), Context())
        context = baggage.set_baggage(_PROBE, "1", context)
        written: list[tuple[str, str]] = []
        propagator.inject(written, context=context, setter=_SETTER)
        for key, _ in written:
            if key.endswith(_PROBE) and key != _PROBE:
                prefixes.add(key[: -len(_PROBE)])
            elif key not in fields:
                fields.add(key)
    except Exception:
        _logger.debug("could not list the baggage keys of propagator %r", propagator, exc_info=True)
    exact = _W3C_KEYS | fields
    required = (exact - _NOT_REQUIRED) or {"traceparent"}
    return _codec.Keys(exact, prefixes, required)


def carried(
    custom_attributes: str, context: Context | None, extract: bool = True, query: bool = False
) -> tuple[str, Context | None]:
    """In one pass over a request's *custom_attributes* (or, with *query*, a WebSocket query
    string): the value without our keys (see :func:`sm_tracing._codec.read`), and the context
    the configured propagator reads from our pairs on top of *context*; None when there are
    none, *extract* is false, or the propagator fails (logged: no parent, but the value is
    still the caller's)."""
    propagator = get_global_textmap()
    keys = our_keys(propagator)
    if query:
        pairs, rest = _querystring.read(custom_attributes, keys.owns)
    else:
        pairs, rest = _codec.read(custom_attributes, keys)
    if not pairs or not extract:
        return rest, None
    try:
        return rest, propagator.extract(pairs, context=context, getter=GETTER)
    except Exception:
        _logger.warning("could not read the trace context from CustomAttributes", exc_info=True)
        return rest, None


def environment_context(context: Context | None) -> Context | None:
    """The context the configured propagator reads from this process's environment
    (``TRACEPARENT``, ``TRACESTATE``, ``BAGGAGE``: each key upper-cased, ``-`` as ``_``), on top
    of *context*, as a batch transform job's containers get it; None when there is none."""
    propagator = get_global_textmap()
    carrier: dict[str, str] = {}
    for key, name in _environment_names(our_keys(propagator)):
        value = os.environ.get(name)
        if value:
            carrier[key] = value
    if not carrier:
        return None
    return propagator.extract(carrier, context=context, getter=GETTER)


@lru_cache(maxsize=8)
def _environment_names(keys: _codec.Keys) -> tuple[tuple[str, str], ...]:
    """Each of *keys* with the environment variable it is carried in (upper case, ``-`` as
    ``_``)."""
    return tuple((key, key.upper().replace("-", "_")) for key in sorted(keys.exact))


def merge_context(
    custom_attributes: str | None, context: Context | None = None, opaque: bool = False
) -> tuple[str | None, str | None]:
    """The value to send with *context* (the current one by default) merged in by the
    configured propagator, or ``(None, reason)`` to send it as it was.

    Raises what the propagator raises: the callers' guards decide what that costs.
    """
    propagator = get_global_textmap()
    keys = our_keys(propagator)
    pairs: list[tuple[str, str]] = []
    propagator.inject(pairs, context=context, setter=_SETTER)
    if not pairs:
        return None, "no trace context to send"
    return _codec.merge(custom_attributes, pairs, keys, DROP_ORDER, opaque)


def _inject(custom_attributes: str | None, context: Context | None) -> str | None:
    merged, reason = merge_context(custom_attributes, context)
    if merged is None:
        _logger.debug("CustomAttributes left as they were: %s", reason)
        return custom_attributes
    return merged


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
    return guard("merge the trace context", custom_attributes, _inject, custom_attributes, context)


def _extract_context(custom_attributes: str | None, base: Context) -> Context:
    if not custom_attributes:
        return base
    return carried(custom_attributes, base)[1] or base


def extract_context(custom_attributes: str | None, context: Context | None = None) -> Context:
    """The trace context carried in *custom_attributes*, read by the configured propagator.

    Never raises: a missing, malformed, oversized or non-ASCII value gives *context* (an empty
    context by default), that is, no parent.
    """
    base = Context() if context is None else context
    return guard(
        "read the trace context from CustomAttributes",
        base,
        _extract_context,
        custom_attributes,
        base,
    )


def _strip(custom_attributes: str | None) -> str | None:
    return None if custom_attributes is None else carried(custom_attributes, None, False)[0]


def strip_context(custom_attributes: str | None) -> str | None:
    """*custom_attributes* without the keys this library adds, the rest in its original order
    and separator. ``""`` when nothing of the caller's is left; None for None. A value that is
    not one a merge could have written into comes back as it was. Never raises."""
    return guard("strip CustomAttributes", custom_attributes, _strip, custom_attributes)


def remote_span_context(custom_attributes: str | None) -> SpanContext | None:
    """The caller's span context carried in *custom_attributes*, or None. Never raises."""
    span_context = trace.get_current_span(extract_context(custom_attributes)).get_span_context()
    return span_context if span_context.is_valid else None


def echo_value(
    custom_attributes: str | None, span_context: SpanContext, elapsed_us: int | None = None
) -> str | None:
    """The response *custom_attributes* with *span_context* echoed as ``traceresponse`` after
    what the application set, and *elapsed_us* (the container's time until the response
    started) as ``sm-container-us``, which goes first when space is short; None where not
    even the echo fits (then send the app's value as it was)."""
    if not span_context.is_valid:
        return None
    trace_id, span_id, flags = span_context.trace_id, span_context.span_id, span_context.trace_flags
    if not custom_attributes and elapsed_us is not None:
        return _codec.format_echo(trace_id, span_id, flags, elapsed_us)
    echo = [(TRACERESPONSE, _codec.format_traceresponse(trace_id, span_id, flags))]
    if elapsed_us is not None:
        echo.append((CONTAINER_TIME, str(elapsed_us)))
    if not custom_attributes:
        return ";".join(f"{key}={value}" for key, value in echo)
    merged, reason = _codec.merge(custom_attributes, echo, _codec.ECHO_KEYS, _ECHO_DROP)
    if merged is None:
        _logger.debug("no trace echo in the response CustomAttributes: %s", reason)
    return merged
