"""Atari-sized benchmark: pixel observations, with and without observation dedup, beside its peers.

    python benchmarks/atari.py [--quick | --smoke] [--rounds N] [--out benchmarks/results/atari.json]
    python benchmarks/atari.py --pixels [--quick | --smoke] [--rounds N]   (-> results/atari_pixels.json, .md)

--pixels runs the 64x64x3 workload of observations that do not stack, with per-field compression,
beside TorchRL's CompressedListStorage and cpprb: see benchmarks/atari_pixels.py.

Workload (issue 8): state and next_state uint8[84, 84, 4] (four 84x84 frames stacked on the last
axis, 28,224 bytes each), action int64, reward float32, done bool; capacity 100,000 (20,000 with
--quick); add_batch of 1,000 transitions from one environment playing episodes of 2,000 steps (a
reset repeats its first frame four times, as gymnasium's FrameStackObservation does); sample 32.

Implementations: a numpy ring (state and next_state stored as given), cpprb's ReplayBuffer plain and
with next_of + stack_compress (cpprb's two memory options), ray_replay plain, with
next_state="dedup" and with frame_stack_axis=-1 (both dedups).

Each implementation runs in a process of its own, so its resident memory can be read alone: it
builds its input (the same frames for every implementation), fills the buffer once (resident memory
is read after this fill), then adds one more full pass of batches while timing each call (the steady
state of a full ring), then times sample(32) returning fresh arrays and, where the implementation
offers it, into preallocated arrays (out=). Processes run one after the other, in --rounds rounds
with the order rotated, and the figures are medians over all calls of all rounds.

Figures:
  add      MB/s of observation data handed in (state + next_state: 56,448 bytes per transition);
  sample   us per sample(32) call (fresh arrays: what allocating 1.8 MB per call costs depends on
           the allocator's state; ray_replay recycles the memory of freed results), and into out=;
  memory   resident memory of the filled buffer (RSS after the fill minus RSS before creating it),
           scaled to 100,000 transitions in --quick mode.
Targets: add >= 9,000 MB/s, sample 32 <= 120 us, memory <= 1.0 GB with frame-stack dedup.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import atari_pixels  # noqa: E402
import common  # noqa: E402

FRAME = (84, 84)
STACK = 4
OBSERVATION = (*FRAME, STACK)
OBSERVATION_BYTES = int(np.prod(OBSERVATION))
EPISODE = 2_000
ADD_BATCH = 1_000
SAMPLE_BATCH = 32
SCHEMA = {
    "state": (OBSERVATION, np.uint8),
    "action": ((), np.int64),
    "reward": ((), np.float32),
    "next_state": (OBSERVATION, np.uint8),
    "done": ((), np.bool_),
}
TARGETS = {"add_mb_per_s": 9_000.0, "sample_us": 120.0, "memory_gb": 1.0}
PROFILES = {
    "full": {"capacity": 100_000, "input_batches": 8, "samples": 300, "rounds": 3},
    "quick": {"capacity": 20_000, "input_batches": 4, "samples": 200, "rounds": 1},
    "smoke": {"capacity": 2_000, "input_batches": 2, "samples": 20, "rounds": 1},
}
CASES = ("numpy ring", "cpprb", "cpprb next_of+stack_compress", "ray_replay", "ray_replay next_state dedup",
         "ray_replay frame-stack dedup")


def make_input(batches: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Consecutive batches of one environment's transitions: each state is the previous next_state."""
    rng = np.random.default_rng(seed)
    steps = batches * ADD_BATCH
    frames = rng.integers(0, 256, (steps + 1, *FRAME), dtype=np.uint8)

    def window(end: int, episode_start: int) -> np.ndarray:  # the stack whose newest frame is `end`
        return np.stack([frames[max(episode_start, end - STACK + 1 + j)] for j in range(STACK)], axis=-1)

    state = np.empty((steps, *OBSERVATION), np.uint8)
    next_state = np.empty_like(state)
    for t in range(steps):
        episode_start = t - t % EPISODE  # a reset repeats the episode's first frame
        state[t] = window(t, episode_start)
        next_state[t] = window(t + 1, episode_start)
    done = (np.arange(steps) % EPISODE) == EPISODE - 1
    return [
        {"state": state[b * ADD_BATCH : (b + 1) * ADD_BATCH], "action": rng.integers(0, 18, ADD_BATCH),
         "reward": rng.random(ADD_BATCH, dtype=np.float32), "next_state": next_state[b * ADD_BATCH : (b + 1) * ADD_BATCH],
         "done": done[b * ADD_BATCH : (b + 1) * ADD_BATCH]}
        for b in range(batches)
    ]


