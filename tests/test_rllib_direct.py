"""Direct writes: DQN whose env runners write their episodes straight to the sharded replay.

The driver's buffer counts every timestep handed to it (none should be) and the coordinator counts
the rows it relays (none should be); every env step sampled must be in the shards, and the learner
must have trained on rows drawn from them (priority updates reached the shards)."""

from __future__ import annotations

from typing import Any

import ray
from test_rllib import coordinator, tiny_dqn  # noqa: F401  # (coordinator: the fixture)

from ray_replay.rllib import DirectWriteDQN, DirectWriteDQNConfig, DirectWriteEnvRunner, NativeEpisodeReplayBuffer


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


def test_direct_write_dqn_trains_while_its_env_runners_keep_sampling(coordinator: Any) -> None:  # noqa: F811
    """DirectWriteDQN's training step never waits for the env runners: after each train(), every env
    runner still has a sample() call in flight (it was started before the learner's updates), and the
    learner trained on rows from the shards; no transition passed through the driver or the coordinator."""
    config = tiny_dqn({"backend": coordinator, "env_runners_write": True, "n_step": 1}).env_runners(
        num_env_runners=2, num_cpus_per_env_runner=0, env_runner_cls=DirectWriteEnvRunner, rollout_fragment_length=20,
        max_requests_in_flight_per_env_runner=2)
    config.algo_class = DirectWriteDQN  # a DQNConfig builds it (as DQNConfig(algo_class=DirectWriteDQN) does)
    algo = config.build_algo()
    try:
        assert isinstance(algo, DirectWriteDQN)
        results = []
        for _ in range(3):
            results.append(algo.train())
            assert algo.env_runner_group.num_in_flight_async_reqs(tag="ray_replay.direct_writes") == 4  # 2 per env runner
        learned = results[-1]["learners"]["default_policy"]
        assert int(learned["num_module_steps_trained_lifetime"]) > 0
        sampled = int(results[-1]["env_runners"]["num_env_steps_sampled_lifetime"])
        algo.env_runner_group.foreach_env_runner(lambda runner: runner.flush_replay_writes(), local_env_runner=False)
        total = ray.get(coordinator.stats.remote())["total"]
        assert ray.get(coordinator.size.remote()) >= sampled > 0  # (samples still in flight may have written more)
        assert total["rows_relayed_by_coordinator"] == 0 and total["priority_updates"] > 0
        assert algo.local_replay_buffer.payload_steps_received == 0
    finally:
        algo.stop()


def test_direct_write_dqn_config_defaults_to_its_algorithm_and_env_runner() -> None:
    config = DirectWriteDQNConfig()
    assert config.algo_class is DirectWriteDQN and config.env_runner_cls is DirectWriteEnvRunner
    assert config.max_requests_in_flight_per_env_runner == 2
    assert DirectWriteDQN.get_default_config().algo_class is DirectWriteDQN
    assert isinstance(config, type(DirectWriteDQN.get_default_config()))  # so RLlib uses the config as it is
