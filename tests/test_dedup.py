"""Observation dedup (next_state="dedup", frame_stack_axis): exactly a plain buffer's contents, in less memory."""

from __future__ import annotations

import helpers
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ray_replay import BUFFER_TYPES, BufferFullError, ReplayBuffer
from ray_replay.distributed import ReplayShardImpl

FRAME = (3, 2)  # tiny frames over few values, so frames often coincide by chance
K = 3


def stacked(frames: list[np.ndarray], axis: int | None) -> np.ndarray:
    return np.stack(frames, axis=axis if axis is not None else -1)


class Streams:
    """Writers that step through episodes of stacked observations (gymnasium's FrameStack convention:
    a reset repeats the first frame, or zeros), with truncations and the odd unchained transition."""

    def __init__(self, rng: np.random.Generator, axis: int | None, streams: int) -> None:
        self.rng, self.axis = rng, axis
        self.frames: dict[int, list[np.ndarray]] = {s: self.reset() for s in range(streams)}

    def frame(self) -> np.ndarray:
        return self.rng.integers(0, 3, FRAME, dtype=np.uint8)

    def reset(self) -> list[np.ndarray]:
        first = self.frame()
        return [first] * K if self.rng.random() < 0.7 else [np.zeros(FRAME, np.uint8)] * (K - 1) + [first]

    def step(self, stream: int, step: int) -> dict[str, object]:
        frames = self.frames[stream]
        if self.rng.random() < 0.05:  # a writer handing in a state that is not its previous next_state
            frames = [self.frame() for _ in range(K)]
        after = frames[1:] + [self.frame()]
        done = bool(self.rng.random() < 0.15)
        self.frames[stream] = self.reset() if done or self.rng.random() < 0.05 else after
        return {"state": stacked(frames, self.axis), "action": np.int64(step), "reward": np.float32(step / 2),
                "next_state": stacked(after, self.axis), "done": done}


def pair(buffer_type: str, capacity: int, axis: int | None, seed: int = 3) -> tuple[ReplayBuffer, ReplayBuffer]:
    options = {"seed": seed, "on_full": "evict"}
    plain = ReplayBuffer(capacity, buffer_type, **options)
    dedup = ReplayBuffer(capacity, buffer_type, next_state="dedup", frame_stack_axis=axis, **options)
    return plain, dedup


def assert_same_contents(plain: ReplayBuffer, dedup: ReplayBuffer) -> None:
    helpers.assert_same_contents(dedup, plain)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    buffer_type=st.sampled_from(BUFFER_TYPES),
    axis=st.sampled_from([None, 0, -1, 1]),
    capacity=st.integers(1, 24),
    streams=st.integers(1, 4),
    calls=st.lists(st.tuples(st.integers(1, 30), st.booleans()), min_size=1, max_size=12),
    seed=st.integers(0, 2**32 - 1),
)
def test_dedup_buffers_hold_and_sample_exactly_what_a_plain_buffer_does(buffer_type, axis, capacity, streams, calls, seed):
    rng = np.random.default_rng(seed)
    writers = Streams(rng, axis, streams)
    plain, dedup = pair(buffer_type, capacity, axis)
    step = 0
    for rows, interleaved in calls:
        order = rng.integers(0, streams, rows) if interleaved else np.full(rows, rng.integers(streams))
        batch = [writers.step(int(s), step + i) for i, s in enumerate(order)]
        step += rows
        if rows == 1:
            plain.add(**batch[0])
            dedup.add(**batch[0], stream=int(order[0]))
        else:
            columns = {name: np.stack([np.asarray(row[name]) for row in batch]) for name in batch[0]}
            plain.add_batch(**columns)
            dedup.add_batch(**columns, streams=order)
        assert_same_contents(plain, dedup)
        if len(plain) and buffer_type != "fifo":
            expected, actual = plain.sample(min(5, capacity)), dedup.sample(min(5, capacity))
            for name in expected:
                np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)
        if buffer_type == "prioritized" and len(plain):
            ids = plain.sample(min(4, capacity))["ids"]
            dedup.sample(min(4, capacity))
            priorities = rng.random(len(ids)) + 0.1
            plain.update_priorities(ids, priorities)
            dedup.update_priorities(ids, priorities)
    if buffer_type == "fifo" and len(plain):
        n = int(rng.integers(1, len(plain) + 1))
        expected, actual = plain.sample(n), dedup.sample(n)
        for name in expected:
            np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)
        assert_same_contents(plain, dedup)
    assert_same_contents(ReplayBuffer.from_state(plain.get_state()), ReplayBuffer.from_state(dedup.get_state()))


