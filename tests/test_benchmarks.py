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


def test_atari_benchmark_smoke_run_measures_every_implementation(tmp_path: Path) -> None:
    out = tmp_path / "atari.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "atari.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(out.read_text(encoding="utf-8"))
    expected = {"numpy ring", "ray_replay", "ray_replay next_state dedup", "ray_replay frame-stack dedup"}
    assert expected <= set(data["results"])
    for name, figures in data["results"].items():
        assert figures["add_mb_per_s"] > 0 and figures["sample_us"] > 0 and figures["memory_gb_per_100k"] > 0, name
    # Memory is a count of pages, not a timing: frame-stack dedup holds well under half of the naive ring.
    assert data["results"]["ray_replay frame-stack dedup"]["memory_gb_per_100k"] < data["results"]["numpy ring"]["memory_gb_per_100k"] / 2
    assert "| ray_replay frame-stack dedup |" in out.with_suffix(".md").read_text(encoding="utf-8")


def test_ray_replay_bench_finds_the_checkouts_runner_or_says_why_not(tmp_path: Path) -> None:
    from ray_replay.__main__ import benchmark_runner

    assert benchmark_runner(ROOT / "tests") == ROOT / "benchmarks" / "run.py"
    done = subprocess.run([sys.executable, "-m", "ray_replay", "bench", "--quick"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 2
    assert "run it from a ray_replay source checkout" in done.stderr


def test_persistence_benchmark_smoke_run(tmp_path: Path) -> None:
    out = tmp_path / "persistence.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "persistence.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(out.read_text(encoding="utf-8"))
    assert set(data["results"]) == {"ray_replay save", "ray_replay load", "np.save", "np.load"}
    assert all(r["gb_per_s"] > 0 for r in data["results"].values())
    assert "| load |" in out.with_suffix(".md").read_text(encoding="utf-8")


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