def build(case: str, capacity: int) -> tuple[Any, Any, Any, Any]:
    """(buffer, add_batch(batch), sample(n), sample_into(n, out) or None) for one implementation."""
    if case == "numpy ring":
        from baselines.numpy_ring import NumpyRing

        ring = NumpyRing(capacity, SCHEMA)
        add = lambda b: ring.add_batch(b["state"], b["action"], b["reward"], b["next_state"], b["done"])  # noqa: E731
        return ring, add, ring.sample, ring.sample_into
    if case.startswith("cpprb"):
        from cpprb import ReplayBuffer as CpprbReplayBuffer

        env = {"obs": {"shape": OBSERVATION, "dtype": np.uint8}, "act": {"dtype": np.int64}, "rew": {}, "done": {}}
        compressed = case != "cpprb"
        if not compressed:
            env["next_obs"] = {"shape": OBSERVATION, "dtype": np.uint8}
        options = {"next_of": ("obs",), "stack_compress": "obs"} if compressed else {}
        rb = CpprbReplayBuffer(capacity, env, **options)

        def add(b: dict[str, np.ndarray]) -> None:
            rb.add(obs=b["state"], act=b["action"], rew=b["reward"], next_obs=b["next_state"], done=b["done"])

        return rb, add, rb.sample, None
    from ray_replay import ReplayBuffer

    options = {"next_state": "dedup"} if "dedup" in case else {}
    if case == "ray_replay frame-stack dedup":
        options["frame_stack_axis"] = -1
    buffer = ReplayBuffer(capacity, "uniform", schema=SCHEMA, seed=0, collect_stats=False, **options)
    return buffer, lambda b: buffer.add_batch(**b), buffer.sample, lambda n, out: buffer.sample(n, out=out)


def resident_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * 4096


def run_case(case: str, profile: dict[str, Any]) -> dict[str, Any]:
    capacity = profile["capacity"]
    batches = make_input(profile["input_batches"])
    before = resident_bytes()
    buffer, add, sample, sample_into = build(case, capacity)
    calls = capacity // ADD_BATCH
    for i in range(calls):  # fill: first touch of every page
        add(batches[i % len(batches)])
    memory = resident_bytes() - before
    add_ns = []
    for i in range(calls):  # steady state: a full ring overwriting its oldest rows
        started = time.perf_counter_ns()
        add(batches[(calls + i) % len(batches)])
        add_ns.append(time.perf_counter_ns() - started)
    sample_ns = []
    for _ in range(profile["samples"]):
        started = time.perf_counter_ns()
        sample(SAMPLE_BATCH)
        sample_ns.append(time.perf_counter_ns() - started)
    sample_into_ns = []
    if sample_into is not None:
        out = sample(SAMPLE_BATCH)
        for _ in range(profile["samples"]):
            started = time.perf_counter_ns()
            sample_into(SAMPLE_BATCH, out)
            sample_into_ns.append(time.perf_counter_ns() - started)
    del buffer
    return {"add_ns": add_ns, "sample_ns": sample_ns, "sample_into_ns": sample_into_ns, "memory_bytes": memory, "capacity": capacity}


