"""Benchmark sm_tracing's hot paths against a bare call, an SDK floor and upstream OpenTelemetry.

    python benchmarks/run.py [--quick] [--no-valgrind] [--only GROUP] [--jobs N] [--repeat R]

Each configuration runs in its own process, forked from one that imported what they share
(``benchmarks/scenario.py --plan``). Instructions per unit come from callgrind, as
``(I(N2) - I(N1)) / (N2 - N1)`` over two stretches of one process that differ only in their
unit count; wall-clock is the median of repeats, without valgrind, printed for information.
The table says for each target whether it is MET; the exit status is non-zero only when a
configuration crashed.

The ``proxy`` part crosses processes (a caller, ``sm-tracing proxy``, a model server), so it
measures itself (``benchmarks/_proxy_scenarios.py``), last, once the other parts are done.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _callgrind, _proxy_scenarios, _report, _scenarios

SCENARIO = str(Path(__file__).resolve().with_name("scenario.py"))
TIMEOUT = 3600.0
WALL_REPEATS = 3
# Rough speeds of this kind of machine, only to plan the runs and estimate the time left; the
# estimate corrects itself from the runs already done.
_NATIVE_RATE = 1.5e9
_UNINSTRUMENTED_RATE = 2.5e8
_CALLGRIND_RATE = 4e7
# Seconds for a plan's process to import what the configurations share, and load it.
WORKER_START = {"wall": 1.0, "memory": 1.0, "callgrind": 6.0}
# The part that measures itself in processes of its own, after the others.
PROXY = "proxy"
PART_NAMES = (*_report.GROUP_NAMES, PROXY)


def scenario_env() -> dict[str, str]:
    """The environment of every scenario: the same for all, whatever the caller's shell has."""
    env = {
        key: value
        for key, value in os.environ.items()
        # A propagator, sampler or exporter chosen in the shell would change what is measured,
        # as would OpenLLMetry's settings (TRACELOOP_*): every tool runs with its defaults.
        if not key.startswith(("OTEL_", "SM_TRACING_", "AWS_", "TRACELOOP_"))
    }
    env.update(
        PYTHONHASHSEED="0",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


@dataclass(frozen=True)
class Run:
    """One configuration measured once: N1 and N2 units after a warm-up."""

    group: _report.Group
    config: str
    counts: tuple[int, int]
    warmup: int
    repeat: int = 1
    sample: int = 0

    def plan(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "counts": list(self.counts),
            "warmup": self.warmup,
            "repeat": self.repeat,
            "sample": self.sample,
        }

    def estimate(self, mode: str) -> float:
        """Seconds this run should take on a free core, roughly."""
        weight = self.group.weight
        units = sum(self.counts)
        if mode == "callgrind":
            return (
                0.5 + self.warmup * weight / _UNINSTRUMENTED_RATE + units * weight / _CALLGRIND_RATE
            )
        return 0.05 + (self.warmup + self.repeat * units) * weight / _NATIVE_RATE


class Progress:
    """Progress on stderr: runs done, time spent and an estimate of the time left."""

    def __init__(self, total: float) -> None:
        self.total = max(total, 1e-9)
        self.done = 0.0
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def credit(self, estimate: float) -> None:
        """Work of *estimate* planned seconds is done, with nothing to show for it."""
        with self._lock:
            self.done = min(self.done + estimate, self.total)

    def step(self, what: str, estimate: float) -> None:
        """One run of *estimate* planned seconds is done."""
        with self._lock:
            self.done = min(self.done + estimate, self.total)
            elapsed = time.monotonic() - self.started
            left = elapsed * (self.total - self.done) / max(self.done, 1e-9)
            print(
                f"[{100 * self.done / self.total:3.0f}%] {what:<48} "
                f"{_clock(elapsed)} elapsed, about {_clock(left)} left",
                file=sys.stderr,
                flush=True,
            )


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds + 0.5), 60)
    return f"{minutes}:{seconds:02d}"


