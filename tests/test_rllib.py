"""ray_replay as RLlib's replay buffer (RLlib 2.60, new API stack): DQN/SAC integration and n-step maths.

Needs the ``[rllib]`` extra. The n-step tests check every sampled transition against an independent
computation from the full episodes; the algorithm tests use tiny networks and a few iterations.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import ray
from ray.rllib.algorithms.dqn import DQNConfig
from ray.rllib.env.single_agent_episode import SingleAgentEpisode

from ray_replay.rllib import NativeEpisodeReplayBuffer, SACConfig

BUFFER_TYPE = "ray_replay.rllib.NativeEpisodeReplayBuffer"
OBS_SPACE = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
ACT_SPACE = gym.spaces.Discrete(3)
GAMMA = 0.9


@pytest.fixture
def coordinator(ray_local: None) -> Iterator[Any]:
    """A prioritized 2-shard ReplayCoordinator (uniform: alpha 0), removed afterwards."""
    from ray_replay.distributed import ReplayCoordinator

    handle = ReplayCoordinator.remote(capacity=10_000, num_shards=2, buffer_type="prioritized", alpha=0.0, seed=1)
    yield handle
    ray.kill(handle)


def make_buffer(backend: str, coordinator_request: pytest.FixtureRequest, **options: Any) -> NativeEpisodeReplayBuffer:
    """The local buffer, or one on the sharded backend (the coordinator fixture, requested lazily)."""
    if backend == "sharded":
        return NativeEpisodeReplayBuffer(backend=coordinator_request.getfixturevalue("coordinator"), **options)
    return NativeEpisodeReplayBuffer(10_000, alpha=0.0, **options)


# --- n-step correctness ----------------------------------------------------------------------------


class Source:
    """Episodes whose every observation names its (episode, t), cut into chunks at random points."""

    def __init__(self, seed: int, num_episodes: int = 12) -> None:
        rng = np.random.default_rng(seed)
        self.episodes: list[dict] = []
        for e in range(num_episodes):
            length = int(rng.integers(1, 30))
            self.episodes.append(
                {
                    "id": f"ep{seed}-{e}",
                    "length": length,
                    "rewards": rng.normal(size=length),
                    "actions": rng.integers(0, 3, size=length),
                    # Last episode stays unfinished; the others end either way.
                    "end": "open" if e == num_episodes - 1 else ("terminated" if e % 2 else "truncated"),
                }
            )
        self.rng = rng

    @staticmethod
    def obs(e: int, t: int) -> np.ndarray:
        return np.array([e, t], dtype=np.float32)

    def chunks(self) -> list[SingleAgentEpisode]:
        """All chunks, interleaved across episodes the way EnvRunners deliver them."""
        per_episode = []
        for e, ep in enumerate(self.episodes):
            cuts = sorted(set(self.rng.integers(1, ep["length"] + 1, size=3).tolist()) | {ep["length"]})
            start, pieces = 0, []
            for cut in cuts:
                last = cut == ep["length"]
                pieces.append(
                    SingleAgentEpisode(
                        id_=ep["id"],
                        observations=[self.obs(e, t) for t in range(start, cut + 1)],
                        actions=[np.int64(a) for a in ep["actions"][start:cut]],
                        rewards=list(ep["rewards"][start:cut]),
                        infos=[{"e": e, "t": t} for t in range(start, cut + 1)],
                        extra_model_outputs={"q": [np.float32(e * 100 + t) for t in range(start, cut)]},
                        observation_space=OBS_SPACE,
                        action_space=ACT_SPACE,
                        terminated=last and ep["end"] == "terminated",
                        truncated=last and ep["end"] == "truncated",
                        len_lookback_buffer=0,
                        t_started=start,
                    ).to_numpy()
                )
                start = cut
            per_episode.append(pieces)
        out = []
        while any(per_episode):
            for pieces in per_episode:
                if pieces:
                    out.append(pieces.pop(0))
        return out

    def expected(self, e: int, t: int, n: int) -> tuple[float, np.ndarray, bool, bool, int]:
        """Independent n-step transition from (e, t): reward sum, next obs, terminated, truncated, n used."""
        ep = self.episodes[e]
        used = min(n, ep["length"] - t)
        reward = sum(GAMMA**i * ep["rewards"][t + i] for i in range(used))
        at_end = t + used == ep["length"]
        return reward, self.obs(e, t + used), at_end and ep["end"] == "terminated", at_end and ep["end"] == "truncated", used


@pytest.mark.parametrize("backend", ["local", "sharded"])
@pytest.mark.parametrize("n_step", [1, 3, (2, 4)], ids=["n1", "n3", "range2-4"])
def test_n_step_transitions_match_independent_computation(n_step: int | tuple[int, int], backend: str, request: pytest.FixtureRequest) -> None:
    source = Source(seed=7)
    k = n_step if isinstance(n_step, int) else n_step[1]
    low = n_step if isinstance(n_step, int) else n_step[0]
    buffer = make_buffer(backend, request, seed=1)  # no n_step in the config: the sample's n_step is enough
    buffer.add(source.chunks())

    open_ep = source.episodes[-1]
    # Every step is stored once; a start of the unfinished episode serves only once its n future steps
    # arrived (with n drawn from the range, at least `low` of them).
    stored = {(e, t) for e, ep in enumerate(source.episodes) for t in range(ep["length"]) if ep["end"] != "open"}
    stored |= {(len(source.episodes) - 1, t) for t in range(max(0, open_ep["length"] - low + 1))}
    finished = sum(ep["end"] != "open" for ep in source.episodes)
    # A sharded backend counts rows: one more per finished episode (its final observation).
    assert len(buffer) == sum(ep["length"] for ep in source.episodes) + (finished if backend == "sharded" else 0)

    seen, drawn = set(), set()
    for _ in range(40):
        for episode in buffer.sample(num_items=64, n_step=n_step, gamma=GAMMA, include_infos=True, include_extra_model_outputs=True):
            e, t = (int(v) for v in episode.get_observations(0))
            assert (e, t) in stored
            seen.add((e, t))
            used = int(episode.get_extra_model_outputs("n_step", 0))
            reward, next_obs, terminated, truncated, expected_used = source.expected(e, t, used)
            # The n drawn is only visible where it was not cut short by the episode's end.
            assert used == expected_used
            assert used <= k and (used >= low or t + used == source.episodes[e]["length"])
            if used >= low:
                drawn.add(used)
            assert len(episode) == 1 and episode.t_started == t
            assert np.isclose(episode.get_rewards(0), reward, rtol=1e-12, atol=1e-12)
            np.testing.assert_array_equal(episode.get_observations(1), next_obs)
            assert (episode.is_terminated, episode.is_truncated) == (terminated, truncated)
            assert int(episode.get_actions(0)) == source.episodes[e]["actions"][t]
            assert episode.get_infos(0) == {"e": e, "t": t} and episode.get_infos(1) == {"e": e, "t": t + used}
            assert float(episode.get_extra_model_outputs("q", 0)) == e * 100 + t
            assert 0 < float(episode.get_extra_model_outputs("weights", 0)) <= 1
    assert seen == stored  # every stored step is reachable (2560 uniform draws over < 400 steps)
    if not isinstance(n_step, int):
        assert drawn == set(range(n_step[0], n_step[1] + 1))  # the closed range, both ends


def test_open_episode_steps_serve_once_their_future_arrives() -> None:
    buffer = NativeEpisodeReplayBuffer(100, seed=0)
    source = Source(seed=3, num_episodes=1)  # one unfinished episode
    chunks = source.chunks()
    length = source.episodes[0]["length"]
    buffer.add(chunks)
    assert len(buffer) == length  # every step stored at once
    if length >= 3:
        starts = {int(e.get_observations(0)[1]) for e in buffer.sample(num_items=400, n_step=3, gamma=GAMMA)}
        assert starts == set(range(length - 2))  # the last 2 lack their 3 future steps: drawn again
    final = SingleAgentEpisode(
        id_=source.episodes[0]["id"], observations=[source.obs(0, length), source.obs(0, length + 1)],
        actions=[np.int64(0)], rewards=[1.0], observation_space=OBS_SPACE, action_space=ACT_SPACE,
        terminated=True, len_lookback_buffer=0, t_started=length,
    ).to_numpy()
    buffer.add([final])
    assert len(buffer) == length + 1
    starts = {int(e.get_observations(0)[1]) for e in buffer.sample(num_items=400, n_step=3, gamma=GAMMA)}
    assert starts == set(range(length + 1))  # the episode ended: its last steps are cut short there


def test_sampling_more_items_than_the_buffer_holds_is_with_replacement() -> None:
    """As RLlib's own buffers: sample(num_items=1000) from a buffer of 100 timesteps draws with replacement."""
    buffer = NativeEpisodeReplayBuffer(100, n_step=1, seed=0)
    source = Source(seed=5, num_episodes=20)
    buffer.add(source.chunks())
    held = len(buffer)
    assert 0 < held <= 100
    episodes = buffer.sample(num_items=1000, n_step=1, gamma=GAMMA)
    assert len(episodes) == 1000
    assert len({(int(e.get_observations(0)[0]), int(e.get_observations(0)[1])) for e in episodes}) <= held


