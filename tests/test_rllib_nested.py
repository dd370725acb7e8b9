"""Dict and Tuple spaces through ray_replay's RLlib buffer: flat native columns, RLlib's structure out.

The buffer tests feed episodes whose every observation, action and extra model output encodes its
(episode, t) and check each sampled transition against an independent computation; the DQN test
trains on a Dict-observation CartPole for a few iterations and checks rows the algorithm stored.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import ray
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from test_rllib import tiny_dqn

from ray_replay.rllib import NativeEpisodeReplayBuffer

GAMMA = 0.9
OBS_SPACE = gym.spaces.Dict({
    "pos": gym.spaces.Box(-np.inf, np.inf, (2,), np.float32),
    "tag": gym.spaces.Tuple((gym.spaces.Discrete(1000), gym.spaces.Box(0, 255, (3,), np.uint8))),
})
ACT_SPACE = gym.spaces.Tuple((gym.spaces.Discrete(3), gym.spaces.Box(-1e6, 1e6, (2,), np.float32)))


def obs(e: int, t: int) -> dict[str, Any]:
    return {"pos": np.array([e, t], np.float32), "tag": (np.int64(e * 100 + t), np.array([e, t, 7], np.uint8))}


def action(e: int, t: int) -> tuple[Any, np.ndarray]:
    return (np.int64((e + t) % 3), np.array([e, -t], np.float32))


def extra(e: int, t: int) -> dict[str, Any]:
    return {"q": np.float32(e * 100 + t), "parts": (np.array([t, t], np.int32),)}


def chunks(num_episodes: int = 8, seed: int = 0) -> tuple[list[SingleAgentEpisode], dict[int, dict[str, Any]]]:
    """Episodes cut into chunks, interleaved; numpy'd (batched structures) and plain (lists) mixed."""
    rng = np.random.default_rng(seed)
    out, episodes = [], {}
    for e in range(num_episodes):
        length = int(rng.integers(2, 20))
        rewards = rng.normal(size=length)
        end = "open" if e == num_episodes - 1 else ("terminated" if e % 2 else "truncated")
        episodes[e] = {"length": length, "rewards": rewards, "end": end}
        start = 0
        for cut in sorted(set(rng.integers(1, length + 1, size=2).tolist()) | {length}):
            last = cut == length
            chunk = SingleAgentEpisode(
                id_=f"ep{e}",
                observations=[obs(e, t) for t in range(start, cut + 1)],
                actions=[action(e, t) for t in range(start, cut)],
                rewards=list(rewards[start:cut]),
                extra_model_outputs={"out": [extra(e, t) for t in range(start, cut)]},
                observation_space=OBS_SPACE,
                action_space=ACT_SPACE,
                terminated=last and end == "terminated",
                truncated=last and end == "truncated",
                len_lookback_buffer=0,
                t_started=start,
            )
            out.append(chunk.to_numpy() if (e + start) % 2 else chunk)
            start = cut
    return out, episodes


def assert_equal_structures(got: Any, expected: Any) -> None:
    if isinstance(expected, dict):
        assert isinstance(got, dict) and list(got) == list(expected)
        for key in expected:
            assert_equal_structures(got[key], expected[key])
    elif isinstance(expected, tuple):
        assert isinstance(got, tuple) and len(got) == len(expected)
        for g, x in zip(got, expected):
            assert_equal_structures(g, x)
    else:
        got = np.asarray(got)
        assert got.dtype == np.asarray(expected).dtype
        np.testing.assert_array_equal(got, expected)


@pytest.fixture
def coordinator(ray_local: None) -> Iterator[Any]:
    from ray_replay.distributed import ReplayCoordinator

    handle = ReplayCoordinator.remote(capacity=10_000, num_shards=2, buffer_type="prioritized", alpha=0.0, seed=1)
    yield handle
    ray.kill(handle)


