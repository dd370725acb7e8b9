"""The "Python standard" replay buffer: ``collections.deque(maxlen=capacity)`` of transition tuples,
sampled with ``random.sample`` and stacked into numpy arrays (the PyTorch DQN tutorial's recipe)."""

from __future__ import annotations

import random
from collections import deque

import numpy as np

NAME = "deque"


class DequeBuffer:
    def __init__(self, capacity: int, schema: dict, seed: int = 0) -> None:
        self.capacity = capacity
        self._d: deque = deque(maxlen=capacity)
        self._rng = random.Random(seed)
        self._dtypes = [dtype for _shape, dtype in schema.values()]

    def __len__(self) -> int:
        return len(self._d)

    def add(self, state, action, reward, next_state, done) -> None:
        self._d.append((state, action, reward, next_state, done))

    def add_batch(self, states, actions, rewards, next_states, dones) -> None:
        self._d.extend(zip(states, actions, rewards, next_states, dones))

    def prefill(self, transitions, count: int) -> None:
        """Fills to ``count`` by repeating the given transition tuples (references, to spare memory)."""
        while len(self._d) < count:
            self._d.extend(transitions[: count - len(self._d)])

    def sample(self, n: int) -> dict[str, np.ndarray]:
        batch = self._rng.sample(self._d, n)
        s, a, r, ns, d = zip(*batch)
        t = self._dtypes
        return {
            "state": np.stack(s).astype(t[0], copy=False),
            "action": np.array(a, dtype=t[1]),
            "reward": np.array(r, dtype=t[2]),
            "next_state": np.stack(ns).astype(t[3], copy=False),
            "done": np.array(d, dtype=t[4]),
        }
