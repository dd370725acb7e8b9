"""Ape-X hyperparameters: one dataclass shared by the driver, the actors and the learner."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["ApexConfig", "actor_epsilon"]


def actor_epsilon(i: int, num_actors: int, base: float = 0.4, alpha: float = 7.0) -> float:
    """Actor i's exploration rate on the Ape-X ladder: base^(1 + alpha i / (N - 1)); base for N = 1."""
    if num_actors < 1 or not 0 <= i < num_actors:
        raise ValueError(f"actor index {i} out of range for {num_actors} actors")
    if num_actors == 1:
        return base
    return float(base ** (1.0 + alpha * i / (num_actors - 1)))


@dataclass
class ApexConfig:
    """Everything one Ape-X run needs. The defaults solve CartPole-v1 on 2 CPU cores.

    Rate control is Reverb's two-sided ratio: the learner may sample at most
    ``samples_per_insert * inserts + error_buffer`` rows (the replay's rate limiter) and the actors
    pause while ``samples_per_insert * inserts > samples + error_buffer`` (the same counters), so
    neither side spends the shared CPUs on work the other cannot use.
    """

    env_id: str = "CartPole-v1"
    frame_stack: int = 4  # image envs only: frames per observation (ray_replay.apex.envs)
    num_actors: int = 2
    envs_per_actor: int = 8
    seed: int = 0
    # network
    hidden: tuple[int, ...] = (128, 128)
    # learning
    gamma: float = 0.99
    n_step: int = 3
    lr: float = 1e-3
    # 2 x 256 rather than 4 x 128 (the same 512 rows per sample call): median time to 475 on CartPole
    # 14.7 s against 23.8 s over 8 and 5 seeded runs (2 cores; benchmarks/results/apex.md has the 3-seed benchmark)
    batch_size: int = 256
    updates_per_sample: int = 2  # gradient steps on consecutive parts of one sampled batch (Ray's per-call cost shared)
    grad_clip: float = 10.0
    target_sync_updates: int = 500
    huber_delta: float = 1.0
    double_q: bool = True
    # replay
    capacity: int = 20_000  # CartPole: fresher data solved more seeds than 100k (benchmarks/results/apex.md)
    num_shards: int = 2
    alpha: float = 0.6
    beta: float = 0.4
    beta_final: float = 1.0
    beta_anneal_updates: int = 20_000
    priority_eps: float = 1e-3
    min_size_to_sample: int = 2_000
    samples_per_insert: float = 16.0
    error_buffer: float = 20_000.0
    sample_timeout_s: float = 1.0
    prefetch: int = 2
    # actors
    weight_refresh_steps: int = 400  # env steps of one actor between weight refreshes
    actor_batch_rows: int = 256  # n-step transitions an actor gathers before it writes them
    epsilon_base: float = 0.4
    epsilon_alpha: float = 7.0
    # publishing, evaluation, checkpoints
    publish_every_updates: int = 50
    eval_episodes: int = 10
    eval_every_s: float = 1.0  # an evaluation runs only once the learner has published new weights
    target_return: float = 475.0
    checkpoint_dir: str | None = None
    checkpoint_every_s: float = 30.0
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("num_actors", "envs_per_actor", "n_step", "batch_size", "updates_per_sample", "target_sync_updates", "capacity", "num_shards",
                     "weight_refresh_steps", "actor_batch_rows", "publish_every_updates", "eval_episodes", "frame_stack"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if not self.samples_per_insert > 0:
            raise ValueError(f"samples_per_insert must be > 0, got {self.samples_per_insert}")
        if self.min_size_to_sample < self.batch_size * self.updates_per_sample:
            raise ValueError(f"min_size_to_sample ({self.min_size_to_sample}) must be >= batch_size x updates_per_sample")
        self.hidden = tuple(int(h) for h in self.hidden)

    def epsilon(self, i: int) -> float:
        """Actor i's epsilon on this run's ladder."""
        return actor_epsilon(i, self.num_actors, self.epsilon_base, self.epsilon_alpha)

    def beta_at(self, updates: int) -> float:
        """The importance-sampling exponent after ``updates`` learner updates (linear to beta_final)."""
        frac = min(1.0, updates / max(self.beta_anneal_updates, 1))
        return self.beta + frac * (self.beta_final - self.beta)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["hidden"] = list(self.hidden)
        return out
