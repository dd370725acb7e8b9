"""n-step transitions from a vector env, one window per env (numpy only, no torch).

A transition from step t is (s_t, a_t, R, s', d) with R = sum_{k<m} gamma^k r_{t+k}, s' = s_{t+m} and
the bootstrap discount d = gamma^m, where m = n, or fewer steps when the episode ends first:

* terminated at step t + m - 1: d = 0 (no bootstrap: the episode's value past its end is 0);
* truncated (time limit) at step t + m - 1: d = gamma^m and s' is the *final* observation of the
  episode (gymnasium's ``final_obs``, not the reset observation that the vector env returns).

The learner's target is then y = R + d * Q_target(s', argmax_a Q(s', a)).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

__all__ = ["NStepBuilder"]


class NStepBuilder:
    """Turns one-step results of ``num_envs`` envs into n-step transitions.

    ``step`` takes what a gymnasium vector env (autoreset mode SAME_STEP) returns for one step and
    gives back the transitions completed by it, as a dict of arrays with fields state, action, reward,
    next_state, discount and env (the env index, for the replay's ``streams``).
    """

    def __init__(self, num_envs: int, n: int, gamma: float) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.num_envs = num_envs
        self.n = n
        self.gamma = float(gamma)
        self._windows: list[deque[tuple[np.ndarray, int, float]]] = [deque() for _ in range(num_envs)]
        self._powers = self.gamma ** np.arange(n + 1)

    def _emit(self, out: list[tuple[Any, ...]], env: int, next_state: np.ndarray, terminated: bool) -> None:
        """Emits the oldest transition of env's window, bootstrapping from next_state."""
        window = self._windows[env]
        m = len(window)
        rewards = np.fromiter((w[2] for w in window), np.float64, m)
        ret = float(rewards @ self._powers[:m])
        state, action, _ = window.popleft()
        out.append((state, action, ret, next_state, 0.0 if terminated else float(self._powers[m]), env))

    def step(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, next_obs: np.ndarray, terminated: np.ndarray,
             truncated: np.ndarray, final_obs: Any = None) -> dict[str, np.ndarray] | None:
        """One vector step: obs s_t, actions a_t, rewards r_t, next_obs (reset observations for the envs
        whose episode ended), terminated, truncated, and final_obs (per env, the last observation of an
        ended episode; gymnasium's ``infos["final_obs"]``). Returns the completed transitions or None."""
        out: list[tuple[Any, ...]] = []
        for j in range(self.num_envs):
            window = self._windows[j]
            window.append((obs[j], int(actions[j]), float(rewards[j])))
            ended = bool(terminated[j]) or bool(truncated[j])
            if ended:
                last = next_obs[j] if final_obs is None or final_obs[j] is None else final_obs[j]
                while window:
                    self._emit(out, j, last, bool(terminated[j]))
            elif len(window) == self.n:
                self._emit(out, j, next_obs[j], False)
        if not out:
            return None
        state, action, reward, next_state, discount, env = zip(*out)
        return {
            "state": np.asarray(state, np.float32),
            "action": np.asarray(action, np.int64),
            "reward": np.asarray(reward, np.float32),
            "next_state": np.asarray(next_state, np.float32),
            "discount": np.asarray(discount, np.float32),
            "env": np.asarray(env, np.int64),
        }

    def pending(self) -> int:
        """Steps taken but not yet emitted (at most n - 1 per env)."""
        return sum(len(w) for w in self._windows)
