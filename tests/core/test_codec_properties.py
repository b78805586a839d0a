"""Properties of inject, extract and strip over arbitrary CustomAttributes values, stated through
the public functions alone."""

from __future__ import annotations

from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from opentelemetry import baggage, trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from sm_tracing import extract_context, inject_context, strip_context

SPAN_CONTEXT = SpanContext(
    trace_id=0x0AF7651916CD43DD8448EB211C80319C,
    span_id=0xB7AD6B7169203331,
    is_remote=False,
    trace_flags=TraceFlags(0x03),
)
BAGGAGE = {"user.id": "a,b;c=d"}
CONTEXT = baggage.set_baggage(
    "user.id", BAGGAGE["user.id"], trace.set_span_in_context(NonRecordingSpan(SPAN_CONTEXT))
)
INJECTED = (SPAN_CONTEXT.trace_id, SPAN_CONTEXT.span_id, SPAN_CONTEXT.trace_flags)
# A traceparent of some earlier call, left in a value that is sent again.
STALE = "traceparent=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

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

# Pairs no reader could take for anything else: a key, '=', and a value free of separators
# that does not start with another '='.
_plain_value = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters=";,"), max_size=40
).filter(lambda value: not value.startswith("="))
_plain_pairs = st.lists(st.builds(lambda k, v: f"{k}={v}", _key, _plain_value), min_size=1)


@st.composite
def _plain_list(draw: st.DrawFn, pad: bool = True) -> tuple[str, str, list[str]]:
    """A caller's key=value list that fits beside our pairs: (value, separator, its tokens)."""
    tokens = draw(_plain_pairs.filter(lambda pairs: len(pairs) <= 8))
    if pad:
        tokens = [" " * draw(st.integers(0, 1)) + token for token in tokens]
    sep = draw(st.sampled_from([";", ","]))
    if draw(st.booleans()):
        tokens.append("")  # a trailing separator
    return sep.join(tokens), sep, tokens


def _visible_ascii(value: str) -> bool:
    return len(value) <= 1024 and value.isascii() and value.isprintable()


def _carried(value: str) -> tuple[int, int, int]:
    """The trace id, span id and flags extract reads from *value*."""
    context = trace.get_current_span(extract_context(value)).get_span_context()
    return context.trace_id, context.span_id, context.trace_flags


@settings(max_examples=400, deadline=None)
@given(_anything)
@example("accept_eula=true")
@example("k=" + "v" * 998)
@example("tfs-model-name=m,tfs-method=predict")
@example("caf\xe9=1")
@example("k=" + "v" * 1100)
def test_inject_leaves_a_value_alone_or_writes_a_valid_one_carrying_the_context(
    value: str,
) -> None:
    """inject leaves a value SageMaker would reject as it is; anything it writes is ≤1024
    visible ASCII that carries the injected span context."""
    merged = inject_context(value, CONTEXT)
    assert merged is not None
    if not _visible_ascii(value):
        assert merged == value
    if merged != value:
        assert _visible_ascii(merged)
        assert _carried(merged) == INJECTED


@settings(max_examples=400, deadline=None)
@given(_plain_list())
@example(("accept_eula=true", ";", ["accept_eula=true"]))
@example(("tfs-model-name=m,tfs-method=predict", ",", ["tfs-model-name=m", "tfs-method=predict"]))
@example((" k=v ;", ";", [" k=v ", ""]))
def test_inject_writes_into_every_key_value_list(case: tuple[str, str, list[str]]) -> None:
    """Into a caller's key=value list with room to spare, inject always writes: the caller's
    pairs lead, in order, byte for byte; extract reads the injected span context and baggage
    back; strip gives the caller's value back byte for byte."""
    value, sep, _ = case
    assume(strip_context(value) == value)  # no key of ours by chance
    merged = inject_context(value, CONTEXT)
    assert merged is not None and merged != value
    assert _visible_ascii(merged)
    assert merged.startswith(value.removesuffix(sep))
    assert _carried(merged) == INJECTED
    assert baggage.get_all(extract_context(merged)) == BAGGAGE
    assert strip_context(merged) == value


@settings(max_examples=200, deadline=None)
@given(_plain_list(pad=False), st.integers(0, 8))
def test_inject_replaces_an_earlier_context(case: tuple[str, str, list[str]], at: int) -> None:
    """A value carrying an earlier traceparent gets the injected one in its place, not beside
    it, and strip gives back exactly the caller's pairs around it."""
    _, sep, tokens = case
    callers = sep.join(tokens)
    assume(strip_context(callers) == callers)
    position = min(at, len(tokens) - 1 if tokens[-1] == "" else len(tokens))
    value = sep.join([*tokens[:position], STALE, *tokens[position:]])
    merged = inject_context(value, CONTEXT)
    assert merged is not None
    assert [token.strip()[:12] for token in merged.split(sep)].count("traceparent=") == 1
    assert _carried(merged) == INJECTED
    assert strip_context(merged) == strip_context(value) == callers


@settings(max_examples=400, deadline=None)
@given(_anything)
def test_strip_after_inject_gives_the_callers_value_back(value: str) -> None:
    """strip(inject(x)) == x for any value carrying no key of ours."""
    assume(strip_context(value) == value)
    merged = inject_context(value, CONTEXT)
    assert strip_context(merged) == value


@settings(max_examples=400, deadline=None)
@given(st.one_of(_anything, st.none()))
def test_extract_and_strip_never_raise(value: str | None) -> None:
    """extract and strip accept anything; extract returns a Context."""
    assert isinstance(extract_context(value), Context)
    stripped = strip_context(value)
    assert (stripped is None) == (value is None)
