"""The CustomAttributes string: read, merge, budget.

Pure string work, no OpenTelemetry and no botocore, so it can be tested exhaustively.

A value is either a list of ``key=value`` pairs joined by ``;`` or ``,`` (JumpStart's
``accept_eula=true``, DJL's properties, TensorFlow Serving's ``tfs-model-name=m``) or an
*opaque* value that the container reads whole (a bare UUID, JSON, a BentoML API name).
Pairs are merged into lists and leave opaque values alone unless the caller insists, in which
case ours are appended after a ``;``.

:func:`read` is the one way in and :func:`merge` the one way out; both tokenize a value with
:func:`_parse`, so "which of these pairs are ours" is decided in one place, by the rules a
merge writes by: only a value a merge could have written into gives up any pairs. The client
reads every response's echo with :func:`read_echo`, which takes the shape merges write in one
match and leaves any other to :func:`read`, with the same answer either way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from urllib.parse import unquote

MAX_LENGTH = 1024
"""SageMaker's limit on CustomAttributes, in characters."""

TRACERESPONSE = "traceresponse"
"""The key the container side echoes its span under, in the response CustomAttributes."""

CONTAINER_TIME = "sm-container-us"
"""The key the container side echoes, beside ``traceresponse``, how long it took until the
response started, in whole microseconds; the first of ours to go when space is short."""

# A key we recognise as the start of a pair: what real users put there (accept_eula,
# tfs-model-name, x-starting-token, request_id) and every propagator field name.
_KEY = re.compile(r"[A-Za-z0-9_.:/+-]+")
# Characters a value of ours may carry as they are: visible ASCII less the separators,
# the pair sign and the escape sign.
_NEEDS_ESCAPE = re.compile(r"[^\x21-\x24\x26-\x2b\x2d-\x3a\x3c\x3e-\x7e]")
# A version-00 traceparent or traceresponse: 00-<32 hex trace id>-<16 hex span id>-<2 hex flags>.
_TRACE_HEADER = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
# How many keys a Keys remembers the kind of.
_KINDS_KEPT = 1024
_INVALID_TRACE = "0" * 32
_INVALID_SPAN = "0" * 16

SKIP_INVALID = "not visible ASCII or longer than 1024 characters"
SKIP_OPAQUE = "not a key=value list"
SKIP_BUDGET = "no room within 1024 characters"


class Keys:
    """The keys one side owns in a value: exact names and name prefixes, lower-cased.

    *required* are the keys of which every merge writes at least one (the trace parent; never
    one that is dropped over budget): a run of pairs at the end of an opaque value is ours only
    when it holds one of them. Compared by identity, so build one per set of keys and keep it.
    """

    __slots__ = ("_kinds", "exact", "prefixes", "required")

    def __init__(
        self,
        exact: Iterable[str],
        prefixes: Iterable[str] = (),
        required: Iterable[str] | None = None,
    ) -> None:
        self.exact = frozenset(key.lower() for key in exact)
        self.prefixes = tuple(prefix.lower() for prefix in prefixes)
        self.required = self.exact if required is None else frozenset(required)
        self._kinds: dict[str, str | bool] = {}

    def owns(self, lowered: str) -> bool:
        """True when the lower-cased key *lowered* is one of ours."""
        return lowered in self.exact or (bool(self.prefixes) and lowered.startswith(self.prefixes))

    def learn(self, key: str) -> str | bool:
        """What the key of a pair, *key* as it came, is: one of ours (its lower-cased name), a
        key of someone else's (True), or not a key (False); remembered in ``_kinds``, which
        the parser reads first: callers send the same few keys over and over, and a regex
        match is dear."""
        lowered = key.strip().lower()
        kind = lowered if self.owns(lowered) else _KEY.fullmatch(key.strip()) is not None
        if len(self._kinds) >= _KINDS_KEPT:
            self._kinds.clear()  # keys made up per call: remember only the latest
        self._kinds[key] = kind
        return kind

    def __contains__(self, lowered: object) -> bool:
        return isinstance(lowered, str) and self.owns(lowered)

    def __repr__(self) -> str:
        return f"Keys({sorted(self.exact)!r}, prefixes={self.prefixes!r})"


Read = tuple[dict[str, str], str]
"""What :func:`read` finds: our pairs (keys lower-cased, values decoded, the last of a key
wins) and the value without them (the very same string when none were found; ``""`` when
nothing of the caller's is left)."""


