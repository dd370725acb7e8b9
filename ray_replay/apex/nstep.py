"""n-step transitions from a vector env, one window per env (numpy only, no torch).

A transition from step t is (s_t, a_t, R, s', d) with R = sum_{k<m} gamma^k r_{t+k}, s' = s_{t+m} and
the bootstrap discount d = gamma^m, where m = n, or fewer steps when the episode ends first:

* terminated at step t + m - 1: d = 0 (no bootstrap: the episode's value past its end is 0);
* truncated (time limit) at step t + m - 1: d = gamma^m and s' is the *final* observation of the
  episode (gymnasium's ``final_obs``, not the reset observation that the vector env returns).

The learner's target is then y = R + d * Q_target(s', argmax_a Q(s', a)).

For pixel envs the replay holds one-step rows instead (so that frame-stack dedup stores each frame
once: a row's state is the previous row's next_state and next_state is state moved on by one frame):
``NStepBuilder(..., one_step=True)`` also returns, for each n-step transition, the one-step row of its
first step (``step_reward``, ``step_next_state``, ``step_terminated``, ``step_truncated``), emitted in
step order per env; the learner samples sequences of n such rows and rebuilds the n-step transition
with :func:`nstep_from_sequences`.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

__all__ = ["NStepBuilder", "nstep_from_sequences"]


class NStepBuilder:
    """Turns one-step results of ``num_envs`` envs into n-step transitions.

    ``step`` takes what a gymnasium vector env (autoreset mode SAME_STEP) returns for one step and
    gives back the transitions completed by it, as a dict of arrays with fields state, action, reward,
    next_state, discount and env (the env index, for the replay's ``streams``).
    """

    def __init__(self, num_envs: int, n: int, gamma: float, one_step: bool = False) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.num_envs = num_envs
        self.n = n
        self.gamma = float(gamma)
        self.one_step = one_step
        # per env: (s_t, a_t, r_t) and, with one_step, (s_{t+1}, terminated_t, truncated_t) once known
        self._windows: list[deque[tuple[Any, ...]]] = [deque() for _ in range(num_envs)]
        self._powers = self.gamma ** np.arange(n + 1)

    def _emit(self, out: list[tuple[Any, ...]], env: int, next_state: np.ndarray, terminated: bool) -> None:
        """Emits the oldest transition of env's window, bootstrapping from next_state."""
        window = self._windows[env]
        m = len(window)
        rewards = np.fromiter((w[2] for w in window), np.float64, m)
        ret = float(rewards @ self._powers[:m])
        state, action, reward, *step = window.popleft()
        out.append((state, action, ret, next_state, 0.0 if terminated else float(self._powers[m]), env, reward, *step))

    def step(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, next_obs: np.ndarray, terminated: np.ndarray,
             truncated: np.ndarray, final_obs: Any = None) -> dict[str, np.ndarray] | None:
        """One vector step: obs s_t, actions a_t, rewards r_t, next_obs (reset observations for the envs
        whose episode ended), terminated, truncated, and final_obs (per env, the last observation of an
        ended episode; gymnasium's ``infos["final_obs"]``). Returns the completed transitions or None."""
        out: list[tuple[Any, ...]] = []
        for j in range(self.num_envs):
            window = self._windows[j]
            ended = bool(terminated[j]) or bool(truncated[j])
            last = next_obs[j] if not ended or final_obs is None or final_obs[j] is None else final_obs[j]
            step: tuple[Any, ...] = (obs[j], int(actions[j]), float(rewards[j]))
            window.append(step + (last, bool(terminated[j]), bool(truncated[j])) if self.one_step else step)
            if ended:
                while window:
                    self._emit(out, j, last, bool(terminated[j]))
            elif len(window) == self.n:
                self._emit(out, j, next_obs[j], False)
        if not out:
            return None
        columns = list(zip(*out))
        dtype = np.asarray(obs).dtype if np.asarray(obs).dtype == np.uint8 else np.float32  # frames stay uint8
        rows = {
            "state": np.asarray(columns[0], dtype),
            "action": np.asarray(columns[1], np.int64),
            "reward": np.asarray(columns[2], np.float32),
            "next_state": np.asarray(columns[3], dtype),
            "discount": np.asarray(columns[4], np.float32),
            "env": np.asarray(columns[5], np.int64),
        }
        if self.one_step:
            rows.update(step_reward=np.asarray(columns[6], np.float32), step_next_state=np.asarray(columns[7], dtype),
                        step_terminated=np.asarray(columns[8], np.float32), step_truncated=np.asarray(columns[9], np.float32))
        return rows

    def pending(self) -> int:
        """Steps taken but not yet emitted (at most n - 1 per env)."""
        return sum(len(w) for w in self._windows)


def nstep_from_sequences(batch: dict[str, np.ndarray], gamma: float) -> dict[str, np.ndarray]:
    """The n-step transitions of a sequence sample of one-step rows (``sample(B, seq_len=n)``: fields
    (B, n, ...), ``mask`` (B, n) a prefix of valid steps, ending at the row whose ``terminated`` or
    ``truncated`` is set or at its stream's newest row). With m the valid steps of a sequence:
    state/action of its first step, reward = sum_{k<m} gamma^k r_k, next_state = the m-th step's
    next_state, discount = 0 if that step terminated else gamma^m (a sequence cut short by the newest
    row is an m-step transition: still an unbiased target). ``ids``, ``weights``, ``probabilities``
    (one per sequence) pass through. O(B n) numpy."""
    mask = np.asarray(batch["mask"], bool)
    rows, length = mask.shape
    m = mask.sum(axis=1)
    if (m < 1).any():
        raise ValueError("every sequence needs at least one valid step")
    last = m - 1
    pick = np.arange(rows)
    powers = float(gamma) ** np.arange(length + 1)
    ret = (np.asarray(batch["reward"], np.float64) * mask * powers[:length]).sum(axis=1)
    terminal = np.asarray(batch["terminated"])[pick, last] != 0
    out = {"state": np.asarray(batch["state"])[:, 0], "action": np.asarray(batch["action"])[:, 0].astype(np.int64),
           "reward": ret.astype(np.float32), "next_state": np.asarray(batch["next_state"])[pick, last],
           "discount": np.where(terminal, 0.0, powers[m]).astype(np.float32)}
    for key in ("ids", "weights", "probabilities"):
        if key in batch:
            out[key] = np.asarray(batch[key])
    return out