@pytest.mark.parametrize("backend", ["local", "sharded"])
def test_dict_and_tuple_spaces_round_trip_exactly(backend: str, request: pytest.FixtureRequest) -> None:
    options: dict[str, Any] = {"backend": request.getfixturevalue("coordinator")} if backend == "sharded" else {"capacity": 10_000, "alpha": 0.0}
    buffer = NativeEpisodeReplayBuffer(n_step=(1, 3), seed=1, **options)
    pieces, episodes = chunks()
    buffer.add(pieces)
    assert buffer._writer.layout is not None and "obs.tag[1]" in buffer._writer.layout.columns and "actions[0]" in buffer._writer.layout.columns
    seen = set()
    for _ in range(10):
        for episode in buffer.sample(num_items=64, n_step=(1, 3), gamma=GAMMA, include_extra_model_outputs=True):
            first = episode.get_observations(0)
            e, t = int(first["pos"][0]), int(first["pos"][1])
            seen.add((e, t))
            assert_equal_structures(first, obs(e, t))
            used = int(episode.get_extra_model_outputs("n_step", 0))
            length = episodes[e]["length"]
            assert 1 <= used <= min(3, length - t)
            assert_equal_structures(episode.get_observations(1), obs(e, t + used))
            assert_equal_structures(episode.get_actions(0), action(e, t))
            assert_equal_structures(episode.get_extra_model_outputs("out", 0), extra(e, t))
            reward = sum(GAMMA**i * episodes[e]["rewards"][t + i] for i in range(used))
            assert np.isclose(episode.get_rewards(0), reward, rtol=1e-12, atol=1e-12)
            at_end = t + used == length
            assert episode.is_terminated == (at_end and episodes[e]["end"] == "terminated")
    # Every step is stored once; with n_step=(1, 3) every one can start a transition (the unfinished
    # episode's newest observation is held by the buffer). A sharded backend counts rows: one more per
    # finished episode (its final observation).
    stored = sum(ep["length"] for ep in episodes.values())
    finished = sum(ep["end"] != "open" for ep in episodes.values())
    assert len(buffer) == stored + (finished if backend == "sharded" else 0)
    assert len(seen) == stored  # every stored step drawn (640 draws, < 160 steps)


def test_nested_state_round_trips_through_pickle() -> None:
    buffer = NativeEpisodeReplayBuffer(1000, n_step=1, seed=0)
    buffer.add(chunks()[0])
    clone = NativeEpisodeReplayBuffer(1000, n_step=1)
    clone.set_state(pickle.loads(pickle.dumps(buffer.get_state())))
    a = buffer.sample(num_items=16, n_step=1, gamma=GAMMA)
    b = clone.sample(num_items=16, n_step=1, gamma=GAMMA)
    for x, y in zip(a, b):
        assert_equal_structures(y.get_observations(1), x.get_observations(1))
        assert_equal_structures(y.get_actions(0), x.get_actions(0))


def test_a_later_episode_of_another_structure_is_refused_and_stores_nothing() -> None:
    buffer = NativeEpisodeReplayBuffer(1000, n_step=1, seed=0)
    buffer.add(chunks(num_episodes=2)[0])
    held = len(buffer)
    odd = SingleAgentEpisode(observations=[{"pos": np.zeros(2, np.float32)}] * 3, actions=[action(0, 0)] * 2, rewards=[0.0, 0.0],
                             terminated=True, len_lookback_buffer=0)
    with pytest.raises(ValueError, match="'obs.tag': missing"):
        buffer.add([odd])
    assert len(buffer) == held


# --- DQN on a Dict-observation CartPole ----------------------------------------------------------


DICT_CARTPOLE_SPACE = gym.spaces.Dict({
    "cart": gym.spaces.Box(-np.inf, np.inf, (2,), np.float32),
    "pole": gym.spaces.Tuple((gym.spaces.Box(-np.inf, np.inf, (1,), np.float32),) * 2),
})


