"""Prioritized replay in pure numpy: a binary sum tree and min tree (float64) over a numpy ring,
vectorized as far as numpy allows: one level of the tree per numpy call for the whole batch.

- sample(n): stratified (the total mass split into n equal segments, as in the PER paper), one
  vectorized descent of log2(capacity) levels; weights (p_i / p_min)^-beta, i.e. (N P(i))^-beta
  normalized by the largest possible weight; probabilities p_i / total (p_i = priority^alpha).
- update_priorities(ids, p): writes the leaves, then recomputes each ancestor level from its
  children (idempotent, so duplicate ids need no special care).
"""

from __future__ import annotations

import numpy as np

from baselines.numpy_ring import NumpyRing

NAME = "numpy sum-tree"


class NumpySumTreePER:
    def __init__(self, capacity: int, schema: dict, alpha: float, beta: float, eps: float, seed: int = 0) -> None:
        self.capacity = capacity
        self.alpha, self.beta, self.eps = alpha, beta, eps
        self.ring = NumpyRing(capacity, schema, seed)
        self.leaves = 1 << max(1, (capacity - 1).bit_length())
        self.depth = self.leaves.bit_length() - 1
        self.sum = np.zeros(2 * self.leaves, np.float64)
        self.min = np.full(2 * self.leaves, np.inf, np.float64)
        # Row i of the (leaves, 2) views holds the two children (2i, 2i+1) of node i.
        self._sum_pairs = self.sum.reshape(-1, 2)
        self._min_pairs = self.min.reshape(-1, 2)
        self.max_priority = 1.0
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.ring)

    def _set(self, slots: np.ndarray, priorities: np.ndarray) -> None:
        p = np.maximum(np.asarray(priorities, np.float64), self.eps) ** self.alpha
        node = slots + self.leaves
        self.sum[node] = p
        self.min[node] = p
        for _ in range(self.depth):
            node >>= 1
            self.sum[node] = self._sum_pairs[node].sum(axis=1)
            self.min[node] = self._min_pairs[node].min(axis=1)

    def add_batch(self, states, actions, rewards, next_states, dones, priorities=None) -> None:
        n = len(states)
        start = self.ring._pos
        self.ring.add_batch(states, actions, rewards, next_states, dones)
        slots = (start + np.arange(n)) % self.capacity
        if priorities is None:
            priorities = np.full(n, self.max_priority)
        else:
            self.max_priority = max(self.max_priority, float(np.max(priorities)))
        self._set(slots, priorities)

    prefill = add_batch

    def sample(self, n: int) -> dict[str, np.ndarray]:
        total = self.sum[1]
        u = (np.arange(n) + self._rng.random(n)) * (total / n)
        node = np.ones(n, np.int64)
        for _ in range(self.depth):
            node <<= 1
            left = self.sum[node]
            right = u >= left
            u -= left * right
            node += right
        p = self.sum[node]
        slots = node - self.leaves
        # Rounding can walk past the last non-empty leaf; clamp to stored rows.
        np.minimum(slots, len(self.ring) - 1, out=slots)
        out = {name: col.take(slots, axis=0) for name, col in self.ring._cols.items()}
        out["weights"] = (p / self.min[1]) ** -self.beta
        out["probabilities"] = p / total
        out["indexes"] = slots
        return out

    def ids_of(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return batch["indexes"]

    def update_priorities(self, ids, priorities) -> None:
        self.max_priority = max(self.max_priority, float(np.max(priorities)))
        self._set(np.array(ids, np.int64), priorities)
