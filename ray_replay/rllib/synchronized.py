"""Synchronized multi-agent replay: rows are environment steps holding every agent's transition.

RLlib's ``replay_mode="synchronized"`` draws environment steps uniformly and returns, for each, the
transition of every agent that has a full one there (``o_t``, ``a_t`` and ``o_t+n`` observed), so
the modules' batches come from the same environment steps. Here each native row is one environment
step of a ``MultiAgentEpisode`` with one slot per agent (the agents of the first episode): the slot's
observation, action, presence flags and, per observation, whether the agent's own episode ended there;
rewards are an (n_step, agents) window. Rows are built by the same held-back n-step windows as the
single-agent buffer (``ray_replay.rllib.nstep``), along environment steps.

Sampling is uniform (RLlib's synchronized mode has no priorities): ``weights`` are 1, and priority
updates are accepted and counted as ignored (``get_metrics()["ray_replay"]["ignored_priority_updates"]``).
Costs: a row stores every agent slot (zeros where an agent is absent).

The rows live in a local uniform buffer, or (``backend``: one ``ReplayCoordinator`` of buffer type
"uniform") on its shards, written through a ReplayClient and sampled uniformly over the whole replay;
the segments held back and the episode ids stay in this process.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from ray_replay.nested import Layout, infer_layout, map_structure, stack_structures
from ray_replay.rllib.episodes import EpisodeFactory
from ray_replay.rllib.nstep import END_NONE, END_TERMINATED, END_TRUNCATED, Segment, draw_n_steps
from ray_replay.rllib.storage import make_storage

__all__ = ["SynchronizedStore"]

_MAX_OPEN_EPISODES = 10_000


class SynchronizedStore:
    """Environment-step rows of multi-agent episodes in one native uniform buffer, local or sharded
    (``backend``: "local" or a uniform ReplayCoordinator, whose capacity then applies)."""

    def __init__(self, capacity: int, k: int, seed: int | None, backend: Any = "local") -> None:
        self._buffer = make_storage(backend, capacity, seed=seed, buffer_type="uniform")
        self.capacity = self._buffer.capacity
        self._k = k
        self._rng = np.random.default_rng(seed)
        self._factory = EpisodeFactory()
        self._agents: list[Any] = []  # slot i <-> agent id, fixed by the first episode
        self._modules: dict[Any, Any] = {}  # agent id -> module id
        self._spaces: dict[Any, tuple[Any, Any]] = {}
        self._zeros: dict[Any, tuple[Any, Any]] = {}  # agent id -> (zero observation, zero action)
        self._open: OrderedDict[str, Segment] = OrderedDict()
        self._episode_ids: OrderedDict[int, str] = OrderedDict()  # segment key -> multi-agent episode id
        self._next_key = 0
        self._layout: Layout | None = None
        self.ignored_priority_updates = 0

    def __len__(self) -> int:
        return len(self._buffer)

    @property
    def modules(self) -> dict[Any, Any]:
        """Agent id -> module id of the agents seen."""
        return dict(self._modules)

    # -- adding ------------------------------------------------------------------------------------

    def add(self, episode: Any) -> int:
        """Stores the chunk's complete environment steps; returns the rows stored."""
        n = episode.env_steps()
        previous = self._open.pop(episode.id_, None)
        end = END_TERMINATED if episode.is_terminated else END_TRUNCATED if episode.is_truncated else END_NONE
        segment = previous
        if n > 0:
            chunk = self._segment(episode, n)
            if previous is not None and previous.base + len(previous) == chunk.base:
                _carry_boundary(previous, chunk)
                previous.extend(chunk)
            else:
                chunk.key = self._next_key
                self._next_key += 1
                self._episode_ids[chunk.key] = episode.id_
                while len(self._episode_ids) > self.capacity + _MAX_OPEN_EPISODES:
                    self._episode_ids.popitem(last=False)
                segment = chunk
        if segment is None:
            return 0
        rows, _ = segment.take_windows(self._k, end)
        if end == END_NONE:
            self._open[episode.id_] = segment
            if len(self._open) > _MAX_OPEN_EPISODES:
                self._open.popitem(last=False)
        if not rows:
            return 0
        if self._layout is None:
            self._layout = infer_layout(list(rows), list(rows.values()), batched=True, every_tuple=True)
        self._buffer.add_batch(rows if self._layout is None else self._layout.flatten(rows), None, None)
        return len(rows["t"])

    def _segment(self, episode: Any, n: int) -> Segment:
        if not self._agents:
            self._agents = list(episode.agent_episodes)
        for agent_id, agent_episode in episode.agent_episodes.items():
            if agent_id not in self._modules:
                if agent_id not in self._agents:
                    raise ValueError(f"synchronized replay holds the agents of the first episode {self._agents}; agent {agent_id!r} is new")
                self._modules[agent_id] = agent_episode.module_id if agent_episode.module_id is not None else episode.module_for(agent_id)
                self._spaces[agent_id] = (agent_episode.observation_space, agent_episode.action_space)
        observations = episode.get_observations(slice(0, n + 1), return_list=True)
        actions = episode.get_actions(slice(0, n), return_list=True)
        rewards = episode.get_rewards(slice(0, n), return_list=True)
        obs: dict[str, Any] = {"o": {}, "has": {}, "end": {}}
        act: dict[str, Any] = {"a": {}, "has": {}}
        for i, agent_id in enumerate(self._agents):
            slot = f"a{i}"
            zero_obs, zero_act = self._zero(agent_id, observations, actions)
            obs["o"][slot] = stack_structures([o.get(agent_id, zero_obs) for o in observations])
            obs["has"][slot] = np.array([agent_id in o for o in observations])
            ends = np.zeros(n + 1, np.int8)
            agent_episode = episode.agent_episodes.get(agent_id)
            if agent_episode is not None and agent_episode.is_done and obs["has"][slot].any():
                last = int(np.flatnonzero(obs["has"][slot])[-1])
                ends[last] = END_TERMINATED if agent_episode.is_terminated else END_TRUNCATED
            obs["end"][slot] = ends
            act["a"][slot] = stack_structures([a.get(agent_id, zero_act) for a in actions])
            act["has"][slot] = np.array([agent_id in a for a in actions])
        reward = np.array([[float(r.get(agent_id) or 0.0) for agent_id in self._agents] for r in rewards], dtype=np.float64)
        reward = reward.reshape(n, len(self._agents))
        return Segment(key=-1, base=int(episode.env_t_started), obs=obs, actions=act, rewards=reward)

    def _zero(self, agent_id: Any, observations: list[dict[Any, Any]], actions: list[dict[Any, Any]]) -> tuple[Any, Any]:
        if agent_id not in self._zeros:
            first_obs = next((o[agent_id] for o in observations if agent_id in o), None)
            first_act = next((a[agent_id] for a in actions if agent_id in a), None)
            if first_obs is None or first_act is None:
                raise ValueError(f"synchronized replay: agent {agent_id!r} must act in the first chunk added")
            self._zeros[agent_id] = (map_structure(lambda leaf: np.zeros_like(np.asarray(leaf)), first_obs),
                                     map_structure(lambda leaf: np.zeros_like(np.asarray(leaf)), first_act))
        return self._zeros[agent_id]

    # -- sampling ----------------------------------------------------------------------------------

    def sample(self, size: int, n_step: int | tuple[int, int], gamma: float, modules: set[Any] | None) -> list[Any]:
        """``size`` environment steps, uniformly; every agent's full transition at each, as 1-step episodes."""
        rows = self._buffer.sample(size)
        if self._layout is not None:
            rows = self._layout.unflatten(rows)
        n = draw_n_steps(n_step, size, self._rng)
        used = np.minimum(n, rows["horizon"].astype(np.int64))
        last = used - 1
        steps = np.arange(self._k)
        discounts = np.power(gamma, steps, dtype=np.float64)[None, :] * (steps[None, :] < used[:, None])
        reached_end = used == rows["horizon"]
        episode_ids = [self._episode_ids.get(key) for key in rows["episode"].tolist()]
        episodes: list[Any] = []
        for i, agent_id in enumerate(self._agents):
            module_id = self._modules.get(agent_id)
            if module_id is None or (modules is not None and module_id not in modules):
                continue
            slot = f"a{i}"
            span = np.arange(size)
            next_has = rows["next_obs"]["has"][slot][span, last]
            full = np.flatnonzero(rows["obs"]["has"][slot] & rows["actions"]["has"][slot] & next_has)
            if len(full) == 0:
                continue
            agent_end = rows["next_obs"]["end"][slot][full, last[full]]
            episode_end = np.where(reached_end[full], rows["end"][full], END_NONE)
            terminated = (agent_end == END_TERMINATED) | (episode_end == END_TERMINATED)
            truncated = ~terminated & ((agent_end == END_TRUNCATED) | (episode_end == END_TRUNCATED))
            episodes += self._factory.build(
                *self._spaces[agent_id],
                obs=map_structure(lambda leaf, rows_=full: leaf[rows_], rows["obs"]["o"][slot]),
                next_obs=map_structure(lambda leaf, rows_=full: leaf[rows_, last[rows_]], rows["next_obs"]["o"][slot]),
                actions=map_structure(lambda leaf, rows_=full: leaf[rows_], rows["actions"]["a"][slot]),
                rewards=(rows["rewards"][full, :, i] * discounts[full]).sum(axis=1),
                terminated=terminated,
                truncated=truncated,
                t=rows["t"][full],
                extras={"weights": [1.0] * len(full), "n_step": used[full].tolist()},
                infos=None,
                tags=[(agent_id, module_id, episode_ids[j]) for j in full.tolist()],
            )
        return episodes

    # -- state -------------------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        return {"buffer": self._buffer.get_state(), "agents": self._agents, "modules": self._modules, "spaces": self._spaces,
                "zeros": self._zeros, "open": [(k, vars(s)) for k, s in self._open.items()], "episode_ids": list(self._episode_ids.items()),
                "next_key": self._next_key, "layout": None if self._layout is None else self._layout.to_json(),
                "rng": self._rng.bit_generator.state, "ignored_priority_updates": self.ignored_priority_updates}

    def set_state(self, state: dict[str, Any]) -> None:
        self._buffer.set_state(state["buffer"])
        self._agents, self._modules, self._spaces, self._zeros = state["agents"], state["modules"], state["spaces"], state["zeros"]
        self._open = OrderedDict((k, Segment(**fields)) for k, fields in state["open"])
        self._episode_ids = OrderedDict(state["episode_ids"])
        self._next_key = state["next_key"]
        self._layout = None if state["layout"] is None else Layout.from_json(state["layout"])
        self._rng.bit_generator.state = state["rng"]
        self.ignored_priority_updates = state["ignored_priority_updates"]


def _carry_boundary(previous: Segment, chunk: Segment) -> None:
    """The observation at a chunk boundary is the later chunk's first, but an agent whose episode ended
    there has its final observation only in the earlier chunk: carry it over, so its last transition
    (which ends there) is kept."""
    for slot, has in chunk.obs["has"].items():
        if previous.obs["has"][slot][-1] and not has[0]:
            has[0] = True
            chunk.obs["end"][slot][0] = previous.obs["end"][slot][-1]

            def carry(mine: np.ndarray, theirs: np.ndarray) -> None:
                theirs[0] = mine[-1]

            map_structure(carry, previous.obs["o"][slot], chunk.obs["o"][slot])