def atari_like_episode(rng: np.random.Generator, steps: int, shape=(12, 10), k: int = 4) -> dict[str, np.ndarray]:
    frames = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(steps + k)]
    states = np.stack([np.stack(frames[t : t + k], axis=-1) for t in range(steps)])
    return {"state": states, "action": np.arange(steps), "reward": np.zeros(steps, np.float32),
            "next_state": np.stack([np.stack(frames[t + 1 : t + 1 + k], axis=-1) for t in range(steps)]),
            "done": np.zeros(steps, bool)}


@pytest.mark.parametrize("buffer_type", BUFFER_TYPES)
def test_frame_stack_dedup_stores_about_one_frame_per_transition(buffer_type):
    episode = atari_like_episode(np.random.default_rng(0), 600)
    plain, dedup = pair(buffer_type, 200, -1)
    for start in range(0, 600, 50):
        chunk = {name: values[start : start + 50] for name, values in episode.items()}
        plain.add_batch(**chunk)
        dedup.add_batch(**chunk)
    stats = dedup.stats()
    assert stats["frame_bytes"] == 12 * 10
    assert stats["frames_held"] <= 200 + 4  # one new frame per transition, plus the first stack
    assert stats["bytes_held"] * 6 < plain.stats()["bytes_held"]
    assert_same_contents(plain, dedup)


def test_next_state_dedup_stores_each_observation_once():
    rng = np.random.default_rng(1)
    observations = rng.standard_normal((101, 16)).astype(np.float32)
    plain, dedup = pair("uniform", 1000, None)
    for buffer in (plain, dedup):
        buffer.add_batch(observations[:-1], np.arange(100), np.zeros(100, np.float32), observations[1:], np.zeros(100, bool))
    assert dedup.stats()["frames_held"] == 101
    assert_same_contents(plain, dedup)


def test_interleaved_writers_each_keep_their_own_chain():
    rng = np.random.default_rng(2)
    episodes = [atari_like_episode(rng, 40) for _ in range(3)]
    plain, dedup = pair("uniform", 500, -1)
    for t in range(40):  # three environments stepping in lockstep, one batch per step
        rows = {name: np.stack([e[name][t] for e in episodes]) for name in episodes[0]}
        plain.add_batch(**rows)
        dedup.add_batch(**rows, streams=[0, 1, 2])
    assert dedup.stats()["frames_held"] == 3 * (40 + 4)
    assert_same_contents(plain, dedup)


def test_without_streams_interleaved_writers_still_get_exact_rows():
    rng = np.random.default_rng(3)
    episodes = [atari_like_episode(rng, 20) for _ in range(2)]
    plain, dedup = pair("uniform", 100, -1)
    for t in range(20):
        rows = {name: np.stack([e[name][t] for e in episodes]) for name in episodes[0]}
        plain.add_batch(**rows)
        dedup.add_batch(**rows)  # every row in stream 0: less dedup, same contents
    assert_same_contents(plain, dedup)


def test_a_stream_carries_on_across_save_and_load(tmp_path):
    episode = atari_like_episode(np.random.default_rng(4), 30)
    _, dedup = pair("prioritized", 100, -1)
    dedup.add_batch(**{name: values[:20] for name, values in episode.items()}, streams=7)
    dedup.save(tmp_path / "buffer.rrb")
    loaded = ReplayBuffer.load(tmp_path / "buffer.rrb")
    assert loaded.stats()["frames_held"] == dedup.stats()["frames_held"] == 4 + 20
    assert_same_contents(dedup, loaded)
    loaded.add(**{name: values[20] for name, values in episode.items()}, stream=7)
    assert loaded.stats()["frames_held"] == 4 + 21  # linked to the stream's last row from before the save


def test_a_full_fifo_refuses_a_dedup_batch_and_changes_nothing():
    episode = atari_like_episode(np.random.default_rng(5), 12)
    buffer = ReplayBuffer(10, "fifo", next_state="dedup", frame_stack_axis=-1)
    buffer.add_batch(**{name: values[:8] for name, values in episode.items()})
    before = buffer.get_state()
    frames = buffer.stats()["frames_held"]
    with pytest.raises(BufferFullError):
        buffer.add_batch(**{name: values[8:] for name, values in episode.items()})
    assert buffer.stats()["frames_held"] == frames
    after = buffer.get_state()
    for name, column in before["columns"].items():
        np.testing.assert_array_equal(after["columns"][name], column)
    buffer.sample(8)
    assert buffer.stats()["frames_held"] == 0  # frames of consumed rows are freed


@pytest.mark.parametrize(
    ("options", "schema", "message"),
    [
        ({"next_state": "compress"}, None, "next_state must be 'store' or 'dedup'"),
        ({"frame_stack_axis": -1}, None, "frame_stack_axis needs next_state='dedup'"),
        ({"next_state": "dedup"}, {"obs": ((4,), np.uint8), "next_obs": ((4,), np.uint8)}, "needs fields 'state' and 'next_state'"),
        ({"next_state": "dedup"}, {"state": ((4,), np.uint8), "next_state": ((5,), np.uint8)}, "one shape and dtype"),
        ({"next_state": "dedup", "frame_stack_axis": 2}, {"state": ((4, 2), np.uint8), "next_state": ((4, 2), np.uint8)}, "frame_stack_axis 2 is out of range"),
    ],
)
def test_bad_dedup_configurations_are_refused(options, schema, message):
    with pytest.raises(ValueError, match=message):
        ReplayBuffer(8, schema=schema, **options)


