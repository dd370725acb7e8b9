"""Semantics of the local ReplayBuffer: schema, every buffer type, sampling, out=, stats, seeding, pickling."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from helpers import SCHEMA, assert_rows_consistent, transitions

from ray_replay import BUFFER_TYPES, BufferFullError, ReplayBuffer


def make(buffer_type: str, capacity: int = 100, **kwargs) -> ReplayBuffer:
    return ReplayBuffer(capacity, buffer_type, schema=SCHEMA, seed=7, **kwargs)


def test_schema_is_inferred_from_the_first_add():
    buf = ReplayBuffer(10)
    buf.add(np.zeros(4, np.float64), 2, 0.5, [0.0, 1.0, 2.0, 3.0], True)
    assert buf.schema == {
        "state": ((4,), np.dtype(np.float64)),  # numpy keeps its dtype
        "action": ((), np.dtype(np.int64)),  # Python int
        "reward": ((), np.dtype(np.float32)),  # Python float
        "next_state": ((4,), np.dtype(np.float32)),  # list of Python floats
        "done": ((), np.dtype(np.bool_)),
    }
    batch = buf.sample(3)
    assert batch["state"].shape == (3, 4) and batch["reward"].dtype == np.float32


def test_schema_is_inferred_from_a_first_batch():
    buf = ReplayBuffer(10)
    buf.add_batch(**transitions(4))
    assert buf.schema["state"] == ((8,), np.dtype(np.float32))
    assert len(buf) == 4


def test_custom_schema_with_other_field_names():
    schema = {"obs": ((3,), np.float32), "terminated": ((), np.bool_), "truncated": ((), np.bool_), "info": ((2,), np.int32)}
    buf = ReplayBuffer(8, schema=schema, seed=0)
    buf.add(obs=np.ones(3, np.float32), terminated=False, truncated=True, info=[1, 2])
    buf.add_batch(obs=np.zeros((2, 3), np.float32), terminated=[True, False], truncated=[False, False], info=np.ones((2, 2), np.int32))
    assert len(buf) == 3
    batch = buf.sample(5)
    assert set(batch) == set(schema)
    assert batch["info"].dtype == np.int32 and batch["info"].shape == (5, 2)


@pytest.mark.parametrize("buffer_type", ["uniform", "lockfree", "prioritized"])
def test_ring_evicts_the_oldest_and_samples_only_live_rows(buffer_type):
    buf = make(buffer_type, capacity=50)
    data = transitions(120)
    buf.add_batch(**data)
    assert len(buf) == 50
    assert buf.stats()["evictions"] == 70
    batch = buf.sample(50)
    assert batch["action"].min() >= 70
    assert_rows_consistent(batch)


@pytest.mark.parametrize("buffer_type", ["uniform", "lockfree", "prioritized"])
def test_single_adds_match_batch_adds(buffer_type):
    one, many = make(buffer_type), make(buffer_type)
    data = transitions(30)
    for i in range(30):
        one.add(*(data[name][i] for name in SCHEMA))
    many.add_batch(**data)
    for name in SCHEMA:
        np.testing.assert_array_equal(one.get_state()["columns"][name], many.get_state()["columns"][name])


def test_batch_larger_than_the_ring_keeps_the_newest_rows():
    buf = make("uniform", capacity=10)
    buf.add_batch(**transitions(25))
    assert sorted(buf.get_state()["columns"]["action"]) == list(range(15, 25))
    assert buf.stats()["evictions"] == 15


def test_sampled_arrays_are_owned_by_the_caller():
    buf = make("uniform", capacity=5)
    buf.add_batch(**transitions(5))
    batch = buf.sample(5)
    before = {name: array.copy() for name, array in batch.items()}
    buf.add_batch(**transitions(5, start=100))  # overwrites every slot
    for name in batch:
        assert batch[name].flags.owndata or batch[name].base is not None
        np.testing.assert_array_equal(batch[name], before[name])


@pytest.mark.parametrize("buffer_type", ["uniform", "lockfree", "prioritized"])
def test_sample_fills_preallocated_out_arrays(buffer_type):
    buf = make(buffer_type)
    buf.add_batch(**transitions(40))
    out = {name: np.empty((16, *shape), dtype) for name, (shape, dtype) in SCHEMA.items()}
    batch = buf.sample(16, out=out)
    for name in SCHEMA:
        assert batch[name] is out[name]
    assert_rows_consistent(batch)


def test_out_arrays_of_the_wrong_shape_or_dtype_are_rejected():
    buf = make("uniform")
    buf.add_batch(**transitions(10))
    with pytest.raises(ValueError, match="out\\['state'\\]"):
        buf.sample(4, out={"state": np.empty((4, 8), np.float64)})
    with pytest.raises(ValueError, match="out\\['reward'\\]"):
        buf.sample(4, out={"reward": np.empty(5, np.float32)})


def test_non_contiguous_and_differently_strided_inputs_are_copied():
    buf = make("uniform")
    data = transitions(10)
    wide = np.zeros((10, 16), np.float32)
    wide[:, ::2] = data["state"]
    fortran = np.asfortranarray(data["next_state"])
    buf.add_batch(wide[:, ::2], data["action"][::-1][::-1], data["reward"], fortran, data["done"])
    buf.add(wide[3, ::2], data["action"][3], data["reward"][3], fortran[3], data["done"][3])
    stored = buf.get_state()["columns"]
    np.testing.assert_array_equal(stored["state"][:10], data["state"])
    np.testing.assert_array_equal(stored["next_state"][10], data["next_state"][3])


def test_fifo_returns_the_oldest_in_order_and_removes_them():
    buf = make("fifo", capacity=10)
    buf.add_batch(**transitions(6))
    first = buf.sample(4)
    assert list(first["action"]) == [0, 1, 2, 3]
    assert len(buf) == 2
    buf.add_batch(**transitions(3, start=6))
    assert list(buf.sample(5)["action"]) == [4, 5, 6, 7, 8]
    assert len(buf) == 0
    assert buf.stats()["samples"] == 9


def test_fifo_full_raises_and_writes_nothing():
    buf = make("fifo", capacity=5)
    buf.add_batch(**transitions(4))
    with pytest.raises(BufferFullError, match="full"):
        buf.add_batch(**transitions(2, start=4))
    with pytest.raises(RuntimeError):  # BufferFullError is a RuntimeError
        buf.add_batch(**transitions(9, start=4))
    assert len(buf) == 4
    assert buf.stats()["rejected"] == 11
    buf.add(*(transitions(1, start=4)[name][0] for name in SCHEMA))
    assert list(buf.sample(5)["action"]) == [0, 1, 2, 3, 4]


def test_fifo_evict_policy_drops_the_oldest_and_counts_them():
    buf = make("fifo", capacity=5, on_full="evict")
    buf.add_batch(**transitions(8))
    assert buf.stats()["evictions"] == 3
    assert list(buf.sample(5)["action"]) == [3, 4, 5, 6, 7]


def test_fifo_sample_of_more_than_it_holds():
    buf = make("fifo", capacity=10)
    buf.add_batch(**transitions(3))
    with pytest.raises(ValueError, match="exceeds the 3 rows"):
        buf.sample(5)
    assert len(buf) == 3
    batch = buf.sample(5, partial=True)
    assert list(batch["action"]) == [0, 1, 2] and batch["state"].shape == (3, 8)
    assert len(buf) == 0


@pytest.mark.parametrize("buffer_type", BUFFER_TYPES)
def test_seed_makes_sampling_reproducible(buffer_type):
    def run():
        buf = make(buffer_type, capacity=1000)
        buf.add_batch(**transitions(1000))
        return [buf.sample(32)["action"] for _ in range(3)]

    for a, b in zip(run(), run()):
        np.testing.assert_array_equal(a, b)


def test_uniform_sampling_is_uniform():
    from scipy import stats

    buf = ReplayBuffer(20, "uniform", schema=SCHEMA, seed=3)
    buf.add_batch(**transitions(20))
    counts = np.bincount(np.concatenate([buf.sample(20)["action"] for _ in range(10_000)]), minlength=20)
    assert stats.chisquare(counts).pvalue > 0.001


@pytest.mark.parametrize("buffer_type", BUFFER_TYPES)
def test_stats_report_counts_bytes_and_latency(buffer_type):
    buf = make(buffer_type, capacity=100)
    for i in range(20):
        buf.add(*(transitions(1, start=i)[name][0] for name in SCHEMA))
    buf.sample(10)
    stats = buf.stats()
    assert stats["size"] == (10 if buffer_type == "fifo" else 20)
    assert stats["capacity"] == 100 and stats["adds"] == 20 and stats["samples"] == 10
    assert stats["evictions"] == 0
    row_bytes = 32 + 8 + 4 + 32 + 1
    assert stats["bytes_held"] == stats["size"] * row_bytes
    assert stats["bytes_reserved"] >= 100 * row_bytes
    assert 0 < stats["add_p50_ns"] <= stats["add_p99_ns"]
    assert 0 < stats["sample_p50_ns"] <= stats["sample_p99_ns"]


def test_latency_monitoring_can_be_switched_off():
    buf = make("uniform", collect_stats=False)
    buf.add_batch(**transitions(10))
    buf.sample(5)
    assert buf.stats()["add_p50_ns"] == 0 and buf.stats()["sample_p99_ns"] == 0
    assert buf.stats()["collect_stats"] is False and buf.stats()["stats_enabled"] is False  # one switch, one name (and its former)
    buf.collect_stats = True
    buf.add_batch(**transitions(10))
    assert buf.stats()["add_p50_ns"] > 0 and buf.stats()["collect_stats"] is True


@pytest.mark.parametrize("buffer_type", BUFFER_TYPES)
def test_pickle_round_trip_keeps_contents_counters_and_random_state(buffer_type):
    buf = make(buffer_type, capacity=64)
    buf.add_batch(**transitions(50 if buffer_type == "fifo" else 100))
    buf.sample(8)
    if buffer_type == "prioritized":
        batch = buf.sample(8)
        buf.update_priorities(batch["ids"], np.linspace(0.1, 3.0, 8))
    restored = pickle.loads(pickle.dumps(buf))
    assert type(restored) is ReplayBuffer
    assert restored.stats()["adds"] == buf.stats()["adds"]
    assert len(restored) == len(buf) and restored.schema == buf.schema
    for name in SCHEMA:
        np.testing.assert_array_equal(restored.get_state()["columns"][name], buf.get_state()["columns"][name])
    for _ in range(3):
        a, b = buf.sample(8), restored.sample(8)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_an_empty_buffer_pickles():
    buf = ReplayBuffer(10, "prioritized", alpha=0.7)
    restored = pickle.loads(pickle.dumps(buf))
    assert len(restored) == 0 and restored.capacity == 10
    restored.add_batch(**transitions(3))
    assert len(restored) == 3