def _worker(
    command: list[str],
    runs: Sequence[Run],
    mode: str,
    on_result: Callable[[Run, dict[str, Any]], None],
    *,
    env: dict[str, str],
    scratch: Path,
    rounds: int = 1,
    jobs: int = 1,
    vgdb: str | None = None,
    progress: Progress | None = None,
) -> str | None:
    """Run *runs* in one ``scenario.py --plan`` process started with *command*, handing each
    result line to *on_result*; the tail of its stderr when it failed, else None. The start of
    the process is credited to *progress* with its first line."""
    plan = {
        "mode": mode,
        "vgdb": vgdb,
        "rounds": rounds,
        "jobs": jobs,
        "runs": [run.plan() for run in runs],
    }
    handle, name = tempfile.mkstemp(prefix="plan-", suffix=".json", dir=scratch)
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        json.dump(plan, file)
    errors = scratch / (Path(name).stem + ".stderr")
    with errors.open("w+", encoding="utf-8", errors="replace") as stderr:
        process = subprocess.Popen(
            [*command, SCENARIO, "--plan", name],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
            start_new_session=True,
        )
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

        timer = threading.Timer(TIMEOUT, kill)
        timer.start()
        try:
            assert process.stdout is not None
            for index, line in enumerate(process.stdout):
                if index == 0 and progress is not None:
                    progress.credit(WORKER_START[mode])
                result = json.loads(line)
                on_result(_run_of(runs, result), result)
            status = process.wait()
        finally:
            timer.cancel()
        if status == 0:
            return None
        if timed_out.is_set():
            return f"timed out after {TIMEOUT:.0f} s"
        stderr.seek(0)
        # valgrind's own lines start with "==pid=="; the scenario's traceback says why.
        lines = [line for line in stderr.read().splitlines() if not line.startswith("==")]
        tail = "".join(lines[-1:]).strip()
        if status < 0:
            return f"crashed (signal {-status}): {tail}"
        return f"crashed (exit {status}): {tail}"


def _run_of(runs: Sequence[Run], result: dict[str, Any]) -> Run:
    sample = result.get("sample", 0)
    return next(run for run in runs if (run.config, run.sample) == (result["config"], sample))


def _problem(result: dict[str, Any]) -> str | None:
    error = result.get("error")
    return None if error is None else f"crashed: {error}"


def _plan(
    groups: Iterable[_report.Group], quick: bool, wall: bool, skip: Iterable[str]
) -> list[Run]:
    """A run of each configuration of *groups*, less those to *skip*."""
    skipped = set(skip)
    repeat = WALL_REPEATS if wall else 1
    return [
        Run(group, config, group.sizes(quick, wall), group.warmup, repeat, sample)
        for group in groups
        for config in group.configs
        if config not in skipped
        for sample in range(1 if wall else group.sampled(quick))
    ]


def measure_wall(
    runs: Sequence[Run],
    results: _report.Results,
    progress: Progress,
    *,
    rounds: int,
    env: dict[str, str],
    scratch: Path,
) -> None:
    """Median seconds per unit of each configuration, one process at a time.

    The rounds go through the configurations in turn, so a change in the machine's load
    during the run falls on all of them alike rather than on one.
    """
    if not runs:
        return
    seconds: dict[str, list[float]] = {}

    def on_result(run: Run, result: dict[str, Any]) -> None:
        progress.step(f"wall-clock  {run.config}", run.estimate("wall"))
        problem = _problem(result)
        if problem is not None:
            results.problems.setdefault(run.config, problem)
            return
        n_1, n_2 = run.counts
        for first, second in result["seconds"]:
            seconds.setdefault(run.config, []).append((second - first) / (n_2 - n_1))

    failure = _worker(
        [sys.executable],
        runs,
        "wall",
        on_result,
        env=env,
        scratch=scratch,
        rounds=rounds,
        progress=progress,
    )
    for run in runs:
        if failure is not None and run.config not in seconds:
            results.problems.setdefault(run.config, failure)
        if run.config in seconds and run.config not in results.problems:
            results.wall_seconds[run.config] = _report.median(seconds[run.config])


