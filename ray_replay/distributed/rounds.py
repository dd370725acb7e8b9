"""The learner side of a ReplayClient: sample rounds in flight to the shards, and the priority updates
held to ride with the next request to each shard.

A round is one global sample: its rows are planned over the shards from the cached snapshots
(sampling.ShardTable), each shard is asked for its share (a shard with no rows in the plan is asked
for 0 and reports its snapshot: one round trip refreshes every snapshot), and the parts are merged
with global probabilities and weights. ``prefetch`` rounds are kept in flight after each sample, so a
learner usually finds its next batch there; ``rounds_per_call`` of them share one call per shard
(ReplayShard.draw: the request in one argument, see ReplayShardImpl.add_run). A round that loses a
shard is planned again over the live ones.

With ``one_shard`` (ReplayClient's ``batch_from="one_shard"``) a round is drawn whole from one shard,
picked by mass (ShardTable.plan_one): one call per round however many shards there are. Shards with
no rows in the plan are then asked (for 0 rows: a snapshot, and the updates held for them) only once
their snapshot is SNAPSHOT_MAX_AGE_S old, so the masses the plan picks by stay that fresh.

``sample_ref`` (one_shard only) does not wait at all: the shard finishes the batch itself
(ReplayShard.draw_batch, two returns) and the caller gets the ObjectRef of the rows, so they take one
hop, from the shard to whoever calls ``ray.get``; the snapshot that comes with them is read here once
it has arrived (``_reap_direct``), as the rounds' snapshots are.

Held priority updates go out with the next request to their shard, so a learner step costs one round
trip; an update whose request fails (the shard is down) is counted in ``dropped``, never lost silently.

Not thread-safe: one caller, like the ReplayClient that owns it, which shares its view of the shards
(``health``, ``table``) with its writes.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, cast

import numpy as np
import ray

from ray_replay.distributed.direct import ChannelError, DirectChannel, DirectChannels, DirectReply
from ray_replay.distributed.health import PROCESS_FAILURES, RETRY_PAUSE_S, SHARD_FAILURES, ShardHealth, ShardUnavailableError, pause_before_retry
from ray_replay.distributed.sampling import EMPTY_SNAPSHOT, RateLimiter, ShardTable, WireSnapshot
from ray_replay.errors import ShardFencedError, StalePlanError

__all__ = ["REAP_EVERY", "SNAPSHOT_MAX_AGE_S", "SampleRounds"]

SNAPSHOT_MAX_AGE_S = 0.02  # one_shard rounds: a shard not in the plan is asked for a snapshot once its own is this old
# A draw's errors a direct channel raises as themselves (others come as direct.RemoteError).
DRAW_ERRORS: tuple[type[BaseException], ...] = (StalePlanError, ShardFencedError, ValueError, TypeError)
REAP_EVERY = 8  # sample_ref: the snapshots that came with the calls are read once this many are pending (or one is old)

Part = dict[str, np.ndarray]
Sequence_ = tuple[int, int | None, int | None]  # (seq_len, min_len, period) of a sequence sample


class _Call:
    """A shard call that serves one or several prefetched rounds (shard.draw): fetched once, kept for
    the rounds that share it. A draw sent over a direct channel (``retry``: the shard actor and the
    request) is sent again through Ray when the channel fails, so that whether the shard is lost is
    Ray's verdict, as for any call (a shard Ray is restarting answers once it is back; its priority
    updates, applied or not before the failure, are applied again: they set values)."""

    __slots__ = ("error", "ref", "reply", "retry")

    def __init__(self, ref: Any, retry: tuple[Any, Any] | None = None) -> None:
        self.ref = ref
        self.retry = retry
        self.reply: tuple[list[Part | None], WireSnapshot] | None = None
        self.error: BaseException | None = None

    def get(self, timeout_s: float) -> tuple[list[Part | None], WireSnapshot]:
        if self.reply is None and self.error is None:
            try:  # an ObjectRef, or a draw sent over a direct channel
                if isinstance(self.ref, DirectReply):
                    try:
                        self.reply = self.ref.get(timeout_s)
                    except ChannelError:
                        if self.retry is None:
                            raise
                        shard, request = self.retry
                        self.ref = shard.draw.remote(request)
                if self.reply is None:
                    ref: Any = self.ref
                    self.reply = cast(Any, ray.get(ref, timeout=timeout_s))
            except Exception as error:  # noqa: BLE001 - kept, and raised for every round of the call
                self.error = error
        if self.error is not None:
            raise self.error
        assert self.reply is not None
        return self.reply


class _Share:
    """Round ``index`` of a _Call: what a round holds per shard instead of an ObjectRef."""

    __slots__ = ("call", "index")

    def __init__(self, call: _Call, index: int) -> None:
        self.call, self.index = call, index


class SampleRounds:
    """Args:
        shards: the primaries' handles; health, table: the owner's view of them (updated here too).
        limiter: the replay's RateLimiter; rng: the owner's generator (multinomial plans).
        timeout_s: a shard reply not back this long marks the shard down.
        prefetch, rounds_per_call: as for ReplayClient (validated there).
        one_shard: each round from one shard picked by mass (ReplayClient's batch_from="one_shard").
    """

    def __init__(self, shards: list[Any], health: ShardHealth, table: ShardTable, limiter: RateLimiter, rng: np.random.Generator,
                 timeout_s: float, prefetch: int, rounds_per_call: int, one_shard: bool = False, direct: bool = False) -> None:
        self._shards, self._health, self._table, self._limiter, self._rng = shards, health, table, limiter, rng
        self._plan = table.plan_one if one_shard else table.plan
        self._one_shard = one_shard
        self._asked_at = [-np.inf] * len(shards)  # time.monotonic() of the last request to each shard
        self._timeout_s = timeout_s
        self._prefetch = prefetch
        self._group = rounds_per_call if prefetch else 1
        self._held: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in shards]  # ride with the next request
        self._riding: dict[Any, int] = {}  # requests carrying updates -> their rows
        # (batch_size, beta, sequence options (seq_len, min_len, period) or None, {shard: ref or _Share})
        self._rounds: deque[tuple[int, float, Sequence_ | None, dict[int, Any]]] = deque()
        self._rows_in_flight = 0  # rows requested by prefetched rounds and sample_ref calls (for the rate limiter)
        # sample_ref calls and their snapshot probes not yet read: (shard, snapshot ref, rows requested, updates riding, asked at)
        self._direct: deque[tuple[int, Any, int, int, float]] = deque()
        self._refs: deque[tuple[int, float, Any]] = deque()  # sample_ref batches drawn ahead (rounds_per_call): (batch_size, beta, ref)
        self.dropped = 0  # priority updates whose shard was down
        self._over_channels = direct  # draws over direct channels (direct.py), opened at the first round
        self._channels: DirectChannels | None = None

    def __len__(self) -> int:
        """Rounds in flight."""
        return len(self._rounds)

    @property
    def one_shard(self) -> bool:
        return self._one_shard

    def sample(self, batch_size: int, beta: float, sequence: Sequence_ | None = None) -> Part:
        """One merged batch (validated arguments; ``sequence``: (seq_len, min_len, period) for sequences).
        Blocks for the oldest round in flight, or for a new one; raises TimeoutError (rate limiter) or
        ShardUnavailableError (no shard answers)."""
        while self._rounds and self._rounds[0][:3] != (batch_size, beta, sequence):
            self._discard_round()  # asked for another shape
        if not self._rounds:
            self._admit(batch_size)
            self._issue(batch_size, beta, sequence, rounds=self._group)
        n, _, _, refs = self._rounds.popleft()
        self._rows_in_flight -= n
        while (len(self._rounds) + self._group <= self._prefetch
               and self._limiter.blocked(self._table, self._group * batch_size + self._rows_in_flight) is None):
            self._issue(batch_size, beta, sequence, rounds=self._group)
        for _ in range(len(self._shards)):
            parts = self._collect(refs)
            if parts is not None:
                return self._table.merge(parts, beta)
            # a shard was lost: this round is short of its rows; plan it again over the live shards
            self.discard_all()
            self._admit(batch_size)
            refs = self._issue(batch_size, beta, sequence, queue=False)
        raise ShardUnavailableError(f"sample({batch_size}) lost a shard in each of {len(self._shards)} rounds")

    def sample_ref(self, batch_size: int, beta: float) -> Any:
        """The ObjectRef of one one_shard batch (validated arguments, flat fields), without waiting for
        it: the shard is picked by mass from the cached snapshots, the other shards' total and smallest
        mass go with the request so that the shard can finish the batch (global probabilities and
        weights, see ReplayShard.draw_batch), and the updates held for the shard ride along. Shards not
        picked are asked for a snapshot once theirs is SNAPSHOT_MAX_AGE_S old, as for one_shard rounds.

        With ``rounds_per_call`` G > 1, one call in G plans G batches (a shard picked for each) and asks
        each shard picked for its batches in one call (ray's num_returns: each batch its own ObjectRef);
        the next calls hand out the other refs, drawn before the priority updates made since, as
        prefetched rounds are. A call with another batch_size or beta drops them.

        Blocks only while the rate limiter does not allow the sample (TimeoutError after timeout_s) or no
        shard answers (ShardUnavailableError). A shard that fails makes ``ray.get`` of the ref raise, as
        a call on any actor does; this client then marks it down and plans without it."""
        while self._refs and self._refs[0][:2] != (batch_size, beta):
            self._refs.popleft()  # asked for another shape: those rows stay drawn, unused
        if self._refs:
            return self._refs.popleft()[2]
        self._reap_direct()
        rows = self._group * batch_size
        if self._direct and self._limiter.blocked(self._table, rows + self._rows_in_flight) is not None:
            self._reap_direct(wait=True)  # rows already drawn count in the snapshots, not as in flight
        self._admit(rows)
        picks = [self._table.pick_one(self._rng) for _ in range(self._group)]
        now = time.monotonic()
        for j in range(len(self._shards)):  # fresh masses for the next picks (and their held updates sent)
            if j not in picks and self._health.worth_trying(j) and now - self._asked_at[j] >= SNAPSHOT_MAX_AGE_S:
                self._asked_at[j] = now
                updates = self.take_updates(j)
                _, snapshot = self._shards[j].draw_batch.remote((0, beta, updates, (0.0, 0.0)))
                self._direct.append((j, snapshot, 0, 0 if updates is None else len(updates[0]), now))
        batches: dict[int, list[Any]] = {}
        for k in dict.fromkeys(picks):  # each shard picked: one call for all its batches
            count = picks.count(k)
            updates = self.take_updates(k)
            self._asked_at[k] = now
            request = (batch_size, beta, updates, self._table.others(k), count)
            method = self._shards[k].draw_batch if count == 1 else self._shards[k].draw_batch.options(num_returns=count + 1)
            *refs, snapshot = method.remote(request)
            batches[k] = refs
            self._direct.append((k, snapshot, count * batch_size, 0 if updates is None else len(updates[0]), now))
        self._rows_in_flight += rows
        self._refs.extend((batch_size, beta, batches[k].pop(0)) for k in picks)
        return self._refs.popleft()[2]

    def _reap_direct(self, wait: bool = False) -> None:
        """Reads the snapshots of the sample_ref calls that have answered, oldest first (all of them with
        ``wait``): the table and the shards' health are updated, the rows no longer count as in flight,
        and the updates that rode with a failed call are counted as dropped. Without ``wait`` it looks
        only once REAP_EVERY calls are pending or the oldest is SNAPSHOT_MAX_AGE_S old, and then with one
        ray.wait and one ray.get for all of them: two Ray calls per sample_ref cost about 250 us of
        the caller's CPU here, a third of a whole sample."""
        if not self._direct:
            return
        if not wait:
            if len(self._direct) < REAP_EVERY and time.monotonic() - self._direct[0][4] < SNAPSHOT_MAX_AGE_S:
                return
            refs = [entry[1] for entry in self._direct]
            ready = set(ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)[0])
        count = 0
        for entry in self._direct:  # the answered prefix: a shard's later snapshot is never overwritten by an earlier one
            if not wait and entry[1] not in ready:
                break
            count += 1
        answered = [self._direct.popleft() for _ in range(count)]
        try:
            snapshots: list[Any] = ray.get([entry[1] for entry in answered], timeout=self._timeout_s)
        except Exception:  # noqa: BLE001 - a failed call: read them one by one to tell which
            snapshots = []
            for entry in answered:
                try:
                    snapshots.append(ray.get(entry[1], timeout=self._timeout_s))
                except Exception as error:  # noqa: BLE001 - kept, and raised below once every answer is accounted for
                    snapshots.append(error)
        unexpected: BaseException | None = None
        for (k, _, rows, riding, _), snapshot in zip(answered, snapshots):
            self._rows_in_flight -= rows
            if isinstance(snapshot, BaseException) and not isinstance(snapshot, SHARD_FAILURES):
                unexpected = unexpected or snapshot  # (its shard answered: a bug or bad input, not a lost shard)
                continue
            self._settle(k, snapshot, riding)
        if unexpected is not None:
            raise unexpected

    def discard_all(self) -> None:
        """Drops every prefetched round and waits for the sample_ref calls' snapshots (their riding
        updates are applied or counted, not lost)."""
        while self._rounds:
            self._discard_round()
        self._refs.clear()
        self._reap_direct(wait=True)

    # -- priority updates ------------------------------------------------------------------------------

    def hold(self, k: int, ids: np.ndarray, priorities: np.ndarray) -> None:
        self._held[k].append((ids, priorities))

    def held_rows(self) -> int:
        return sum(len(ids) for held in self._held for ids, _ in held)

    def take_updates(self, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Shard k's held updates, concatenated (None when there are none); no longer held."""
        held, self._held[k] = self._held[k], []
        if not held:
            return None
        if len(held) == 1:
            return held[0]
        return np.concatenate([i for i, _ in held]), np.concatenate([v for _, v in held])

    # -- rounds ----------------------------------------------------------------------------------------

    def _collect(self, refs: dict[int, Any]) -> list[Part | None] | None:
        """The parts of one round in shard order, or None when a shard failed (it is marked down)."""
        parts: list[Part | None] = [None] * len(self._shards)
        complete = True
        for k, ref in refs.items():
            riding = self._riding.pop(ref, 0)
            try:
                if isinstance(ref, _Share):
                    parts_of_call, snapshot = ref.call.get(self._timeout_s)
                    part = parts_of_call[ref.index]
                else:
                    part, snapshot = ray.get(ref, timeout=self._timeout_s)
            except SHARD_FAILURES as error:
                self._settle(k, error, riding)
                complete = False
                continue
            self._settle(k, snapshot, riding)
            parts[k] = part
        return parts if complete else None

    def _settle(self, k: int, answer: WireSnapshot | BaseException, riding: int) -> None:
        """Shard k's answer to a request: its snapshot (the shard is alive, planned by it), or the shard
        failure it raised (a lost process marks it down; it is planned again without its rows until
        it reports some, and the ``riding`` updates that went with the request count as dropped)."""
        if isinstance(answer, BaseException):
            if isinstance(answer, PROCESS_FAILURES):
                self._health.mark_down(k)
            self._table.update(k, EMPTY_SNAPSHOT)
            self.dropped += riding
            return
        self._health.mark_alive(k)
        self._table.update(k, answer)

    def _issue(self, batch_size: int, beta: float, sequence: Sequence_ | None, queue: bool = True, rounds: int = 1) -> dict[int, Any]:
        """Asks every shard worth asking for its planned rows of ``rounds`` rounds in one call (a down
        one, after a while, for 0: a probe; with one_shard, a shard with no rows planned only once its
        snapshot is SNAPSHOT_MAX_AGE_S old), each request carrying the updates held for that shard;
        queues the rounds (or not) and returns the first round's {shard: ref or _Share}."""
        plans = [self._plan(self._rng, batch_size) for _ in range(rounds)]
        issued: list[dict[int, Any]] = [{} for _ in range(rounds)]
        now = time.monotonic()
        for k in range(len(self._shards)):
            if self._health.worth_trying(k):
                counts = [int(plan[k]) for plan in plans]
                if self._one_shard and not any(counts) and now - self._asked_at[k] < SNAPSHOT_MAX_AGE_S:
                    continue
                self._asked_at[k] = now
                updates = self.take_updates(k)
                channel = self._channel(k) if sequence is None else None
                request = (counts, None, updates, sequence)
                if channel is not None:
                    call = _Call(channel.draw(counts, updates), retry=(self._shards[k], request))
                else:
                    call = _Call(self._shards[k].draw.remote(request))
                for j in range(rounds):
                    issued[j][k] = _Share(call, j)
                if updates is not None:
                    self._riding[issued[0][k]] = len(updates[0])  # (counted once, with the call's first round)
        if queue:
            for refs in issued:
                self._rounds.append((batch_size, beta, sequence, refs))
                self._rows_in_flight += batch_size
        return issued[0]

    def _channel(self, k: int) -> DirectChannel | None:
        """Shard k's direct channel when this client samples over them and one is open, else None (Ray)."""
        if not self._over_channels:
            return None
        if self._channels is None:
            self._channels = DirectChannels(self._shards, self._timeout_s, DRAW_ERRORS)
        return self._channels.get(k)

    def close(self) -> None:
        """Closes the direct channels (after discard_all)."""
        if self._channels is not None:
            self._channels.close()
            self._channels = None

    def _discard_round(self) -> None:
        """Drops the oldest prefetched round; its requests that carried priority updates are waited for,
        so their updates are applied or counted as dropped, never lost."""
        n, _, _, refs = self._rounds.popleft()
        self._rows_in_flight -= n
        carrying = {k: ref for k, ref in refs.items() if ref in self._riding}
        if carrying:
            self._collect(carrying)
        # A reply over a direct channel that no queued round shares is dropped when it arrives.
        queued = {id(share.call) for _, _, _, later in self._rounds for share in later.values() if isinstance(share, _Share)}
        for share in refs.values():
            if isinstance(share, _Share) and isinstance(share.call.ref, DirectReply) and id(share.call) not in queued:
                share.call.ref.abandon()

    def refresh(self) -> None:
        """New snapshots from every shard worth asking (one ``sample(0)`` each)."""
        asked = [k for k in range(len(self._shards)) if self._health.worth_trying(k)]
        now = time.monotonic()
        for k in asked:
            self._asked_at[k] = now  # (one_shard: not asked again for a snapshot within SNAPSHOT_MAX_AGE_S)
        self._collect({k: self._shards[k].sample.remote(0) for k in asked})

    def _admit(self, batch_size: int) -> None:
        """Waits (refreshing the snapshots) until the rate limiter allows the sample, or TimeoutError;
        while no shard answers, up to timeout_s, then ShardUnavailableError."""
        if self._table.total_mass == 0:
            self.refresh()
        deadline = time.monotonic() + self._timeout_s
        while not self._health.live():
            time.sleep(pause_before_retry(deadline, f"no shard has answered for {self._timeout_s} s (all restarting or dead)"))
            self.refresh()
        for pause in self._limiter.waits(self._table, batch_size, RETRY_PAUSE_S, self._rows_in_flight):
            time.sleep(pause)
            self.refresh()
