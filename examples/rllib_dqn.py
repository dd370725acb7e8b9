"""DQN on CartPole-v1 with ray_replay as RLlib's replay buffer (one config line).

    python examples/rllib_dqn.py                      # local backend
    python examples/rllib_dqn.py --iterations 50      # longer (return ~400+ by ~50k env steps)
    python examples/rllib_dqn.py --shards 2           # sharded: rows in 2 Ray shards, global sampling

Needs the [rllib] extra. The local run also shows how to checkpoint the buffer next to the algorithm
(RLlib 2.60's new API stack does not save buffers itself); a sharded replay is checkpointed through
its ReplayCoordinator instead.
"""

from __future__ import annotations

import argparse
import pickle
import tempfile
from pathlib import Path

import ray
from ray.rllib.algorithms.dqn import DQNConfig

from ray_replay import init_ray


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=10, help="training iterations (1000 env steps each)")
    parser.add_argument("--shards", type=int, default=0, help="shard the replay over this many Ray actors (0: local)")
    args = parser.parse_args()

    init_ray(num_cpus=2, include_dashboard=False)
    storage: dict[str, object] = {"capacity": 50_000, "alpha": 0.6, "beta": 0.4}
    if args.shards:
        from ray_replay import ReplayCoordinator

        # A named coordinator: the buffer config holds just its name, so the config stays serializable.
        coordinator = ReplayCoordinator.options(name="dqn_replay").remote(
            capacity=50_000, num_shards=args.shards, buffer_type="prioritized", alpha=0.6, beta=0.4
        )
        ray.get(coordinator.size.remote())  # registered (and its shards up) before the buffer looks it up
        storage = {"backend": "dqn_replay"}
    config = (
        DQNConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=0)
        .training(
            lr=5e-4,
            n_step=(2, 5),
            epsilon=[(0, 1.0), (10_000, 0.02)],
            # The one line that matters: a dotted type string (a class object crashes RLlib 2.60).
            # n_step comes from the algorithm (above): each step is stored once, n-step gathered at sample time.
            replay_buffer_config={"type": "ray_replay.rllib.NativeEpisodeReplayBuffer", **storage},
        )
        .rl_module(model_config={"fcnet_hiddens": [256], "fcnet_activation": "tanh", "head_fcnet_hiddens": [256]})
        .reporting(min_sample_timesteps_per_iteration=1000)
    )
    algo = config.build_algo()
    try:
        for i in range(args.iterations):
            result = algo.train()
            runners, replay = result["env_runners"], result.get("replay_buffer", {})
            print(
                f"iter {i + 1}: {runners['num_env_steps_sampled_lifetime']} env steps, "
                f"return {runners.get('episode_return_mean', float('nan')):.1f}, "
                f"buffer holds {replay.get('num_env_steps_stored', 0):.0f} steps"
            )
        if args.shards:
            return
        # Checkpoint: the algorithm, and the buffer's state beside it.
        with tempfile.TemporaryDirectory() as directory:
            algo.save_to_path(directory)
            (Path(directory) / "replay_buffer.pkl").write_bytes(pickle.dumps(algo.local_replay_buffer.get_state()))
            restored = config.build_algo()
            restored.restore_from_path(directory)
            restored.local_replay_buffer.set_state(pickle.loads((Path(directory) / "replay_buffer.pkl").read_bytes()))
            print(f"restored buffer holds {len(restored.local_replay_buffer)} steps")
            restored.stop()
    finally:
        algo.stop()
        ray.shutdown()


if __name__ == "__main__":
    main()
