"""Smoke tests of the benchmark command: scenarios run and check themselves, the arithmetic holds,
the table judges instructions only.

No timing is asserted here; ``python benchmarks/run.py`` measures.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import (  # noqa: E402
    _base,
    _callgrind,
    _client_scenarios,
    _container_scenarios,
    _proxy_scenarios,
    _report,
    _scenarios,
    run,
)

SCENARIO = str(ROOT / "benchmarks" / "scenario.py")
RUN = str(ROOT / "benchmarks" / "run.py")
GROUP_OF = {config: group for group in _report.GROUPS for config in group.configs}


def _available(configs: list[str]) -> list[Any]:
    return [
        pytest.param(
            config,
            marks=pytest.mark.skipif(
                _scenarios.unavailable(config) is not None,
                reason=str(_scenarios.unavailable(config)),
            ),
        )
        for config in configs
    ]


def _small(config: str) -> int:
    """A small run of *config*: the first quick stretch of its group."""
    return GROUP_OF[config].quick_counts[0]


@pytest.mark.parametrize(
    "config", _available(sorted(set(_scenarios.BUILDERS) - _scenarios.ISOLATED))
)
def test_scenario_runs_and_does_its_work(config: str) -> None:
    """Each configuration runs a few units and its own check confirms it did its work."""
    scenario = _scenarios.build(config)
    try:
        calls = scenario.run(_small(config))
        calls += scenario.run(_small(config))
        scenario.check(calls)
    finally:
        scenario.close()


@pytest.mark.parametrize(
    "config",
    _available(
        [
            "client-floor",
            "client-ours",
            "client-upstream",
            "echo-ours",
            "stream-ours",
            "wsgi-ours",
            "asgi-floor",
            "asgi-ours",
            "asgi-upstream",
            "asgi-stream-ours",
        ]
    ),
)
def test_scenario_check_catches_missing_spans(config: str) -> None:
    """A check fails when fewer spans were exported than calls or requests were made."""
    scenario = _scenarios.build(config)
    try:
        calls = scenario.run(_small(config))
        with pytest.raises(_scenarios.ScenarioError, match="spans for"):
            scenario.check(calls + 1)
    finally:
        scenario.close()


@pytest.mark.parametrize("config", ["client-ours", "echo-ours", "stream-ours"])
def test_ours_fails_its_check_when_it_does_nothing(config: str) -> None:
    """Ours, uninstrumented after it was built, no longer passes its own check."""
    import sm_tracing

    scenario = _scenarios.build(config)
    try:
        sm_tracing.uninstrument()
        calls = scenario.run(_small(config))
        with pytest.raises(_scenarios.ScenarioError):
            scenario.check(0)
        with pytest.raises(_scenarios.ScenarioError):
            scenario.check(calls)
    finally:
        scenario.close()


def test_uninstrument_restores_the_bare_call() -> None:
    """After the ours scenario closes, a new client sends CustomAttributes untouched."""
    _scenarios.build("client-ours").close()
    bare = _scenarios.build("client-bare")
    try:
        bare.check(bare.run(1))
    finally:
        bare.close()


@pytest.mark.parametrize(
    ("sent", "trace_id"),
    [
        (f"a=1;traceparent=00-{'ab' * 16}-{'cd' * 8}-01", "ab" * 16),
        ("a=1", f"{_base.TRACE_ID:032x}"),
        (None, f"{_base.TRACE_ID:032x}"),
    ],
)
def test_echo_carries_the_callers_trace(sent: str | None, trace_id: str) -> None:
    """The echoed response carries the trace id of the request's traceparent, a fixed one
    when it has none, after the container's own pair."""
    from botocore.awsrequest import AWSRequest

    headers = {} if sent is None else {_client_scenarios.HEADER: sent}
    url = "https://runtime.sagemaker.us-east-1.amazonaws.com/endpoints/e/invocations"
    request = AWSRequest(method="POST", url=url, headers=headers).prepare()
    response = _client_scenarios.Wire(echo=True).answer(request)
    assert response.headers[_client_scenarios.HEADER] == (
        f"session=abc;traceresponse=00-{trace_id}-{_client_scenarios.CONTAINER_SPAN_ID}-01"
    )