class DictCartPole(gym.ObservationWrapper):  # type: ignore[type-arg]
    """CartPole whose observation is {"cart": (x, x_dot), "pole": ((theta,), (theta_dot,))}."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(gym.make("CartPole-v1"))
        self.observation_space = DICT_CARTPOLE_SPACE

    def observation(self, observation: np.ndarray) -> dict[str, Any]:
        o = observation.astype(np.float32)
        return {"cart": o[:2], "pole": (o[2:3], o[3:4])}


def flatten(space: gym.Space, values: Any, n: int) -> np.ndarray:
    rows = values if isinstance(values, list) else [_row(values, i) for i in range(n)]
    return np.stack([gym.spaces.utils.flatten(space, row) for row in rows]).astype(np.float32)


def _row(values: Any, i: int) -> Any:
    if isinstance(values, dict):
        return {k: _row(v, i) for k, v in values.items()}
    if isinstance(values, tuple):
        return tuple(_row(v, i) for v in values)
    return values[i]


class FlattenForModule(ConnectorV2):
    """Feeds the RLModule flat observations without touching the episodes (so the replay buffer stores
    the Dict observations): OBS on the env runner; OBS and NEXT_OBS in the learner."""

    def __init__(self, input_observation_space: Any = None, input_action_space: Any = None, *, learner: bool = False, **kwargs: Any) -> None:
        self._learner = learner
        super().__init__(input_observation_space, input_action_space, **kwargs)

    def recompute_output_observation_space(self, input_observation_space: Any, input_action_space: Any) -> Any:
        return gym.spaces.utils.flatten_space(DICT_CARTPOLE_SPACE)

    def __call__(self, *, rl_module: Any, batch: dict[str, Any], episodes: list[Any], explore: Any = None, shared_data: Any = None,
                 **kwargs: Any) -> Any:
        for episode in self.single_agent_episode_iterator(episodes, agents_that_stepped_only=not self._learner):
            if self._learner:
                n = len(episode)
                for column, window in ((Columns.OBS, slice(0, n)), (Columns.NEXT_OBS, slice(1, n + 1))):
                    flat = flatten(DICT_CARTPOLE_SPACE, episode.get_observations(window), n)
                    self.add_n_batch_items(batch, column, items_to_add=flat, num_items=n, single_agent_episode=episode)
            else:
                flat = flatten(DICT_CARTPOLE_SPACE, [episode.get_observations(-1)], 1)[0]
                self.add_batch_item(batch, Columns.OBS, item_to_add=flat, single_agent_episode=episode)
        return batch


def test_dqn_trains_on_dict_observations(ray_local: None) -> None:
    config = (
        tiny_dqn({"capacity": 2000, "n_step": 1})
        .environment(DictCartPole)
        .env_runners(env_to_module_connector=lambda env, spaces=None, device=None: FlattenForModule())
        .learners(learner_connector=lambda obs_space, act_space: FlattenForModule(learner=True))
    )
    algo = config.build_algo()
    try:
        results = [algo.train() for _ in range(2)]
        buffer = algo.local_replay_buffer
        assert isinstance(buffer, NativeEpisodeReplayBuffer)
        assert buffer._storage.stats()["priority_updates"] > 0  # the learner trained on sampled rows
        assert results[-1]["replay_buffer"]["num_env_steps_stored"] > 0
        assert list(buffer._writer.layout.columns[:3]) == ["obs.cart", "obs.pole[0]", "obs.pole[1]"]
        for episode in buffer.sample(num_items=32, n_step=1, gamma=0.99):
            o, o2 = episode.get_observations(0), episode.get_observations(1)
            assert list(o) == ["cart", "pole"] and isinstance(o["pole"], tuple)
            assert o["cart"].dtype == np.float32 and o["pole"][0].shape == (1,)
            assert DICT_CARTPOLE_SPACE.contains(o)
            # CartPole's dynamics: x_{t+1} = x_t + tau * x_dot_t (tau = 0.02, Euler), so consecutive rows agree
            assert np.isclose(o2["cart"][0], o["cart"][0] + 0.02 * o["cart"][1], atol=1e-5)
    finally:
        algo.stop()




def test_direct_writes_share_the_nested_layout_with_the_learners_reader(coordinator: Any) -> None:
    """With env_runners_write the learner's buffer stores nothing itself: it takes the rows' nested
    layout from the replay's first writer (kept by the coordinator) and rebuilds Dict/Tuple structures;
    a writer of another structure is refused before it stores anything."""
    writer = NativeEpisodeReplayBuffer(backend=coordinator, n_step=(1, 3), seed=1)  # as DirectWriteEnvRunner makes it
    reader = NativeEpisodeReplayBuffer(backend=coordinator, n_step=(1, 3), seed=2, env_runners_write=True)
    pieces, episodes = chunks()
    writer.add(pieces)
    writer.flush()
    assert reader.payload_steps_received == 0
    for episode in reader.sample(num_items=64, n_step=1, gamma=GAMMA, include_extra_model_outputs=True):
        first = episode.get_observations(0)
        e, t = int(first["pos"][0]), int(first["pos"][1])
        assert_equal_structures(first, obs(e, t))
        assert_equal_structures(episode.get_observations(1), obs(e, t + 1))
        assert_equal_structures(episode.get_actions(0), action(e, t))
        assert_equal_structures(episode.get_extra_model_outputs("out", 0), extra(e, t))
    assert reader._writer.layout is not None and reader._writer.layout.columns == writer._writer.layout.columns
    size = ray.get(coordinator.size.remote())
    other = NativeEpisodeReplayBuffer(backend=coordinator, n_step=1, seed=3)
    flat = SingleAgentEpisode(observations=[np.zeros(2, np.float32)] * 3, actions=[0, 1], rewards=[1.0, 1.0], terminated=True,
                              len_lookback_buffer=0)
    with pytest.raises(ValueError, match="differs from .* which another writer of this replay stored first"):
        other.add([flat])
    other.flush()
    assert ray.get(coordinator.size.remote()) == size
