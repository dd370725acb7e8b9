"""``NativeMultiAgentEpisodeReplayBuffer``: RLlib's multi-agent prioritized episode buffer, in ray_replay.

RLlib's multi-agent DQN (new API stack, 2.60) adds ``MultiAgentEpisode`` chunks, samples a list of
1-step ``SingleAgentEpisode``s tagged with their agent, module and multi-agent episode, and updates
priorities per module: ``update_priorities(td_errors, module_id)``. This class keeps that interface.
Each module's agent steps live in their own ``NativeEpisodeReplayBuffer`` (a native prioritized
buffer: per-module sum trees, priorities and max priority, as in RLlib's buffer), so ``"independent"``
sampling draws ``batch_size_B`` transitions from every module's own distribution; ``"synchronized"``
keeps environment-step rows instead (see ray_replay.rllib.synchronized). It subclasses
RLlib's class only because RLlib routes priority updates by an ``isinstance`` check.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ray.rllib.utils import force_list
from ray.rllib.utils.metrics import NUM_ENV_STEPS_ADDED_LIFETIME, NUM_ENV_STEPS_SAMPLED_LIFETIME, NUM_ENV_STEPS_STORED
from ray.rllib.utils.metrics.metrics_logger import MetricsLogger
from ray.rllib.utils.replay_buffers.multi_agent_prioritized_episode_buffer import MultiAgentPrioritizedEpisodeReplayBuffer
from ray.rllib.utils.typing import ModuleID, ResultDict

from ray_replay.rllib.episode_buffer import NativeEpisodeReplayBuffer
from ray_replay.rllib.nstep import max_n_step
from ray_replay.rllib.options import BufferOptions
from ray_replay.rllib.synchronized import SynchronizedStore

__all__ = ["NativeMultiAgentEpisodeReplayBuffer"]

# Per-module gauges in get_metrics() (lifetime totals of agent steps, as RLlib's buffer reports per module).
NUM_MODULE_STEPS_STORED = "num_module_steps_stored"
NUM_MODULE_STEPS_ADDED = "num_module_steps_added_lifetime"
NUM_MODULE_STEPS_SAMPLED = "num_module_steps_sampled_lifetime"



class NativeMultiAgentEpisodeReplayBuffer(MultiAgentPrioritizedEpisodeReplayBuffer):
    """Prioritized multi-agent episode replay with n-step returns, one native buffer per module.

    Use it with ``config.training(replay_buffer_config={"type": "ray_replay.rllib.NativeMultiAgentEpisodeReplayBuffer",
    "capacity": ..., ...})`` (a dotted string) in a multi-agent config.

    Options (keys of ``replay_buffer_config``; the same type as NativeEpisodeReplayBuffer's,
    :class:`ray_replay.rllib.options.BufferOptions`):
        capacity: agent timesteps held per module (> 0), oldest evicted first.
        alpha, beta, eps, n_step, seed, batch_size_B, batch_length_T: as for NativeEpisodeReplayBuffer
            (each module's buffer gets its own seed drawn from ``seed``; any n_step the algorithm
            passes is served, except in synchronized mode, which stores windows of this n_step).
        backend: ``"local"``, or a mapping ``module_id -> ReplayCoordinator`` (handle or name) to keep
            each module's rows on its own sharded replay; in synchronized mode, one "uniform"
            ReplayCoordinator (a row holds every agent of an environment step).
        replay_mode: ``"independent"`` (RLlib's default: ``sample(B)`` returns B transitions of every
            module, drawn from that module's prioritized distribution) or ``"synchronized"``
            (``sample(B)`` draws B environment steps uniformly and returns the transition of every
            agent that has a full one there, so the modules' batches come from the same steps;
            weights are 1 and priority updates are counted as ignored). The mode is fixed at
            construction: it decides how rows are stored.

    Observations and actions may be Dict/Tuple spaces, per agent (see NativeEpisodeReplayBuffer).
    """

    def __init__(self, capacity: int = 10000, **options: Any) -> None:
        # The parent's __init__ is not called: it would allocate segment trees this class never uses.
        parsed = BufferOptions.parse(type(self).__name__, capacity, options, multi_agent=True)
        self.options = parsed
        capacity, n_step, replay_mode, backend, seed = parsed.capacity, parsed.n_step, parsed.replay_mode, parsed.backend, parsed.seed
        batch_size_B = parsed.batch_size_B
        self.capacity = int(capacity)
        self.batch_size_B = batch_size_B
        self.batch_length_T = parsed.batch_length_T
        self.replay_mode = replay_mode
        self._backend = backend
        self._seeds = np.random.SeedSequence(seed)
        self._modules: dict[ModuleID, NativeEpisodeReplayBuffer] = {}
        self._sync: SynchronizedStore | None = None
        if replay_mode == "synchronized":
            self._sync = SynchronizedStore(self.capacity, max_n_step(n_step), seed=int(self._seeds.spawn(1)[0].generate_state(1)[0]), backend=backend)
        self._counts = {"env_steps_added": 0, "steps_sampled": 0}
        self._reported = dict(self._counts)
        self.metrics = MetricsLogger(root=False)

    # -- the modules' buffers ----------------------------------------------------------------------

    def _module(self, module_id: ModuleID) -> NativeEpisodeReplayBuffer:
        buffer = self._modules.get(module_id)
        if buffer is None:
            backend = "local" if isinstance(self._backend, str) else self._backend.get(module_id)
            if backend is None:
                raise ValueError(f"{type(self).__name__}: no ReplayCoordinator for module {module_id!r} in backend "
                                 f"(has {sorted(map(str, self._backend))})")
            seed = int(self._seeds.spawn(1)[0].generate_state(1)[0])
            buffer = self._modules[module_id] = NativeEpisodeReplayBuffer(**self.options.for_module(backend, seed))
        return buffer

    def module_buffer(self, module_id: ModuleID) -> NativeEpisodeReplayBuffer:
        """The buffer holding ``module_id``'s agent steps (KeyError if none arrived yet)."""
        return self._modules[module_id]

    # -- RLlib's interface -------------------------------------------------------------------------

    def add(self, episodes: Any, weight: float | dict[ModuleID, float] | None = None) -> None:  # type: ignore[override]
        """Stores the agent steps of ``MultiAgentEpisode`` chunks in their modules' buffers; ``weight``
        (a float, or one per module) is their initial priority (default: the module's largest so far)."""
        per_module: dict[ModuleID, list[Any]] = {}
        for episode in force_list(episodes):
            self._counts["env_steps_added"] += episode.env_steps()
            if self._sync is not None:
                self._sync.add(episode)
                continue
            for agent_id, agent_episode in episode.agent_episodes.items():
                module_id = agent_episode.module_id if agent_episode.module_id is not None else episode.module_for(agent_id)
                per_module.setdefault(module_id, []).append(agent_episode)
        for module_id, agent_episodes in per_module.items():
            module_weight = weight.get(module_id) if isinstance(weight, dict) else weight
            self._module(module_id).add(agent_episodes, weight=module_weight)

    def sample(  # type: ignore[override]  # returns episodes, as RLlib's does
        self,
        num_items: int | None = None,
        *,
        batch_size_B: int | None = None,
        batch_length_T: int | None = None,
        n_step: int | tuple[int, int] | None = None,
        gamma: float = 0.99,
        include_infos: bool = False,
        include_extra_model_outputs: bool = False,
        replay_mode: str | None = None,
        modules_to_sample: list[ModuleID] | None = None,
        beta: float | None = None,
        to_numpy: bool = False,
        lookback: int = 0,
        **kwargs: Any,
    ) -> list[Any]:
        """B transitions of every module (or of ``modules_to_sample``), each module's drawn from its own
        prioritized distribution, as 1-step ``SingleAgentEpisode``s tagged with ``agent_id``,
        ``module_id`` and ``multi_agent_episode_id``; modules without stored steps are skipped."""
        mode = replay_mode or self.replay_mode
        if mode != self.replay_mode:
            raise ValueError(f"this buffer stores rows for replay_mode={self.replay_mode!r} (set in replay_buffer_config), got {mode!r}")
        if num_items is not None and batch_size_B is not None:
            raise ValueError("pass num_items or batch_size_B, not both")
        size = num_items or batch_size_B or self.batch_size_B
        if self._sync is not None:
            n = 1 if n_step is None else n_step
            if max_n_step(n) > self._sync._k:
                raise ValueError(f"sample(n_step={n!r}) needs more future steps than stored; set replay_buffer_config['n_step'] = {n!r}")
            if len(self._sync) == 0:
                return []
            sampled = self._sync.sample(size, n, gamma, None if modules_to_sample is None else set(modules_to_sample))
            self._counts["steps_sampled"] += size
            if to_numpy:
                for episode in sampled:
                    episode.to_numpy()
            return sampled
        modules = list(self._modules) if modules_to_sample is None else list(modules_to_sample)
        episodes: list[Any] = []
        for module_id in modules:
            buffer = self._modules.get(module_id)
            if buffer is None or len(buffer) == 0:
                continue
            episodes += buffer.sample(num_items=size, batch_length_T=batch_length_T, n_step=n_step, gamma=gamma, beta=beta,
                                      include_infos=include_infos, include_extra_model_outputs=include_extra_model_outputs,
                                      to_numpy=to_numpy, lookback=lookback)
            self._counts["steps_sampled"] += size
        return episodes

    def update_priorities(self, priorities: Any, module_id: ModuleID) -> None:  # type: ignore[override]
        """Sets the priorities (|TD errors|) of ``module_id``'s rows of the last ``sample()`` (synchronized
        mode samples uniformly: the update is counted as ignored)."""
        if self._sync is not None:
            self._sync.ignored_priority_updates += len(np.asarray(priorities).reshape(-1))
            return
        if module_id not in self._modules:
            raise KeyError(f"no rows of module {module_id!r} were sampled")
        self._modules[module_id].update_priorities(priorities)

    def __len__(self) -> int:
        """Stored agent timesteps (independent mode) or environment-step rows (synchronized mode)."""
        if self._sync is not None:
            return len(self._sync)
        return sum(len(buffer) for buffer in self._modules.values())

    def get_num_timesteps(self, module_id: ModuleID | None = None) -> int:
        """Stored agent timesteps of ``module_id``, or of all modules."""
        if module_id is not None:
            return len(self._modules[module_id]) if module_id in self._modules else 0
        return len(self)

    def get_added_timesteps(self, module_id: ModuleID | None = None) -> int:
        if module_id is not None:
            return self._modules[module_id].get_added_timesteps() if module_id in self._modules else 0
        return self._counts["env_steps_added"]

    def get_sampled_timesteps(self, module_id: ModuleID | None = None) -> int:
        if module_id is not None:
            return self._modules[module_id].get_sampled_timesteps() if module_id in self._modules else 0
        return self._counts["steps_sampled"]

    def get_module_ids(self) -> list[ModuleID]:
        if self._sync is not None:
            return list(dict.fromkeys(self._sync.modules.values()))
        return list(self._modules)

    def get_metrics(self) -> ResultDict[str, Any]:
        """Totals since the last report, and each module's stored, added and sampled agent steps.

        RLlib calls this after every sample, so it logs a handful of values into one logger (a
        module's own ``get_metrics`` would cost a logger reduction per module per call)."""
        counts, reported = self._counts, self._reported
        log = self.metrics.log_value
        log(NUM_ENV_STEPS_STORED, len(self), reduce="item")
        log(NUM_ENV_STEPS_ADDED_LIFETIME, counts["env_steps_added"] - reported["env_steps_added"], reduce="lifetime_sum")
        log(NUM_ENV_STEPS_SAMPLED_LIFETIME, counts["steps_sampled"] - reported["steps_sampled"], reduce="lifetime_sum")
        for module_id, buffer in self._modules.items():
            log((NUM_MODULE_STEPS_STORED, str(module_id)), len(buffer), reduce="item")
            log((NUM_MODULE_STEPS_ADDED, str(module_id)), buffer.get_added_timesteps(), reduce="item")
            log((NUM_MODULE_STEPS_SAMPLED, str(module_id)), buffer.get_sampled_timesteps(), reduce="item")
        if self._sync is not None:
            log(("ray_replay", "ignored_priority_updates"), self._sync.ignored_priority_updates, reduce="item")
        self._reported = dict(counts)
        return self.metrics.reduce()

    def get_state(self) -> dict[str, Any]:
        """A picklable snapshot: every module's buffer state, counters and seed sequence."""
        return {"modules": {module_id: buffer.get_state() for module_id, buffer in self._modules.items()},
                "sync": None if self._sync is None else self._sync.get_state(),
                "counts": dict(self._counts), "seeds": self._seeds}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores :meth:`get_state`'s snapshot into a buffer built with the same options."""
        self._modules = {}
        self._seeds = state["seeds"]
        for module_id, module_state in state["modules"].items():
            self._module(module_id).set_state(module_state)
        if self._sync is not None and state.get("sync") is not None:
            self._sync.set_state(state["sync"])
        self._counts = dict(state["counts"])
        self._reported = dict(self._counts)