def measure_instructions(
    runs: Sequence[Run],
    results: _report.Results,
    progress: Progress,
    *,
    jobs: int,
    executable: str,
    vgdb: str,
    scratch: Path,
    keep: Path | None,
    env: dict[str, str],
) -> None:
    """Instructions per unit of each configuration, *jobs* configurations at once."""
    if not runs:
        return

    def on_result(run: Run, result: dict[str, Any]) -> None:
        progress.step(f"callgrind   {run.config}", run.estimate("callgrind"))
        problem = _problem(result)
        pid = int(result.get("pid", 0))
        value = None
        try:
            if problem is None:
                totals = _callgrind.stretches(scratch, pid)
                n_1, n_2 = run.counts
                value = _callgrind.per_op(totals[1], n_1, totals[2], n_2)
                if keep is not None:
                    sample = f".sample{run.sample}" if run.group.samples > 1 else ""
                    for index, n in ((1, n_1), (2, n_2)):
                        source = scratch / f"callgrind.{pid}.{index + 1}"
                        shutil.move(source, keep / f"callgrind.{run.config}.{n}{sample}.out")
        except (OSError, ValueError) as exc:
            problem = f"crashed: {exc}"
        for path in _callgrind.stretch_files(scratch, pid):
            path.unlink()
        if problem is not None or value is None:
            results.problems.setdefault(run.config, problem or "not measured")
        else:
            values.setdefault(run.config, []).append(value)

    values: dict[str, list[float]] = {}
    # Longest first, so the last to end are short.
    ordered = sorted(runs, key=lambda run: -run.estimate("callgrind"))
    failure = _worker(
        _callgrind.command(executable, scratch, [sys.executable]),
        ordered,
        "callgrind",
        on_result,
        env=env,
        scratch=scratch,
        jobs=jobs,
        vgdb=vgdb,
        progress=progress,
    )
    for config, found in values.items():
        if config not in results.problems:
            results.instructions[config] = _report.median(found)
    if failure is not None:
        for run in runs:
            if run.config not in results.instructions:
                results.problems.setdefault(run.config, failure)


@dataclass
class Memory:
    """The memory check: calls made after a warm-up, RSS before and after, or a problem."""

    calls: int
    warmup: int
    before_kib: int | None = None
    after_kib: int | None = None
    problem: str = ""

    def run(self) -> Run:
        group = _report.Group(
            name="memory", title="", unit="call", configs=(), targets=(), weight=2_600_000
        )
        return Run(group, "client-ours", (0, self.calls), self.warmup)


