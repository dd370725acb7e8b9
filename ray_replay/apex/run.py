"""Running Ape-X: the replay, the learner and the actors on a running Ray, evaluation, summary, plot.

:func:`train` is the whole run (Ray must be initialized); :func:`main` is ``ray-replay demo``: a local
Ray on loopback (or ``--address``), CartPole-v1 until the mean of 10 greedy episodes reaches 475 or
``--seconds`` pass, a live progress line, a summary table, a learning-curve PNG and ``--json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import ray

from ray_replay.apex.config import ApexConfig

__all__ = ["SUMMARY_KEYS", "main", "make_replay", "plot_curves", "replay_schema", "summary_table", "train"]

KILL_SETTLE_UPDATES = 500  # with kill_shard_at_s: learner updates after the kill before a return can end the run
SUMMARY_KEYS = ("solved", "eval_return", "env_steps", "learner_updates", "wall_s", "inserted_per_s", "sampled_per_s")


def replay_schema(obs_shape: int | tuple[int, ...]) -> dict[str, tuple[tuple[int, ...], Any]]:
    """The replay's row. Vector observations: an n-step transition with its bootstrap discount (0 at a
    terminal). Stacked frames (uint8 (frames, height, width)): a one-step row with its episode-end flags,
    which end the replay's sequences (the learner rebuilds n-step transitions from sequences of n)."""
    from ray_replay.apex.networks import is_image

    shape = (obs_shape,) if isinstance(obs_shape, int) else tuple(obs_shape)
    if is_image(shape):
        return {"state": (shape, np.uint8), "action": ((), np.int64), "reward": ((), np.float32), "next_state": (shape, np.uint8),
                "terminated": ((), np.float32), "truncated": ((), np.float32)}
    return {"state": (shape, np.float32), "action": ((), np.int64), "reward": ((), np.float32),
            "next_state": (shape, np.float32), "discount": ((), np.float32)}


def make_replay(config: ApexConfig, obs_shape: int | tuple[int, ...]) -> Any:
    """The sharded prioritized ReplayCoordinator of a run, rate limited by samples_per_insert; for stacked
    frames with frame-stack dedup (``next_state="dedup", frame_stack_axis=0``: each frame stored once)."""
    from ray_replay.apex.networks import is_image
    from ray_replay.distributed import ReplayCoordinator

    durability: dict[str, Any] = {}
    if is_image((obs_shape,) if isinstance(obs_shape, int) else tuple(obs_shape)):
        durability.update(next_state="dedup", frame_stack_axis=0)
    if config.checkpoint_dir:
        durability = {"checkpoint_dir": config.checkpoint_dir, "checkpoint_every_s": config.checkpoint_every_s}
    return ReplayCoordinator.remote(  # type: ignore[attr-defined]  # @ray.remote's ActorClass
        capacity=config.capacity, num_shards=config.num_shards, buffer_type="prioritized", alpha=config.alpha, beta=config.beta,
        seed=config.seed, min_size_to_sample=config.min_size_to_sample, samples_per_insert=config.samples_per_insert,
        error_buffer=config.error_buffer, sample_timeout_s=config.sample_timeout_s, schema=replay_schema(obs_shape),
        metrics=False, **durability)


def gym_errors() -> type[Exception]:
    """gymnasium's base error (an unknown env id raises one)."""
    from gymnasium import error

    return error.Error


def _spaces(env_id: str, frame_stack: int = 4) -> tuple[tuple[int, ...], int]:
    from ray_replay.apex.envs import make_env
    from ray_replay.apex.networks import check_spaces

    env = make_env(env_id, frame_stack)
    try:
        return check_spaces(env.observation_space, env.action_space)
    finally:
        env.close()


class _Line:
    """The live progress line: rewritten in place on a terminal, a plain line every few seconds otherwise."""

    def __init__(self, enabled: bool, every_s: float = 5.0) -> None:
        self.enabled = enabled
        self.tty = enabled and sys.stdout.isatty()
        self.every_s = every_s
        self.last = 0.0

    def show(self, text: str, force: bool = False) -> None:
        if not self.enabled:
            return
        if self.tty:
            print("\r" + text.ljust(118)[:160], end="", flush=True)
        elif force or time.monotonic() - self.last >= self.every_s:
            print(text, flush=True)
            self.last = time.monotonic()

    def done(self) -> None:
        if self.tty:
            print(flush=True)


