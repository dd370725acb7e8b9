"""NativeMultiAgentEpisodeReplayBuffer: RLlib's multi-agent prioritized buffer interface, one native
buffer per module. Sampled batches are checked against RLlib's own MultiAgentPrioritizedEpisodeReplayBuffer
fed the same episodes, and every sampled transition against the episodes it came from."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
from ray.rllib.algorithms.dqn import DQNConfig
from ray.rllib.env.multi_agent_episode import MultiAgentEpisode
from ray.rllib.examples.envs.classes.multi_agent import MultiAgentCartPole
from ray.rllib.utils.replay_buffers import MultiAgentPrioritizedEpisodeReplayBuffer

from ray_replay.rllib import NativeMultiAgentEpisodeReplayBuffer

GAMMA = 0.9


def module_of(agent_id: Any, *args: Any, **kwargs: Any) -> str:
    return f"p{agent_id}"


def play(steps: int, seed: int = 0) -> list[MultiAgentEpisode]:
    """Random play on a two-agent CartPole: finished episodes, and the last one unfinished."""
    env = MultiAgentCartPole({"num_agents": 2})
    rng = np.random.default_rng(seed)
    episodes = []
    episode = MultiAgentEpisode(agent_module_ids={0: "p0", 1: "p1"})
    obs, infos = env.reset(seed=seed)
    episode.add_env_reset(observations=obs, infos=infos)
    for _ in range(steps):
        if episode.is_done:
            episodes.append(episode.to_numpy())
            episode = MultiAgentEpisode(agent_module_ids={0: "p0", 1: "p1"})
            obs, infos = env.reset()
            episode.add_env_reset(observations=obs, infos=infos)
        actions = {agent: int(rng.integers(2)) for agent in episode.get_agents_to_act()}
        obs, rewards, terminateds, truncateds, infos = env.step(actions)
        episode.add_env_step(obs, actions, rewards, infos, terminateds=terminateds, truncateds=truncateds)
    episodes.append(episode)
    return episodes


def index(episodes: list[MultiAgentEpisode]) -> dict[tuple[str, Any, int], tuple[np.ndarray, int, float, np.ndarray]]:
    """(multi-agent episode id, agent, agent t) -> (o_t, a_t, r_t, o_t+1), from the episodes themselves."""
    out = {}
    for episode in episodes:
        for agent_id, sa in episode.agent_episodes.items():
            for t in range(len(sa)):
                out[(episode.id_, agent_id, t)] = (np.asarray(sa.get_observations(t)), int(sa.get_actions(t)), float(sa.get_rewards(t)),
                                                   np.asarray(sa.get_observations(t + 1)))
    return out


def test_sampled_batches_have_rllibs_structure_and_exact_transitions() -> None:
    episodes = play(600)
    ours = NativeMultiAgentEpisodeReplayBuffer(10_000, alpha=0.6, seed=0)
    theirs = MultiAgentPrioritizedEpisodeReplayBuffer(10_000, alpha=0.6)
    ours.add(episodes)
    theirs.add(episodes)
    assert sorted(ours.get_module_ids()) == ["p0", "p1"]
    truth = index(episodes)
    for module_id in ("p0", "p1"):  # all agent steps are stored (n_step=1: nothing is held back)
        assert ours.get_num_timesteps(module_id) == sum(len(e.agent_episodes[int(module_id[1])]) for e in episodes)
    mine = ours.sample(num_items=32, n_step=1, gamma=GAMMA, beta=0.4)
    ref = theirs.sample(num_items=32, n_step=1, gamma=GAMMA, beta=0.4)
    assert len(mine) == len(ref) == 64  # B per module, independent mode
    for batch in (mine, ref):
        assert [e.module_id for e in batch].count("p0") == 32 and [e.module_id for e in batch].count("p1") == 32
    for a, b in zip(sorted(mine, key=lambda e: e.module_id), sorted(ref, key=lambda e: e.module_id)):
        assert type(a) is type(b) and len(a) == len(b) == 1
        assert (a.module_id, type(a.agent_id)) == (b.module_id, type(b.agent_id)) and a.agent_id == int(a.module_id[1])
        assert isinstance(a.multi_agent_episode_id, str)
        assert set(a.extra_model_outputs) == set(b.extra_model_outputs) == {"weights", "n_step"}
        assert np.asarray(a.get_observations(0)).shape == np.asarray(b.get_observations(0)).shape
        assert np.asarray(a.get_observations(0)).dtype == np.asarray(b.get_observations(0)).dtype
        assert np.asarray(a.get_actions(0)).dtype == np.asarray(b.get_actions(0)).dtype
        assert 0 < float(a.get_extra_model_outputs("weights", 0)) <= 1
    for e in mine:  # each transition is the one at (episode, agent, t) in the episodes added
        o, act, r, o2 = truth[(e.multi_agent_episode_id, e.agent_id, e.t_started)]
        np.testing.assert_array_equal(e.get_observations(0), o)
        np.testing.assert_array_equal(e.get_observations(1), o2)
        assert int(e.get_actions(0)) == act and float(e.get_rewards(0)) == r


def test_priorities_are_per_module_and_n_step_returns_are_exact() -> None:
    episodes = play(400, seed=1)
    buffer = NativeMultiAgentEpisodeReplayBuffer(10_000, alpha=1.0, n_step=3, seed=2)
    buffer.add(episodes)
    sampled = buffer.sample(num_items=16, n_step=3, gamma=GAMMA, modules_to_sample=["p1"])
    assert {e.module_id for e in sampled} == {"p1"}
    by_id = {e.id_: e for e in episodes}
    for e in sampled:
        sa = by_id[e.multi_agent_episode_id].agent_episodes[e.agent_id]
        n = int(e.get_extra_model_outputs("n_step", 0))
        t = e.t_started
        assert n == min(3, len(sa) - t)
        expected = sum(GAMMA**i * float(sa.get_rewards(t + i)) for i in range(n))
        assert np.isclose(e.get_rewards(0), expected, rtol=1e-12)
        np.testing.assert_array_equal(e.get_observations(1), sa.get_observations(t + n))
    with pytest.raises(ValueError, match="got 3 priorities for a sample of 16"):
        buffer.update_priorities(np.ones(3), "p1")
    buffer.sample(num_items=16, n_step=3, gamma=GAMMA, modules_to_sample=["p1"])
    buffer.update_priorities(np.full(16, 5.0), "p1")
    assert buffer.module_buffer("p1")._storage.stats()["priority_updates"] == 16
    assert buffer.module_buffer("p0")._storage.stats()["priority_updates"] == 0  # p0's priorities untouched
    with pytest.raises(KeyError, match="p9"):
        buffer.update_priorities(np.ones(1), "p9")
    clone = NativeMultiAgentEpisodeReplayBuffer(10_000, alpha=1.0, n_step=3)
    clone.set_state(pickle.loads(pickle.dumps(buffer.get_state())))
    a = buffer.sample(num_items=8, n_step=3, gamma=GAMMA)
    b = clone.sample(num_items=8, n_step=3, gamma=GAMMA)
    assert [(e.module_id, e.t_started, e.multi_agent_episode_id) for e in a] == [(e.module_id, e.t_started, e.multi_agent_episode_id) for e in b]


def test_bad_options_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="replay_mode must be one of"):
        NativeMultiAgentEpisodeReplayBuffer(100, replay_mode="lockstep")
    with pytest.raises(ValueError, match="unknown replay_buffer_config option"):
        NativeMultiAgentEpisodeReplayBuffer(100, capacty=3)
    with pytest.raises(ValueError, match="need alpha >= 0"):
        NativeMultiAgentEpisodeReplayBuffer(100, alpha=-1.0)


def test_multi_agent_dqn_trains(ray_local: None) -> None:
    config = (
        DQNConfig()
        .environment(MultiAgentCartPole, env_config={"num_agents": 2})
        .multi_agent(policies={"p0", "p1"}, policy_mapping_fn=module_of)
        .env_runners(num_env_runners=0)
        .training(
            replay_buffer_config={"type": "ray_replay.rllib.NativeMultiAgentEpisodeReplayBuffer", "capacity": 2000, "n_step": 1},
            train_batch_size=32,
            num_steps_sampled_before_learning_starts=64,
            target_network_update_freq=100,
        )
        .rl_module(model_config={"fcnet_hiddens": [16], "head_fcnet_hiddens": [16]})
        .reporting(min_sample_timesteps_per_iteration=100)
        .debugging(seed=0)
    )
    algo = config.build_algo()
    try:
        for _ in range(2):
            algo.train()
        buffer = algo.local_replay_buffer
        assert isinstance(buffer, NativeMultiAgentEpisodeReplayBuffer)
        for module_id in ("p0", "p1"):  # both modules trained on their own rows and sent their TD errors back
            stats = buffer.module_buffer(module_id)._storage.stats()
            assert stats["priority_updates"] > 0 and stats["samples"] - 32 <= stats["priority_updates"] <= stats["samples"]
    finally:
        algo.stop()
