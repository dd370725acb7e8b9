"""sample(n, seq_len=...): sequences that follow one stream within one episode, against a numpy model.

No Ray here (the module runs under the ASan build too).
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from scipy import stats

from ray_replay import ReplayBuffer


class Model:
    """Every row ever added (id = insertion number), and the sequences a ring of `capacity` holds."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.streams: list[int] = []
        self.ends: list[bool] = []

    def add(self, streams: np.ndarray, ends: np.ndarray) -> None:
        self.streams += [int(s) for s in streams]
        self.ends += [bool(e) for e in ends]

    @property
    def oldest(self) -> int:
        return max(0, len(self.streams) - self.capacity)

    def sequence(self, start: int, seq_len: int) -> list[int]:
        """start, then the same stream's next rows, through the row that ends the episode."""
        assert self.oldest <= start < len(self.streams)
        ids = [start]
        current = start
        while len(ids) < seq_len and not self.ends[current]:
            later = [i for i in range(current + 1, len(self.streams)) if self.streams[i] == self.streams[current]]
            if not later:
                break
            current = later[0]
            ids.append(current)
        return ids

    def step(self, row: int) -> int:
        """The row's step within its episode (0 at the stream's first row or after an end)."""
        step, previous = 0, None
        for i in range(row):
            if self.streams[i] == self.streams[row]:
                previous = i
        while previous is not None and not self.ends[previous]:
            step += 1
            earlier = [i for i in range(previous) if self.streams[i] == self.streams[row]]
            previous = earlier[-1] if earlier else None
        return step


def filled(buffer_type: str, capacity: int = 60, rows: int = 400, n_streams: int = 4, seed: int = 0, **kwargs: object) -> tuple[ReplayBuffer, Model]:
    """A buffer fed interleaved streams in batches of random sizes (it wraps and evicts), with done and truncated."""
    rng = np.random.default_rng(seed)
    buffer = ReplayBuffer(capacity, buffer_type, seed=seed, **kwargs)  # type: ignore[arg-type]
    model = Model(capacity)
    added = 0
    while added < rows:
        count = int(rng.integers(1, 9))
        ids = np.arange(added, added + count)
        streams = rng.integers(0, n_streams, size=count)
        done = rng.random(count) < 0.08
        truncated = rng.random(count) < 0.04
        buffer.add_batch(
            obs=ids.astype(np.float64),
            aux=np.stack([ids, -ids, ids * 2], axis=1).astype(np.int32),
            done=done,
            truncated=truncated,
            streams=streams,
        )
        model.add(streams, done | truncated)
        added += count
    return buffer, model


def check_sequences(batch: dict[str, np.ndarray], model: Model, seq_len: int) -> None:
    n = len(batch["ids"])
    assert batch["obs"].shape == (n, seq_len)
    if "aux" in batch:
        assert batch["aux"].shape == (n, seq_len, 3)
    assert batch["mask"].shape == (n, seq_len) and batch["mask"].dtype == np.bool_
    for i in range(n):
        expected = model.sequence(int(batch["ids"][i]), seq_len)
        valid = len(expected)
        np.testing.assert_array_equal(batch["mask"][i], np.arange(seq_len) < valid)
        np.testing.assert_array_equal(batch["obs"][i, :valid], expected)
        assert not batch["obs"][i, valid:].any() and not batch["done"][i, valid:].any()
        ends = batch["done"][i, :valid].copy()
        if "aux" in batch:
            np.testing.assert_array_equal(batch["aux"][i, :valid, 1], -np.asarray(expected))
            assert not batch["aux"][i, valid:].any() and not batch["truncated"][i, valid:].any()
            ends |= batch["truncated"][i, :valid]
        # never across an episode end: only the last valid step may end the episode
        assert not ends[:-1].any()


@pytest.mark.parametrize("buffer_type", ["uniform", "prioritized"])
def test_sequences_follow_one_stream_within_one_episode(buffer_type: str) -> None:
    buffer, model = filled(buffer_type)
    for seq_len in (1, 3, 9):
        batch = buffer.sample(200, seq_len=seq_len)
        check_sequences(batch, model, seq_len)
        assert all(model.oldest <= i < len(model.streams) for i in batch["ids"])


