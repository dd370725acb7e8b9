"""RLlib integration (new API stack, RLlib 2.60): ray_replay as DQN's or SAC's replay buffer.

One config line::

    config.training(replay_buffer_config={
        "type": "ray_replay.rllib.NativeEpisodeReplayBuffer",  # a dotted string, not the class
        "capacity": 100_000, "alpha": 0.6, "beta": 0.4,
    })  # n_step: the algorithm's config.training(n_step=...), served at sample time

Each timestep is stored once; n-step transitions (any n or range) and RLlib sequences
(``batch_length_T``) are gathered at sample time (docs/sequences.md, "RLlib").

Multi-agent DQN: ``"type": "ray_replay.rllib.NativeMultiAgentEpisodeReplayBuffer"`` (one native
prioritized buffer per module; ``update_priorities(td_errors, module_id)``).

SAC's config validation only knows RLlib's own buffer names: use ``ray_replay.rllib.SACConfig``
instead of ``ray.rllib.algorithms.sac.SACConfig``. APPO/IMPALA keep their buffer inside the
Learner and are not covered; RLlib 2.60's old API stack is broken for every buffer type.
Needs the ``[rllib]`` extra.
"""

from ray_replay.rllib.direct import DirectWriteDQN, DirectWriteDQNConfig, DirectWriteEnvRunner
from ray_replay.rllib.episode_buffer import NativeEpisodeReplayBuffer
from ray_replay.rllib.multi_agent import NativeMultiAgentEpisodeReplayBuffer
from ray_replay.rllib.sac import SAC, SACConfig

__all__ = [
    "SAC",
    "DirectWriteDQN",
    "DirectWriteDQNConfig",
    "DirectWriteEnvRunner",
    "NativeEpisodeReplayBuffer",
    "NativeMultiAgentEpisodeReplayBuffer",
    "SACConfig",
]
