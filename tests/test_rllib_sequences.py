"""NativeEpisodeReplayBuffer at sample time: n-step for any n without a config key, memory per timestep
independent of n, and sample(batch_length_T=T) against RLlib's own EpisodeReplayBuffer. No Ray.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.utils.replay_buffers.episode_replay_buffer import EpisodeReplayBuffer

from ray_replay.rllib import NativeEpisodeReplayBuffer

OBS_SPACE = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
ACT_SPACE = gym.spaces.Discrete(3)
GAMMA = 0.95


def episodes(seed: int, count: int = 10, open_last: bool = True) -> list[SingleAgentEpisode]:
    """Whole episodes whose observation t is (e, t); ends alternate terminated / truncated, the last open."""
    rng = np.random.default_rng(seed)
    out = []
    for e in range(count):
        length = int(rng.integers(2, 25))
        end = "open" if open_last and e == count - 1 else ("terminated" if e % 2 else "truncated")
        out.append(SingleAgentEpisode(
            id_=f"ep{e}", observations=[np.array([e, t], np.float32) for t in range(length + 1)],
            actions=[np.int64(a) for a in rng.integers(0, 3, length)], rewards=list(rng.normal(size=length)),
            extra_model_outputs={"q": [np.float32(e * 100 + t) for t in range(length)]},
            observation_space=OBS_SPACE, action_space=ACT_SPACE, terminated=end == "terminated", truncated=end == "truncated",
            len_lookback_buffer=0,
        ).to_numpy())
    return out


@pytest.mark.parametrize("n_step", [4, (2, 5)], ids=["int", "range"])
def test_n_step_returns_without_config_key_match_numpy(n_step: int | tuple[int, int]) -> None:
    source = episodes(seed=3)
    buffer = NativeEpisodeReplayBuffer(10_000, alpha=0.0, seed=0)  # no n_step key
    buffer.add(source)
    by_id = {int(ep.get_observations(0)[0]): ep for ep in source}
    low = n_step if isinstance(n_step, int) else n_step[0]
    drawn = set()
    for sampled in buffer.sample(num_items=2000, n_step=n_step, gamma=GAMMA):
        e, t = (int(v) for v in sampled.get_observations(0))
        ep = by_id[e]
        rewards, length = np.asarray(ep.get_rewards()), len(ep)
        used = int(sampled.get_extra_model_outputs("n_step", 0))
        if not ep.is_done:
            assert t + used <= length and used >= low  # an unfinished episode's steps are never cut short
        else:
            assert used >= low or t + used == length
        drawn.add(used)
        expected = float(np.sum(rewards[t:t + used] * GAMMA ** np.arange(used)))
        assert np.isclose(sampled.get_rewards(0), expected, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(sampled.get_observations(1), ep.get_observations(t + used))
        at_end = t + used == length
        assert (sampled.is_terminated, sampled.is_truncated) == (at_end and ep.is_terminated, at_end and ep.is_truncated)
        assert int(sampled.get_actions(0)) == int(ep.get_actions(t))
        assert sampled.t_started == t
    expected_n = {n_step} if isinstance(n_step, int) else set(range(n_step[0], n_step[1] + 1))
    assert expected_n <= drawn


def test_memory_per_timestep_does_not_depend_on_n() -> None:
    obs_dim = 64
    space = gym.spaces.Box(-1, 1, (obs_dim,), np.float32)
    rng = np.random.default_rng(0)
    chunks = [SingleAgentEpisode(
        observations=list(rng.standard_normal((101, obs_dim)).astype(np.float32)), actions=list(rng.integers(0, 2, 100)),
        rewards=list(np.ones(100)), observation_space=space, action_space=gym.spaces.Discrete(2), terminated=True,
        len_lookback_buffer=0).to_numpy() for _ in range(20)]
    held = {}
    for n_step in (1, (2, 5)):
        buffer = NativeEpisodeReplayBuffer(100_000, n_step=n_step, seed=0)
        buffer.add(chunks)
        buffer.sample(num_items=64, n_step=(2, 5))
        buffer.sample(num_items=64, n_step=5)
        assert len(buffer) == 2000
        held[str(n_step)] = buffer._storage.stats()["bytes_held"] / len(buffer)
    assert held["1"] == held["(2, 5)"]
    # One observation, action (Discrete(2): uint8), reward (float64) and 13 bytes (end int8, episode int64,
    # t int32) per timestep, plus one final-observation row per episode of 100 steps: the n_step=(2, 5)
    # layout this replaces held 6 observations and 5 rewards per timestep (1613 bytes per timestep here, measured).
    row = 4 * obs_dim + 1 + 8 + 13
    assert held["1"] == pytest.approx(row * 101 / 100)
    assert held["1"] <= 1613 / 4


def test_sequences_match_rllib_episode_replay_buffer() -> None:
    source = episodes(seed=5)
    rllib = EpisodeReplayBuffer(capacity=10_000)
    rllib.add([ep for ep in episodes(seed=5)])
    ours = NativeEpisodeReplayBuffer(10_000, alpha=0.0, seed=1)
    ours.add(source)
    stored = {ep.id_: ep for ep in rllib.episodes}
    T, B = 6, 64
    theirs = rllib.sample(batch_size_B=B, batch_length_T=T, n_step=1, sample_episodes=True, lookback=0)
    starts = set()
    for sample in (theirs, ours.sample(batch_size_B=B, batch_length_T=T, n_step=1)):
        total = sum(len(ep) + 1 for ep in sample)  # RLlib's count: steps plus one per sequence
        assert total >= B and total - (len(sample[-1]) + 1) < B
    for _ in range(300):
        for ep in ours.sample(batch_size_B=B, batch_length_T=T, n_step=1):
            full = stored[ep.id_]
            ts = ep.t_started
            expected = full.slice(slice(ts, min(ts + T, len(full))), len_lookback_buffer=0)
            starts.add((ep.id_, ts))
            assert len(ep) == len(expected) >= 1
            np.testing.assert_array_equal(ep.get_observations(), expected.get_observations())
            np.testing.assert_array_equal(ep.get_actions(), expected.get_actions())
            np.testing.assert_allclose(ep.get_rewards(), expected.get_rewards(), rtol=0, atol=0)
            np.testing.assert_array_equal(ep.get_extra_model_outputs("q"), expected.get_extra_model_outputs("q"))
            assert (ep.is_terminated, ep.is_truncated) == (expected.is_terminated, expected.is_truncated)
            assert ep.t_started == expected.t_started
            assert np.array_equal(ep.get_extra_model_outputs("n_step"), np.ones(len(ep)))
            weights = ep.get_extra_model_outputs("weights")
            assert len(weights) == len(ep) and np.all(weights == weights[0]) and 0 < weights[0] <= 1
    # Every timestep starts a sequence (uniform, as RLlib's): ~2800 draws over < 250 steps.
    assert starts == {(ep.id_, t) for ep in rllib.episodes for t in range(len(ep))}


def test_sequence_priorities_per_sequence_or_per_step() -> None:
    buffer = NativeEpisodeReplayBuffer(10_000, seed=2)
    buffer.add(episodes(seed=6, open_last=False))
    sample = buffer.sample(batch_size_B=32, batch_length_T=4)
    steps = sum(len(ep) for ep in sample)
    buffer.update_priorities(np.full(steps, 2.0))  # one per step, mixed per sequence
    assert buffer._storage.stats()["priority_updates"] == len(sample)
    sample = buffer.sample(batch_size_B=32, batch_length_T=4)
    with pytest.raises(ValueError, match="one per sequence"):
        buffer.update_priorities(np.ones(len(sample) + 1000))
    buffer.update_priorities(np.ones(len(sample)))
    with pytest.raises(ValueError, match="n_step must be 1"):
        buffer.sample(batch_size_B=8, batch_length_T=4, n_step=3)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="lookback must be an int >= 0"):
            buffer.sample(batch_size_B=8, batch_length_T=4, lookback=bad)
