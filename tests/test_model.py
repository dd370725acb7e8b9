"""Model-based property test: random sequences of operations on every buffer type, checked step by
step against a plain-Python reference model of the same semantics (hypothesis state machines)."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ray_replay import BufferFullError, ReplayBuffer

SCHEMA = {"x": ((2,), np.float32), "a": ((), np.int32)}
CAPACITY = 7
ALPHA, EPS = 0.5, 1e-3


def rows(start: int, n: int, codec: str | None = None) -> dict[str, np.ndarray]:
    index = np.arange(start, start + n)
    data = {"x": np.stack([index, -index], axis=1).astype(np.float32), "a": index.astype(np.int32)}
    if codec is not None:  # a compressed field: mostly zeros (compresses), every third row noise (stored raw)
        image = np.zeros((n, 64), np.uint8)
        image[:, 0] = index % 256
        for i in np.flatnonzero(index % 3 == 0):
            image[i] = np.random.default_rng(int(index[i])).integers(0, 256, 64, dtype=np.uint8)
        data["img"] = image
    return data


def schema_for(codec: str | None) -> dict[str, tuple]:
    return {**SCHEMA, "img": ((64,), np.uint8, codec)} if codec is not None else SCHEMA


def mass(priority: float) -> float:
    return 0.0 if priority == 0 else max(priority, EPS) ** ALPHA


class BufferModel(RuleBasedStateMachine):
    """The reference: `held` is the list of (row index, id, priority) oldest first."""

    buffer_type = "uniform"
    codec: str | None = None  # a compressed field "img" too, with this codec

    @initialize()
    def create(self) -> None:
        self.buf = ReplayBuffer(CAPACITY, self.buffer_type, schema=schema_for(self.codec), seed=1, alpha=ALPHA, eps=EPS)
        self.held: list[list] = []
        self.next_row = 0
        self.total_adds = 0
        self.max_priority = 1.0
        self.last_ids: np.ndarray | None = None
        self.stale = 0

    # --- operations -------------------------------------------------------------------------
    def _append(self, n: int, priorities: list[float] | None) -> None:
        full = len(self.held) + n > CAPACITY
        if self.buffer_type == "fifo" and full:
            with pytest.raises(BufferFullError):
                self._call_add(n, priorities)
            return
        self._call_add(n, priorities)
        for i in range(n):
            priority = self.max_priority if priorities is None else priorities[i]
            self.held.append([self.next_row + i, self.total_adds + i, priority])
        if priorities is not None:
            self.max_priority = max([self.max_priority, *priorities])
        del self.held[: max(0, len(self.held) - CAPACITY)]
        self.next_row += n
        self.total_adds += n

    def _call_add(self, n: int, priorities: list[float] | None) -> None:
        data = rows(self.next_row, n, self.codec)
        kwargs = {}
        if priorities is not None:
            kwargs["priorities" if n != 1 or self._batched else "priority"] = priorities if self._batched else priorities[0]
        if self._batched:
            self.buf.add_batch(**data, **kwargs)
        else:
            self.buf.add(**{k: v[0] for k, v in data.items()}, **kwargs)

    @rule(n=st.integers(1, 10), with_priorities=st.booleans(), data=st.data())
    def add_batch(self, n, with_priorities, data):
        priorities = None
        if with_priorities and self.buffer_type == "prioritized":
            priorities = data.draw(st.lists(st.sampled_from([0.0, 1e-5, 0.5, 2.0, 7.0]), min_size=n, max_size=n))
        self._batched = True
        self._append(n, priorities)

    @rule(priority=st.one_of(st.none(), st.sampled_from([0.0, 0.3, 4.0])))
    def add_one(self, priority):
        self._batched = False
        self._append(1, None if priority is None or self.buffer_type != "prioritized" else [priority])

    @precondition(lambda self: len(self.held) > 0)
    @rule(n=st.integers(1, 3 * CAPACITY))  # with replacement: any n, however many rows are held
    def sample(self, n):
        live = {row for row, _, _ in self.held}
        if self.buffer_type == "fifo":
            if n > len(self.held):
                with pytest.raises(ValueError):
                    self.buf.sample(n)
                return
            batch = self.buf.sample(n)
            assert batch["a"].tolist() == [row for row, _, _ in self.held[:n]]
            del self.held[:n]
            return
        if self.buffer_type == "prioritized" and all(mass(p) == 0 for _, _, p in self.held):
            with pytest.raises(ValueError, match="every priority"):
                self.buf.sample(n)
            return
        batch = self.buf.sample(n)
        assert set(batch["a"].tolist()) <= live
        np.testing.assert_array_equal(batch["x"], np.stack([batch["a"], -batch["a"]], 1).astype(np.float32))  # rows are whole
        if self.buffer_type == "prioritized":
            by_row = {row: (identifier, priority) for row, identifier, priority in self.held}
            masses = np.array([mass(p) for _, _, p in self.held])
            for row, identifier, probability in zip(batch["a"].tolist(), batch["ids"].tolist(), batch["probabilities"].tolist()):
                assert by_row[row][0] == identifier
                assert mass(by_row[row][1]) > 0, "a masked row was sampled"
                assert math.isclose(probability, mass(by_row[row][1]) / masses.sum(), rel_tol=1e-9)
            self.last_ids = batch["ids"]

    @precondition(lambda self: self.buffer_type == "prioritized" and self.last_ids is not None)
    @rule(data=st.data())
    def update_priorities(self, data):
        ids = self.last_ids
        priorities = data.draw(st.lists(st.sampled_from([0.0, 1e-6, 0.25, 3.0, 9.0]), min_size=len(ids), max_size=len(ids)))
        self.buf.update_priorities(ids, np.array(priorities))
        by_id = {identifier: entry for entry in self.held for identifier in [entry[1]]}
        for identifier, priority in zip(ids.tolist(), priorities):
            if identifier in by_id:
                by_id[identifier][2] = priority
                self.max_priority = max(self.max_priority, priority)
            else:
                self.stale += 1

    @rule(field=st.sampled_from(["x", "a"]))
    def invalid_add_changes_nothing(self, field):
        bad = rows(self.next_row, 3, self.codec)
        bad[field] = bad[field][:2] if field == "a" else np.zeros((3, 5), np.float32)
        with pytest.raises(ValueError):
            self.buf.add_batch(**bad)

    @precondition(lambda self: self.buffer_type == "prioritized" and self.last_ids is not None)
    @rule(bad=st.sampled_from([np.nan, -1.0, np.inf]))
    def invalid_priorities_change_nothing(self, bad):
        priorities = np.ones(len(self.last_ids))
        priorities[-1] = bad
        with pytest.raises(ValueError):
            self.buf.update_priorities(self.last_ids, priorities)

    @rule()
    def save_and_load(self):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "buffer.rrb"
            self.buf.save(path)
            self.buf = ReplayBuffer.load(path)

    # --- the model and the buffer agree after every step ----------------------------------------
    @invariant()
    def contents_match(self):
        if not hasattr(self, "buf"):
            return
        state = self.buf.get_state()
        assert len(self.buf) == len(self.held)
        assert state["columns"]["a"].tolist() == [row for row, _, _ in self.held]
        if self.codec is not None and self.held:
            expected = np.concatenate([rows(row, 1, self.codec)["img"] for row, _, _ in self.held])
            np.testing.assert_array_equal(state["columns"]["img"], expected)
        if self.buffer_type == "prioritized":
            np.testing.assert_allclose(state["masses"], [mass(p) for _, _, p in self.held], rtol=1e-12)
            assert self.buf.stats()["stale_priority_updates"] == self.stale
            assert state["max_priority"] == self.max_priority


def machine_for(buffer_type: str, codec: str | None = None):
    name = f"{buffer_type.title()}{codec.title().replace(':', '') if codec else ''}Model"
    return type(name, (BufferModel,), {"buffer_type": buffer_type, "codec": codec})


SETTINGS = settings(max_examples=60, stateful_step_count=30, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

TestUniform = machine_for("uniform").TestCase
TestUniform.settings = SETTINGS
TestFifo = machine_for("fifo").TestCase
TestFifo.settings = SETTINGS
TestPrioritized = machine_for("prioritized").TestCase
TestPrioritized.settings = SETTINGS
TestLockFree = machine_for("lockfree").TestCase
TestLockFree.settings = SETTINGS

# The same models with a compressed field (save/load then carries its stored rows as they are).
COMPRESSED_SETTINGS = settings(max_examples=25, stateful_step_count=30, deadline=None, derandomize=True,
                               suppress_health_check=[HealthCheck.too_slow])
TestUniformLz4 = machine_for("uniform", "lz4").TestCase
TestUniformLz4.settings = COMPRESSED_SETTINGS
TestFifoZstd = machine_for("fifo", "zstd:1").TestCase
TestFifoZstd.settings = COMPRESSED_SETTINGS
TestPrioritizedZstd = machine_for("prioritized", "zstd").TestCase
TestPrioritizedZstd.settings = COMPRESSED_SETTINGS
TestLockFreeLz4 = machine_for("lockfree", "lz4").TestCase
TestLockFreeLz4.settings = COMPRESSED_SETTINGS
