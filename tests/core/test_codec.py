"""The CustomAttributes codec: merge, strip, find and the budget, case by case."""

from __future__ import annotations

import itertools

import pytest

from sm_tracing import _codec

KEYS = _codec.Keys(
    {"traceparent", "tracestate", "baggage", "traceresponse"}, required={"traceparent"}
)
DROP = ("baggage", "tracestate")
TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
PAIRS = [("traceparent", TP)]


def merge(value: str | None, pairs: list[tuple[str, str]] = PAIRS, **kw: bool) -> str | None:
    merged, _ = _codec.merge(value, pairs, KEYS, DROP, **kw)
    return merged


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, f"traceparent={TP}"),
        ("", f"traceparent={TP}"),
        ("accept_eula=true", f"accept_eula=true;traceparent={TP}"),
        ("accept_eula=true;", f"accept_eula=true;traceparent={TP};"),
        ("a=1;b=2", f"a=1;b=2;traceparent={TP}"),
        ("a=1; b=2", f"a=1; b=2;traceparent={TP}"),
        ("tfs-model-name=m", f"tfs-model-name=m,traceparent={TP}"),
        (
            "tfs-model-name=m,tfs-method=predict",
            f"tfs-model-name=m,tfs-method=predict,traceparent={TP}",
        ),
        ("x-starting-token=abc", f"x-starting-token=abc;traceparent={TP}"),
        ("a=1,b=2", f"a=1,b=2,traceparent={TP}"),
        ("a=1;b=x,y", f"a=1;b=x,y;traceparent={TP}"),
        ("a=1;;b=2", f"a=1;;b=2;traceparent={TP}"),
    ],
)
def test_merge_keeps_the_callers_pairs_and_separator(value: str | None, expected: str) -> None:
    """Ours go after the caller's pairs, joined with the separator the value already uses."""
    assert merge(value) == expected


def test_merge_replaces_an_earlier_traceparent_instead_of_adding_a_second() -> None:
    """A stale traceparent (any case) is replaced, never duplicated."""
    merged = merge("a=1;TraceParent=00-old-old-01;b=2")
    assert merged == f"a=1;b=2;traceparent={TP}"
    assert merged.lower().count("traceparent=") == 1


@pytest.mark.parametrize(
    "value",
    [
        "3f2b6c1e-8a4d-4c2b-9a77-2d1c5e6f7a80",
        '{"request_id": "r1", "mode": "fast"}',
        '{"a":"b=c"}',
        "my-api-name",
        "YWJjZA==",
        "a=1;justtext",
        " ",
    ],
)
def test_merge_leaves_opaque_values_alone_by_default(value: str) -> None:
    """A value that is not a key=value list (UUID, JSON, an API name) is not touched."""
    merged, reason = _codec.merge(value, PAIRS, KEYS, DROP)
    assert merged is None
    assert reason == _codec.SKIP_OPAQUE


def test_merge_appends_to_opaque_values_when_told() -> None:
    """With opaque=True ours are appended with ';' and still found and stripped again."""
    value = "3f2b6c1e-8a4d-4c2b-9a77-2d1c5e6f7a80"
    merged = merge(value, opaque=True)
    assert merged == f"{value};traceparent={TP}"
    assert _codec.read(merged, KEYS) == ({"traceparent": TP}, value)
    assert merge(merged, opaque=True) == merged


@pytest.mark.parametrize("value", ["é=1", "a=1\n", "a=\x00", "a=1\tb=2", "x" * 1025])
def test_merge_skips_values_sagemaker_would_reject(value: str) -> None:
    """Non-ASCII, control characters and oversized values are left for botocore to judge."""
    merged, reason = _codec.merge(value, PAIRS, KEYS, DROP)
    assert merged is None
    assert reason == _codec.SKIP_INVALID


def test_budget_edge_a_1000_character_value_leaves_no_room() -> None:
    """A 1000-character caller value cannot take a 67-character pair: skipped, not truncated."""
    value = "k=" + "v" * 998
    merged, reason = _codec.merge(value, PAIRS, KEYS, DROP)
    assert merged is None
    assert reason == _codec.SKIP_BUDGET


