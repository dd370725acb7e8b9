"""Where a coordinator's shards run: placement groups, and the actor options that put replica (role, k)
in its bundle. The only Ray scheduling code of the distributed layer.

The GCS places all bundles of one placement group with a whole-cluster view, which spreads shards
over nodes reliably (SPREAD scheduling of single actors does not). A named coordinator's groups are
named and detached, like its shards, so a successor under the same name finds and keeps them.
"""

from __future__ import annotations

from typing import Any

import ray
from ray.util.placement_group import get_placement_group, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

__all__ = ["PLACEMENTS", "ROLES", "bundle_options", "make_placement", "remove_placement", "shard_actor_name"]

PLACEMENTS = ("spread", "pack")
ROLES = ("shard", "backup")  # primary, then replica


def shard_actor_name(coordinator_name: str, role: str, k: int) -> str:
    """The detached actor name of a named coordinator's replica (role, k)."""
    return f"{coordinator_name}/{role}-{k}"


def make_placement(coordinator_name: str | None, placement: str, options: dict[str, Any], num_shards: int, replication: int) -> list[Any]:
    """Placement groups: one SPREAD group of one bundle per shard, or with replication one pair per
    shard (STRICT_SPREAD: primary and backup on two nodes, when the cluster has two; PACK on one).
    None for "pack" without replication, or when ``options`` brings its own scheduling_strategy.
    Sets ``options["num_cpus"]`` (default 0.01: a bundle must hold something; shards mostly wait on
    I/O). Blocking: one GCS call per group (not waited for placement)."""
    if (placement != "spread" and replication == 1) or "scheduling_strategy" in options:
        return []
    options.setdefault("num_cpus", 0.01)
    bundle = {"CPU": options["num_cpus"], **options.get("resources", {})}
    lifetime = {"lifetime": "detached"} if coordinator_name else {}
    if replication == 1:
        groups = [([bundle] * num_shards, "SPREAD", "placement")]
    else:
        cluster: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]  # untyped in Ray
        nodes = sum(1 for node in cluster if node["Alive"])
        groups = [([bundle, bundle], "STRICT_SPREAD" if nodes >= 2 else "PACK", f"placement-{k}") for k in range(num_shards)]
    made = []
    for bundles, strategy, label in groups:
        name = f"{coordinator_name}/{label}" if coordinator_name else ""
        try:
            made.append(get_placement_group(name) if name else None)
        except ValueError:  # no group of that name yet
            made.append(None)
        if made[-1] is None:
            made[-1] = placement_group(bundles, strategy=strategy, name=name, **lifetime)
    return made


def bundle_options(groups: list[Any], k: int, role: str, replication: int) -> dict[str, Any]:
    """The scheduling_strategy that puts replica (role, k) in its bundle ({} without groups)."""
    if not groups:
        return {}
    if replication == 1:  # one group over the shards (with replication: one group per pair, even of one shard)
        group, index = groups[0], k
    else:
        group, index = groups[k], ROLES.index(role)
    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=index)}


def remove_placement(groups: list[Any]) -> None:
    for group in groups:
        remove_placement_group(group)