def test_bad_streams_are_refused_before_anything_is_written():
    episode = atari_like_episode(np.random.default_rng(6), 4)
    buffer = ReplayBuffer(8, next_state="dedup", frame_stack_axis=-1)
    with pytest.raises(ValueError, match="streams: expected 4 stream ids"):
        buffer.add_batch(**episode, streams=[0, 1])
    with pytest.raises(TypeError, match="streams must be an int or an integer array"):
        buffer.add_batch(**episode, streams=np.zeros(4))
    with pytest.raises(TypeError, match="stream must be an int"):
        buffer.add(**{name: values[0] for name, values in episode.items()}, stream="left")
    with pytest.raises(TypeError, match="stream must be an int"):  # found by the fuzzer: once a SystemError
        buffer.add(**{name: values[0] for name, values in episode.items()}, stream=np.zeros(2))
    assert len(buffer) == 0 and buffer.stats()["frames_held"] == 0


def test_a_schema_inferred_without_next_state_is_refused_and_nothing_is_created():
    buffer = ReplayBuffer(8, next_state="dedup")
    with pytest.raises(ValueError, match="needs fields 'state' and 'next_state'"):
        buffer.add(obs=np.zeros(3), reward=1.0)
    assert buffer.schema == {}
    buffer.add(np.zeros(3), 1, 0.0, np.ones(3), False)
    assert len(buffer) == 1


def test_lockfree_dedup_with_threads_returns_only_whole_transitions():
    buffer = ReplayBuffer(256, "lockfree", next_state="dedup", frame_stack_axis=-1, seed=0)
    episodes = [atari_like_episode(np.random.default_rng(10 + w), 300) for w in range(3)]

    def write(w: int) -> None:
        for start in range(0, 300, 20):
            buffer.add_batch(**{name: values[start : start + 20] for name, values in episodes[w].items()}, streams=w)

    def read() -> None:
        for _ in range(200):
            if len(buffer):
                batch = buffer.sample(16)
                # next_state is its state moved on by one frame: the rows are whole.
                np.testing.assert_array_equal(batch["next_state"][..., :-1], batch["state"][..., 1:])

    helpers.run_threads(*(lambda w=w: write(w) for w in range(3)), read)
    assert buffer.stats()["adds"] == 900


def test_a_shard_hosts_a_dedup_buffer():
    episode = atari_like_episode(np.random.default_rng(7), 50)
    shard = ReplayShardImpl(0, 100, "prioritized", next_state="dedup", frame_stack_axis=-1, seed=0)
    shard.add_batch(**episode, streams=3)
    rows, snapshot = shard.sample(10)
    assert snapshot.size == 50
    np.testing.assert_array_equal(rows["state"], episode["state"][rows["action"]])
    np.testing.assert_array_equal(rows["next_state"], episode["next_state"][rows["action"]])
    assert shard.stats()["frames_held"] == 4 + 50


@pytest.mark.parametrize("through", ["client", "coordinator"])
def test_streams_travel_through_the_ray_layer_to_dedup_shards(ray_local, through):
    import ray

    from ray_replay.distributed import ReplayClient, ReplayCoordinator

    rng = np.random.default_rng(8)
    episodes = [atari_like_episode(rng, 60) for _ in range(2)]
    replay = ReplayCoordinator.remote(capacity=1000, num_shards=1, next_state="dedup", frame_stack_axis=-1, seed=0)
    client = ReplayClient(replay, batch_rows=32) if through == "client" else None
    for t in range(60):  # two environments stepping in turn: their rows interleave
        for env in (0, 1):
            row = {name: values[t] for name, values in episodes[env].items()}
            if client is not None:
                client.add(**row, stream=env)
            else:
                ray.get(replay.add.remote(**row, stream=env))
    if client is not None:
        client.close()
    assert ray.get(replay.size.remote()) == 120  # (also sends the coordinator's staged rows)
    shard = ray.get(replay.shard_handles.remote())[0]
    assert ray.get(shard.stats.remote())["frames_held"] == 2 * (4 + 60)  # each stream one chain
    stored = ray.get(shard.get_state.remote())["columns"]
    order = np.argsort(stored["action"] * 2 + np.tile([0, 1], 60), kind="stable")
    for env in (0, 1):
        np.testing.assert_array_equal(stored["state"][order][env::2], episodes[env]["state"])
        np.testing.assert_array_equal(stored["next_state"][order][env::2], episodes[env]["next_state"])
    ray.get(replay.shutdown.remote())