def test_stream_is_read_chunk_by_chunk() -> None:
    """The client stream scenario makes one call per run and reads every chunk of it."""
    wire = _client_scenarios.Wire()
    made = _client_scenarios.client(wire)
    run_streams, last = _client_scenarios._read_streams(made, wire)
    assert run_streams(37) == 1
    assert last() == 37


def test_asgi_stream_runs_are_requests_of_chunks() -> None:
    """A run of N chunks is STREAM_REQUESTS responses of N / STREAM_REQUESTS body messages."""
    scenario = _scenarios.build("asgi-stream-bare")
    requests = _container_scenarios.STREAM_REQUESTS
    assert scenario.run(requests * 4) == requests
    with pytest.raises(ValueError, match="multiple"):
        scenario.run(requests * 4 + 1)


def test_drive_refuses_an_app_that_waits() -> None:
    """An ASGI app that waits for the loop cannot be measured without one: it is an error."""

    async def waits() -> None:
        await asyncio.sleep(0)

    with pytest.raises(_scenarios.ScenarioError, match="waited"):
        _container_scenarios.drive(waits())


@pytest.mark.parametrize("missing", sorted(_client_scenarios.SPAN_ATTRIBUTES))
def test_attribute_check_catches_a_different_span(missing: str) -> None:
    """The client scenarios compared by attributes fail their check when the span lacks one."""
    exporter = _exporter_of_span_without(missing)
    with pytest.raises(_scenarios.ScenarioError, match="not the ones compared"):
        _client_scenarios.expect_attributes(exporter)


def test_attribute_check_passes_the_span_compared() -> None:
    """The same check passes a span with exactly those attributes and values."""
    _client_scenarios.expect_attributes(_exporter_of_span_without(None))


def _exporter_of_span_without(missing: str | None) -> _base.CountingExporter:
    """A counting exporter that exported one span with the compared attributes, less *missing*."""
    from opentelemetry.sdk.trace import ReadableSpan

    attributes = {key: "x" for key in _client_scenarios.SPAN_ATTRIBUTES}
    attributes.update(_client_scenarios.START_ATTRIBUTES)
    attributes.pop(missing or "", None)
    exporter = _base.CountingExporter()
    exporter.export([ReadableSpan(name="span", attributes=attributes)])
    return exporter


def test_metrics_check_counts_each_call() -> None:
    """The metrics check passes when a histogram recorded every call, and fails otherwise."""
    metrics = _base.Metrics()
    try:
        histogram = metrics.provider.get_meter("bench").create_histogram("duration")
        for _ in range(3):
            histogram.record(1.0)
        metrics.check(3)
        with pytest.raises(_scenarios.ScenarioError, match="each of 4 calls"):
            metrics.check(4)
    finally:
        metrics.close()


@pytest.mark.parametrize(
    ("config", "entry_point"),
    [
        ("client-ours-metrics", "instrument"),
        ("stream-ours-metrics", "instrument"),
        ("wsgi-ours-metrics", "WSGIMiddleware"),
        ("asgi-ours-metrics", "ASGIMiddleware"),
    ],
)
def test_metrics_configurations_follow_the_signature(
    monkeypatch: pytest.MonkeyPatch, config: str, entry_point: str
) -> None:
    """A metrics configuration runs only when its entry point takes ``meter_provider=``."""
    import sm_tracing

    def without(app: Any = None, *, tracer_provider: Any = None) -> None:
        pass

    def with_it(
        app: Any = None, *, tracer_provider: Any = None, meter_provider: Any = None
    ) -> None:
        pass

    monkeypatch.setattr(sm_tracing, entry_point, without)
    assert "meter_provider" in (_scenarios.unavailable(config) or "")
    monkeypatch.setattr(sm_tracing, entry_point, with_it)
    assert _scenarios.unavailable(config) is None


