"""Scenario 5: a checkpoint directory that fills up, or turns read-only, under writers and a learner.

Invariants: every acknowledged row is held exactly once; checkpoint failures are counted (per replica
and in the coordinator's total) with the error; the shards keep serving writes and samples all along;
once the disk is usable again the next checkpoint succeeds and restores to exactly the shard's rows.
Needs root (mounts); no network namespaces.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import ray
from disks import bind_mount, resize_tmpfs, set_read_only, small_tmpfs
from helpers import SCHEMA, assert_rows_consistent, transitions

from ray_replay.distributed import ReplayClient, ReplayCoordinator
from ray_replay.distributed.checkpoint import Checkpointer

ROWS = 10_000
BATCH = 100


def stored_actions(replay) -> np.ndarray:
    states = ray.get([shard.get_state.remote() for shard in ray.get(replay.shard_handles.remote())])
    return np.sort(np.concatenate([s["columns"]["action"] for s in states if "columns" in s]))


def drive(replay, fault_after_rows: int, fault) -> dict:
    """Writers (through a ReplayClient, each batch flushed: acknowledged) and a learner sampling and
    updating priorities; ``fault()`` runs once ``fault_after_rows`` rows are acknowledged. Returns what
    was acknowledged, when samples were served and any error."""
    acknowledged: list[int] = []
    sampled_at: list[float] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    faulted_at: list[float] = []

    def write() -> None:
        client = ReplayClient(replay, batch_rows=BATCH, seed=1)
        try:
            for start in range(0, ROWS, BATCH):
                client.add_batch(**transitions(BATCH, start))
                client.flush()
                acknowledged.extend(range(start, start + BATCH))
                if len(acknowledged) == fault_after_rows:
                    fault()
                    faulted_at.append(time.monotonic())
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(error)
        finally:
            client.close()
            stop.set()

    def learn() -> None:
        client = ReplayClient(replay, prefetch=0, seed=2)
        try:
            while not stop.is_set():
                if not acknowledged:
                    stop.wait(0.005)
                    continue
                batch = client.sample(32)
                assert_rows_consistent({k: v for k, v in batch.items() if k in SCHEMA})
                assert batch["action"].max() < len(acknowledged) + BATCH  # never a row not yet written
                client.update_priorities(batch["ids"], np.full(32, 2.0))
                sampled_at.append(time.monotonic())
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(error)
        finally:
            client.close()

    threads = [threading.Thread(target=write), threading.Thread(target=learn)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads), "a writer or the learner hung"
    assert not errors, errors
    return {"acknowledged": acknowledged, "sampled_at": sampled_at, "faulted_at": faulted_at[0]}


def check_served_and_counted(replay, outcome: dict, error_text: str) -> dict:
    np.testing.assert_array_equal(stored_actions(replay), np.arange(ROWS))  # exactly the acknowledged rows
    assert sorted(outcome["acknowledged"]) == list(range(ROWS))
    assert sum(t > outcome["faulted_at"] for t in outcome["sampled_at"]) > 10, "the learner was not served after the fault"
    stats = ray.get(replay.stats.remote())
    failures = [s["checkpoint_failures"] for s in stats["shards"]]
    assert stats["total"]["checkpoint_failures"] == sum(failures) > 0
    errors = [s["last_checkpoint_error"] for s in stats["shards"] if s["checkpoint_failures"]]
    assert errors and all(error_text in e for e in errors), errors
    assert all(s["state"] == "alive" for s in stats["shards"])
    assert stats["total"]["rows_lost"] == 0
    assert len(ray.get(replay.sample.remote(64))["action"]) == 64
    return stats


def check_checkpoints_resume(replay, directory: Path) -> None:
    """Usable again: a checkpoint now succeeds, and the files restore to exactly each shard's rows."""
    shards = ray.get(replay.shard_handles.remote())
    before = [s["checkpoints_written"] for s in ray.get(replay.stats.remote())["shards"]]
    ray.get([shard.checkpoint.remote() for shard in shards])
    after = ray.get(replay.stats.remote())["shards"]
    assert [s["checkpoints_written"] for s in after] == [b + 1 for b in before]
    for k, shard in enumerate(shards):
        restored = Checkpointer(directory / f"replay-shard-{k}.rrb", every_adds=1).restore()
        np.testing.assert_array_equal(restored.get_state()["columns"]["action"], ray.get(shard.get_state.remote())["columns"]["action"])


def make_replay(directory: Path):
    return ReplayCoordinator.remote(capacity=2 * ROWS, num_shards=2, buffer_type="prioritized", schema=SCHEMA, seed=0,
                                    checkpoint_dir=str(directory), checkpoint_every_adds=500)


def test_a_checkpoint_disk_that_fills_up(ray_local, tmp_path):
    """A 256 KiB tmpfs: the first checkpoints fit, the later full ones (about 85 bytes a row) do not."""
    with small_tmpfs(tmp_path / "disk", 256) as disk:
        replay = make_replay(disk)
        try:
            outcome = drive(replay, 2000, lambda: None)  # the disk fills by itself as the shards grow
            stats = check_served_and_counted(replay, outcome, "No space left on device")
            assert all(s["checkpoints_written"] >= 1 for s in stats["shards"])  # the early ones fitted
            resize_tmpfs(disk, 16 * 1024)
            check_checkpoints_resume(replay, disk)
        finally:
            ray.get(replay.shutdown.remote())


def test_a_checkpoint_directory_that_turns_read_only(ray_local, tmp_path):
    with bind_mount(tmp_path / "source", tmp_path / "checkpoints") as directory:
        replay = make_replay(directory)
        try:
            outcome = drive(replay, 3000, lambda: set_read_only(directory, True))
            stats = check_served_and_counted(replay, outcome, "Read-only file system")
            for k, s in enumerate(stats["shards"]):  # the last checkpoint before the fault still restores
                restored = Checkpointer(directory / f"replay-shard-{k}.rrb", every_adds=1).restore()
                assert restored is not None and 0 < len(restored) <= s["size"]
            set_read_only(directory, False)
            check_checkpoints_resume(replay, directory)
        finally:
            set_read_only(directory, False)
            ray.get(replay.shutdown.remote())


