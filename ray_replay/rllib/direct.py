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
the shards; the driver's first sample waits for the first rows. Flat (Box/Discrete)
spaces: the driver does not see the episodes, so it cannot learn a Dict/Tuple layout from them. Nor
does it hold the newest observation of an unfinished episode (its env runner does), so the driver
draws again the starts whose o_t+n is that observation; sampled sequences carry no episode ids.
"""

from __future__ import annotations

from typing import Any

from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

from ray_replay.rllib.episode_buffer import NativeEpisodeReplayBuffer

__all__ = ["DirectWriteEnvRunner"]


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
