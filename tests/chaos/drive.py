"""The driver of one network scenario, run by netbed.NetBed.run_driver in the head's namespace:
``drive.py SCENARIO OUT_JSON OPTIONS_JSON``. It joins the bed's Ray, starts a ReplayCoordinator and the
load (load.Load), applies the scenario's fault through netbed.Faults at the scenario's moment, and
writes what it measured to OUT_JSON; the pytest side (test_network_faults.py) asserts the invariants.
Times in the result are seconds relative to the fault's start ("fault_at") or end ("healed_at").
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np
import ray
from helpers import SCHEMA, transitions
from load import Load, held_exactly, stored
from netbed import Faults, attached

from ray_replay.distributed import ReplayCoordinator

RECOVERY_TIMEOUT_S = 120


def node_names() -> dict[str, str]:
    """Ray node id -> the bed's node name."""
    by_address = {spec["address"]: name for name, spec in attached()["nodes"].items()}
    return {node["NodeID"]: by_address.get(node["NodeManagerAddress"], "?") for node in ray.nodes()}


def layout(replay: Any) -> list[dict[str, str]]:
    """Where each shard's replicas are: [{"shard": node name, "backup": node name}, ...]."""
    names = node_names()
    shards = ray.get(replay.stats.remote(), timeout=60)["shards"]
    return [{"shard": names[s["node_id"]], **({"backup": names[s["backup"]["node_id"]]} if "backup" in s else {})} for s in shards]


def coordinator(options: dict[str, Any], **overrides: Any) -> Any:
    where = {"num_cpus": 0, "resources": {options.get("coordinator_on", "head"): 0.01}}
    kwargs = {"capacity": 200_000, "num_shards": 2, "buffer_type": "prioritized", "schema": SCHEMA, "seed": 0,
              "shard_timeout_s": 2.0, "health_check_interval_s": 0.2, **overrides}
    replay = ReplayCoordinator.options(**where).remote(**kwargs)
    try:
        ray.get(replay.stats.remote(), timeout=RECOVERY_TIMEOUT_S)  # every replica up
    except ray.exceptions.GetTimeoutError as error:
        from ray.util import placement_group_table

        nodes = [(n["NodeManagerAddress"], n["Alive"], n["Resources"], n.get("AvailableResources")) for n in ray.nodes()]
        groups = [(g["name"], g["state"], g["strategy"]) for g in placement_group_table().values()]
        raise RuntimeError(f"the coordinator's replicas did not all start: nodes {nodes}; placement groups {groups}") from error
    return replay


def settle(replay: Any, replicated: bool, timeout_s: float = RECOVERY_TIMEOUT_S) -> tuple[dict[str, Any], float]:
    """Waits until every replica is alive again; (the coordinator's stats, seconds it took)."""
    started = time.monotonic()
    while True:
        stats = ray.get(replay.stats.remote(), timeout=60)
        replicas = stats["shards"] + ([s["backup"] for s in stats["shards"]] if replicated else [])
        if all(s["state"] == "alive" for s in replicas):
            return stats, time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(f"replicas not all alive after {timeout_s} s: {[s['state'] for s in replicas]}")
        time.sleep(0.2)


def verdict(replay: Any, load: Load, replicated: bool) -> dict[str, Any]:
    """The invariants' raw figures, after the load stopped and every replica is alive."""
    hung = load.finish()
    stats, settled_s = settle(replay, replicated)
    acknowledged = load.acknowledged_actions()
    result = {**load.summary(), "hung_threads": hung, "settled_s": settled_s,
              "primaries": held_exactly(stored(replay), acknowledged)}
    if replicated:
        result["backups"] = held_exactly(stored(replay, "backup_handles"), acknowledged)
    total = stats["total"]
    applied = total["priority_updates"] + total["stale_priority_updates"] + sum(s["updates_for_lost_rows"] for s in stats["shards"])
    result["priority_updates"] = {"sent": load.updates_sent, "applied_or_stale": applied,
                                  "dropped_by_learner": load.dropped_updates, "dropped_by_coordinator": total["dropped_priority_updates"]}
    result["shard_failures"] = [s["failures"] for s in stats["shards"]]
    result["backup_failures"] = [s["backup"]["failures"] for s in stats["shards"]] if replicated else []
    result["rows_lost"] = total["rows_lost"]
    return result