def measure_memory(memory: Memory, env: dict[str, str], progress: Progress, scratch: Path) -> None:
    """Resident memory of a process making instrumented calls, after the warm-up and after."""

    def on_result(run: Run, result: dict[str, Any]) -> None:
        progress.step(f"memory      {memory.calls:,} calls", run.estimate("memory"))
        memory.problem = _problem(result) or ""
        memory.before_kib = result.get("rss_before_kib")
        memory.after_kib = result.get("rss_after_kib")

    failure = _worker(
        [sys.executable],
        [memory.run()],
        "memory",
        on_result,
        env=env,
        scratch=scratch,
        progress=progress,
    )
    if failure is not None and not memory.problem:
        memory.problem = failure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small counts: about a minute")
    parser.add_argument("--no-valgrind", action="store_true", help="wall-clock only")
    parser.add_argument(
        "--only",
        action="append",
        choices=PART_NAMES,
        help="run only this part (may be repeated)",
    )
    parser.add_argument(
        "--jobs", type=int, default=2, help="configurations under callgrind at a time (2)"
    )
    parser.add_argument(
        "--repeat", type=int, help="wall-clock rounds through the configurations (3, quick 1)"
    )
    parser.add_argument(
        "--keep-profiles",
        type=Path,
        metavar="DIR",
        help="keep the callgrind files of each stretch here, for callgrind_annotate",
    )
    args = parser.parse_args(argv)
    only = set(args.only or PART_NAMES)
    groups = [group for group in _report.GROUPS if group.name in only]
    rounds = max(args.repeat if args.repeat is not None else (1 if args.quick else 3), 1)

    executable = vgdb = None
    valgrind_note = "not used (--no-valgrind)"
    if not args.no_valgrind:
        executable = _callgrind.valgrind()
        vgdb = _callgrind.vgdb(executable) if executable is not None else None
        if executable is None or vgdb is None:
            executable = None
            valgrind_note = "valgrind NOT FOUND on PATH: wall-clock only, no verdicts"
            print(
                "valgrind (with vgdb) is not on PATH, so there are no instruction counts and no "
                "verdicts: install it (e.g. `apt-get install valgrind`) or pass --no-valgrind.",
                file=sys.stderr,
            )
        else:
            valgrind_note = _callgrind.version(executable)

    env = scenario_env()
    skipped: dict[str, str] = {}
    for group in groups:
        for config in group.configs:
            reason = _scenarios.unavailable(config)
            if reason is not None:
                skipped[config] = reason

    # A quick run with instruction counts leaves wall-clock out: it needs long runs to mean
    # anything on a busy machine, and the verdicts do not depend on it.
    quick_only = bool(args.quick and executable)
    wall_runs = [] if quick_only else _plan(groups, args.quick, True, skipped)
    callgrind_runs = _plan(groups, args.quick, False, skipped) if executable else []
    memory = None
    if "memory" in only:
        memory = Memory(
            _report.MEMORY_QUICK_CALLS if args.quick else _report.MEMORY_CALLS,
            _report.MEMORY_QUICK_WARMUP if args.quick else _report.MEMORY_WARMUP,
        )
    planned = sum(run.estimate("wall") for run in wall_runs) * rounds
    planned += sum(run.estimate("callgrind") for run in callgrind_runs)
    planned += WORKER_START["wall"] if wall_runs else 0.0
    planned += WORKER_START["callgrind"] if callgrind_runs else 0.0
    if memory is not None:
        planned += memory.run().estimate("memory") + WORKER_START["memory"]
    progress = Progress(planned)

    results = _report.Results()
    with tempfile.TemporaryDirectory(prefix="sm-tracing-bench-") as directory:
        scratch = Path(directory)
        if args.keep_profiles is not None:
            args.keep_profiles.mkdir(parents=True, exist_ok=True)
        # Wall-clock first and alone, so no callgrind process competes for the CPU.
        measure_wall(wall_runs, results, progress, rounds=rounds, env=env, scratch=scratch)
        memory_thread = None
        if memory is not None:
            # Memory is not timed: it can share the machine with callgrind.
            memory_thread = threading.Thread(
                target=measure_memory, args=(memory, env, progress, scratch)
            )
            memory_thread.start()
        if executable is not None and vgdb is not None:
            measure_instructions(
                callgrind_runs,
                results,
                progress,
                jobs=max(args.jobs, 1),
                executable=executable,
                vgdb=vgdb,
                scratch=scratch,
                keep=args.keep_profiles,
                env=env,
            )
        if memory_thread is not None:
            memory_thread.join()

    proxy_results: dict[str, _proxy_scenarios.Result] = {}
    proxy_text = ""
    if PROXY in only:
        # Last and alone: its wall-clock rounds would suffer from callgrind beside them.
        print("proxy       measuring (its own processes, no progress shown)", file=sys.stderr)
        proxy_results, proxy_text = _proxy_scenarios.run(
            quick=args.quick,
            # valgrind without vgdb counts nothing here either: the proxy then gets wall-clock.
            use_valgrind=executable is not None,
        )

    print(
        f"sm_tracing benchmarks: Python {platform.python_version()} on {platform.machine()}, "
        f"{valgrind_note}, {_scenarios.PROCESSOR}, default propagators"
        f"{', quick' if args.quick else ''}; {time.monotonic() - progress.started:.0f} s"
    )
    print(
        "Per unit: instructions (instr, callgrind) and microseconds (wall us, median); "
        "'added' is over the group's bare row.\nVerdicts are on instructions only; "
        "wall-clock ratios are information"
        + (" (not measured in a quick run: run without --quick)." if quick_only else ".")
        + "\n"
    )
    for group in groups:
        print(
            _report.group_table(
                group,
                results,
                group.sizes(args.quick, False) if callgrind_runs else None,
                group.sizes(args.quick, True) if wall_runs else None,
                skipped,
                samples=group.sampled(args.quick),
            )
        )
        print()
    if memory is not None:
        print(
            _report.memory_table(
                memory.calls, memory.warmup, memory.before_kib, memory.after_kib, memory.problem
            )
        )
        print()

    if proxy_text:
        print(proxy_text)
        print()

    crashed = sorted(results.problems)
    if memory is not None and memory.problem:
        crashed.append("memory")
    crashed.extend(f"{PROXY}-{config}" for config, result in proxy_results.items() if result.errors)
    if crashed:
        print(f"crashed: {', '.join(crashed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