def is_valid(value: str) -> bool:
    """True when *value* is something SageMaker accepts: at most 1024 visible ASCII chars."""
    return len(value) <= MAX_LENGTH and value.isascii() and value.isprintable()


def encode_value(value: str) -> str:
    """Percent-encode what would break a pair (``%`` ``,`` ``;`` ``=``, spaces, non-ASCII)."""
    if _is_plain(value):
        return value
    return _NEEDS_ESCAPE.sub(_escape, value)


def _is_plain(value: str) -> bool:
    """Whether *value* has nothing :func:`encode_value` escapes: the common case (a
    ``traceparent`` is hex digits and dashes), told by string methods rather than a scan."""
    return (
        value.isascii()
        and value.isprintable()
        and " " not in value
        and "%" not in value
        and "," not in value
        and ";" not in value
        and "=" not in value
    )


def _escape(match: re.Match[str]) -> str:
    return "".join(f"%{byte:02X}" for byte in match.group().encode("utf-8"))


def decode_value(value: str) -> str:
    """Undo :func:`encode_value`; a malformed escape is kept as it is."""
    if "%" not in value:
        return value
    try:
        return unquote(value, errors="strict")
    except UnicodeDecodeError:
        return value


def _pair_key(token: str) -> str | None:
    """The key of a ``key=value`` token, or None when the token is not a pair."""
    key, sign, value = token.partition("=")
    if not sign:
        return None
    key = key.strip()
    if not key or _KEY.fullmatch(key) is None or value[:1] == "=":
        return None
    return key


def _all_pairs(tokens: Sequence[str]) -> bool:
    # Empty tokens (a trailing or doubled separator) are tolerated and kept as they are.
    seen = False
    for token in tokens:
        if not token.strip():
            continue
        if _pair_key(token) is None:
            return False
        seen = True
    return seen


def separator(value: str) -> str:
    """The separator *value* uses, or the one a new pair should be joined with."""
    semi = ";" in value
    comma = "," in value
    if semi != comma:
        return ";" if semi else ","
    if not semi:
        # One pair or none: TensorFlow Serving splits on ',', everyone else on ';'.
        return "," if value.lstrip().startswith("tfs-") else ";"
    order = (",", ";") if "tfs-" in value else (";", ",")
    for sep in order:
        if _all_pairs(value.split(sep)):
            return sep
    return ";"


# The caller's tokens in order, our pairs decoded, and the separator; no separator means an
# opaque value, whole as the one token, ours (if any) appended after it with ';'.
_Parsed = tuple[list[str], dict[str, str], str | None]


def _parse(value: str, keys: Keys, sep: str) -> _Parsed:
    """Tokenize a valid, non-empty *value* once, split on *sep*: the caller's tokens and our
    pairs."""
    kinds = keys._kinds
    pairs: dict[str, str] = {}
    kept: list[str] = []
    is_list = True
    seen = False
    for token in value.split(sep):
        key, sign, rest = token.partition("=")
        if sign and rest[:1] != "=":
            kind = kinds.get(key)
            if kind is None:
                kind = keys.learn(key)
            if kind is True:
                seen = True
            elif kind is False:
                is_list = False
            else:
                rest = rest.strip()
                pairs[kind] = decode_value(rest) if "%" in rest else rest
                continue
            kept.append(token)
            continue
        if token.strip():
            is_list = False
        kept.append(token)
    if is_list and (seen or pairs):
        return kept, pairs, sep
    return _parse_opaque(value, keys)


def _parse_opaque(value: str, keys: Keys) -> _Parsed:
    # A merge appends ours to an opaque value after ';', with the trace parent among them: only
    # such a run at the very end is ours, so JSON or text that merely looks like a pair of
    # ours ({"note": "a;baggage=b"}) is the caller's, whole.
    tokens = value.split(";")
    end = len(tokens)
    pairs: dict[str, str] = {}
    required = False
    while end > 1:
        key, sign, rest = tokens[end - 1].partition("=")
        lowered = key.strip().lower()
        rest = rest.strip()
        # A value a merge wrote is encoded: no blank, separator or '=' in it.
        if not sign or not keys.owns(lowered) or "=" in rest or "," in rest or " " in rest:
            break
        if lowered not in pairs:
            pairs[lowered] = decode_value(rest) if "%" in rest else rest
        required = required or lowered in keys.required
        end -= 1
    body = ";".join(tokens[:end])
    if not required or not body.strip():
        return [value], {}, None
    return [body], pairs, None


