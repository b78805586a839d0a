"""Smoke tests of the benchmark command: scenarios run and check themselves, the arithmetic holds.

No timing is asserted here; ``python benchmarks/run.py`` measures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import _callgrind, _report, _scenarios, run  # noqa: E402

SCENARIO = str(ROOT / "benchmarks" / "scenario.py")
RUN = str(ROOT / "benchmarks" / "run.py")


@pytest.mark.parametrize("config", sorted(_scenarios.BUILDERS))
def test_scenario_runs_and_does_its_work(config: str) -> None:
    """Each configuration runs a few operations and its own check confirms it did its work."""
    scenario = _scenarios.build(config)
    try:
        for _ in range(3):
            scenario.op()
        scenario.check(3)
    finally:
        scenario.close()


@pytest.mark.parametrize("config", ["client-floor", "client-ours", "container-ours"])
def test_scenario_check_catches_missing_spans(config: str) -> None:
    """A check fails when fewer spans were exported than operations were run."""
    scenario = _scenarios.build(config)
    try:
        scenario.op()
        with pytest.raises(_scenarios.ScenarioError, match="spans for 2"):
            scenario.check(2)
    finally:
        scenario.close()


def test_uninstrument_restores_the_bare_call() -> None:
    """After the ours scenario closes, a new client sends CustomAttributes untouched."""
    _scenarios.build("client-ours").close()
    bare = _scenarios.build("client-bare")
    try:
        bare.op()
        bare.check(1)
    finally:
        bare.close()


def _scenario_json(*args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, SCENARIO, *args],
        capture_output=True,
        text=True,
        check=True,
        env=run.scenario_env(),
        timeout=120,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_scenario_script_times_repeats() -> None:
    """``scenario.py CONFIG N --repeat R`` prints R positive seconds-per-op as JSON."""
    result = _scenario_json("inject-ours", "20", "--warmup", "2", "--repeat", "3")
    seconds = result["seconds_per_op"]
    assert isinstance(seconds, list)
    assert len(seconds) == 3
    assert all(isinstance(value, float) and value > 0 for value in seconds)


def test_scenario_script_reports_memory() -> None:
    """``scenario.py memory N`` runs instrumented calls and prints RSS before and after."""
    result = _scenario_json("memory", "30", "--warmup", "5")
    assert result["config"] == "memory"
    assert isinstance(result["rss_before_kib"], int)
    assert isinstance(result["rss_after_kib"], int)
    assert result["rss_before_kib"] > 0


def test_scenario_script_fails_on_unknown_config() -> None:
    """An unknown configuration makes the scenario process exit non-zero."""
    done = subprocess.run(
        [sys.executable, SCENARIO, "no-such-config", "1"],
        check=False,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode != 0


@pytest.mark.parametrize(
    ("total_1", "n_1", "total_2", "n_2", "expected"),
    [
        (1_000_000 + 200 * 5_000, 200, 1_000_000 + 1200 * 5_000, 1200, 5_000.0),
        (7_000_000, 20, 7_000_000 + 100 * 2_607_112, 120, 2_607_112.0),
        (500, 10, 500, 30, 0.0),
        (900, 10, 300, 40, -20.0),
    ],
)
def test_per_op_cancels_start_up(
    total_1: int, n_1: int, total_2: int, n_2: int, expected: float
) -> None:
    """Per-op cost is the slope between two runs; the fixed start-up cost drops out."""
    assert _callgrind.per_op(total_1, n_1, total_2, n_2) == pytest.approx(expected)


def test_per_op_needs_two_counts() -> None:
    """Two runs with the same count cannot give a slope."""
    with pytest.raises(ValueError, match="different"):
        _callgrind.per_op(10, 5, 20, 5)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "version: 1\ncmd: python\nevents: Ir\nsummary: 1328878449\n\ntotals: 1328878449\n",
            1328878449,
        ),
        ("events: Ir\nfn=main\n3 17\ntotals: 42\n", 42),
        ("events: Ir\nsummary: 126651\n", 126651),
    ],
)
def test_parse_totals(text: str, expected: int) -> None:
    """The total instruction count is read from the ``totals:`` or ``summary:`` line."""
    assert _callgrind.parse_totals(text) == expected


def test_parse_totals_rejects_a_file_without_totals() -> None:
    """A truncated callgrind file is an error, never a count of zero."""
    with pytest.raises(ValueError, match="totals"):
        _callgrind.parse_totals("events: Ir\nfn=main\n3 17\n")


@pytest.mark.skipif(_callgrind.valgrind() is None, reason="valgrind is not on PATH")
def test_count_runs_callgrind(tmp_path: Path) -> None:
    """A real callgrind run of a small program gives its positive instruction count."""
    out_file = tmp_path / "callgrind.out"
    total = _callgrind.count(["/bin/true"], out_file, executable=_callgrind.valgrind() or "")
    assert total > 0
    assert _callgrind.parse_totals(out_file.read_text()) == total


CLIENT_COSTS = {
    "client-bare": 2_000_000.0,
    "client-floor": 2_200_000.0,  # +200,000
    "client-upstream": 2_400_000.0,  # +400,000
}
CLIENT = _report.GROUPS[0]


@pytest.mark.parametrize(
    ("ours", "floor_ratio", "floor_verdict", "upstream_ratio", "upstream_verdict"),
    [
        (2_240_000.0, 1.2, _report.MET, 0.6, _report.MET),  # exactly at the floor target
        (2_240_001.0, 1.200005, _report.NOT_MET, 0.6000025, _report.MET),
        (2_280_000.0, 1.4, _report.NOT_MET, 0.7, _report.MET),  # exactly at upstream's
        (2_300_000.0, 1.5, _report.NOT_MET, 0.75, _report.NOT_MET),
        (2_100_000.0, 0.5, _report.MET, 0.25, _report.MET),
    ],
)
def test_added_ratios_and_verdicts(
    ours: float,
    floor_ratio: float,
    floor_verdict: str,
    upstream_ratio: float,
    upstream_verdict: str,
) -> None:
    """Client targets compare instructions added over bare; at the limit is MET."""
    costs = {**CLIENT_COSTS, "client-ours": ours}
    floor_target, upstream_target = CLIENT.targets
    value, result = _report.evaluate(floor_target, costs, CLIENT.bare)
    assert value == pytest.approx(floor_ratio)
    assert result == floor_verdict
    value, result = _report.evaluate(upstream_target, costs, CLIENT.bare)
    assert value == pytest.approx(upstream_ratio)
    assert result == upstream_verdict


@pytest.mark.parametrize(
    ("ours", "expected", "result"),
    [
        (37_500.0, 1.5, _report.MET),
        (37_501.0, 1.50004, _report.NOT_MET),
        (25_000.0, 1.0, _report.MET),
    ],
)
def test_codec_ratio_is_whole_cost(ours: float, expected: float, result: str) -> None:
    """Codec targets compare the whole per-op cost, not an added one."""
    target = _report.GROUPS[2].targets[0]
    value, verdict = _report.evaluate(target, {"inject-bare": 25_000.0, "inject-ours": ours}, None)
    assert value == pytest.approx(expected)
    assert verdict == result


@pytest.mark.parametrize(
    "costs",
    [
        {"client-bare": 2e6, "client-floor": 2.2e6},  # ours not measured
        {"client-bare": 2e6, "client-floor": 2e6, "client-ours": 2.1e6},  # floor adds nothing
    ],
)
def test_ratio_without_a_reference_is_unknown(costs: dict[str, float]) -> None:
    """Without a measured, positive reference there is no ratio and no verdict."""
    assert _report.evaluate(CLIENT.targets[0], costs, CLIENT.bare) == (None, _report.UNKNOWN)


@pytest.mark.parametrize(
    ("growth_kib", "expected"),
    [(0, _report.MET), (4882, _report.MET), (4883, _report.NOT_MET), (-300, _report.MET)],
)
def test_memory_verdict(growth_kib: int, expected: str) -> None:
    """RSS growth is judged in MB of 10^6 bytes against the 5 MB limit."""
    growth, result = _report.memory_verdict(50_000, 50_000 + growth_kib)
    assert growth == pytest.approx(growth_kib * 1024 / 1e6)
    assert result == expected


def test_table_shows_added_costs_and_verdicts() -> None:
    """The client table prints each row's added instructions and each target's verdict."""
    results = _report.Results(instructions={**CLIENT_COSTS, "client-ours": 2_300_000.0})
    table = _report.group_table(CLIENT, results, (200, 1200), 2000)
    assert "+300,000" in table
    assert "1.50" in table and _report.NOT_MET in table
    assert "over by 60,000 instr" in table  # 300,000 added against 1.2 x 200,000
    assert "over by 20,000 instr" in table  # against 0.7 x 400,000


def test_table_shows_where_the_cost_comes_from() -> None:
    """The comparison rows print ours over the floor that records the same attributes, and
    that floor over the plain one, with no verdict."""
    costs = {**CLIENT_COSTS, "client-floor-attributes": 2_250_000.0, "client-ours": 2_300_000.0}
    table = _report.group_table(CLIENT, _report.Results(instructions=costs), (200, 1200), 2000)
    rows = [line for line in table.splitlines() if "no target" in line]
    assert len(rows) == 2
    assert "ours / floor + attributes" in rows[0] and "1.20 " in rows[0]  # 300k / 250k
    assert "floor + attributes / floor" in rows[1] and "1.25 " in rows[1]  # 250k / 200k
    assert not any(verdict in row for row in rows for verdict in (_report.MET, _report.NOT_MET))


@pytest.mark.parametrize("missing", sorted(_scenarios.SPAN_ATTRIBUTES))
def test_attribute_check_catches_a_different_span(missing: str) -> None:
    """The client scenarios compared by attributes fail their check when the span lacks one."""
    exporter = _exporter_of_span_without(missing)
    with pytest.raises(_scenarios.ScenarioError, match="not the ones compared"):
        _scenarios._expect_attributes(exporter)


def test_attribute_check_passes_the_span_compared() -> None:
    """The same check passes a span with exactly those attributes and values."""
    _scenarios._expect_attributes(_exporter_of_span_without(None))


def _exporter_of_span_without(missing: str | None) -> _scenarios.CountingExporter:
    """A counting exporter that exported one span with the compared attributes, less *missing*."""
    from opentelemetry.sdk.trace import ReadableSpan

    attributes = {key: "x" for key in _scenarios.SPAN_ATTRIBUTES}
    attributes.update(_scenarios.START_ATTRIBUTES)
    attributes.pop(missing or "", None)
    exporter = _scenarios.CountingExporter()
    exporter.export([ReadableSpan(name="span", attributes=attributes)])
    return exporter


@pytest.mark.parametrize(
    ("ours", "expected"),
    [(2_240_000.0, 0.0), (2_200_000.0, 40_000.0), (2_250_000.0, -10_000.0)],
)
def test_margin_is_what_the_limit_leaves(ours: float, expected: float) -> None:
    """The margin is the limit times the reference's added cost, less ours."""
    costs = {**CLIENT_COSTS, "client-ours": ours}
    assert _report.margin(CLIENT.targets[0], costs, CLIENT.bare) == pytest.approx(expected)


