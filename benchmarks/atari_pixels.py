"""The 64x64x3 pixel workload of ``benchmarks/atari.py --pixels``: observations that do not stack.

Frames come from a real renderer: ALE (ale-py's bundled ROMs, through gymnasium) plays Pong,
Breakout, MsPacman and SpaceInvaders with random actions (frameskip 4, sticky actions: the v5
defaults); each 210x160x3 RGB frame is downsampled to 64x64x3 by nearest neighbour (DreamerV3 and
Procgen resolution). The distinct frames (20,000, or fewer in --quick/--smoke) are generated once
and cached under build/bench-cache/, then cycled: every row is compressed on its own, so a repeated
frame costs as much as a new one.

Rows: obs uint8[64, 64, 3] (12,288 bytes), action int64, reward float32, done bool; capacity 100,000
(20,000 with --quick); add_batch of 1,000 rows; sample 32 (fresh arrays).

Implementations: ray_replay plain, with compress={"obs": "lz4"} and {"obs": "zstd"} (level 3);
TorchRL 0.14's ReplayBuffer over CompressedListStorage (zstd level 3, its default, compressed per
item in Python), fed TensorDicts with extend(); cpprb plain (cpprb has no codec for observations that
do not stack: stack_compress needs stacks). Each runs in a process of its own (resident memory read
alone), as the Atari workload does.

Figures: memory per 100,000 observations (RSS after the fill minus before creating the buffer,
scaled), add (MB/s of raw observations, median of the steady-state add_batch calls of a full
buffer), sample 32 (median us of back-to-back calls, and of calls 1 ms of busy caller work apart, as a
learner's training steps space them: cooler caches, and a decoding helper thread asleep when the
sample comes). Targets (issue 20, with LZ4): memory <= 1/4 of raw, add >= 2,000 MB/s,
sample 32 <= 2x the uncompressed sample, and >= 10x TorchRL's CompressedListStorage on add and sample.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
CACHE = HERE.parent / "build" / "bench-cache"
OBS = (64, 64, 3)
OBS_BYTES = int(np.prod(OBS))
ADD_BATCH = 1_000
SAMPLE_BATCH = 32
SPACED_NS = 1_000_000  # caller work between the spaced samples
GAMES = ("ALE/Pong-v5", "ALE/Breakout-v5", "ALE/MsPacman-v5", "ALE/SpaceInvaders-v5")
PROFILES = {
    "full": {"capacity": 100_000, "frames": 20_000, "samples": 300, "rounds": 3, "torchrl_calls": 40},
    "quick": {"capacity": 20_000, "frames": 8_000, "samples": 200, "rounds": 1, "torchrl_calls": 10},
    "smoke": {"capacity": 2_000, "frames": 2_000, "samples": 20, "rounds": 1, "torchrl_calls": 2},
}
CASES = ("ray_replay", "ray_replay lz4", "ray_replay zstd", "torchrl CompressedListStorage", "cpprb")
TARGETS = {"memory_fraction_of_raw": 0.25, "add_mb_per_s": 2_000.0, "sample_vs_plain": 2.0, "vs_torchrl": 10.0}


def renderer_available() -> bool:
    try:
        import ale_py  # noqa: F401
        import gymnasium  # noqa: F401
    except ImportError:
        return False
    return True


def frames(count: int) -> np.ndarray:
    """`count` distinct 64x64x3 ALE frames (cached)."""
    path = CACHE / f"ale64-{count}.npy"
    if path.exists():
        return np.load(path)
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    rows = np.linspace(0, 209, OBS[0]).astype(np.int64)
    columns = np.linspace(0, 159, OBS[1]).astype(np.int64)
    out = np.empty((count, *OBS), np.uint8)
    per_game = -(-count // len(GAMES))
    n = 0
    for g, game in enumerate(GAMES):
        env = gym.make(game, render_mode=None)
        observation, _ = env.reset(seed=g)
        generator = np.random.default_rng(g)
        for _ in range(min(per_game, count - n)):
            out[n] = observation[rows][:, columns]
            n += 1
            observation, _, terminated, truncated, _ = env.step(int(generator.integers(env.action_space.n)))
            if terminated or truncated:
                observation, _ = env.reset()
        env.close()
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out


def batches(profile: dict[str, Any]) -> list[dict[str, np.ndarray]]:
    pixels = frames(profile["frames"])
    generator = np.random.default_rng(0)
    result = []
    for b in range(len(pixels) // ADD_BATCH):
        result.append({"obs": pixels[b * ADD_BATCH : (b + 1) * ADD_BATCH], "action": generator.integers(0, 18, ADD_BATCH),
                       "reward": generator.random(ADD_BATCH, dtype=np.float32), "done": generator.random(ADD_BATCH) < 0.001})
    return result


def build(case: str, capacity: int) -> tuple[Any, Any, Any]:
    """(buffer, add_batch(batch), sample(n)) for one implementation."""
    if case.startswith("ray_replay"):
        from ray_replay import ReplayBuffer

        codec = case.split()[1] if " " in case else None
        schema = {"obs": (OBS, np.uint8), "action": ((), np.int64), "reward": ((), np.float32), "done": ((), np.bool_)}
        buffer = ReplayBuffer(capacity, schema=schema, seed=0, collect_stats=False, compress={"obs": codec} if codec else None)
        return buffer, lambda b: buffer.add_batch(**b), buffer.sample
    if case == "cpprb":
        from cpprb import ReplayBuffer as CpprbReplayBuffer

        rb = CpprbReplayBuffer(capacity, {"obs": {"shape": OBS, "dtype": np.uint8}, "act": {"dtype": np.int64}, "rew": {}, "done": {}})
        return rb, lambda b: rb.add(obs=b["obs"], act=b["action"], rew=b["reward"], done=b["done"]), rb.sample
    import torch
    from tensordict import TensorDict
    from torchrl.data import CompressedListStorage, ReplayBuffer

    torch.set_num_threads(1)
    rb = ReplayBuffer(storage=CompressedListStorage(capacity, compression_level=3), batch_size=SAMPLE_BATCH)

    def add(b: dict[str, np.ndarray]) -> None:
        rb.extend(TensorDict({key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in b.items()}, batch_size=[len(b["obs"])]))

    return rb, add, lambda n: rb.sample(n)


def available(case: str) -> bool:
    module = {"cpprb": "cpprb", "torchrl CompressedListStorage": "torchrl"}.get(case)
    if module is None:
        return True
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def resident_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * 4096


def run_case(case: str, profile: dict[str, Any]) -> dict[str, Any]:
    capacity = profile["capacity"]
    inputs = batches(profile)
    # Import the implementation's modules first: RSS then measures the buffer, not torch's libraries.
    __import__({"cpprb": "cpprb", "torchrl CompressedListStorage": "torchrl.data"}.get(case, "ray_replay"))
    if case.startswith("torchrl"):
        import tensordict  # noqa: F401
    before = resident_bytes()
    buffer, add, sample = build(case, capacity)
    calls = capacity // ADD_BATCH
    for i in range(calls):  # fill
        add(inputs[i % len(inputs)])
    memory = resident_bytes() - before
    # Steady state of a full buffer; TorchRL's per-item Python compression is slow: fewer calls.
    timed = min(calls, profile["torchrl_calls"]) if case.startswith("torchrl") else calls
    add_ns = []
    for i in range(timed):
        started = time.perf_counter_ns()
        add(inputs[(calls + i) % len(inputs)])
        add_ns.append(time.perf_counter_ns() - started)
    sample_ns = []
    for _ in range(profile["samples"]):
        started = time.perf_counter_ns()
        sample(SAMPLE_BATCH)
        sample_ns.append(time.perf_counter_ns() - started)
    # A learner samples once per training step: the same calls with SPACED_NS of busy caller work
    # between them (caches cooled, a decoding helper thread asleep when the sample comes).
    spaced_ns = []
    for _ in range(profile["samples"]):
        started = time.perf_counter_ns()
        sample(SAMPLE_BATCH)
        spaced_ns.append(time.perf_counter_ns() - started)
        until = time.perf_counter_ns() + SPACED_NS
        while time.perf_counter_ns() < until:
            pass
    extra = {}
    if case.startswith("ray_replay"):
        stats = buffer.stats()
        extra = {"bytes_held": stats["bytes_held"], "bytes_raw": stats["bytes_raw"],
                 "obs_ratio": stats.get("compression", {}).get("obs", {}).get("ratio", 1.0)}
    del buffer
    return {"add_ns": add_ns, "sample_ns": sample_ns, "spaced_ns": spaced_ns, "memory_bytes": memory, "capacity": capacity, **extra}


def summarize(runs: dict[str, list[dict[str, Any]]], profile: dict[str, Any]) -> dict[str, dict[str, Any]]:
    scale = 100_000 / profile["capacity"]
    results = {}
    for case, case_runs in runs.items():
        add_ns = [ns for run in case_runs for ns in run["add_ns"]]
        sample_ns = [ns for run in case_runs for ns in run["sample_ns"]]
        spaced_ns = [ns for run in case_runs for ns in run.get("spaced_ns", [])]
        results[case] = {
            "add_mb_per_s": ADD_BATCH * OBS_BYTES / statistics.median(add_ns) * 1e3,
            "add_mb_per_s_range": [ADD_BATCH * OBS_BYTES / max(add_ns) * 1e3, ADD_BATCH * OBS_BYTES / min(add_ns) * 1e3],
            "sample_us": statistics.median(sample_ns) / 1e3,
            "sample_us_range": [min(sample_ns) / 1e3, max(sample_ns) / 1e3],
            "sample_spaced_us": statistics.median(spaced_ns) / 1e3 if spaced_ns else None,
            "sample_spaced_us_range": [min(spaced_ns) / 1e3, max(spaced_ns) / 1e3] if spaced_ns else None,
            "memory_gb_per_100k": statistics.median(run["memory_bytes"] for run in case_runs) * scale / 1e9,
            "obs_ratio": case_runs[0].get("obs_ratio"),
            "bytes_held_per_100k_gb": case_runs[0]["bytes_held"] * scale / 1e9 if "bytes_held" in case_runs[0] else None,
        }
    return results


def table(results: dict[str, dict[str, Any]], profile: dict[str, Any], rounds: int) -> str:
    raw_gb = 100_000 * OBS_BYTES / 1e9
    lines = [
        f"### 64x64x3 pixels (ALE frames, no stacking; capacity {profile['capacity']:,}, add_batch {ADD_BATCH:,}, sample {SAMPLE_BATCH}; "
        f"medians over {rounds} round(s); raw observations: {raw_gb:.2f} GB per 100k)",
        "",
        "| implementation | memory per 100k obs (GB, RSS) | of raw | stats bytes_held (GB) | add (MB/s of raw obs) | sample 32 (us) | sample 32, 1 ms apart (us) |",
        "|---|---|---|---|---|---|---|",
    ]
    for case, r in results.items():
        held = f"{r['bytes_held_per_100k_gb']:.3f}" if r["bytes_held_per_100k_gb"] is not None else "-"
        lo, hi = r["add_mb_per_s_range"]
        slo, shi = r["sample_us_range"]
        spaced = r.get("sample_spaced_us")
        spaced_cell = f"{spaced:,.1f} ({r['sample_spaced_us_range'][0]:,.1f}-{r['sample_spaced_us_range'][1]:,.1f})" if spaced else "-"
        lines.append(f"| {case} | {r['memory_gb_per_100k']:.3f} | {r['memory_gb_per_100k'] / raw_gb:.2f} | {held} | "
                     f"{r['add_mb_per_s']:,.0f} ({lo:,.0f}-{hi:,.0f}) | {r['sample_us']:,.1f} ({slo:,.1f}-{shi:,.1f}) | {spaced_cell} |")
    lz4, plain, torchrl = results.get("ray_replay lz4"), results.get("ray_replay"), results.get("torchrl CompressedListStorage")
    if lz4 and plain:
        verdict = [
            f"memory <= 1/4 of raw: {'met' if lz4['memory_gb_per_100k'] <= raw_gb / 4 else 'not met'} ({lz4['memory_gb_per_100k'] / raw_gb:.2f})",
            f"add >= 2,000 MB/s: {'met' if lz4['add_mb_per_s'] >= 2_000 else 'not met'} ({lz4['add_mb_per_s']:,.0f})",
            f"sample 32 <= 2x uncompressed: {'met' if lz4['sample_us'] <= 2 * plain['sample_us'] else 'not met'} "
            f"({lz4['sample_us'] / plain['sample_us']:.2f}x back to back"
            + (f", {lz4['sample_spaced_us'] / plain['sample_spaced_us']:.2f}x 1 ms apart)" if lz4.get("sample_spaced_us") and plain.get("sample_spaced_us") else ")"),
        ]
        if torchrl:
            add_x, sample_x = lz4["add_mb_per_s"] / torchrl["add_mb_per_s"], torchrl["sample_us"] / lz4["sample_us"]
            verdict.append(f">= 10x TorchRL's CompressedListStorage: add {add_x:,.1f}x, sample {sample_x:,.1f}x "
                           f"({'met' if min(add_x, sample_x) >= 10 else 'not met'})")
        lines += ["", "Targets (ray_replay lz4): " + "; ".join(verdict) + "."]
    return "\n".join(lines) + "\n"