def test_budget_exactly_1024_fits() -> None:
    """A merged value of exactly 1024 characters is sent."""
    room = 1024 - len(f";traceparent={TP}") - 2
    value = "k=" + "v" * room
    merged = merge(value)
    assert merged is not None
    assert len(merged) == 1024


def test_budget_drops_baggage_then_tracestate_never_traceparent() -> None:
    """Over budget, baggage goes first, then tracestate; the parent stays as long as it fits."""
    pairs = [("traceparent", TP), ("tracestate", "v" * 200), ("baggage", "b" * 300)]
    base = "k=" + "v" * 600
    assert merge(base, pairs) == f"{base};traceparent={TP};tracestate={'v' * 200}"
    bigger = "k=" + "v" * 800
    assert merge(bigger, pairs) == f"{bigger};traceparent={TP}"
    small = "k=1"
    assert merge(small, pairs) == f"k=1;traceparent={TP};tracestate={'v' * 200};baggage={'b' * 300}"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"accept_eula=true;traceparent={TP}", "accept_eula=true"),
        (f"traceparent={TP};accept_eula=true", "accept_eula=true"),
        (f"a=1; traceparent={TP}; b=2", "a=1; b=2"),
        (f"tfs-model-name=m,traceparent={TP},tracestate=x%3Dy", "tfs-model-name=m"),
        (f"accept_eula=true;traceparent={TP};", "accept_eula=true;"),
        (f"traceparent={TP}", ""),
        ("a=1;b=2", "a=1;b=2"),
        ("3f2b6c1e-uuid", "3f2b6c1e-uuid"),
        (f"a=1;traceresponse={TP}", "a=1"),
        ("traceparentish=1", "traceparentish=1"),
    ],
)
def test_read_removes_only_ours(value: str, expected: str) -> None:
    """Reading leaves the caller's tokens verbatim, in order, with their separator."""
    assert _codec.read(value, KEYS)[1] == expected


