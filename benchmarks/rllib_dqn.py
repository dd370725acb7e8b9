"""DQN on CartPole-v1: RLlib's PrioritizedEpisodeReplayBuffer vs ray_replay's, same seed and budget.

Reports the time per training step spent in the buffer (add + sample + get_metrics, which RLlib times
as part of sampling, + update_priorities) and the learning curves (mean episode return vs env steps)
as a Markdown table, JSON and a PNG under benchmarks/results/.

    python benchmarks/rllib_dqn.py            # 100k env steps per buffer (~1 h on 2 cores)
    python benchmarks/rllib_dqn.py --quick    # 20k env steps per buffer
    python benchmarks/rllib_dqn.py --multi-agent --env-steps 4000   # two-agent CartPole, two modules:
        RLlib's MultiAgentPrioritizedEpisodeReplayBuffer vs NativeMultiAgentEpisodeReplayBuffer
        (results in rllib_dqn_multi_agent.md/.json)
    python benchmarks/rllib_dqn.py --direct --env-steps 4000   # 2 env runners, sharded replay: episodes
        through the driver vs env runners writing straight to the shards (rllib_dqn_direct.md/.json)

Targets: buffer time <= 1/4 of the built-in's; mean return >= 400 within 100k env steps.
Needs the [rllib] and [bench] extras. The learner runs in this process with one torch thread.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import ray
import torch
from ray.rllib.algorithms.dqn import DQNConfig
from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
from ray.rllib.examples.envs.classes.multi_agent import MultiAgentCartPole
from ray.rllib.utils.replay_buffers import MultiAgentPrioritizedEpisodeReplayBuffer, PrioritizedEpisodeReplayBuffer

from ray_replay.distributed.runtime import init_ray
from ray_replay.rllib import DirectWriteDQN, DirectWriteEnvRunner, NativeEpisodeReplayBuffer, NativeMultiAgentEpisodeReplayBuffer

__all__ = ["TimedBuiltinEpisodeReplayBuffer", "TimedBuiltinMultiAgentEpisodeReplayBuffer", "TimedNativeEpisodeReplayBuffer",
           "TimedNativeMultiAgentEpisodeReplayBuffer", "main"]

RESULTS = Path(__file__).resolve().parent / "results"
# Seconds and call counts per buffer class and method.
TIMES: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
CALLS: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))


class _Timed:
    """Accumulates the wall time of the buffer methods DQN's training step calls."""

    def _timed(self, name: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            TIMES[type(self).__name__][name] += time.perf_counter() - start
            CALLS[type(self).__name__][name] += 1

    def add(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed("add", super().add, *args, **kwargs)  # type: ignore[misc]

    def sample(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed("sample", super().sample, *args, **kwargs)  # type: ignore[misc]

    def get_metrics(self) -> Any:
        return self._timed("get_metrics", super().get_metrics)  # type: ignore[misc]

    def update_priorities(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed("update_priorities", super().update_priorities, *args, **kwargs)  # type: ignore[misc]


class TimedBuiltinEpisodeReplayBuffer(_Timed, PrioritizedEpisodeReplayBuffer):
    """RLlib's built-in buffer, timed."""


class TimedNativeEpisodeReplayBuffer(_Timed, NativeEpisodeReplayBuffer):
    """ray_replay's buffer, timed."""


class TimedBuiltinMultiAgentEpisodeReplayBuffer(_Timed, MultiAgentPrioritizedEpisodeReplayBuffer):
    """RLlib's built-in multi-agent buffer, timed."""


class TimedNativeMultiAgentEpisodeReplayBuffer(_Timed, NativeMultiAgentEpisodeReplayBuffer):
    """ray_replay's multi-agent buffer, timed."""


N_STEP = (2, 5)
BUFFERS = {
    "builtin": {"type": f"{__name__}.TimedBuiltinEpisodeReplayBuffer"},
    "ray_replay": {"type": f"{__name__}.TimedNativeEpisodeReplayBuffer", "n_step": N_STEP},
}
MULTI_AGENT_BUFFERS = {
    "builtin": {"type": f"{__name__}.TimedBuiltinMultiAgentEpisodeReplayBuffer"},
    "ray_replay": {"type": f"{__name__}.TimedNativeMultiAgentEpisodeReplayBuffer", "n_step": N_STEP},
}


def module_of(agent_id: Any, *args: Any, **kwargs: Any) -> str:
    return f"p{agent_id}"


def dqn_config(buffer: str, seed: int, multi_agent: bool = False) -> DQNConfig:
    """RLlib's tuned CartPole DQN (cartpole_dqn.py) on one process; only the buffer type differs.
    ``multi_agent``: the same on RLlib's two-agent CartPole with one module per agent."""
    epsilon = [(0, 1.0), (10_000, 0.02)]
    config = DQNConfig()
    if multi_agent:
        config = config.environment(MultiAgentCartPole, env_config={"num_agents": 2}).multi_agent(policies={"p0", "p1"}, policy_mapping_fn=module_of)
    else:
        config = config.environment("CartPole-v1")
    buffers = MULTI_AGENT_BUFFERS if multi_agent else BUFFERS
    return (
        config
        .env_runners(num_env_runners=0)
        .training(
            lr=5e-4,
            train_batch_size_per_learner=32,
            replay_buffer_config={**buffers[buffer], "capacity": 50_000, "alpha": 0.6, "beta": 0.4},
            n_step=N_STEP,
            double_q=True,
            dueling=True,
            epsilon=epsilon,
        )
        .rl_module(
            model_config=DefaultModelConfig(
                fcnet_hiddens=[256],
                fcnet_activation="tanh",
                fcnet_bias_initializer="zeros_",
                head_fcnet_hiddens=[256],
                head_fcnet_activation="tanh",
                head_fcnet_bias_initializer="zeros_",
                head_fcnet_kernel_initializer="orthogonal_",
                head_fcnet_kernel_initializer_kwargs={"gain": 0.01},
            )
        )
        .reporting(min_sample_timesteps_per_iteration=1000)
        .debugging(seed=seed)
    )


def run(buffer: str, env_steps: int, seed: int, multi_agent: bool = False) -> dict[str, Any]:
    """Trains until ``env_steps``; returns the curve and the buffer's time per training step."""
    algo = dqn_config(buffer, seed, multi_agent).build_algo()
    name = type(algo.local_replay_buffer).__name__
    TIMES.pop(name, None)
    CALLS.pop(name, None)
    curve: list[tuple[int, float]] = []
    start = time.perf_counter()
    try:
        steps = 0
        while steps < env_steps:
            result = algo.train()
            steps = int(result["env_runners"]["num_env_steps_sampled_lifetime"])
            ret = result["env_runners"].get("episode_return_mean")
            if ret is not None:
                curve.append((steps, float(ret)))
                print(f"  {buffer:>10}: {steps:>7} env steps, mean return {ret:6.1f}", flush=True)
    finally:
        algo.stop()
    times, calls = TIMES[name], CALLS[name]
    train_steps = calls["sample"]  # one sample + one update per training step once learning started
    per_call = {m: 1e3 * times[m] / calls[m] for m in times if calls[m]}
    return {
        "buffer": buffer,
        "env_steps": steps,
        "wall_s": time.perf_counter() - start,
        "training_steps": train_steps,
        "buffer_ms_per_training_step": 1e3 * sum(times.values()) / max(train_steps, 1),
        "ms_per_call": per_call,
        "calls": dict(calls),
        "curve": curve,
    }


def return_at(curve: list[tuple[int, float]], steps: int) -> float | None:
    """The last reported mean return at or before ``steps`` env steps."""
    before = [r for s, r in curve if s <= steps]
    return before[-1] if before else None


def report(runs: list[dict[str, Any]], out: Path, multi_agent: bool = False) -> str:
    base, ours = runs
    ratio = ours["buffer_ms_per_training_step"] / base["buffer_ms_per_training_step"]
    lines = [
        "# DQN two-agent CartPole (two modules): RLlib MultiAgentPrioritizedEpisodeReplayBuffer vs ray_replay" if multi_agent else
        "# DQN CartPole-v1: RLlib PrioritizedEpisodeReplayBuffer vs ray_replay",
        "",
        "| buffer | buffer ms / training step | add ms | sample ms | get_metrics ms | update ms | training steps | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        c = r["ms_per_call"]
        lines.append(
            f"| {r['buffer']} | {r['buffer_ms_per_training_step']:.3f} | {c.get('add', 0):.3f} | {c.get('sample', 0):.3f} "
            f"| {c.get('get_metrics', 0):.3f} | {c.get('update_priorities', 0):.3f} | {r['training_steps']} | {r['wall_s']:.0f} |"
        )
    lines += ["", f"ray_replay / built-in buffer time: **{ratio:.3f}** (target <= 0.25)", ""]
    marks = sorted({s for s in (5_000, 10_000, 20_000, 50_000, 100_000) if s <= min(r["env_steps"] for r in runs)})
    lines += ["| env steps | " + " | ".join(r["buffer"] for r in runs) + " |", "|---" * (len(runs) + 1) + "|"]
    for s in marks:
        cells = [return_at(r["curve"], s) for r in runs]
        lines.append(f"| {s} | " + " | ".join("-" if v is None else f"{v:.1f}" for v in cells) + " |")
    for r in runs:
        first = next((s for s, v in r["curve"] if v >= 400), None)
        lines.append(f"\n{r['buffer']}: mean return >= 400 first at {first if first else 'not reached'} env steps")
    text = "\n".join(lines) + "\n"
    name = "rllib_dqn_multi_agent" if multi_agent else "rllib_dqn"
    (out / f"{name}.md").write_text(text)
    (out / f"{name}.json").write_text(json.dumps(runs, indent=1))
    return text


def plot(runs: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for r in runs:
        steps, returns = zip(*r["curve"]) if r["curve"] else ((), ())
        left.plot(steps, returns, label=r["buffer"])
    left.axhline(400, color="grey", linestyle=":", linewidth=1)
    left.set(xlabel="env steps", ylabel="mean episode return", title="DQN CartPole-v1 (same seed)")
    left.legend()
    names = [r["buffer"] for r in runs]
    methods = ["add", "sample", "get_metrics", "update_priorities"]
    bottom = [0.0] * len(runs)
    for m in methods:
        # Per training step: calls per step (add may run more or less often than sample) x ms per call.
        values = [r["ms_per_call"].get(m, 0) * r["calls"].get(m, 0) / max(r["training_steps"], 1) for r in runs]
        right.bar(names, values, bottom=bottom, label=m)
        bottom = [b + v for b, v in zip(bottom, values)]
    right.set(ylabel="ms per training step", title="time in the replay buffer")
    right.legend()
    fig.tight_layout()
    fig.savefig(out / "rllib_dqn.png", dpi=110)


def run_direct(mode: str, env_steps: int, seed: int) -> dict[str, Any]:
    """DQN with 2 env runners on a 2-shard prioritized replay; ``mode`` "driver" (episodes through the
    Algorithm's process), "direct" (env runners write to the shards; RLlib's synchronous DQN step) or
    "async" (direct writes with DirectWriteDQN: env runners keep sampling while the learner trains).
    Env steps/s and updates/s."""
    from ray_replay.distributed import ReplayCoordinator

    coordinator = ReplayCoordinator.remote(capacity=50_000, num_shards=2, buffer_type="prioritized", alpha=0.6, beta=0.4, seed=seed)
    buffer_config = {"type": f"{__name__}.TimedNativeEpisodeReplayBuffer", "backend": coordinator, "n_step": N_STEP,
                     "env_runners_write": mode != "driver"}
    config = dqn_config("ray_replay", seed).training(replay_buffer_config=buffer_config)
    config = config.env_runners(num_env_runners=2, num_cpus_per_env_runner=0, **({"env_runner_cls": DirectWriteEnvRunner} if mode != "driver" else {}))
    if mode == "async":  # as DirectWriteDQNConfig: 2 sample() calls in flight per env runner (of 50 env steps each)
        config.algo_class = DirectWriteDQN
        config = config.env_runners(max_requests_in_flight_per_env_runner=2)
    algo = config.build_algo()
    name = type(algo.local_replay_buffer).__name__
    TIMES.pop(name, None)
    CALLS.pop(name, None)
    start = time.perf_counter()
    try:
        steps = 0
        while steps < env_steps:
            steps = int(algo.train()["env_runners"]["num_env_steps_sampled_lifetime"])
        if mode != "driver":  # credited once stored: the env runners' writes (and samples in flight) acknowledged by the shards
            algo.env_runner_group.foreach_env_runner(lambda runner: runner.flush_replay_writes(), local_env_runner=False)
        wall = time.perf_counter() - start
        received = algo.local_replay_buffer.payload_steps_received
        stored = int(ray.get(coordinator.size.remote()))
    finally:
        algo.stop()
        ray.get(coordinator.shutdown.remote())
        ray.kill(coordinator)
    updates = CALLS[name]["sample"]
    return {"mode": mode, "env_steps": steps, "wall_s": wall, "env_steps_per_s": steps / wall, "updates_per_s": updates / wall,
            "updates": updates, "driver_payload_steps": received, "rows_stored": stored}


def report_direct(runs: list[dict[str, Any]], out: Path) -> str:
    lines = ["# DQN CartPole-v1, 2 env runners, 2-shard replay: episodes through the driver vs direct writes "
             "(RLlib's synchronous step, and DirectWriteDQN's asynchronous one)", "",
             "| path | env steps | rows stored in the shards | wall s | env steps/s | learner updates/s | timesteps handed to the driver's buffer |",
             "|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['mode']} | {r['env_steps']} | {r['rows_stored']} | {r['wall_s']:.1f} | {r['env_steps_per_s']:.0f} | {r['updates_per_s']:.1f} | "
                     f"{r['driver_payload_steps']} |")
    lines += ["", "Wall time ends when the env steps counted are stored: with direct writes, after every env runner's writes (and its "
              "sample() calls still in flight) are acknowledged by the shards. Rows stored include one final-observation row per finished episode."]
    by_mode = {r["mode"]: r for r in runs}
    driver = by_mode["driver"]
    lines.append("")
    for mode in ("direct", "async"):
        if mode in by_mode:
            ratio = by_mode[mode]["env_steps_per_s"] / driver["env_steps_per_s"]
            lines.append(f"- {mode} / driver env steps/s: **{ratio:.2f}**" + (" (target >= 2)" if mode == "async" else ""))
    lines += ["", "RLlib's DQN training step is synchronous (sample from the env runners, then train): env steps/s follow the learner's",
              "pace whichever way the rows travel, so direct writes alone remove the driver's payload but do not raise env steps/s.",
              "DirectWriteDQN (\"async\") keeps one sample() call in flight on every env runner while the learner trains, so env",
              "runners never wait for the learner; learner updates/s then depend on the cores the env runners leave it."]
    text = "\n".join(lines) + "\n"
    (out / "rllib_dqn_direct.md").write_text(text)
    (out / "rllib_dqn_direct.json").write_text(json.dumps(runs, indent=1))
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20k env steps per buffer instead of 100k")
    parser.add_argument("--env-steps", type=int, help="env steps per buffer (overrides --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--multi-agent", action="store_true", help="two-agent CartPole with one module per agent")
    parser.add_argument("--direct", action="store_true", help="2 env runners: through the driver vs direct writes to the shards")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    env_steps = args.env_steps or (20_000 if args.quick else 100_000)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    init_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        if args.direct:
            print(report_direct([run_direct(mode, env_steps, args.seed) for mode in ("driver", "direct", "async")], args.out))
            return
        runs = [run(buffer, env_steps, args.seed, args.multi_agent) for buffer in BUFFERS]
    finally:
        ray.shutdown()
    print(report(runs, args.out, args.multi_agent))
    if args.multi_agent:
        print(f"wrote {args.out / 'rllib_dqn_multi_agent.md'} and .json")
        return
    plot(runs, args.out)
    print(f"wrote {args.out / 'rllib_dqn.md'}, .json and .png")


if __name__ == "__main__":
    main()
