"""Sequences over shards: sample(seq_len=...) through ReplayCoordinator and ReplayClient (Ray tests).

Writers pass streams, so each stream's rows stay on one shard (writes.Router.plan_streams) and a
sequence runs across the writer's batches exactly as in one buffer; the starts follow the priorities
of all rows globally; (n, seq_len) priority updates with the sample's mask land on the right rows.
"""

from __future__ import annotations

import numpy as np
import pytest
import ray
from scipy import stats

from ray_replay.distributed import ReplayClient, ReplayCoordinator
from ray_replay.distributed.sampling import LOCAL_ID_BITS, local_ids

SCHEMA = {"obs": ((), np.float64), "done": ((), np.bool_)}
N_STREAMS, STEPS = 6, 60  # 360 rows, 120 per shard of 400: nothing evicted, no stream has to move


def episode_ends(stream: int) -> set[int]:
    rng = np.random.default_rng(100 + stream)
    return {int(t) for t in np.flatnonzero(rng.random(STEPS) < 0.1)}


def expected_length(stream: int, t: int, seq_len: int) -> int:
    ends = [e for e in sorted(episode_ends(stream)) if e >= t]
    last = min(ends[0] if ends else STEPS - 1, STEPS - 1)
    return min(seq_len, last - t + 1)


def priority(stream: int, t: int) -> float:
    return float(1 + (stream + t) % 4)


@pytest.fixture
def replay(ray_local):
    coordinator = ReplayCoordinator.remote(capacity=1200, num_shards=3, buffer_type="prioritized", schema=SCHEMA, seed=5, metrics=False,
                                           alpha=1.0, eps=1e-12)
    client = ReplayClient(coordinator, batch_rows=16)  # small batches: a stream's rows arrive in many
    rng = np.random.default_rng(0)
    t = np.zeros(N_STREAMS, dtype=np.int64)
    while (t < STEPS).any():  # the streams interleave, a few rows of one or two at a time
        chosen = rng.choice(np.flatnonzero(t < STEPS), size=min(2, int((t < STEPS).sum())), replace=False)
        obs, done, streams, priorities = [], [], [], []
        for s in chosen:
            for _ in range(int(rng.integers(1, 4))):
                if t[s] < STEPS:
                    obs.append(s * 1000 + t[s])
                    done.append(int(t[s]) in episode_ends(int(s)))
                    streams.append(int(s))
                    priorities.append(priority(int(s), int(t[s])))
                    t[s] += 1
        client.add_batch(obs=np.array(obs, np.float64), done=np.array(done), streams=np.array(streams), priorities=np.array(priorities))
    client.flush()
    yield coordinator, client
    client.close()
    ray.get(coordinator.shutdown.remote())
    ray.kill(coordinator)


def check(batch: dict[str, np.ndarray], seq_len: int) -> None:
    for i in range(len(batch["ids"])):
        stream, t = divmod(int(batch["obs"][i, 0]), 1000)
        valid = expected_length(stream, t, seq_len)
        np.testing.assert_array_equal(batch["mask"][i], np.arange(seq_len) < valid)
        np.testing.assert_array_equal(batch["obs"][i, :valid], stream * 1000 + t + np.arange(valid))
        assert not batch["obs"][i, valid:].any() and not batch["done"][i, valid:].any()


def test_distributed_sequences_follow_streams_across_batches_and_shards(replay):
    coordinator, client = replay
    shard_sizes = [s["size"] for s in ray.get(coordinator.stats.remote())["shards"]]
    assert sum(shard_sizes) == N_STREAMS * STEPS and min(shard_sizes) > 0
    for batch in (client.sample(200, seq_len=7), ray.get(coordinator.sample.remote(200, None, False, 7))):
        assert batch["obs"].shape == (200, 7) and batch["mask"].shape == (200, 7)
        assert batch["weights"].shape == (200,) and (batch["ids"] >> LOCAL_ID_BITS).max() < 3
        check(batch, 7)
    batch = client.sample(100, seq_len=5, min_len=5)
    check(batch, 5)
    assert batch["mask"].all()


def test_distributed_sequence_starts_follow_global_priorities(replay):
    _, client = replay
    counts = np.zeros((N_STREAMS, STEPS))
    draws = 36_000
    for _ in range(draws // 600):
        batch = client.sample(600, seq_len=3)
        stream, t = np.divmod(batch["obs"][:, 0].astype(np.int64), 1000)
        np.add.at(counts, (stream, t), 1)
    weights = np.array([[priority(s, t) for t in range(STEPS)] for s in range(N_STREAMS)])
    expected = draws * weights / weights.sum()
    assert stats.chisquare(counts.ravel(), expected.ravel()).pvalue > 0.001


def test_distributed_per_step_priority_updates_mix_over_the_mask(replay):
    coordinator, client = replay
    batch = client.sample(40, seq_len=6)
    ids, first = np.unique(batch["ids"], return_index=True)
    mask = batch["mask"][first]
    errors = np.random.default_rng(1).normal(size=mask.shape)
    with pytest.raises(ValueError, match="mask"):
        client.update_priorities(ids, errors)  # the mask is needed over shards
    client.update_priorities(ids, errors, mask=mask)
    client.flush()
    magnitude = np.where(mask, np.abs(errors), 0.0)
    expected = 0.9 * magnitude.max(axis=1) + 0.1 * magnitude.sum(axis=1) / mask.sum(axis=1)
    states = ray.get([shard.get_state.remote() for shard in ray.get(coordinator.shard_handles.remote())])
    for global_id, value in zip(ids, expected):
        state = states[int(global_id) >> LOCAL_ID_BITS]
        oldest = state["total_adds"] - len(state["masses"])
        assert state["masses"][int(local_ids(np.array([global_id]))[0]) - oldest] == pytest.approx(value, rel=1e-12)