def test_priorities_reach_the_native_buffer_and_state_round_trips() -> None:
    buffer = NativeEpisodeReplayBuffer(1000, n_step=3, seed=0)
    buffer.add(Source(seed=5).chunks())
    buffer.sample(num_items=16, n_step=3, gamma=GAMMA)
    buffer.update_priorities(np.zeros(16), module_id="default_policy")  # 0 is floored, not masked
    assert buffer._storage.stats()["priority_updates"] == 16
    with pytest.raises(ValueError, match="2 priorities for a sample of 16"):
        buffer.sample(num_items=16, n_step=3, gamma=GAMMA)
        buffer.update_priorities(np.ones(2))

    clone = NativeEpisodeReplayBuffer(1000, n_step=3)
    clone.set_state(pickle.loads(pickle.dumps(buffer.get_state())))
    a = buffer.sample(num_items=32, n_step=(1, 3), gamma=GAMMA)
    b = clone.sample(num_items=32, n_step=(1, 3), gamma=GAMMA)
    assert [e.get_observations(1).tolist() for e in a] == [e.get_observations(1).tolist() for e in b]
    assert len(clone) == len(buffer)


def test_bad_options_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown replay_buffer_config option\(s\) \['capacty'\]"):
        NativeEpisodeReplayBuffer(capacty=10)
    for capacity in (0, -5):
        with pytest.raises(ValueError, match="capacity must be an int > 0"):
            NativeEpisodeReplayBuffer(capacity)
    with pytest.raises(ValueError, match="n_step"):
        NativeEpisodeReplayBuffer(10, n_step=(3, 1))
    buffer = NativeEpisodeReplayBuffer(100, n_step=1)  # the old key is accepted (the default n of sample())
    buffer.add(Source(seed=2).chunks())
    assert {int(e.get_extra_model_outputs("n_step", 0)) for e in buffer.sample(num_items=64)} == {1}
    assert max(int(e.get_extra_model_outputs("n_step", 0)) for e in buffer.sample(num_items=64, n_step=3)) == 3
    with pytest.raises(ValueError, match="n_step"):
        buffer.sample(num_items=4, n_step=0)
    with pytest.raises(ValueError, match="batch_length_T must be an int >= 0"):
        NativeEpisodeReplayBuffer(10, batch_length_T=-1)


