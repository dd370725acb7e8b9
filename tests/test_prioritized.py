"""Prioritized replay: sampling distribution, importance weights, priority updates, eps, stale ids, threads."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from helpers import SCHEMA, transitions
from scipy import stats

from ray_replay import ReplayBuffer


def prioritized(capacity=50, **kwargs) -> ReplayBuffer:
    kwargs.setdefault("seed", 11)
    return ReplayBuffer(capacity, "prioritized", schema=SCHEMA, **kwargs)


def masses_by_action(buf: ReplayBuffer) -> dict[int, float]:
    state = buf.get_state()
    return dict(zip(state["columns"]["action"].tolist(), state["masses"].tolist()))


def assert_frequencies_match(buf: ReplayBuffer, expected_mass: dict[int, float], draws: int = 100_000) -> None:
    """Chi-square test (p = 0.001) of empirical frequencies against P(i) = m_i / sum m."""
    batch_size = buf.capacity // 2  # a batch may not exceed the capacity
    actions = np.concatenate([buf.sample(batch_size)["action"] for _ in range(draws // batch_size)])
    keys = sorted(expected_mass)
    observed = np.array([np.count_nonzero(actions == k) for k in keys], dtype=float)
    draws = len(actions)
    mass = np.array([expected_mass[k] for k in keys])
    assert observed.sum() == draws, "sampled an action that is not in the buffer"
    zero = mass == 0
    assert observed[zero].sum() == 0, "an item of priority 0 was sampled"
    expected = mass[~zero] / mass.sum() * draws
    assert stats.chisquare(observed[~zero], expected).pvalue > 0.001


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0])
@pytest.mark.parametrize("sampling", ["proportional", "stratified"])
def test_frequencies_follow_p_to_the_alpha_after_updates_and_wrapping(alpha, sampling):
    rng = np.random.default_rng(int(alpha * 10) + len(sampling))
    buf = prioritized(capacity=40, alpha=alpha, sampling=sampling)
    buf.add_batch(**transitions(70), priorities=rng.uniform(0.1, 5.0, 70))  # wraps: 30 evicted
    batch = buf.sample(30)
    new = rng.uniform(0.0, 10.0, 30)
    new[:3] = 0.0  # masked
    buf.update_priorities(batch["ids"], new)
    # The expected masses, computed independently of the buffer from what it was told.
    priorities = dict(enumerate(np.random.default_rng(int(alpha * 10) + len(sampling)).uniform(0.1, 5.0, 70)))
    for action, p in zip(batch["action"].tolist(), new.tolist()):
        priorities[action] = p  # a row sampled twice keeps its last update
    live = range(30, 70)
    expected = {a: (0.0 if priorities[a] == 0 else max(priorities[a], 1e-6) ** alpha) for a in live}
    np.testing.assert_allclose([masses_by_action(buf)[a] for a in live], [expected[a] for a in live], rtol=1e-12)
    assert_frequencies_match(buf, expected)


def test_weights_and_probabilities_equal_the_formula():
    rng = np.random.default_rng(5)
    buf = prioritized(capacity=64, alpha=0.6, beta=0.4)
    p = rng.uniform(0.01, 3.0, 64)
    buf.add_batch(**transitions(64), priorities=p)
    mass = p**0.6
    for beta in (None, 0.0, 0.4, 1.0):
        batch = buf.sample(64, beta=beta)
        b = 0.4 if beta is None else beta
        prob = mass[batch["action"]] / mass.sum()
        n = len(buf)
        weights = (n * prob) ** -b / ((n * (mass.min() / mass.sum())) ** -b)
        np.testing.assert_allclose(batch["probabilities"], prob, rtol=1e-12)
        np.testing.assert_allclose(batch["weights"], weights, rtol=1e-5)
        assert batch["weights"].dtype == np.float32 and batch["ids"].dtype == np.int64
        assert batch["probabilities"].dtype == np.float64
        assert batch["weights"].max() <= 1.0


def test_new_items_get_the_largest_priority_seen_so_far():
    buf = prioritized(alpha=1.0)
    buf.add(**{k: v[0] for k, v in transitions(1).items()})  # nothing seen yet: 1.0
    buf.add(**{k: v[0] for k, v in transitions(1, 1).items()}, priority=7.0)
    buf.add(**{k: v[0] for k, v in transitions(1, 2).items()})
    batch = buf.sample(5)
    buf.update_priorities(batch["ids"], np.full(5, 9.0))
    buf.add_batch(**transitions(2, 3))
    masses = masses_by_action(buf)
    assert masses[0] in (1.0, 9.0) and masses[2] in (7.0, 9.0)
    assert masses[3] == masses[4] == 9.0
    assert buf.stats()["max_priority"] == 9.0


def test_eps_is_a_floor_for_positive_priorities_and_zero_masks():
    buf = prioritized(alpha=1.0, eps=1e-3)
    buf.add_batch(**transitions(3), priorities=[1e-9, 0.0, 0.5])
    masses = masses_by_action(buf)
    assert masses == {0: 1e-3, 1: 0.0, 2: 0.5}
    for _ in range(200):
        assert 1 not in buf.sample(16)["action"]


def test_stale_updates_are_ignored_and_counted():
    buf = prioritized(capacity=10, alpha=1.0)
    buf.add_batch(**transitions(10), priorities=np.ones(10))
    old = buf.sample(5)
    buf.add_batch(**transitions(10, 10), priorities=np.full(10, 2.0))  # every slot overwritten
    before = masses_by_action(buf)
    buf.update_priorities(old["ids"], np.full(5, 100.0))
    assert masses_by_action(buf) == before
    assert buf.stats()["stale_priority_updates"] == 5
    fresh = buf.sample(3)
    buf.update_priorities(fresh["ids"], np.full(3, 4.0))
    assert buf.stats()["stale_priority_updates"] == 5 and buf.stats()["priority_updates"] == 3


def test_a_partly_stale_update_applies_the_live_ids():
    buf = prioritized(capacity=4, alpha=1.0)
    buf.add_batch(**transitions(4), priorities=np.ones(4))
    ids = buf.sample(4, beta=0.0)["ids"]
    buf.add_batch(**transitions(2, 4), priorities=np.ones(2))  # evicts actions 0 and 1
    buf.update_priorities(ids, np.full(4, 3.0))
    masses = masses_by_action(buf)
    assert buf.stats()["stale_priority_updates"] == int(np.count_nonzero(ids < 2))
    for live_action in (2, 3):
        if live_action in ids:
            assert masses[live_action] == 3.0


BAD_UPDATES = [
    ("nan", lambda ids: (ids, np.array([np.nan, 1.0])), ValueError, r"priorities\[0\]"),
    ("negative", lambda ids: (ids, np.array([1.0, -0.5])), ValueError, r"priorities\[1\]"),
    ("infinite", lambda ids: (ids, np.array([np.inf, 1.0])), ValueError, "finite"),
    ("float ids", lambda ids: (ids.astype(np.float64), np.ones(2)), TypeError, "ids must be an integer array"),
    ("2-d ids", lambda ids: (ids.reshape(1, 2), np.ones(2)), ValueError, "one-dimensional"),
    ("lengths differ", lambda ids: (ids, np.ones(3)), ValueError, "expected 2 values"),
    ("never issued", lambda ids: (np.array([ids[0], 10**9]), np.ones(2)), ValueError, "never issued"),
    ("negative id", lambda ids: (np.array([-1, ids[0]]), np.ones(2)), ValueError, "never issued"),
    ("not numbers", lambda ids: (ids, ["a", "b"]), (TypeError, ValueError), "priorities"),
]


@pytest.mark.parametrize("name, make_args, error, message", BAD_UPDATES, ids=[c[0] for c in BAD_UPDATES])
def test_bad_priority_updates_raise_and_change_nothing(name, make_args, error, message):
    buf = prioritized(alpha=1.0)
    buf.add_batch(**transitions(20), priorities=np.arange(1.0, 21.0))
    ids = buf.sample(2)["ids"]
    before = buf.get_state()
    with pytest.raises(error, match=message):
        buf.update_priorities(*make_args(ids))
    after = buf.get_state()
    np.testing.assert_array_equal(after["masses"], before["masses"])
    assert after["priority_updates"] == before["priority_updates"]
    assert after["max_priority"] == before["max_priority"]


@pytest.mark.parametrize("priorities", [[1.0, np.nan, 1.0], [1.0, -1.0, 2.0], [np.inf, 1.0, 1.0]])
def test_bad_priorities_on_add_write_nothing(priorities):
    buf = prioritized()
    buf.add_batch(**transitions(5))
    with pytest.raises(ValueError, match="priorities"):
        buf.add_batch(**transitions(3, 5), priorities=priorities)
    with pytest.raises(ValueError, match="priority"):
        buf.add(**{k: v[0] for k, v in transitions(1, 5).items()}, priority=priorities[1] if priorities[0] == 1.0 else np.inf)
    assert len(buf) == 5 and buf.stats()["adds"] == 5


def test_all_zero_priorities_cannot_be_sampled():
    buf = prioritized()
    buf.add_batch(**transitions(4), priorities=np.zeros(4))
    with pytest.raises(ValueError, match="every priority in the buffer is 0"):
        buf.sample(2)


def test_threads_sampling_and_updating_keep_the_tree_consistent():
    buf = prioritized(capacity=2000, alpha=0.6)
    buf.add_batch(**transitions(2000), priorities=np.ones(2000))
    stop = time.monotonic() + 1.5
    errors: list[BaseException] = []

    def learner(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            while time.monotonic() < stop:
                batch = buf.sample(64)
                buf.update_priorities(batch["ids"], rng.uniform(0.0, 5.0, 64))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    def writer() -> None:
        start = 2000
        try:
            while time.monotonic() < stop:
                buf.add_batch(**transitions(100, start))
                start += 100
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=learner, args=(s,)) for s in range(3)] + [threading.Thread(target=writer)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    state, stats_now = buf.get_state(), buf.stats()
    assert stats_now["priority_updates"] + stats_now["stale_priority_updates"] == 64 * stats_now["sample_calls"]
    np.testing.assert_allclose(stats_now["total_priority"], state["masses"].sum(), rtol=1e-9)
    positive = state["masses"][state["masses"] > 0]
    assert stats_now["min_priority"] == positive.min()