@pytest.mark.parametrize("config", _available(sorted(_scenarios.ISOLATED)))
def test_peer_runs_and_does_its_work_in_a_process_of_its_own(tmp_path: Path, config: str) -> None:
    """A peer (OpenLLMetry, the X-Ray SDK), which cannot be undone in a process, runs in a
    child of its own, and its check finds every call traced, past the point where X-Ray
    streams its subsegments out."""
    runs = [{"config": config, "counts": [0, 45], "warmup": 5}]
    [result] = _plan(tmp_path, "wall", runs)
    assert "error" not in result, result
    assert result["config"] == config


@pytest.mark.parametrize(
    ("config", "extra"),
    [
        ("client-upstream", "test"),
        ("wsgi-upstream", "test"),
        ("client-openllmetry", "bench-peers"),
        ("client-xray", "bench-peers"),
    ],
)
def test_a_missing_tool_names_the_extra_that_brings_it(
    monkeypatch: pytest.MonkeyPatch, config: str, extra: str
) -> None:
    """A row whose tool is not installed says which extra of sm-tracing installs it, in the
    table and in the target that needs it."""
    module = _scenarios._MODULES[config]
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == module else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    reason = _scenarios.unavailable(config)
    assert reason == f"not available: pip install 'sm-tracing[{extra}]' ({module} is missing)"
    table = _report.group_table(GROUP_OF[config], _report.Results(), None, None, {config: reason})
    row = next(line for line in table.splitlines() if _report.LABELS[config] in line)
    assert row.endswith(f"pip install 'sm-tracing[{extra}]' ({module} is missing)")


def test_the_client_group_compares_ours_with_each_peer() -> None:
    """The client group measures OpenLLMetry and the X-Ray SDK beside ours, and prints what ours
    adds over what each adds."""
    group = GROUP_OF["client-ours"]
    assert {"client-openllmetry", "client-xray"} <= set(group.configs)
    compared = {(c.ours, c.versus) for c in group.comparisons}
    assert {("client-ours", "client-openllmetry"), ("client-ours", "client-xray")} <= compared
    costs = {"client-bare": 100.0, "client-ours": 300.0, "client-openllmetry": 500.0}
    costs["client-xray"] = 200.0
    results = _report.Results(instructions=costs)
    table = _report.group_table(group, results, (5, 15), None)
    lines = table.splitlines()
    assert any(line.split()[:4] == ["ours", "/", "OpenLLMetry,", "added"] for line in lines)
    assert next(line for line in lines if "ours / OpenLLMetry" in line).split()[4] == "0.50"
    assert next(line for line in lines if "ours / X-Ray SDK" in line).split()[5] == "2.00"


def test_groups_name_known_configurations() -> None:
    """Every configuration of a group can be built and is labelled; every target compares
    configurations of its own group; streamed ASGI runs divide into requests."""
    for group in _report.GROUPS:
        for config in group.configs:
            assert config in _scenarios.BUILDERS
            assert config in _report.LABELS
        for target in group.targets:
            assert target.ours in group.configs
            assert target.versus is None or target.versus in group.configs
            assert target.added is False or group.bare is not None
    stream = GROUP_OF["asgi-stream-ours"]
    for n in (*stream.counts, *stream.quick_counts, *stream.wall_counts, stream.warmup):
        assert n % _container_scenarios.STREAM_REQUESTS == 0


# --- the scenario script ---------------------------------------------------------------------


def _plan(
    tmp_path: Path, mode: str, runs: list[dict[str, Any]], rounds: int = 1, jobs: int = 1
) -> list[Any]:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"mode": mode, "rounds": rounds, "jobs": jobs, "runs": runs}))
    done = subprocess.run(
        [sys.executable, SCENARIO, "--plan", str(plan)],
        capture_output=True,
        text=True,
        check=True,
        env=run.scenario_env(),
        timeout=120,
    )
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_plan_times_each_configuration_in_a_child(tmp_path: Path) -> None:
    """A wall plan gives, per round and configuration, the seconds of N1 and N2 units, each
    measured in a process of its own."""
    runs = [
        {"config": "inject-ours", "counts": [10, 30], "warmup": 2, "repeat": 3},
        {"config": "extract-ours", "counts": [0, 30], "warmup": 2, "repeat": 2},
    ]
    results = _plan(tmp_path, "wall", runs, rounds=2)
    assert [(result["config"], result["round"]) for result in results] == [
        ("inject-ours", 0),
        ("extract-ours", 0),
        ("inject-ours", 1),
        ("extract-ours", 1),
    ]
    assert len({result["pid"] for result in results}) == 4
    assert len(results[0]["seconds"]) == 3
    assert all(first > 0 and second > 0 for first, second in results[0]["seconds"])
    assert all(first == 0 for first, _ in results[1]["seconds"])


