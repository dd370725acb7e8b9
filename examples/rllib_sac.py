"""SAC on Pendulum-v1 with ray_replay as RLlib's replay buffer.

    python examples/rllib_sac.py [--iterations N]

RLlib 2.60's ``SACConfig.validate`` accepts only its own buffer type names, so this uses
``ray_replay.rllib.SACConfig``: the same class, with validation that also accepts ray_replay's buffer.
Needs the [rllib] extra.
"""

from __future__ import annotations

import argparse

import ray

from ray_replay import init_ray
from ray_replay.rllib import SACConfig


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=10, help="training iterations (1000 env steps each)")
    args = parser.parse_args()

    init_ray(num_cpus=2, include_dashboard=False)
    config = (
        SACConfig()
        .environment("Pendulum-v1")
        .env_runners(num_env_runners=0)
        .training(
            actor_lr=2e-4,
            critic_lr=8e-4,
            alpha_lr=9e-4,
            n_step=(1, 3),
            train_batch_size_per_learner=256,
            num_steps_sampled_before_learning_starts=256,
            replay_buffer_config={
                "type": "ray_replay.rllib.NativeEpisodeReplayBuffer",
                "capacity": 100_000,
                "alpha": 1.0,
                "beta": 0.0,
            },
        )
        .rl_module(model_config={"fcnet_hiddens": [256, 256], "fcnet_activation": "relu", "head_fcnet_hiddens": []})
        .reporting(min_sample_timesteps_per_iteration=1000)
    )
    algo = config.build_algo()
    try:
        for i in range(args.iterations):
            result = algo.train()
            runners = result["env_runners"]
            print(
                f"iter {i + 1}: {runners['num_env_steps_sampled_lifetime']} env steps, "
                f"return {runners.get('episode_return_mean', float('nan')):.1f}"
            )
    finally:
        algo.stop()
        ray.shutdown()


if __name__ == "__main__":
    main()
