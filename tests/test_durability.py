"""Durability of distributed replay: shard checkpoints and restarts, failover, replication, coordinator takeover."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time

import numpy as np
import pytest
import ray
from helpers import SCHEMA, transitions, wait_for

from ray_replay import ReplayBuffer
from ray_replay.distributed import ReplayClient, ReplayCoordinator, ShardFencedError, ShardUnavailableError
from ray_replay.distributed.checkpoint import Checkpointer
from ray_replay.distributed.health import ACKED, REROUTE, RETRY_SAME, write_outcome
from ray_replay.distributed.sampling import LOCAL_ID_BITS

# -- pure pieces ----------------------------------------------------------------------------------


def test_write_outcomes():
    died = ray.exceptions.ActorDiedError()
    assert write_outcome([object(), object()]) == ACKED
    assert write_outcome([died, object()]) == ACKED  # the backup holds it; the primary is refilled from it
    assert write_outcome([object(), ShardFencedError()]) == RETRY_SAME  # may be on one replica only
    assert write_outcome([TimeoutError()]) == RETRY_SAME  # may have landed
    # One replica holds it, the other did not answer (partitioned): acknowledged; the silent one is marked
    # down and refilled before it serves, or applies the batch late (its batch id keeps it once).
    assert write_outcome([TimeoutError(), object()]) == ACKED
    assert write_outcome([object(), TimeoutError()]) == ACKED
    assert write_outcome([TimeoutError(), ShardFencedError()]) == RETRY_SAME
    assert write_outcome([died, died]) == REROUTE
    assert write_outcome([ShardFencedError(), ShardFencedError()]) == REROUTE
    with pytest.raises(ValueError, match="bad"):
        write_outcome([ValueError("bad"), ValueError("bad")])


def test_a_write_that_may_be_on_a_shard_is_never_sent_to_another(monkeypatch):
    """Regression (chaos scenario 3): a write to a partitioned shard timed out, was sent to another shard
    after its deadline, and the first shard applied it too once the partition healed: stored twice.
    Now a write that may be held (a timeout, or taken by one replica while another refused) is only
    retried on its shard, and past the deadline fails with ShardUnavailableError saying so."""
    from ray_replay.distributed import writes

    clock = [100.0]
    monkeypatch.setattr(writes.time, "monotonic", lambda: clock[0])
    write = writes.Write.new((), {"action": np.arange(3)}, 3, timeout_s=2.0)
    write.shard = 1
    assert write.settle([TimeoutError()]) == RETRY_SAME and write.uncertain
    assert write.settle([ray.exceptions.ActorDiedError()]) == RETRY_SAME  # still maybe on shard 1: not elsewhere
    clock[0] += 2.5
    with pytest.raises(ShardUnavailableError, match="may be stored there"):
        write.settle([TimeoutError()])
    assert write.tried == set()
    fresh = writes.Write.new((), {"action": np.arange(3)}, 3, timeout_s=2.0)
    fresh.shard = 0
    assert fresh.settle([ray.exceptions.ActorDiedError()]) == REROUTE and fresh.tried == {0}  # surely not held: elsewhere
    assert fresh.settle([TimeoutError(), object()]) == ACKED


def test_a_wait_for_a_shard_pauses_until_its_deadline_then_raises(monkeypatch):
    """The one bounded wait of client and coordinator (health.pause_before_retry, Write.pause): the retry
    pause while the deadline is ahead, ShardUnavailableError naming what was waited for once it is past."""
    from ray_replay.distributed import health, writes

    clock = [50.0]
    monkeypatch.setattr(health.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(writes.time, "monotonic", lambda: clock[0])
    assert health.pause_before_retry(51.0, "no shard") == health.RETRY_PAUSE_S > 0
    write = writes.Write.new((), {"action": np.arange(7)}, 7, timeout_s=1.0)
    assert write.pause() == health.RETRY_PAUSE_S
    clock[0] = 51.0
    with pytest.raises(ShardUnavailableError, match="no shard answered"):
        health.pause_before_retry(51.0, "no shard answered")
    with pytest.raises(ShardUnavailableError, match="a write of 7 rows"):
        write.pause()


def test_checkpointer_writes_every_n_adds_and_restores(tmp_path):
    path = tmp_path / "shard.rrb"
    checkpoints = Checkpointer(path, every_adds=100)
    assert checkpoints.restore() is None
    buffer = ReplayBuffer(1000, schema=SCHEMA, seed=0)
    for start in range(0, 250, 50):
        buffer.add_batch(**transitions(50, start))
        checkpoints.changed(buffer, 50)
        checkpoints.wait()
    checkpoints.close()
    assert checkpoints.stats()["checkpoints_written"] == 2  # at 100 and 200 rows
    assert len(checkpoints.restore()) == 200
    with pytest.raises(ValueError, match="checkpoint_every_s or checkpoint_every_adds"):
        Checkpointer(path)


def test_a_failed_checkpoint_write_is_reported_and_keeps_the_previous_file(tmp_path, monkeypatch):
    from ray_replay.distributed import checkpoint as checkpoint_module

    checkpoints = Checkpointer(tmp_path / "shard.rrb", every_adds=1)
    buffer = ReplayBuffer(10, schema=SCHEMA)
    buffer.add_batch(**transitions(3))
    checkpoints.checkpoint_now(buffer)

    def disk_full(state, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_module, "write_state", disk_full)
    buffer.add_batch(**transitions(2, 3))
    checkpoints.checkpoint_now(buffer)
    stats = checkpoints.stats()
    assert stats["checkpoints_written"] == 1 and stats["checkpoint_failures"] == 1
    assert "No space left" in stats["last_checkpoint_error"]
    assert len(checkpoints.restore()) == 3


CHAIN_BUFFERS = {
    "fifo": {"buffer_type": "fifo", "on_full": "evict"},
    "uniform": {"buffer_type": "uniform"},
    "prioritized": {"buffer_type": "prioritized", "alpha": 0.6},
    "lockfree": {"buffer_type": "lockfree"},
    "prioritized dedup": {"buffer_type": "prioritized", "next_state": "dedup"},
}


@pytest.mark.parametrize("name", list(CHAIN_BUFFERS))
@pytest.mark.parametrize("seed", [0, 1])
def test_incremental_checkpoints_restore_exactly_what_was_checkpointed(tmp_path, name, seed):
    """Random adds (some longer than the buffer), samples (a FIFO read consumes), priority updates and
    checkpoints, with compaction every 3 increments: a fresh Checkpointer (a restarted shard) restores
    exactly the buffer of the last checkpoint, rows, counters, priorities, streams and random state."""
    rng = np.random.default_rng(seed)
    buffer = ReplayBuffer(60, schema=SCHEMA, seed=seed, **CHAIN_BUFFERS[name])
    checkpoints = Checkpointer(tmp_path / "shard.rrb", every_adds=10**9, compact_every=3)
    added, copied = 0, []
    for step in range(40):
        n = int(rng.choice([1, 5, 17, 75]))
        buffer.add_batch(**transitions(n, added), streams=int(rng.integers(2)))
        added += n
        checkpoints.changed(buffer, n)
        if len(buffer) and rng.random() < 0.3:
            batch = buffer.sample(int(rng.integers(1, 8)))
            if "ids" in batch and name.startswith("prioritized"):
                buffer.update_priorities(batch["ids"], rng.uniform(0.1, 3.0, len(batch["ids"])))
        if rng.random() < 0.4:
            checkpoints.checkpoint_now(buffer)
            copied.append(checkpoints.stats()["checkpoint_rows_copied"])
    checkpoints.checkpoint_now(buffer)
    checkpoints.close()
    stats = checkpoints.stats()
    assert stats["checkpoint_failures"] == 0
    assert stats["full_checkpoints_written"] < stats["checkpoints_written"]  # increments were written
    restored = Checkpointer(tmp_path / "shard.rrb", every_adds=1).restore()
    expected, actual = buffer.get_state(), restored.get_state()
    for name_, column in expected["columns"].items():
        np.testing.assert_array_equal(actual["columns"][name_], column, err_msg=name_)
    for key in ("total_adds", "samples", "evictions", "priority_updates", "max_priority"):
        assert actual[key] == expected[key], key
    np.testing.assert_array_equal(actual["masses"], expected["masses"])
    np.testing.assert_array_equal(actual["random"], expected["random"])
    if "streams" in expected:
        np.testing.assert_array_equal(actual["streams"], expected["streams"])
    if len(buffer):
        got, want = restored.sample(8), buffer.sample(8)
        np.testing.assert_array_equal(got["action"], want["action"])


def test_a_checkpoint_copies_only_the_rows_added_since_the_previous_one(tmp_path):
    path = tmp_path / "shard.rrb"
    checkpoints = Checkpointer(path, every_adds=10)
    buffer = ReplayBuffer(10_000, "prioritized", schema=SCHEMA, seed=0)
    buffer.add_batch(**transitions(10_000))
    checkpoints.changed(buffer, 10_000)  # the first checkpoint is full
    checkpoints.wait()
    assert checkpoints.stats()["checkpoint_rows_copied"] == 10_000
    buffer.add_batch(**transitions(12, 10_000))
    checkpoints.changed(buffer, 12)
    checkpoints.close()
    stats = checkpoints.stats()
    assert stats["checkpoints_written"] == 2 and stats["full_checkpoints_written"] == 1
    assert stats["checkpoint_rows_copied"] == 12
    increments = sorted(path.parent.glob("shard.rrb.*.1"))
    assert len(increments) == 1
    # 12 rows of 77 bytes and 10,000 masses of 8 bytes, against 10,000 rows and masses in the base.
    assert increments[0].stat().st_size < path.stat().st_size / 5
    with pytest.raises(ValueError, match="increment"):
        ReplayBuffer.load(increments[0])
    np.testing.assert_array_equal(Checkpointer(path, every_adds=1).restore().get_state()["columns"]["action"],
                                  np.arange(12, 10_012))


def write_chain(path) -> None:
    """A full checkpoint of 10 rows, then two increments of 10 rows each."""
    checkpoints = Checkpointer(path, every_adds=1)
    buffer = ReplayBuffer(100, schema=SCHEMA)
    for start in range(0, 30, 10):
        buffer.add_batch(**transitions(10, start))
        checkpoints.checkpoint_now(buffer)
    checkpoints.close()


def test_a_damaged_increment_fails_the_restore_instead_of_dropping_rows(tmp_path):
    from ray_replay.persistence import CorruptFileError

    path = tmp_path / "shard.rrb"
    write_chain(path)
    increment = next(path.parent.glob("shard.rrb.*.2"))
    data = bytearray(increment.read_bytes())
    header = json.loads(data[20 : 20 + int.from_bytes(data[12:16], "little")])
    action = next(section for section in header["sections"] if section["name"] == "action")
    data[action["offset"]] ^= 0xFF  # a bit flip inside the increment's rows
    increment.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="checksum"):
        Checkpointer(path, every_adds=1).restore()


def test_a_new_chain_replaces_the_increments_of_the_old_one(tmp_path):
    path = tmp_path / "shard.rrb"
    write_chain(path)
    assert len(list(path.parent.glob("shard.rrb.*.*"))) == 2
    fresh = Checkpointer(path, every_adds=1)  # did not restore: its first checkpoint starts a new chain
    other = ReplayBuffer(100, schema=SCHEMA)
    other.add_batch(**transitions(5, 500))
    fresh.checkpoint_now(other)
    fresh.close()
    assert list(path.parent.glob("shard.rrb.*.*")) == []
    np.testing.assert_array_equal(Checkpointer(path, every_adds=1).restore().get_state()["columns"]["action"], np.arange(500, 505))


# -- on Ray ---------------------------------------------------------------------------------------


def stored_actions(replay) -> np.ndarray:
    """Every action held by the primaries, from their full state (duplicates would show twice)."""
    states = ray.get([shard.get_state.remote() for shard in ray.get(replay.shard_handles.remote())])
    return np.sort(np.concatenate([s["columns"]["action"] for s in states if "columns" in s]))


# How long a shard's restart or a coordinator's takeover may take on a busy machine (a new worker
# process starts and restores its checkpoint): generous, since every wait returns as soon as it is done.
RECOVERY_TIMEOUT_S = 120
SHARD_TIMEOUT_S = 5.0


def all_alive(replay) -> bool:
    stats = ray.get(replay.stats.remote())
    replicas = stats["shards"] + [s["backup"] for s in stats["shards"] if "backup" in s]
    return all(s["state"] == "alive" for s in replicas)


def test_a_killed_shard_restarts_from_its_checkpoint(ray_local, tmp_path):
    replay = ReplayCoordinator.remote(capacity=2000, num_shards=2, schema=SCHEMA, seed=0, checkpoint_dir=str(tmp_path),
                                      checkpoint_every_adds=1)
    for start in range(0, 400, 100):
        ray.get(replay.add_batch.remote(**transitions(100, start)))
    shards = ray.get(replay.shard_handles.remote())
    ray.get([shard.checkpoint.remote() for shard in shards])  # the last background write, made sure of
    before = stored_actions(replay)
    victim = ray.get(replay.stats.remote())["shards"][0]
    names = sorted(p.name for p in tmp_path.iterdir())  # each shard's full checkpoint and the increments after it
    assert {"replay-shard-0.rrb", "replay-shard-1.rrb"} <= set(names)
    assert all(re.fullmatch(r"replay-shard-[01]\.rrb(\.[0-9a-f]{16}\.[1-8])?", name) for name in names), names

    os.kill(victim["pid"], signal.SIGKILL)
    stats = wait_for(lambda: (s := ray.get(replay.stats.remote()))["shards"][0]["restarts"] >= 1 and all_alive(replay) and s,
                     RECOVERY_TIMEOUT_S, "the shard's restart")
    assert stats["shards"][0]["pid"] != victim["pid"]
    assert stats["shards"][0]["restored_rows"] == victim["size"]
    np.testing.assert_array_equal(stored_actions(replay), before)
    ray.get(replay.shutdown.remote())


def test_a_dead_shard_is_routed_around_and_shown_in_stats(ray_local):
    replay = ReplayCoordinator.remote(capacity=2000, num_shards=2, schema=SCHEMA, seed=0, shard_options={"max_restarts": 0},
                                      shard_timeout_s=2.0)
    ray.get(replay.add_batch.remote(**transitions(100)))
    ray.get(replay.add_batch.remote(**transitions(100, 100)))
    ray.kill(ray.get(replay.shard_handles.remote())[0])
    for start in range(200, 600, 100):  # every write lands on the live shard
        ray.get(replay.add_batch.remote(**transitions(100, start)))
    batch = ray.get(replay.sample.remote(64))
    assert len(batch["action"]) == 64
    stats = ray.get(replay.stats.remote())
    assert [s["state"] for s in stats["shards"]] == ["dead", "alive"]
    assert stats["total"]["live_shards"] == 1
    assert stats["shards"][1]["size"] == 500 and stats["total"]["size"] == 500
    ray.get(replay.shutdown.remote())


def test_sample_ref_with_a_dead_shard_raises_at_get_then_plans_without_it(ray_local):
    """ReplayClient.sample_ref: a batch asked of a shard that died raises at ray.get (as any actor call
    does); once the client has read that call's answer it marks the shard down and plans without it."""
    replay = ReplayCoordinator.remote(capacity=2000, num_shards=2, schema=SCHEMA, seed=0, buffer_type="prioritized",
                                      shard_options={"max_restarts": 0}, shard_timeout_s=2.0)
    ray.get(replay.add_batch.remote(**transitions(100)))
    ray.get(replay.add_batch.remote(**transitions(100, 100)))
    client = ReplayClient(replay, prefetch=0, batch_from="one_shard", seed=0)
    assert len(ray.get(client.sample_ref(8))["ids"]) == 8
    ray.kill(ray.get(replay.shard_handles.remote())[0])
    outcomes = []
    for _ in range(60):
        time.sleep(0.01)
        try:
            batch = ray.get(client.sample_ref(8))
        except ray.exceptions.RayActorError:
            outcomes.append("failed")
            continue
        assert len(batch["ids"]) == 8
        outcomes.append(int(np.unique(batch["ids"] >> LOCAL_ID_BITS)[0]))
    assert outcomes[-30:] == [1] * 30, outcomes  # the dead shard is no longer asked
    assert client.snapshots[0].mass == 0 and client.snapshots[1].size == 100  # planned without its rows
    client.close()
    ray.get(replay.shutdown.remote())


