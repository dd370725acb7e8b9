"""Direct writes: DQN whose env runners write their episodes straight to the sharded replay.

The driver's buffer counts every timestep handed to it (none should be) and the coordinator counts
the rows it relays (none should be); every env step sampled must be in the shards, and the learner
must have trained on rows drawn from them (priority updates reached the shards)."""

from __future__ import annotations

from typing import Any

import ray
from test_rllib import coordinator, tiny_dqn  # noqa: F401  # (coordinator: the fixture)

from ray_replay.rllib import DirectWriteEnvRunner, NativeEpisodeReplayBuffer


def test_env_runners_write_straight_to_the_shards(coordinator: Any) -> None:  # noqa: F811
    config = tiny_dqn({"backend": coordinator, "env_runners_write": True, "n_step": 1}).env_runners(
        num_env_runners=2, num_cpus_per_env_runner=0, env_runner_cls=DirectWriteEnvRunner)
    algo = config.build_algo()
    try:
        results = [algo.train() for _ in range(2)]
        algo.env_runner_group.foreach_env_runner(lambda runner: runner.flush_replay_writes(), local_env_runner=False)
        buffer = algo.local_replay_buffer
        assert isinstance(buffer, NativeEpisodeReplayBuffer)
        assert buffer.payload_steps_received == 0  # no transition reached the driver's buffer
        sampled = int(results[-1]["env_runners"]["num_env_steps_sampled_lifetime"])
        total = ray.get(coordinator.stats.remote())["total"]
        assert total["rows_relayed_by_coordinator"] == 0  # nor passed through the coordinator
        finished = int(results[-1]["env_runners"]["num_episodes_lifetime"])
        # Every env step is in the shards, once, plus one final-observation row per finished episode.
        assert ray.get(coordinator.size.remote()) == sampled + finished > 0
        assert total["priority_updates"] > 0  # the learner trained on rows sampled from the shards
        assert results[-1]["replay_buffer"]["ray_replay"]["payload_steps_received"] == 0
    finally:
        algo.stop()


def test_direct_writes_need_a_sharded_backend() -> None:
    import pytest

    with pytest.raises(ValueError, match="env_runners_write needs a sharded backend"):
        NativeEpisodeReplayBuffer(100, env_runners_write=True)
