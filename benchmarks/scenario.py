"""Run configurations: ``python benchmarks/scenario.py CONFIG N`` or ``--plan PLAN``.

``CONFIG N`` builds one configuration, runs a warm-up and N units of work, and checks that they
did their work (a failed check exits non-zero): the form to profile by hand, e.g. under
``python -m cProfile``.

``--plan PLAN`` (a JSON file, as ``benchmarks/run.py`` writes it) imports what the
configurations share once, then measures each run of the plan in a child process forked for it
(``jobs`` at a time), so every configuration starts from the same state and pays only for
itself. One JSON line per run on stdout, as each ends. The modes:

- ``wall``: seconds for N1 then N2 units, ``repeat`` times;
- ``callgrind`` (the plan runs under ``valgrind --tool=callgrind --instr-atstart=no``): the
  child turns instrumentation on through ``vgdb`` after its warm-up, then calls the marker
  function before N1 units, between N1 and N2 units and after them; with
  ``--dump-before=<marker>`` callgrind writes the counts of each stretch to its own file;
- ``memory``: resident memory before and after N2 units.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import selectors
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script: make the repository importable, whatever the working directory.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _scenarios

# Called between the stretches measured; nothing else in a configuration calls it.
MARKER = os.getppid
VGDB_TIMEOUT = 60.0


def rss_kib() -> int:
    """This process's resident set size now, in KiB (the peak where /proc is missing)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def instrumentation_on(vgdb: str) -> None:
    """Ask callgrind, through ``vgdb``, to start counting this process's instructions."""
    process = subprocess.Popen(
        [vgdb, f"--pid={os.getpid()}", "instrumentation", "on"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + VGDB_TIMEOUT
    # Spin rather than wait: valgrind answers vgdb only while this process runs code.
    while process.poll() is None:
        if time.monotonic() > deadline:
            process.kill()
            break
    output = process.communicate()[0].decode(errors="replace").strip()
    if process.returncode != 0:
        raise _scenarios.ScenarioError(f"vgdb could not turn instrumentation on: {output}")


def measure(mode: str, run: dict[str, Any], vgdb: str | None) -> dict[str, Any]:
    """One run of the plan, in this process: the JSON-able result."""
    config = run["config"]
    n_1, n_2 = run["counts"]
    _scenarios.vary_history(config, run.get("sample", 0))
    scenario = _scenarios.build(config)
    try:
        calls = scenario.run(run["warmup"])
        result: dict[str, Any] = {"config": config, "sample": run.get("sample", 0)}
        if mode == "memory":
            gc.collect()
            result["rss_before_kib"] = rss_kib()
            calls += scenario.run(n_2)
            gc.collect()
            result["rss_after_kib"] = rss_kib()
        elif mode == "callgrind":
            if vgdb is None:
                raise ValueError("a callgrind plan names vgdb")
            # What the configuration built and warmed up stays alive throughout: out of the
            # collector's way too, so a full collection costs the same in every process.
            gc.collect()
            gc.freeze()
            instrumentation_on(vgdb)
            MARKER()
            calls += scenario.run(n_1)
            MARKER()
            calls += scenario.run(n_2)
            MARKER()
        else:
            seconds = []
            for _ in range(run.get("repeat", 1)):
                start = time.perf_counter()
                if n_1:
                    calls += scenario.run(n_1)
                middle = time.perf_counter()
                calls += scenario.run(n_2)
                seconds.append([middle - start if n_1 else 0.0, time.perf_counter() - middle])
            result["seconds"] = seconds
        scenario.check(calls)
        # The CPU time of this child since it was forked: what the run cost, for the estimates.
        result["cpu_seconds"] = time.process_time()
        return result
    finally:
        scenario.close()


class Child:
    """A forked child computing one result; a failure becomes ``{"error": ...}``."""

    def __init__(
        self, work: Callable[[], dict[str, Any]], run: dict[str, Any], round_number: int
    ) -> None:
        config = self.config = run["config"]
        self.sample = run.get("sample", 0)
        self.round = round_number
        sys.stdout.flush()
        sys.stderr.flush()
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            status = 0
            try:
                os.close(read_end)
                try:
                    result = {**work(), "pid": os.getpid()}
                except BaseException as exc:
                    traceback.print_exc()
                    error = f"{type(exc).__name__}: {exc}"
                    result = {"config": config, "sample": self.sample, "error": error}
                    status = 1
                with os.fdopen(write_end, "w") as pipe:
                    json.dump(result, pipe)
                sys.stderr.flush()
            finally:
                os._exit(status)
        os.close(write_end)
        self.pid = pid
        self.pipe = read_end
        self.text = b""

    def read(self) -> bool:
        """Read what the child wrote; True once it closed its end (it is done)."""
        chunk = os.read(self.pipe, 65536)
        self.text += chunk
        return not chunk

    def result(self) -> dict[str, Any]:
        """Reap the child: its result, or why it gave none."""
        os.close(self.pipe)
        _, status = os.waitpid(self.pid, 0)
        if self.text:
            result: dict[str, Any] = json.loads(self.text)
        else:
            result = {
                "config": self.config,
                "sample": self.sample,
                "pid": self.pid,
                "error": f"died ({_describe(status)})",
            }
        result["round"] = self.round
        return result


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"exit {os.waitstatus_to_exitcode(status)}"


def run_plan(plan: dict[str, Any]) -> None:
    """Measure every run of *plan*, ``rounds`` times over, ``jobs`` children at a time, printing
    a JSON line for each as it ends."""
    _scenarios.prepare(run["config"] for run in plan["runs"])
    # What is loaded now is shared by every child: leave it out of their collections.
    gc.collect()
    gc.freeze()
    mode, vgdb, jobs = plan["mode"], plan.get("vgdb"), max(plan.get("jobs", 1), 1)
    pending = [
        (round_number, run) for round_number in range(plan.get("rounds", 1)) for run in plan["runs"]
    ]
    running: dict[int, Child] = {}
    with selectors.DefaultSelector() as selector:
        while pending or running:
            while pending and len(running) < jobs:
                round_number, run = pending.pop(0)

                def work(run: dict[str, Any] = run) -> dict[str, Any]:
                    return measure(mode, run, vgdb)

                child = Child(work, run, round_number)
                running[child.pipe] = child
                selector.register(child.pipe, selectors.EVENT_READ)
            for key, _ in selector.select():
                child = running[key.fd]
                if child.read():
                    selector.unregister(key.fd)
                    del running[key.fd]
                    print(json.dumps(child.result()), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", choices=sorted(_scenarios.BUILDERS))
    parser.add_argument("n", nargs="?", type=int, help="units of work measured")
    parser.add_argument("--warmup", type=int, default=50, help="units of work before measuring")
    parser.add_argument("--plan", type=Path, help="a plan file written by benchmarks/run.py")
    args = parser.parse_args(argv)
    if args.plan is not None:
        run_plan(json.loads(args.plan.read_text(encoding="utf-8")))
        return 0
    if args.config is None or args.n is None:
        parser.error("give CONFIG and N, or --plan")
    scenario = _scenarios.build(args.config)
    try:
        calls = scenario.run(args.warmup)
        calls += scenario.run(args.n)
        scenario.check(calls)
    finally:
        scenario.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
