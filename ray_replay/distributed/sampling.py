"""Pure-numpy pieces of distributed sampling, shared by the coordinator and the client (no Ray here).

Why global prioritized sampling is exact: shard k holds masses m_i = p_i^alpha summing to S_k. Drawing
c ~ Multinomial(B, S_k / S) over shards and then c_k items locally with P(i | k) = m_i / S_k gives every
draw the marginal P(i) = S_k / S * m_i / S_k = m_i / S, the distribution of one buffer holding all items.
Importance weights (m_i / m_min)^-beta use the global minimum mass, as one buffer would.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "LOCAL_ID_BITS",
    "MAX_SHARDS",
    "RateLimiter",
    "ShardTable",
    "Snapshot",
    "WireSnapshot",
    "encode_ids",
    "local_ids",
    "fifo_counts",
    "finish_prioritized",
    "mix_sequence_priorities",
    "sequence_options",
    "smallest_positive",
    "global_weights",
    "multinomial_counts",
    "split_capacity",
    "split_ids",
]

LOCAL_ID_BITS = 48  # local ids are insertion sequence numbers, far below 2**48 in practice
MAX_SHARDS = 1 << (63 - LOCAL_ID_BITS)  # the shard index must leave the int64 sign bit clear
_LOCAL_MASK = (1 << LOCAL_ID_BITS) - 1


class Snapshot(NamedTuple):
    """What a shard reports with every reply, so callers can plan the next sample without asking.

    ``mass`` is the total priority mass S_k for prioritized shards and the size otherwise;
    ``min_mass`` the smallest positive mass (0 when there is none or the shard is not prioritized);
    ``adds`` and ``samples`` are the shard's lifetime row counters (for rate limiting).
    """

    size: int
    mass: float
    min_mass: float
    adds: int
    samples: int

    def wire(self) -> WireSnapshot:
        """The fields as a plain tuple, what the hot shard calls (add_run, draw) answer with: Ray sends a
        tuple of numbers as msgpack and a NamedTuple through pickle (measured here on a no-op actor: 15 us
        less CPU per call in the caller, 25 us in the actor). ShardTable.update takes either."""
        return (self.size, self.mass, self.min_mass, self.adds, self.samples)


WireSnapshot = tuple[int, float, float, int, int]  # a Snapshot's fields, in order (Snapshot.wire)

EMPTY_SNAPSHOT = Snapshot(0, 0.0, 0.0, 0, 0)


def split_capacity(capacity: int, num_shards: int) -> list[int]:
    """capacity // num_shards per shard, the remainder spread over the first shards."""
    if isinstance(num_shards, bool) or not isinstance(num_shards, (int, np.integer)):
        raise TypeError(f"num_shards must be an int, got {type(num_shards).__name__}")
    if not 1 <= num_shards < MAX_SHARDS:
        raise ValueError(f"num_shards must be in [1, {MAX_SHARDS}), got {num_shards}")
    if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)):
        raise TypeError(f"capacity must be an int, got {type(capacity).__name__}")
    if capacity < num_shards:
        raise ValueError(f"capacity must be >= num_shards ({num_shards}), got {capacity}")
    base, extra = divmod(int(capacity), int(num_shards))
    return [base + (1 if k < extra else 0) for k in range(num_shards)]


def encode_ids(shard: int, local_ids: np.ndarray) -> np.ndarray:
    """Global ids: shard << 48 | local id, so an id alone routes a priority update back."""
    global_ids: np.ndarray = np.bitwise_or(np.asarray(local_ids, dtype=np.int64), np.int64(shard) << LOCAL_ID_BITS)
    return global_ids


