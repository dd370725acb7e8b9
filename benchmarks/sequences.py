"""Sequence sampling benchmark: ReplayBuffer.sample(64, seq_len=80) against TorchRL's SliceSampler and
PrioritizedSliceSampler over the same 1,000,000 rows, in the same run.

    python benchmarks/sequences.py [--quick | --smoke] [--out benchmarks/results/sequences.json]

Workload (issue 16): rows of obs float32[64], action int64, reward float32, done bool, episodes of
random length (geometric, mean 500 steps) stored one after another; 64 sequences of 80 steps per
sample. Same contract on both sides: only full-length sequences (TorchRL's default strict_length=True,
ray_replay's min_len=80), which never cross an episode end. ray_replay also runs its default (shorter
sequences padded, with a mask). TorchRL: TensorDictReplayBuffer over LazyTensorStorage, trajectories
by an "episode" key, cache_values=True (the episode boundaries are computed once: its fastest
setting for a buffer that is not written between samples); torch on one thread, as ray_replay's
sampling is. Prioritized: alpha 0.6, beta 0.4, every row at the initial priority.

Figures: wall-clock medians per sample() call over interleaved repetitions (common.measure_interleaved),
with the range. Target: ray_replay >= 10x faster than each TorchRL sampler.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import common  # noqa: E402

PROFILES = {"full": (1_000_000, 5, 0.5), "quick": (200_000, 5, 0.3), "smoke": (5_000, 2, 0.05)}
NUM_SEQUENCES, SEQ_LEN = 64, 80
TARGET_RATIO = 10.0


def make_data(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = []
    while sum(lengths) < rows:
        lengths.append(int(rng.geometric(1 / 500)) + 1)
    episode = np.repeat(np.arange(len(lengths)), lengths)[:rows]
    done = np.zeros(rows, dtype=bool)
    done[np.cumsum(lengths)[:-1] - 1] = True  # the last row of every whole episode
    done = done[:rows]
    return {
        "obs": rng.standard_normal((rows, 64), dtype=np.float32),
        "action": rng.integers(0, 18, size=rows, dtype=np.int64),
        "reward": rng.standard_normal(rows, dtype=np.float32),
        "done": done,
        "episode": episode.astype(np.int64),
    }


def ray_replay_case(data: dict[str, np.ndarray], buffer_type: str, min_len: int | None) -> common.Case:
    from ray_replay import ReplayBuffer

    rows = len(data["obs"])
    buffer = ReplayBuffer(rows, buffer_type, seed=0, collect_stats=False)  # type: ignore[arg-type]
    buffer.add_batch(obs=data["obs"], action=data["action"], reward=data["reward"], done=data["done"])
    batch = buffer.sample(NUM_SEQUENCES, seq_len=SEQ_LEN, min_len=min_len)
    assert batch["obs"].shape == (NUM_SEQUENCES, SEQ_LEN, 64)
    if min_len is not None:
        assert batch["mask"].all()

    def run(count: int) -> tuple[int, int]:
        started = common.start()
        for _ in range(count):
            buffer.sample(NUM_SEQUENCES, seq_len=SEQ_LEN, min_len=min_len)
        return common.stop(started)

    return run


def torchrl_case(data: dict[str, np.ndarray], prioritized: bool) -> common.Case:
    import torch
    from tensordict import TensorDict
    from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
    from torchrl.data.replay_buffers.samplers import PrioritizedSliceSampler, SliceSampler

    torch.set_num_threads(1)
    rows = len(data["obs"])
    sampler: Any
    if prioritized:
        sampler = PrioritizedSliceSampler(max_capacity=rows, alpha=0.6, beta=0.4, num_slices=NUM_SEQUENCES, traj_key="episode",
                                          cache_values=True)
    else:
        sampler = SliceSampler(num_slices=NUM_SEQUENCES, traj_key="episode", cache_values=True)
    buffer = TensorDictReplayBuffer(storage=LazyTensorStorage(rows), sampler=sampler, batch_size=NUM_SEQUENCES * SEQ_LEN)
    buffer.extend(TensorDict({key: torch.from_numpy(value) for key, value in data.items()}, batch_size=[rows]))
    sample = buffer.sample()
    assert sample["obs"].shape == (NUM_SEQUENCES * SEQ_LEN, 64)

    def run(count: int) -> tuple[int, int]:
        started = common.start()
        for _ in range(count):
            buffer.sample()
        return common.stop(started)

    return run


def extension_error() -> str:
    """Why torchrl's C++ extension does not load, if it does not (a torch build it was not compiled for)."""
    try:
        import torch  # noqa: F401
        import torchrl._torchrl  # noqa: F401
    except ImportError as error:
        text = str(error)
        return "torchrl._torchrl: " + (text.split(":", 2)[-1].strip()[:60] + "..." if "undefined symbol" in text else text)
    return "torchrl._torchrl loads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", default=str(HERE / "results" / "sequences.json"))
    args = parser.parse_args()
    profile = "smoke" if args.smoke else "quick" if args.quick else "full"
    rows, repetitions, rep_seconds = PROFILES[profile]
    data = make_data(rows)
    cases = {
        "ray_replay uniform (min_len=80)": (ray_replay_case(data, "uniform", SEQ_LEN), 10_000),
        "ray_replay uniform (padded, mask)": (ray_replay_case(data, "uniform", None), 10_000),
        "ray_replay prioritized (min_len=80)": (ray_replay_case(data, "prioritized", SEQ_LEN), 10_000),
    }
    unavailable: dict[str, str] = {}
    try:
        cases["TorchRL SliceSampler"] = (torchrl_case(data, False), 1_000)
    except ImportError as error:  # torchrl and tensordict come with the bench extra (make bench installs them)
        unavailable["TorchRL SliceSampler"] = unavailable["TorchRL PrioritizedSliceSampler"] = f"not installed ({error})"
    if "TorchRL SliceSampler" in cases:
        try:
            cases["TorchRL PrioritizedSliceSampler"] = (torchrl_case(data, True), 1_000)
        except RuntimeError as error:  # its sum tree lives in torchrl's C++ extension, which must match the torch build
            unavailable["TorchRL PrioritizedSliceSampler"] = f"{error} ({extension_error()})"
    results = common.measure_interleaved(cases, repetitions=repetitions, rep_seconds=rep_seconds)
    pairs = [("ray_replay uniform (min_len=80)", "TorchRL SliceSampler"),
             ("ray_replay prioritized (min_len=80)", "TorchRL PrioritizedSliceSampler")]
    ratios = {f"{ours} vs {theirs}": results[theirs].median_ns / results[ours].median_ns for ours, theirs in pairs if theirs in results}
    cpu_ratios = {f"{ours} vs {theirs}": results[theirs].cpu_median_ns / results[ours].cpu_median_ns for ours, theirs in pairs if theirs in results}
    data_out = {
        "benchmark": "sequences",
        "profile": profile,
        "rows": rows,
        "num_sequences": NUM_SEQUENCES,
        "seq_len": SEQ_LEN,
        "episodes": int(data["episode"][-1]) + 1,
        "machine": common.machine_info(),
        "results": {name: m.to_json() for name, m in results.items()},
        "ratios": ratios,
        "cpu_time_ratios": cpu_ratios,
        "unavailable": unavailable,
        "target_ratio": TARGET_RATIO,
    }
    common.write_json(data_out, args.out)
    lines = [f"### Sampling {NUM_SEQUENCES} sequences of {SEQ_LEN} from {rows:,} rows (obs float32[64]; {profile} profile, "
             f"medians of {repetitions} interleaved repetitions, with their range)", "",
             "| implementation | median per sample | range | thread CPU-time median |", "|---|---|---|---|"]
    for name, m in results.items():
        lines.append(f"| {name} | {common.format_value(m.median_ns, 'us')} | {common.format_value(m.min_ns, 'us')} - "
                     f"{common.format_value(max(m.per_op_ns), 'us')} | {common.format_value(m.cpu_median_ns, 'us')} |")
    for name, reason in unavailable.items():
        lines.append(f"| {name} | unavailable: {reason} | | |")
    lines.append("")
    for label, ratio in ratios.items():
        lines.append(f"- {label}: {ratio:.1f}x faster in wall-clock medians (target >= {TARGET_RATIO:.0f}x: "
                     f"{'met' if ratio >= TARGET_RATIO else 'NOT met'}); {cpu_ratios[label]:.1f}x in thread CPU time")
    lines.append(f"\nMachine: {data_out['machine']['cpu_model']}, {data_out['machine']['usable_cpus']} usable CPUs, load average at start "
                 f"{data_out['machine']['load_average_at_start']} (shared with other sessions: wall figures include waiting for a CPU).")
    text = "\n".join(lines) + "\n"
    Path(args.out).with_suffix(".md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