def test_wraparound_and_eviction_cuts() -> None:
    # One stream, no ends: a sequence runs to the newest row, across the ring's wrap point, and the
    # oldest live row starts a full sequence although its predecessors were evicted.
    buffer = ReplayBuffer(10, "uniform", seed=1)
    for t in range(27):
        buffer.add(obs=np.float64(t), done=False)
    model = Model(10)
    model.add(np.zeros(27, dtype=np.int64), np.zeros(27, dtype=bool))
    batch = buffer.sample(300, seq_len=6)
    check_sequences(batch, model, 6)
    starts = set(batch["ids"].tolist())
    assert starts == set(range(17, 27))  # every live row, none evicted
    row = int(np.flatnonzero(batch["ids"] == 17)[0])
    np.testing.assert_array_equal(batch["obs"][row], [17, 18, 19, 20, 21, 22])  # slots 7, 8, 9, 0, 1, 2
    row = int(np.flatnonzero(batch["ids"] == 24)[0])
    np.testing.assert_array_equal(batch["mask"][row], [True, True, True, False, False, False])


def test_min_len_and_period() -> None:
    buffer, model = filled("uniform", capacity=80, rows=300, n_streams=3, seed=3)
    batch = buffer.sample(300, seq_len=8, min_len=4)
    check_sequences(batch, model, 8)
    assert (batch["mask"].sum(axis=1) >= 4).all()
    eligible = {i for i in range(model.oldest, len(model.streams)) if len(model.sequence(i, 8)) >= 4}
    assert set(batch["ids"].tolist()) <= eligible
    assert len(set(batch["ids"].tolist())) > len(eligible) // 2  # drawn among all of them, not a few
    batch = buffer.sample(200, seq_len=6, period=3)
    check_sequences(batch, model, 6)
    assert all(model.step(int(i)) % 3 == 0 for i in batch["ids"])
    with pytest.raises(ValueError, match="eligible starts"):
        buffer.sample(4, seq_len=500, min_len=500)