def train(config: ApexConfig, seconds: float, *, progress: bool = True, kill_shard_at_s: float | None = None,
          on_eval: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Trains on the running Ray until the evaluation return reaches ``config.target_return`` or
    ``seconds`` of training pass; returns the summary (:data:`SUMMARY_KEYS`, the curve, the replay's
    counters, time and env steps to the target). ``kill_shard_at_s`` kills shard 0 (Ray restarts it)
    that many seconds into training, to show that learning goes on: then only the evaluation of
    weights trained KILL_SETTLE_UPDATES updates past the kill (on the replay as it is after it) ends
    the run."""
    import torch

    from ray_replay.apex.actor import Actor, evaluate
    from ray_replay.apex.learner import CHECKPOINT_NAME, Learner
    from ray_replay.apex.networks import make_network, set_weights

    torch.set_num_threads(1)
    obs_shape, num_actions = _spaces(config.env_id, config.frame_stack)
    replay = make_replay(config, obs_shape)
    learner = Learner.options(max_concurrency=4).remote(  # type: ignore[attr-defined]  # @ray.remote's ActorClass
        replay, config, obs_shape, num_actions)
    actors = [Actor.options(max_concurrency=2).remote(replay, learner, config, i)  # type: ignore[attr-defined]  # @ray.remote's ActorClass
              for i in range(config.num_actors)]
    handles = [replay, learner, *actors]
    net = make_network(obs_shape, num_actions, config.hidden)
    line = _Line(progress)
    curve: list[dict[str, Any]] = []
    events: list[str] = []
    solved_at: dict[str, Any] | None = None
    try:
        ray.get([a.__ray_ready__.remote() for a in (learner, *actors)])
        start = time.monotonic()
        runs = [a.run.remote() for a in actors]
        learner_run = learner.run.remote()
        next_eval, evaluated_version = start + config.eval_every_s, 0
        killed = kill_shard_at_s is None
        counts_from_update = 0  # with a shard kill: only weights trained this far past it can end the run
        kill: dict[str, Any] | None = None
        last = (start, 0, 0, 0)  # time, env steps, updates, inserted
        rates = (0.0, 0.0, 0.0)
        while True:
            done, _ = ray.wait([learner_run, *runs], timeout=1.0)
            if done:  # a crash: raise it
                ray.get(done)
                break
            now = time.monotonic()
            elapsed = now - start
            latest = ray.get(learner.latest.remote())
            steps = ray.get([a.progress.remote() for a in actors])
            env_steps, inserted = sum(s["env_steps"] for s in steps), sum(s["inserted"] for s in steps)
            if now - last[0] >= 1.0:
                dt = now - last[0]
                rates = ((env_steps - last[1]) / dt, (latest["updates"] - last[2]) / dt,
                         (latest["updates"] - last[2]) * config.batch_size / dt)
                last = (now, env_steps, latest["updates"], inserted)
            if not killed and kill_shard_at_s is not None and elapsed >= kill_shard_at_s:
                shard = ray.get(replay.shard_handles.remote())[0]
                ray.kill(shard, no_restart=False)
                events.append(f"shard 0 killed at {elapsed:.1f} s ({env_steps} env steps, {latest['updates']} updates)")
                killed = True
                counts_from_update = latest["updates"] + KILL_SETTLE_UPDATES
                kill = {"at_s": elapsed, "env_steps": env_steps, "updates": latest["updates"], "counts_from_update": counts_from_update}
            if now >= next_eval and latest["version"] != evaluated_version and latest["updates"] > 0:
                set_weights(net, ray.get(latest["weights"][0]))
                ret = evaluate(net, config.env_id, config.eval_episodes, seed=10_000 + len(curve), frame_stack=config.frame_stack)
                evaluated_version = latest["version"]
                point = {"wall_s": elapsed, "env_steps": env_steps, "updates": latest["updates"], "eval_return": ret}
                curve.append(point)
                if on_eval is not None:
                    on_eval(point)
                next_eval = time.monotonic() + config.eval_every_s
                # with a shard kill, only the return of weights trained KILL_SETTLE_UPDATES updates past it counts
                if ret >= config.target_return and killed and latest["updates"] >= counts_from_update:
                    solved_at = point
            last_eval = curve[-1]["eval_return"] if curve else float("nan")
            line.show(f"  t={elapsed:5.0f}s  env steps {env_steps:>8,} ({rates[0]:>6,.0f}/s)  updates {latest['updates']:>7,} "
                      f"({rates[1]:>5,.0f}/s)  sampled {rates[2]:>7,.0f}/s  replay {latest['replay_size']:>7,}  eval {last_eval:6.1f}")
            if solved_at is not None or elapsed >= seconds:
                break
        for a in (learner, *actors):
            a.stop.remote()
        learned = ray.get(learner_run)
        acted = ray.get(runs)
        wall = time.monotonic() - start
        line.done()
        if not curve or (solved_at is None and curve[-1]["updates"] != learned["updates"]):
            latest = ray.get(learner.latest.remote())
            set_weights(net, ray.get(latest["weights"][0]))
            ret = evaluate(net, config.env_id, config.eval_episodes, seed=10_000 + len(curve), frame_stack=config.frame_stack)
            curve.append({"wall_s": wall, "env_steps": sum(a["env_steps"] for a in acted), "updates": learned["updates"],
                          "eval_return": ret})
        all_stats = ray.get(replay.stats.remote())
        stats = all_stats["total"]
        stats["frames_held"] = sum(s.get("frames_held", 0) for s in all_stats["shards"])  # dedup: frames stored once
        checkpoint = None
        if config.checkpoint_dir:
            checkpoint = ray.get(learner.save.remote(str(Path(config.checkpoint_dir) / CHECKPOINT_NAME)))
        ray.get(replay.shutdown.remote())
    finally:
        for h in handles:
            ray.kill(h)
    summary: dict[str, Any] = {
        "solved": solved_at is not None,
        "eval_return": solved_at["eval_return"] if solved_at else curve[-1]["eval_return"],
        "env_steps": sum(a["env_steps"] for a in acted),
        "learner_updates": learned["updates"],
        "wall_s": wall,
        "inserted_per_s": stats["adds"] / wall,
        "sampled_per_s": stats["samples"] / wall,
        "time_to_target_s": solved_at["wall_s"] if solved_at else None,
        "env_steps_to_target": solved_at["env_steps"] if solved_at else None,
        "target_return": config.target_return,
        "best_eval_return": max(p["eval_return"] for p in curve),
        "curve": curve,
        "events": events,
        "kill": kill,  # with kill_shard_at_s: when (s, env steps, updates) and the update from which a return counted
        "replay": {k: stats.get(k) for k in ("size", "adds", "samples", "priority_updates", "stale_priority_updates", "restarts",
                                             "dropped_priority_updates", "max_priority", "min_priority", "frames_held")},
        "learner": learned,
        "actors": acted,
        "learner_checkpoint": checkpoint,
        "config": config.to_dict(),
    }
    return summary


def summary_table(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:,.1f}"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return "-" if v is None else str(v)

    cfg = summary["config"]
    rows = [("env", cfg["env_id"]), ("actors x envs", f"{cfg['num_actors']} x {cfg['envs_per_actor']}"),
            ("solved (eval >= target)", summary["solved"]), ("eval return (mean of 10 greedy)", summary["eval_return"]),
            ("time to target (s)", summary["time_to_target_s"]), ("env steps to target", summary["env_steps_to_target"]),
            ("env steps", summary["env_steps"]), ("learner updates", summary["learner_updates"]), ("wall (s)", summary["wall_s"]),
            ("inserted/s", summary["inserted_per_s"]), ("sampled/s", summary["sampled_per_s"]),
            ("priority updates (stale)", f"{summary['replay']['priority_updates']:,} ({summary['replay']['stale_priority_updates']:,})"),
            ("replay size", summary["replay"]["size"])]
    lines = ["| metric | value |", "|---|---|"] + [f"| {k} | {fmt(v)} |" for k, v in rows]
    lines += [f"| event | {e} |" for e in summary["events"]]
    return "\n".join(lines)


def plot_curves(runs: dict[str, list[dict[str, Any]]], path: str | os.PathLike[str], target: float = 475.0,
                title: str = "Ape-X") -> bool:
    """Evaluation return against env steps and against wall-clock, one line per run; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, curve in runs.items():
        for ax, key in zip(axes, ("env_steps", "wall_s")):
            ax.plot([p[key] for p in curve], [p["eval_return"] for p in curve], marker=".", label=label)
    for ax, xlabel in zip(axes, ("env steps", "wall-clock (s)")):
        ax.axhline(target, color="grey", linestyle=":", linewidth=1)
        ax.set(xlabel=xlabel, ylabel="evaluation return (mean of greedy episodes)", title=title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(args: argparse.Namespace) -> int:
    """``ray-replay demo``: args.address, seconds, actors, env, json, plot, device, seed, checkpoint_dir."""
    from ray_replay.distributed.runtime import init_ray

    config = ApexConfig(env_id=args.env, num_actors=args.actors, seed=args.seed, device=args.device, checkpoint_dir=args.checkpoint_dir)
    try:
        _spaces(config.env_id, config.frame_stack)
    except (ValueError, ImportError, gym_errors()) as e:
        print(f"ray-replay demo: {config.env_id}: {e}", file=sys.stderr)
        return 2
    owns_ray = not ray.is_initialized()  # a caller's Ray (tests, notebooks) is used as it is and left running
    if owns_ray and args.address is None:
        init_ray(num_cpus=max(os.cpu_count() or 2, 4), include_dashboard=False, log_to_driver=False)
        print("started a local Ray on loopback")
    elif owns_ray:
        init_ray(address=args.address)
        print(f"joined the Ray cluster at {args.address}")
    print(f"Ape-X DQN on {config.env_id}: {config.num_actors} actors x {config.envs_per_actor} envs "
          f"(epsilon {', '.join(f'{config.epsilon(i):.3g}' for i in range(config.num_actors))}), 1 learner ({config.device}), "
          f"{config.num_shards} prioritized shards; until eval >= {config.target_return:g} or {args.seconds:g} s")
    try:
        summary = train(config, args.seconds)
    finally:
        if owns_ray:
            ray.shutdown()
    print("\nsummary\n" + summary_table(summary))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=1, default=str) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        if plot_curves({config.env_id: summary["curve"]}, args.plot, config.target_return, f"Ape-X DQN {config.env_id}"):
            print(f"wrote the learning curve to {args.plot}")
        else:
            print("matplotlib is not installed: no learning-curve PNG (pip install matplotlib)")
    return 0
