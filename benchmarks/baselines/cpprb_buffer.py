"""cpprb (https://pypi.org/project/cpprb/) ReplayBuffer and PrioritizedReplayBuffer, driven the way its
documentation recommends: ``env_dict`` declared up front, ``add(**fields)`` with numpy arrays (a
leading batch axis for batches), ``sample(n)``, and ``update_priorities(indexes, priorities)``.

Import lazily: :func:`available` says whether cpprb is installed and importable."""

from __future__ import annotations

from typing import Any

import numpy as np

NAME = "cpprb"
PER_NAME = "cpprb PER"

# ray_replay's field name -> cpprb's conventional name
_NAMES = {"state": "obs", "action": "act", "reward": "rew", "next_state": "next_obs", "done": "done"}


def available() -> tuple[bool, str]:
    try:
        import cpprb  # noqa: F401
        from cpprb import PrioritizedReplayBuffer, ReplayBuffer  # noqa: F401
    except Exception as error:  # missing, or a broken build
        return False, f"{type(error).__name__}: {error}"
    from importlib.metadata import version

    try:
        return True, version("cpprb")
    except Exception:
        return True, "unknown"


def _env_dict(schema: dict) -> dict[str, dict[str, Any]]:
    env = {}
    for name, (shape, dtype) in schema.items():
        spec: dict[str, Any] = {"dtype": dtype}
        if tuple(shape):
            spec["shape"] = tuple(shape)
        env[_NAMES[name]] = spec
    return env


class CpprbBuffer:
    def __init__(self, capacity: int, schema: dict, seed: int = 0) -> None:
        from cpprb import ReplayBuffer

        np.random.seed(seed)  # cpprb samples with numpy's global generator
        self.capacity = capacity
        self.rb = ReplayBuffer(capacity, _env_dict(schema))

    def __len__(self) -> int:
        return self.rb.get_stored_size()

    def add(self, state, action, reward, next_state, done) -> None:
        self.rb.add(obs=state, act=action, rew=reward, next_obs=next_state, done=done)

    def add_batch(self, states, actions, rewards, next_states, dones) -> None:
        self.rb.add(obs=states, act=actions, rew=rewards, next_obs=next_states, done=dones)

    prefill = add_batch

    def sample(self, n: int) -> dict[str, np.ndarray]:
        return self.rb.sample(n)


class CpprbPER:
    def __init__(self, capacity: int, schema: dict, alpha: float, beta: float, eps: float, seed: int = 0) -> None:
        from cpprb import PrioritizedReplayBuffer

        np.random.seed(seed)
        self.capacity = capacity
        self.beta = beta
        self.rb = PrioritizedReplayBuffer(capacity, _env_dict(schema), alpha=alpha, eps=eps)

    def __len__(self) -> int:
        return self.rb.get_stored_size()

    def add_batch(self, states, actions, rewards, next_states, dones, priorities=None) -> None:
        self.rb.add(obs=states, act=actions, rew=rewards, next_obs=next_states, done=dones, priorities=priorities)

    prefill = add_batch

    def sample(self, n: int) -> dict[str, np.ndarray]:
        """Fields plus ``weights`` and ``indexes`` (cpprb's names)."""
        return self.rb.sample(n, beta=self.beta)

    def ids_of(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return batch["indexes"]

    def update_priorities(self, ids, priorities) -> None:
        self.rb.update_priorities(ids, priorities)