def split_ids(ids: Any, priorities: Any, num_shards: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Groups (ids, priorities) by shard as (shard, global ids, priorities), after validating both whole.

    Raises TypeError/ValueError naming the field, before anything is sent anywhere.
    """
    id_array = np.asarray(ids)
    if id_array.dtype.kind not in "iu":
        raise TypeError(f'ids must be an integer array (the "ids" of a sample), got {id_array.dtype}')
    if id_array.ndim != 1:
        raise ValueError(f"ids must be one-dimensional, got {id_array.ndim} dimensions")
    try:
        priority_array = np.asarray(priorities, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError("priorities must be an array of numbers") from None
    if priority_array.ndim > 1 or priority_array.size != id_array.size:
        raise ValueError(f"priorities: expected {id_array.size} values, got shape {priority_array.shape}")
    priority_array = priority_array.reshape(-1)
    bad = ~np.isfinite(priority_array) | (priority_array < 0)
    if bad.any():
        j = int(np.argmax(bad))
        raise ValueError(f"priorities[{j}] = {priority_array[j]}: priorities must be finite and >= 0")
    id_array = id_array.astype(np.int64, copy=False)
    shards = id_array >> LOCAL_ID_BITS
    bad = (id_array < 0) | (shards >= num_shards)
    if bad.any():
        j = int(np.argmax(bad))
        raise ValueError(f"ids[{j}] = {int(id_array[j])} was never issued by this replay (no shard {int(shards[j])})")
    if num_shards == 1:
        return [(0, id_array, priority_array)] if id_array.size else []
    order = np.argsort(shards, kind="stable")
    bounds = np.searchsorted(shards[order], np.arange(num_shards + 1))
    groups = []
    for k in range(num_shards):
        index = order[bounds[k] : bounds[k + 1]]
        if index.size:
            groups.append((k, id_array[index], priority_array[index]))
    return groups


def sequence_options(seq_len: Any, min_len: Any, period: Any, buffer_type: str) -> tuple[int, int | None, int | None] | None:
    """sample(seq_len=, min_len=, period=) of a replay of ``buffer_type``, checked as the local buffer
    checks them; None: transitions."""
    if seq_len is None:
        if min_len is not None or period is not None:
            raise ValueError("min_len and period need seq_len")
        return None
    if buffer_type not in ("uniform", "prioritized"):
        raise ValueError(f"seq_len is supported by buffer_type 'uniform' and 'prioritized' (this replay is '{buffer_type}')")
    values: list[int | None] = []
    for name, value, low in (("seq_len", seq_len, 1), ("min_len", min_len, 1), ("period", period, 1)):
        if value is None:
            values.append(None)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
        values.append(int(value))
    if values[1] is not None and values[1] > int(seq_len):
        raise ValueError(f"min_len must be in [1, seq_len={seq_len}], got {min_len}")
    return int(seq_len), values[1], values[2]


def mix_sequence_priorities(priorities: Any, mask: Any, eta: float) -> np.ndarray:
    """(n, seq_len) per-step errors -> one priority per sequence: eta * max|e| + (1 - eta) * mean|e|
    over the steps ``mask`` (the sample's "mask") marks valid, as the local buffer mixes them."""
    errors = np.asarray(priorities, dtype=np.float64)
    if mask is None:
        raise ValueError("mask: (n, seq_len) priorities of a distributed replay need mask=batch['mask'] (the sample's mask)")
    valid = np.asarray(mask)
    if valid.dtype != np.bool_:
        raise TypeError('mask must be a bool array (the "mask" of the sample)')
    if valid.shape != errors.shape:
        raise ValueError(f"mask: expected shape {errors.shape} like priorities, got shape {valid.shape}")
    empty = ~valid.any(axis=1)
    if empty.any():
        raise ValueError(f"mask[{int(np.argmax(empty))}] has no valid step")
    bad = valid & ~np.isfinite(errors)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"priorities[{i}, {j}] = {errors[i, j]}: per-step errors must be finite on the valid steps")
    magnitude = np.where(valid, np.abs(np.where(valid, errors, 0.0)), 0.0)
    mixed: np.ndarray = eta * magnitude.max(axis=1) + (1.0 - eta) * magnitude.sum(axis=1) / valid.sum(axis=1)
    return mixed


def local_ids(global_ids: np.ndarray) -> np.ndarray:
    """The shard-local part of global ids."""
    local: np.ndarray = np.bitwise_and(global_ids, _LOCAL_MASK)
    return local


def multinomial_counts(rng: np.random.Generator, batch_size: int, masses: Sequence[float]) -> np.ndarray:
    """Counts per shard ~ Multinomial(batch_size, masses / sum(masses))."""
    mass_array = np.asarray(masses, dtype=np.float64)
    total = mass_array.sum()
    if not total > 0:
        raise ValueError("cannot sample from an empty buffer")
    return rng.multinomial(batch_size, mass_array / total)


def fifo_counts(batch_size: int, sizes: Sequence[int]) -> np.ndarray:
    """How many rows each fifo shard pops for one read of batch_size rows (a queue has no randomness).

    Shards are filled round robin, so the oldest rows of the whole buffer are spread over all shards in
    proportion to their sizes: each shard pops its share (largest remainder), capped by what it holds,
    and any shortfall is taken from the shards that still have rows.
    """
    size_array = np.asarray(sizes, dtype=np.int64)
    total = int(size_array.sum())
    take = min(batch_size, total)
    if take == 0:
        return np.zeros_like(size_array)
    exact = size_array * (take / total)
    counts: np.ndarray = np.minimum(np.floor(exact).astype(np.int64), size_array)
    for k in np.argsort(-(exact - counts), kind="stable"):
        if counts.sum() >= take:
            break
        if counts[k] < size_array[k]:
            counts[k] += 1
    while counts.sum() < take:  # only when rounding met a cap
        k = int(np.argmax(size_array - counts))
        counts[k] += 1
    return counts


def global_weights(masses: np.ndarray, min_mass: float, beta: float) -> np.ndarray:
    """(m_i / m_min)^-beta as float32: the local buffer's (N P(i))^-beta / max_j (N P(j))^-beta."""
    floor = min(min_mass, float(masses.min())) if masses.size else min_mass
    if not floor > 0:
        return np.ones(masses.shape, dtype=np.float32)
    weights: np.ndarray = np.power(masses / floor, -beta).astype(np.float32)
    return weights


def finish_prioritized(batch: dict[str, np.ndarray], masses: np.ndarray, total_mass: float, min_mass: float, beta: float) -> None:
    """Gives a prioritized batch its global "weights" (m_i / m_min)^-beta and "probabilities" m_i / S
    from its rows' masses and the replay's total and smallest positive mass: what ShardTable.merge
    does for a merged batch and ReplayShard.draw_batch for a batch a shard finishes itself."""
    batch["weights"] = global_weights(masses, min_mass, beta)
    batch["probabilities"] = masses / total_mass


def smallest_positive(values: Iterable[float]) -> float:
    """The smallest positive value (a mass), 0.0 when there is none."""
    return min((v for v in values if v > 0), default=0.0)


class ShardTable:
    """The caller's cached view of every shard (their last Snapshot), which plans the next sample.

    Snapshots arrive with every shard reply, so planning needs no extra round trip; a shard that got
    no rows in a round is asked for a snapshot in that same round, so no cached mass stays stale for long.
    """

    def __init__(self, num_shards: int, buffer_type: str, snapshots: Sequence[Snapshot] | None = None) -> None:
        self.buffer_type = buffer_type
        self.snapshots: list[Snapshot] = list(snapshots) if snapshots is not None else [EMPTY_SNAPSHOT] * num_shards
        if len(self.snapshots) != num_shards:
            raise ValueError(f"expected {num_shards} snapshots, got {len(self.snapshots)}")

    @property
    def num_shards(self) -> int:
        return len(self.snapshots)

    def update(self, shard: int, snapshot: Snapshot | WireSnapshot) -> None:
        self.snapshots[shard] = Snapshot(*snapshot)

    @property
    def size(self) -> int:
        return sum(s.size for s in self.snapshots)

    @property
    def total_mass(self) -> float:
        return math.fsum(s.mass for s in self.snapshots)

    @property
    def min_mass(self) -> float:
        return smallest_positive(s.min_mass for s in self.snapshots)

    def others(self, shard: int) -> tuple[float, float]:
        """(total mass, smallest positive mass) of every shard but ``shard``: what that shard needs to
        finish a batch of its own rows with global weights (ReplayShard.draw_batch)."""
        rest = [s for k, s in enumerate(self.snapshots) if k != shard]
        return math.fsum(s.mass for s in rest), smallest_positive(s.min_mass for s in rest)

    @property
    def adds(self) -> int:
        return sum(s.adds for s in self.snapshots)

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.snapshots)

    def plan(self, rng: np.random.Generator, batch_size: int) -> np.ndarray:
        """Rows to take from each shard: multinomial by mass (prioritized) or size (uniform, lockfree),
        oldest-first shares for fifo."""
        if self.buffer_type == "fifo":
            return fifo_counts(batch_size, [s.size for s in self.snapshots])
        return multinomial_counts(rng, batch_size, [s.mass for s in self.snapshots])

    def plan_one(self, rng: np.random.Generator, batch_size: int) -> np.ndarray:
        """Every row of a round from one shard, picked with probability mass / total mass (not fifo).

        Each row's probability is still m_i / S: P(shard k) x P(row i | shard k) = (M_k / S) (m_i / M_k),
        and its weight (m_i / m_min)^-beta is the same as in ``plan``'s rounds; what changes is that the
        rows of one round are not independent across shards (they share the shard). O(K)."""
        counts = np.zeros(self.num_shards, dtype=np.int64)
        counts[self.pick_one(rng)] = batch_size
        return counts

    def pick_one(self, rng: np.random.Generator) -> int:
        """A shard picked with probability mass / total mass (plan_one's pick). O(K)."""
        masses = np.asarray([s.mass for s in self.snapshots], dtype=np.float64)
        total = masses.sum()
        if not total > 0:
            raise ValueError("cannot sample from an empty buffer")
        return min(int(np.searchsorted(np.cumsum(masses), rng.random() * total, side="right")), len(masses) - 1)

    def merge(self, parts: Sequence[Mapping[str, np.ndarray] | None], beta: float) -> dict[str, np.ndarray]:
        """One batch from the shards' parts (in shard order; None for shards not sampled).

        Prioritized parts carry "ids" and "masses"; the result gets global "probabilities" = m_i / S and
        "weights" normalized by the global minimum mass, from the snapshots of this very round.
        """
        present = [p for p in parts if p is not None and len(p) and len(next(iter(p.values())))]
        if not present:
            raise ValueError("cannot sample from an empty buffer")
        names = [n for n in present[0] if n != "masses"]
        if len(present) == 1:
            batch = {n: present[0][n] for n in names}
            masses = present[0].get("masses")
        else:
            batch = {n: np.concatenate([p[n] for p in present]) for n in names}
            masses = np.concatenate([p["masses"] for p in present]) if "masses" in present[0] else None
        if masses is not None:
            finish_prioritized(batch, masses, self.total_mass, self.min_mass, beta)
        return batch


