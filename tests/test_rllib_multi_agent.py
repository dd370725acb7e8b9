"""NativeMultiAgentEpisodeReplayBuffer: RLlib's multi-agent prioritized buffer interface, one native
buffer per module. Sampled batches are checked against RLlib's own MultiAgentPrioritizedEpisodeReplayBuffer
fed the same episodes, and every sampled transition against the episodes it came from."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
from ray.rllib.env.multi_agent_episode import MultiAgentEpisode
from ray.rllib.examples.envs.classes.multi_agent import MultiAgentCartPole
from ray.rllib.utils.replay_buffers import MultiAgentPrioritizedEpisodeReplayBuffer
from test_rllib import tiny_dqn

from ray_replay.rllib import NativeMultiAgentEpisodeReplayBuffer

GAMMA = 0.9


def module_of(agent_id: Any, *args: Any, **kwargs: Any) -> str:
    return f"p{agent_id}"


def play(steps: int, seed: int = 0) -> list[MultiAgentEpisode]:
    """Random play on a two-agent CartPole: finished episodes, and the last one unfinished."""
    return play_chunks(steps, seed, every=steps + 1)


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
    with pytest.raises(ValueError, match="synchronized' keeps every agent of an environment step in one row"):
        NativeMultiAgentEpisodeReplayBuffer(100, replay_mode="synchronized", backend={"p0": "replay-p0"})
    with pytest.raises(ValueError, match="unknown replay_buffer_config option"):
        NativeMultiAgentEpisodeReplayBuffer(100, capacty=3)
    with pytest.raises(ValueError, match="need alpha >= 0"):
        NativeMultiAgentEpisodeReplayBuffer(100, alpha=-1.0)


@pytest.mark.parametrize("replay_mode", ["independent", "synchronized"])
def test_multi_agent_dqn_trains(ray_local: None, replay_mode: str) -> None:
    buffer_config = {"type": "ray_replay.rllib.NativeMultiAgentEpisodeReplayBuffer", "capacity": 2000, "n_step": 1, "replay_mode": replay_mode}
    config = (tiny_dqn(buffer_config).environment(MultiAgentCartPole, env_config={"num_agents": 2})
              .multi_agent(policies={"p0", "p1"}, policy_mapping_fn=module_of))
    algo = config.build_algo()
    try:
        results = [algo.train() for _ in range(2)]
        buffer = algo.local_replay_buffer
        assert isinstance(buffer, NativeMultiAgentEpisodeReplayBuffer) and buffer.replay_mode == replay_mode
        learners = results[-1]["learners"]
        assert {"p0", "p1"} <= set(learners)  # both modules were updated from replayed batches
        if replay_mode == "independent":
            for module_id in ("p0", "p1"):  # both modules sent their TD errors back to their own buffer
                stats = buffer.module_buffer(module_id)._storage.stats()
                assert stats["priority_updates"] > 0 and stats["samples"] - 32 <= stats["priority_updates"] <= stats["samples"]
        else:
            assert len(buffer) > 0 and buffer._sync.ignored_priority_updates > 0
    finally:
        algo.stop()


def play_chunks(steps: int, seed: int, every: int = 7) -> list[MultiAgentEpisode]:
    """Random two-agent CartPole play cut into chunks every ``every`` env steps, as env runners deliver them
    (each episode's last chunk done, the last episode unfinished)."""
    env = MultiAgentCartPole({"num_agents": 2})
    rng = np.random.default_rng(seed)
    chunks = []
    episode = MultiAgentEpisode(agent_module_ids={0: "p0", 1: "p1"})
    obs, infos = env.reset(seed=seed)
    episode.add_env_reset(observations=obs, infos=infos)
    for step in range(1, steps + 1):
        actions = {agent: int(rng.integers(2)) for agent in episode.get_agents_to_act()}
        obs, rewards, terminateds, truncateds, infos = env.step(actions)
        episode.add_env_step(obs, actions, rewards, infos, terminateds=terminateds, truncateds=truncateds)
        if episode.is_done:
            chunks.append(episode.to_numpy())
            episode = MultiAgentEpisode(agent_module_ids={0: "p0", 1: "p1"})
            obs, infos = env.reset()
            episode.add_env_reset(observations=obs, infos=infos)
        elif step % every == 0:
            successor = episode.cut()
            chunks.append(episode.to_numpy())
            episode = successor
    chunks.append(episode)
    return chunks


@pytest.fixture
def uniform_coordinator(ray_local: None) -> Any:
    """A uniform 2-shard ReplayCoordinator, removed afterwards."""
    import ray

    from ray_replay.distributed import ReplayCoordinator

    handle = ReplayCoordinator.remote(capacity=10_000, num_shards=2, buffer_type="uniform", seed=5)
    yield handle
    ray.get(handle.shutdown.remote())
    ray.kill(handle)


@pytest.mark.parametrize("backend", ["local", "sharded"])
def test_synchronized_mode_returns_every_agent_of_the_same_env_steps(backend: str, request: pytest.FixtureRequest) -> None:
    chunks = play_chunks(500, seed=3)
    where = "local" if backend == "local" else request.getfixturevalue("uniform_coordinator")
    buffer = NativeMultiAgentEpisodeReplayBuffer(10_000, n_step=2, replay_mode="synchronized", seed=4, backend=where)
    buffer.add(chunks)
    assert sorted(buffer.get_module_ids()) == ["p0", "p1"]
    # The truth, per (episode id, env t), from the chunks: observations, actions, rewards of each agent.
    obs, act, rew, last_obs, done = {}, {}, {}, {}, {}
    for c in chunks:
        n = c.env_steps()
        for j, o in enumerate(c.get_observations(slice(0, n + 1), return_list=True)):
            # A chunk boundary's observation appears in both chunks; an agent that ended there only in the first.
            obs[(c.id_, c.env_t_started + j)] = {**o, **obs.get((c.id_, c.env_t_started + j), {})}
            for agent in o:
                last_obs[(c.id_, agent)] = max(last_obs.get((c.id_, agent), -1), c.env_t_started + j)
        for j, (a, r) in enumerate(zip(c.get_actions(slice(0, n), return_list=True), c.get_rewards(slice(0, n), return_list=True))):
            act[(c.id_, c.env_t_started + j)], rew[(c.id_, c.env_t_started + j)] = a, r
        for agent, sa in c.agent_episodes.items():
            done[(c.id_, agent)] = done.get((c.id_, agent), False) or sa.is_terminated
    open_steps = chunks[-1].env_t  # the unfinished episode's last n steps are held back
    assert len(buffer) == len(act) - min(1, open_steps)
    sampled = buffer.sample(num_items=64, n_step=(1, 2), gamma=GAMMA)
    by_step: dict[tuple[str, int, int], set] = {}
    for s in sampled:
        eid, t, n, agent = s.multi_agent_episode_id, s.t_started, int(s.get_extra_model_outputs("n_step", 0)), s.agent_id
        assert s.module_id == f"p{agent}" and float(s.get_extra_model_outputs("weights", 0)) == 1.0
        np.testing.assert_array_equal(s.get_observations(0), obs[(eid, t)][agent])
        np.testing.assert_array_equal(s.get_observations(1), obs[(eid, t + n)][agent])
        assert int(s.get_actions(0)) == act[(eid, t)][agent]
        expected = sum(GAMMA**i * float(rew[(eid, t + i)].get(agent) or 0.0) for i in range(n))
        assert np.isclose(s.get_rewards(0), expected, rtol=1e-12)
        assert s.is_terminated == (done[(eid, agent)] and last_obs[(eid, agent)] == t + n)
        by_step.setdefault((eid, t, n), set()).add(agent)
    assert len(by_step) > 10
    boundary_ends = [(eid, t) for (eid, t), o in obs.items() if any(t == last_obs[(eid, a)] and (eid, t - 1) in act and a in act[(eid, t - 1)]
                                                                   for a in o) and t in {c.env_t_started for c in chunks if c.id_ == eid}]
    assert boundary_ends  # the data has agents that ended exactly at a chunk boundary (the case carried over)
    # Every full 1-step agent transition stored is drawn (10,000 uniform draws over < 600 env steps), and
    # nothing else: agents that ended at a chunk boundary keep their last transition.
    open_id, open_t = chunks[-1].id_, chunks[-1].env_t
    expected_all = {(eid, t, a) for (eid, t), acts in act.items() for a in acts
                    if a in obs[(eid, t)] and a in obs[(eid, t + 1)] and not (eid == open_id and t + 2 > open_t)}
    drawn = {(s.multi_agent_episode_id, s.t_started, s.agent_id) for s in buffer.sample(num_items=10_000, n_step=1, gamma=GAMMA)}
    assert drawn == expected_all
    for (eid, t, n), agents in by_step.items():  # every agent with a full transition at that step came along
        assert agents == {a for a in (0, 1) if a in obs[(eid, t)] and a in act[(eid, t)] and a in obs[(eid, t + n)]}
    assert sum(1 for s in sampled if s.module_id == "p0") <= 64 and sum(1 for s in sampled if s.module_id == "p1") <= 64
    buffer.update_priorities(np.ones(5), "p0")  # uniform: counted, not applied
    assert buffer.get_metrics()["ray_replay"]["ignored_priority_updates"].peek() == 5
    with pytest.raises(ValueError, match="stores rows for replay_mode='synchronized'"):
        buffer.sample(num_items=4, replay_mode="independent")
    if backend == "sharded":  # the rows live on the shards: checkpointed there, not in the RLlib buffer's state
        with pytest.raises(NotImplementedError, match="through its ReplayCoordinator"):
            buffer.get_state()
        return
    clone = NativeMultiAgentEpisodeReplayBuffer(10_000, n_step=2, replay_mode="synchronized")
    clone.set_state(pickle.loads(pickle.dumps(buffer.get_state())))
    a = buffer.sample(num_items=8, n_step=2, gamma=GAMMA)
    b = clone.sample(num_items=8, n_step=2, gamma=GAMMA)
    assert [(e.agent_id, e.t_started, e.multi_agent_episode_id) for e in a] == [(e.agent_id, e.t_started, e.multi_agent_episode_id) for e in b]


def test_multi_agent_sac_trains_with_one_buffer_per_module(ray_local: None) -> None:
    """RLlib's SAC on a two-agent Pendulum (ray_replay.rllib.SACConfig, whose validation accepts the
    ray_replay buffer types): each module's TD errors come back to its own prioritized buffer."""
    from ray.rllib.examples.envs.classes.multi_agent import MultiAgentPendulum

    from ray_replay.rllib import SACConfig

    config = (
        SACConfig()
        .environment(MultiAgentPendulum, env_config={"num_agents": 2})
        .multi_agent(policies={"p0", "p1"}, policy_mapping_fn=module_of)
        .env_runners(num_env_runners=0)
        .training(replay_buffer_config={"type": "ray_replay.rllib.NativeMultiAgentEpisodeReplayBuffer", "capacity": 2000},
                  train_batch_size=32, num_steps_sampled_before_learning_starts=64)
        .rl_module(model_config={"fcnet_hiddens": [16], "head_fcnet_hiddens": [16]})
        .reporting(min_sample_timesteps_per_iteration=100)
        .debugging(seed=0)
    )
    algo = config.build_algo()
    try:
        results = algo.train()
        assert {"p0", "p1"} <= set(results["learners"])
        buffer = algo.local_replay_buffer
        assert isinstance(buffer, NativeMultiAgentEpisodeReplayBuffer)
        for module_id in ("p0", "p1"):
            stats = buffer.module_buffer(module_id)._storage.stats()
            assert stats["priority_updates"] > 0 and stats["size"] > 0, module_id
    finally:
        algo.stop()
