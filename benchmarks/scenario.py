"""Run one configuration in this process: ``python benchmarks/scenario.py CONFIG N``.

Builds the configuration, runs a warm-up, then N operations, then checks that they did their
work (a failed check exits non-zero). Under callgrind, two runs with different N give the cost
of one operation, start-up cancelling out. ``--repeat R`` times the N operations R times and
prints the seconds per operation of each repeat as JSON; ``memory`` as CONFIG runs N
instrumented client calls and prints the resident memory before and after, as JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: make the repository importable, whatever the working directory.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _scenarios


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


def run(config: str, n: int, warmup: int, repeat: int) -> dict[str, object]:
    """Run *config* as described in the module docstring; the JSON-able result."""
    memory = config == "memory"
    scenario = _scenarios.build("client-ours" if memory else config)
    try:
        op = scenario.op
        for _ in range(warmup):
            op()
        result: dict[str, object] = {"config": config, "n": n, "warmup": warmup}
        if memory:
            gc.collect()
            result["rss_before_kib"] = rss_kib()
            for _ in range(n):
                op()
            gc.collect()
            result["rss_after_kib"] = rss_kib()
        elif repeat:
            seconds = []
            for _ in range(repeat):
                start = time.perf_counter()
                for _ in range(n):
                    op()
                seconds.append((time.perf_counter() - start) / n)
            result["seconds_per_op"] = seconds
        else:
            for _ in range(n):
                op()
        scenario.check(warmup + n * max(repeat, 1))
        return result
    finally:
        scenario.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", choices=[*_scenarios.BUILDERS, "memory"])
    parser.add_argument("n", type=int, help="operations measured")
    parser.add_argument("--warmup", type=int, default=50, help="operations before measuring")
    parser.add_argument("--repeat", type=int, default=0, help="time N operations this often")
    args = parser.parse_args(argv)
    result = run(args.config, args.n, args.warmup, args.repeat)
    if args.repeat or args.config == "memory":
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
