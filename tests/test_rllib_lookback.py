"""sample(batch_length_T=T, lookback=L): every sequence against RLlib's own slice of the same episode
(``episode.slice(..., len_lookback_buffer=L)``, what RLlib's EpisodeReplayBuffer returns), the
starts' distribution (uniform, as RLlib's, the first L steps of every episode included), per-step
priorities, the multi-agent buffer, and the sharded backend (also read by a driver that wrote nothing,
as with env runners writing: actions come back as int64 there too).
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import numpy as np
import pytest
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.utils.replay_buffers.episode_replay_buffer import EpisodeReplayBuffer
from scipy.stats import chisquare
from test_rllib import ACT_SPACE, OBS_SPACE, Source, coordinator  # noqa: F401  # (coordinator: the fixture)
from test_rllib_multi_agent import module_of, play

from ray_replay.rllib import NativeEpisodeReplayBuffer, NativeMultiAgentEpisodeReplayBuffer


def assert_is_rllib_slice(ep: SingleAgentEpisode, full: SingleAgentEpisode, T: int, L: int) -> None:
    """``ep`` equals RLlib's slice of ``full`` (an episode stored with no lookback of its own) from its
    t_started, lookback buffers included; n_step and weights as RLlib's buffer shapes them."""
    ts = ep.t_started - full.t_started
    expected = full.slice(slice(ts, min(ts + T, len(full))), len_lookback_buffer=L)
    assert len(ep) == len(expected) >= 1 and ep.t_started == expected.t_started
    lookback = min(L, ts)  # fewer steps at the episode's start, no padding
    for name in ("observations", "actions", "rewards", "infos"):
        got, want = getattr(ep, name), getattr(expected, name)
        assert got.lookback == want.lookback == lookback, name
        if name == "infos":
            assert list(got.data) == list(want.data)
        else:
            assert np.asarray(got.data).dtype == np.asarray(want.data).dtype, name
            np.testing.assert_array_equal(np.asarray(got.data), np.asarray(want.data), err_msg=name)
    for name, want in expected.extra_model_outputs.items():
        got = ep.extra_model_outputs[name]
        assert got.lookback == want.lookback == lookback
        np.testing.assert_array_equal(np.asarray(got.data), np.asarray(want.data))
    assert (ep.is_terminated, ep.is_truncated) == (expected.is_terminated, expected.is_truncated)
    assert ep.id_ == full.id_
    for name in ("n_step", "weights"):  # RLlib: len + L values, lookback L, whatever the others have
        buffer = ep.extra_model_outputs[name]
        assert buffer.lookback == L and len(buffer.data) == len(ep) + L
    assert np.all(np.asarray(ep.extra_model_outputs["n_step"].data) == 1)


@pytest.mark.parametrize("L", [1, 3])
def test_lookback_sequences_are_rllibs_slices(L: int) -> None:
    chunks = Source(seed=21).chunks()
    rllib = EpisodeReplayBuffer(capacity=10_000)
    rllib.add(copy.deepcopy(chunks))
    ours = NativeEpisodeReplayBuffer(10_000, alpha=0.0, seed=4)
    ours.add(chunks)
    stored = {ep.id_: ep for ep in rllib.episodes}
    T, B = 4, 48
    theirs = rllib.sample(batch_size_B=B, batch_length_T=T, n_step=1, sample_episodes=True, lookback=L)
    for ep in theirs:  # RLlib's own answer has the shape checked below
        assert_is_rllib_slice(ep, stored[ep.id_], T, L)
    starts = set()
    for _ in range(150):
        sample = ours.sample(batch_size_B=B, batch_length_T=T, n_step=1, lookback=L)
        total = sum(len(ep) + 1 for ep in sample)  # RLlib's count: lookback not counted
        assert total >= B and total - (len(sample[-1]) + 1) < B
        for ep in sample:
            assert_is_rllib_slice(ep, stored[ep.id_], T, L)
            starts.add((ep.id_, ep.t_started))
    # Every timestep starts a sequence, those of each episode's first L steps (shorter lookback) included.
    assert starts == {(ep.id_, t) for ep in rllib.episodes for t in range(len(ep))}


def test_lookback_starts_are_uniform_as_rllibs() -> None:
    """alpha 0: every start equally likely (chi-square, p = 0.001), the first L steps of each episode
    included, whose sequences are drawn by the episode's first row."""
    source = Source(seed=8, num_episodes=10)
    buffer = NativeEpisodeReplayBuffer(10_000, alpha=0.0, seed=5)
    buffer.add(source.chunks())
    counts: Counter[tuple[str, int]] = Counter()
    lookbacks = Counter()
    for _ in range(120):
        for ep in buffer.sample(batch_size_B=300, batch_length_T=2, lookback=2):
            counts[(ep.id_, ep.t_started)] += 1
            lookbacks[ep.observations.lookback] += 1
    cells = [(ep["id"], t) for ep in source.episodes for t in range(ep["length"])]
    observed = np.array([counts[cell] for cell in cells])
    assert sum(counts.values()) == observed.sum() > 20 * len(cells)
    assert chisquare(observed).pvalue > 0.001
    assert lookbacks[0] > 0 and lookbacks[1] > 0 and lookbacks[2] > lookbacks[0]


