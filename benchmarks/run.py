"""``make bench``: every benchmark in one run, with progress and an estimate of the time left.

    python benchmarks/run.py [--quick | --smoke] [--skip NAME ...] [--results DIR]

Steps (each writes JSON and Markdown under benchmarks/results/):
  local        ray_replay beside numpy ring, deque, cpprb, TorchRL and a numpy sum tree; includes the C++ benchmark
  batch_sizes  sample latency per call vs batch size (ray_replay uniform and prioritized, numpy ring)
  atari        Atari-sized observations with and without dedup, beside a numpy ring and cpprb
  pixels       64x64x3 ALE frames that do not stack, plain and compressed (LZ4, zstd), beside TorchRL's
               CompressedListStorage and cpprb
  persistence  save / load throughput beside np.save / np.load
  sequences    sample(64, seq_len=80) from 1M rows beside TorchRL's SliceSampler / PrioritizedSliceSampler
  distributed  DIST-1 on Ray: ReplayCoordinator/ReplayClient vs a naive numpy actor and TorchRL's RayReplayBuffer
  scaling      DIST-1 with 1, 2, 4 shards and 1, 2, 4 writers on a simulated 4-node cluster (full mode only)
  durability   DIST-1 plain, with shard checkpoints, with replication_factor=2 (full mode only)
  rllib        DQN on CartPole with RLlib's buffer vs ray_replay (full mode only: ~1 hour)
Then it draws the plots (PNG, matplotlib) and writes benchmarks/results/summary.md.
--quick takes under 2 minutes on a 2-core machine; the full run about 15 minutes plus RLlib. --smoke
runs every step but rllib at tiny sizes (figures meaningless; about 3 minutes), for the test suite.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"  # the default of --results
sys.path.insert(0, str(HERE))

from baselines.numpy_ring import NumpyRing  # noqa: E402
from common import SCHEMA, machine_info  # noqa: E402

from ray_replay import ReplayBuffer  # noqa: E402

BATCH_SIZES = (32, 64, 128, 256, 512, 1024)


def progress(step: int, steps: list[tuple[str, float]], started: float) -> None:
    """A progress bar with the time left, estimated from the planned step durations and the pace so far."""
    planned_done = sum(seconds for _, seconds in steps[:step])
    planned_total = sum(seconds for _, seconds in steps)
    elapsed = time.monotonic() - started
    pace = elapsed / planned_done if planned_done else 1.0
    left = (planned_total - planned_done) * pace
    width = 30
    filled = int(width * planned_done / planned_total) if planned_total else width  # every step skipped: plots only
    name = steps[step][0] if step < len(steps) else "plots"
    print(f"[{'#' * filled}{'.' * (width - filled)}] {step}/{len(steps)} {name:<12} elapsed {elapsed:5.0f} s, ~{left:4.0f} s left",
          flush=True)


def run_script(script: str, *args: str, out: Path) -> None:
    subprocess.run([sys.executable, str(HERE / script), *args, "--out", str(out)], check=True)


def batch_size_sweep(mode: str, results: Path) -> dict[str, Any]:
    """Median sample latency (us) per batch size, in one process, from full buffers (1,000,000 rows;
    200,000 with --quick, 5,000 with --smoke)."""
    capacity = {"full": 1_000_000, "quick": 200_000, "smoke": 5_000}[mode]
    rng = np.random.default_rng(0)
    rows = {name: (rng.random((capacity, *shape)) * 10).astype(dtype) for name, (shape, dtype) in SCHEMA.items()}
    uniform = ReplayBuffer(capacity, "uniform", schema=SCHEMA, seed=0, collect_stats=False)
    prioritized = ReplayBuffer(capacity, "prioritized", schema=SCHEMA, seed=0, collect_stats=False)
    uniform.add_batch(**rows)
    prioritized.add_batch(**rows, priorities=rng.random(capacity))
    ring = NumpyRing(capacity, SCHEMA)
    ring.add_batch(*rows.values())
    cases = {
        "ray_replay uniform": lambda n: uniform.sample(n),
        "ray_replay prioritized": lambda n: prioritized.sample(n),
        "numpy ring": lambda n: ring.sample(n),
    }
    repetitions = {"full": 200, "quick": 30, "smoke": 3}[mode]
    result: dict[str, Any] = {"capacity": capacity, "repetitions": repetitions, "batch_sizes": list(BATCH_SIZES), "us": {},
                              "percentiles_us": {}}
    for name, sample in cases.items():
        medians = []
        percentiles: dict[str, list[float]] = {"p50": [], "p90": [], "p99": []}
        for n in BATCH_SIZES:
            times = []
            for _ in range(repetitions):
                start = time.perf_counter_ns()
                sample(n)
                times.append((time.perf_counter_ns() - start) / 1e3)
            medians.append(float(np.median(times)))
            for key in percentiles:
                percentiles[key].append(float(np.percentile(times, int(key[1:]))))
        result["us"][name] = medians
        result["percentiles_us"][name] = percentiles
    (results / "batch_sizes.json").write_text(json.dumps({"machine": machine_info(), **result}, indent=2))
    return result


def plots(results: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    sweep = results / "batch_sizes.json"
    if sweep.exists():
        data = json.loads(sweep.read_text())
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, values in data["us"].items():
            ax.plot(data["batch_sizes"], values, marker="o", label=name)
        ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="median latency per sample() call (us)",
               title=f"sample latency vs batch size ({data['capacity']:,} rows)")
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(results / "batch_sizes.png", dpi=110)
        made.append("batch_sizes.png")
        if "percentiles_us" in data:
            fig, ax = plt.subplots(figsize=(6, 4))
            for (name, values), color in zip(data["percentiles_us"].items(), ("tab:blue", "tab:orange", "tab:green")):
                ax.plot(data["batch_sizes"], values["p50"], marker="o", color=color, label=f"{name} p50")
                ax.plot(data["batch_sizes"], values["p99"], marker="^", linestyle="--", color=color, label=f"{name} p99")
                ax.fill_between(data["batch_sizes"], values["p50"], values["p90"], color=color, alpha=0.15)
            ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="sample() latency (us)",
                   title=f"sample latency percentiles (p50, p50-p90 band, p99; {data['capacity']:,} rows)")
            ax.legend(fontsize=7)
            ax.grid(True, which="both", alpha=0.3)
            fig.tight_layout()
            fig.savefig(results / "sample_percentiles.png", dpi=110)
            made.append("sample_percentiles.png")
    distributed = results / "distributed.json"
    if distributed.exists():
        data = json.loads(distributed.read_text())
        names = [n for n in ("ray_replay", "naive", "torchrl") if n in data]
        labels = {"ray_replay": "ray_replay", "naive": "naive actor", "torchrl": "TorchRL\nRayReplayBuffer"}
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
        x = np.arange(len(names))
        left.bar(x - 0.2, [data[n]["inserted_per_s"] / 1e3 for n in names], 0.4, label="inserted/s")
        left.bar(x + 0.2, [data[n]["sampled_per_s"] / 1e3 for n in names], 0.4, label="sampled/s")
        left.set(xticks=x, xticklabels=[labels[n] for n in names], ylabel="thousand transitions / s", title="DIST-1 throughput")
        left.legend()
        right.bar(x - 0.2, [data[n]["sample_p50_ms"] for n in names], 0.4, label="p50")
        right.bar(x + 0.2, [data[n]["sample_p99_ms"] for n in names], 0.4, label="p99")
        right.set(xticks=x, xticklabels=[labels[n] for n in names], ylabel="ms", title="learner-side sample latency (512)")
        right.legend()
        fig.tight_layout()
        fig.savefig(results / "distributed.png", dpi=110)
        made.append("distributed.png")
    scaling = results / "distributed_cluster.json"
    if scaling.exists():
        data = json.loads(scaling.read_text())["cluster"]
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, table, xlabel in zip(axes, ("shards", "writers"),
                                     ("shards (2 writers)", f"writers ({data['writers_with_shards']} shards)")):
            runs = data[table]
            counts = [int(k) for k in runs]
            ax.plot(counts, [r["inserted_per_s"] / 1e3 for r in runs.values()], marker="o", label="inserted/s (thousands)")
            ax.plot(counts, [r["sampled_per_s"] / 1e3 for r in runs.values()], marker="^", label="sampled/s (thousands)")
            ax.set(xlabel=f"{xlabel}, simulated 4-node cluster", ylabel="thousand transitions / s", xticks=counts,
                   title=f"DIST-1 vs number of {table}")
            cpu = ax.twinx()
            cpu.plot(counts, [r["cpu_us_per_transition"] for r in runs.values()], marker="s", color="tab:red", label="CPU-us per transition")
            cpu.set(ylabel="CPU-us per transition", ylim=(0, None))
            lines, more = ax.get_legend_handles_labels(), cpu.get_legend_handles_labels()
            ax.legend(lines[0] + more[0], lines[1] + more[1], loc="center right", fontsize=8)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(results / "scaling.png", dpi=110)
        made.append("scaling.png")
    plt.close("all")
    return made


def summary(made: list[str], results: Path) -> None:
    parts = ["# Benchmark results", ""]
    for name in ("local.md", "atari.md", "atari_pixels.md", "persistence.md", "sequences.md", "distributed.json", "distributed_cluster.md", "distributed_durability.md",
                 "rllib_dqn.md"):
        path = results / name
        if path.exists():
            parts.append(json.loads(path.read_text())["markdown"] if name.endswith(".json") else path.read_text())
            parts.append("")
    sweep = results / "batch_sizes.json"
    if sweep.exists():
        data = json.loads(sweep.read_text())
        parts += ["### sample latency vs batch size (median us per call)", "",
                  "| implementation | " + " | ".join(map(str, data["batch_sizes"])) + " |",
                  "|---|" + "---|" * len(data["batch_sizes"])]
        parts += [f"| {name} | " + " | ".join(f"{v:.1f}" for v in values) + " |" for name, values in data["us"].items()]
        parts.append("")
    parts += [f"![{name}]({name})" for name in made]
    (results / "summary.md").write_text("\n".join(parts) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="short runs: under 2 minutes in all")
    mode.add_argument("--smoke", action="store_true", help="every step but rllib at tiny sizes, for the test suite")
    parser.add_argument("--skip", nargs="*", default=[], help="steps to leave out (local, batch_sizes, atari, pixels, persistence, sequences, distributed, scaling, durability, rllib, apex)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where JSON, Markdown and plots go")
    args = parser.parse_args()
    results: Path = args.results
    results.mkdir(parents=True, exist_ok=True)
    name = "smoke" if args.smoke else "quick" if args.quick else "full"
    short = {"full": [], "quick": ["--quick"], "smoke": ["--smoke"]}[name]

    def script(file: str, *options: str, out: str) -> Any:
        return lambda: run_script(file, *options, out=results / out)

    plan: list[tuple[str, float, Any]] = [
        ("local", {"full": 60, "quick": 22, "smoke": 5}[name], script("local.py", *short, *(["--no-cpp"] if args.smoke else []), out="local.json")),
        ("batch_sizes", {"full": 40, "quick": 10, "smoke": 1}[name], lambda: batch_size_sweep(name, results)),
        ("atari", {"full": 60, "quick": 16, "smoke": 5}[name], script("atari.py", *short, out="atari.json")),
        ("pixels", {"full": 120, "quick": 30, "smoke": 20}[name], script("atari.py", "--pixels", *short, out="atari_pixels.json")),
        ("persistence", {"full": 20, "quick": 5, "smoke": 2}[name], script("persistence.py", *short, out="persistence.json")),
        ("sequences", {"full": 60, "quick": 20, "smoke": 10}[name], script("sequences.py", *short, out="sequences.json")),
        ("distributed", {"full": 240, "quick": 65, "smoke": 60}[name], script("distributed.py", *short, out="distributed.json")),
    ]
    if name == "full":
        plan += [
            ("scaling", 360, script("distributed.py", "--cluster", "--seconds", "10", "--prefill", "200000", "--repeats", "1", out="distributed.json")),
            ("durability", 240, script("distributed.py", "--durability", "--seconds", "10", "--prefill", "200000", "--repeats", "2", out="distributed.json")),
            ("rllib", 3600, script("rllib_dqn.py", out="")),
            ("apex", 3600, script("apex.py", out="")),
        ]
    elif name == "smoke":  # RLlib's training has its own test (tests/test_rllib.py)
        plan += [
            ("scaling", 60, script("distributed.py", "--cluster", "--smoke", out="distributed.json")),
            ("durability", 45, script("distributed.py", "--durability", "--smoke", out="distributed.json")),
        ]
    plan = [step for step in plan if step[0] not in args.skip]
    steps = [(step, seconds) for step, seconds, _ in plan]
    started = time.monotonic()
    for i, (_, _, run) in enumerate(plan):
        progress(i, steps, started)
        run()
    progress(len(plan), steps, started)
    made = plots(results)
    summary(made, results)
    print(f"wrote {results / 'summary.md'} and {', '.join(made)} in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
