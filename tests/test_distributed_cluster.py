"""A simulated 3-node Ray cluster on this machine (loopback): shards spread over nodes and work across them."""

from __future__ import annotations

import numpy as np
import pytest
import ray
from helpers import SCHEMA, assert_rows_consistent, transitions, wait_for

from ray_replay.distributed import ReplayClient, ReplayCoordinator
from ray_replay.distributed.runtime import LOOPBACK, init_ray

STARTUP_TIMEOUT_S = 120  # for the nodes to register, and for replicas to come back after a node is removed


@pytest.fixture
def cluster(ray_stopped):
    """Head + 2 workers, 1 CPU each, all on loopback; the driver connects to it. Everything is stopped after."""
    from ray.cluster_utils import Cluster

    cluster = Cluster()
    try:
        for index in range(3):  # the head carries a "head" resource, for actors that must outlive a worker node
            cluster.add_node(num_cpus=1, node_ip_address=LOOPBACK, include_dashboard=False, object_store_memory=128 * 1024**2,
                             resources={"head": 1} if index == 0 else {}, wait=False)
        cluster.wait_for_nodes(timeout=STARTUP_TIMEOUT_S)  # add_node(wait=True) would allow each node 30 s
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


def stored_actions(replay, handles: str = "shard_handles") -> np.ndarray:
    states = ray.get([shard.get_state.remote() for shard in ray.get(getattr(replay, handles).remote())])
    return np.sort(np.concatenate([s["columns"]["action"] for s in states if "columns" in s]))


def test_with_replication_removing_a_node_loses_no_acknowledged_row(cluster):
    replay = ReplayCoordinator.options(num_cpus=0, resources={"head": 0.01}).remote(
        capacity=20_000, num_shards=2, buffer_type="prioritized", schema=SCHEMA, seed=1, replication_factor=2,
        health_check_interval_s=0.2, shard_timeout_s=10.0)
    shards = ray.get(replay.stats.remote())["shards"]
    assert all(s["node_id"] != s["backup"]["node_id"] for s in shards), "a shard and its backup share a node"
    client = ReplayClient(replay, batch_rows=100, seed=0)
    for start in range(0, 2000, 100):
        client.add_batch(**transitions(100, start))
    client.flush()  # acknowledged: rows 0..1999
    hosting = {s["node_id"] for s in shards} | {s["backup"]["node_id"] for s in shards}
    victim = next(node for node in cluster.worker_nodes if node.node_id in hosting)
    cluster.remove_node(victim)

    for start in range(2000, 3000, 100):  # writers and the learner carry on while the node is gone
        client.add_batch(**transitions(100, start))
        client.flush()
        batch = client.sample(64)
        assert_rows_consistent({k: v for k, v in batch.items() if k in SCHEMA})
    seen: list = []  # the replicas' states and the total size, as last polled

    def replicas_back() -> list[dict] | None:
        stats = ray.get(replay.stats.remote())
        replicas = stats["shards"] + [s["backup"] for s in stats["shards"]]
        seen[:] = [[s["state"] for s in replicas], stats["total"]["size"]]
        return replicas if all(s["state"] == "alive" for s in replicas) and stats["total"]["size"] == 3000 else None

    replicas = wait_for(replicas_back, STARTUP_TIMEOUT_S, lambda: f"the replicas to come back (states, size: {seen})", interval_s=0.2)
    assert victim.node_id not in {s["node_id"] for s in replicas}
    np.testing.assert_array_equal(stored_actions(replay), np.arange(3000))
    np.testing.assert_array_equal(stored_actions(replay, "backup_handles"), np.arange(3000))
    client.close()
    ray.get(replay.shutdown.remote())