def test_lookback_per_step_priorities_go_to_the_first_row_without_the_lookback_steps() -> None:
    episode = SingleAgentEpisode(
        observations=[np.array([0, t], np.float32) for t in range(101)], actions=[np.int64(t % 3) for t in range(100)],
        rewards=[1.0] * 100, observation_space=OBS_SPACE, action_space=ACT_SPACE, terminated=True, len_lookback_buffer=0).to_numpy()
    buffer = NativeEpisodeReplayBuffer(1000, alpha=1.0, seed=0)
    buffer.add(episode)
    sample = buffer.sample(batch_size_B=4, batch_length_T=3, lookback=2, min_batch_length_T=3)
    assert len(sample) == 1 and len(sample[0]) == 3  # one full sequence: 3 steps + 1 reach B = 4
    buffer.update_priorities([1.0, 2.0, 3.0])  # its 3 steps: the 0 .. 2 lookback steps take no part
    eta = 0.9
    stats = buffer._storage.stats()
    assert stats["priority_updates"] == 1
    # 100 step rows at priority 1 (the final observation's row has 0), the drawn first row now 2.9.
    assert stats["total_priority"] == pytest.approx(99 + eta * 3 + (1 - eta) * 2)


def test_multi_agent_buffer_passes_lookback_to_its_modules() -> None:
    episodes = play(300)
    buffer = NativeMultiAgentEpisodeReplayBuffer(10_000, alpha=0.0, seed=3)
    buffer.add(episodes)
    agents = {(e.id_, agent_id): sa for e in episodes for agent_id, sa in e.agent_episodes.items()}
    sample = buffer.sample(num_items=24, batch_length_T=3, n_step=1, lookback=2)
    assert {ep.module_id for ep in sample} == {"p0", "p1"}
    for ep in sample:
        full = agents[(ep.multi_agent_episode_id, ep.agent_id)]
        assert ep.module_id == module_of(ep.agent_id)
        expected = full.slice(slice(ep.t_started, min(ep.t_started + 3, len(full))), len_lookback_buffer=2)
        assert ep.observations.lookback == expected.observations.lookback == min(2, ep.t_started)
        np.testing.assert_array_equal(np.asarray(ep.observations.data), np.asarray(expected.observations.data))
        np.testing.assert_array_equal(np.asarray(ep.actions.data), np.asarray(expected.actions.data))
        assert np.asarray(ep.actions.data).dtype == np.int64


def check_against_source(source: Source, ep: SingleAgentEpisode, T: int, L: int, *, ids: bool) -> None:
    e, t0 = (int(v) for v in ep.get_observations(0))
    spec, n = source.episodes[e], len(ep)
    lookback = min(L, t0)
    assert ep.t_started == t0 and ep.observations.lookback == ep.actions.lookback == lookback
    assert 1 <= n <= min(T, spec["length"] - t0)
    np.testing.assert_array_equal(np.asarray(ep.observations.data), np.stack([source.obs(e, t) for t in range(t0 - lookback, t0 + n + 1)]))
    actions = np.asarray(ep.actions.data)
    assert actions.dtype == np.int64
    np.testing.assert_array_equal(actions, spec["actions"][t0 - lookback:t0 + n])
    np.testing.assert_array_equal(np.asarray(ep.rewards.data), spec["rewards"][t0 - lookback:t0 + n])
    if ids:
        assert ep.id_ == spec["id"] and list(ep.infos.data) == [{"e": e, "t": t} for t in range(t0 - lookback, t0 + n + 1)]
        at_end = t0 + n == spec["length"]
        assert (ep.is_terminated, ep.is_truncated) == (at_end and spec["end"] == "terminated", at_end and spec["end"] == "truncated")


def test_lookback_on_the_sharded_backend_and_a_driver_that_wrote_nothing(coordinator: Any) -> None:  # noqa: F811
    source = Source(seed=13)
    writer = NativeEpisodeReplayBuffer(backend=coordinator, seed=6)
    writer.add(source.chunks())
    writer.flush()
    driver = NativeEpisodeReplayBuffer(backend=coordinator, env_runners_write=True, seed=7)  # sees no episode
    T, L = 4, 2
    early = set()
    for buffer, ids in ((writer, True), (driver, False)):
        for _ in range(20):
            sample: list[Any] = buffer.sample(batch_size_B=64, batch_length_T=T, lookback=L)
            for ep in sample:
                check_against_source(source, ep, T, L, ids=ids)
                early.add((ids, ep.observations.lookback < L))
            steps = sum(len(ep) for ep in sample)
            buffer.update_priorities(np.ones(steps))
        for transition in buffer.sample(num_items=32, n_step=2):
            e, t = (int(v) for v in transition.get_observations(0))
            action = transition.get_actions(0)
            assert np.asarray(action).dtype == np.int64 and int(action) == source.episodes[e]["actions"][t]
    assert early == {(True, True), (True, False), (False, True), (False, False)}
