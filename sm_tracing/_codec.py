"""The CustomAttributes string: parse, merge, strip, budget.

Pure string work, no OpenTelemetry and no botocore, so it can be tested exhaustively.

A value is either a list of ``key=value`` pairs joined by ``;`` or ``,`` (JumpStart's
``accept_eula=true``, DJL's properties, TensorFlow Serving's ``tfs-model-name=m``) or an
*opaque* value that the container reads whole (a bare UUID, JSON, a BentoML API name).
Pairs are merged into lists and leave opaque values alone unless the caller insists.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from functools import lru_cache
from urllib.parse import unquote

MAX_LENGTH = 1024
"""SageMaker's limit on CustomAttributes, in characters."""

# A key we recognise as the start of a pair: what real users put there (accept_eula,
# tfs-model-name, x-starting-token, request_id) and every propagator field name.
_KEY = re.compile(r"[A-Za-z0-9_.:/+-]+")
# Characters a value of ours may carry as they are: visible ASCII less the separators,
# the pair sign and the escape sign.
_NEEDS_ESCAPE = re.compile(r"[^\x21-\x24\x26-\x2b\x2d-\x3a\x3c\x3e-\x7e]")

SKIP_INVALID = "not visible ASCII or longer than 1024 characters"
SKIP_OPAQUE = "not a key=value list"
SKIP_BUDGET = "no room within 1024 characters"


def is_valid(value: str) -> bool:
    """True when *value* is something SageMaker accepts: at most 1024 visible ASCII chars."""
    return len(value) <= MAX_LENGTH and value.isascii() and value.isprintable()


def encode_value(value: str) -> str:
    """Percent-encode what would break a pair (``%`` ``,`` ``;`` ``=``, spaces, non-ASCII)."""
    if _NEEDS_ESCAPE.search(value) is None:
        return value
    return _NEEDS_ESCAPE.sub(_escape, value)


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


def split(value: str) -> tuple[str, list[str], bool]:
    """Split *value* into ``(separator, raw tokens, is_pair_list)``; tokens keep their spaces."""
    sep = separator(value)
    tokens = value.split(sep)
    return sep, tokens, _all_pairs(tokens)


def find(value: str, keys: Collection[str]) -> dict[str, str]:
    """The pairs of *value* whose lower-cased key is in *keys*, decoded; the last one wins.

    Lenient on purpose: a pair appended to an opaque value is still found.
    """
    found: dict[str, str] = {}
    for token in value.split(separator(value)):
        key, sign, rest = token.partition("=")
        if not sign or rest[:1] == "=":
            continue
        key = key.strip()
        lowered = key.lower()
        # Every key of ours is plain ASCII, so no regex is needed to vet the ones we keep.
        if lowered in keys and key.isascii():
            found[lowered] = decode_value(rest.strip())
    return found


def strip(value: str, keys: Collection[str]) -> str:
    """*value* without the pairs whose lower-cased key is in *keys*; the rest as it was."""
    lowered = value.lower()
    if not any(key in lowered for key in keys):
        return value
    sep = separator(value)
    tokens = value.split(sep)
    kept = [token for token in tokens if not _is_ours(token, keys)]
    if len(kept) == len(tokens):
        return value
    if kept and tokens[0][:1] != " ":
        # The first pair of ours went, so the caller's first token now leads: drop the
        # blank that followed the separator we removed.
        kept[0] = kept[0].lstrip(" ")
    return sep.join(kept)


def _is_ours(token: str, keys: Collection[str]) -> bool:
    key = _pair_key(token)
    return key is not None and key.lower() in keys


def merge(
    value: str | None,
    pairs: Sequence[tuple[str, str]],
    keys: frozenset[str],
    drop_order: Sequence[str] = (),
    *,
    opaque: bool = False,
) -> tuple[str | None, str | None]:
    """Merge encoded *pairs* into *value*; return ``(merged, None)`` or ``(None, reason)``.

    Earlier pairs whose key is in *keys* are replaced, the caller's own pairs keep their
    order and separator, ours go after them (before a trailing separator). Over budget, the
    keys in *drop_order* are dropped one by one; the value is never truncated. An opaque
    *value* is left alone unless *opaque* is true, when ours are appended with ``;``.
    """
    frame = _frame(value, keys, opaque)
    if isinstance(frame, str):
        return None, frame
    prefix, sep, suffix = frame
    room = MAX_LENGTH - len(prefix) - len(suffix)
    if len(pairs) == 1:  # the common case: a lone traceparent
        key, val = pairs[0]
        ours = f"{key}={val}"
        if len(ours) <= room:
            return prefix + ours + suffix, None
        return None, SKIP_BUDGET
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


@lru_cache(maxsize=512)
def _frame(value: str | None, keys: frozenset[str], opaque: bool) -> tuple[str, str, str] | str:
    """What goes before and after our pairs in *value*, and their separator; or why none can.

    Cached: callers send the same few values over and over, and parsing them is most of the
    cost of a merge.
    """
    if not value:
        return "", ";", ""
    if not is_valid(value):
        return SKIP_INVALID
    sep, tokens, is_list = split(value)
    if not is_list:
        if not opaque or not value.strip():
            return SKIP_OPAQUE
        sep, tokens = ";", [value]
    kept = [token for token in tokens if not _is_ours(token, keys)]
    # Ours go before a trailing separator, so parsers see the same shape as before.
    end = len(kept)
    while end and not kept[end - 1].strip():
        end -= 1
    prefix = sep.join(kept[:end]) + sep if end else ""
    suffix = sep + sep.join(kept[end:]) if end < len(kept) else ""
    return prefix, sep, suffix
