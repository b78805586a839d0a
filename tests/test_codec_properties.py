"""Properties of inject, extract and strip over arbitrary CustomAttributes values."""

from __future__ import annotations

from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from opentelemetry import baggage, trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from sm_tracing import _codec, extract_context, inject_context, strip_context
from sm_tracing._propagation import our_keys

SPAN_CONTEXT = SpanContext(
    trace_id=0x0AF7651916CD43DD8448EB211C80319C,
    span_id=0xB7AD6B7169203331,
    is_remote=False,
    trace_flags=TraceFlags(0x03),
)
CONTEXT = baggage.set_baggage(
    "user.id", "a,b;c=d", trace.set_span_in_context(NonRecordingSpan(SPAN_CONTEXT))
)

_key = st.one_of(
    st.sampled_from(["accept_eula", "tfs-model-name", "x-starting-token", "request_id", "k"]),
    st.from_regex(r"[A-Za-z0-9_.:/+-]{1,12}", fullmatch=True),
)
_value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
_pair = st.builds(lambda k, v, pad: f"{' ' * pad}{k}={v}", _key, _value, st.integers(0, 1))
_pair_list = st.builds(
    lambda pairs, sep, trailing: sep.join(pairs) + (sep if trailing else ""),
    st.lists(_pair, min_size=1, max_size=8),
    st.sampled_from([";", ","]),
    st.booleans(),
)
_printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=1100)
_anything = st.one_of(_pair_list, _printable, st.text(max_size=300))


def _visible_ascii(value: str) -> bool:
    return len(value) <= 1024 and value.isascii() and value.isprintable()


@settings(max_examples=400, deadline=None)
@given(_anything)
@example("accept_eula=true")
@example("k=" + "v" * 998)
@example("tfs-model-name=m,tfs-method=predict")
def test_inject_returns_the_input_or_a_valid_value_keeping_every_caller_pair(value: str) -> None:
    """inject gives the value back unchanged, or ≤1024 visible ASCII keeping the caller's pairs."""
    merged = inject_context(value, CONTEXT)
    if merged == value:
        return
    assert merged is not None
    assert _visible_ascii(merged)
    sep = _codec.separator(value)
    callers = [t for t in value.split(sep) if t.strip() and not _is_ours(t)]
    tokens = merged.split(sep)
    position = 0
    for token in callers:  # the caller's tokens survive verbatim and in order
        position = tokens.index(token, position) + 1
    assert extract_context(merged) is not None


@settings(max_examples=400, deadline=None)
@given(_anything)
def test_strip_after_inject_gives_the_callers_value_back(value: str) -> None:
    """strip(inject(x)) == x for any value carrying no key of ours."""
    assume(_codec.strip(value, our_keys()) == value)
    merged = inject_context(value, CONTEXT)
    assert strip_context(merged) == value


@settings(max_examples=400, deadline=None)
@given(st.one_of(_anything, st.none()))
def test_extract_and_strip_never_raise(value: str | None) -> None:
    """extract and strip accept anything; extract returns a Context."""
    assert isinstance(extract_context(value), Context)
    stripped = strip_context(value)
    assert (stripped is None) == (value is None)


@settings(max_examples=200, deadline=None)
@given(_pair_list)
def test_what_inject_writes_extract_reads(value: str) -> None:
    """The span context injected into any pair list is the one extracted from it."""
    merged = inject_context(value, CONTEXT)
    assume(merged != value)
    extracted = trace.get_current_span(extract_context(merged)).get_span_context()
    assert extracted.trace_id == SPAN_CONTEXT.trace_id
    assert extracted.span_id == SPAN_CONTEXT.span_id
    assert extracted.trace_flags == SPAN_CONTEXT.trace_flags


def _is_ours(token: str) -> bool:
    key = token.partition("=")[0].strip().lower()
    return "=" in token and key in our_keys()
