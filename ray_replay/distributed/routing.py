"""Which shard takes which rows of a batch: the routing rule, free of Ray (used by writes.plan_batch).

Routing rule (``Router``). Capacity sharded over K shards must hold what it is given, so rows go
where there is room: a batch is *water-filled* into the shards with the fewest rows (as last
reported by each shard, plus the rows this caller has sent there since), never past a shard's room
while any shard has room, so that after N <= capacity rows in any mix of batch sizes the replay holds
all N and has evicted nothing. Rows beyond the replay's room (the replay is full: every new row
evicts one) are spread round robin, so every shard evicts at the same pace and the rows evicted are
among the oldest of the whole replay. A batch is cut into *runs* of consecutive rows, one per shard
it lands on; runs shorter than ``min_run_rows`` are merged into a neighbour's when that shard has
room for them (fewer, larger calls), so a small batch goes whole to one shard and shard sizes stay
within about one batch of each other. A stream's consecutive rows stay consecutive within a run:
observation dedup loses one link per cut (the first row of a run stores its state in full).

Stream-aware routing (``Router.plan_streams``, used when the writer passes ``stream=``/``streams=``):
each stream has a home shard and its rows go there, so a stream's consecutive rows stay in one shard
and sequences (``sample(seq_len=...)``) run across batches. The no-eviction rule still comes first: a
stream whose home lacks room for its rows while another shard has room moves (its rows fill the
emptiest shards in turn and the last of them becomes its home), which cuts its sequences once there.
A new stream's home is the emptiest shard. Once the replay is full, rows go to their home shard (each
evicts one there); a stream without a writable home is placed round robin. The homes are the
caller's own, like its sizes; past MAX_STREAM_HOMES streams they are forgotten (one more cut each).

Several writers route independently, each from what it has seen: two writers that both see the same
emptiest shard may overfill it by at most the rows they have in flight, when the replay is within
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["DEFAULT_MIN_RUN_ROWS", "MAX_STREAM_HOMES", "Router", "water_fill"]

DEFAULT_MIN_RUN_ROWS = 256  # below this a separate shard call costs more than the balance it buys
MAX_STREAM_HOMES = 1 << 20  # stream -> home shard entries a Router keeps


def water_fill(base: np.ndarray, limit: np.ndarray, amount: int, order: Sequence[int]) -> np.ndarray:
    """Integer x with 0 <= x <= limit - base and sum(x) = amount (<= sum(limit - base)) that raises the
    lowest base + x first (the water level); ties at the last level go in ``order``. O(K log amount)."""
    room = np.maximum(limit - base, 0)
    low, high = int(base.min()), int(base.max()) + amount + 1  # poured(low) = 0 <= amount; search the last level <= amount
    def poured(level: int) -> int:
        return int(np.minimum(np.maximum(level - base, 0), room).sum())
    while high - low > 1:
        middle = (low + high) // 2
        if poured(middle) <= amount:
            low = middle
        else:
            high = middle
    x: np.ndarray = np.minimum(np.maximum(low - base, 0), room)
    left = amount - int(x.sum())
    for k in order:  # one more row each to the shards at the level that still have room
        if left == 0:
            break
        if base[k] + x[k] == low and x[k] < room[k]:
            x[k] += 1
            left -= 1
    if left:
        raise ValueError(f"cannot pour {amount} rows into {int(room.sum())} rows of room")
    return x


class Router:
    """Which shard takes which rows of a batch (the routing rule in the module doc); one per caller.

    Args:
        capacities: each shard's capacity.
        min_run_rows: runs shorter than this are merged into another run where that fits.
    """

    def __init__(self, capacities: Sequence[int], min_run_rows: int = DEFAULT_MIN_RUN_ROWS, tie_order: Sequence[int] | None = None) -> None:
        self.capacities = np.asarray(capacities, dtype=np.int64)
        # Among shards equally full, the one earliest in tie_order comes first. Writers that start
        # together would all pick shard 0 first and stay in step; a random order per writer spreads them.
        self._rank = np.empty(len(capacities), dtype=np.int64)
        self._rank[np.asarray(tie_order if tie_order is not None else range(len(capacities)), dtype=np.int64)] = np.arange(len(capacities))
        self.sent = np.zeros(len(capacities), dtype=np.int64)  # rows on their way, not yet acknowledged
        self.min_run_rows = int(min_run_rows)
        self._cursor = 0  # round robin once the replay is full
        self._home: dict[int, int] = {}  # stream -> the shard that took its last rows (plan_streams)
        self.stream_moves = 0  # streams moved to another shard (each a sequence cut), for tests and stats

    @property
    def num_shards(self) -> int:
        return len(self.capacities)

    def acknowledged(self, k: int, rows: int) -> None:
        """A run of ``rows`` rows sent to shard k settled (taken, refused or to be sent elsewhere)."""
        self.sent[k] = max(self.sent[k] - rows, 0)

    @property
    def max_run_rows(self) -> int:
        """The longest run: a quarter of the smallest shard (one call never replaces more of a shard)."""
        return max(self.min_run_rows, int(self.capacities.min()) // 4)

    def plan(self, rows: int, writable: Sequence[bool], sizes: Sequence[int]) -> list[tuple[int, int, int]]:
        """Runs (shard, start, stop) covering rows [0, rows) in order; [] when no shard is writable.
        ``sizes``: each shard's rows as it last reported them (the caller's ShardTable). Pure: the
        caller reports each run with ``sending`` and ``acknowledged``."""
        live = [k for k in range(self.num_shards) if writable[k]]
        if rows <= 0 or not live:
            return []
        held = (np.asarray(sizes, dtype=np.int64) + self.sent)[live]
        room = np.maximum(self.capacities[live] - held, 0)
        rank = self._rank[live]
        by_level = np.lexsort((rank, held / self.capacities[live]))  # emptiest first, ties in tie_order
        emptiest = int(by_level[0])
        x = np.zeros(len(live), dtype=np.int64)
        if rows <= min(room[emptiest], self.max_run_rows):
            x[emptiest] = rows  # the common case: the whole batch to the emptiest shard, one call
        else:
            into_room = min(rows, int(room.sum()))
            if into_room:
                x += water_fill(held, held + room, into_room, order=by_level.tolist())
            beyond = rows - into_room
            if beyond:  # the replay is full: every row evicts one, so spread evenly, round robin
                runs = min(len(live), -(-beyond // self.max_run_rows))
                first = self._cursor % len(live)
                self._cursor = first + runs
                for j in range(runs):
                    x[(first + j) % len(live)] += beyond // runs + (1 if j < beyond % runs else 0)
            x = self._merge_short_runs(x, room)
        plan, start = [], 0
        for j in by_level:  # the emptiest shard takes the batch's first rows
            if x[j]:
                plan.append((live[j], start, start + int(x[j])))
                start += int(x[j])
        return plan

    def plan_streams(self, streams: np.ndarray, writable: Sequence[bool],
                     sizes: Sequence[int]) -> tuple[np.ndarray | None, list[tuple[int, int, int]]]:
        """Stream-aware routing (module doc): (order, runs). ``order`` (None: the rows as given) permutes
        the rows so that each shard's rows are contiguous, each stream's rows keeping their order; the
        runs (shard, start, stop) cover the permuted rows, none longer than max_run_rows. Pure but for
        the stream homes it updates. O(rows log rows)."""
        rows = len(streams)
        live = [k for k in range(self.num_shards) if writable[k]]
        if rows <= 0 or not live:
            return None, []
        held = np.asarray(sizes, dtype=np.int64) + self.sent
        room = np.maximum(self.capacities - held, 0)
        room[[k for k in range(self.num_shards) if not writable[k]]] = 0
        if len(self._home) > MAX_STREAM_HOMES:
            self._home.clear()
        unique, first, inverse, counts = np.unique(streams, return_index=True, return_inverse=True, return_counts=True)
        by_stream = np.argsort(inverse, kind="stable")  # each stream's rows, in order
        starts = np.concatenate([[0], np.cumsum(counts)])
        target = np.empty(rows, dtype=np.int64)

        def emptiest() -> list[int]:
            return sorted(live, key=lambda k: (held[k] / self.capacities[k], self._rank[k]))

        for u in np.argsort(first, kind="stable"):  # streams in order of first appearance
            stream, count = int(unique[u]), int(counts[u])
            index = by_stream[starts[u] : starts[u + 1]]
            home = self._home.get(stream)
            shares: list[tuple[int, int]]  # (shard, rows of this stream), in the stream's order
            if home is not None and writable[home] and (room[home] >= count or room.sum() == 0):
                shares = [(home, count)]  # the common case; or the replay is full: it evicts at home
            elif room.sum() == 0:
                shares = [(live[self._cursor % len(live)], count)]
                self._cursor += 1
            else:  # a new stream, or its home is out of room while others have some: emptiest first
                shares, left = [], count
                for k in emptiest():
                    take = min(left, int(room[k]))
                    if take:
                        shares.append((k, take))
                        left -= take
                    if not left:
                        break
                if left:  # beyond the replay's room: the rest evicts where the stream ends up
                    k, take = shares[-1]
                    shares[-1] = (k, take + left)
                if home is not None and shares[0][0] != home:
                    self.stream_moves += 1
                self.stream_moves += len(shares) - 1
            done = 0
            for k, take in shares:
                target[index[done : done + take]] = k
                done += take
                room[k] = max(room[k] - take, 0)
                held[k] += take
            self._home[stream] = shares[-1][0]
        order = np.argsort(target, kind="stable")
        sorted_target = target[order]
        runs: list[tuple[int, int, int]] = []
        for k in np.unique(sorted_target):
            lo, hi = np.searchsorted(sorted_target, [k, k + 1])
            for start in range(int(lo), int(hi), self.max_run_rows):
                runs.append((int(k), start, min(start + self.max_run_rows, int(hi))))
        identity = bool((order == np.arange(rows)).all())
        return (None if identity else order), runs

    def sending(self, k: int, rows: int) -> None:
        """``rows`` rows are on their way to shard k (counted until ``acknowledged``)."""
        self.sent[k] += rows

    def _merge_short_runs(self, x: np.ndarray, room: np.ndarray) -> np.ndarray:
        """Merges each run under min_run_rows into the largest other run where that evicts no more rows
        (rows beyond a shard's room each evict one)."""
        x = x.copy()
        for j in np.argsort(x, kind="stable"):
            if not 0 < x[j] < self.min_run_rows:
                continue
            for i in np.argsort(-x, kind="stable"):
                if i == j or x[i] == 0:
                    continue
                before = max(x[i] - room[i], 0) + max(x[j] - room[j], 0)
                if max(x[i] + x[j] - room[i], 0) <= before:
                    x[i] += x[j]
                    x[j] = 0
                    break
        return x

    def pick(self, writable: Sequence[bool], exclude: set[int], sizes: Sequence[int]) -> int | None:
        """The emptiest writable shard outside ``exclude`` (for a run that must go elsewhere), or None."""
        candidates = [k for k in range(self.num_shards) if writable[k] and k not in exclude]
        if not candidates:
            return None
        return min(candidates, key=lambda k: ((sizes[k] + self.sent[k]) / self.capacities[k], self._rank[k]))
