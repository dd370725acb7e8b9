"""Observation dedup with compressed frames (next_state="dedup" and a codec on state and next_state):
exactly the contents, samples and sequences of a plain buffer and of a dedup-only buffer fed the same
transitions, under every buffer type, both frame layouts, wrap-around, eviction and episode resets;
state, pickle, save/load and checkpoint round trips; stats; and the errors of mismatched codecs."""

from __future__ import annotations

import pickle
from typing import Any

import helpers
import numpy as np
import pytest

from ray_replay import BUFFER_TYPES, BufferFullError, ReplayBuffer
from ray_replay.distributed.checkpoint import Checkpointer

SIDE, K = 64, 4


class Pixels:
    """Writers stepping through episodes of 4 x 64 x 64 uint8 frame stacks: mostly structured frames
    (a gradient with a moving square, which compress), now and then incompressible noise (stored raw)
    or an all-zero frame; resets repeat the first frame, as gymnasium's FrameStack does."""

    def __init__(self, seed: int, streams: int, axis: int) -> None:
        self.rng, self.axis, self.t = np.random.default_rng(seed), axis, 0
        self.gradient = np.add.outer(np.arange(SIDE), 2 * np.arange(SIDE)).astype(np.uint8)
        self.frames = {s: self.reset() for s in range(streams)}

    def frame(self) -> np.ndarray:
        self.t += 1
        kind = self.rng.random()
        if kind < 0.1:
            return self.rng.integers(0, 256, (SIDE, SIDE), dtype=np.uint8)
        if kind < 0.15:
            return np.zeros((SIDE, SIDE), np.uint8)
        frame = self.gradient + np.uint8(self.t % 7)
        y, x = (self.t * 3) % (SIDE - 8), (self.t * 5) % (SIDE - 8)
        frame[y : y + 8, x : x + 8] = 255
        return frame

    def reset(self) -> list[np.ndarray]:
        return [self.frame()] * K

    def stack(self, frames: list[np.ndarray]) -> np.ndarray:
        return np.stack(frames, axis=self.axis)

    def step(self, stream: int, step: int) -> dict[str, Any]:
        frames = self.frames[stream]
        after = frames[1:] + [self.frame()]
        done = bool(self.rng.random() < 0.08)
        self.frames[stream] = self.reset() if done else after
        return {"state": self.stack(frames), "action": np.int64(step), "reward": np.float32(step / 4),
                "next_state": self.stack(after), "done": done}

    def batch(self, rows: int, streams: int, step: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        order = self.rng.integers(0, streams, rows)
        batch = [self.step(int(s), step + i) for i, s in enumerate(order)]
        return {name: np.stack([np.asarray(row[name]) for row in batch]) for name in batch[0]}, order


def trio(buffer_type: str, capacity: int, axis: int, codec: Any = "lz4", seed: int = 5) -> list[ReplayBuffer]:
    """A plain buffer, a dedup-only one and one with compressed frames, alike otherwise."""
    options: dict[str, Any] = {"seed": seed, "on_full": "evict"}
    dedup = {"next_state": "dedup", "frame_stack_axis": axis}
    return [ReplayBuffer(capacity, buffer_type, **options),  # type: ignore[arg-type]
            ReplayBuffer(capacity, buffer_type, **options, **dedup),  # type: ignore[arg-type]
            ReplayBuffer(capacity, buffer_type, **options, **dedup, compress={"state": codec, "next_state": codec})]  # type: ignore[arg-type]


def feed(buffers: list[ReplayBuffer], columns: dict[str, np.ndarray], order: np.ndarray) -> None:
    for buffer in buffers:
        buffer.add_batch(**columns, streams=order)


def assert_same_samples(buffers: list[ReplayBuffer], n: int, **kwargs: Any) -> None:
    expected, *others = (buffer.sample(n, **kwargs) for buffer in buffers)
    for other in others:
        assert set(other) == set(expected)
        for name in expected:
            np.testing.assert_array_equal(other[name], expected[name], err_msg=name)


@pytest.mark.parametrize("axis", [0, -1])  # frames contiguous in the stack (decoded in place), or interleaved
@pytest.mark.parametrize("buffer_type", BUFFER_TYPES)
def test_compressed_frames_hold_and_sample_exactly_what_plain_and_dedup_buffers_do(buffer_type: str, axis: int) -> None:
    writers = Pixels(seed=11, streams=3, axis=axis)
    buffers = trio(buffer_type, 48, axis)
    step = 0
    for call, rows in enumerate([1, 7, 30, 2, 60, 5, 17]):  # 60 > capacity: a batch longer than the buffer
        columns, order = writers.batch(rows, 3, step)
        step += rows
        feed(buffers, columns, order)
        for other in buffers[1:]:
            helpers.assert_same_contents(other, buffers[0])
        if buffer_type == "fifo" and call % 2:
            assert_same_samples(buffers, min(6, len(buffers[0])))  # FIFO reads consume rows (and free frames)
        elif buffer_type != "fifo":
            assert_same_samples(buffers, 12)
        if buffer_type == "prioritized":
            ids = buffers[0].sample(8)["ids"]
            for buffer in buffers[1:]:
                buffer.sample(8)
            priorities = np.random.default_rng(call).random(len(ids)) + 0.1
            for buffer in buffers:
                buffer.update_priorities(ids, priorities)
    dedup, packed = buffers[1].stats(), buffers[2].stats()
    assert packed["frames_held"] == dedup["frames_held"] > 0  # compression changes how frames are kept, not which
    assert packed["compression"]["state"]["rows_stored_raw"] > 0  # the noise frames
    assert packed["bytes_held"] < dedup["bytes_held"]


@pytest.mark.parametrize("codec", ["lz4", "zstd:5"])
def test_compressed_frames_take_far_less_memory_than_dedup_alone(codec: str) -> None:
    writers = Pixels(seed=12, streams=2, axis=0)
    writers.rng = np.random.default_rng(12)
    buffers = trio("uniform", 400, 0, codec)
    step = 0
    for _ in range(10):  # wraps around: 500 rows into 400
        columns, order = writers.batch(50, 2, step)
        step += 50
        feed(buffers, columns, order)
    plain, dedup, packed = (buffer.stats() for buffer in buffers)
    entry = packed["compression"]["state"]
    assert packed["compression"]["next_state"] == entry  # one frame pool for both fields
    assert entry["codec"] == ("lz4" if codec == "lz4" else "zstd:5") and entry["frames"] is True
    assert entry["frames_held"] == packed["frames_held"] == dedup["frames_held"]
    frames_bytes = dedup["frames_held"] * SIDE * SIDE
    noise = entry["rows_stored_raw"]
    assert 0 < noise < entry["frames_held"] / 4
    assert entry["bytes_held"] >= noise * SIDE * SIDE  # noise frames are kept raw
    assert entry["bytes_raw"] == 2 * len(buffers[2]) * K * SIDE * SIDE and entry["ratio"] > 8
    assert packed["bytes_held"] - entry["bytes_held"] == dedup["bytes_held"] - frames_bytes  # the other columns
    assert packed["bytes_held"] * 4 < dedup["bytes_held"] and dedup["bytes_held"] * 4 < plain["bytes_held"]
    for other in buffers[1:]:
        helpers.assert_same_contents(other, buffers[0])


@pytest.mark.parametrize("buffer_type", ["uniform", "prioritized"])
def test_sequences_over_compressed_frames_equal_a_plain_buffer(buffer_type: str) -> None:
    writers = Pixels(seed=13, streams=3, axis=-1)
    buffers = trio(buffer_type, 64, -1)
    step = 0
    for rows in (20, 40, 25):
        columns, order = writers.batch(rows, 3, step)
        step += rows
        feed(buffers, columns, order)
    for _ in range(2):
        assert_same_samples(buffers, 16, seq_len=5)
    batch = buffers[2].sample(16, seq_len=5)
    assert batch["mask"].sum(axis=1).max() > 1  # some sequences longer than one step
    m = batch["mask"][:, 1:] & ~batch["done"][:, :-1]
    np.testing.assert_array_equal(batch["state"][:, 1:][m], batch["next_state"][:, :-1][m])


def test_state_pickle_save_load_and_checkpoints_round_trip_compressed_frames(tmp_path) -> None:
    writers = Pixels(seed=14, streams=2, axis=0)
    plain, dedup, packed = trio("prioritized", 50, 0, "zstd")
    checkpoints = Checkpointer(tmp_path / "shard.rrb", every_adds=20, compact_every=2)
    step = 0
    for rows in (30, 25, 20):
        columns, order = writers.batch(rows, 2, step)
        step += rows
        feed([plain, dedup, packed], columns, order)
        checkpoints.changed(packed, rows)
        checkpoints.wait()
    checkpoints.checkpoint_now(packed)
    checkpoints.wait()
    checkpoints.close()
    packed.save(tmp_path / "buffer.rrb")
    copies = [ReplayBuffer.from_state(packed.get_state()), pickle.loads(pickle.dumps(packed)),
              ReplayBuffer.load(tmp_path / "buffer.rrb"), Checkpointer(tmp_path / "shard.rrb", every_adds=20).restore()]
    for copy in copies:
        assert copy is not None and copy.codecs == {"state": "zstd:3", "next_state": "zstd:3"}
        helpers.assert_same_contents(copy, plain)
        assert copy.stats()["compression"] == packed.stats()["compression"]
        assert copy.stats()["frames_held"] == packed.stats()["frames_held"]
    columns, order = writers.batch(10, 2, step)  # the streams carry on after a restore: frames link up
    for buffer in [plain, dedup, packed, *copies]:
        assert buffer is not None
        buffer.add_batch(**columns, streams=order)
    for copy in [packed, *copies]:
        assert copy is not None
        helpers.assert_same_contents(copy, plain)
        assert copy.stats()["frames_held"] == dedup.stats()["frames_held"]


def test_other_codec_fields_are_stored_as_they_are_and_frames_decompressed_in_a_state(tmp_path) -> None:
    writers = Pixels(seed=15, streams=1, axis=0)
    fields = {"state": ((K, SIDE, SIDE), np.uint8, "lz4"), "next_state": ((K, SIDE, SIDE), np.uint8, "lz4"),
              "action": ((), np.int64), "reward": ((), np.float32), "done": ((), np.bool_), "info": ((256,), np.uint8, "zstd")}
    packed = ReplayBuffer(30, schema=fields, next_state="dedup", frame_stack_axis=0, seed=2)
    plain = ReplayBuffer(30, schema={name: spec[:2] for name, spec in fields.items()}, seed=2)
    columns, _ = writers.batch(40, 1, 0)
    columns["info"] = np.repeat(np.arange(40, dtype=np.uint8)[:, None], 256, axis=1)
    packed.add_batch(**columns)
    plain.add_batch(**columns)
    stats = packed.stats()["compression"]
    assert set(stats) == {"state", "next_state", "info"} and stats["info"]["ratio"] > 10 and "frames" not in stats["info"]
    state = packed._get_state(stored=True)  # what pickle and save carry: frames decompressed, "info" as stored
    assert set(state["stored"]) == {"info"} and state["columns"]["state"].shape == (30, K, SIDE, SIDE)
    packed.save(tmp_path / "b.rrb")
    for copy in (ReplayBuffer.load(tmp_path / "b.rrb"), pickle.loads(pickle.dumps(packed)), ReplayBuffer.from_state(state)):
        assert copy.codecs == {"state": "lz4", "next_state": "lz4", "info": "zstd:3"}
        helpers.assert_same_contents(copy, plain)
        assert_same_samples([ReplayBuffer.from_state(plain.get_state()), copy], 10)  # plain itself never samples


def test_a_full_fifo_refuses_a_batch_and_keeps_its_compressed_frames() -> None:
    writers = Pixels(seed=16, streams=1, axis=-1)
    buffer = ReplayBuffer(10, "fifo", next_state="dedup", frame_stack_axis=-1, compress={"state": "lz4", "next_state": "lz4"})
    columns, _ = writers.batch(12, 1, 0)
    buffer.add_batch(**{name: values[:8] for name, values in columns.items()})
    before, stats = buffer.get_state(), buffer.stats()
    with pytest.raises(BufferFullError):
        buffer.add_batch(**{name: values[8:] for name, values in columns.items()})
    after = buffer.stats()
    for key in ("frames_held", "bytes_held", "compression", "size"):
        assert after[key] == stats[key], key
    helpers.assert_same_contents(buffer, ReplayBuffer.from_state(before))
    buffer.sample(8)
    assert buffer.stats()["frames_held"] == 0 and buffer.stats()["compression"]["state"]["bytes_held"] == 0


@pytest.mark.parametrize(("fields", "compress", "message"), [
    ({"state": "lz4"}, None, r"field 'state': .*both need the same codec: expected 'none' like 'next_state', got 'lz4'"),
    ({"next_state": "zstd"}, None, r"field 'next_state': .*both need the same codec: expected 'none' like 'state', got 'zstd:3'"),
    ({}, {"state": "lz4", "next_state": "zstd"}, r"field 'next_state': .*expected 'lz4' like 'state', got 'zstd:3'"),
    ({"state": "zstd:4"}, {"next_state": "zstd:5"}, r"field 'next_state': .*expected 'zstd:4' like 'state', got 'zstd:5'"),
])
def test_mismatched_observation_codecs_under_dedup_are_refused(fields: dict[str, str], compress: Any, message: str) -> None:
    schema = {name: ((K, 8, 8), np.uint8, fields[name]) if name in fields else ((K, 8, 8), np.uint8) for name in ("state", "next_state")}
    with pytest.raises(ValueError, match=message):
        ReplayBuffer(10, schema=schema, next_state="dedup", frame_stack_axis=0, compress=compress)


@pytest.mark.parametrize("buffer_type", ["lockfree", "prioritized"])
def test_threads_adding_and_sampling_compressed_frames_get_whole_exact_rows(buffer_type: str) -> None:
    buffer = ReplayBuffer(128, buffer_type, next_state="dedup", frame_stack_axis=-1, seed=0,  # type: ignore[arg-type]
                          compress={"state": "lz4", "next_state": "lz4"})
    episodes = []
    for w in range(3):
        writer = Pixels(seed=20 + w, streams=1, axis=-1)
        frames = [writer.frame() for _ in range(150 + K)]
        state = np.stack([np.stack(frames[t : t + K], axis=-1) for t in range(150)])
        next_state = np.stack([np.stack(frames[t + 1 : t + 1 + K], axis=-1) for t in range(150)])
        episodes.append({"state": state, "action": np.arange(150) + 1000 * w, "reward": np.zeros(150, np.float32),
                         "next_state": next_state, "done": np.zeros(150, bool)})

    def write(w: int) -> None:
        for start in range(0, 150, 10):
            buffer.add_batch(**{name: values[start : start + 10] for name, values in episodes[w].items()}, streams=w)

    def read() -> None:
        for _ in range(150):
            if len(buffer):
                batch = buffer.sample(8)
                for row, action in enumerate(batch["action"]):
                    w, t = divmod(int(action), 1000)
                    np.testing.assert_array_equal(batch["state"][row], episodes[w]["state"][t])
                    np.testing.assert_array_equal(batch["next_state"][row], episodes[w]["next_state"][t])

    helpers.run_threads(*(lambda w=w: write(w) for w in range(3)), read)
    assert buffer.stats()["adds"] == 450 and buffer.stats()["frames_held"] <= 128 + 3 * K  # one new frame a row, plus each stream's first stack
