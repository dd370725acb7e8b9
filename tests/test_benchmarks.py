"""The local benchmark harness in smoke mode (tiny sizes, seconds): valid JSON with the expected keys,
and Markdown tables with ratio columns. Content only; timings are never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / "benchmarks" / "local.py"

GROUPS = {"add", "add_batch", "sample", "per_sample_update", "per_sample", "per_update"}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, str]:
    out = tmp_path_factory.mktemp("bench") / "local.json"
    done = subprocess.run(
        [sys.executable, str(LOCAL), "--smoke", "--no-cpp", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path_factory.mktemp("cwd"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(out.read_text(encoding="utf-8"))
    markdown = out.with_suffix(".md").read_text(encoding="utf-8")
    return data, markdown, done.stdout


def test_json_has_machine_workloads_and_results(smoke_run) -> None:
    data, _, _ = smoke_run
    assert data["mode"] == "smoke"
    for key in ("cpu_model", "logical_cpus", "python", "numpy", "ray_replay"):
        assert data["machine"][key], key
    work = data["workloads"]
    assert work["transition"]["state"] == {"shape": [8], "dtype": "float32"}
    assert work["transition"]["action"] == {"shape": [], "dtype": "int64"}
    assert work["transition"]["done"] == {"shape": [], "dtype": "bool"}
    assert work["transition_bytes"] == 77
    assert work["c_sample"]["batch_size"] == 256
    assert work["timing"]["repetitions"] == 3
    assert set(data["results"]) == GROUPS
    assert "add_ns" in data["targets"]


def test_every_implementation_has_medians(smoke_run) -> None:
    data, _, _ = smoke_run
    results = data["results"]
    expected = {
        "add": {"ray_replay uniform", "ray_replay uniform, stats off", "ray_replay lockfree",
                "ray_replay lockfree, stats off", "numpy ring", "deque"},
        "sample": {"ray_replay uniform out=", "ray_replay lockfree out=, stats off", "numpy ring out="},
        "per_sample_update": {"ray_replay prioritized", "ray_replay prioritized, stats off", "numpy sum-tree"},
    }
    for group, names in expected.items():
        assert names <= set(results[group]["implementations"]), group
    for group, body in results.items():
        for name, m in body["implementations"].items():
            assert len(m["samples_ns_per_op"]) == 3, (group, name)
            assert 0 < m["min_ns_per_op"] <= m["median_ns_per_op"] <= m["max_ns_per_op"], (group, name)
            assert len(m["cpu_samples_ns_per_op"]) == 3 and m["cpu_median_ns_per_op"] > 0, (group, name)
    assert results["add_batch"]["implementations"]["numpy ring"]["median_items_per_s"] > 0


def test_cpprb_measured_or_skipped_with_a_note(smoke_run) -> None:
    data, _, stdout = smoke_run
    if "cpprb" in data["skipped"]:
        assert "cpprb skipped" in stdout
    else:
        assert "cpprb" in data["results"]["add"]["implementations"]
        assert "cpprb PER" in data["results"]["per_sample_update"]["implementations"]


def test_markdown_tables_with_ratio_and_target_columns(smoke_run) -> None:
    data, markdown, stdout = smoke_run
    assert markdown == data["markdown"]
    assert "| implementation | median | CPU-time median | vs numpy ring | vs deque |" in markdown
    assert "| implementation | median | CPU-time median | vs numpy sum-tree |" in markdown
    for title in ("(a) add one transition per call", "(b) add_batch", "(c) uniform sample of 256",
                  "(d) prioritized: sample 256 + update_priorities 256", "(e) (a) add one transition per call (lockfree)"):
        assert f"### {title}" in markdown, title
        assert f"### {title}" in stdout, title
    rows = [line for line in markdown.splitlines() if line.startswith("| ray_replay uniform |")]
    assert rows and all(("x faster" in r or "x slower" in r) and r.rstrip().endswith(("yes |", "**no** |")) for r in rows)
    # Each verdict names its target and a boolean.
    for workload, by_impl in data["verdicts"].items():
        for name, verdict in by_impl.items():
            assert isinstance(verdict["met"], bool), (workload, name)
            assert isinstance(verdict["met_by_cpu_time"], bool), (workload, name)
            assert verdict["target"]


def test_torchrl_measured_or_skipped_with_a_note(smoke_run) -> None:
    data, markdown, stdout = smoke_run
    if "torchrl" in data["skipped"]:
        assert "torchrl skipped" in stdout
        return
    assert {"torchrl", "torchrl (tuple pytree)"} <= set(data["results"]["add_batch"]["implementations"])
    assert "torchrl" in data["results"]["sample"]["implementations"]
    assert "| vs torchrl |" in markdown
    if "torchrl PER" in data["skipped"]:
        assert "torchrl PER skipped" in stdout
    else:
        assert "torchrl PER" in data["results"]["per_sample_update"]["implementations"]
        assert "| vs torchrl PER |" in markdown
