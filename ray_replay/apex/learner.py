"""The Ape-X learner: double DQN on n-step targets, importance-weighted, priorities written back.

:func:`td_loss` is the loss of one batch (plain torch, tested against numpy); :class:`DQNCore` holds
the online and target networks and the optimizer; :class:`Learner` is the Ray actor that samples the
replay through a :class:`~ray_replay.distributed.ReplayClient`, updates the network, sends every
batch's new priorities |TD error| back, and publishes its weights through Ray's object store
(``ray.put``; :meth:`Learner.latest` hands the reference to actors and the evaluator). It is a
threaded actor, so ``latest``/``stop``/``save`` are answered while ``run`` trains.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
import torch.nn.functional as F

from ray_replay.apex.config import ApexConfig
from ray_replay.apex.networks import get_weights, is_image, make_network
from ray_replay.apex.nstep import nstep_from_sequences

__all__ = ["CHECKPOINT_NAME", "DQNCore", "Learner", "td_loss"]

CHECKPOINT_NAME = "apex-learner.pt"
FIELDS = ("state", "action", "reward", "next_state", "discount")


def td_loss(online: torch.nn.Module, target: torch.nn.Module, batch: Mapping[str, torch.Tensor], *, huber_delta: float = 1.0,
            double_q: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, TD errors) of an n-step batch.

    y = reward + discount * Q_target(next_state, a*), a* = argmax_a Q_online(next_state, a) (double DQN;
    argmax of Q_target without ``double_q``); td = y - Q_online(state, action);
    loss = mean(weights * huber(td)), with the replay's importance weights (1 when absent).
    """
    q = online(batch["state"]).gather(1, batch["action"].long().unsqueeze(1)).squeeze(1)
    with torch.no_grad():
        next_target = target(batch["next_state"])
        if double_q:
            best = online(batch["next_state"]).argmax(dim=1, keepdim=True)
        else:
            best = next_target.argmax(dim=1, keepdim=True)
        y = batch["reward"] + batch["discount"] * next_target.gather(1, best).squeeze(1)
    td = y - q
    per_row = F.huber_loss(q, y, reduction="none", delta=huber_delta)
    weights = batch.get("weights")
    if weights is not None:
        per_row = per_row * weights
    return per_row.mean(), td.detach()


