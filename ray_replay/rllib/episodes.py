"""Builds the 1-step ``SingleAgentEpisode``s that RLlib's DQN/SAC learner connectors consume.

RLlib's constructor costs ~26 us an episode (uuid, space flattening, validation), which alone would
be most of the buffer's time per training step. The fast path fills the same slots directly, from
constants computed once per sample call. It is checked against the public constructor on first use
and abandoned (with a warning) if the two ever differ, e.g. after an RLlib upgrade.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from typing import Any

import numpy as np
from ray.rllib.env.single_agent_episode import _REWARDS_BOX_SPACE, SingleAgentEpisode
from ray.rllib.env.utils.infinite_lookback_buffer import InfiniteLookbackBuffer
from ray.rllib.utils.spaces.space_utils import get_base_struct_from_space

from ray_replay.nested import map_structure, unbatch

__all__ = ["EpisodeFactory"]

logger = logging.getLogger(__name__)

_NEW_EPISODE = SingleAgentEpisode.__new__
_NEW_BUFFER = InfiniteLookbackBuffer.__new__


class EpisodeFactory:
    """Makes 1-step episodes ``(o_t, a_t, R, o_t+n)`` with ``weights``, ``n_step`` and extra outputs."""

    def __init__(self) -> None:
        self._prefix = uuid.uuid4().hex[:12]
        self._counter = itertools.count()
        self._fast: bool | None = None  # None: not yet checked against the public constructor
        self._structs: dict[int, Any] = {}

    def build(
        self,
        observation_space: Any,
        action_space: Any,
        *,
        obs: np.ndarray,
        next_obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        t: np.ndarray,
        extras: dict[str, Any],
        infos: list[tuple[dict[str, Any], dict[str, Any]]] | None,
        tags: list[tuple[Any, Any, Any]] | None = None,
    ) -> list[SingleAgentEpisode]:
        """One episode per batch row; ``extras`` are the per-row extra model outputs. Observations,
        actions and extras may be nested (dicts/tuples of batched arrays): each row gets its structure.
        ``tags``: per row ``(agent_id, module_id, multi_agent_episode_id)`` (multi-agent), else all None."""
        size = len(rewards)
        rewards_list = rewards.tolist()
        terminated_list = terminated.tolist()
        truncated_list = truncated.tolist()
        t_list = t.tolist()
        extra_items = [(name, unbatch(values, size)) for name, values in extras.items()]
        obs_rows, next_rows, action_rows = unbatch(obs, size), unbatch(next_obs, size), unbatch(actions, size)
        if self._fast is None:
            self._fast = self._fast_path_agrees(observation_space, action_space, obs, next_obs, actions, rewards_list, extra_items, tags)
        no_tags = (None, None, None)
        if not self._fast:
            return [
                SingleAgentEpisode(
                    id_=self._next_id(),
                    agent_id=(tags[i] if tags else no_tags)[0],
                    module_id=(tags[i] if tags else no_tags)[1],
                    multi_agent_episode_id=(tags[i] if tags else no_tags)[2],
                    observations=[obs_rows[i], next_rows[i]],
                    observation_space=observation_space,
                    infos=list(infos[i]) if infos is not None else None,
                    actions=[action_rows[i]],
                    action_space=action_space,
                    rewards=[rewards_list[i]],
                    terminated=terminated_list[i],
                    truncated=truncated_list[i],
                    extra_model_outputs={name: [values[i]] for name, values in extra_items},
                    len_lookback_buffer=0,
                    t_started=t_list[i],
                )
                for i in range(size)
            ]
        obs_struct = self._struct(observation_space)
        act_struct = self._struct(action_space)
        rew_struct = self._struct(_REWARDS_BOX_SPACE)
        none_struct = self._struct(None)
        episodes = []
        for i in range(size):
            ep = _NEW_EPISODE(SingleAgentEpisode)
            ep.id_ = self._next_id()
            ep.agent_id, ep.module_id, ep.multi_agent_episode_id = tags[i] if tags else no_tags
            ep.observations = _buffer([obs_rows[i], next_rows[i]], observation_space, obs_struct)
            ep._observation_space = observation_space
            ep.infos = _buffer(list(infos[i]) if infos is not None else [{}, {}], None, none_struct)
            ep.actions = _buffer([action_rows[i]], action_space, act_struct)
            ep._action_space = action_space
            ep.rewards = _buffer([rewards_list[i]], _REWARDS_BOX_SPACE, rew_struct)
            ep.is_terminated = terminated_list[i]
            ep.is_truncated = truncated_list[i]
            ep.extra_model_outputs = {name: _buffer([values[i]], None, none_struct) for name, values in extra_items}
            ep.t_started = t_list[i]
            ep.t = t_list[i] + 1
            ep._custom_data = {}
            ep._start_time = ep._last_step_time = None
            ep._last_added_observation = ep._last_added_infos = None
            episodes.append(ep)
        return episodes

    def _next_id(self) -> str:
        # Learner connectors key batch items by episode id, so ids must be unique; a counter is cheap.
        return f"{self._prefix}{next(self._counter)}"

    def _struct(self, space: Any) -> Any:
        key = id(space)
        if key not in self._structs:
            self._structs[key] = get_base_struct_from_space(space)  # type: ignore[no-untyped-call]  # untyped in RLlib
        return self._structs[key]

    def _fast_path_agrees(self, observation_space: Any, action_space: Any, obs: Any, next_obs: Any, actions: Any,
                          rewards: list[float], extra_items: list[tuple[str, list[Any]]], tags: list[tuple[Any, Any, Any]] | None) -> bool:
        self._fast = True
        kwargs: dict[str, Any] = dict(
            obs=_head(obs), next_obs=_head(next_obs), actions=_head(actions), rewards=np.asarray(rewards[:1]),
            terminated=np.array([True]), truncated=np.array([False]), t=np.array([5]),
            extras={name: [values[0]] for name, values in extra_items}, infos=None, tags=tags[:1] if tags else None,
        )
        fast = self.build(observation_space, action_space, **kwargs)[0]
        self._fast = False
        public = self.build(observation_space, action_space, **kwargs)[0]
        if _slots_equal(fast, public):
            return True
        logger.warning("ray_replay: RLlib's SingleAgentEpisode layout changed; using its (slower) constructor")
        return False


def _head(batch: Any) -> Any:
    return map_structure(lambda leaf: leaf[:1], batch)


def _buffer(data: list[Any], space: Any, struct: Any) -> InfiniteLookbackBuffer:
    buf = _NEW_BUFFER(InfiniteLookbackBuffer)
    buf.__dict__ = {"data": data, "lookback": 0, "finalized": False, "_space": space, "_space_struct": struct}
    return buf


def _slots_equal(a: SingleAgentEpisode, b: SingleAgentEpisode) -> bool:
    for name in SingleAgentEpisode.__slots__:
        if name == "id_":
            continue
        if hasattr(a, name) != hasattr(b, name):
            return False
        if hasattr(a, name) and not _values_equal(getattr(a, name), getattr(b, name)):
            return False
    return True


def _values_equal(x: Any, y: Any) -> bool:
    if isinstance(x, InfiniteLookbackBuffer):
        return isinstance(y, InfiniteLookbackBuffer) and _values_equal(vars(x), vars(y))
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(_values_equal(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)):
        return isinstance(y, (list, tuple)) and len(x) == len(y) and all(_values_equal(u, v) for u, v in zip(x, y))
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        return bool(np.array_equal(x, y))
    return bool(x == y) and type(x) is type(y)
