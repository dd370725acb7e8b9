"""The Ray layer's write path, written once and free of Ray: validation, staging, routing, retry.

``ReplayClient`` (synchronous, in a writer's process) and ``ReplayCoordinator`` (an asyncio actor)
both drive these pieces; each only adds its own way of waiting for shard replies.

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
that many rows of full.

Retry rule (``Write.settle``, over ``health.write_outcome``): a run whose shard may have taken it
goes to the same shard again (its batch id makes the shard apply it once), one that no replica took
goes to another writable shard; after ``shard_timeout_s`` without an acknowledgement,
ShardUnavailableError.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ray_replay.buffer import ReplayBuffer
from ray_replay.distributed.health import ACKED, REROUTE, RETRY_SAME, ShardUnavailableError, write_outcome

__all__ = ["RETRY_PAUSE_S", "Router", "Stager", "Write", "check_batch_size", "plan_batch", "check_beta", "check_priorities", "check_priority",
           "require_prioritized", "rows_of", "slice_rows"]

RETRY_PAUSE_S = 0.05  # between attempts at a shard that may come back (a restart takes about a second)
DEFAULT_MIN_RUN_ROWS = 256  # below this a separate shard call costs more than the balance it buys
MAX_STREAM_HOMES = 1 << 20  # stream -> home shard entries a Router keeps


# -- validation (the local buffer's rules, checked before any shard is asked) -----------------------

def check_batch_size(batch_size: Any) -> int:
    """Any batch size >= 1: uniform and prioritized sampling are with replacement."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size must be an int, got {type(batch_size).__name__}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    return int(batch_size)


def check_beta(beta: Any, default: float) -> float:
    if beta is None:
        return default
    if isinstance(beta, bool) or not isinstance(beta, (int, float, np.floating, np.integer)):
        raise TypeError(f"beta must be a number, got {type(beta).__name__}")
    if not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be a finite number >= 0, got {beta}")
    return float(beta)


def check_priority(priority: Any) -> float:
    try:
        value = float(priority)
    except (TypeError, ValueError):
        raise TypeError(f"priority must be a number, got {type(priority).__name__}") from None
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"priority[0] = {value}: priorities must be finite and >= 0")
    return value