def test_prioritized_starts_follow_priorities() -> None:
    n_rows = 40
    buffer = ReplayBuffer(n_rows, "prioritized", seed=7, alpha=1.0, sampling="proportional")
    priorities = np.arange(1, n_rows + 1, dtype=np.float64)
    buffer.add_batch(obs=np.arange(n_rows, dtype=np.float64), done=np.arange(n_rows) % 5 == 4, priorities=priorities, streams=0)
    draws = 40_000
    counts = np.zeros(n_rows)
    for _ in range(draws // 500):
        batch = buffer.sample(500, seq_len=4)
        counts += np.bincount(batch["ids"], minlength=n_rows)
        np.testing.assert_allclose(batch["probabilities"], priorities[batch["ids"]] / priorities.sum())
    expected = draws * priorities / priorities.sum()
    assert stats.chisquare(counts, expected).pvalue > 0.001


def test_eta_mixing_against_numpy() -> None:
    eta = 0.7
    buffer, model = filled("prioritized", capacity=60, rows=200, seed=5, alpha=1.0, eps=1e-12, sequence_priority_eta=eta)
    batch = buffer.sample(16, seq_len=7)
    ids = np.unique(batch["ids"])  # one update per id
    rows = np.searchsorted(batch["ids"], ids, sorter=np.argsort(batch["ids"]))
    order = np.argsort(batch["ids"])[rows]
    mask = batch["mask"][order]
    rng = np.random.default_rng(0)
    errors = rng.normal(size=mask.shape)
    errors[~mask] = np.nan  # padding is ignored
    valid_abs = np.where(mask, np.abs(np.nan_to_num(errors)), 0.0)
    expected = eta * valid_abs.max(axis=1) + (1 - eta) * valid_abs.sum(axis=1) / mask.sum(axis=1)
    for kwargs in ({"mask": mask}, {}):
        buffer.update_priorities(ids, errors * (1.5 if kwargs else 1.0), **kwargs)
        masses = buffer.get_state()["masses"]
        np.testing.assert_allclose(masses[ids - model.oldest], expected * (1.5 if kwargs else 1.0), rtol=1e-12)
    buffer.update_priorities(ids, np.abs(errors[:, 0]))  # (n,) keeps working
    np.testing.assert_allclose(buffer.get_state()["masses"][ids - model.oldest], np.abs(errors[:, 0]))


def test_bad_input_names_the_field_and_changes_nothing() -> None:
    buffer, _ = filled("prioritized", capacity=30, rows=60)
    before = buffer.get_state()
    for kwargs, field in [
        ({"seq_len": 0}, "seq_len"),
        ({"seq_len": -3}, "seq_len"),
        ({"seq_len": 4, "min_len": 5}, "min_len"),
        ({"seq_len": 4, "min_len": 0}, "min_len"),
        ({"seq_len": 4, "period": 0}, "period"),
        ({"min_len": 2}, "seq_len"),
        ({"seq_len": 4, "out": {}}, "out"),
    ]:
        with pytest.raises(ValueError, match=field):
            buffer.sample(8, **kwargs)  # type: ignore[arg-type]
    batch = buffer.sample(8, seq_len=4)
    state = buffer.get_state()
    for errors, mask, field in [
        (np.ones((9, 4)), None, "priorities"),
        (np.ones((8, 4, 1)), None, "priorities"),
        (np.ones((8, 4)), np.ones((8, 5), dtype=bool), "mask"),
        (np.ones((8, 4)), np.zeros((8, 4), dtype=bool), "mask"),
        (np.full((8, 4), np.inf), batch["mask"], "priorities"),
    ]:
        with pytest.raises(ValueError, match=field):
            buffer.update_priorities(batch["ids"], errors, mask=mask)
    with pytest.raises(TypeError, match="mask"):
        buffer.update_priorities(batch["ids"], np.ones((8, 4)), mask=np.ones((8, 4)))
    after = buffer.get_state()
    np.testing.assert_array_equal(after["masses"], state["masses"])
    assert after["priority_updates"] == before["priority_updates"]
    for buffer_type, kwargs in [("fifo", {}), ("lockfree", {}), ("fifo", {"next_state": "dedup"})]:
        other = ReplayBuffer(10, buffer_type, **kwargs)  # type: ignore[arg-type]
        other.add(state=np.zeros(2, np.float32), next_state=np.zeros(2, np.float32), done=False)
        with pytest.raises(ValueError, match="seq_len"):
            other.sample(1, seq_len=2)
    with pytest.raises(ValueError, match="sequence_priority_eta"):
        ReplayBuffer(10, "prioritized", sequence_priority_eta=1.5)


def test_seq_len_none_keeps_transition_sampling() -> None:
    with_streams, _ = filled("prioritized", seed=9)
    plain = ReplayBuffer(60, "prioritized", seed=9, schema=with_streams.schema)
    state = with_streams.get_state()
    state.pop("streams")
    plain._set_state(state)
    a, b = with_streams.sample(32), plain.sample(32)
    assert set(a) == {"obs", "aux", "done", "truncated", "weights", "ids", "probabilities"}
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_sequences_survive_pickle_and_files(tmp_path: object) -> None:
    buffer, model = filled("prioritized", capacity=50, rows=170, seed=11)
    copy = pickle.loads(pickle.dumps(buffer))
    path = f"{tmp_path}/buffer.rrb"
    buffer.save(path)
    loaded = ReplayBuffer.load(path)
    expected = buffer.sample(64, seq_len=5)
    for other in (copy, loaded):
        batch = other.sample(64, seq_len=5)
        check_sequences(batch, model, 5)
        for key in expected:
            np.testing.assert_array_equal(batch[key], expected[key])


@pytest.mark.parametrize("buffer_type", ["uniform", "prioritized"])
def test_sequences_with_observation_dedup_equal_a_plain_buffer(buffer_type: str) -> None:
    # Frames are stored once; the sequences (state and next_state rebuilt from them) are exactly those
    # of a plain buffer fed the same rows with the same seed.
    rng = np.random.default_rng(4)
    plain = ReplayBuffer(50, buffer_type, seed=2)  # type: ignore[arg-type]
    dedup = ReplayBuffer(50, buffer_type, seed=2, next_state="dedup")  # type: ignore[arg-type]
    observation = {s: rng.standard_normal(3).astype(np.float32) for s in range(3)}
    for _ in range(70):
        s = int(rng.integers(0, 3))
        next_observation = rng.standard_normal(3).astype(np.float32)
        done = bool(rng.random() < 0.1)
        for buffer in (plain, dedup):
            buffer.add(state=observation[s], next_state=next_observation, done=done, stream=s)
        observation[s] = rng.standard_normal(3).astype(np.float32) if done else next_observation
    assert dedup.stats()["frames_held"] < 2 * len(dedup)  # frames shared between state and next_state
    a, b = plain.sample(40, seq_len=6), dedup.sample(40, seq_len=6)
    assert a["mask"].any(axis=0).sum() > 1  # some sequences longer than one step
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    # within a valid sequence, each state is the previous next_state (one stream, one episode)
    m = a["mask"][:, 1:]
    np.testing.assert_array_equal(a["state"][:, 1:][m], a["next_state"][:, :-1][m])