def timeline(load: Load, fault_at: float, healed_at: float, end: float, before: float) -> dict[str, Any]:
    return {"rate_before": load.rate(before, fault_at), "rate_during": load.rate(fault_at, healed_at),
            "rate_after": load.rate(healed_at, end), "samples_during": load.samples_between(fault_at, healed_at),
            "longest_sample_gap_during_s": load.longest_sample_gap(fault_at, healed_at),
            "first_sample_after_heal_s": load.first_sample_after(healed_at),
            "longest_sample_gap_after_heal_s": load.longest_sample_gap(healed_at, end),
            "fault_s": healed_at - fault_at}


# -- the scenarios -----------------------------------------------------------------------------------


def slow_node(faults: Faults, options: dict[str, Any]) -> dict[str, Any]:
    """(4) The node with the delay line: ``delay_ms`` on every frame it sends and ``loss`` of them dropped,
    for ``fault_s``; no replication (every shard is a single copy: nothing may be lost, nothing may hang)."""
    replay = coordinator(options)
    where = layout(replay)
    load = Load(replay).start()
    load.wait_rows(1000)
    before = time.monotonic()
    time.sleep(options.get("phase_s", 8))
    fault_at = time.monotonic()
    faults.slow(options["node"], options.get("delay_ms", 50), options.get("loss", 0.01))
    time.sleep(options.get("fault_s", 12))
    healed_at = time.monotonic()
    faults.slow(options["node"], 0, 0)
    time.sleep(options.get("phase_s", 8))
    end = time.monotonic()
    return {"layout": where, **timeline(load, fault_at, healed_at, end, before), **verdict(replay, load, replicated=False)}


def partition(faults: Faults, options: dict[str, Any]) -> dict[str, Any]:
    """(1), (2) The node holding shard 0's ``role`` ("shard": its primary, "backup": its backup) is cut off
    for ``fault_s`` seconds, then healed; replication_factor=2."""
    replay = coordinator(options, num_shards=options.get("num_shards", 2), replication_factor=2)
    where = layout(replay)
    victim = where[0][options["role"]]
    load = Load(replay).start()
    load.wait_rows(1500)
    before = time.monotonic()
    time.sleep(2)
    fault_at = time.monotonic()
    faults.partition(victim)
    time.sleep(options.get("fault_s", 5))
    healed_at = time.monotonic()
    faults.heal(victim)
    # Refilled before it serves: poll until the stale replica is alive again, recording its size then.
    rejoined_s, sizes_at_rejoin = None, None
    while time.monotonic() - healed_at < RECOVERY_TIMEOUT_S:
        stats = ray.get(replay.stats.remote(), timeout=60)
        replicas = stats["shards"] + [s["backup"] for s in stats["shards"]]
        if all(s["state"] == "alive" for s in replicas):
            rejoined_s = time.monotonic() - healed_at
            sizes_at_rejoin = [[s["size"], s["backup"]["size"]] for s in stats["shards"]]
            break
        time.sleep(0.1)
    time.sleep(options.get("phase_s", 6))
    end = time.monotonic()
    return {"layout": where, "victim": victim, **timeline(load, fault_at, healed_at, end, before), "rejoined_s": rejoined_s,
            "sizes_at_rejoin": sizes_at_rejoin, **verdict(replay, load, replicated=True)}