def read(value: str, keys: Keys) -> Read:
    """Our pairs in *value* and the value without them, in one pass.

    A value SageMaker would reject (over 1024 characters, not visible ASCII) is not ours to
    read: no pairs, the value untouched. So is JSON or text that is not a ``key=value`` list,
    unless pairs of ours were appended to it the way :func:`merge` appends them.
    """
    if not value or len(value) > MAX_LENGTH or not value.isascii() or not value.isprintable():
        return {}, value
    # Without ',' the tokens are the same whichever separator the value would take.
    kept, pairs, sep = _parse(value, keys, separator(value) if "," in value else ";")
    if not pairs:
        return pairs, value
    if sep is None:
        return pairs, kept[0]
    if kept and value[:1] != " ":
        # Where our first pair went, the caller's first token now leads: drop the blank that
        # followed the separator we removed.
        kept[0] = kept[0].lstrip(" ")
    return pairs, sep.join(kept)


def merge(
    value: str | None,
    pairs: Sequence[tuple[str, str]],
    keys: Keys,
    drop_order: Sequence[str] = (),
    opaque: bool = False,
) -> tuple[str | None, str | None]:
    """Merge encoded *pairs* into *value*; return ``(merged, None)`` or ``(None, reason)``.

    Earlier pairs of ours (see :func:`read`) are replaced, the caller's own pairs keep their
    order and separator, ours go after them (before a trailing separator). Over budget, the
    keys in *drop_order* are dropped one by one; the value is never truncated. An opaque
    *value* is left alone unless *opaque* is true, when ours are appended with ``;``.
    """
    if len(pairs) == 1:  # the common case: a lone traceparent
        key, val = pairs[0]
        return merge_one(value, key, val, keys, opaque)
    frame = _frame(value, keys, opaque)
    if isinstance(frame, str):
        return None, frame
    prefix, sep, suffix, room = frame
    dropped: set[str] = set()
    for drop in (None, *drop_order):
        if drop is not None:
            dropped.add(drop)
        ours = sep.join(f"{key}={val}" for key, val in pairs if key not in dropped)
        if not ours:
            break
        if len(ours) <= room:
            return prefix + ours + suffix, None
    return None, SKIP_BUDGET


def merge_one(
    value: str | None, key: str, val: str, keys: Keys, opaque: bool = False
) -> tuple[str | None, str | None]:
    """:func:`merge` of the one encoded pair *key* = *val*."""
    frame = _frame(value, keys, opaque)
    if isinstance(frame, str):
        return None, frame
    prefix, _, suffix, room = frame
    if len(key) + len(val) < room:  # with the '=' between them
        return f"{prefix}{key}={val}{suffix}", None
    return None, SKIP_BUDGET


@lru_cache(maxsize=512)
def _frame(value: str | None, keys: Keys, opaque: bool) -> tuple[str, str, str, int] | str:
    """What goes before and after our pairs in *value*, their separator and the room left for
    them; or why none can.

    Cached: callers send the same few values over and over, and parsing them is most of the
    cost of a merge.
    """
    if not value:
        return "", ";", "", MAX_LENGTH
    if not is_valid(value):
        return SKIP_INVALID
    kept, _, sep = _parse(value, keys, separator(value))
    if sep is None:
        body = kept[0]
        if not opaque or not body.strip():
            return SKIP_OPAQUE
        return body + ";", ";", "", MAX_LENGTH - len(body) - 1
    # Ours go before a trailing separator, so parsers see the same shape as before.
    end = len(kept)
    while end and not kept[end - 1].strip():
        end -= 1
    prefix = sep.join(kept[:end]) + sep if end else ""
    suffix = sep + sep.join(kept[end:]) if end < len(kept) else ""
    return prefix, sep, suffix, MAX_LENGTH - len(prefix) - len(suffix)


_FLAGS = tuple(f"-{flags:02x}" for flags in range(256))
_FLAG_VALUES = {f"{flags:02x}": flags for flags in range(256)}