class DQNCore:
    """Online and target Q-networks with Adam; ``train_step`` on a numpy batch returns |TD errors|."""

    def __init__(self, obs_shape: int | tuple[int, ...], num_actions: int, config: ApexConfig) -> None:
        self.config = config
        self.device = torch.device(config.device)
        torch.manual_seed(config.seed)
        self.obs_shape = (obs_shape,) if isinstance(obs_shape, int) else tuple(obs_shape)
        self.online = make_network(self.obs_shape, num_actions, config.hidden).to(self.device)
        self.target = copy.deepcopy(self.online)
        self.target.requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.online.parameters(), lr=config.lr)
        self.updates = 0

    def tensors(self, batch: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        out = {k: torch.as_tensor(np.asarray(batch[k]), device=self.device) for k in FIELDS}  # frames stay uint8: the network scales them
        if "weights" in batch:
            out["weights"] = torch.as_tensor(np.asarray(batch["weights"], np.float32), device=self.device)
        return out

    def train_step(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        """One gradient step; syncs the target every ``target_sync_updates``; returns |TD| per row."""
        loss, td = td_loss(self.online, self.target, self.tensors(batch), huber_delta=self.config.huber_delta,
                           double_q=self.config.double_q)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]  # untyped in torch
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.online.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.updates += 1
        if self.updates % self.config.target_sync_updates == 0:
            self.target.load_state_dict(self.online.state_dict())
        return td.abs().cpu().numpy().astype(np.float64)

    def state_dict(self) -> dict[str, Any]:
        return {"online": self.online.state_dict(), "target": self.target.state_dict(), "optimizer": self.optimizer.state_dict(),
                "updates": self.updates, "config": self.config.to_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.online.load_state_dict(state["online"])
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = int(state["updates"])

    def save(self, path: str | os.PathLike[str]) -> Path:
        """torch.save of the learner's state, written to a temporary file then renamed (never torn)."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        torch.save(self.state_dict(), tmp)
        tmp.replace(out)
        return out


@ray.remote(num_cpus=0)
class Learner:
    """The learner actor (create with ``.options(max_concurrency=4)``): ``run`` trains until ``stop``."""

    def __init__(self, replay: Any, config: ApexConfig, obs_shape: int | tuple[int, ...], num_actions: int) -> None:
        torch.set_num_threads(1)
        from ray_replay.distributed import ReplayClient

        self.config = config
        self.core = DQNCore(obs_shape, num_actions, config)
        self.sequences = is_image(self.core.obs_shape)  # one-step rows: sample sequences of n_step, rebuild the n-step transitions
        self.client = ReplayClient(replay, prefetch=config.prefetch, seed=config.seed)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sampled = 0
        self._sample_waits = 0
        self._version = 0
        self._latest: dict[str, Any] = {}
        self._publish()

    def _publish(self) -> None:
        ref = ray.put(get_weights(self.core.online))
        size = sum(s.size for s in self.client.snapshots)
        with self._lock:
            self._version += 1
            self._latest = {"version": self._version, "weights": [ref], "updates": self.core.updates, "sampled": self._sampled,
                            "replay_size": size, "time": time.monotonic()}

    def latest(self) -> dict[str, Any]:
        """{"version", "weights": [ObjectRef of {name: array}], "updates", "sampled", "replay_size", "time"}, and
        the replay's row counters as the rate limiter sees them now ("replay_adds", "replay_samples": the
        learner's latest shard snapshots, refreshed while it waits too), which the actors pace on."""
        snapshots = self.client.snapshots
        with self._lock:
            out = dict(self._latest)
        out["replay_adds"] = sum(s.adds for s in snapshots)
        out["replay_samples"] = sum(s.samples for s in snapshots)
        return out

    def stop(self) -> None:
        self._stop.set()

    def save(self, path: str) -> str:
        with self._lock:
            return str(self.core.save(path))

    def run(self, max_updates: int | None = None, seconds: float | None = None) -> dict[str, Any]:
        """Samples, learns and writes priorities back until stop(), ``max_updates`` or ``seconds``."""
        from ray_replay.distributed import ShardUnavailableError

        cfg = self.config
        end = None if seconds is None else time.monotonic() + seconds
        checkpoint = Path(cfg.checkpoint_dir) / CHECKPOINT_NAME if cfg.checkpoint_dir else None
        next_checkpoint = time.monotonic() + cfg.checkpoint_every_s
        started = time.monotonic()
        while not self._stop.is_set() and (max_updates is None or self.core.updates < max_updates):
            if end is not None and time.monotonic() >= end:
                break
            beta = round(cfg.beta_at(self.core.updates), 2)  # a changed beta drops the prefetched rounds: change it rarely
            rows = cfg.batch_size * cfg.updates_per_sample
            try:
                if self.sequences:
                    batch = nstep_from_sequences(self.client.sample(rows, beta=beta, seq_len=cfg.n_step), cfg.gamma)
                else:
                    batch = self.client.sample(rows, beta=beta)
            except (TimeoutError, ShardUnavailableError):
                self._sample_waits += 1
                continue
            td = np.empty(rows)
            for k in range(cfg.updates_per_sample):  # one sample call, one priority update: Ray's per-call cost shared
                part = slice(k * cfg.batch_size, (k + 1) * cfg.batch_size)
                with self._lock:
                    td[part] = self.core.train_step({name: column[part] for name, column in batch.items()})
                if self.core.updates % cfg.publish_every_updates == 0:
                    self._publish()
            self.client.update_priorities(batch["ids"], td + cfg.priority_eps)
            self._sampled += rows
            if checkpoint is not None and time.monotonic() >= next_checkpoint:
                self.save(str(checkpoint))
                next_checkpoint = time.monotonic() + cfg.checkpoint_every_s
        self._publish()
        if checkpoint is not None:
            self.save(str(checkpoint))
        self.client.flush()
        return {"updates": self.core.updates, "sampled": self._sampled, "sample_waits": self._sample_waits,
                "dropped_priority_updates": self.client.dropped_priority_updates, "seconds": time.monotonic() - started}
