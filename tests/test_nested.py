"""Nested fields (dicts and tuples of arrays) in ReplayBuffer: flat leaf columns in, nested samples out.

Every stored row is checked to round-trip exactly (samples are compared with the rows written, by a
unique id column), bad input to raise naming the full path and to store nothing, and the structure to
survive pickling, get_state/from_state and save/load.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from ray_replay import ReplayBuffer
from ray_replay.nested import Layout, column_name, flatten_schema, is_leaf_spec
from ray_replay.persistence import CorruptFileError

SCHEMA = {
    "obs": {"image": ((6, 6, 3), np.uint8), "vector": ((8,), np.float32)},
    "pair": (((2,), np.int32), {"x": ((), np.float64)}),
    "action": ((), np.int64),
    "id": ((), np.int64),
}


def rows(n: int, start: int = 0) -> dict:
    rng = np.random.default_rng(start)
    ids = np.arange(start, start + n)
    return {
        "obs": {"image": rng.integers(0, 255, (n, 6, 6, 3), dtype=np.uint8), "vector": rng.standard_normal((n, 8)).astype(np.float32)},
        "pair": (rng.integers(-9, 9, (n, 2), dtype=np.int32), {"x": rng.standard_normal(n)}),
        "action": rng.integers(0, 4, n),
        "id": ids,
    }


def row(batch: dict, i: int) -> dict:
    return {"obs": {k: v[i] for k, v in batch["obs"].items()}, "pair": (batch["pair"][0][i], {"x": batch["pair"][1]["x"][i]}),
            "action": batch["action"][i], "id": batch["id"][i]}


def assert_sample_matches(sample: dict, written: dict) -> None:
    """Each sampled row equals the written row of the same id, leaf by leaf, with the schema's dtypes."""
    assert list(sample)[:4] == ["obs", "pair", "action", "id"]
    assert set(sample["obs"]) == {"image", "vector"} and isinstance(sample["pair"], tuple) and set(sample["pair"][1]) == {"x"}
    ids = sample["id"]
    np.testing.assert_array_equal(sample["obs"]["image"], written["obs"]["image"][ids])
    np.testing.assert_array_equal(sample["obs"]["vector"], written["obs"]["vector"][ids])
    np.testing.assert_array_equal(sample["pair"][0], written["pair"][0][ids])
    np.testing.assert_array_equal(sample["pair"][1]["x"], written["pair"][1]["x"][ids])
    np.testing.assert_array_equal(sample["action"], written["action"][ids])
    assert sample["obs"]["image"].dtype == np.uint8 and sample["obs"]["vector"].dtype == np.float32
    assert sample["pair"][0].dtype == np.int32 and sample["pair"][1]["x"].dtype == np.float64


@pytest.mark.parametrize("buffer_type", ["uniform", "prioritized", "lockfree"])
def test_rows_round_trip_exactly(buffer_type):
    buf = ReplayBuffer(64, buffer_type, schema=SCHEMA, seed=1)
    data = rows(40)
    buf.add_batch(**data)
    for i in range(40, 50):  # single rows too, named and positional
        one = rows(1, i)
        data = {k: _concat(data[k], one[k]) for k in data}
        if i % 2:
            buf.add(**row(one, 0))
        else:
            buf.add(*row(one, 0).values())
    assert len(buf) == 50
    assert list(buf.schema) == ["obs.image", "obs.vector", "pair[0]", "pair[1].x", "action", "id"]
    assert buf.nested_schema["obs"]["image"] == ((6, 6, 3), np.dtype(np.uint8))
    sample = buf.sample(32)
    assert_sample_matches(sample, data)
    if buffer_type == "prioritized":
        assert {"weights", "ids", "probabilities"} <= set(sample)
        buf.update_priorities(sample["ids"], np.ones(32))


def _concat(a, b):
    if isinstance(a, dict):
        return {k: _concat(a[k], b[k]) for k in a}
    if isinstance(a, tuple):
        return tuple(_concat(x, y) for x, y in zip(a, b))
    return np.concatenate([a, b])


def test_fifo_pops_in_order_with_nested_out():
    buf = ReplayBuffer(16, "fifo", schema=SCHEMA)
    data = rows(10)
    buf.add_batch(**data)
    out = {"obs": {"image": np.empty((4, 6, 6, 3), np.uint8), "vector": np.empty((4, 8), np.float32)},
           "pair": (np.empty((4, 2), np.int32), {"x": np.empty(4)}), "action": np.empty(4, np.int64), "id": np.empty(4, np.int64)}
    sample = buf.sample(4, out=out)
    np.testing.assert_array_equal(sample["id"], [0, 1, 2, 3])
    assert sample["obs"]["image"] is out["obs"]["image"]  # filled in place
    assert_sample_matches(sample, data)


