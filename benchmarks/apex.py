"""Ape-X DQN (ray_replay.apex, 2 actors + 1 learner over the sharded prioritized replay) against RLlib's
DQN (one process, its built-in PrioritizedEpisodeReplayBuffer and ray_replay's NativeEpisodeReplayBuffer)
on CartPole-v1: env steps and wall-clock time to an evaluation return of 475 (mean of 10 greedy
episodes), per seed, with medians and ranges; learning curves against env steps and wall-clock (PNG);
and one Ape-X seed with a replay shard killed halfway (Ray restarts it empty) to show learning goes on.

Same network (2 hidden layers of 128, ReLU... RLlib: an encoder of 128 and a Q head of 128), Adam at
1e-3, gamma 0.99, 3-step double-DQN targets, batch 256, 16 sampled rows per inserted row, target sync
every 500 updates (RLlib: 8,000 env steps = 500 updates), prioritized replay alpha 0.6, beta 0.4,
capacity 20k: all taken from ApexConfig's defaults. Exploration: Ape-X's epsilon ladder; RLlib: epsilon 1.0 -> 0.02 over 10k steps. Both are
evaluated by the same greedy evaluation every 1 s of training; RLlib's wall-clock excludes the
evaluations (they run between its training iterations), Ape-X's evaluations run beside its training.

    python benchmarks/apex.py                # 3 seeds each (budgets: Ape-X 300 s, RLlib 600 s a run)
    python benchmarks/apex.py --quick        # 1 seed each, budgets 150 s / 240 s
    python benchmarks/apex.py --smoke --out /tmp/apex-smoke   # 1 seed each, 20 s budgets: checks it runs
    python benchmarks/apex.py --seeds 2 --budget-s 120 --rllib-budget-s 300 --skip rllib_native

Medians count a seed that missed 475 as later than any that reached it, so a median is a time only when
more than half of the seeds reached 475. When neither RLlib buffer's median is a time, the ratio is
reported as a bound: RLlib's median is above its budget, so Ape-X's median over the budget bounds it.

Writes benchmarks/results/apex.md, apex.json and apex.png. Needs the [rllib] extra (+ matplotlib).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import machine_info, write_json  # noqa: E402

from ray_replay.apex import ApexConfig, train  # noqa: E402
from ray_replay.apex.actor import evaluate  # noqa: E402
from ray_replay.apex.run import KILL_SETTLE_UPDATES, plot_curves  # noqa: E402
from ray_replay.distributed.runtime import init_ray  # noqa: E402

RESULTS = HERE / "results"
TARGET = 475.0
EVAL_EVERY_S = 1.0
AGENTS = ("apex", "rllib_builtin", "rllib_native")


def apex_config(seed: int) -> ApexConfig:
    return ApexConfig(env_id="CartPole-v1", num_actors=2, seed=seed, samples_per_insert=16.0, target_return=TARGET, eval_every_s=EVAL_EVERY_S)


def run_apex(seed: int, seconds: float, kill_shard_at_s: float | None = None) -> dict[str, Any]:
    summary = train(apex_config(seed), seconds, progress=True, kill_shard_at_s=kill_shard_at_s)
    return {"agent": "apex" if kill_shard_at_s is None else "apex_shard_killed", "seed": seed, "solved": summary["solved"],
            "time_to_target_s": summary["time_to_target_s"], "env_steps_to_target": summary["env_steps_to_target"],
            "wall_s": summary["wall_s"], "env_steps": summary["env_steps"], "updates": summary["learner_updates"],
            "curve": summary["curve"], "events": summary["events"], "kill": summary["kill"], "replay": summary["replay"],
            "inserted_per_s": summary["inserted_per_s"], "sampled_per_s": summary["sampled_per_s"]}


def rllib_config(buffer: str, seed: int) -> Any:
    from ray.rllib.algorithms.dqn import DQNConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    apex = ApexConfig()
    replay: dict[str, Any] = {"capacity": apex.capacity, "alpha": apex.alpha, "beta": apex.beta}
    if buffer == "rllib_builtin":
        replay["type"] = "PrioritizedEpisodeReplayBuffer"
    else:
        replay.update(type="ray_replay.rllib.NativeEpisodeReplayBuffer", n_step=3)
    return (
        DQNConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=0)
        .training(lr=apex.lr, gamma=apex.gamma, train_batch_size_per_learner=apex.batch_size, n_step=apex.n_step, double_q=True, dueling=False,
                  training_intensity=apex.samples_per_insert,
                  # Ape-X syncs every target_sync_updates updates; RLlib counts env steps (batch / intensity of them per update)
                  target_network_update_freq=int(apex.target_sync_updates * apex.batch_size / apex.samples_per_insert),
                  num_steps_sampled_before_learning_starts=apex.min_size_to_sample,
                  replay_buffer_config=replay, epsilon=[(0, 1.0), (10_000, 0.02)])
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[128], fcnet_activation="relu", head_fcnet_hiddens=[128],
                                                   head_fcnet_activation="relu"))
        .reporting(min_sample_timesteps_per_iteration=1_000)
        .debugging(seed=seed)
    )


class _GreedyModule:
    """RLlib's RLModule behind the ``q_values`` interface of ray_replay.apex.actor.evaluate (one-hot of its greedy action)."""

    def __init__(self, module: Any, num_actions: int) -> None:
        self.module, self.num_actions = module, num_actions

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            actions = self.module.forward_inference({"obs": torch.as_tensor(obs, dtype=torch.float32)})["actions"]
        return np.eye(self.num_actions)[np.asarray(actions)]


