"""The ``ModelQueryString`` of InvokeEndpointWithBidirectionalStream: merge, read, budget.

SageMaker appends the value to the WebSocket URL it opens on the model container
(``ws://…/invocations-bidirectional-stream?<value>``): on a bidirectional stream it is the one
field that carries a trace context from the caller to the container. The API takes at most
2048 characters of ``key=value`` pairs joined by ``&``: keys ``[A-Za-z0-9][A-Za-z0-9_-]*``,
values of unreserved characters (``A-Z a-z 0-9 . _ ~ -``) or percent escapes, never empty.

Pure string work, like the CustomAttributes codec: no OpenTelemetry and no SDK. The rules are
the codec's: the caller's pairs keep their order, an earlier pair of ours is replaced rather
than repeated, ours go last, and over budget ``baggage`` and ``tracestate`` go before the
value would ever be cut; a value SageMaker would refuse is sent as it was.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import NamedTuple
from urllib.parse import quote

from sm_tracing._codec import decode_value

MAX_LENGTH = 2048
"""SageMaker's limit on ModelQueryString, in characters."""

SKIP_INVALID = "not k=v pairs joined by & within 2048 characters"
SKIP_BUDGET = "no room within 2048 characters"
SKIP_NOTHING = "no trace context that fits a query string"

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_VALUE = re.compile(r"(?:[A-Za-z0-9._~-]|%[0-9A-Fa-f]{2})+")
_PAIR = rf"{_KEY.pattern}={_VALUE.pattern}"
_QUERY = re.compile(rf"{_PAIR}(?:&{_PAIR})*")

Owns = Callable[[str], bool]
"""Says whether a lower-cased key is one of ours (``sm_tracing._codec.Keys.owns``)."""


class Read(NamedTuple):
    """What :func:`read` found: our pairs (keys lower-cased, values decoded, the last of a key
    wins) and the query string without them (the very same string when none were found; ``""``
    when nothing of the caller's is left)."""

    pairs: dict[str, str]
    rest: str


def is_valid(query: str) -> bool:
    """True when SageMaker accepts *query* as a ModelQueryString."""
    return len(query) <= MAX_LENGTH and _QUERY.fullmatch(query) is not None


def encode_value(value: str) -> str:
    """Percent-encode every character of *value* but the unreserved ones (UTF-8 first)."""
    return quote(value, safe="")


def merge(
    query: str | None,
    pairs: Sequence[tuple[str, str]],
    owns: Owns,
    drop_order: Sequence[str] = (),
) -> tuple[str | None, str | None]:
    """Merge encoded *pairs* into *query*; return ``(merged, None)`` or ``(None, reason)``.

    Earlier pairs whose lower-cased key *owns* claims are replaced, the caller's own pairs keep
    their order, ours go after them, joined by ``&``. A pair of ours that the API's pattern
    would refuse (an empty value, a key with other characters) is left out. Over budget the
    keys in *drop_order* are dropped one by one; the value is never cut. A *query* that
    SageMaker would refuse is left for SageMaker to refuse, untouched.
    """
    prefix = ""
    if query:
        if not is_valid(query):
            return None, SKIP_INVALID
        kept = [token for token in query.split("&") if not owns(token.partition("=")[0].lower())]
        prefix = "&".join(kept)
    ours = [
        (key, value)
        for key, value in pairs
        if _KEY.fullmatch(key) is not None and _VALUE.fullmatch(value) is not None
    ]
    if not ours:
        return None, SKIP_NOTHING
    room = MAX_LENGTH - len(prefix) - (1 if prefix else 0)
    dropped: set[str] = set()
    for drop in (None, *drop_order):
        if drop is not None:
            dropped.add(drop)
        text = "&".join(f"{key}={value}" for key, value in ours if key not in dropped)
        if not text:
            break
        if len(text) <= room:
            return (f"{prefix}&{text}" if prefix else text), None
    return None, SKIP_BUDGET


def read(query: str, owns: Owns) -> Read:
    """Our pairs in *query* and the query string without them, in one pass.

    Lenient: a container may be called with a query string no API checked (a local runtime, a
    hand-made WebSocket client), so tokens that are not pairs stay the caller's as they are.
    """
    if not query or "=" not in query:
        return Read({}, query)
    pairs: dict[str, str] = {}
    kept: list[str] = []
    for token in query.split("&"):
        key, sign, value = token.partition("=")
        lowered = key.lower()
        if sign and owns(lowered):
            pairs[lowered] = decode_value(value)
        else:
            kept.append(token)
    if not pairs:
        return Read({}, query)
    return Read(pairs, "&".join(kept))
