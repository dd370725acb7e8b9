"""Bad input raises ValueError/TypeError naming the field, and leaves the buffer exactly as it was."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import SCHEMA, transitions

from ray_replay import BUFFER_TYPES, ReplayBuffer


def filled(buffer_type: str) -> ReplayBuffer:
    buf = ReplayBuffer(32, buffer_type, schema=SCHEMA, seed=1)
    buf.add_batch(**transitions(10))
    return buf


def snapshot(buf: ReplayBuffer) -> dict:
    state = buf.get_state()
    columns = state.pop("columns")
    state.pop("random")
    return {"state": state, "columns": {k: v.copy() for k, v in columns.items()}}


def assert_unchanged(buf: ReplayBuffer, before: dict) -> None:
    after = snapshot(buf)
    for key in ("masses", "streams"):  # arrays (streams: each row's stream, uniform/prioritized and dedup)
        np.testing.assert_array_equal(before["state"].pop(key, None), after["state"].pop(key, None))
    assert after["state"] == before["state"]
    for name, column in before["columns"].items():
        np.testing.assert_array_equal(after["columns"][name], column)


def one(**overrides):
    row = {name: values[0] for name, values in transitions(1, start=50).items()}
    row.update(overrides)
    return row


def batch(n=4, **overrides):
    data = transitions(n, start=50)
    data.update(overrides)
    return data


BAD_ADDS = [
    ("wrong shape", lambda b: b.add(**one(state=np.zeros(4, np.float32))), ValueError, r"'state'.*\(8,\).*\(4,\)"),
    ("float into int", lambda b: b.add(**one(action=1.5)), TypeError, "'action'"),
    ("float array into int", lambda b: b.add(**one(action=np.float64(2.0))), TypeError, "'action'.*int64"),
    ("int into bool", lambda b: b.add(**one(done=np.int64(3))), TypeError, "'done'"),
    ("string", lambda b: b.add(**one(reward="high")), TypeError, "'reward'"),
    ("None", lambda b: b.add(**one(next_state=None)), TypeError, "'next_state'"),
    ("missing field", lambda b: b.add(*[one()[k] for k in list(SCHEMA)[:4]]), ValueError, "missing field 'done'"),
    ("unknown field", lambda b: b.add(**one(), bonus=1.0), ValueError, "unknown field 'bonus'"),
    ("too many values", lambda b: b.add(*one().values(), 1), ValueError, "positional"),
    ("int out of range", lambda b: b.add(**one(action=2**70)), ValueError, "'action'"),
    ("batch shape", lambda b: b.add_batch(**batch(state=np.zeros((4, 7), np.float32))), ValueError, r"'state'.*\(batch, 8\).*\(4, 7\)"),
    ("batch dtype", lambda b: b.add_batch(**batch(action=np.zeros(4, np.float32))), TypeError, "'action'.*int64.*float32"),
    ("batch lengths", lambda b: b.add_batch(**batch(reward=np.zeros(3, np.float32))), ValueError, "different lengths.*'reward' has 3"),
    ("batch scalar", lambda b: b.add_batch(**batch(done=True)), ValueError, "'done'.*leading batch axis"),
    ("ragged list", lambda b: b.add_batch(**batch(next_state=[[1.0], [1.0, 2.0]])), (TypeError, ValueError), "'next_state'"),
]


@pytest.mark.parametrize("buffer_type", BUFFER_TYPES)
def test_a_bad_column_late_in_a_batch_writes_none_of_it(buffer_type):
    buf = filled(buffer_type)
    before = snapshot(buf)
    with pytest.raises(TypeError, match="'done'"):
        buf.add_batch(**batch(n=8, done=np.arange(8, dtype=np.int64) + 2))
    assert_unchanged(buf, before)


BAD_SAMPLES = [
    ("zero batch", lambda b: b.sample(0), ValueError, "batch_size must be > 0"),
    ("negative batch", lambda b: b.sample(-3), ValueError, "batch_size must be > 0"),
    ("batch not an int", lambda b: b.sample("8"), TypeError, "incompatible function arguments"),
    ("negative beta", lambda b: b.sample(4, beta=-1.0), ValueError, "beta"),
]


@pytest.mark.parametrize("buffer_type", BUFFER_TYPES)
@pytest.mark.parametrize("name, call, error, message", BAD_ADDS + BAD_SAMPLES, ids=[case[0] for case in BAD_ADDS + BAD_SAMPLES])
def test_bad_calls_raise_and_change_nothing(buffer_type, name, call, error, message):
    buf = filled(buffer_type)
    before = snapshot(buf)
    with pytest.raises(error, match=message):
        call(buf)
    assert_unchanged(buf, before)


def test_a_fifo_read_of_more_rows_than_held_raises_and_changes_nothing():
    """Fifo keeps its queue contract (the other types sample with replacement, see test_sampling.py)."""
    buf = filled("fifo")
    before = snapshot(buf)
    with pytest.raises(ValueError, match="exceeds the 10 rows in the fifo buffer"):
        buf.sample(33)
    assert_unchanged(buf, before)


@pytest.mark.parametrize("buffer_type", BUFFER_TYPES)
def test_sampling_an_empty_buffer(buffer_type):
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(8, buffer_type).sample(1)
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(8, buffer_type, schema=SCHEMA).sample(1)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"capacity": 0}, ValueError, "capacity must be > 0"),
        ({"capacity": -5}, ValueError, "capacity must be > 0"),
        ({"capacity": 2.5}, TypeError, "capacity must be an int"),
        ({"capacity": 8, "buffer_type": "ring"}, ValueError, "buffer_type must be one of"),
        ({"capacity": 8, "buffer_type": "prioritized", "alpha": -0.1}, ValueError, "alpha"),
        ({"capacity": 8, "buffer_type": "prioritized", "eps": float("nan")}, ValueError, "eps"),
        ({"capacity": 8, "sampling": "greedy"}, ValueError, "sampling"),
        ({"capacity": 8, "on_full": "block"}, ValueError, "on_full"),
        ({"capacity": 8, "seed": -1}, ValueError, "seed"),
        ({"capacity": 8, "schema": {"x": ((2,), "U4")}}, TypeError, "'x'.*not supported"),
        ({"capacity": 8, "schema": {"x": ((0,), "f4")}}, ValueError, "'x'"),
        ({"capacity": 8, "schema": {}}, ValueError, "at least one field"),
        ({"capacity": 8, "schema": [1, 2]}, TypeError, "mapping"),
    ],
)
def test_bad_construction(kwargs, error, message):
    with pytest.raises(error, match=message):
        ReplayBuffer(**kwargs)


def test_a_failed_first_add_fixes_no_schema():
    buf = ReplayBuffer(8)
    with pytest.raises(ValueError):
        buf.add_batch(np.zeros((3, 2)), np.zeros(2))
    assert buf.schema == {}
    buf.add(1.0, 2)
    assert list(buf.schema) == ["state", "action"]


@pytest.mark.parametrize("buffer_type", ["uniform", "fifo", "lockfree"])
def test_priorities_on_a_buffer_without_them(buffer_type):
    buf = filled(buffer_type)
    with pytest.raises(ValueError, match="only supported by buffer_type='prioritized'"):
        buf.add(**one(), priority=1.0)
    with pytest.raises(ValueError, match="only supported by buffer_type='prioritized'"):
        buf.update_priorities(np.array([0]), np.array([1.0]))


def test_a_buffer_whose_init_never_ran_raises_instead_of_crashing():
    half_built = ReplayBuffer.__new__(ReplayBuffer)
    for call in (len, repr, lambda b: b.capacity, lambda b: b.add(1.0), lambda b: b.sample(1), lambda b: b.stats()):
        with pytest.raises(TypeError, match="__init__ was not called"):
            call(half_built)


@pytest.mark.parametrize("seed", [0, 2**64 - 1])
def test_the_whole_seed_range_is_accepted(seed):
    assert ReplayBuffer(4, seed=seed).stats()["size"] == 0


def test_the_interpreter_exits_cleanly_after_the_general_conversion_path(tmp_path):
    # Regression: cached Python objects held by C++ statics were released after finalization (exit 139).
    import subprocess
    import sys

    script = "import numpy as np\nfrom ray_replay import ReplayBuffer\nb = ReplayBuffer(4)\nb.add([1.0, 2.0], np.int64(3))\nb.add_batch([[1.0, 2.0]], [4])\n"
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_out_must_be_a_dict():
    buf = filled("uniform")
    with pytest.raises(TypeError, match="out must be a dict"):
        buf.sample(2, out=[np.empty(2)])


def test_every_exception_of_ray_replay_is_importable_from_the_package_without_importing_ray(tmp_path):
    import subprocess
    import sys

    script = (
        "import sys, ray_replay\n"
        "from ray_replay import BufferFullError, CorruptFileError, ShardFencedError, ShardUnavailableError, StalePlanError\n"
        "assert 'ray' not in sys.modules, 'import ray_replay imported Ray'\n"
        "from ray_replay.distributed import ShardUnavailableError as a, ShardFencedError as b, StalePlanError as c\n"
        "assert (a, b, c) == (ShardUnavailableError, ShardFencedError, StalePlanError)\n"
        "assert issubclass(CorruptFileError, ValueError) and issubclass(BufferFullError, RuntimeError)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