def test_read_decodes_our_values_and_ignores_the_callers() -> None:
    """Our values come back decoded; the caller's keys and odd tokens are passed over."""
    state = _codec.encode_value("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
    value = f"accept_eula=true;junk;traceparent={TP};tracestate={state}"
    assert _codec.read(value, KEYS) == (
        {"traceparent": TP, "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"},
        "accept_eula=true;junk",
    )


def test_read_last_value_wins() -> None:
    """Two traceparents: the last one is taken, as JumpStart's own parser would."""
    value = f"traceparent=00-{'1' * 32}-{'2' * 16}-01;traceparent={TP}"
    assert _codec.read(value, KEYS) == ({"traceparent": TP}, "")


@pytest.mark.parametrize(
    "raw",
    ["congo=t61rcWkgMzE,rojo=00f067aa0ba902b7", "k1=v1;p=1,k2=v%202", "a b", "100%", "é"],
)
def test_encoding_round_trips_and_is_safe_under_both_separators(raw: str) -> None:
    """Encoded values carry no separator, '=' or raw '%', and decode to the original."""
    encoded = _codec.encode_value(raw)
    assert not set(encoded) & set(",;= ")
    assert encoded.isascii()
    assert _codec.decode_value(encoded) == raw


def test_traceparent_needs_no_encoding() -> None:
    """A W3C traceparent is hex and '-': sent as it is."""
    assert _codec.encode_value(TP) is TP


def test_every_character_is_sent_as_it_is_only_when_safe() -> None:
    """Each character up to U+0300, alone and inside a value: kept as it is exactly when it is
    visible ASCII and none of '%' ',' ';' '=', escaped otherwise, and decoded back."""
    safe = {chr(c) for c in range(0x21, 0x7F)} - set("%,;=")
    for code in range(0x300):
        character = chr(code)
        for raw in (character, f"ab{character}cd"):
            encoded = _codec.encode_value(raw)
            assert (encoded == raw) is (character in safe), raw
            assert _codec.decode_value(encoded) == raw


def test_plain_values_are_told_apart_as_the_escape_pattern_tells_them() -> None:
    """Over every code point, alone and inside a value: a value is sent as it is exactly when
    the escape pattern finds nothing to escape in it."""
    for code in range(0x110000):
        character = chr(code)
        for raw in (character, f"ab{character}cd"):
            assert _codec._is_plain(raw) is (_codec._NEEDS_ESCAPE.search(raw) is None), code
    assert _codec._is_plain("")


def test_decode_keeps_malformed_escapes() -> None:
    """An escape that is not valid UTF-8 is kept rather than raising."""
    assert _codec.decode_value("%FF%FE") == "%FF%FE"


@pytest.mark.parametrize(
    ("value", "sep"),
    [
        ("accept_eula=true", ";"),
        ("tfs-model-name=m", ","),
        ("a=1;b=2", ";"),
        ("a=1,b=2", ","),
        ("tfs-model-name=m,tfs-signature-name=a;b", ","),
        ("a=1;b=x,y", ";"),
    ],
)
def test_separator_follows_the_value(value: str, sep: str) -> None:
    """The separator is read from the value; a lone tfs-* pair means TensorFlow Serving's ','."""
    assert _codec.separator(value) == sep


@pytest.mark.parametrize(
    "value",
    [
        '{"note": "a;baggage=b"}',
        '{"note": "a;traceparent=b", "x": 1}',
        "a=1;justtext;tracestate=x",
        "not a list; traceparent",
        "é;traceparent=" + TP,
        "x" * 1000 + ";traceparent=" + TP,
    ],
)
def test_read_leaves_values_no_merge_could_have_written_alone(value: str) -> None:
    """Text that only looks like a pair of ours, or a value SageMaker would reject, is the
    caller's whole: nothing found, the very same string back."""
    pairs, rest = _codec.read(value, KEYS)
    assert pairs == {}
    assert rest is value


@pytest.mark.parametrize(
    ("value", "pairs", "rest"),
    [
        (f"accept_eula=true;traceparent={TP}", {"traceparent": TP}, "accept_eula=true"),
        (f"TraceParent = {TP} ;a=1", {"traceparent": TP}, "a=1"),
        (f"a=1;traceparent={TP};", {"traceparent": TP}, "a=1;"),
        (f"a=1, traceparent={TP}", {"traceparent": TP}, "a=1"),
        (f"traceparent={TP}; a=1", {"traceparent": TP}, "a=1"),
        (f" a=1;traceparent={TP}", {"traceparent": TP}, " a=1"),
        (f"tracestate=k%3Dv;traceparent={TP}", {"tracestate": "k=v", "traceparent": TP}, ""),
        (f'{{"a": 1}};traceparent={TP}', {"traceparent": TP}, '{"a": 1}'),
        (f"uuid-1;traceparent={TP};baggage=k%3Dv", {"traceparent": TP, "baggage": "k=v"}, "uuid-1"),
        ("a=1;b=2", {}, "a=1;b=2"),
        ("", {}, ""),
    ],
)
def test_read_cases(value: str, pairs: dict[str, str], rest: str) -> None:
    """Our pairs decoded, the caller's value as it was less them."""
    assert _codec.read(value, KEYS) == (pairs, rest)


def test_read_prefixed_keys_are_ours() -> None:
    """Per-entry baggage keys (Jaeger's uberctx-*, OT's ot-baggage-*) are ours by prefix."""
    keys = _codec.Keys({"uber-trace-id"}, prefixes=("uberctx-",))
    value = "a=1;uber-trace-id=1:2:0:1;uberctx-user=alice"
    assert _codec.read(value, keys) == (
        {"uber-trace-id": "1:2:0:1", "uberctx-user": "alice"},
        "a=1",
    )


def test_read_keeps_deciding_right_past_the_keys_it_remembers() -> None:
    """Keys remember what each key they have read is, up to a bound: a caller that makes up a
    key per call neither grows them without end nor gets a wrong answer once they forget."""
    keys = _codec.Keys({"traceparent"})
    for index in range(3 * _codec._KINDS_KEPT):
        key = f"k{index}" if index % 3 else f"k {index}"  # every third is not a key
        value = f"TraceParent={TP};{key}=v"
        expected = ({"traceparent": TP}, f"{key}=v") if index % 3 else ({}, value)
        assert _codec.read(value, keys) == expected, value
    assert len(keys._kinds) <= _codec._KINDS_KEPT


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        (TP, ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", 1)),
        (TP[:-2] + "03", ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", 3)),
        (f" {TP} ", ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", 1)),
        (TP.upper(), None),
        (TP[:-1], None),
        ("01" + TP[2:], None),
        (f"00-{'0' * 32}-b7ad6b7169203331-01", None),
        (f"00-0af7651916cd43dd8448eb211c80319c-{'0' * 16}-01", None),
        (TP.replace("-", "_"), None),
        ("", None),
    ],
)
def test_parse_traceresponse(value: str, parsed: tuple[str, str, int] | None) -> None:
    """The echo is parsed in one match: lower-case hex ids of the right length, valid ids only."""
    assert _codec.parse_traceresponse(value) == parsed
    if parsed is not None:
        trace_id, span_id, flags = parsed
        assert (
            _codec.format_traceresponse(int(trace_id, 16), int(span_id, 16), flags) == value.strip()
        )


# Response values are built from these: what an app may have set, how it joins ours, and echoes
# well and badly formed.
_APP_VALUES = [
    "",
    "session=abc",
    " session=abc",
    "a=1 ",
    "a=1;b=2",
    "a=1;;b=2",
    ";",
    "a=1;",
    '{"note": "a;b=c"}',
    "7f9c2f2e-3b1a-4c7e",
    "TraceResponse=x",
    "a=1;sm-container-us=5",
    "SM-Container-US=5",
    "my-traceresponse=1",
    "a==b",
    "=x",
    "a=%3D",
    "caf\u00e9=1",
    "a=\x01",
    "tfs-a=1,tfs-b=2",
    "x" * 990,
]
_JOINS = [";", ",", "", " ;"]
_ECHOES = [
    f"traceresponse={TP}",
    f"traceresponse={TP};sm-container-us=1500",
    f"traceresponse={TP};sm-container-us=",
    f"traceresponse={TP};sm-container-us=1234567890123",
    f"traceresponse={TP};sm-container-us=15x",
    f"traceresponse={TP.upper()}",
    f"traceresponse=00-{'0' * 32}-b7ad6b7169203331-01",
    f"traceresponse=00-0af7651916cd43dd8448eb211c80319c-{'0' * 16}-00",
    f"traceresponse={TP[:-1]}",
    f"traceresponse= {TP}",
    f"traceresponse={TP};x=1",
    f"traceresponse={TP};",
    f"sm-container-us=7;traceresponse={TP}",
]


def _read_as_read_does(value: str) -> _codec.Echo | None:
    # The echo as the codec's one reader, read(), finds it.
    if _codec.TRACERESPONSE not in value:
        return None
    pairs, rest = _codec.read(value, _codec.ECHO_KEYS)
    if _codec.TRACERESPONSE not in pairs:
        return None
    echo = _codec.parse_traceresponse(pairs[_codec.TRACERESPONSE])
    return echo, pairs.get(_codec.CONTAINER_TIME), rest


def test_read_echo_reads_what_read_finds(monkeypatch: pytest.MonkeyPatch) -> None:
    """read_echo() reads the echo a container merges at the end of a ';' list in one match;
    whatever the value, it gives what read() finds: the echo before, after or without the
    app's value, joined by ';' or ',', in values SageMaker would reject, beside keys of ours in
    other cases."""
    taken_whole: list[str] = []
    generic = _codec._read_echo

    def whole(value: str) -> _codec.Echo | None:
        taken_whole.append(value)
        return generic(value)

    monkeypatch.setattr(_codec, "_read_echo", whole)
    values = {
        value
        for app, join, echo in itertools.product(_APP_VALUES, _JOINS, _ECHOES)
        for value in (f"{app}{join}{echo}", f"{echo}{join}{app}")
    }
    for value in sorted(values):
        assert _codec.read_echo(value) == _read_as_read_does(value), value
    # The match read the shapes a merge writes: the echo after a ';' list or an opaque value,
    # or alone, with the container's time or without.
    matched = values - set(taken_whole)
    for app in ("", "session=abc", "a=1;b=2", '{"note": "a;b=c"}', "7f9c2f2e-3b1a-4c7e"):
        for echo in _ECHOES[:2]:
            assert (f"{app};{echo}" if app else echo) in matched