def run_rllib(buffer: str, seed: int, seconds: float) -> dict[str, Any]:
    """Trains until the greedy evaluation reaches TARGET or ``seconds`` of training (evaluations excluded)."""
    algo = rllib_config(buffer, seed).build_algo()
    greedy = _GreedyModule(algo.get_module(), 2)
    curve: list[dict[str, Any]] = []
    trained, steps, next_eval, solved = 0.0, 0, EVAL_EVERY_S, None
    try:
        while trained < seconds and solved is None:
            started = time.monotonic()
            result = algo.train()
            trained += time.monotonic() - started
            steps = int(result["env_runners"]["num_env_steps_sampled_lifetime"])
            if trained >= next_eval:
                ret = evaluate(greedy, "CartPole-v1", 10, seed=10_000 + len(curve))
                curve.append({"wall_s": trained, "env_steps": steps, "eval_return": ret})
                print(f"  {buffer}: {trained:6.1f} s {steps:>7} env steps  eval {ret:6.1f}", flush=True)
                next_eval = trained + EVAL_EVERY_S
                if ret >= TARGET:
                    solved = curve[-1]
    finally:
        algo.stop()
    return {"agent": buffer, "seed": seed, "solved": solved is not None, "time_to_target_s": solved["wall_s"] if solved else None,
            "env_steps_to_target": solved["env_steps"] if solved else None, "wall_s": trained, "env_steps": steps, "curve": curve}


def _median_range(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):,.0f} ({min(values):,.0f} - {max(values):,.0f})"


def median_time(runs: list[dict[str, Any]]) -> float:
    """The median time to the target over seeds, a seed that missed it counting as later than any that
    reached it (``inf``): finite only when more than half of the seeds reached it."""
    times = sorted(r["time_to_target_s"] if r["solved"] else float("inf") for r in runs)
    if not times:
        return float("inf")
    mid = len(times) // 2
    return float(times[mid] if len(times) % 2 else (times[mid - 1] + times[mid]) / 2)


