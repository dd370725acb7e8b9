"""Soak (issue 18): DIST-1 with many writers, replication and checkpoints, for a long time; is anything growing?

8 writer actors (each a ReplayClient writing batches of 200 rows of DIST-1's transitions, 4 writes in
flight), one learner in the driver (prioritized samples of 256 and a priority update for each),
ReplayCoordinator with 2 shards, replication_factor=2 and checkpoints every 2 s to a temporary folder,
capacity 200,000 rows (full after a few seconds: from then on every write evicts, which is the steady
state a long run lives in). Every ``--sample-s`` seconds it records the resident memory (VmRSS, from
/proc) of every process of the workload (driver, coordinator, shards, backups, writers), the rows
acknowledged by each writer, its writes in flight, and the coordinator's inserts/s and samples/s.

Reported after a warm-up (``--warmup-fraction`` of the run): each process's RSS slope (least squares,
MiB per minute, and MiB over the whole measured window), the largest number of writes in flight seen,
and the acknowledged rows/s per interval (median and range) in the first and last third of the window.
Written to ``--out`` (benchmarks/results/soak.json by default). Ray's own daemons (GCS, raylet) are not
sampled. On loopback (a local Ray of 4 CPUs).

    python benchmarks/soak.py [--duration-s 600] [--writers 8] [--out benchmarks/results/soak.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray

from ray_replay.distributed import ReplayClient, ReplayCoordinator
from ray_replay.distributed.runtime import init_ray

SCHEMA = {"obs": ((8,), np.float32), "action": ((), np.int64), "reward": ((), np.float32), "next_obs": ((8,), np.float32),
          "done": ((), np.bool_)}
BATCH = 200


def rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def batch(rng: np.random.Generator, start: int) -> dict[str, np.ndarray]:
    return {"obs": rng.standard_normal((BATCH, 8), dtype=np.float32), "action": np.arange(start, start + BATCH),
            "reward": rng.standard_normal(BATCH, dtype=np.float32), "next_obs": rng.standard_normal((BATCH, 8), dtype=np.float32),
            "done": rng.random(BATCH) < 0.01}


@ray.remote(num_cpus=0, max_concurrency=2)
class Writer:
    def __init__(self, replay: Any, index: int) -> None:
        self._client = ReplayClient(replay, batch_rows=BATCH, max_in_flight=4, seed=index)
        self._index, self._stop = index, threading.Event()

    def pid(self) -> int:
        return os.getpid()

    def run(self) -> dict[str, Any]:
        rng = np.random.default_rng(self._index)
        start = self._index * 10**12
        while not self._stop.is_set():
            self._client.add_batch(**batch(rng, start))
            start += BATCH
        self._client.flush()
        return self._client.stats()

    def progress(self) -> dict[str, Any]:
        return self._client.stats()

    def stop(self) -> None:
        self._stop.set()


def slope(times_s: list[float], values: list[float]) -> float:
    """Least-squares slope, per minute."""
    if len(times_s) < 3:
        return float("nan")
    return float(np.polyfit(np.asarray(times_s) / 60.0, np.asarray(values), 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=600)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--sample-s", type=float, default=5)
    parser.add_argument("--warmup-fraction", type=float, default=0.25)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "soak.json"))
    args = parser.parse_args()

    init_ray(num_cpus=4, include_dashboard=False, object_store_memory=512 * 1024**2)
    with tempfile.TemporaryDirectory(prefix="ray_replay-soak-") as checkpoints:
        replay = ReplayCoordinator.remote(capacity=200_000, num_shards=2, buffer_type="prioritized", schema=SCHEMA, seed=0,
                                          replication_factor=2, checkpoint_dir=checkpoints, checkpoint_every_s=2.0)
        stats = ray.get(replay.stats.remote())
        processes = {"driver": os.getpid(), "coordinator": ray.get(replay.__ray_call__.remote(lambda self: os.getpid()))}
        for k, shard in enumerate(stats["shards"]):
            processes[f"shard-{k}"] = shard["pid"]
            processes[f"backup-{k}"] = shard["backup"]["pid"]
        writers = [Writer.remote(replay, w) for w in range(args.writers)]
        for w, writer in enumerate(writers):
            processes[f"writer-{w}"] = ray.get(writer.pid.remote())
        runs = [writer.run.remote() for writer in writers]

        stop = threading.Event()
        learned = {"samples": 0, "error": None}

        def learn() -> None:
            client = ReplayClient(replay, prefetch=1, seed=99)
            try:
                while not stop.is_set():
                    sampled = client.sample(256)
                    client.update_priorities(sampled["ids"], np.abs(sampled["reward"]) + 0.1)
                    learned["samples"] += 1
                client.close()
            except Exception as error:  # noqa: BLE001 - reported
                learned["error"] = repr(error)

        while ray.get(replay.stats.remote())["total"]["size"] < 10_000:
            time.sleep(0.2)
        learner = threading.Thread(target=learn, daemon=True)
        learner.start()
        began = time.monotonic()
        samples: list[dict[str, Any]] = []
        while time.monotonic() - began < args.duration_s:
            time.sleep(args.sample_s)
            progress = ray.get([writer.progress.remote() for writer in writers])
            total = ray.get(replay.stats.remote())["total"]
            samples.append({"t": time.monotonic() - began, "rss_mib": {name: rss_mib(pid) for name, pid in processes.items()},
                            "acknowledged": sum(p["rows_acknowledged"] for p in progress),
                            "writes_in_flight": sum(p["writes_in_flight"] for p in progress),
                            "inserts_per_second": total.get("inserts_per_second"), "samples_per_second": total.get("samples_per_second"),
                            "checkpoint_failures": total["checkpoint_failures"], "learner_samples": learned["samples"]})
            print(f"{samples[-1]['t']:6.0f} s: {samples[-1]['acknowledged']:>10} rows acknowledged, "
                  f"{samples[-1]['writes_in_flight']} writes in flight, coordinator RSS {samples[-1]['rss_mib']['coordinator']:.0f} MiB", flush=True)
        for writer in writers:
            writer.stop.remote()
        final = ray.get(runs)
        stop.set()
        learner.join(timeout=60)
        end_stats = ray.get(replay.stats.remote())
        replicas = end_stats["shards"] + [s["backup"] for s in end_stats["shards"]]
        checkpoint_errors = [{"shard": s["shard"], "failures": s["checkpoint_failures"], "written": s["checkpoints_written"],
                              "last_error": s["last_checkpoint_error"]} for s in replicas]
        ray.get(replay.shutdown.remote())

    measured = [s for s in samples if s["t"] >= args.warmup_fraction * args.duration_s]
    times = [s["t"] for s in measured]
    per_process = {}
    for name in processes:
        values = [s["rss_mib"][name] for s in measured if s["rss_mib"][name] is not None]
        # A shard's RSS is a sawtooth (each checkpoint copies its rows, then frees the copy): the slope of
        # the troughs (the least RSS of each 30 s window) says whether the baseline grows.
        windows = [(t0, min(v for t, v in zip(times, values) if t0 <= t < t0 + 30)) for t0 in times[:: max(int(30 / args.sample_s), 1)]
                   if any(t0 <= t < t0 + 30 for t in times)]
        per_process[name] = {"rss_first_mib": values[0] if values else None, "rss_last_mib": values[-1] if values else None,
                             "rss_max_mib": max(values, default=None), "slope_mib_per_min": slope(times[: len(values)], values),
                             "trough_slope_mib_per_min": slope([t for t, _ in windows], [v for _, v in windows])}
    rates = [(b["acknowledged"] - a["acknowledged"]) / (b["t"] - a["t"]) for a, b in zip(measured, measured[1:])]
    third = max(len(rates) // 3, 1)
    result = {
        "duration_s": args.duration_s, "writers": args.writers, "warmup_s": args.warmup_fraction * args.duration_s,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, shared with other sessions (loaded)",
        "rss": per_process,
        # ReplayClient holds at most max_in_flight (4) writes after each call, plus the one being sent.
        "max_writes_in_flight": max(s["writes_in_flight"] for s in samples), "writes_in_flight_bound": 5 * args.writers,
        "acknowledged_rows_per_s": {"first_third": {"median": float(np.median(rates[:third])), "min": min(rates[:third]), "max": max(rates[:third])},
                                    "last_third": {"median": float(np.median(rates[-third:])), "min": min(rates[-third:]), "max": max(rates[-third:])}},
        "rows_acknowledged": sum(f["rows_acknowledged"] for f in final), "rows_failed": sum(f["rows_failed"] for f in final),
        "learner_samples": learned["samples"], "learner_error": learned["error"],
        "checkpoint_failures": samples[-1]["checkpoint_failures"] if samples else None, "checkpoints": checkpoint_errors,
        "samples": samples,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1))


if __name__ == "__main__":
    main()
