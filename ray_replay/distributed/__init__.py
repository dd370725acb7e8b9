"""Distributed replay on Ray: shards across nodes, a coordinator sampling globally, a fast client.

::

    replay = DistributedReplay(4_000_000, num_shards=4, buffer_type="prioritized")   # pass it anywhere
    replay.add_batch(states, actions, rewards, next_states, dones)  # straight to the shards, one hop
    batch = replay.sample(512)

    replay = ReplayCoordinator.remote(capacity=4_000_000, num_shards=4, buffer_type="prioritized")
    client = ReplayClient(replay)            # in a writer or a learner: talks to the shards directly
    client.add_batch(states, actions, rewards, next_states, dones)
    batch = client.sample(512)               # fields + global "weights", "ids", "probabilities"
    client.update_priorities(batch["ids"], new_priorities)
"""

from __future__ import annotations

from ray_replay.distributed.client import ReplayClient
from ray_replay.distributed.coordinator import ReplayCoordinator
from ray_replay.distributed.replay import DistributedReplay
from ray_replay.distributed.runtime import init_ray
from ray_replay.distributed.sampling import RateLimiter, ShardTable, Snapshot
from ray_replay.distributed.shard import ReplayShard, ReplayShardImpl
from ray_replay.errors import ShardFencedError, ShardUnavailableError, StalePlanError

__all__ = ["DistributedReplay", "RateLimiter", "ReplayClient", "ReplayCoordinator", "ReplayShard", "ReplayShardImpl", "ShardFencedError",
           "ShardTable", "ShardUnavailableError", "Snapshot", "StalePlanError", "init_ray"]
