"""The ModelQueryString of a bidirectional stream, the carrier of its trace context: merge and
read, stated as properties over arbitrary query strings and checked on the cases that matter.
Pure string work: these run on every Python, with or without the bidirectional SDK."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sm_tracing import _querystring
from sm_tracing._querystring import MAX_LENGTH, SKIP_BUDGET, SKIP_INVALID, SKIP_NOTHING

OURS = frozenset({"traceparent", "tracestate", "baggage"})
DROP = ("baggage", "tracestate")
PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03"
STALE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
# The API's pattern, written out once more as SageMaker documents it.
API_PATTERN = re.compile(
    r"^[a-zA-Z0-9][A-Za-z0-9_-]*=(?:[A-Za-z0-9._~\-]|%[0-9A-Fa-f]{2})+"
    r"(?:&[a-zA-Z0-9][A-Za-z0-9_-]*=(?:[A-Za-z0-9._~\-]|%[0-9A-Fa-f]{2})+)*$"
)


def owns(key: str) -> bool:
    return key in OURS


def ours(state: str = "", bag: str = "") -> list[tuple[str, str]]:
    pairs = [("traceparent", PARENT)]
    if state:
        pairs.append(("tracestate", _querystring.encode_value(state)))
    if bag:
        pairs.append(("baggage", _querystring.encode_value(bag)))
    return pairs


_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_key = st.builds(str.__add__, st.sampled_from(_ALNUM), st.text(_ALNUM + "_-", max_size=10)).filter(
    lambda key: key.lower() not in OURS
)
_value = st.lists(
    st.one_of(st.sampled_from(_ALNUM + "._~-"), st.sampled_from(["%2F", "%3d", "%E9", "%20"])),
    min_size=1,
    max_size=30,
).map("".join)
_user_pairs = st.lists(st.tuples(_key, _value), min_size=1, max_size=10)
_text = st.text(max_size=80)


def joined(pairs: list[tuple[str, str]]) -> str:
    return "&".join(f"{key}={value}" for key, value in pairs)


@given(_user_pairs, _text, _text)
@example([("model", "nova-3"), ("language", "en")], "vendor=a,other=b", "user.id=a;b c")
def test_a_merge_keeps_the_callers_pairs_in_order_and_fits_the_api(
    user: list[tuple[str, str]], state: str, bag: str
) -> None:
    """Merged, the caller's pairs come first and unchanged, ours after them; the result is
    always something SageMaker accepts, and reading it back gives ours decoded and the
    caller's query string exactly."""
    query = joined(user)
    merged, reason = _querystring.merge(query, ours(state, bag), owns, DROP)
    assert reason is None and merged is not None
    assert merged.startswith(query + "&traceparent=" + PARENT)
    assert API_PATTERN.match(merged) and len(merged) <= MAX_LENGTH
    pairs, rest = _querystring.read(merged, owns)
    assert rest == query
    assert pairs["traceparent"] == PARENT
    assert pairs.get("tracestate", "") == state
    assert pairs.get("baggage", "") == bag


@given(_user_pairs, st.integers(0, 9))
def test_an_earlier_pair_of_ours_is_replaced_wherever_it_was(
    user: list[tuple[str, str]], at: int
) -> None:
    """A traceparent already in the query string (an input sent again) goes; one of ours,
    the current one, is at the end."""
    stale = [*user[:at], ("traceparent", STALE), *user[at:]]
    merged, _ = _querystring.merge(joined(stale), ours(), owns, DROP)
    assert merged == f"{joined(user)}&traceparent={PARENT}"


