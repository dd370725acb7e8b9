"""Sampling with replacement, local: any batch size on uniform, prioritized and lock-free buffers.

numpy, cpprb, TorchRL, SB3, RLlib and Reverb all accept a batch larger than what is held (or than the
capacity); before, ray_replay refused ``sample(n)`` for n above the capacity. Each draw is still from
the buffer's distribution, so 1,000 draws from 10 rows see every row about 100 times.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from ray_replay import ReplayBuffer

RING_TYPES = ["uniform", "prioritized", "lockfree"]


def ten_rows(buffer_type: str, capacity: int = 16, **kwargs: object) -> ReplayBuffer:
    buf = ReplayBuffer(capacity, buffer_type, seed=7, **kwargs)
    buf.add_batch(np.arange(10, dtype=np.float32)[:, None], np.arange(10), np.zeros(10, np.float32),
                  np.arange(10, dtype=np.float32)[:, None], np.zeros(10, bool))
    return buf


@pytest.mark.parametrize("buffer_type", RING_TYPES)
def test_a_batch_far_larger_than_the_buffer_draws_every_row_about_equally(buffer_type):
    buf = ten_rows(buffer_type)
    batch = buf.sample(1000)
    assert batch["action"].shape == (1000,) and batch["state"].shape == (1000, 1)
    np.testing.assert_array_equal(batch["state"][:, 0], batch["action"].astype(np.float32))  # whole rows
    counts = np.bincount(batch["action"], minlength=10)
    assert counts.sum() == 1000 and (counts > 0).all()
    assert stats.chisquare(counts).pvalue > 0.001
    if buffer_type == "prioritized":
        assert batch["weights"].shape == (1000,) and batch["ids"].shape == (1000,)
        np.testing.assert_allclose(batch["probabilities"], 0.1)
    assert buf.stats()["samples"] == 1000


def test_prioritized_sampling_beyond_the_capacity_follows_the_priorities():
    """sample(n > capacity) keeps P(i) = p_i^alpha / sum p^alpha (alpha=1 here), stratified or not."""
    for sampling in ("stratified", "proportional"):
        buf = ten_rows("prioritized", alpha=1.0, sampling=sampling)
        priorities = np.arange(1, 11, dtype=np.float64)
        buf.update_priorities(np.arange(10), priorities)  # ids are insertion numbers: rows 0..9
        draws = np.concatenate([buf.sample(5000)["action"] for _ in range(20)])
        expected = priorities / priorities.sum() * draws.size
        assert stats.chisquare(np.bincount(draws, minlength=10), expected).pvalue > 0.001, sampling


def test_stratified_sampling_stays_stratified_over_the_whole_batch():
    """With equal priorities, stratified sampling of n = 100 x rows takes every row exactly 100 times
    (one draw per equal segment of the mass); independent draws would not."""
    buf = ten_rows("prioritized", sampling="stratified")
    counts = np.bincount(buf.sample(1000)["action"], minlength=10)
    assert counts.tolist() == [100] * 10


def test_fifo_keeps_its_queue_contract():
    buf = ten_rows("fifo")
    with pytest.raises(ValueError, match="exceeds the 10 rows"):
        buf.sample(11)
    assert len(buf) == 10
    assert buf.sample(1000, partial=True)["action"].tolist() == list(range(10))
    assert len(buf) == 0


@pytest.mark.parametrize("buffer_type", RING_TYPES)
def test_a_large_batch_into_out_arrays(buffer_type):
    buf = ten_rows(buffer_type, capacity=10)
    out = {name: np.empty((64, *shape), dtype) for name, (shape, dtype) in buf.schema.items()}
    if buffer_type == "prioritized":
        out.update(weights=np.empty(64, np.float32), ids=np.empty(64, np.int64), probabilities=np.empty(64, np.float64))
    batch = buf.sample(64, out=out)
    assert batch["action"] is out["action"] and set(out["action"].tolist()) <= set(range(10))


def test_the_admission_loop_backs_off_doubling_to_its_cap_and_times_out_with_the_reason():
    from ray_replay.distributed.sampling import RateLimiter, ShardTable, Snapshot

    table = ShardTable(2, "uniform", [Snapshot(10, 10.0, 0.0, 10, 0), Snapshot(5, 5.0, 0.0, 5, 0)])
    now = [0.0]
    assert list(RateLimiter(min_size_to_sample=15).waits(table, 4, 0.05, clock=lambda: now[0])) == []  # allowed at once

    waits = RateLimiter(min_size_to_sample=20, timeout_s=1.0).waits(table, 4, 0.05, clock=lambda: now[0])
    pauses = []
    with pytest.raises(TimeoutError, match=r"sample\(4\) not allowed after 1.0 s: the replay holds 15 rows"):
        for pause in waits:
            pauses.append(pause)
            now[0] += pause
    assert pauses[:7] == [0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.05]
    assert set(pauses[6:]) == {0.05} and sum(pauses) >= 1.0 - 0.05

    # rows in flight (prefetched rounds) count with the batch: 15 inserts allow 30 rows at 2 per insert
    limiter = RateLimiter(samples_per_insert=2.0, timeout_s=0.0)
    assert list(limiter.waits(table, 20, 0.05, in_flight=10, clock=lambda: now[0])) == []
    with pytest.raises(TimeoutError, match=r"sample\(20\)"):
        list(limiter.waits(table, 20, 0.05, in_flight=11, clock=lambda: now[0]))

    # the rows arriving end the wait: the table is refreshed by the caller between pauses
    waits = RateLimiter(min_size_to_sample=20).waits(table, 4, 0.05, clock=lambda: now[0])
    assert next(waits) == 0.001
    table.update(1, Snapshot(10, 10.0, 0.0, 10, 0))
    assert list(waits) == []


def test_the_distributed_options_are_checked_by_one_rule_naming_the_field():
    from ray_replay.distributed.writes import check_count, check_seconds

    assert check_count("batch_rows", np.int64(3), 1) == 3
    with pytest.raises(TypeError, match="batch_rows must be an int, got bool"):
        check_count("batch_rows", True, 1)
    with pytest.raises(TypeError, match="prefetch must be an int, got str"):
        check_count("prefetch", "2", 0)
    with pytest.raises(ValueError, match="prefetch must be >= 0, got -1"):
        check_count("prefetch", -1, 0)
    assert check_seconds("shard_timeout_s", 2) == 2.0
    for bad in (0, -1.0, float("nan"), float("inf"), "1", None, True):
        with pytest.raises(ValueError, match="shard_timeout_s must be a finite number of seconds > 0"):
            check_seconds("shard_timeout_s", bad)