def coordinator_cut(faults: Faults, options: dict[str, Any]) -> dict[str, Any]:
    """(3) The coordinator runs on ``coordinator_on``'s node, which loses its path to ``cut_from`` (the node of
    half the shards) for ``fault_s``: the writers and the learner (clients on the head) still reach every
    shard; writes and samples through the coordinator go on over the shards it reaches."""
    options = {**options, "coordinator_on": f"node_{options['coordinator_node']}"}
    replay = coordinator(options)
    where = layout(replay)
    load = Load(replay).start()
    load.wait_rows(1000)
    before = time.monotonic()
    time.sleep(2)
    through_coordinator: list[int] = []  # rows acknowledged by coordinator.add_batch during the cut
    uncertain: list[int] = []  # rows of a write that failed: maybe stored (once), never written again
    fault_at = time.monotonic()
    faults.block(options["coordinator_node"], [options["cut_from"]])
    coordinator_samples, coordinator_errors = 0, []
    base = 9 * 10_000_000  # a writer of its own, through the coordinator
    next_id = base
    while time.monotonic() - fault_at < options.get("fault_s", 5):
        ids = range(next_id, next_id + 50)
        next_id += 50  # a failed write's rows are not written again: they may be stored (ShardUnavailableError says so)
        try:
            ray.get(replay.add_batch.remote(**transitions(50, ids.start)), timeout=30)
            through_coordinator.extend(ids)
        except Exception as error:  # noqa: BLE001 - reported
            uncertain.extend(ids)
            coordinator_errors.append(repr(error))
        try:
            ray.get(replay.sample.remote(32), timeout=30)
            coordinator_samples += 1
        except Exception as error:  # noqa: BLE001 - reported
            coordinator_errors.append(repr(error))
        time.sleep(0.05)
    stats_during = ray.get(replay.stats.remote(), timeout=60)
    healed_at = time.monotonic()
    faults.unblock(options["coordinator_node"])
    time.sleep(options.get("phase_s", 6))
    end = time.monotonic()
    result = {"layout": where, **timeline(load, fault_at, healed_at, end, before), "coordinator_samples_during": coordinator_samples,
              "coordinator_errors": coordinator_errors, "states_during": [s["state"] for s in stats_during["shards"]],
              "rows_through_coordinator": len(through_coordinator)}
    hung = load.finish()
    stats, settled_s = settle(replay, replicated=False)
    acknowledged = np.sort(np.concatenate([load.acknowledged_actions(), np.asarray(through_coordinator, np.int64)]))
    summary = load.summary()
    sampled = np.unique(np.concatenate(load.sampled)) if load.sampled else np.zeros(0, np.int64)
    summary["sampled_never_acknowledged"] = int(np.setdiff1d(sampled, acknowledged).size)
    held = stored(replay)
    maybe = np.isin(held, np.asarray(uncertain, np.int64))
    _, uncertain_counts = np.unique(held[maybe], return_counts=True)
    summary["sampled_never_acknowledged"] = int(np.setdiff1d(sampled, np.concatenate([acknowledged, np.asarray(uncertain, np.int64)])).size)
    result.update({**summary, "hung_threads": hung, "settled_s": settled_s, "primaries": held_exactly(held[~maybe], acknowledged),
                   "uncertain_rows": len(uncertain), "uncertain_rows_held": int(maybe.sum()),
                   "uncertain_rows_held_twice": int((uncertain_counts > 1).sum()), "rows_lost": stats["total"]["rows_lost"]})
    return result


SCENARIOS = {"slow_node": slow_node, "partition": partition, "coordinator_cut": coordinator_cut}


def main(scenario: str, out: str, options_json: str) -> None:
    bed = attached()
    ray.init(address=bed["gcs_address"], _node_ip_address=bed["nodes"]["head"]["address"], log_to_driver=False)
    try:
        result = SCENARIOS[scenario](Faults(bed), json.loads(options_json))
    finally:
        for name in bed["nodes"]:  # never leave a fault behind for the next scenario
            faults = Faults(bed)
            faults.heal(name)
            faults.unblock(name, missing_ok=True)
            if bed["nodes"][name]["delay_line"]:
                faults.slow(name, 0, 0)
    with open(out, "w") as file:
        json.dump(result, file, default=float)
    ray.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