@pytest.mark.parametrize(
    "query",
    [
        "lang=en us",  # a blank
        "lang=",  # an empty value
        "=en",  # no key
        "_lang=en",  # a key must start with a letter or digit
        "lang=en&",  # a trailing separator
        "lang=en&&model=x",
        "lang=%zz",  # a broken escape
        "lang=caf\u00e9",
        "just-a-word",
        "k=" + "v" * (MAX_LENGTH - 1),  # over the limit by itself
    ],
)
def test_a_query_string_the_api_refuses_is_left_as_it_was(query: str) -> None:
    """What SageMaker would refuse is not ours to repair: the caller gets SageMaker's error."""
    assert not _querystring.is_valid(query)
    assert _querystring.merge(query, ours(), owns, DROP) == (None, SKIP_INVALID)


@pytest.mark.parametrize("query", [None, ""])
def test_no_query_string_gets_ours_alone(query: str | None) -> None:
    """Without a query string of the caller's, ours is the whole query string."""
    assert _querystring.merge(query, ours(), owns, DROP) == (f"traceparent={PARENT}", None)


def test_over_budget_baggage_then_tracestate_go_first() -> None:
    """Near the limit, baggage is dropped, then tracestate; the trace parent is never dropped
    and the value never cut."""
    suffix = f"&traceparent={PARENT}"
    state, bag = "v=" + "s" * 50, "b=" + "b" * 50
    enc_state = _querystring.encode_value(state)
    room_for_state = MAX_LENGTH - len(suffix) - len("&tracestate=" + enc_state)
    query = "k=" + "v" * (room_for_state - 2)
    merged, reason = _querystring.merge(query, ours(state, bag), owns, DROP)
    assert reason is None and merged == f"{query}{suffix}&tracestate={enc_state}"
    assert len(merged) == MAX_LENGTH
    query = "k=" + "v" * (room_for_state - 1)
    merged, _ = _querystring.merge(query, ours(state, bag), owns, DROP)
    assert merged == query + suffix
    query = "k=" + "v" * (MAX_LENGTH - len(suffix) - 1)
    assert _querystring.merge(query, ours(state, bag), owns, DROP) == (None, SKIP_BUDGET)


def test_pairs_the_api_would_refuse_are_left_out() -> None:
    """A pair of ours with an empty value or a key outside the pattern is not written; with
    nothing left, the query string is sent as it was."""
    pairs = [("traceparent", PARENT), ("tracestate", ""), ("x.b3", "1")]
    assert _querystring.merge("a=1", pairs, owns, DROP) == (f"a=1&traceparent={PARENT}", None)
    assert _querystring.merge("a=1", [("tracestate", "")], owns, DROP) == (None, SKIP_NOTHING)


@given(st.text(max_size=200))
def test_encoded_values_fit_the_pattern_and_decode_back(text: str) -> None:
    """Any text, encoded, is a value the API takes (when not empty) and decodes to itself."""
    encoded = _querystring.encode_value(text)
    assert _querystring.decode_value(encoded) == text
    if text:
        assert API_PATTERN.match(f"k={encoded}")


@pytest.mark.parametrize(
    ("query", "pairs", "rest"),
    [
        ("a=1&traceparent=x&b=2", {"traceparent": "x"}, "a=1&b=2"),
        ("TraceParent=x", {"traceparent": "x"}, ""),
        ("tracestate=a%3Db%2Cc", {"tracestate": "a=b,c"}, ""),
        ("lang=en&no-sign&traceparent=y", {"traceparent": "y"}, "lang=en&no-sign"),
        ("bad=%E9&traceparent=%zz", {"traceparent": "%zz"}, "bad=%E9"),
    ],
)
def test_read_takes_ours_out_and_leaves_the_rest_as_it_was(
    query: str, pairs: dict[str, str], rest: str
) -> None:
    """Reading splits off our pairs, decoded, and leaves everything else byte for byte."""
    assert _querystring.read(query, owns) == (pairs, rest)


@pytest.mark.parametrize("query", ["", "a=1&b=2", "traceparentless", "x=traceparent"])
def test_read_without_pairs_of_ours_returns_the_same_string(query: str) -> None:
    """With nothing of ours in it, the query string comes back as the very same object."""
    found = _querystring.read(query, owns)
    assert found.pairs == {} and found.rest is query
