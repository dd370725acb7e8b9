"""The ``replay_buffer_config`` options of the RLlib buffers: one type for the single- and multi-agent buffer.

``BufferOptions.parse`` validates the keys RLlib passes (everything in ``replay_buffer_config`` but
``type``) and fails with a ValueError naming the option and what was expected; a buffer that fails
to parse its options was not built.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ray_replay.rllib.nstep import max_n_step

__all__ = ["REPLAY_MODES", "BufferOptions"]

REPLAY_MODES = ("independent", "synchronized")
_MULTI_AGENT_ONLY = ("replay_mode",)
_SINGLE_AGENT_ONLY = ("env_runners_write",)


@dataclass(frozen=True)
class BufferOptions:
    """Options (keys of ``replay_buffer_config``) of NativeEpisodeReplayBuffer and NativeMultiAgentEpisodeReplayBuffer.

    capacity: timesteps held (> 0; per module for the multi-agent buffer), oldest evicted first.
    alpha: prioritization exponent (0 = uniform). beta: importance-sampling exponent used when the
        algorithm passes none. eps: floor of a priority (a TD error of 0 would never be drawn again).
    n_step: only a default for ``sample()`` calls that pass none (an int or a closed ``(low, high)``
        range). Each timestep is stored once and n-step transitions are gathered at sample time, so
        any ``n_step`` the algorithm passes works whatever this is. (Synchronized multi-agent replay
        still stores windows of this many steps, and serves at most this n.)
    backend: ``"local"`` or a prioritized ``ReplayCoordinator`` (handle or actor name); for the
        multi-agent buffer a mapping ``module_id -> ReplayCoordinator``.
    seed: makes sampling reproducible. batch_size_B: sample size when ``sample()`` gets none.
    batch_length_T: default sequence length of ``sample()`` (0 or 1: transitions).
    metrics_num_episodes_for_smoothing: window of the smoothed metrics (set by the Algorithm).
    env_runners_write (single-agent): env runners write to the shards (ray_replay.rllib.direct).
    replay_mode (multi-agent): ``"independent"`` or ``"synchronized"``.
    """

    capacity: int = 10000
    alpha: float = 0.6
    beta: float = 0.4
    eps: float = 1e-6
    n_step: int | tuple[int, int] = 1
    backend: Any = "local"
    seed: int | None = None
    batch_size_B: int = 16
    batch_length_T: int = 1
    metrics_num_episodes_for_smoothing: int = 100
    env_runners_write: bool = False
    replay_mode: str = "independent"

    @classmethod
    def parse(cls, owner: str, capacity: Any, options: dict[str, Any], *, multi_agent: bool) -> BufferOptions:
        """Validated options of the buffer class named ``owner`` (raises ValueError naming the option)."""
        excluded = _SINGLE_AGENT_ONLY if multi_agent else _MULTI_AGENT_ONLY
        valid = [f.name for f in fields(cls) if f.name not in excluded]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(f"{owner}: unknown replay_buffer_config option(s) {unknown}; valid options: type, {', '.join(valid)}")
        parsed = cls(capacity=capacity, **options)
        parsed._check(owner, multi_agent)
        return parsed

    def _check(self, owner: str, multi_agent: bool) -> None:
        capacity = self.capacity
        if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) or capacity <= 0:
            raise ValueError(f"{owner}: capacity must be an int > 0, got {capacity!r}")
        if self.alpha < 0 or self.beta < 0 or self.eps <= 0:
            raise ValueError(f"{owner}: need alpha >= 0, beta >= 0, eps > 0; got {self.alpha}, {self.beta}, {self.eps}")
        max_n_step(self.n_step)  # raises for a bad n_step
        if isinstance(self.batch_length_T, bool) or not isinstance(self.batch_length_T, (int, np.integer)) or self.batch_length_T < 0:
            raise ValueError(f"{owner}: batch_length_T must be an int >= 0, got {self.batch_length_T!r}")
        local = isinstance(self.backend, str) and self.backend == "local"
        if multi_agent:
            if self.replay_mode not in REPLAY_MODES:
                raise ValueError(f"{owner}: replay_mode must be one of {REPLAY_MODES}, got {self.replay_mode!r}")
            if self.replay_mode == "synchronized" and isinstance(self.backend, dict):
                raise ValueError(f"{owner}: replay_mode='synchronized' keeps every agent of an environment step in one row: backend must be "
                                 "'local' or one ReplayCoordinator (buffer type 'uniform'), not a dict per module")
            if self.replay_mode != "synchronized" and not local and not isinstance(self.backend, dict):
                raise ValueError(f"{owner}: backend must be 'local' or a dict module_id -> ReplayCoordinator, got {self.backend!r}")
        elif self.env_runners_write and local:
            raise ValueError(f"{owner}: env_runners_write needs a sharded backend (a ReplayCoordinator), not 'local'")

    def for_module(self, backend: Any, seed: int) -> dict[str, Any]:
        """The single-agent buffer's keyword options for one module of the multi-agent buffer."""
        kept = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _MULTI_AGENT_ONLY}  # (no deep copy: backend may be a handle)
        return {**kept, "backend": backend, "seed": seed}
