"""Benchmark sm_tracing's hot paths against a bare call, an SDK floor and upstream OpenTelemetry.

    python benchmarks/run.py [--quick] [--no-valgrind] [--only client|container|codec|memory]

Each configuration runs in a fresh process (``benchmarks/scenario.py``). Instructions per
operation come from callgrind, as ``(I(N2) - I(N1)) / (N2 - N1)`` over two runs that differ only
in their operation count; wall-clock is the median of repeats, without valgrind. The table
says for each target whether it is MET; the exit status is non-zero only when a scenario
crashed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _callgrind, _report, _scenarios

SCENARIO = str(Path(__file__).resolve().with_name("scenario.py"))
TIMEOUT = 1800.0


def scenario_env() -> dict[str, str]:
    """The environment of every scenario: the same for all, whatever the caller's shell has."""
    env = {
        key: value
        for key, value in os.environ.items()
        # A propagator, sampler or exporter chosen in the shell would change what is measured.
        if not key.startswith(("OTEL_", "SM_TRACING_", "AWS_"))
    }
    env.update(
        PYTHONHASHSEED="0",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


def _command(config: str, n: int, warmup: int, repeat: int = 0) -> list[str]:
    command = [sys.executable, SCENARIO, config, str(n), "--warmup", str(warmup)]
    if repeat:
        command += ["--repeat", str(repeat)]
    return command


def _failure(exc: BaseException) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        # valgrind's own lines start with "==pid=="; the scenario's traceback is what says why.
        lines = (exc.stderr or exc.stdout or "").strip().splitlines()
        tail = [line for line in lines if not line.startswith("==")][-1:]
        return f"crashed (exit {exc.returncode}): " + "".join(tail).strip()
    if isinstance(exc, subprocess.TimeoutExpired):
        return f"timed out after {exc.timeout:.0f} s"
    return f"crashed: {type(exc).__name__}: {exc}"


def _run_json(command: list[str], env: dict[str, str]) -> dict[str, object]:
    done = subprocess.run(
        command, capture_output=True, text=True, check=True, env=env, timeout=TIMEOUT
    )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def missing(config: str) -> str | None:
    """Why *config* cannot run yet (the module it needs is absent), or None."""
    module = _scenarios.REQUIRES.get(config)
    if module is not None and importlib.util.find_spec(module) is None:
        return f"not available: {module} is missing"
    return None


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure_wall(
    groups: Sequence[_report.Group],
    quick: bool,
    repeat: int,
    env: dict[str, str],
    results: _report.Results,
) -> None:
    """Median seconds per operation of each configuration, one process at a time.

    The repeats go round the configurations of a group in turn, so a change in the machine's
    load during the run falls on all of them alike rather than on one.
    """
    for group in groups:
        n = group.quick_wall_n if quick else group.wall_n
        seconds: dict[str, list[float]] = {}
        _progress(f"wall-clock  {group.name:<20} {repeat} rounds of {n:,}")
        for _ in range(max(repeat, 1)):
            for config in group.configs:
                if config in results.problems:
                    continue
                try:
                    result = _run_json(_command(config, n, group.warmup, 1), env)
                except Exception as exc:
                    results.problems[config] = _failure(exc)
                    continue
                per_op = result["seconds_per_op"]
                assert isinstance(per_op, list)
                seconds.setdefault(config, []).extend(per_op)
        for config, values in seconds.items():
            if config not in results.problems:
                results.wall_seconds[config] = _report.median(values)


def measure_instructions(
    groups: Sequence[_report.Group],
    results: _report.Results,
    *,
    quick: bool,
    jobs: int,
    executable: str,
    out_dir: Path,
    env: dict[str, str],
) -> None:
    """Instructions per operation of each configuration, *jobs* callgrind runs at a time."""
    runs: list[tuple[_report.Group, str, int]] = []
    for group in groups:
        counts = group.quick_counts if quick else group.counts
        for config in group.configs:
            if config not in results.problems:
                runs += [(group, config, n) for n in counts]
    # Longest first, so the workers finish together.
    runs.sort(key=lambda run: -run[2] * run[0].weight)

    def one(run: tuple[_report.Group, str, int]) -> tuple[str, int, int | str]:
        group, config, n = run
        _progress(f"callgrind   {config:<20} N={n:,}")
        out_file = out_dir / f"callgrind.{config}.{n}.out"
        try:
            total = _callgrind.count(
                _command(config, n, group.warmup),
                out_file,
                executable=executable,
                env=env,
                timeout=TIMEOUT,
            )
        except Exception as exc:
            return config, n, _failure(exc)
        return config, n, total

    totals: dict[str, dict[int, int]] = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for config, n, total in pool.map(one, runs):
            if isinstance(total, str):
                results.problems[config] = total
            else:
                totals.setdefault(config, {})[n] = total
    for group in groups:
        n_1, n_2 = group.quick_counts if quick else group.counts
        for config in group.configs:
            found = totals.get(config, {})
            if config not in results.problems and n_1 in found and n_2 in found:
                results.instructions[config] = _callgrind.per_op(found[n_1], n_1, found[n_2], n_2)


def measure_memory(quick: bool, env: dict[str, str]) -> tuple[int, int | None, int | None, str]:
    """Calls made, RSS in KiB after the warm-up and after the calls, and a problem if any."""
    calls = _report.MEMORY_QUICK_CALLS if quick else _report.MEMORY_CALLS
    problem = missing("client-ours")
    if problem is not None:
        return calls, None, None, problem
    _progress(f"memory      client-ours          {calls:,} calls")
    try:
        result = _run_json(_command("memory", calls, _report.MEMORY_WARMUP), env)
    except Exception as exc:
        return calls, None, None, _failure(exc)
    before, after = result["rss_before_kib"], result["rss_after_kib"]
    assert isinstance(before, int) and isinstance(after, int)
    return calls, before, after, ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument("--no-valgrind", action="store_true", help="wall-clock only")
    parser.add_argument(
        "--only",
        action="append",
        choices=_report.GROUP_NAMES,
        help="run only this part (may be repeated)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="callgrind runs at a time (2)")
    parser.add_argument("--repeat", type=int, default=5, help="wall-clock repeats (5)")
    parser.add_argument(
        "--keep-profiles",
        type=Path,
        metavar="DIR",
        help="keep the callgrind output files here, for callgrind_annotate",
    )
    args = parser.parse_args(argv)
    only = set(args.only or _report.GROUP_NAMES)
    groups = [group for group in _report.GROUPS if group.name in only]

    executable = None
    valgrind_note = "not used (--no-valgrind)"
    if not args.no_valgrind:
        executable = _callgrind.valgrind()
        if executable is None:
            valgrind_note = "valgrind NOT FOUND on PATH: wall-clock only"
            print(
                "valgrind is not on PATH, so there are no instruction counts: install it "
                "(e.g. `apt-get install valgrind`) or pass --no-valgrind. Wall-clock only.",
                file=sys.stderr,
            )
        else:
            valgrind_note = _callgrind.version(executable)

    env = scenario_env()
    results = _report.Results()
    for group in groups:
        for config in group.configs:
            problem = missing(config)
            if problem is not None:
                results.problems[config] = problem

    started = time.monotonic()
    # Wall-clock first and alone, so no callgrind run of ours competes for the CPU.
    measure_wall(groups, args.quick, args.repeat, env, results)
    memory = measure_memory(args.quick, env) if "memory" in only else None
    if executable is not None and groups:
        with tempfile.TemporaryDirectory(prefix="sm-tracing-bench-") as scratch:
            out_dir = args.keep_profiles or Path(scratch)
            out_dir.mkdir(parents=True, exist_ok=True)
            measure_instructions(
                groups,
                results,
                quick=args.quick,
                jobs=max(args.jobs, 1),
                executable=executable,
                out_dir=out_dir,
                env=env,
            )

    print(
        f"sm_tracing benchmarks: Python {platform.python_version()} on {platform.machine()}, "
        f"{valgrind_note}, {_scenarios.PROCESSOR}, default propagators"
        f"{', quick' if args.quick else ''}; {time.monotonic() - started:.0f} s"
    )
    print("instructions per operation (instr) and microseconds (wall us), added over bare\n")
    for group in groups:
        counts = group.quick_counts if args.quick else group.counts
        wall_n = group.quick_wall_n if args.quick else group.wall_n
        print(_report.group_table(group, results, counts, wall_n))
        print()
    if memory is not None:
        print(_report.memory_table(*memory))
        print()

    crashed = [
        config for config, problem in results.problems.items() if "not available" not in problem
    ]
    if memory is not None and memory[3] and "not available" not in memory[3]:
        crashed.append("memory")
    if crashed:
        print(f"crashed: {', '.join(crashed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