def available(case: str) -> bool:
    if not case.startswith("cpprb"):
        return True
    try:
        import cpprb  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true")
    mode.add_argument("--smoke", action="store_true", help="tiny sizes, for the test suite")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "atari.json")
    parser.add_argument("--pixels", action="store_true", help="the 64x64x3 compression workload (benchmarks/atari_pixels.py)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one implementation, print JSON
    args = parser.parse_args()
    name = "smoke" if args.smoke else "quick" if args.quick else "full"
    if args.pixels:
        return pixels_main(args, name)
    profile = PROFILES[name]
    if args.case:
        print(json.dumps(run_case(args.case, profile)))
        return 0
    cases = [case for case in CASES if available(case)]
    rounds = args.rounds or profile["rounds"]
    runs: dict[str, list[dict[str, Any]]] = {case: [] for case in cases}
    flags = [f"--{name}"] if name != "full" else []
    for r in range(rounds):
        for case in cases[r % len(cases):] + cases[: r % len(cases)]:
            output = subprocess.run([sys.executable, __file__, "--case", case, *flags], check=True, capture_output=True, text=True).stdout
            runs[case].append(json.loads(output))
    scale = 100_000 / profile["capacity"]
    results = {}
    for case, case_runs in runs.items():
        add_ns = statistics.median(ns for run in case_runs for ns in run["add_ns"])
        results[case] = {
            "add_mb_per_s": ADD_BATCH * 2 * OBSERVATION_BYTES / add_ns * 1e3,
            "add_ms_per_batch": add_ns / 1e6,
            "sample_us": statistics.median(ns for run in case_runs for ns in run["sample_ns"]) / 1e3,
            "sample_into_us": statistics.median(into) / 1e3 if (into := [ns for run in case_runs for ns in run["sample_into_ns"]]) else None,
            "memory_gb_per_100k": statistics.median(run["memory_bytes"] for run in case_runs) * scale / 1e9,
        }
    markdown = table(results, profile, rounds)
    data = {"machine": common.machine_info(), "profile": name, **profile, "rounds": rounds, "targets": TARGETS,
            "results": results, "markdown": markdown}
    common.write_json(data, args.out)
    args.out.with_suffix(".md").write_text(markdown, encoding="utf-8")
    print(markdown)
    return 0


def pixels_main(args: argparse.Namespace, name: str) -> int:
    """--pixels: the 64x64x3 workload, each implementation in a process of its own."""
    profile = atari_pixels.PROFILES[name]
    if args.case:
        print(json.dumps(atari_pixels.run_case(args.case, profile)))
        return 0
    if not atari_pixels.renderer_available():
        print("--pixels needs ale-py and gymnasium (pip install ale-py): no frames to compress; skipped")
        return 0
    atari_pixels.frames(profile["frames"])  # generate (and cache) the frames once, outside the timed processes
    cases = [case for case in atari_pixels.CASES if atari_pixels.available(case)]
    rounds = args.rounds or profile["rounds"]
    runs: dict[str, list[dict[str, Any]]] = {case: [] for case in cases}
    flags = ["--pixels"] + ([f"--{name}"] if name != "full" else [])
    for r in range(rounds):
        for case in cases[r % len(cases):] + cases[: r % len(cases)]:
            output = subprocess.run([sys.executable, __file__, "--case", case, *flags], check=True, capture_output=True, text=True).stdout
            runs[case].append(json.loads(output.strip().splitlines()[-1]))
    results = atari_pixels.summarize(runs, profile)
    markdown = atari_pixels.table(results, profile, rounds)
    out = args.out.with_name("atari_pixels.json") if args.out.name == "atari.json" else args.out
    data = {"machine": common.machine_info(), "profile": name, **profile, "rounds": rounds, "targets": atari_pixels.TARGETS,
            "frames_from": "ALE (ale-py): " + ", ".join(atari_pixels.GAMES), "results": results, "markdown": markdown}
    common.write_json(data, out)
    out.with_suffix(".md").write_text(markdown, encoding="utf-8")
    print(markdown)
    return 0


def table(results: dict[str, dict[str, float]], profile: dict[str, Any], rounds: int) -> str:
    baseline = results["numpy ring"]
    lines = [
        f"### Atari-sized workload (uint8[84, 84, 4] observations, capacity {profile['capacity']:,}, add_batch {ADD_BATCH:,}, "
        f"sample {SAMPLE_BATCH}; medians over {rounds} round(s))",
        "",
        "| implementation | add (MB/s of observations) | vs numpy ring | sample 32 (us) | vs numpy ring | sample 32 into out= (us) "
        "| vs numpy ring | memory per 100k transitions (GB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case, r in results.items():
        into = r["sample_into_us"]
        into_cells = f"{into:,.1f} | {baseline['sample_into_us'] / into:.2f}x" if into else "- | -"
        lines.append(f"| {case} | {r['add_mb_per_s']:,.0f} | {r['add_mb_per_s'] / baseline['add_mb_per_s']:.2f}x | "
                     f"{r['sample_us']:,.1f} | {baseline['sample_us'] / r['sample_us']:.2f}x | {into_cells} | {r['memory_gb_per_100k']:.2f} |")
    best = results["ray_replay frame-stack dedup"]
    lines += ["", f"Targets (ray_replay frame-stack dedup): add >= {TARGETS['add_mb_per_s']:,.0f} MB/s: "
              f"{'met' if best['add_mb_per_s'] >= TARGETS['add_mb_per_s'] else 'not met'} ({best['add_mb_per_s']:,.0f}); "
              f"sample 32 <= {TARGETS['sample_us']:.0f} us: {'met' if best['sample_us'] <= TARGETS['sample_us'] else 'not met'} "
              f"({best['sample_us']:.1f}); memory <= {TARGETS['memory_gb']:.1f} GB: "
              f"{'met' if best['memory_gb_per_100k'] <= TARGETS['memory_gb'] else 'not met'} ({best['memory_gb_per_100k']:.2f})."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
