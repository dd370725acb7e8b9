"""Memory per stored timestep of ray_replay's RLlib buffer (NativeEpisodeReplayBuffer).

Fills a buffer of ``--steps`` timesteps with finished episodes of 20-200 steps (random observations of
``--obs-dim`` float32, Discrete(2) actions) and prints the native payload per timestep
(``stats()["bytes_held"] / len``) and the process's resident memory growth per timestep (RSS from
/proc/self/statm before and after the adds: native storage is mapped as it is first written).

    python benchmarks/rllib_memory.py --obs-dim 4 --n-step "(2, 5)"

The n-step setting is passed as the config's ``n_step`` (the layout before the at-sample-time n-step
stored n + 1 observations per row; since then the figure does not depend on it).
"""

from __future__ import annotations

import argparse
import ast
import gc
import json

import gymnasium as gym
import numpy as np
from ray.rllib.env.single_agent_episode import SingleAgentEpisode

from ray_replay.rllib import NativeEpisodeReplayBuffer


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--obs-dim", type=int, default=4)
    parser.add_argument("--n-step", default="(2, 5)", help="the config's n_step: an int or a (low, high) range")
    parser.add_argument("--steps", type=int, default=200_000)
    args = parser.parse_args()
    n_step = ast.literal_eval(args.n_step)
    space = gym.spaces.Box(-1, 1, (args.obs_dim,), np.float32)
    rng = np.random.default_rng(0)
    episodes, total = [], 0
    while total < args.steps:
        length = min(int(rng.integers(20, 200)), args.steps - total)
        episodes.append(SingleAgentEpisode(
            observations=list(rng.standard_normal((length + 1, args.obs_dim)).astype(np.float32)),
            actions=list(rng.integers(0, 2, length)), rewards=list(np.ones(length)), observation_space=space,
            action_space=gym.spaces.Discrete(2), terminated=True, len_lookback_buffer=0).to_numpy())
        total += length
    buffer = NativeEpisodeReplayBuffer(args.steps, n_step=n_step)
    gc.collect()
    before = resident_bytes()
    for i in range(0, len(episodes), 10):
        buffer.add(episodes[i:i + 10])
    grown = resident_bytes() - before
    held = len(buffer)
    print(json.dumps({"obs_dim": args.obs_dim, "n_step": args.n_step, "timesteps": held,
                      "payload_bytes_per_timestep": round(buffer._storage.stats()["bytes_held"] / held, 1),
                      "resident_bytes_per_timestep": round(grown / held, 1)}))


if __name__ == "__main__":
    main()
