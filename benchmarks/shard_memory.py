"""A shard's memory over time, Ray-free: is the RSS flat once the buffer is full (issue 18's soak)?

One ReplayShardImpl per child process (capacity 100,000 prioritized rows of a CartPole-like schema,
checkpoints every 2 s to a temporary folder, writes of 200 rows with a batch id paced to
``--rows-per-s``, a learner thread sampling 512 and updating priorities every 20 ms), the same load
with glibc's default dynamic mmap threshold and with the threshold a shard actor fixes
(ray_replay.distributed.allocator). Both children run at once, so the machine's load falls on both.
Reported: RSS first, last and max after the warm-up, the least-squares slope (MiB/min) of the RSS and
of its troughs. Each child first fills the buffer and the shard's table of applied batch ids (bounded:
65,536 ids, about 12 MiB), so what follows is the steady state.

    python benchmarks/shard_memory.py --duration-s 180
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ray_replay.distributed.shard import APPLIED_BATCHES_KEPT

SCHEMA = {"obs": ((8,), np.float32), "action": ((), np.int64), "reward": ((), np.float32), "next_obs": ((8,), np.float32),
          "done": ((), np.bool_)}
BATCH = 200


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def child(duration_s: float, rows_per_s: float, fixed: bool) -> None:
    """Runs one shard under load and prints one JSON line: [(t, rss_mib, batch ids kept), ...]."""
    from ray_replay.distributed.allocator import fix_mmap_threshold
    from ray_replay.distributed.shard import ReplayShardImpl

    set_ok = fix_mmap_threshold() if fixed else False
    rng = np.random.default_rng(0)
    columns = {"obs": rng.standard_normal((BATCH, 8), dtype=np.float32), "action": np.arange(BATCH),
               "reward": rng.standard_normal(BATCH, dtype=np.float32), "next_obs": rng.standard_normal((BATCH, 8), dtype=np.float32),
               "done": rng.random(BATCH) < 0.01}
    series: list[tuple[float, float, int]] = []
    with tempfile.TemporaryDirectory(prefix="ray_replay-shard-memory-") as folder:
        shard = ReplayShardImpl(0, 100_000, "prioritized", schema=SCHEMA, seed=0, checkpoint_path=str(Path(folder) / "shard"),
                                checkpoint_every_s=2.0)
        stop = threading.Event()

        def learner() -> None:
            while not stop.wait(0.02):
                if len(shard.buffer) >= 512:
                    batch, _ = shard.sample(512)
                    shard.update_priorities(batch["ids"], np.abs(rng.standard_normal(len(batch["ids"]))) + 0.1)

        for _ in range(APPLIED_BATCHES_KEPT):  # the steady state first: the buffer and the batch-id table full
            shard.add_batch(batch_id=uuid.uuid4().hex, **columns)
        thread = threading.Thread(target=learner, daemon=True)
        thread.start()
        begin = next_sample = time.monotonic()
        written = 0
        while (now := time.monotonic()) - begin < duration_s:
            if written * BATCH < (now - begin) * rows_per_s:
                shard.add_batch(batch_id=uuid.uuid4().hex, **columns)
                written += 1
            else:
                time.sleep(0.001)
            if now >= next_sample:
                series.append((now - begin, rss_mib(), len(shard._applied)))
                next_sample += 2.0
        stop.set()
        thread.join()
        shard.close()
    print(json.dumps({"fixed": set_ok, "rows_written": written * BATCH, "series": series}))


def summary(series: list[list[float]], warmup_s: float) -> dict[str, float]:
    measured = [point for point in series if point[0] >= warmup_s]
    t, rss = np.array([p[0] for p in measured]), np.array([p[1] for p in measured])
    # The RSS is a sawtooth (each checkpoint copies rows, then frees the copy): the slope of each 20 s
    # window's minimum says whether what stays after the frees grows.
    windows = np.floor((t - t[0]) / 20.0)
    troughs = [(float(t[windows == w].mean()), float(rss[windows == w].min())) for w in np.unique(windows)]
    return {"rss_first_mib": float(rss[0]), "rss_last_mib": float(rss[-1]), "rss_max_mib": float(rss.max()),
            "slope_mib_per_min": float(np.polyfit(t / 60, rss, 1)[0]),
            "trough_slope_mib_per_min": float(np.polyfit([p[0] / 60 for p in troughs], [p[1] for p in troughs], 1)[0]),
            "batch_ids_kept": int(measured[-1][2])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration-s", type=float, default=180)
    parser.add_argument("--rows-per-s", type=float, default=40_000)
    parser.add_argument("--warmup-s", type=float, default=20)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "shard_memory.json"))
    parser.add_argument("--child", choices=("default", "fixed"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.duration_s, args.rows_per_s, args.child == "fixed")
        return
    runs = {mode: subprocess.Popen([sys.executable, __file__, "--child", mode, "--duration-s", str(args.duration_s),
                                    "--rows-per-s", str(args.rows_per_s)], stdout=subprocess.PIPE, text=True)
            for mode in ("default", "fixed")}
    results: dict[str, Any] = {"duration_s": args.duration_s, "rows_per_s": args.rows_per_s, "warmup_s": args.warmup_s}
    for mode, process in runs.items():
        out, _ = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"the {mode} child failed (exit {process.returncode})")
        run = json.loads(out.strip().splitlines()[-1])
        results[mode] = {"mmap_threshold_fixed": run["fixed"], "rows_written": run["rows_written"],
                         **summary(run["series"], args.warmup_s), "series": run["series"]}
        print(mode, json.dumps({key: value for key, value in results[mode].items() if key != "series"}))
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