def test_with_every_shard_dead_writes_fail_after_the_bounded_retry(ray_local):
    replay = ReplayCoordinator.remote(capacity=100, num_shards=1, schema=SCHEMA, shard_options={"max_restarts": 0}, shard_timeout_s=0.5)
    ray.get(replay.add_batch.remote(**transitions(10)))
    ray.kill(ray.get(replay.shard_handles.remote())[0])
    started = time.monotonic()
    with pytest.raises(ShardUnavailableError):
        ray.get(replay.add_batch.remote(**transitions(10, 10)))
    assert time.monotonic() - started < 5.0
    ray.get(replay.shutdown.remote())


def test_one_replicated_shard_starts_with_its_backup_in_a_bundle_of_its_own(ray_local):
    """Regression (chaos scenario 2): with num_shards=1 and replication_factor=2 the single pair's
    placement group was taken for the one-group-over-all-shards layout, so the backup was put in the
    primary's bundle, which had no room left: it never started and every call waited forever."""
    replay = ReplayCoordinator.remote(capacity=100, num_shards=1, schema=SCHEMA, replication_factor=2, shard_timeout_s=2.0)
    stats = ray.get(replay.stats.remote(), timeout=RECOVERY_TIMEOUT_S)
    assert stats["shards"][0]["state"] == "alive" and stats["shards"][0]["backup"]["state"] == "alive"
    ray.get(replay.add_batch.remote(**transitions(10)), timeout=RECOVERY_TIMEOUT_S)
    backup_state = ray.get(ray.get(replay.backup_handles.remote())[0].get_state.remote())
    np.testing.assert_array_equal(backup_state["columns"]["action"], np.arange(10))
    ray.get(replay.shutdown.remote())


