"""``ray-replay demo``: Ape-X DQN (ray_replay.apex) by default; ``--synthetic``: a sharded prioritized
replay fed by writer actors and drained by a learner, as below.

The synthetic demo starts a local Ray on loopback (or joins ``--address``), creates a ReplayCoordinator with 2 prioritized
shards, runs writer actors stepping CartPole (gymnasium, if installed) or a synthetic environment
(obs float32[8]) and a learner that samples 512 and updates priorities, prints progress every second
and a summary at the end. ``--local`` instead fills and samples each local buffer type, without Ray.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np

__all__ = ["main"]

NUM_WRITERS = 3
NUM_SHARDS = 2
CAPACITY = 500_000
SAMPLE_BATCH = 512
STEPS_PER_BATCH = 1000  # transitions a writer collects before handing them to its ReplayClient


def _local(seconds: float) -> int:
    """Fill and sample each local buffer type for a share of ``seconds``; print rows/s."""
    from ray_replay import BUFFER_TYPES, ReplayBuffer

    rng = np.random.default_rng(0)
    n = 100_000
    rows: dict[str, np.ndarray] = {
        "state": rng.standard_normal((n, 8), dtype=np.float32),
        "action": rng.integers(0, 4, n),
        "reward": rng.standard_normal(n, dtype=np.float32),
        "next_state": rng.standard_normal((n, 8), dtype=np.float32),
        "done": rng.random(n) < 0.01,
    }
    budget = max(seconds / len(BUFFER_TYPES) / 2, 0.2)
    print(f"{'buffer':<12} {'add_batch rows/s':>18} {'sample(512) rows/s':>20}")
    for buffer_type in BUFFER_TYPES:
        buf = ReplayBuffer(10 * n, buffer_type, seed=0, on_full="evict")
        added, start = 0, time.perf_counter()
        while time.perf_counter() - start < budget:
            buf.add_batch(**rows)
            added += n
        add_rate = added / (time.perf_counter() - start)
        sampled, start = 0, time.perf_counter()
        while time.perf_counter() - start < budget and len(buf) >= SAMPLE_BATCH:
            buf.sample(SAMPLE_BATCH)
            sampled += SAMPLE_BATCH
        print(f"{buffer_type:<12} {add_rate:>18,.0f} {sampled / (time.perf_counter() - start):>20,.0f}")
    return 0


def _make_env(seed: int) -> Any:
    """CartPole when gymnasium is importable, else a synthetic environment with obs float32[8]."""
    try:
        import gymnasium

        env = gymnasium.make("CartPole-v1")
        env.reset(seed=seed)
        return env
    except ImportError:
        return _SyntheticEnv(seed)


class _SyntheticEnv:
    """A random walk in R^8 with episodes of random length: cheap transitions of the DIST-1 shape."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.action_space = type("Space", (), {"sample": lambda _: int(self.rng.integers(4))})()
        self.obs = np.zeros(8, np.float32)

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        self.obs = self.rng.standard_normal(8).astype(np.float32)
        return self.obs, {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.obs = (self.obs + self.rng.standard_normal(8).astype(np.float32) * 0.1).astype(np.float32)
        return self.obs, float(action == 0), bool(self.rng.random() < 0.01), False, {}


def _actors() -> tuple[Any, Any]:
    import ray

    from ray_replay.distributed import ReplayClient

    @ray.remote(num_cpus=0)
    class Writer:
        """Steps an environment with a random policy; sends each STEPS_PER_BATCH steps as one batch."""

        def __init__(self, replay: Any, seed: int) -> None:
            self.env = _make_env(seed)
            self.client = ReplayClient(replay, batch_rows=4096)

        def run(self, seconds: float) -> int:
            obs, _ = self.env.reset()
            columns: dict[str, list[Any]] = {k: [] for k in ("state", "action", "reward", "next_state", "done")}
            end, steps = time.monotonic() + seconds, 0
            while time.monotonic() < end:
                action = self.env.action_space.sample()
                next_obs, reward, terminated, truncated, _ = self.env.step(action)
                for key, value in zip(columns, (obs, action, reward, next_obs, terminated)):
                    columns[key].append(value)
                obs = self.env.reset()[0] if terminated or truncated else next_obs
                steps += 1
                if len(columns["action"]) == STEPS_PER_BATCH:
                    self.client.add_batch(
                        np.asarray(columns["state"], np.float32),
                        np.asarray(columns["action"], np.int64),
                        np.asarray(columns["reward"], np.float32),
                        np.asarray(columns["next_state"], np.float32),
                        np.asarray(columns["done"], np.bool_),
                    )
                    for v in columns.values():
                        v.clear()
            self.client.close()
            return steps

    @ray.remote(num_cpus=0)
    class Learner:
        """Samples batches and sets priorities to a stand-in TD error (|reward - mean| + noise)."""

        def __init__(self, replay: Any) -> None:
            self.client = ReplayClient(replay, prefetch=2, seed=0)
            self.rng = np.random.default_rng(0)

        def run(self, seconds: float) -> dict[str, float]:
            end, latencies = time.monotonic() + seconds, []
            while time.monotonic() < end:
                start = time.perf_counter()
                try:
                    batch = self.client.sample(SAMPLE_BATCH)
                except TimeoutError:  # the rate limiter found too few rows yet
                    continue
                latencies.append(time.perf_counter() - start)
                td = np.abs(batch["reward"] - batch["reward"].mean()) + self.rng.exponential(0.1, SAMPLE_BATCH)
                self.client.update_priorities(batch["ids"], td)
            self.client.close()
            ms = np.array(latencies or [0.0]) * 1e3
            return {"batches": len(latencies), "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}

    return Writer, Learner


def _distributed(address: str | None, seconds: float) -> int:
    import ray

    from ray_replay.distributed import ReplayCoordinator
    from ray_replay.distributed.runtime import init_ray

    if address is None:
        init_ray(num_cpus=max(os.cpu_count() or 2, 4), include_dashboard=False)
        print("started a local Ray on loopback")
    else:
        init_ray(address=address)
        print(f"joined the Ray cluster at {address}")
    actors: list[Any] = []
    try:
        replay = ReplayCoordinator.remote(  # type: ignore[attr-defined]  # @ray.remote's ActorClass
            capacity=CAPACITY, num_shards=NUM_SHARDS, buffer_type="prioritized", alpha=0.6, beta=0.4, seed=0,
            min_size_to_sample=SAMPLE_BATCH, sample_timeout_s=2.0,
        )
        actors.append(replay)
        Writer, Learner = _actors()
        writers = [Writer.remote(replay, seed) for seed in range(NUM_WRITERS)]
        learner = Learner.remote(replay)
        actors += [*writers, learner]
        env = "CartPole-v1" if _make_env(0).__class__.__name__ != "_SyntheticEnv" else "synthetic obs float32[8]"
        print(f"{NUM_WRITERS} writers ({env}), 1 learner (batch {SAMPLE_BATCH}), {NUM_SHARDS} prioritized shards, {seconds:.0f} s")
        ray.get([a.__ray_ready__.remote() for a in (*writers, learner)])  # actors up: time the work only
        start = time.monotonic()
        runs = [w.run.remote(seconds) for w in writers] + [learner.run.remote(seconds)]
        last, previous = start, ray.get(replay.stats.remote())["total"]
        while ray.wait(runs, num_returns=len(runs), timeout=1.0)[1]:
            total = ray.get(replay.stats.remote())["total"]
            now = time.monotonic()
            dt = now - last
            print(
                f"  t={now - start:5.1f}s  size {total['size']:>8,}  "
                f"inserted {(total['adds'] - previous['adds']) / dt:>10,.0f}/s  "
                f"sampled {(total['samples'] - previous['samples']) / dt:>10,.0f}/s  "
                f"priority mass {total['total_priority']:>12,.1f}",
                flush=True,
            )
            last, previous = now, total
        elapsed = time.monotonic() - start
        steps, learned = sum(ray.get(runs[:-1])), ray.get(runs[-1])
        stats = ray.get(replay.stats.remote())
        print("\nsummary")
        print("| metric | value |\n|---|---|")
        print(f"| inserted/s | {steps / elapsed:,.0f} |")
        print(f"| sampled/s | {learned['batches'] * SAMPLE_BATCH / elapsed:,.0f} |")
        print(f"| sample latency p50 / p99 (learner) | {learned['p50_ms']:.2f} / {learned['p99_ms']:.2f} ms |")
        print(f"| priority updates (stale) | {stats['total']['priority_updates']:,} ({stats['total']['stale_priority_updates']:,}) |")
        print("\n| shard | node | size | priority mass |\n|---|---|---|---|")
        for s in stats["shards"]:
            print(f"| {s['shard']} | {s['node_id'][:8]} | {s['size']:,} | {s['total_priority']:,.1f} |")
        ray.get(replay.shutdown.remote())
    finally:
        for actor in actors:
            ray.kill(actor)
        ray.shutdown()
    return 0


def main(args: argparse.Namespace) -> int:
    """Entry point of ``ray-replay demo``: args.address (None: a local Ray), args.seconds, args.local,
    args.synthetic; without either of those, the Ape-X agent (ray_replay.apex.run.main)."""
    apex = not (args.local or getattr(args, "synthetic", False))
    if args.seconds is None:
        args.seconds = 300.0 if apex else 15.0
    if args.seconds <= 0:
        raise SystemExit("--seconds must be > 0")
    if args.local:
        return _local(args.seconds)
    if not apex:
        return _distributed(args.address, args.seconds)
    try:
        from ray_replay.apex.run import main as apex_main
    except ImportError as e:
        raise SystemExit(f"the Ape-X demo needs torch and gymnasium (pip install 'ray_replay[apex]'): {e}; "
                         "or run the synthetic demo: ray-replay demo --synthetic") from None
    return apex_main(args)
