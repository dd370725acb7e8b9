"""Episode chunks to replay rows, and sampled rows back to n-step transitions.

The episode buffer stores each timestep once: one row per env step ``(o_t, a_t, r_t, extras_t)`` in
the stream of its episode (the native sequence index links a stream's rows), and, when an episode
ends, one more row holding its final observation (``end`` = terminated / truncated; priority 0, so it
is never drawn as a start). An n-step transition is the sequence of the n + 1 rows from a drawn start,
gathered by the native ``sample(seq_len=...)`` (:func:`n_step_batch`), for any n, at sample time.

Synchronized multi-agent replay still stores windows of the next ``K`` observations and rewards in
every row (:meth:`Segment.take_windows`), held back until their K future steps are known.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ray_replay.nested import map_structure
from ray_replay.rllib.compact import T_DTYPE

__all__ = [
    "END_NONE", "EXTRA_PREFIX", "END_TERMINATED", "END_TRUNCATED", "NStepBatch", "Segment", "complete", "draw_n_steps", "max_n_step",
    "n_step_batch",
]

END_NONE, END_TERMINATED, END_TRUNCATED = 0, 1, 2
EXTRA_PREFIX = "extra."


def max_n_step(n_step: int | tuple[int, int] | list[int]) -> int:
    """The largest n an ``n_step`` setting (an int or RLlib's closed ``(low, high)`` range) can draw."""
    if isinstance(n_step, (tuple, list)):
        if len(n_step) != 2 or not all(isinstance(v, (int, np.integer)) for v in n_step):
            raise ValueError(f"n_step range must be (low, high) ints, got {n_step!r}")
        low, high = int(n_step[0]), int(n_step[1])
        if not 1 <= low <= high:
            raise ValueError(f"n_step range must satisfy 1 <= low <= high, got {n_step!r}")
        return high
    if isinstance(n_step, bool) or not isinstance(n_step, (int, np.integer)) or n_step < 1:
        raise ValueError(f"n_step must be an int >= 1 or a (low, high) range, got {n_step!r}")
    return int(n_step)


def draw_n_steps(n_step: int | tuple[int, int] | list[int], size: int, rng: np.random.Generator) -> np.ndarray:
    """Per-row n: a constant, or uniform over the closed range ``[low, high]`` as DQNConfig documents.

    (RLlib 2.60's own buffers draw from ``[low, high)``, contradicting that documentation.)
    """
    if isinstance(n_step, (tuple, list)):
        return rng.integers(int(n_step[0]), int(n_step[1]) + 1, size=size, dtype=np.int64)
    return np.full(size, int(n_step), dtype=np.int64)


@dataclass
class Segment:
    """The not-yet-stored tail of one episode: ``obs`` has one entry more than ``actions``/``rewards``.

    ``base`` is the episode timestep of ``obs[0]``; ``infos`` (one per observation) is kept only
    when the environment returns non-empty infos. ``obs``, ``actions`` and each extra may be nested
    (dicts and tuples of arrays with the steps as leading axis: Dict and Tuple spaces).
    """

    key: int
    base: int
    obs: Any
    actions: Any
    rewards: np.ndarray
    extras: dict[str, Any] = field(default_factory=dict)
    infos: list[Any] | None = None

    def __len__(self) -> int:
        return len(self.rewards)

    def extend(self, other: Segment) -> None:
        """Appends the next chunk (whose first observation repeats our last one)."""
        self.obs = map_structure(lambda mine, theirs: np.concatenate([mine[:-1], theirs]), self.obs, other.obs)
        self.actions = map_structure(_concatenate, self.actions, other.actions)
        self.rewards = np.concatenate([self.rewards, other.rewards])
        self.extras = {k: map_structure(_concatenate, self.extras[k], v) for k, v in other.extras.items() if k in self.extras}
        if self.infos is not None or other.infos is not None:
            mine = self.infos if self.infos is not None else [{}] * len(self.obs)
            theirs = other.infos if other.infos is not None else [{}] * len(other.obs)
            self.infos = mine[:-1] + theirs

    def take_steps(self) -> tuple[dict[str, Any], list[Any] | None]:
        """Cuts off every step whose action is known: rows ``obs, actions, rewards, end (0), episode, t``
        and extras, plus each row's info when infos are kept. What is left is the last observation
        (and its info): the episode's final observation, or the first of its next chunk."""
        num = len(self)
        if num == 0:
            return {}, None
        rows: dict[str, Any] = {
            "obs": map_structure(lambda leaf: leaf[:num], self.obs),
            "actions": self.actions,
            "rewards": self.rewards.astype(np.float64),
            "end": np.zeros(num, dtype=np.int8),
            "episode": np.full(num, self.key, dtype=np.int64),
            "t": np.arange(self.base, self.base + num, dtype=T_DTYPE),  # int32: RowWriter checks the range first
        }
        for name, values in self.extras.items():
            rows[EXTRA_PREFIX + name] = values
        infos = None if self.infos is None else self.infos[:num]
        self.base += num
        self.obs = map_structure(lambda leaf: leaf[num:], self.obs)
        self.actions = map_structure(lambda leaf: leaf[:0], self.actions)
        self.rewards = self.rewards[:0]
        self.extras = {name: map_structure(lambda leaf: leaf[:0], values) for name, values in self.extras.items()}
        if self.infos is not None:
            self.infos = self.infos[num:]
        return rows, infos

    def take_windows(self, k: int, end: int) -> tuple[dict[str, np.ndarray], list[list[Any]] | None]:
        """Cuts off every row whose k-step future is known (all of them once ``end`` is set).

        Returns the row columns and, if infos are kept, each row's infos ``[info_t .. info_t+k]``.
        """
        length = len(self)
        num = length if end != END_NONE else max(0, length - k + 1)
        if num == 0:
            return {}, None
        j = np.arange(num)
        offsets = np.arange(1, k + 1)
        future = np.minimum(j[:, None] + offsets[None, :], length)  # obs indices t+1 .. t+k (clamped)
        reward_idx = j[:, None] + offsets[None, :] - 1
        valid = (reward_idx < length).reshape(reward_idx.shape + (1,) * (self.rewards.ndim - 1))  # rewards may be (T, agents)
        rewards = np.where(valid, self.rewards[np.minimum(reward_idx, length - 1)], 0.0)
        to_end = length - j
        if end != END_NONE:
            horizon = np.minimum(to_end, k).astype(np.int32)
            end_code = np.where(to_end <= k, end, END_NONE).astype(np.int8)
        else:
            horizon = np.full(num, k, dtype=np.int32)
            end_code = np.zeros(num, dtype=np.int8)
        rows = {
            "obs": map_structure(lambda leaf: leaf[:num], self.obs),
            "next_obs": map_structure(lambda leaf: leaf[future], self.obs),
            "actions": map_structure(lambda leaf: leaf[:num], self.actions),
            "rewards": rewards.astype(np.float64),
            "horizon": horizon,
            "end": end_code,
            "episode": np.full(num, self.key, dtype=np.int64),
            "t": self.base + j.astype(np.int64),
        }
        for name, values in self.extras.items():
            rows[EXTRA_PREFIX + name] = map_structure(lambda leaf: leaf[:num], values)
        infos = None
        if self.infos is not None:
            infos = [self.infos[i : min(i + k, length) + 1] for i in range(num)]
        self.base += num
        self.obs = map_structure(lambda leaf: leaf[num:], self.obs)
        self.actions = map_structure(lambda leaf: leaf[num:], self.actions)
        self.rewards = self.rewards[num:]
        self.extras = {name: map_structure(lambda leaf: leaf[num:], values) for name, values in self.extras.items()}
        if self.infos is not None:
            self.infos = self.infos[num:]
        return rows, infos


@dataclass
class NStepBatch:
    """n-step transitions assembled from sampled rows (all arrays have the batch as leading axis)."""

    obs: Any  # arrays, or dicts/tuples of arrays (Dict/Tuple spaces)
    actions: Any
    rewards: np.ndarray  # sum_{i<n} gamma^i r_{t+i+1}
    next_obs: Any  # o_{t+n}
    n_steps: np.ndarray  # the n actually used (cut short at the episode's end)
    terminated: np.ndarray
    truncated: np.ndarray
    t: np.ndarray
    extras: dict[str, Any]


def _concatenate(mine: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    return np.concatenate([mine, theirs])


def n_step_batch(rows: Mapping[str, Any], n: np.ndarray, gamma: float, steps: np.ndarray, final: np.ndarray) -> NStepBatch:
    """n-step transitions from sampled sequences of rows (every field ``(B, L, ...)``, L >= max(n) + 1),
    the per-item ``n`` and what :meth:`RowWriter.available_steps` says of them (``steps`` available
    from each start, ``final``: the last of them reaches the episode's final observation).

    ``used = min(n, steps)`` (cut short only at an episode's end: the caller draws again the items of
    an unfinished episode with fewer than n steps, see :func:`complete`); terminated / truncated are
    set when the transition reaches the final observation. ``next_obs`` is row ``used``, which for a
    step reaching an unfinished episode's newest observation is padding: the caller fills it in.
    Vectorised: O(B * L).
    """
    span = np.arange(len(n))
    used = np.maximum(np.minimum(n, steps), 1)
    last = rows["mask"].shape[1] - 1
    end = rows["end"][span, np.minimum(steps, last)]
    positions = np.arange(rows["rewards"].shape[1])
    discounts = np.power(gamma, positions, dtype=np.float64)[None, :] * (positions[None, :] < used[:, None])
    reached_end = final & (used == steps)
    return NStepBatch(
        obs=map_structure(lambda leaf: leaf[:, 0], rows["obs"]),
        actions=map_structure(lambda leaf: leaf[:, 0], rows["actions"]),
        rewards=(rows["rewards"] * discounts).sum(axis=1),
        next_obs=map_structure(lambda leaf: leaf[span, np.minimum(used, last)], rows["obs"]),
        n_steps=used,
        terminated=reached_end & (end == END_TERMINATED),
        truncated=reached_end & (end == END_TRUNCATED),
        t=rows["t"][:, 0],
        extras={name[len(EXTRA_PREFIX) :]: map_structure(lambda leaf: leaf[:, 0], v) for name, v in rows.items() if name.startswith(EXTRA_PREFIX)},
    )


def complete(steps: np.ndarray, final: np.ndarray, need: np.ndarray) -> np.ndarray:
    """Which sampled starts can serve ``need`` steps: at least one step, and ``need`` of them unless
    their episode ends first (RLlib's prioritized buffer draws the others again)."""
    return (steps >= 1) & (final | (steps >= need))
