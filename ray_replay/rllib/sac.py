"""SAC with ray_replay's buffer: RLlib 2.60's ``SACConfig.validate`` accepts only built-in type names.

``SACConfig`` here validates a ray_replay buffer type as if it were the built-in
``PrioritizedEpisodeReplayBuffer`` (which it subclasses and stands in for) and builds ``SAC``, whose
default config is this class, so Tune's resource request validates the same way.
"""

from __future__ import annotations

from ray.rllib.algorithms.sac import sac as rllib_sac

__all__ = ["SAC", "SACConfig"]

_STAND_IN = "PrioritizedEpisodeReplayBuffer"


class SACConfig(rllib_sac.SACConfig):
    """``ray.rllib.algorithms.sac.SACConfig`` that also accepts ``"ray_replay.rllib.*"`` buffer types."""

    def __init__(self, algo_class: type | None = None) -> None:
        super().__init__(algo_class=algo_class or SAC)  # type: ignore[no-untyped-call]  # untyped in RLlib

    def validate(self) -> None:
        buffer_config = self.replay_buffer_config
        buffer_type = buffer_config.get("type") if isinstance(buffer_config, dict) else None
        if not (isinstance(buffer_type, str) and buffer_type.startswith("ray_replay.")):
            super().validate()
            return
        # Swapped in place (the config may already be frozen) and always restored.
        buffer_config["type"] = _STAND_IN
        try:
            super().validate()
        finally:
            buffer_config["type"] = buffer_type


class SAC(rllib_sac.SAC):
    """RLlib's SAC whose default config is :class:`SACConfig`."""

    @classmethod
    def get_default_config(cls) -> SACConfig:  # type: ignore[override]  # as RLlib's SAC over DQN
        return SACConfig()
