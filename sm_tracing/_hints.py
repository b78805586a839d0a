"""The install line sm_tracing prints when an optional dependency is missing."""

from __future__ import annotations

DISTRIBUTION = "sm-tracing"


def install_hint(*extras: str) -> str:
    """The command that installs sm-tracing with *extras*, from PyPI and from a clone.

    ``install_hint("flask")`` is ``pip install 'sm-tracing[flask]' (from a clone: pip install
    -e '.[flask]')``: both lines, since one of them fails wherever the package is not on the
    index it is looked up in, or the current folder is not a clone.
    """
    # Quoted, so that zsh does not read the brackets as a glob.
    suffix = f"[{','.join(extras)}]" if extras else ""
    return f"pip install '{DISTRIBUTION}{suffix}' (from a clone: pip install -e '.{suffix}')"