def test_plan_runs_children_side_by_side(tmp_path: Path) -> None:
    """With ``jobs``, that many children run at once; every run still gives one result."""
    runs = [
        {"config": config, "counts": [0, 20], "warmup": 2}
        for config in ("inject-bare", "inject-ours", "extract-bare", "extract-ours", "wsgi-ours")
    ]
    results = _plan(tmp_path, "wall", runs, jobs=3)
    assert sorted(result["config"] for result in results) == sorted(run["config"] for run in runs)
    assert all("seconds" in result for result in results)


def test_client_stream_is_sampled_under_callgrind() -> None:
    """Each client stream configuration is counted in several processes of different
    histories (the median is kept); wall-clock runs it once; results find their sample."""
    group = GROUP_OF["stream-ours"]
    runs = run._plan([group], True, False, ())
    assert group.quick_samples > 1
    assert [(each.config, each.sample) for each in runs] == [
        (config, sample) for config in group.configs for sample in range(group.quick_samples)
    ]
    assert len(run._plan([group], True, True, ())) == len(group.configs)
    assert run._run_of(runs, {"config": "stream-ours", "sample": 2}).sample == 2


def test_plan_echoes_the_sample(tmp_path: Path) -> None:
    """A sample's result names its sample, a process that made other clients first."""
    runs = [{"config": "stream-bare", "counts": [0, 20], "warmup": 10, "sample": 2}]
    [result] = _plan(tmp_path, "wall", runs)
    assert result["sample"] == 2
    assert "seconds" in result


def test_plan_reports_memory(tmp_path: Path) -> None:
    """A memory plan runs instrumented calls and gives RSS before and after."""
    [result] = _plan(
        tmp_path, "memory", [{"config": "client-ours", "counts": [0, 30], "warmup": 5}]
    )
    assert result["rss_before_kib"] > 0
    assert isinstance(result["rss_after_kib"], int)


def test_plan_goes_on_after_a_failing_configuration(tmp_path: Path) -> None:
    """A configuration that fails gives an error line; the next one is still measured."""
    runs = [
        {"config": "no-such-config", "counts": [0, 3], "warmup": 1},
        {"config": "inject-ours", "counts": [0, 3], "warmup": 1},
    ]
    failed, measured = _plan(tmp_path, "wall", runs)
    assert failed["error"].startswith("KeyError")
    assert "seconds" in measured