# --- algorithms ------------------------------------------------------------------------------------


def tiny_dqn(buffer_config: dict[str, Any], n_step: int | tuple[int, int] = 1) -> DQNConfig:
    return (
        DQNConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=0)
        .training(
            replay_buffer_config={"type": BUFFER_TYPE, **buffer_config},
            n_step=n_step,
            train_batch_size=32,
            num_steps_sampled_before_learning_starts=64,
            target_network_update_freq=100,
        )
        .rl_module(model_config={"fcnet_hiddens": [16], "head_fcnet_hiddens": [16]})
        .reporting(min_sample_timesteps_per_iteration=100)
        .debugging(seed=0)
    )


@pytest.mark.parametrize("backend", ["local", "sharded"])
def test_dqn_trains_with_native_buffer(ray_local: None, backend: str, request: pytest.FixtureRequest) -> None:
    options: dict[str, Any] = {"capacity": 2000, "alpha": 0.6, "beta": 0.4}
    if backend == "sharded":
        options = {"backend": request.getfixturevalue("coordinator")}
    algo = tiny_dqn(options, n_step=(1, 3)).build_algo()  # n_step from the algorithm's config only
    try:
        results = [algo.train() for _ in range(3)]
        buffer = algo.local_replay_buffer
        assert isinstance(buffer, NativeEpisodeReplayBuffer)
        stats = buffer._storage.stats()
        assert stats["priority_updates"] > 0
        # Every sampled row got its priority back (the last update may still be in flight when sharded);
        # the native draws also count the starts drawn again (an unfinished episode's newest steps).
        sampled = buffer.get_sampled_timesteps()
        assert sampled - 32 <= stats["priority_updates"] <= sampled <= stats["samples"]
        metrics = results[-1]["replay_buffer"]
        assert metrics["num_env_steps_stored"] > 0
        assert metrics["ray_replay"]["priority_updates"] > 0
        assert 1 <= metrics["actual_n_step"] <= 3
    finally:
        algo.stop()


