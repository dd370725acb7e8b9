"""Direct writes: env runners write their episodes straight to the sharded replay; the driver only samples.

With RLlib's new API stack every sampled episode travels env runner -> Algorithm (driver) -> buffer.
With ``DirectWriteEnvRunner`` (``config.env_runners(env_runner_cls=DirectWriteEnvRunner)``) and
``replay_buffer_config={"type": "ray_replay.rllib.NativeEpisodeReplayBuffer", "backend": coordinator,
"env_runners_write": True, ...}``, each env runner turns its episodes into timestep rows itself (the same
rows, one per step in its episode's stream, as the driver-side buffer) and writes them through its own ``ReplayClient`` to the
shards, returning no episodes: the driver's process handles no transition payload on the way in (its
buffer counts what it receives, ``get_metrics()["ray_replay"]["payload_steps_received"]``, which stays
0) and samples prioritized batches from the shards for the learner. An env runner's writes go out
asynchronously (its ReplayClient sends every ``flush_interval_s``), so env stepping never waits for
the shards; the driver's first sample waits for the first rows. Dict/Tuple spaces: the driver does
not see the episodes; it takes their rows' layout from the first writer, through the coordinator
(``ReplayCoordinator.set_metadata``). Nor does the driver hold the newest observation of an unfinished episode (its env runner does), so the driver
draws again the starts whose o_t+n is that observation; sampled sequences carry no episode ids.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import numpy as np
from ray.rllib.algorithms.dqn.dqn import DQN, DQNConfig, calculate_rr_weights
from ray.rllib.core import ALL_MODULES
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    ENV_RUNNER_SAMPLING_TIMER,
    LEARNER_RESULTS,
    LEARNER_UPDATE_TIMER,
    NUM_AGENT_STEPS_SAMPLED_LIFETIME,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    REPLAY_BUFFER_RESULTS,
    REPLAY_BUFFER_SAMPLE_TIMER,
    REPLAY_BUFFER_UPDATE_PRIOS_TIMER,
    TD_ERROR_KEY,
    TIMERS,
)
from ray.rllib.utils.numpy import convert_to_numpy
from ray.rllib.utils.replay_buffers.utils import update_priorities_in_episode_replay_buffer

from ray_replay.rllib.episode_buffer import NativeEpisodeReplayBuffer

__all__ = ["ENV_STEPS_PER_CALL", "DirectWriteDQN", "DirectWriteDQNConfig", "DirectWriteEnvRunner"]

ENV_STEPS_PER_CALL = 50  # DirectWriteDQN: env steps per sample() call unless rollout_fragment_length is set

_SAMPLE_TAG = "ray_replay.direct_writes"  # DirectWriteDQN's sample() calls in flight


class DirectWriteEnvRunner(SingleAgentEnvRunner):
    """A ``SingleAgentEnvRunner`` whose ``sample()`` writes to the replay's shards and returns ``[]``."""

    def sample(self, **kwargs: Any) -> list[Any]:
        episodes = super().sample(**kwargs)
        if self.config.in_evaluation:
            return list(episodes)  # evaluation runners report, they do not write
        # No flush here: the writer's ReplayClient sends staged rows every flush_interval_s (or
        # batch_rows) without waiting for the shards, so sampling overlaps with the writes; the
        # driver's buffer waits for the first rows (see NativeEpisodeReplayBuffer.sample).
        self._replay_writer().add(episodes)
        return []

    def sample_and_report(self, **kwargs: Any) -> Any:
        """``sample()`` (the rows go to the shards), then this runner's metrics: what DirectWriteDQN's
        asynchronous training step asks of each env runner, in one call."""
        self.sample(**kwargs)
        return self.get_metrics()

    def flush_replay_writes(self) -> None:
        """Returns once every row this env runner wrote is stored in its shard."""
        writer: NativeEpisodeReplayBuffer | None = getattr(self, "_ray_replay_writer", None)
        if writer is not None:
            writer.flush()

    def _replay_writer(self) -> NativeEpisodeReplayBuffer:
        writer: NativeEpisodeReplayBuffer | None = getattr(self, "_ray_replay_writer", None)
        if writer is None:
            options = dict(getattr(self.config, "replay_buffer_config", None) or {})
            if not options.get("env_runners_write"):
                raise ValueError("DirectWriteEnvRunner needs replay_buffer_config['env_runners_write'] = True and a sharded 'backend'")
            if isinstance(options.get("backend", "local"), str) and options.get("backend", "local") == "local":
                raise ValueError("DirectWriteEnvRunner writes to a sharded replay: set replay_buffer_config['backend'] to a ReplayCoordinator")
            keep = ("backend", "n_step", "seed", "eps")
            writer = NativeEpisodeReplayBuffer(**{k: options[k] for k in keep if k in options})
            self._ray_replay_writer = writer
        return writer