def test_table_says_why_a_row_is_missing() -> None:
    """A configuration that crashed shows its problem instead of numbers."""
    results = _report.Results(problems={"client-ours": "crashed (exit 1): boom"})
    table = _report.group_table(CLIENT, results, (200, 1200), 2000)
    assert "crashed (exit 1): boom" in table
    assert _report.UNKNOWN in table


def test_scenario_env_is_reproducible(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scenarios run without the shell's OTEL_*/AWS_* settings and with a fixed hash seed."""
    monkeypatch.setenv("OTEL_PROPAGATORS", "b3")
    monkeypatch.setenv("AWS_PROFILE", "prod")
    env = run.scenario_env()
    assert "OTEL_PROPAGATORS" not in env
    assert "AWS_PROFILE" not in env
    assert env["PYTHONHASHSEED"] == "0"


def test_crashing_scenario_is_recorded() -> None:
    """A scenario process that fails is reported as crashed rather than measured."""
    group = _report.Group(
        name="broken", title="broken", unit="op", configs=("no-such-config",), targets=()
    )
    results = _report.Results()
    run.measure_wall([group], True, 1, run.scenario_env(), results)
    assert results.problems["no-such-config"].startswith("crashed (exit 2)")
    assert "no-such-config" not in results.wall_seconds


def test_run_command_prints_the_codec_table() -> None:
    """``run.py --quick --no-valgrind --only codec`` exits 0 and prints wall-clock verdicts."""
    done = subprocess.run(
        [sys.executable, RUN, "--quick", "--no-valgrind", "--only", "codec", "--repeat", "1"],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "inject: ours / bare (whole)" in done.stdout
    assert "extract: ours / bare (whole)" in done.stdout
    assert done.stdout.count("wall-clock   target <= 1.50") == 2


def test_run_command_without_valgrind_says_so(tmp_path: Path) -> None:
    """Without valgrind on PATH the command says how to get it and still prints wall-clock."""
    env = {**run.scenario_env(), "PATH": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, RUN, "--quick", "--only", "codec", "--repeat", "1"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "valgrind is not on PATH" in done.stderr
    assert "valgrind NOT FOUND on PATH" in done.stdout
    assert done.stdout.count("wall-clock   target <= 1.50") == 2