@pytest.mark.parametrize(
    ("option", "message"),
    [({"capacty": 1000}, "unknown replay_buffer_config option"), ({"capacity": 0}, "capacity must be an int > 0")],
)
def test_dqn_bad_buffer_config_fails_at_build(ray_local: None, option: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_dqn(option).build_algo()


def test_sac_config_accepts_native_buffer_and_trains(ray_local: None) -> None:
    config = (
        SACConfig()
        .environment("Pendulum-v1")
        .env_runners(num_env_runners=0)
        .training(
            replay_buffer_config={"type": BUFFER_TYPE, "capacity": 2000},
            train_batch_size=32,
            num_steps_sampled_before_learning_starts=64,
        )
        .rl_module(model_config={"fcnet_hiddens": [16], "head_fcnet_hiddens": [16]})
        .reporting(min_sample_timesteps_per_iteration=100)
        .debugging(seed=0)
    )
    algo = config.build_algo()
    try:
        algo.train()
        assert algo.local_replay_buffer._storage.stats()["priority_updates"] > 0
    finally:
        algo.stop()


@pytest.mark.parametrize("backend", ["local", "sharded"])
def test_sequences_follow_the_episodes(backend: str, request: pytest.FixtureRequest) -> None:
    """sample(batch_length_T=T) on either backend: consecutive steps of one episode, cut at its end."""
    source = Source(seed=11)
    buffer = make_buffer(backend, request, seed=3)
    buffer.add(source.chunks())
    T = 5
    for sequence in buffer.sample(batch_size_B=128, batch_length_T=T):
        e, t0 = (int(v) for v in sequence.get_observations(0))
        ep, n = source.episodes[e], len(sequence)
        assert sequence.t_started == t0 and 1 <= n == min(T, ep["length"] - t0)
        np.testing.assert_array_equal(np.asarray(sequence.get_observations()), np.stack([source.obs(e, t0 + i) for i in range(n + 1)]))
        np.testing.assert_array_equal(np.asarray(sequence.get_rewards()), ep["rewards"][t0:t0 + n])
        np.testing.assert_array_equal(np.asarray(sequence.get_actions()), ep["actions"][t0:t0 + n])
        at_end = t0 + n == ep["length"]
        assert (sequence.is_terminated, sequence.is_truncated) == (at_end and ep["end"] == "terminated", at_end and ep["end"] == "truncated")
        assert sequence.id_ == ep["id"]
        assert sequence.get_infos() == [{"e": e, "t": t0 + i} for i in range(n + 1)]
