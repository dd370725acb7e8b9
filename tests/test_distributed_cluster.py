"""A simulated 3-node Ray cluster on this machine (loopback): shards spread over nodes and work across them."""

from __future__ import annotations

import numpy as np
import pytest
import ray
from helpers import SCHEMA, assert_rows_consistent, transitions

from ray_replay.distributed import ReplayClient, ReplayCoordinator
from ray_replay.distributed.runtime import LOOPBACK, init_ray


@pytest.fixture
def cluster(ray_stopped):
    """Head + 2 workers, 1 CPU each, all on loopback; the driver connects to it. Everything is stopped after."""
    from ray.cluster_utils import Cluster

    cluster = Cluster()
    try:
        for _ in range(3):
            cluster.add_node(num_cpus=1, node_ip_address=LOOPBACK, include_dashboard=False, object_store_memory=128 * 1024**2)
        init_ray(address=cluster.address)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_shards_spread_over_nodes_and_serve_across_them(cluster):
    replay = ReplayCoordinator.remote(capacity=3000, num_shards=3, buffer_type="prioritized", schema=SCHEMA, seed=1)
    nodes = [s["node_id"] for s in ray.get(replay.stats.remote())["shards"]]
    assert len(set(nodes)) == 3, f"shards share nodes: {nodes}"
    client = ReplayClient(replay, batch_rows=100)
    for start in range(0, 900, 50):
        client.add_batch(**transitions(50, start))
    client.flush()
    sizes = [s["size"] for s in ray.get(replay.stats.remote())["shards"]]
    assert sum(sizes) == 900 and min(sizes) > 0
    for batch in (client.sample(256), ray.get(replay.sample.remote(256))):
        assert_rows_consistent({k: v for k, v in batch.items() if k in SCHEMA})
        assert set((batch["ids"] >> 48).tolist()) == {0, 1, 2}
        client.update_priorities(batch["ids"], np.full(256, 2.0))
    client.close()
    total = ray.get(replay.stats.remote())["total"]
    assert total["priority_updates"] + total["stale_priority_updates"] == 512
    ray.get(replay.shutdown.remote())
