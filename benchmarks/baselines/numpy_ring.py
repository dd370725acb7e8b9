"""A plain numpy ring buffer, done the fastest reasonable way: one preallocated array per field,
a write cursor, slice assignment for batches (two slices at the wrap), ``np.take`` for sampling."""

from __future__ import annotations

import numpy as np

NAME = "numpy ring"
FIELDS = ("state", "action", "reward", "next_state", "done")


class NumpyRing:
    def __init__(self, capacity: int, schema: dict, seed: int = 0) -> None:
        self.capacity = capacity
        self._cols = {name: np.zeros((capacity, *shape), dtype) for name, (shape, dtype) in schema.items()}
        # Bound attributes for the per-call path (one attribute load each, no dict lookups).
        self._state, self._action, self._reward, self._next_state, self._done = (self._cols[f] for f in FIELDS)
        self._pos = 0
        self._size = 0
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self._size

    def add(self, state, action, reward, next_state, done) -> None:
        i = self._pos
        self._state[i] = state
        self._action[i] = action
        self._reward[i] = reward
        self._next_state[i] = next_state
        self._done[i] = done
        i += 1
        self._pos = 0 if i == self.capacity else i
        if self._size < self.capacity:
            self._size += 1

    def add_batch(self, states, actions, rewards, next_states, dones) -> None:
        n = len(states)
        cap = self.capacity
        start = self._pos
        end = start + n
        if end <= cap:
            self._state[start:end] = states
            self._action[start:end] = actions
            self._reward[start:end] = rewards
            self._next_state[start:end] = next_states
            self._done[start:end] = dones
        else:  # wraps: two slices (n <= capacity)
            k = cap - start
            for col, src in zip((self._state, self._action, self._reward, self._next_state, self._done),
                                (states, actions, rewards, next_states, dones)):
                col[start:] = src[:k]
                col[: n - k] = src[k:]
        self._pos = end % cap
        self._size = min(cap, self._size + n)

    prefill = add_batch

    def sample(self, n: int) -> dict[str, np.ndarray]:
        idx = self._rng.integers(0, self._size, n)
        return {name: col.take(idx, axis=0) for name, col in self._cols.items()}

    def sample_into(self, n: int, out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Fills preallocated arrays (the numpy analogue of ray_replay's ``sample(n, out=...)``)."""
        idx = self._rng.integers(0, self._size, n)
        for name, col in self._cols.items():
            col.take(idx, axis=0, out=out[name], mode="clip")  # mode="raise" would buffer the output
        return out
