"""What sm_tracing's commands show the user: the install line printed when an optional
dependency is missing, and the argument parser every ``sm-tracing`` command starts from."""

from __future__ import annotations

import argparse

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


def command_parser(command: str, description: str) -> argparse.ArgumentParser:
    """The parser of ``sm-tracing COMMAND``, its *description* shown as written."""
    return argparse.ArgumentParser(
        prog=f"sm-tracing {command}",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