@dataclass(frozen=True)
class RateLimiter:
    """Reverb-style sampling gate over global row counters (inserts and sampled rows, summed over shards).

    A sample of n rows is allowed once the buffer holds ``min_size_to_sample`` rows (0: no gate, an
    empty buffer raises ValueError at once as a local buffer does) and, if
    ``samples_per_insert`` is set, while samples + n <= samples_per_insert * inserts + error_buffer
    (Reverb's SampleToInsertRatio seen from the sampling side). Writers are never blocked, so a learner
    waiting on writers cannot deadlock them; a sample still not allowed after ``timeout_s`` raises
    TimeoutError.
    """

    min_size_to_sample: int = 0
    samples_per_insert: float | None = None
    error_buffer: float = 0.0
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if isinstance(self.min_size_to_sample, bool) or not isinstance(self.min_size_to_sample, (int, np.integer)):
            raise TypeError(f"min_size_to_sample must be an int, got {type(self.min_size_to_sample).__name__}")
        if self.min_size_to_sample < 0:
            raise ValueError(f"min_size_to_sample must be >= 0, got {self.min_size_to_sample}")
        if self.samples_per_insert is not None and not (math.isfinite(self.samples_per_insert) and self.samples_per_insert > 0):
            raise ValueError(f"samples_per_insert must be a finite number > 0 or None, got {self.samples_per_insert}")
        if not (math.isfinite(self.error_buffer) and self.error_buffer >= 0):
            raise ValueError(f"error_buffer must be a finite number >= 0, got {self.error_buffer}")
        if not self.timeout_s >= 0:
            raise ValueError(f"timeout_s must be >= 0, got {self.timeout_s}")

    def blocked(self, table: ShardTable, batch_size: int) -> str | None:
        """Why a sample of batch_size rows may not run yet, or None when it may."""
        size = table.size
        if size < self.min_size_to_sample:
            return f"the replay holds {size} rows, fewer than min_size_to_sample={self.min_size_to_sample}"
        if self.samples_per_insert is not None:
            inserts, samples = table.adds, table.samples
            allowed = self.samples_per_insert * inserts + self.error_buffer
            if samples + batch_size > allowed:
                return (
                    f"{samples} rows sampled + {batch_size} would exceed samples_per_insert={self.samples_per_insert} "
                    f"x {inserts} inserts + error_buffer={self.error_buffer}"
                )
        return None

    def waits(self, table: ShardTable, batch_size: int, max_pause_s: float, in_flight: int = 0,
              clock: Callable[[], float] = time.monotonic) -> Iterator[float]:
        """The admission loop of a sample, written once for the sync ReplayClient and the async
        coordinator: while ``blocked``, yields the pause to take before checking again (1 ms, doubling
        up to ``max_pause_s``); the caller sleeps it and refreshes ``table``. Past ``timeout_s`` it
        raises TimeoutError with the reason. ``in_flight``: rows of samples already requested (prefetched
        rounds), counted with the batch. Allowed at once: yields nothing (costs one ``blocked``)."""
        deadline = clock() + self.timeout_s
        pause = 0.001
        while (reason := self.blocked(table, batch_size + in_flight)) is not None:
            if clock() >= deadline:
                raise TimeoutError(f"sample({batch_size}) not allowed after {self.timeout_s} s: {reason}")
            yield pause
            pause = min(pause * 2, max_pause_s)