def test_scenario_script_runs_one_configuration() -> None:
    """``scenario.py CONFIG N`` runs and checks one configuration, for profiling by hand."""
    done = subprocess.run(
        [sys.executable, SCENARIO, "inject-ours", "20", "--warmup", "2"],
        check=False,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_scenario_script_fails_on_unknown_config() -> None:
    """An unknown configuration makes the scenario process exit non-zero."""
    done = subprocess.run(
        [sys.executable, SCENARIO, "no-such-config", "1"],
        check=False,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode != 0


# --- callgrind ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total_1", "n_1", "total_2", "n_2", "expected"),
    [
        (1_000_000 + 200 * 5_000, 200, 1_000_000 + 1200 * 5_000, 1200, 5_000.0),
        (7_000_000, 20, 7_000_000 + 100 * 2_607_112, 120, 2_607_112.0),
        (500, 10, 500, 30, 0.0),
        (900, 10, 300, 40, -20.0),
    ],
)
def test_per_op_cancels_what_each_stretch_pays_once(
    total_1: int, n_1: int, total_2: int, n_2: int, expected: float
) -> None:
    """Per-unit cost is the slope between two stretches; what both pay once drops out."""
    assert _callgrind.per_op(total_1, n_1, total_2, n_2) == pytest.approx(expected)


def test_per_op_needs_two_counts() -> None:
    """Two stretches with the same count cannot give a slope."""
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


@pytest.mark.parametrize(("dumps", "valid"), [(2, False), (3, True), (4, False)])
def test_stretches_are_exactly_three_dumps(tmp_path: Path, dumps: int, valid: bool) -> None:
    """A process's stretches are read in order; any other number of dumps than three means the
    marker was called elsewhere (or never), and is an error."""
    for index in range(1, dumps + 1):
        (tmp_path / f"callgrind.77.{index}").write_text(f"events: Ir\ntotals: {index * 100}\n")
    (tmp_path / "callgrind.77").write_text("events: Ir\ntotals: 5\n")
    if valid:
        assert _callgrind.stretches(tmp_path, 77) == [100, 200, 300]
    else:
        with pytest.raises(ValueError, match="dumps"):
            _callgrind.stretches(tmp_path, 77)


def test_callgrind_command_counts_from_the_marker(tmp_path: Path) -> None:
    """The plan starts uncounted, dumps before each marker call and follows forked children,
    but not vgdb."""
    command = _callgrind.command("valgrind", tmp_path, ["python", "scenario.py"])
    assert "--instr-atstart=no" in command
    assert f"--dump-before={_callgrind.MARKER}" in command
    assert "--trace-children=yes" in command
    assert "--trace-children-skip=*/vgdb" in command
    assert command[-2:] == ["python", "scenario.py"]


@pytest.mark.skipif(
    _callgrind.valgrind() is None or _callgrind.vgdb(_callgrind.valgrind() or "") is None,
    reason="valgrind (with vgdb) is not on PATH",
)
def test_callgrind_counts_a_configuration(tmp_path: Path) -> None:
    """A real callgrind plan counts the two stretches of a configuration (a codec operation
    costs thousands of instructions) and keeps their files under the configuration's name."""
    results = _report.Results()
    progress = run.Progress(1.0)
    group = GROUP_OF["inject-ours"]
    executable = _callgrind.valgrind() or ""
    (tmp_path / "kept").mkdir()
    run.measure_instructions(
        [run.Run(group, "inject-ours", (20, 60), 10)],
        results,
        progress,
        jobs=1,
        executable=executable,
        vgdb=_callgrind.vgdb(executable) or "",
        scratch=tmp_path,
        keep=tmp_path / "kept",
        env=run.scenario_env(),
    )
    assert results.problems == {}
    assert 1_000 < results.instructions["inject-ours"] < 1_000_000
    assert sorted(path.name for path in (tmp_path / "kept").iterdir()) == [
        "callgrind.inject-ours.20.out",
        "callgrind.inject-ours.60.out",
    ]


# --- targets and the table ---------------------------------------------------------------------

CLIENT = GROUP_OF["client-ours"]
CLIENT_COSTS = {
    "client-bare": 2_000_000.0,
    "client-floor": 2_150_000.0,  # +150,000
    "client-floor-attributes": 2_200_000.0,  # +200,000
    "client-upstream": 2_400_000.0,  # +400,000
}
FLOOR_TARGET, UPSTREAM_TARGET, METRICS_TARGET = CLIENT.targets


@pytest.mark.parametrize(
    ("ours", "floor_ratio", "floor_verdict", "upstream_ratio", "upstream_verdict"),
    [
        (2_220_000.0, 1.1, _report.MET, 0.55, _report.MET),  # exactly at the floor target
        (2_220_001.0, 1.100005, _report.NOT_MET, 0.5500025, _report.MET),
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
    """Client targets compare instructions added over bare, against the floor that records the
    same attributes and against upstream; at the limit is MET."""
    costs = {**CLIENT_COSTS, "client-ours": ours}
    value, result = _report.evaluate(FLOOR_TARGET, costs, CLIENT.bare)
    assert value == pytest.approx(floor_ratio)
    assert result == floor_verdict
    value, result = _report.evaluate(UPSTREAM_TARGET, costs, CLIENT.bare)
    assert value == pytest.approx(upstream_ratio)
    assert result == upstream_verdict


@pytest.mark.parametrize(
    ("with_metrics", "expected"),
    [(2_299_000.0, _report.MET), (2_299_001.0, _report.NOT_MET)],
)
def test_metrics_target_is_against_ours_and_the_sdks_record(
    with_metrics: float, expected: str
) -> None:
    """Metrics may add at most 15% to what ours adds with one SDK record of the same
    measurement (the SDK's own charge), all measured in the same run."""
    costs = {
        **CLIENT_COSTS,
        "client-ours": 2_200_000.0,
        "client-ours-record": 2_260_000.0,  # +260,000: ours and the SDK's record
        "client-ours-metrics": with_metrics,
    }
    assert _report.evaluate(METRICS_TARGET, costs, CLIENT.bare)[1] == expected


@pytest.mark.parametrize(
    ("ours", "added", "result"),
    [(3_800.0, 500.0, _report.MET), (3_801.0, 501.0, _report.NOT_MET), (3_100.0, -200.0, "MET")],
)
def test_per_chunk_target_is_absolute(ours: float, added: float, result: str) -> None:
    """The ASGI streamed response's target is the instructions ours adds per chunk."""
    group = GROUP_OF["asgi-stream-ours"]
    [target] = group.targets
    costs = {"asgi-stream-bare": 3_300.0, "asgi-stream-ours": ours}
    assert _report.evaluate(target, costs, group.bare) == (pytest.approx(added), result)
    assert _report.margin(target, costs, group.bare) == pytest.approx(500.0 - added)


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
    target = GROUP_OF["inject-ours"].targets[0]
    value, verdict = _report.evaluate(target, {"inject-bare": 25_000.0, "inject-ours": ours}, None)
    assert value == pytest.approx(expected)
    assert verdict == result


@pytest.mark.parametrize(
    "costs",
    [
        {"client-bare": 2e6, "client-floor-attributes": 2.2e6},  # ours not measured
        {"client-bare": 2e6, "client-floor-attributes": 2e6, "client-ours": 2.1e6},  # adds 0
    ],
)
def test_ratio_without_a_reference_is_unknown(costs: dict[str, float]) -> None:
    """Without a measured, positive reference there is no ratio and no verdict."""
    assert _report.evaluate(FLOOR_TARGET, costs, CLIENT.bare) == (None, _report.UNKNOWN)


@pytest.mark.parametrize(
    ("growth_kib", "expected"),
    [(0, _report.MET), (4882, _report.MET), (4883, _report.NOT_MET), (-300, _report.MET)],
)
def test_memory_verdict(growth_kib: int, expected: str) -> None:
    """RSS growth is judged in MB of 10^6 bytes against the 5 MB limit."""
    growth, result = _report.memory_verdict(50_000, 50_000 + growth_kib)
    assert growth == pytest.approx(growth_kib * 1024 / 1e6)
    assert result == expected


def _table(results: _report.Results, skipped: dict[str, str] | None = None) -> str:
    return _report.group_table(CLIENT, results, (5, 15), (0, 30), skipped)


def test_table_shows_added_costs_and_verdicts() -> None:
    """The client table prints each row's added instructions and each target's verdict."""
    table = _table(_report.Results(instructions={**CLIENT_COSTS, "client-ours": 2_300_000.0}))
    assert "+300,000" in table
    assert "1.50" in table and _report.NOT_MET in table
    assert "over by 80,000 instr" in table  # 300,000 added against 1.1 x 200,000
    assert "over by 20,000 instr" in table  # against 0.7 x 400,000


def test_table_shows_where_the_cost_comes_from() -> None:
    """The information rows print ours over the plain floor, the floor with attributes over
    the plain floor, ours and upstream against the floor that also sends the context in the
    header, and metrics over ours with and without the SDK's own record, with no verdict."""
    costs = {
        **CLIENT_COSTS,
        "client-floor-header": 2_240_000.0,  # +240,000
        "client-ours": 2_300_000.0,
        "client-ours-metrics": 2_390_000.0,
        "client-ours-record": 2_375_000.0,
    }
    table = _table(_report.Results(instructions=costs))
    rows = [line for line in table.splitlines() if "information" in line and "/" in line]
    assert len(rows) == 9
    assert "ours / floor, added" in rows[0] and "2.00 " in rows[0]  # 300k / 150k
    assert "floor + attributes / floor" in rows[1] and "1.33 " in rows[1]  # 200k / 150k
    assert "ours / floor + header, added" in rows[2] and "1.25 " in rows[2]  # 300k / 240k
    assert "floor + header / without header" in rows[3] and "1.20 " in rows[3]  # 240k / 200k
    assert "floor + header / upstream" in rows[4] and "0.60 " in rows[4]  # 240k / 400k
    assert "ours + metrics / ours, added" in rows[5] and "1.30 " in rows[5]  # 390k / 300k
    assert "ours + SDK record / ours" in rows[6] and "1.25 " in rows[6]  # 375k / 300k
    # The peers were not measured here: their ratios say so.
    assert "ours / OpenLLMetry, added" in rows[7] and " - " in rows[7]
    assert "ours / X-Ray SDK, added" in rows[8] and " - " in rows[8]
    assert not any(verdict in row for row in rows for verdict in (_report.MET, _report.NOT_MET))


def test_wall_clock_alone_is_never_judged() -> None:
    """With wall-clock figures only, every target says it has no instruction counts and none
    is MET or NOT MET; the wall-clock ratio is still shown."""
    wall = {key: value / 1e9 for key, value in CLIENT_COSTS.items()}
    table = _table(_report.Results(wall_seconds={**wall, "client-ours": 0.0023}))
    assert _report.MET not in table
    assert table.count("n/a: no instruction counts") == 3
    assert "1.50" in table  # ours / floor + attributes, in wall-clock


def test_table_without_wall_clock_has_no_wall_columns() -> None:
    """A run without wall-clock (a quick one) prints instructions and verdicts only."""
    results = _report.Results(instructions={**CLIENT_COSTS, "client-ours": 2_210_000.0})
    table = _report.group_table(CLIENT, results, (5, 15), None)
    assert "wall" not in table
    assert "callgrind N1=5 N2=15" in table
    assert f"{_report.MET} (10,000 instr to spare)" in table  # 210,000 against 1.1 x 200,000


@pytest.mark.parametrize(
    ("ours", "shown"), [(2_220_900.0, "1.105 "), (2_219_600.0, "1.098 "), (2_230_000.0, "1.15 ")]
)
def test_ratio_next_to_its_limit_shows_why_it_failed(ours: float, shown: str) -> None:
    """A ratio that two places would round to its limit is printed to three."""
    table = _table(_report.Results(instructions={**CLIENT_COSTS, "client-ours": ours}))
    [row] = [line for line in table.splitlines() if "floor + attributes, added" in line]
    assert shown in row


def test_table_says_why_a_row_is_missing() -> None:
    """A configuration that crashed, or was skipped, shows why instead of numbers; its
    targets have no verdict."""
    results = _report.Results(
        instructions=CLIENT_COSTS.copy(), problems={"client-ours": "crashed (exit 1): boom"}
    )
    skipped = {"client-ours-metrics": "skipped: sm_tracing.instrument takes no meter_provider="}
    table = _table(results, skipped)
    assert "crashed (exit 1): boom" in table
    assert "takes no meter_provider=" in table
    assert "n/a: skipped" in table
    assert _report.MET not in table


# --- the command ---------------------------------------------------------------------------------


def test_crashing_configuration_is_recorded(tmp_path: Path) -> None:
    """A configuration whose process fails is reported as crashed rather than measured."""
    group = _report.Group(
        name="broken", title="broken", unit="op", configs=("no-such-config",), targets=()
    )
    results = _report.Results()
    runs = [run.Run(group, "no-such-config", (0, 3), 1)]
    run.measure_wall(
        runs, results, run.Progress(1.0), rounds=1, env=run.scenario_env(), scratch=tmp_path
    )
    assert results.problems["no-such-config"].startswith("crashed: KeyError")
    assert "no-such-config" not in results.wall_seconds


def test_progress_estimates_the_time_left(capsys: pytest.CaptureFixture[str]) -> None:
    """Each step prints how far the run is and how long the rest should take."""
    progress = run.Progress(10.0)
    progress.step("wall-clock  inject-ours", 5.0)
    line = capsys.readouterr().err
    assert "[ 50%] wall-clock  inject-ours" in line
    assert "elapsed, about 0:00 left" in line
    assert run._clock(125.4) == "2:05"


def _run_command(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, RUN, "--quick", "--only", "codec", "--repeat", "1", *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_run_command_without_valgrind_judges_nothing() -> None:
    """``run.py --quick --no-valgrind --only codec`` exits 0, prints wall-clock ratios and no
    verdict, with progress on stderr."""
    done = _run_command("--no-valgrind")
    assert done.returncode == 0, done.stderr
    assert "inject: ours / bare, whole" in done.stdout
    assert "extract: ours / bare, whole" in done.stdout
    assert done.stdout.count("n/a: no instruction counts") == 2
    assert _report.MET not in done.stdout
    assert "left" in done.stderr


def test_run_command_without_valgrind_on_path_says_so(tmp_path: Path) -> None:
    """Without valgrind on PATH the command says how to get it and prints wall-clock only."""
    env = {**run.scenario_env(), "PATH": str(tmp_path)}
    done = _run_command(env=env)
    assert done.returncode == 0, done.stderr
    assert "valgrind (with vgdb) is not on PATH" in done.stderr
    assert "valgrind NOT FOUND on PATH" in done.stdout
    assert _report.MET not in done.stdout


def test_scenario_env_is_reproducible(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scenarios run without the shell's OTEL_*/AWS_* settings and with a fixed hash seed."""
    monkeypatch.setenv("OTEL_PROPAGATORS", "b3")
    monkeypatch.setenv("AWS_PROFILE", "prod")
    env = run.scenario_env()
    assert "OTEL_PROPAGATORS" not in env
    assert "AWS_PROFILE" not in env
    assert env["PYTHONHASHSEED"] == "0"


# --- the proxy part ------------------------------------------------------------------------------


def test_run_command_measures_the_proxy_part(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``run.py --quick --only proxy --no-valgrind`` starts both proxies in front of a model
    server, prints the proxy table with wall-clock figures and no verdict, and exits 0."""
    tiny = _proxy_scenarios.Counts(
        warmup=2,
        requests=(2, 4),
        streams=1,
        chunks=(2, 4),
        samples=1,
        wall_requests=30,
        wall_rounds=3,
    )
    monkeypatch.setattr(_proxy_scenarios, "QUICK", tiny)
    assert run.main(["--quick", "--only", "proxy", "--no-valgrind"]) == 0
    out, err = capsys.readouterr()
    assert "Proxy: sm-tracing proxy in front of a model server" in out
    rows = [line for line in out.splitlines() if line.strip().startswith(("floor:", "ours:"))]
    assert len(rows) == 2
    # No instruction counts without valgrind, wall-clock medians for both configurations.
    assert all(row.split()[-4:-2] == ["-", "-"] and row.split()[-2] != "-" for row in rows)
    assert "ERROR" not in out
    assert _report.MET not in out
    assert "crashed" not in err


def test_a_failing_proxy_configuration_fails_the_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An error in the proxy part makes the run exit non-zero and names the configuration;
    the part gets the run's --quick, and no valgrind under --no-valgrind."""
    calls: list[dict[str, bool]] = []

    def measured(
        *, quick: bool = False, use_valgrind: bool = True
    ) -> tuple[dict[str, _proxy_scenarios.Result], str]:
        calls.append({"quick": quick, "use_valgrind": use_valgrind})
        results = {config: _proxy_scenarios.Result() for config in _proxy_scenarios.CONFIGS}
        results["ours"].errors.append("instructions: the proxy did not start")
        return results, "Proxy: the table"

    monkeypatch.setattr(_proxy_scenarios, "run", measured)
    assert run.main(["--quick", "--only", "proxy", "--no-valgrind"]) == 1
    out, err = capsys.readouterr()
    assert calls == [{"quick": True, "use_valgrind": False}]
    assert "Proxy: the table" in out
    assert "crashed: proxy-ours" in err
