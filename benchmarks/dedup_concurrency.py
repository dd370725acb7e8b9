"""Dedup with compressed frames while a writer and a sampler run at once (issue 20: compression off the lock).

One thread adds batches of 1,000 rows (4 x 64 x 64 uint8 stacks of ALE frames, one new frame a row,
``next_state="dedup"``, ``frame_stack_axis=0``) while the main thread samples 64 rows back to back, for
``--seconds``; capacity 20,000 after a 5,000-row fill. Reported per codec: adds/s, samples/s and the
sample latency p50 / p99 / max. Results: benchmarks/results/dedup_concurrency.json.

    python benchmarks/dedup_concurrency.py [--seconds 6]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import atari_pixels  # noqa: E402
from common import machine_info, write_json  # noqa: E402

from ray_replay import ReplayBuffer  # noqa: E402


def run(codec: str, seconds: float, stacks: np.ndarray) -> dict[str, float]:
    steps = len(stacks) - 1
    buffer = ReplayBuffer(20_000, next_state="dedup", frame_stack_axis=0, seed=0, compress={"state": codec, "next_state": codec})

    def batch(lo: int) -> dict[str, np.ndarray]:
        hi = lo + 1000
        return {"state": stacks[lo:hi], "action": np.arange(lo, hi), "reward": np.zeros(1000, np.float32),
                "next_state": stacks[lo + 1:hi + 1], "done": np.zeros(1000, bool)}

    for lo in range(0, 5000, 1000):
        buffer.add_batch(**batch(lo))
    stop, adds = threading.Event(), [0]

    def writer() -> None:
        lo = 0
        while not stop.is_set():
            buffer.add_batch(**batch(lo))
            adds[0] += 1
            lo = (lo + 1000) % (steps - 1000)

    thread = threading.Thread(target=writer)
    thread.start()
    latencies, started = [], time.perf_counter()
    while time.perf_counter() - started < seconds:
        t0 = time.perf_counter_ns()
        buffer.sample(64)
        latencies.append(time.perf_counter_ns() - t0)
    stop.set()
    thread.join()
    us = np.sort(np.array(latencies)) / 1e3
    return {"adds_per_s": adds[0] / seconds, "samples_per_s": len(us) / seconds, "sample_p50_ms": float(np.percentile(us, 50)) / 1e3,
            "sample_p99_ms": float(np.percentile(us, 99)) / 1e3, "sample_max_ms": float(us[-1]) / 1e3}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "dedup_concurrency.json")
    args = parser.parse_args()
    if not atari_pixels.renderer_available() and not (atari_pixels.CACHE / "ale64-8000.npy").exists():
        print("needs ale-py and gymnasium (pip install ale-py) for the frames; skipped")
        return 0
    frames = atari_pixels.frames(8000)[:, :, :, 0].copy()  # 64 x 64 frames
    stacks = np.stack([frames[t:t + 4] for t in range(len(frames) - 4)])
    results = {codec: run(codec, args.seconds, stacks) for codec in ("zstd", "lz4")}
    for codec, r in results.items():
        print(f"{codec}: {r['adds_per_s']:.0f} adds/s, {r['samples_per_s']:,.0f} samples/s, sample p50 / p99 / max "
              f"{r['sample_p50_ms']:.2f} / {r['sample_p99_ms']:.2f} / {r['sample_max_ms']:.2f} ms", flush=True)
    print("wrote", write_json({"machine": machine_info(), "seconds": args.seconds, "results": results}, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
