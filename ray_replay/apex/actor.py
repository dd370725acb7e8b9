"""Ape-X actors: epsilon-greedy on a vector env, n-step transitions with local priorities, and the
greedy evaluation.

Each :class:`Actor` steps ``envs_per_actor`` copies of the env (gymnasium's SyncVectorEnv, autoreset
SAME_STEP so the final observation of an episode is at hand), builds n-step transitions per env
(:mod:`ray_replay.apex.nstep`), computes their initial priorities |TD error| with its own copy of the
Q-network, and writes them with ``ReplayClient.add_batch(..., priorities=..., streams=env ids)``.
Pixel envs (stacked frames) write one-step rows instead, in step order per env (the stream), with
the priority of the n-step transition that starts there, so that the replay's frame-stack dedup
stores each frame once. Every ``weight_refresh_steps`` env steps it fetches the learner's latest weights (an object-store
reference from ``Learner.latest``). It pauses while it is too far ahead of the learner (see
:class:`~ray_replay.apex.config.ApexConfig`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import numpy as np
import ray

from ray_replay.apex.config import ApexConfig
from ray_replay.apex.envs import make_vector_env

__all__ = ["Actor", "evaluate", "make_vector_env"]


def evaluate(net: Any, env_id: str, episodes: int, seed: int, frame_stack: int = 4) -> float:
    """Mean return of ``episodes`` greedy episodes (one per env of a vector env, stepped together)."""
    env, obs = make_vector_env(env_id, episodes, seed, frame_stack)
    returns = np.zeros(episodes)
    running = np.ones(episodes, dtype=bool)
    try:
        while running.any():
            actions = net.q_values(obs).argmax(axis=1)
            obs, rewards, terminated, truncated, _ = env.step(actions)
            returns += rewards * running
            running &= ~(terminated | truncated)
    finally:
        env.close()
    return float(returns.mean())


def initial_priorities(net: Any, rows: dict[str, np.ndarray], eps: float) -> np.ndarray:
    """|y - Q(s, a)| + eps with y = R + d * max_a Q(s', a), from the actor's own network."""
    q = net.q_values(np.concatenate([rows["state"], rows["next_state"]]))
    n = len(rows["action"])
    q_sa = q[np.arange(n), rows["action"]]
    y = rows["reward"] + rows["discount"] * q[n:].max(axis=1)
    priorities: np.ndarray = np.abs(y - q_sa).astype(np.float64) + eps
    return priorities


@ray.remote(num_cpus=0)
class Actor:
    """One Ape-X actor (create with ``.options(max_concurrency=2)``: ``progress``/``stop`` answer during ``run``)."""

    def __init__(self, replay: Any, learner: Any, config: ApexConfig, index: int) -> None:
        import torch

        from ray_replay.apex.networks import check_spaces, is_image, make_network
        from ray_replay.apex.nstep import NStepBuilder
        from ray_replay.distributed import ReplayClient

        torch.set_num_threads(1)
        self.config = config
        self.index = index
        self.epsilon = config.epsilon(index)
        self.seed = config.seed * 100_003 + 1_000 * index
        self.env, self.obs = make_vector_env(config.env_id, config.envs_per_actor, self.seed, config.frame_stack)
        obs_shape, num_actions = check_spaces(self.env.single_observation_space, self.env.single_action_space)
        self.num_actions = num_actions
        self.net = make_network(obs_shape, num_actions, config.hidden)
        # Image envs write one-step rows (frame-stack dedup stores each frame once); the learner rebuilds
        # the n-step transitions from sequences of n rows. Vector envs write n-step rows.
        self.one_step = is_image(obs_shape)
        self.builder = NStepBuilder(config.envs_per_actor, config.n_step, config.gamma, one_step=self.one_step)
        self.client = ReplayClient(replay, batch_rows=config.actor_batch_rows, prefetch=0, seed=self.seed)
        self.learner = learner
        self.rng = np.random.default_rng(self.seed)
        self.env_ids = index * config.envs_per_actor + np.arange(config.envs_per_actor)
        self._stop = threading.Event()
        self._version = 0
        self._replay_counts = (0, 0, 0)  # replay adds and samples (the rate limiter's counters) at the last refresh, own inserts then
        self.env_steps = 0
        self.inserted = 0
        self.episodes = 0
        self.paused_s = 0.0
        self._returns = np.zeros(config.envs_per_actor)
        self._recent: deque[float] = deque(maxlen=20)
        self._pending: list[dict[str, np.ndarray]] = []
        self._pending_rows = 0
        self.refresh()

    def refresh(self) -> None:
        """Fetches the learner's latest weights when they are newer than the local copy."""
        from ray_replay.apex.networks import set_weights

        latest = ray.get(self.learner.latest.remote())
        self._replay_counts = (latest["replay_adds"], latest["replay_samples"], self.inserted)
        if latest["version"] != self._version:
            set_weights(self.net, ray.get(latest["weights"][0]))
            self._version = latest["version"]

    def progress(self) -> dict[str, Any]:
        recent = list(self._recent)
        return {"env_steps": self.env_steps, "inserted": self.inserted, "episodes": self.episodes, "epsilon": self.epsilon,
                "weights_version": self._version, "paused_s": self.paused_s,
                "recent_return": float(np.mean(recent)) if recent else None}

    def stop(self) -> None:
        self._stop.set()

    def _ahead(self) -> bool:
        """True while the replay holds more inserts than the learner's sampling allows for (Reverb's
        two-sided ratio). It uses the very counters of the replay's rate limiter (as the learner last saw
        them, plus this actor's inserts since), so the two sides can never both wait: the learner waits
        while samples > samples_per_insert * adds + error_buffer - batch, the actors while
        samples_per_insert * adds > samples + error_buffer. (A restarted shard's counters restart too,
        on both sides alike.)"""
        cfg = self.config
        adds, samples, inserted_then = self._replay_counts
        adds += self.inserted - inserted_then
        if adds <= cfg.min_size_to_sample + cfg.batch_size * cfg.updates_per_sample:
            return False
        return cfg.samples_per_insert * adds > samples + cfg.error_buffer

    def _pace(self) -> None:
        if not self._ahead():
            return
        started = time.monotonic()
        while not self._stop.is_set():
            self.refresh()
            if not self._ahead():
                break
            time.sleep(0.02)  # each refresh is a call on the learner (its GIL): poll gently
        self.paused_s += time.monotonic() - started

    def _write(self) -> None:
        if not self._pending:
            return
        # (values as Any: else mypy matches **rows against add_batch's wait: bool)
        rows: dict[str, Any] = {k: np.concatenate([p[k] for p in self._pending]) for k in self._pending[0]}
        self._pending, self._pending_rows = [], 0
        priorities = initial_priorities(self.net, rows, self.config.priority_eps)  # |n-step TD| of the row's transition
        streams = self.env_ids[rows.pop("env")]
        if self.one_step:
            rows = {"state": rows["state"], "action": rows["action"], "reward": rows["step_reward"],
                    "next_state": rows["step_next_state"], "terminated": rows["step_terminated"], "truncated": rows["step_truncated"]}
        self.client.add_batch(priorities=priorities, streams=streams, **rows)
        self.inserted += len(priorities)

    def run(self, max_steps: int | None = None) -> dict[str, Any]:
        """Acts until stop() or ``max_steps`` env steps; writes everything it built; returns progress()."""
        cfg = self.config
        since_refresh = 0
        while not self._stop.is_set() and (max_steps is None or self.env_steps < max_steps):
            if since_refresh >= cfg.weight_refresh_steps:
                self.refresh()
                since_refresh = 0
            self._pace()
            actions = self.net.q_values(self.obs).argmax(axis=1)
            explore = self.rng.random(len(actions)) < self.epsilon
            if explore.any():
                actions[explore] = self.rng.integers(self.num_actions, size=int(explore.sum()))
            next_obs, rewards, terminated, truncated, infos = self.env.step(actions)
            ended = terminated | truncated
            final_obs = infos.get("final_obs") if ended.any() else None
            rows = self.builder.step(self.obs, actions, rewards, next_obs, terminated, truncated, final_obs)
            self._returns += rewards
            for j in np.flatnonzero(ended):
                self._recent.append(float(self._returns[j]))
                self._returns[j] = 0.0
                self.episodes += 1
            self.obs = next_obs
            self.env_steps += len(actions)
            since_refresh += len(actions)
            if rows is not None:
                self._pending.append(rows)
                self._pending_rows += len(rows["action"])
                if self._pending_rows >= cfg.actor_batch_rows:
                    self._write()
        self._write()
        self.client.flush()
        return self.progress()
