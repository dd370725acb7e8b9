"""Ape-X DQN (Horgan et al. 2018) trained through ray_replay's sharded prioritized replay.

N epsilon-greedy actors (Ray actors, the Ape-X epsilon ladder) write n-step transitions with their
own initial priorities; one learner samples prioritized batches, does double DQN with importance
weights, writes new priorities for every batch and publishes its weights through Ray's object store.

::

    from ray_replay.apex import ApexConfig, train
    ray_replay.init_ray()
    summary = train(ApexConfig(env_id="CartPole-v1", num_actors=2), seconds=300)

or ``ray-replay demo`` (CartPole-v1 until an evaluation return of 475). Needs torch and gymnasium
(the ``apex`` or ``rllib`` extra); ``import ray_replay`` never imports this package.
"""

from __future__ import annotations

from ray_replay.apex.config import ApexConfig, actor_epsilon
from ray_replay.apex.nstep import NStepBuilder
from ray_replay.apex.run import SUMMARY_KEYS, train

__all__ = ["SUMMARY_KEYS", "ApexConfig", "NStepBuilder", "actor_epsilon", "train"]