@pytest.mark.parametrize(
    ("mutate", "error", "message"),
    [
        (lambda r: r["obs"].pop("vector"), ValueError, "'obs.vector': missing"),
        (lambda r: r["obs"].update(extra=np.zeros(3)), ValueError, "'obs': unexpected key(s) ['extra']"),
        (lambda r: r["obs"].update(image=np.zeros((6, 6, 4), np.uint8)), ValueError, "'obs.image': expected shape (6, 6, 3)"),
        (lambda r: r.update(pair=(r["pair"][0],)), ValueError, "'pair': expected a tuple of 2 items, got 1"),
        (lambda r: r.update(pair=r["pair"][0]), TypeError, "'pair': expected a tuple of 2 items"),
        (lambda r: r.update(obs=np.zeros(3)), TypeError, "'obs': expected a dict with keys ['image', 'vector']"),
        (lambda r: r.update(action={"a": 1}), TypeError, "'action': expected an array, got a dict"),
        (lambda r: r["pair"][1].update(x="text"), TypeError, "'pair[1].x'"),
        (lambda r: r.pop("id"), ValueError, "missing field 'id'"),
        (lambda r: r.update(other=1), ValueError, "unknown field 'other'"),
    ],
)
def test_bad_input_names_the_path_and_stores_nothing(mutate, error, message):
    buf = ReplayBuffer(8, "prioritized", schema=SCHEMA, seed=0)
    buf.add_batch(**rows(3))
    before = buf.get_state()
    one = row(rows(1, 7), 0)
    one = {"obs": dict(one["obs"]), "pair": (one["pair"][0], dict(one["pair"][1])), "action": one["action"], "id": one["id"]}
    mutate(one)
    with pytest.raises(error) as caught:
        buf.add(**one)
    assert message in str(caught.value)
    batch = rows(2, 9)
    mutate_batch = {"obs": dict(batch["obs"]), "pair": (batch["pair"][0], dict(batch["pair"][1])), "action": batch["action"], "id": batch["id"]}
    if message.startswith("'obs.image'"):
        mutate_batch["obs"]["image"] = np.zeros((2, 6, 6, 4), np.uint8)
    else:
        mutate(mutate_batch)
    with pytest.raises((ValueError, TypeError)):
        buf.add_batch(**mutate_batch)
    after = buf.get_state()
    assert len(buf) == 3 and after["total_adds"] == before["total_adds"]
    for name in before["columns"]:
        np.testing.assert_array_equal(after["columns"][name], before["columns"][name])


def test_a_batch_with_one_short_leaf_stores_nothing():
    buf = ReplayBuffer(8, schema=SCHEMA)
    batch = rows(4)
    batch["pair"][1]["x"] = batch["pair"][1]["x"][:3]
    with pytest.raises(ValueError):
        buf.add_batch(**batch)
    assert len(buf) == 0


def test_bad_nested_schemas_are_refused():
    with pytest.raises(ValueError, match="'obs': an empty dict"):
        ReplayBuffer(4, schema={"obs": {}, "a": ((), int)})
    with pytest.raises(ValueError, match="'obs.x': expected \\(shape, dtype\\)"):
        ReplayBuffer(4, schema={"obs": {"x": "float32"}})
    with pytest.raises(TypeError, match="nested keys must be non-empty str"):
        ReplayBuffer(4, schema={"obs": {1: ((), int)}})
    with pytest.raises(ValueError, match="same column 'obs.a'"):
        ReplayBuffer(4, schema={"obs": {"a": ((), int)}, "obs.a": ((), int)})
    with pytest.raises(TypeError, match="'obs.x'.*not supported"):
        ReplayBuffer(4, schema={"obs": {"x": ((2,), object)}})


def test_leaf_specs_pass_through_untouched():
    assert is_leaf_spec(((64, 64, 3), np.uint8)) and is_leaf_spec((8, "float32")) and is_leaf_spec(((), bool, "lz4"))
    assert not is_leaf_spec((((2,), np.int32), ((), np.float64)))  # a tuple of two leaves
    codec = ((4,), np.float32, "lz4")
    flat, layout = flatten_schema({"obs": {"v": codec}, "pair": (codec, ((), int))})
    assert flat == {"obs.v": codec, "pair[0]": codec, "pair[1]": ((), int)}  # the same objects, unchanged
    assert flat["obs.v"] is codec
    assert layout.columns == ("obs.v", "pair[0]", "pair[1]")
    assert column_name(("a", 0, "b", 1)) == "a[0].b[1]"


def test_inferred_at_the_first_add_without_schema():
    buf = ReplayBuffer(16, seed=0)
    state = {"pos": np.arange(3, dtype=np.float32), "flag": True}
    buf.add(state, 1, 0.5, {"pos": np.ones(3, np.float32), "flag": False}, False)
    assert list(buf.schema) == ["state.pos", "state.flag", "action", "reward", "next_state.pos", "next_state.flag", "done"]
    assert buf.schema["state.flag"] == ((), np.dtype(bool))
    buf.add_batch(state={"pos": np.zeros((2, 3), np.float32), "flag": np.array([True, False])}, action=np.array([2, 3]),
                  reward=np.array([1.0, 2.0], np.float32), next_state={"pos": np.zeros((2, 3), np.float32), "flag": np.array([True, True])},
                  done=np.array([False, True]))
    sample = buf.sample(64)
    assert set(sample["state"]) == {"pos", "flag"} and sample["state"]["pos"].shape == (64, 3)
    assert set(sample["action"].tolist()) == {1, 2, 3}
    with pytest.raises(ValueError, match="'state.flag': missing"):
        buf.add({"pos": np.zeros(3)}, 1, 0.5, {"pos": np.ones(3), "flag": False}, False)
    assert len(buf) == 3


