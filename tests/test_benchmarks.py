"""The benchmark harness (``make bench``'s runner) in smoke mode, every step but RLlib at tiny sizes:
valid JSON with the expected keys, Markdown tables with ratio columns, PNG plots. Content only;
timings are never asserted."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "benchmarks" / "run.py"

GROUPS = {"add", "add_batch", "sample", "per_sample_update", "per_sample", "per_update"}


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(results folder, stdout) of one ``run.py --smoke`` (its Ray runs in its own processes)."""
    results = tmp_path_factory.mktemp("results")
    done = subprocess.run(
        [sys.executable, str(RUNNER), "--smoke", "--results", str(results)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path_factory.mktemp("cwd"),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return results, done.stdout


@pytest.fixture(scope="module")
def smoke_run(bench_run) -> tuple[dict, str, str]:
    results, stdout = bench_run
    data = json.loads((results / "local.json").read_text(encoding="utf-8"))
    markdown = (results / "local.md").read_text(encoding="utf-8")
    return data, markdown, stdout


def test_json_has_machine_workloads_and_results(smoke_run) -> None:
    data, _, _ = smoke_run
    assert data["mode"] == "smoke"
    for key in ("cpu_model", "logical_cpus", "python", "numpy", "ray", "ray_replay"):
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


def test_atari_benchmark_measures_every_implementation(bench_run) -> None:
    out = bench_run[0] / "atari.json"
    data = json.loads(out.read_text(encoding="utf-8"))
    expected = {"numpy ring", "ray_replay", "ray_replay next_state dedup", "ray_replay frame-stack dedup"}
    assert expected <= set(data["results"])
    for name, figures in data["results"].items():
        assert figures["add_mb_per_s"] > 0 and figures["sample_us"] > 0 and figures["memory_gb_per_100k"] > 0, name
    # Memory is a count of pages, not a timing: frame-stack dedup holds well under half of the naive ring.
    assert data["results"]["ray_replay frame-stack dedup"]["memory_gb_per_100k"] < data["results"]["numpy ring"]["memory_gb_per_100k"] / 2
    assert "| ray_replay frame-stack dedup |" in out.with_suffix(".md").read_text(encoding="utf-8")


def test_pixels_benchmark_compresses_rendered_frames(bench_run) -> None:
    out = bench_run[0] / "atari_pixels.json"
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["frames_from"].startswith("ALE")
    assert {"ray_replay", "ray_replay lz4", "ray_replay zstd"} <= set(data["results"])
    for name, figures in data["results"].items():
        assert figures["add_mb_per_s"] > 0 and figures["sample_us"] > 0, name
    # Bytes held are counted, not timed: rendered frames compress to well under half their raw size.
    for codec in ("lz4", "zstd"):
        assert data["results"][f"ray_replay {codec}"]["bytes_held_per_100k_gb"] < 100_000 * 64 * 64 * 3 / 1e9 / 2, codec
    assert "| ray_replay lz4 |" in out.with_suffix(".md").read_text(encoding="utf-8")


def test_ray_replay_bench_finds_the_checkouts_runner_or_says_why_not(tmp_path: Path) -> None:
    from ray_replay.__main__ import benchmark_runner

    assert benchmark_runner(ROOT / "tests") == ROOT / "benchmarks" / "run.py"
    done = subprocess.run([sys.executable, "-m", "ray_replay", "bench", "--quick"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 2
    assert "run it from a ray_replay source checkout" in done.stderr


def test_persistence_benchmark_measures_save_and_load(bench_run) -> None:
    out = bench_run[0] / "persistence.json"
    data = json.loads(out.read_text(encoding="utf-8"))
    assert set(data["results"]) == {"ray_replay save", "ray_replay load", "np.save", "np.load"}
    assert all(r["gb_per_s"] > 0 for r in data["results"].values())
    assert data["checkpoint_pause"]["full_copy_ms"] > 0 and data["checkpoint_pause"]["increment_ms"] > 0
    assert "| load |" in out.with_suffix(".md").read_text(encoding="utf-8")


def test_sequences_benchmark_measures_ray_replay_beside_torchrl(bench_run) -> None:
    out = bench_run[0] / "sequences.json"
    data = json.loads(out.read_text(encoding="utf-8"))
    assert {"ray_replay uniform (min_len=80)", "ray_replay prioritized (min_len=80)"} <= set(data["results"])
    assert all(r["median_ns_per_op"] > 0 for r in data["results"].values())
    # each TorchRL sampler measured, or the reason it could not be (not installed: the bench extra)
    assert set(data["results"]) | set(data["unavailable"]) >= {"TorchRL SliceSampler", "TorchRL PrioritizedSliceSampler"}
    if "TorchRL SliceSampler" in data["results"]:
        assert "ray_replay uniform (min_len=80) vs TorchRL SliceSampler" in data["ratios"]
    else:
        assert "not installed" in data["unavailable"]["TorchRL SliceSampler"]


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


def test_distributed_benchmark_measures_ray_replay_beside_its_peers(bench_run) -> None:
    results, stdout = bench_run
    data = json.loads((results / "distributed.json").read_text(encoding="utf-8"))
    assert data["machine"]["ray"] and data["seconds"] == 1.0
    peers = ["naive"] if "torchrl_version" not in data else ["naive", "torchrl"]
    if "torchrl_version" not in data:
        assert "torchrl RayReplayBuffer not measured" in stdout
    metrics = ("inserted_per_s", "sampled_per_s", "sample_p50_ms", "cpu_us_per_transition", "single_add_per_s")
    for name in ["ray_replay", "one_shard", "direct", "one_shard_direct", "handle", "handle_one_shard", *peers]:
        for key in metrics:
            assert data[name][key] > 0, (name, key)
    assert sum(data["ray_replay"]["runs"][0]["shard_sizes"]) >= data["prefill"]
    header = data["markdown"].splitlines()[2]
    assert header.startswith("| metric | ray_replay | naive actor | ratio | ray_replay, batch_from='one_shard' | ratio |")
    assert header.endswith("| target | met | met (one_shard) | met (direct) | met (one_shard, direct) | met (.remote handle) | met (.remote handle, one_shard) |")
    assert ("| torchrl RayReplayBuffer | ratio |" in header) == ("torchrl" in peers)


def test_cluster_and_durability_runs_cover_every_configuration(bench_run) -> None:
    results, _ = bench_run
    cluster = json.loads((results / "distributed_cluster.json").read_text(encoding="utf-8"))["cluster"]
    assert list(cluster["shards"]) == ["1", "2", "4"] and list(cluster["writers"]) == ["1", "2", "4"]
    assert list(cluster["shards_one_shard"]) == ["1", "2", "4"] and list(cluster["shards_one_shard_direct"]) == ["1", "2", "4"]
    for table in ("shards", "writers", "shards_one_shard", "shards_one_shard_direct"):
        assert all(r["inserted_per_s"] > 0 and r["sampled_per_s"] > 0 for r in cluster[table].values()), table
    durability = json.loads((results / "distributed_durability.json").read_text(encoding="utf-8"))["durability"]
    for name in ("plain", "checkpoints every 1 s", "replication_factor=2", "both"):
        assert durability[name]["inserted_per_s"] > 0, name
        assert f"| {name} |" in durability["markdown"], name


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's signature and IHDR chunk; raises if the file is not a PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", path
    return struct.unpack(">II", head[16:24])


def test_plots_and_summary_are_written(bench_run) -> None:
    results, stdout = bench_run
    plots = ("batch_sizes.png", "sample_percentiles.png", "distributed.png", "scaling.png")
    for name in plots:
        width, height = png_size(results / name)
        assert width >= 400 and height >= 300, name
        assert (results / name).stat().st_size > 10_000, name  # axes, lines and labels, not an empty canvas
    summary = (results / "summary.md").read_text(encoding="utf-8")
    for title in ("### (a) add one transition per call", "### DIST-1 (medians", "### DIST-1 on a simulated 4-node cluster",
                  "### DIST-1 with durability", "### sample latency vs batch size"):
        assert title in summary, title
    assert all(f"![{name}]({name})" in summary for name in plots)
    assert "wrote" in stdout and "left" in stdout  # the progress line's time left