@pytest.mark.parametrize("through", ["client", "coordinator"])
def test_with_replication_a_killed_shard_loses_no_acknowledged_row_and_sampling_resumes(ray_local, through):
    replay = ReplayCoordinator.remote(capacity=40_000, num_shards=2, buffer_type="prioritized", schema=SCHEMA, seed=0,
                                      replication_factor=2, shard_timeout_s=SHARD_TIMEOUT_S, health_check_interval_s=0.2)
    acknowledged: list[int] = []
    sampled_at: list[float] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        client = ReplayClient(replay, batch_rows=50, seed=1) if through == "client" else None
        try:
            for start in range(0, 6000, 50):
                rows = transitions(50, start)
                if client is not None:
                    client.add_batch(**rows)
                    client.flush()  # returns once the rows are in a shard (and its backup, or the backup alone)
                else:
                    ray.get(replay.add_batch.remote(**rows))
                acknowledged.extend(range(start, start + 50))
                time.sleep(0.005)  # pacing, not a wait: the writes go on across the kill
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)
        finally:
            stop.set()

    def learn() -> None:
        client = ReplayClient(replay, prefetch=0, seed=2)
        try:
            while not stop.is_set():
                if not acknowledged:
                    stop.wait(0.005)  # nothing to sample yet
                else:
                    batch = client.sample(32)
                    client.update_priorities(batch["ids"], np.full(32, 2.0))
                    sampled_at.append(time.monotonic())
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=write), threading.Thread(target=learn)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(acknowledged) >= 1500 or errors, RECOVERY_TIMEOUT_S, "1500 acknowledged rows before the kill")
    victim = ray.get(replay.stats.remote())["shards"][0]
    killed_at = time.monotonic()
    os.kill(victim["pid"], signal.SIGKILL)
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    # The contract, not a speed: the learner never saw an error (above), and its first sample after the
    # kill came back within shard_timeout_s, the bound after which the client gives up on a shard; so it
    # was served by failing over, not by waiting the shard out. How fast that is, is a figure, not an
    # assertion (measured 1.1-1.5 s here on a quiet machine, 2.3 s under two busy loops: most of it is
    # Ray's own wait for a dead actor's death notice, timeout_ms_task_wait_for_death_info = 1 s).
    resumed = [t for t in sampled_at if t > killed_at]
    assert resumed, "the learner sampled nothing after the kill"
    assert resumed[0] - killed_at < SHARD_TIMEOUT_S, f"sampling resumed {resumed[0] - killed_at:.2f} s after the kill, past shard_timeout_s"
    wait_for(lambda: all_alive(replay), RECOVERY_TIMEOUT_S, "the restarted shard to rejoin")
    stats = ray.get(replay.stats.remote())
    seen = {role: {key: s.get(key) for key in ("pid", "incarnation", "restarts", "failures", "state")}
            for role, s in (("shard", stats["shards"][0]), ("backup", stats["shards"][0]["backup"]))}
    # (Failed once in a clean-clone CI run with restarts 0 while every other check passed; the
    # message says which process was killed and which answer now, for the next time.)
    assert stats["shards"][0]["restarts"] >= 1, f"killed pid {victim['pid']} (incarnation {victim.get('incarnation')}); now {seen}"
    np.testing.assert_array_equal(stored_actions(replay), np.arange(6000))  # exactly the acknowledged rows
    assert sorted(acknowledged) == list(range(6000))
    backups = ray.get([b.get_state.remote() for b in ray.get(replay.backup_handles.remote())])
    np.testing.assert_array_equal(np.sort(np.concatenate([b["columns"]["action"] for b in backups])), np.arange(6000))
    ray.get(replay.shutdown.remote())


def test_a_new_coordinator_with_the_same_name_takes_over_the_shards(ray_local):
    options = {"capacity": 1000, "num_shards": 2, "buffer_type": "prioritized", "schema": SCHEMA, "seed": 0}
    first = ReplayCoordinator.options(name="takeover").remote(**options)
    for start in range(0, 300, 100):
        ray.get(first.add_batch.remote(**transitions(100, start)))
    pids = [s["pid"] for s in ray.get(first.stats.remote())["shards"]]
    ray.kill(first)  # the coordinator dies; its named, detached shards do not
    wait_for(lambda: _gone("takeover"), RECOVERY_TIMEOUT_S, "the old coordinator's name to be free")
    second = ReplayCoordinator.options(name="takeover").remote(**options)
    stats = ray.get(second.stats.remote())
    assert [s["pid"] for s in stats["shards"]] == pids
    assert stats["total"]["size"] == 300
    np.testing.assert_array_equal(stored_actions(second), np.arange(300))
    assert len(ray.get(second.sample.remote(64))["ids"]) == 64
    ray.get(second.shutdown.remote())
    ray.kill(second)


def _gone(name: str) -> bool:
    try:
        ray.get_actor(name)
    except ValueError:
        return True
    return False
