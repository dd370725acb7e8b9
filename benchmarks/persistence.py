"""Persistence benchmark: ReplayBuffer.save / ReplayBuffer.load beside numpy's own .npy files.

    python benchmarks/persistence.py [--quick | --smoke] [--out benchmarks/results/persistence.json]

Workload: a prioritized buffer of 1,000,000 rows (200,000 with --quick) of state float32[64], action
int64, reward float32, next_state float32[64], done bool (533 bytes a row), full. ray_replay writes
its checksummed file (atomic: temporary file, fsync, rename) and loads it back into a new buffer (every
section's CRC-32 verified, rows copied into the buffer's storage). The baseline writes each column
with ``np.save`` (no checksum, no fsync) and loads it with ``np.load`` into fresh arrays. Files live
in a temporary folder (the page cache holds them: this measures the format's cost, not the disk).
Figures: GB/s of file size, medians over the repetitions. Target (issue 5): load >= 1 GB/s.

Checkpoint pause: how long a shard's own thread (adds and samples wait meanwhile) spends on a
checkpoint of a full prioritized buffer of 500,000 DIST-1 rows (benchmarks/common.py SCHEMA, 77 bytes;
100,000 with --quick): a full copy (``get_state()``, what the first checkpoint of a chain takes) and an
increment after 1,000 new rows (the ``Checkpointer.changed`` call that copies them and hands them to
its writer thread; the write itself is not timed). Medians of 9.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import common  # noqa: E402

SCHEMA = {
    "state": ((64,), np.float32),
    "action": ((), np.int64),
    "reward": ((), np.float32),
    "next_state": ((64,), np.float32),
    "done": ((), np.bool_),
}
PROFILES = {"full": (1_000_000, 5), "quick": (200_000, 5), "smoke": (2_000, 2)}
CHECKPOINT_ROWS = {"full": 500_000, "quick": 100_000, "smoke": 5_000}
INCREMENT_ROWS = 1_000
TARGET_LOAD_GB_PER_S = 1.0


def checkpoint_pause(rows: int, folder: str, repetitions: int = 9) -> dict[str, float]:
    """Median ms of a full copy and of an increment of INCREMENT_ROWS rows, on the owner's thread."""
    from ray_replay import ReplayBuffer
    from ray_replay.distributed.checkpoint import Checkpointer

    rng = np.random.default_rng(1)
    buffer = ReplayBuffer(rows, "prioritized", schema=common.SCHEMA, seed=0, collect_stats=False)
    fill = {field: (rng.random((rows, *shape)) * 10).astype(dtype) for field, (shape, dtype) in common.SCHEMA.items()}
    buffer.add_batch(**fill, priorities=rng.random(rows) + 0.1)
    full = []
    for _ in range(repetitions):
        started = time.perf_counter()
        buffer.get_state()
        full.append(time.perf_counter() - started)
    checkpoints = Checkpointer(Path(folder) / "shard.rrb", every_adds=INCREMENT_ROWS)
    checkpoints.checkpoint_now(buffer)  # the chain's full checkpoint
    new = {field: values[:INCREMENT_ROWS] for field, values in fill.items()}
    increment = []
    for _ in range(repetitions):
        buffer.add_batch(**new)
        started = time.perf_counter()
        checkpoints.changed(buffer, INCREMENT_ROWS)
        increment.append(time.perf_counter() - started)
        checkpoints.wait()
    checkpoints.close()
    assert checkpoints.stats()["checkpoint_rows_copied"] == INCREMENT_ROWS
    return {"full_copy_ms": statistics.median(full) * 1e3, "increment_ms": statistics.median(increment) * 1e3}


def main() -> int:
    from ray_replay import ReplayBuffer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true")
    mode.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "persistence.json")
    args = parser.parse_args()
    name = "smoke" if args.smoke else "quick" if args.quick else "full"
    rows, repetitions = PROFILES[name]
    rng = np.random.default_rng(0)
    columns = {field: (rng.random((rows, *shape)) * 10).astype(dtype) for field, (shape, dtype) in SCHEMA.items()}
    buffer = ReplayBuffer(rows, "prioritized", schema=SCHEMA, seed=0, collect_stats=False)
    buffer.add_batch(**columns, priorities=rng.random(rows) + 0.1)
    times: dict[str, list[float]] = {"ray_replay save": [], "ray_replay load": [], "np.save": [], "np.load": []}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "buffer.rrb"
        for _ in range(repetitions):
            started = time.perf_counter()
            buffer.save(path)
            times["ray_replay save"].append(time.perf_counter() - started)
            started = time.perf_counter()
            loaded = ReplayBuffer.load(path)
            times["ray_replay load"].append(time.perf_counter() - started)
            assert len(loaded) == rows
            del loaded
            started = time.perf_counter()
            for field, values in columns.items():
                np.save(Path(folder) / f"{field}.npy", values)
            times["np.save"].append(time.perf_counter() - started)
            started = time.perf_counter()
            arrays = [np.load(Path(folder) / f"{field}.npy") for field in columns]
            times["np.load"].append(time.perf_counter() - started)
            del arrays
        file_bytes = path.stat().st_size
        pause = checkpoint_pause(CHECKPOINT_ROWS[name], folder)
    results = {label: {"median_s": statistics.median(seconds), "gb_per_s": file_bytes / statistics.median(seconds) / 1e9}
               for label, seconds in times.items()}
    load = results["ray_replay load"]["gb_per_s"]
    markdown = "\n".join([
        f"### Save and load ({rows:,} rows of 533 bytes, prioritized; a {file_bytes / 1e6:,.0f} MB file; medians of {repetitions})",
        "",
        "| operation | ray_replay | np.save / np.load (no checksum, no fsync) |",
        "|---|---|---|",
        f"| save | {results['ray_replay save']['gb_per_s']:.2f} GB/s | {results['np.save']['gb_per_s']:.2f} GB/s |",
        f"| load | {load:.2f} GB/s | {results['np.load']['gb_per_s']:.2f} GB/s |",
        "",
        f"Target: load >= {TARGET_LOAD_GB_PER_S:.0f} GB/s: {'met' if load >= TARGET_LOAD_GB_PER_S else 'not met'} ({load:.2f}).",
        "",
        f"Checkpoint pause on the shard's thread ({CHECKPOINT_ROWS[name]:,} rows of 77 bytes, prioritized; medians of 9): "
        f"full copy {pause['full_copy_ms']:.2f} ms, increment of {INCREMENT_ROWS:,} new rows {pause['increment_ms']:.2f} ms.",
    ]) + "\n"
    common.write_json({"machine": common.machine_info(), "profile": name, "rows": rows, "file_bytes": file_bytes,
                       "repetitions": repetitions, "results": results, "checkpoint_pause": {"rows": CHECKPOINT_ROWS[name], **pause},
                       "markdown": markdown}, args.out)
    args.out.with_suffix(".md").write_text(markdown, encoding="utf-8")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