class DirectWriteDQN(DQN):
    """RLlib's DQN with an asynchronous training step for direct writes: env runners keep stepping
    while the learner trains (Ape-X's shape, on RLlib's new API stack).

    With ``replay_buffer_config["env_runners_write"]`` and remote ``DirectWriteEnvRunner``s, each
    ``training_step``:

    1. collects the env runners' ``sample()`` calls that have finished (their metrics only: the rows
       went straight to the shards), sends the newest weights to exactly those runners, and tops every
       runner up to ``max_requests_in_flight_per_env_runner`` calls in flight, so no runner waits for
       the learner (DirectWriteDQNConfig: 2). A call takes ``rollout_fragment_length`` env steps when
       that is set, else ENV_STEPS_PER_CALL (50, as RLlib's Ape-X; DQN's "auto" is n_step, a few steps,
       where a call's own cost would dominate);
    2. runs the learner as DQN does (``sample_and_train_weight`` updates, each: a prioritized batch
       from the shards, a learner update, the TD errors back as priorities), without waiting for the
       env runners. ``training_intensity``, where set, caps the updates at that many replayed steps
       per sampled step (the learner waits for env steps rather than run ahead); unset, the learner
       trains as fast as it can, as Ape-X's does (the replay's ``samples_per_insert`` bounds it).

    Before ``num_steps_sampled_before_learning_starts`` env steps, a step waits up to 0.1 s for env
    runner results. Otherwise (no direct writes, or no remote env runners) it is DQN's own step.
    """

    @classmethod
    def get_default_config(cls) -> DQNConfig:
        # A plain DQNConfig: RLlib rebuilds a config that is not an instance of this class from its
        # dict, which turns the buffer's "type" string into a class; so DQNConfig(algo_class=
        # DirectWriteDQN) and DirectWriteDQNConfig() both build this algorithm as they are.
        return DQNConfig(algo_class=cls)  # type: ignore[no-untyped-call]  # untyped in RLlib

    def setup(self, config: Any) -> None:
        super().setup(config)
        self._trained_modules: set[str] = set()  # the modules the learner has updated (their weights go to the env runners)
        self._replayed = 0  # timesteps the learner has trained on

    def training_step(self) -> None:
        config: Any = self.config  # RLlib's attributes are typed Optional; set by setup()
        metrics: Any = self.metrics
        runners: Any = self.env_runner_group
        if not (config.replay_buffer_config or {}).get("env_runners_write") or not runners or runners.num_remote_env_runners() == 0:
            super().training_step()
            return
        learning = self._env_steps() >= config.num_steps_sampled_before_learning_starts
        with metrics.log_time((TIMERS, ENV_RUNNER_SAMPLING_TIMER)):
            ready = runners.fetch_ready_async_reqs(tags=_SAMPLE_TAG, timeout_seconds=0.0 if learning else 0.1)
            if ready:
                metrics.aggregate([report for _, report in ready], key=ENV_RUNNER_RESULTS)
                if self._trained_modules:  # they sample next with the learner's newest weights
                    runners.sync_weights(from_worker_or_learner_group=self.learner_group, policies=sorted(self._trained_modules),
                                         to_worker_indices=[runner for runner, _ in ready], inference_only=True)
            steps = config.rollout_fragment_length if isinstance(config.rollout_fragment_length, int) else ENV_STEPS_PER_CALL
            for _ in range(config.max_requests_in_flight_per_env_runner):  # each pass starts at most one call per runner
                if not runners.foreach_env_runner_async("sample_and_report", tag=_SAMPLE_TAG, kwargs={"num_timesteps": steps}):
                    break
        if self._env_steps() < config.num_steps_sampled_before_learning_starts:
            return
        _, updates = calculate_rr_weights(config)
        for _ in range(int(updates)):
            if config.training_intensity and self._replayed + config.total_train_batch_size > config.training_intensity * self._env_steps():
                time.sleep(0.001)  # ahead of the env runners by the intensity asked for: let them catch up
                return
            self._learn_from_replay()

    def _env_steps(self) -> int:
        metrics: Any = self.metrics
        return int(metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0))

    def _learn_from_replay(self) -> None:
        """One learner update on a batch from the replay, its TD errors back as priorities: the learner
        half of RLlib's ``DQN._training_step_new_api_stack`` (RLlib 2.60), for a stateless module."""
        config: Any = self.config
        metrics: Any = self.metrics
        buffer: Any = self.local_replay_buffer
        learners: Any = self.learner_group
        with metrics.log_time((TIMERS, REPLAY_BUFFER_SAMPLE_TIMER)):
            episodes = buffer.sample(num_items=config.total_train_batch_size, n_step=config.n_step, gamma=config.gamma,
                                     beta=config.replay_buffer_config.get("beta"), sample_episodes=True)
            metrics.aggregate([buffer.get_metrics()], key=REPLAY_BUFFER_RESULTS)
        with metrics.log_time((TIMERS, LEARNER_UPDATE_TIMER)):
            results = learners.update(episodes=episodes, timesteps={
                NUM_ENV_STEPS_SAMPLED_LIFETIME: self._env_steps(),
                NUM_AGENT_STEPS_SAMPLED_LIFETIME: metrics.peek((ENV_RUNNER_RESULTS, NUM_AGENT_STEPS_SAMPLED_LIFETIME), default={}),
            })
            td_errors: dict[str, list[Any]] = defaultdict(list)
            for result in results:
                for module_id, module_results in result.items():
                    if TD_ERROR_KEY in module_results:
                        td_errors[module_id].extend(convert_to_numpy(module_results.pop(TD_ERROR_KEY).peek()))
            metrics.aggregate(results, key=LEARNER_RESULTS)
        with metrics.log_time((TIMERS, REPLAY_BUFFER_UPDATE_PRIOS_TIMER)):
            update_priorities_in_episode_replay_buffer(replay_buffer=buffer, td_errors={
                module_id: {TD_ERROR_KEY: np.concatenate(errors, axis=0)} for module_id, errors in td_errors.items()})
        self._trained_modules = set(results[0]) - {ALL_MODULES}
        self._replayed += config.total_train_batch_size


class DirectWriteDQNConfig(DQNConfig):
    """``DQNConfig`` for :class:`DirectWriteDQN`: ``DirectWriteEnvRunner`` as the env runner class and
    ``max_requests_in_flight_per_env_runner=2`` (a runner's next sample() call is queued before its
    current one ends, so it never idles between them; an ordinary RLlib setting)."""

    def __init__(self, algo_class: type | None = None) -> None:
        super().__init__(algo_class=algo_class or DirectWriteDQN)  # type: ignore[no-untyped-call]  # untyped in RLlib
        self.env_runner_cls: Any = DirectWriteEnvRunner
        self.max_requests_in_flight_per_env_runner = 2