def check_priorities(priorities: Any, rows: int) -> np.ndarray:
    try:
        values = np.asarray(priorities, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError("priorities must be an array of numbers") from None
    if values.shape != (rows,):
        raise ValueError(f"priorities: expected {rows} values, got shape {values.shape}")
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        j = int(np.argmax(bad))
        raise ValueError(f"priorities[{j}] = {values[j]}: priorities must be finite and >= 0")
    return values


def require_prioritized(buffer_type: str, what: str) -> None:
    if buffer_type != "prioritized":
        raise ValueError(f"{what} is only supported by buffer_type='prioritized' (this buffer is '{buffer_type}')")


# -- rows of a batch ---------------------------------------------------------------------------------

def rows_of(columns: Sequence[Any], named: Mapping[str, Any]) -> int:
    """The leading length of a batch's first field (0 when it has none or it is not sized)."""
    first: Any = columns[0] if columns else next((v for k, v in named.items() if k not in ("priorities", "streams")), None)
    return len(first) if hasattr(first, "__len__") else 0


def slice_rows(columns: Sequence[Any], named: Mapping[str, Any], start: int, stop: int, rows: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Rows [start, stop) of a batch of ``rows`` rows: views of arrays; a scalar (``streams=3``) is kept."""
    def cut(value: Any) -> Any:
        return value[start:stop] if hasattr(value, "__len__") and len(value) == rows else value
    return tuple(cut(c) for c in columns), {k: cut(v) for k, v in named.items()}


def _without_codecs(schema: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The schema's (shape, dtype) of every field, without the codec a third element may give."""
    if not schema:
        return schema
    return {name: tuple(spec)[:2] if isinstance(spec, (tuple, list)) and len(spec) == 3 else spec for name, spec in schema.items()}


class Stager:
    """Rows validated and waiting to be sent: a fifo buffer of the replay's schema (which raises the
    shard's own ValueError/TypeError for a bad row, before anything is sent) plus each row's priority
    and stream. Staged rows go out in runs that all have, or all lack, explicit priorities."""

    def __init__(self, rows: int, schema: Mapping[str, Any] | None) -> None:
        self.capacity = int(rows)
        schema = _without_codecs(schema)  # staged rows are sent on soon: the shards compress them, not the stager
        self._buffer = ReplayBuffer(self.capacity, "fifo", schema=schema, collect_stats=False) if schema else None
        self._schema = schema
        self._priorities = np.empty(self.capacity, dtype=np.float64)
        self._streams = np.zeros(self.capacity, dtype=np.int64)
        self.has_priorities = False
        self.has_streams = False  # some staged row came with an explicit stream (stream-aware routing)
        self.since = 0.0  # time.monotonic() when the oldest staged row arrived

    def __len__(self) -> int:
        return len(self._buffer) if self._buffer is not None else 0

    @property
    def schema(self) -> Mapping[str, Any] | None:
        return self._buffer.schema if self._buffer is not None and self._buffer.schema else self._schema

    def must_send_before(self, rows: int, with_priorities: bool) -> bool:
        """Whether the staged rows must go out before ``rows`` more (with or without priorities) fit."""
        staged = len(self)
        return bool(staged) and (staged + rows > self.capacity or with_priorities != self.has_priorities)

    def _begin(self, with_priorities: bool) -> ReplayBuffer:
        if self._buffer is None:
            self._buffer = ReplayBuffer(self.capacity, "fifo", schema=self._schema, collect_stats=False)
        if not len(self._buffer):
            self.has_priorities = with_priorities
            self.has_streams = False
            self.since = time.monotonic()
        return self._buffer

    def stage(self, fields: Sequence[Any], named: Mapping[str, Any], priority: float | None, stream: Any) -> None:
        """One row (call ``must_send_before(1, ...)`` first)."""
        buffer = self._begin(priority is not None)
        buffer.add(*fields, stream=stream, **named)  # validates stream too
        at = len(buffer) - 1
        if priority is not None:
            self._priorities[at] = priority
        self._streams[at] = 0 if stream is None else int(stream)
        self.has_streams |= stream is not None

    def stage_batch(self, columns: Sequence[Any], named: Mapping[str, Any], priorities: np.ndarray | None, streams: Any,
                    rows: int) -> None:
        """``rows`` rows with priorities checked by check_priorities (call ``must_send_before`` first)."""
        buffer = self._begin(priorities is not None)
        start = len(buffer)
        buffer.add_batch(*columns, streams=streams, **named)  # validates the rows and the streams
        if priorities is not None:
            self._priorities[start : start + rows] = priorities
        self._streams[start : start + rows] = 0 if streams is None else np.broadcast_to(np.asarray(streams, dtype=np.int64), (rows,))
        self.has_streams |= streams is not None

    def take(self) -> dict[str, Any]:
        """Every staged row as named columns (with "streams", and "priorities" when they have them;
        "streams" only when some row came with an explicit stream)."""
        rows = len(self)
        assert self._buffer is not None
        columns: dict[str, Any] = self._buffer.sample(rows)
        if self.has_priorities:
            columns["priorities"] = self._priorities[:rows].copy()
        if self.has_streams:  # else every row is stream 0, what a buffer assumes without streams
            columns["streams"] = self._streams[:rows].copy()
        return columns


def validated(columns: Sequence[Any], named: Mapping[str, Any], schema: Mapping[str, Any] | None, rows: int) -> dict[str, Any]:
    """A batch checked whole, as named contiguous columns: before a batch is cut over several shards
    (each would validate only its run, and a bad row in a later run would leave earlier runs written)."""
    named = dict(named)
    priorities = named.pop("priorities", None)
    streams = named.pop("streams", None)
    stager = Stager(rows, schema)
    stager.stage_batch(columns, named, None if priorities is None else check_priorities(priorities, rows), streams, rows)
    return stager.take()


# -- routing -----------------------------------------------------------------------------------------

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


def plan_batch(router: Router, columns: tuple[Any, ...], named: dict[str, Any], rows: int, writable: Sequence[bool], sizes: Sequence[int],
               schema: Mapping[str, Any] | None) -> tuple[tuple[Any, ...], dict[str, Any], list[tuple[int, int, int]]]:
    """The runs of a batch (Router.plan, or Router.plan_streams when it has "streams") and the batch as
    the runs cut it: validated whole here when cut (or reordered), so a bad row leaves no run written."""
    streams = named.get("streams")
    if streams is not None and router.num_shards > 1:
        try:
            stream_array = np.broadcast_to(np.asarray(streams, dtype=np.int64), (rows,))
        except (TypeError, ValueError, OverflowError):
            validated(columns, named, schema, rows)  # raises the buffer's own error for the streams
            raise
        order, plan = router.plan_streams(stream_array, writable, sizes)
        if order is not None or len(plan) > 1:
            columns, named = (), validated(columns, named, schema, rows)
        if order is not None:
            named = {key: value[order] if isinstance(value, np.ndarray) and len(value) == rows else value for key, value in named.items()}
        return columns, named, plan
    plan = router.plan(rows, writable, sizes)
    if len(plan) > 1:
        columns, named = (), validated(columns, named, schema, rows)
    return columns, named, plan


# -- one run in flight --------------------------------------------------------------------------------

@dataclass(eq=False)  # compared by identity: payloads hold arrays
class Write:
    """One run of rows bound for one shard until acknowledged (the payload is kept for a retry)."""

    columns: tuple[Any, ...]
    named: dict[str, Any]
    rows: int
    deadline: float
    shard: int = -1
    tried: set[int] = field(default_factory=set)
    uncertain: bool = False  # an attempt may have stored the rows on ``shard``: never sent elsewhere (see settle)

    @classmethod
    def new(cls, columns: tuple[Any, ...], named: Mapping[str, Any], rows: int, timeout_s: float) -> Write:
        return cls(columns, {**named, "batch_id": uuid.uuid4().hex}, rows, time.monotonic() + timeout_s)

    def settle(self, results: list[object]) -> str:
        """ACKED, RETRY_SAME (send to ``shard`` again after RETRY_PAUSE_S) or REROUTE (to a shard not in
        ``tried``); raises a refusal of the rows themselves (ValueError, TypeError, BufferFullError).

        Once an attempt may have stored the rows on ``shard`` (a replica timed out, or took them while
        another refused), the write is ``uncertain``: it is only ever sent to that shard again, and past
        the deadline raises ShardUnavailableError instead of going elsewhere, so no row is stored on two
        shards (a partitioned shard applies the writes queued for it once the partition heals).
        """
        outcome = write_outcome(results)
        if outcome == ACKED:
            return ACKED
        if outcome == RETRY_SAME:
            self.uncertain = True
        if self.uncertain:
            if time.monotonic() < self.deadline:
                return RETRY_SAME
            raise ShardUnavailableError(f"shard {self.shard} did not acknowledge a write of {self.rows} rows in time; the rows may "
                                        "be stored there (it may apply the write later) and were not written elsewhere, so that "
                                        "they are never stored twice")
        self.tried.add(self.shard)
        return REROUTE

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline
