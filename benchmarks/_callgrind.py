"""Instruction counts from valgrind's callgrind, and the per-operation arithmetic."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

_TOTALS = re.compile(r"^(?:totals|summary):\s*(\d+)", re.MULTILINE)


def valgrind() -> str | None:
    """The path of ``valgrind`` on PATH, or None."""
    return shutil.which("valgrind")


def version(executable: str) -> str:
    """``valgrind --version``, e.g. ``valgrind-3.19.0``."""
    done = subprocess.run(
        [executable, "--version"], capture_output=True, text=True, check=False, timeout=30
    )
    return done.stdout.strip() or "valgrind (unknown version)"


def parse_totals(text: str) -> int:
    """The total instruction count of a callgrind output file's text.

    ``totals:`` and ``summary:`` carry the same number (the event ``Ir`` is the first and, with
    the default options, the only one); ValueError when neither is there.
    """
    match = _TOTALS.search(text)
    if match is None:
        raise ValueError("no 'totals:' or 'summary:' line in the callgrind output")
    return int(match.group(1))


def count(
    command: Sequence[str],
    out_file: Path,
    *,
    executable: str = "valgrind",
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> int:
    """Run *command* under callgrind, write its profile to *out_file*, return its total
    instruction count. CalledProcessError (with the output) when the command fails."""
    subprocess.run(
        [
            executable,
            "--tool=callgrind",
            f"--callgrind-out-file={out_file}",
            # Child processes are not ours to count.
            "--trace-children=no",
            *command,
        ],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=timeout,
    )
    return parse_totals(out_file.read_text(encoding="utf-8", errors="replace"))


def per_op(total_1: int, n_1: int, total_2: int, n_2: int) -> float:
    """Instructions per operation from two runs that differ only in their operation count:
    ``(I(N2) - I(N1)) / (N2 - N1)``, so start-up and warm-up cancel out."""
    if n_2 == n_1:
        raise ValueError("the two runs need different operation counts")
    return (total_2 - total_1) / (n_2 - n_1)