def report(runs: list[dict[str, Any]], budgets: dict[str, float]) -> tuple[str, dict[str, Any]]:
    lines = ["# Ape-X DQN vs RLlib DQN, CartPole-v1 (evaluation: mean of 10 greedy episodes >= 475)", "",
             "| agent | seeds solved | wall s to 475, median over all seeds | wall s to 475 of the seeds that got there, median (range) "
             "| env steps to 475, median (range) | budget s |",
             "|---|---|---|---|---|---|"]
    medians: dict[str, Any] = {}
    for agent in ("apex", *AGENTS[1:], "apex_shard_killed"):
        mine = [r for r in runs if r["agent"] == agent]
        if not mine:
            continue
        solved = [r for r in mine if r["solved"]]
        times = [r["time_to_target_s"] for r in solved]
        steps = [r["env_steps_to_target"] for r in solved]
        overall = median_time(mine)
        budget = budgets["apex" if agent.startswith("apex") else "rllib"]
        medians[agent] = {"solved": len(solved), "seeds": len(mine), "median_time_s": overall if overall != float("inf") else None,
                          "median_time_solved_s": statistics.median(times) if times else None,
                          "median_env_steps": statistics.median(steps) if steps else None}
        shown = f"{overall:,.0f}" if overall != float("inf") else f"> {budget:.0f} (budget)"
        lines.append(f"| {agent} | {len(solved)}/{len(mine)} | {shown} | {_median_range(times)} | {_median_range(steps)} | {budget:.0f} |")
    ours = median_time([r for r in runs if r["agent"] == "apex"])
    if "apex" in medians:
        mine = medians["apex"]
        lines += ["", f"Ape-X reached 475 in {mine['solved']} of {mine['seeds']} seeds (target: every seed): "
                  f"**{'met' if mine['solved'] == mine['seeds'] else 'not met'}**."]
    rllib = {a: median_time([r for r in runs if r["agent"] == a]) for a in AGENTS[1:] if any(r["agent"] == a for r in runs)}
    if rllib and ours != float("inf"):
        best = min(rllib, key=lambda a: rllib[a])
        if rllib[best] != float("inf"):
            ratio = ours / rllib[best]
            lines += ["", f"Ape-X's median wall-clock to 475 / RLlib's better one ({best}): **{ratio:.2f}** (target <= 0.5)"]
            medians["apex_vs_best_rllib_time"] = ratio
        else:
            bound = ours / budgets["rllib"]
            lines += ["", f"Neither RLlib buffer reached 475 in more than half of its seeds within its budget ({budgets['rllib']:.0f} s), so "
                      f"RLlib's median time to 475 is above the budget and Ape-X's median is **< {bound:.2f}** of it (target <= 0.5)."]
            medians["apex_vs_rllib_budget_bound"] = bound
    elif rllib:
        lines += ["", "Ape-X did not reach 475 in more than half of its seeds: no ratio."]
    for r in runs:
        if r["agent"] == "apex_shard_killed":
            settled = r["kill"]["counts_from_update"] if r.get("kill") else float("inf")
            after = [p["eval_return"] for p in r["curve"] if p["updates"] >= settled]
            lines += ["", f"Shard kill (seed {r['seed']}): {'; '.join(r['events'])}; evaluations of weights trained "
                      f"{KILL_SETTLE_UPDATES} updates or more past it (only these could end the run): "
                      f"{', '.join(f'{v:.0f}' for v in after) or '-'}; reached 475: {r['solved']}"
                      f"{' at ' + format(r['time_to_target_s'], '.0f') + ' s' if r['solved'] else ''}; replay restarts {r['replay']['restarts']}."]
    text = "\n".join(lines) + "\n"
    return text, medians


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 seed each (unless --seeds), budgets 150 s (Ape-X) / 240 s (RLlib)")
    parser.add_argument("--smoke", action="store_true", help="1 seed each, 20 s budgets, shard kill at 8 s: checks that everything runs")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per agent (default 3; 1 with --quick or --smoke)")
    parser.add_argument("--budget-s", type=float, default=None, help="Ape-X's budget per run (default 300; 150 --quick; 20 --smoke)")
    parser.add_argument("--rllib-budget-s", type=float, default=None, help="RLlib's budget per run (default 600; 240 --quick; 20 --smoke)")
    parser.add_argument("--skip", nargs="*", default=[], choices=[*AGENTS, "shard_kill"], help="agents to leave out")
    parser.add_argument("--keep", action="store_true", help="keep the skipped agents' runs from the existing apex.json")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    seeds = args.seeds or (1 if args.quick or args.smoke else 3)
    budgets = {"apex": args.budget_s or (20.0 if args.smoke else 150.0 if args.quick else 300.0),
               "rllib": args.rllib_budget_s or (20.0 if args.smoke else 240.0 if args.quick else 600.0)}
    import torch

    torch.set_num_threads(1)
    machine = machine_info()
    init_ray(num_cpus=4, include_dashboard=False, log_to_driver=False)
    runs: list[dict[str, Any]] = []
    previous = args.out / "apex.json"
    if args.keep and previous.exists():
        skipped = {"apex_shard_killed" if a == "shard_kill" else a for a in args.skip}
        runs = [r for r in json.loads(previous.read_text())["runs"] if r["agent"] in skipped]
    started = time.monotonic()
    try:
        for seed in range(seeds):
            if "apex" not in args.skip:
                print(f"apex seed {seed}", flush=True)
                runs.append(run_apex(seed, budgets["apex"]))
            for agent in AGENTS[1:]:
                if agent not in args.skip:
                    print(f"{agent} seed {seed}", flush=True)
                    runs.append(run_rllib(agent, seed, budgets["rllib"]))
        if "shard_kill" not in args.skip:
            first = next((r for r in runs if r["agent"] == "apex" and r["seed"] == 0), None)
            kill_at = first["time_to_target_s"] / 2 if first and first["solved"] else budgets["apex"] / 4
            kill_at = max(kill_at, 2.0)
            print(f"apex seed 0 with shard 0 killed at {kill_at:.0f} s (half of seed 0's time to 475)", flush=True)
            runs.append(run_apex(0, budgets["apex"], kill_shard_at_s=kill_at))
    finally:
        ray.shutdown()
    text, medians = report(runs, budgets)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "apex.md").write_text(text)
    write_json({"machine": machine, "mode": "smoke" if args.smoke else "quick" if args.quick else "full", "seeds": seeds, "budgets_s": budgets, "target": TARGET,
                "medians": medians, "runs": runs, "markdown": text, "seconds": time.monotonic() - started}, args.out / "apex.json")
    curves = {f"{r['agent']} seed {r['seed']}": r["curve"] for r in runs}
    if plot_curves(curves, args.out / "apex.png", TARGET, "CartPole-v1"):
        print(f"wrote {args.out / 'apex.png'}")
    print(text)
    print(f"wrote {args.out / 'apex.md'} and apex.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
