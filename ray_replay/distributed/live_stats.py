"""``ray-replay stats``: a refreshing table of a running ReplayCoordinator's per-shard statistics."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["format_stats", "watch"]

_COLUMNS = ("shard", "state", "node", "size", "capacity", "inserts/s", "samples/s", "stale", "mass", "add p99 us", "sample p99 us", "restarts")


def _row(name: str, s: Mapping[str, Any], before: Mapping[str, Any] | None, elapsed: float) -> list[str]:
    def rate(key: str) -> str:
        if before is None or elapsed <= 0:
            return "-"
        return f"{(s[key] - before[key]) / elapsed:,.0f}"

    return [
        name,
        str(s.get("state", "alive")),
        str(s.get("node_id", "-"))[:8],
        f"{s['size']:,}",
        f"{s['capacity']:,}",
        rate("adds"),
        rate("samples"),
        f"{s.get('stale_priority_updates', 0):,}",
        f"{s['total_priority']:.4g}" if "total_priority" in s else "-",
        f"{s.get('add_p99_ns', 0) / 1e3:.1f}" if "add_p99_ns" in s else "-",
        f"{s.get('sample_p99_ns', 0) / 1e3:.1f}" if "sample_p99_ns" in s else "-",
        str(s.get("restarts", 0)),
    ]


def format_stats(stats: Mapping[str, Any], previous: Mapping[str, Any] | None = None, elapsed: float = 0.0) -> str:
    """Markdown-style table of ``ReplayCoordinator.stats()``; rates need the previous snapshot."""
    old_shards = {s["shard"]: s for s in previous["shards"]} if previous else {}
    rows = [_row(str(s["shard"]), s, old_shards.get(s["shard"]), elapsed) for s in stats["shards"]]
    rows.append(_row("total", stats["total"], previous["total"] if previous else None, elapsed))
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(_COLUMNS)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(_COLUMNS, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(v.rjust(w) for v, w in zip(r, widths)) + " |" for r in rows]
    return "\n".join(lines)


def watch(address: str, name: str, namespace: str | None, interval: float, once: bool) -> int:
    """Joins the cluster at ``address``, finds the named coordinator and prints its stats until Ctrl-C."""
    import ray

    from ray_replay.distributed.runtime import init_ray

    init_ray(address, namespace=namespace, logging_level="ERROR", log_to_driver=False)
    try:
        try:
            coordinator: Any = ray.get_actor(name, namespace=namespace)  # ActorHandle types its methods as Never
        except ValueError:
            print(f"no ReplayCoordinator named {name!r} in namespace {namespace!r}", file=sys.stderr)
            return 1
        previous, previous_time = None, 0.0
        while True:
            stats = ray.get(coordinator.stats.remote())
            now = time.monotonic()
            table = format_stats(stats, previous, now - previous_time)
            if sys.stdout.isatty() and not once:
                print("\033[2J\033[H", end="")  # clear the screen, cursor home
            print(f"{name}: {stats['total']['buffer_type']}, {stats['total']['num_shards']} shards, {time.strftime('%H:%M:%S')}")
            print(table, flush=True)
            if once:
                return 0
            previous, previous_time = stats, now
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0
    finally:
        ray.shutdown()