def format_traceresponse(trace_id: int, span_id: int, trace_flags: int) -> str:
    """The W3C ``traceresponse`` value of a span: ``00-<trace id>-<span id>-<flags>``."""
    # Bytes to hex, then one f-string, beats format specs and concatenation: this is on every
    # call of the client and every response of the middlewares.
    trace = trace_id.to_bytes(16, "big").hex()
    span = span_id.to_bytes(8, "big").hex()
    return f"00-{trace}-{span}{_FLAGS[trace_flags]}"


# The echo's tail after the span id: its flags and the key of the container's time.
_ECHO_TAILS = tuple(f"-{flags:02x};{CONTAINER_TIME}=" for flags in range(256))
_ECHO_HEAD = TRACERESPONSE + "=00-"
_ECHO_HEAD_LENGTH = len(_ECHO_HEAD)


def format_echo(trace_id: int, span_id: int, trace_flags: int, elapsed_us: int) -> str:
    """The whole echo of a response whose app set no CustomAttributes: ``traceresponse`` and
    the container's time, ``traceresponse=00-<trace id>-<span id>-<flags>;sm-container-us=N``."""
    # Built as format_traceresponse is: this is on every response of the middlewares.
    trace = trace_id.to_bytes(16, "big").hex()
    span = span_id.to_bytes(8, "big").hex()
    return f"{_ECHO_HEAD}{trace}-{span}{_ECHO_TAILS[trace_flags]}{elapsed_us}"


ECHO_KEYS = Keys((TRACERESPONSE, CONTAINER_TIME), required=(TRACERESPONSE,))
"""The keys of ours in a response's CustomAttributes: only the container's echo."""

# The end of a response value a container merged its echo into, after its _ECHO_HEAD: the
# rest of traceresponse, and the container's time unless that was dropped for room.
_ECHO_END = re.compile(
    r"([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:;" + CONTAINER_TIME + r"=([0-9]+))?"
)

Echo = tuple[tuple[str, str, int] | None, str | None, str]
"""What :func:`read_echo` finds: the container's span (as :func:`parse_traceresponse` gives it;
None when the echo is malformed), its time in microseconds as sent, and the value without
them."""


def read_echo(value: str) -> Echo | None:
    """The container's echo in a response *value*, read as :func:`read` reads it with
    ``ECHO_KEYS``; None when there is none (the value is then the caller's, whole)."""
    # The shape a merge gives on every response of our middlewares, the echo last after a ';'
    # list or alone, is read by one match to what read() gives. Any other shape goes to
    # read(): a ',' anywhere (the separator is then a question), a key of ours before the echo
    # (it would count), a value SageMaker would reject.
    start = value.rfind(_ECHO_HEAD)
    if start < 0 or len(value) > MAX_LENGTH or "," in value:
        return _read_echo(value)
    match = _ECHO_END.fullmatch(value, start + _ECHO_HEAD_LENGTH)
    if match is None:
        return _read_echo(value)
    rest = ""
    if start:
        rest = value[: start - 1]
        lowered = rest.lower()
        if (
            value[start - 1] != ";"
            or TRACERESPONSE in lowered
            or CONTAINER_TIME in lowered
            or not rest.isascii()
            or not rest.isprintable()
        ):
            return _read_echo(value)
    trace_id, span_id, flags, micros = match.groups()
    if trace_id == _INVALID_TRACE or span_id == _INVALID_SPAN:
        return None, micros, rest
    return (trace_id, span_id, _FLAG_VALUES[flags]), micros, rest


def _read_echo(value: str) -> Echo | None:
    if TRACERESPONSE not in value:
        return None
    pairs, rest = read(value, ECHO_KEYS)
    echo = pairs.get(TRACERESPONSE)
    if echo is None:
        return None
    return parse_traceresponse(echo), pairs.get(CONTAINER_TIME), rest


def parse_traceresponse(value: str) -> tuple[str, str, int] | None:
    """The trace id and span id (lower-case hex) and the flags a ``traceresponse`` (or a
    version-00 ``traceparent``: the format is the same) names, or None when it is malformed or
    names the invalid span."""
    # One compiled match: this runs on every traced request and every echoed response.
    match = _TRACE_HEADER.fullmatch(value.strip())
    if match is None:
        return None
    trace_id, span_id, flags = match.groups()
    if trace_id == _INVALID_TRACE or span_id == _INVALID_SPAN:
        return None
    return trace_id, span_id, _FLAG_VALUES[flags]
