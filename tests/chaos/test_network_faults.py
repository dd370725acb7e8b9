"""Scenarios 1-4 of issue 18 on a Ray cluster of network namespaces (tests/chaos/netbed.py): a head (GCS,
coordinator, driver with two writers and a learner) and two worker nodes holding the shards, w2 behind a
delay line. Each scenario runs in a driver of its own (drive.py) inside the head's namespace; here its
measurements are checked against the invariants:

* every acknowledged row is held exactly once (on the primaries; with replication_factor=2 on the
  backups too); no row is held or sampled that was never acknowledged;
* nothing hangs: every writer and the learner finish, no acknowledgement waits beyond its bound;
* sampling resumes within 2 s of the fault ending (or of the failover, where the fault lasts);
* priority updates are applied (or found stale) or counted as dropped.

Each measured figure is printed (pytest -s shows it), for docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from netbed import NetBed, can_make_namespaces

RESUME_S = 2.0  # the bound on sampling resuming after a fault ends
SHARD_TIMEOUT_S = 2.0  # drive.coordinator's shard_timeout_s: the bound on any one wait for a replica


@pytest.fixture(scope="module")
def bed(_session_ray):
    _session_ray.stop()  # this pytest process's own Ray, if an earlier module started one: not needed here
    why = can_make_namespaces()
    if why is not None:
        pytest.fail(f"the chaos test bed needs network namespaces: {why}", pytrace=False)
    netbed = NetBed([{"name": "w1"}, {"name": "w2", "delay_line": True}])
    with netbed:
        yield netbed
    assert netbed.leftovers() == [], "namespaces left behind"
    deadline = time.monotonic() + 30
    while (alive := [p for pids in netbed.started_pids.values() for p in pids if os.path.exists(f"/proc/{p}")]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive, f"processes of the bed still running: {alive}"


def report(name: str, result: dict) -> None:
    keep = {k: v for k, v in result.items() if k not in ("client_stats",)}
    print(f"\n[chaos] {name}: {json.dumps(keep, default=float)}")


def check_invariants(result: dict, replicated: bool) -> None:
    assert result["errors"] == [], result["errors"]
    assert result["hung_threads"] == []
    assert result["acknowledged_rows"] > 0 and result["samples"] > 0
    assert result["primaries"] == {"missing": 0, "duplicated": 0, "never_acknowledged": 0}
    if replicated:
        assert result["backups"] == {"missing": 0, "duplicated": 0, "never_acknowledged": 0}
    assert result["sampled_never_acknowledged"] == 0
    assert result["rows_lost"] == 0
    # No acknowledgement waited past its bound: one shard_timeout_s for a silent replica, plus a retry.
    assert result["longest_flush_s"] < 3 * SHARD_TIMEOUT_S + 1.0, result["longest_flush_s"]
    for stats in result.get("client_stats", []):
        assert stats["rows_failed"] == 0 and stats["rows_in_flight"] == 0 and stats["writes_in_flight"] == 0


def test_the_bed_uses_only_its_own_addresses(bed):
    """Every TCP connection of every node (the GCS's with each raylet included) is between the bed's addresses."""
    assert any("6379" in line for line in bed.connections(bed.head)), "no connection to the GCS seen"
    for node in bed.nodes.values():
        for line in bed.connections(node):
            local, peer = line.split()[3:5]  # State Recv-Q Send-Q Local:Port Peer:Port
            for endpoint in (local, peer):
                host = endpoint.rsplit(":", 1)[0].strip("[]").removeprefix("::ffff:")
                assert host.startswith("10.77.0.") or host.startswith("127."), f"{node.name}: {line}"


def test_4_a_slow_lossy_node(bed):
    """w2 sends every frame 50 ms late and drops 1 % of them for 12 s (the issue's 30 s, shortened for
    a shared 2-core machine): throughput drops, nothing is lost, nothing hangs, and every priority
    update is applied (no replica failed, so none may be dropped)."""
    result = bed.run_driver("slow_node", timeout=600, node="w2", delay_ms=50, loss=0.01, fault_s=12)
    report("slow node", result)
    check_invariants(result, replicated=False)
    assert result["rate_during"] < 0.8 * result["rate_before"], "the delay did not slow the writers: was it applied?"
    assert result["samples_during"] > 0 and result["longest_sample_gap_during_s"] < SHARD_TIMEOUT_S
    assert result["first_sample_after_heal_s"] < RESUME_S
    updates = result["priority_updates"]
    assert updates["applied_or_stale"] + updates["dropped_by_learner"] + updates["dropped_by_coordinator"] == updates["sent"]


@pytest.mark.parametrize("role", ["shard", "backup"])
def test_1_2_a_partitioned_replica_then_healed(bed, role):
    """(1) The node of shard 0's primary, (2) of its backup, cut off for 5 s, then healed, with
    replication_factor=2: no acknowledged row lost or doubled on either replica (no split brain: the
    cut-off side took no acknowledged write of its own), the stale replica is refilled before it serves
    (its size at rejoining equals its peer's), sampling resumes within 2 s of the heal."""
    result = bed.run_driver("partition", timeout=600, role=role, num_shards=1 if role == "backup" else 2, fault_s=5)
    report(f"partitioned {role}", result)
    check_invariants(result, replicated=True)
    assert result["first_sample_after_heal_s"] is not None and result["first_sample_after_heal_s"] < RESUME_S
    assert result["rejoined_s"] is not None
    for primary, backup in result["sizes_at_rejoin"]:
        assert abs(primary - backup) <= 2 * 50 * 2  # equal but for the writes in flight at that moment (2 writers, 50 rows)
    failures = result["shard_failures"] if role == "shard" else result["backup_failures"]
    assert failures[0] >= 1, "the partition was not noticed"
    if role == "backup":  # the primary kept serving all along
        assert result["samples_during"] > 0 and result["longest_sample_gap_during_s"] < SHARD_TIMEOUT_S + 1.0
    updates = result["priority_updates"]
    assert updates["sent"] > 0


def test_3_the_coordinators_node_cut_from_half_of_the_shards(bed):
    """The coordinator runs on w2, which loses its path to w1 (the other shard's node) for 5 s: clients on
    the head keep writing and sampling over both shards; the coordinator's own writes and samples go on
    over the shard it reaches; it marks the other down and takes it back after the heal."""
    result = bed.run_driver("coordinator_cut", timeout=600, coordinator_node="w2", cut_from="w1", fault_s=5)
    report("coordinator cut from half", result)
    check_invariants(result, replicated=False)
    shard_on_w1 = [entry["shard"] for entry in result["layout"]].index("w1")
    assert result["states_during"][shard_on_w1] != "alive" and result["states_during"][1 - shard_on_w1] == "alive"
    # A coordinator write already on its way to w1 when the cut began cannot be acknowledged, and must
    # not go elsewhere (it would be stored twice once w1 applies it): it fails saying the rows may be
    # stored; the driver writes those rows never again, and they are held at most once. Every later
    # write goes to the shard the coordinator reaches.
    assert all("may be stored" in error for error in result["coordinator_errors"]), result["coordinator_errors"]
    assert result["uncertain_rows_held_twice"] == 0 and result["uncertain_rows"] <= 50 * len(result["coordinator_errors"])
    assert result["rows_through_coordinator"] > 0 and result["coordinator_samples_during"] > 0
    assert result["samples_during"] > 0 and result["longest_sample_gap_during_s"] < SHARD_TIMEOUT_S
    assert result["first_sample_after_heal_s"] < RESUME_S
