"""The RLlib buffer's compact rows (ray_replay.rllib.compact): Discrete actions stored in the smallest
integer dtype and given back as RLlib handed them over (int64), ``t`` stored as int32, both checked
rather than wrapped. No Ray (the sharded backend is covered in tests/test_rllib_lookback.py)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from ray.rllib.env.single_agent_episode import SingleAgentEpisode

from ray_replay.rllib import NativeEpisodeReplayBuffer
from ray_replay.rllib.compact import smallest_dtype

OBS_SPACE = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)


def episode(actions: list[Any], action_space: Any, *, id_: str = "ep", t_started: int = 0) -> SingleAgentEpisode:
    length = len(actions)
    return SingleAgentEpisode(
        id_=id_, observations=[np.array([t_started + t, 0], np.float32) for t in range(length + 1)], actions=actions,
        rewards=[0.5 + t for t in range(length)], observation_space=OBS_SPACE, action_space=action_space, terminated=True,
        len_lookback_buffer=0, t_started=t_started,
    ).to_numpy()


def stored_schema(buffer: NativeEpisodeReplayBuffer) -> dict[str, Any]:
    return {name: dtype for name, (_, dtype) in buffer._storage._buffer.schema.items()}  # type: ignore[attr-defined]


@pytest.mark.parametrize(("low", "high", "expected"), [
    (0, 1, np.uint8), (0, 255, np.uint8), (-1, 1, np.int8), (-128, 127, np.int8), (0, 256, np.uint16), (-129, 0, np.int16),
    (0, 65535, np.uint16), (-20000, 19999, np.int16), (0, 65536, np.uint32), (0, 2**32 - 1, np.uint32), (-1, 2**31 - 1, np.int32),
    (-(2**31) - 1, 0, np.int64), (0, 2**32, np.int64),
])
def test_smallest_dtype_holds_the_range(low: int, high: int, expected: Any) -> None:
    assert smallest_dtype(low, high) == np.dtype(expected)


@pytest.mark.parametrize(("space", "narrow"), [
    (gym.spaces.Discrete(2), np.uint8), (gym.spaces.Discrete(3, start=-1), np.int8), (gym.spaces.Discrete(300), np.uint16),
    (gym.spaces.Discrete(70_000, start=5), np.uint32),
])
def test_discrete_actions_are_stored_narrow_and_given_back_as_int64(space: gym.spaces.Discrete, narrow: Any) -> None:
    low, high = int(space.start), int(space.start + space.n - 1)
    values = [low, high, low, high, (low + high) // 2]
    buffer = NativeEpisodeReplayBuffer(1000, alpha=0.0, seed=0)
    buffer.add(episode([np.int64(v) for v in values], space))
    schema = stored_schema(buffer)
    assert schema["actions@as_int64"] == np.dtype(narrow) and "actions" not in schema
    assert schema["t"] == np.int32 and schema["episode"] == np.int64 and schema["rewards"] == np.float64
    seen = set()
    for sampled in buffer.sample(num_items=200, n_step=1):
        action = sampled.get_actions(0)
        assert np.asarray(action).dtype == np.int64
        assert int(action) == values[sampled.t_started]
        assert sampled.get_rewards(0) == 0.5 + sampled.t_started  # float64, exact
        seen.add(sampled.t_started)
    assert seen == set(range(len(values)))
    for sequence in buffer.sample(batch_size_B=20, batch_length_T=3):
        actions = sequence.get_actions()
        assert np.asarray(actions).dtype == np.int64
        t0 = sequence.t_started
        np.testing.assert_array_equal(actions, values[t0:t0 + len(sequence)])


def test_dict_action_space_narrows_each_discrete_leaf() -> None:
    space = gym.spaces.Dict({"move": gym.spaces.Discrete(5, start=-2), "fire": gym.spaces.Discrete(2),
                             "aim": gym.spaces.Box(-1, 1, (2,), np.float32)})
    actions = [{"move": np.int64(t % 5 - 2), "fire": np.int64(t % 2), "aim": np.array([t, -t], np.float32)} for t in range(6)]
    buffer = NativeEpisodeReplayBuffer(1000, alpha=0.0, seed=0)
    buffer.add(episode(actions, space))
    schema = stored_schema(buffer)
    assert (schema["actions.move@as_int64"], schema["actions.fire@as_int64"], schema["actions.aim"]) == (np.int8, np.uint8, np.float32)
    for sequence in buffer.sample(batch_size_B=30, batch_length_T=4) + buffer.sample(num_items=30, n_step=2):
        for i in range(len(sequence)):
            got, expected = sequence.get_actions(i), actions[sequence.t_started + i]
            assert got["move"].dtype == got["fire"].dtype == np.int64 and got["aim"].dtype == np.float32
            assert (int(got["move"]), int(got["fire"])) == (int(expected["move"]), int(expected["fire"]))
            np.testing.assert_array_equal(got["aim"], expected["aim"])


def test_a_value_the_narrow_dtype_cannot_hold_is_refused_and_nothing_is_stored() -> None:
    buffer = NativeEpisodeReplayBuffer(1000, seed=0)
    good = episode([np.int64(1)] * 3, gym.spaces.Discrete(3), id_="good")
    for bad_value in (300, -1):
        bad = episode([np.int64(0), np.int64(bad_value)], gym.spaces.Discrete(3), id_="bad")
        with pytest.raises(ValueError, match=rf"field 'actions': action {bad_value} is not a value of Discrete\(3, start=0\)"):
            buffer.add([good, bad])
        assert len(buffer) == 0 and buffer.get_added_timesteps() == 0  # the good chunk of the call neither
    space = gym.spaces.Tuple((gym.spaces.Discrete(3), gym.spaces.Discrete(2)))
    with pytest.raises(ValueError, match=r"field 'actions\[1\]': action 256 "):
        NativeEpisodeReplayBuffer(1000).add(episode([(np.int64(0), np.int64(256))], space))
    buffer.add(good)  # and the buffer still works
    assert len(buffer) == 3


def test_step_indices_are_int32_and_an_episode_past_it_is_refused() -> None:
    limit = 2**31 - 1
    buffer = NativeEpisodeReplayBuffer(1000, alpha=0.0, seed=0)
    with pytest.raises(ValueError, match=r"episode 'far': step indices 2147483645 \.\. 2147483650 do not fit the replay's int32 't'"):
        buffer.add(episode([np.int64(0)] * 5, gym.spaces.Discrete(2), id_="far", t_started=limit - 2))
    assert len(buffer) == 0
    buffer.add(episode([np.int64(1)] * 5, gym.spaces.Discrete(2), id_="edge", t_started=limit - 5))  # final observation at 2^31 - 1
    assert len(buffer) == 5
    starts = {sampled.t_started for sampled in buffer.sample(num_items=100, n_step=1)}
    assert starts == set(range(limit - 5, limit))
    sequences = buffer.sample(batch_size_B=20, batch_length_T=5)
    assert all(s.t_started + len(s) <= limit for s in sequences) and any(s.t_started + len(s) == limit and s.is_terminated for s in sequences)


def test_state_round_trip_keeps_the_compact_columns() -> None:
    buffer = NativeEpisodeReplayBuffer(1000, alpha=0.0, seed=0)
    buffer.add(episode([np.int64(v) for v in (0, 1, 1, 0)], gym.spaces.Discrete(2)))
    state = buffer.get_state()
    restored = NativeEpisodeReplayBuffer(1000, alpha=0.0, seed=0)
    restored.set_state(state)
    restored.add(episode([np.int64(1)] * 3, gym.spaces.Discrete(2), id_="more"))  # same stored columns after a restore
    assert len(restored) == 7
    for sampled in restored.sample(num_items=50, n_step=1):
        assert np.asarray(sampled.get_actions(0)).dtype == np.int64
    with pytest.raises(ValueError, match="state of version 2: this buffer restores version 3"):
        NativeEpisodeReplayBuffer(1000).set_state({**state, "version": 2})