def test_inference_keeps_flat_values_flat():
    buf = ReplayBuffer(4)
    buf.add(state=(1.0, 2.0), action=1)  # a tuple of numbers is one array, as it always was
    assert buf.schema["state"] == ((2,), np.dtype(np.float32))
    assert type(buf) is ReplayBuffer  # settled into the plain class: native methods, no Python frame
    ragged = ReplayBuffer(4)
    ragged.add_batch(obs=(np.zeros((2, 3)), np.zeros(2, np.int64)), action=np.zeros(2))  # parts differ: a Tuple
    assert list(ragged.schema) == ["obs[0]", "obs[1]", "action"]
    assert isinstance(ragged.sample(1)["obs"], tuple)


def test_a_failed_first_add_infers_nothing():
    buf = ReplayBuffer(4)
    with pytest.raises(TypeError):
        buf.add(obs={"a": np.zeros(2), "b": np.array(["x"])}, action=1)
    assert not buf.schema and len(buf) == 0
    buf.add(obs=np.zeros(2), action=1)  # the buffer is still free to take any schema
    assert list(buf.schema) == ["obs", "action"]


@pytest.mark.parametrize("buffer_type", ["uniform", "prioritized", "fifo"])
def test_pickle_state_and_files_keep_the_structure(tmp_path, buffer_type):
    buf = ReplayBuffer(32, buffer_type, schema=SCHEMA, seed=3)
    data = rows(20)
    buf.add_batch(**data)
    for copy in (pickle.loads(pickle.dumps(buf)), ReplayBuffer.from_state(buf.get_state())):
        assert type(copy) is type(buf) and len(copy) == 20 and copy.nested_schema == buf.nested_schema
        assert_sample_matches(copy.sample(8), data)
    buf.save(tmp_path / "nested.rrb")
    loaded = ReplayBuffer.load(tmp_path / "nested.rrb")
    assert loaded.nested_schema == buf.nested_schema
    expected = buf.sample(8)
    got = loaded.sample(8)  # the random state was saved too: the same draw
    np.testing.assert_array_equal(got["id"], expected["id"])
    assert_sample_matches(got, data)


def test_inferred_nesting_survives_pickling():
    buf = ReplayBuffer(8, seed=0)
    buf.add(obs={"a": np.zeros(2)}, action=1)
    copy = pickle.loads(pickle.dumps(buf))
    assert set(copy.sample(1)["obs"]) == {"a"}
    empty = pickle.loads(pickle.dumps(ReplayBuffer(8)))
    empty.add(obs={"b": 1.0})  # still infers
    assert list(empty.schema) == ["obs.b"]


def test_storage_dir_reopens_nested(tmp_path):
    with ReplayBuffer(16, schema=SCHEMA, storage_dir=tmp_path / "cols") as buf:
        data = rows(10)
        buf.add_batch(**data)
    reopened = ReplayBuffer.open(tmp_path / "cols")
    assert_sample_matches(reopened.sample(5), data)


def test_a_file_with_a_bad_layout_is_corrupt(tmp_path):
    from ray_replay.persistence import read_state, write_state

    buf = ReplayBuffer(8, schema=SCHEMA)
    buf.add_batch(**rows(2))
    state = buf.get_state()
    for bad in ([["obs", "image"]], [["obs", 0], ["obs", "x"]], "nonsense"):
        state["nested"] = bad
        write_state(state, tmp_path / "bad.rrb")
        with pytest.raises(CorruptFileError):
            ReplayBuffer.load(tmp_path / "bad.rrb")
    state["nested"] = buf.get_state()["nested"]
    write_state(state, tmp_path / "good.rrb")
    assert read_state(tmp_path / "good.rrb")["nested"] == state["nested"]


def test_layout_json_round_trip():
    _, layout = flatten_schema(SCHEMA)
    assert Layout.from_json(layout.to_json()) == layout
    assert layout.to_json()[:3] == [["obs", "image"], ["obs", "vector"], ["pair", 0]]
    with pytest.raises(ValueError, match="indices"):
        Layout.from_json([["pair", 1]])


def test_first_adds_from_many_threads_infer_once():
    import threading

    for _ in range(20):
        buf = ReplayBuffer(10_000, "lockfree")
        barrier = threading.Barrier(4)

        def write(k: int, buf=buf, barrier=barrier) -> None:
            barrier.wait()
            for i in range(5):
                buf.add_batch(obs={"a": np.full((3, 2), k, np.float32), "b": np.arange(3)}, action=np.full(3, i))

        threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(buf) == 60 and list(buf.schema) == ["obs.a", "obs.b", "action"]
        assert set(buf.sample(200)["obs"]["a"][:, 0].tolist()) <= {0.0, 1.0, 2.0, 3.0}

