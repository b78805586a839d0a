"""Instruction counts from valgrind's callgrind, and the per-unit arithmetic.

A plan runs under ``valgrind --tool=callgrind --instr-atstart=no``: nothing is counted (and the
start-up runs several times faster) until a configuration, after its warm-up, turns
instrumentation on through ``vgdb``. It then calls the marker function before, between and
after its two measured stretches of N1 and N2 units; ``--dump-before=<marker>`` makes callgrind
write the counts of each stretch to its own file, ``callgrind.<pid>.<k>``. The first file
holds what ran between turning instrumentation on and the first marker, the second N1 units,
the third N2 units.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

# The C function behind ``os.getppid``: called only by the scenario, between stretches.
MARKER = "getppid"
STRETCHES = 3
_TOTALS = re.compile(r"^(?:totals|summary):\s*(\d+)", re.MULTILINE)


def valgrind() -> str | None:
    """The path of ``valgrind`` on PATH, or None."""
    return shutil.which("valgrind")


def vgdb(executable: str) -> str | None:
    """The path of ``vgdb``, beside *executable* or on PATH, or None."""
    beside = Path(executable).with_name("vgdb")
    if beside.is_file():
        return str(beside)
    return shutil.which("vgdb")


def version(executable: str) -> str:
    """``valgrind --version``, e.g. ``valgrind-3.19.0``."""
    done = subprocess.run(
        [executable, "--version"], capture_output=True, text=True, check=False, timeout=30
    )
    return done.stdout.strip() or "valgrind (unknown version)"


def command(executable: str, out_dir: Path, program: Sequence[str]) -> list[str]:
    """*program* under callgrind, counting only from ``instrumentation on``, its counts in
    *out_dir*. The configurations are forked children (so callgrind follows children: the
    gdbserver that vgdb talks to is started in a child only then); vgdb itself runs natively.
    """
    return [
        executable,
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--dump-before={MARKER}",
        "--trace-children=yes",
        "--trace-children-skip=*/vgdb",
        f"--callgrind-out-file={out_dir / 'callgrind.%p'}",
        *program,
    ]


def parse_totals(text: str) -> int:
    """The total instruction count of a callgrind output file's text.

    ``totals:`` and ``summary:`` carry the same number (the event ``Ir`` is the first and, with
    the default options, the only one); ValueError when neither is there.
    """
    match = _TOTALS.search(text)
    if match is None:
        raise ValueError("no 'totals:' or 'summary:' line in the callgrind output")
    return int(match.group(1))


def stretch_files(out_dir: Path, pid: int) -> list[Path]:
    """The files of the stretches process *pid* dumped, in order."""
    files = []
    while (path := out_dir / f"callgrind.{pid}.{len(files) + 1}").exists():
        files.append(path)
    return files


def stretches(out_dir: Path, pid: int) -> list[int]:
    """The instruction counts of the stretches of process *pid*; ValueError unless there are
    exactly three (another call of the marker inside a stretch would split it)."""
    files = stretch_files(out_dir, pid)
    if len(files) != STRETCHES:
        raise ValueError(
            f"{len(files)} callgrind dumps instead of {STRETCHES}: was {MARKER}() called by the "
            "configuration itself, or instrumentation not turned on?"
        )
    return [parse_totals(path.read_text(encoding="utf-8", errors="replace")) for path in files]


def per_op(total_1: int, n_1: int, total_2: int, n_2: int) -> float:
    """Instructions per unit from two stretches that differ only in their unit count:
    ``(I(N2) - I(N1)) / (N2 - N1)``, so what each stretch pays once cancels out."""
    if n_2 == n_1:
        raise ValueError("the two stretches need different unit counts")
    return (total_2 - total_1) / (n_2 - n_1)
