"""Which shards (and replicas) can be asked right now, as one caller sees them (no Ray calls here).

A call that fails because its shard is gone (its process died, its node left, it timed out, or it is
fenced while a replica is copied) marks the shard down; callers then route writes and samples around
it. A shard started with Ray ``max_restarts`` is "restarting" until a probe finds it answering again;
one that cannot restart is "dead". Each answering process reports an incarnation id: a new id means the
shard was restarted (and restored), which is counted in ``restarts``.
"""

from __future__ import annotations

import asyncio
import time

from ray.exceptions import NodeDiedError, ObjectLostError, RayActorError

from ray_replay.distributed.direct import ChannelError
from ray_replay.errors import ShardFencedError, ShardUnavailableError, StalePlanError

__all__ = ["ACKED", "ALIVE", "DEAD", "PROCESS_FAILURES", "RESTARTING", "REROUTE", "RETRY_PAUSE_S", "RETRY_SAME", "SHARD_FAILURES", "ShardHealth",
           "ShardUnavailableError", "pause_before_retry", "write_outcome"]

ALIVE, RESTARTING, DEAD = "alive", "restarting", "dead"

# A shard call that raises one of these found the shard's process gone or unresponsive: it is down.
PROCESS_FAILURES: tuple[type[BaseException], ...] = (RayActorError, ObjectLostError, NodeDiedError, TimeoutError, asyncio.TimeoutError, ChannelError)
# Every error that means "not now, ask elsewhere or again", not "bad input" (Ray wraps the shard's own
# errors so that they still match): also a fenced shard and a sample planned from a stale snapshot.
SHARD_FAILURES: tuple[type[BaseException], ...] = (*PROCESS_FAILURES, ShardFencedError, StalePlanError)


ACKED, RETRY_SAME, REROUTE = "acked", "retry same shard", "reroute"

RETRY_PAUSE_S = 0.05  # between attempts at a shard that may come back (a restart takes about a second)


def pause_before_retry(deadline: float, error: str) -> float:
    """The pause before asking the shards again (RETRY_PAUSE_S), for a caller waiting for a live shard
    or one that takes its write; past ``deadline`` (a ``time.monotonic()`` value) it raises
    ShardUnavailableError(error) instead. Every such wait, sync (ReplayClient) or async (the
    coordinator), is a loop over this: ``while not ready: sleep(pause_before_retry(...)); refresh``."""
    if time.monotonic() >= deadline:
        raise ShardUnavailableError(error)
    return RETRY_PAUSE_S


def write_outcome(results: list[object]) -> str:
    """What a writer does after sending one batch (with a batch id) to the live replicas of one shard.

    ``results`` holds each replica's reply or exception. A refusal of the batch itself (ValueError,
    TypeError, BufferFullError: every replica validates alike) is raised. Otherwise:

    * ACKED: a replica holds the rows and every other one either holds them too, died or did not answer
      in time (a replica that failed a call is marked down and refilled from a live one before it takes
      part again; one that merely answers late applies the batch late, or is refilled, its batch ids
      included, so the batch never applies twice);
    * RETRY_SAME: a replica may hold the rows while none is known to (every one timed out: the batch may
      be on its way), or one holds them while another refused them (fenced for a copy): the batch goes
      to the same shard again, where the batch id keeps it from applying twice. A write that may be held
      by a shard is never sent to another one (it would be stored twice): see Write.settle;
    * REROUTE: no replica took the rows (each died or was fenced): the batch may go to another shard.
    """
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, SHARD_FAILURES):
            raise result
    accepted = [r for r in results if not isinstance(r, BaseException)]
    fenced = [r for r in results if isinstance(r, ShardFencedError)]
    if accepted and not fenced:
        return ACKED
    timed_out = any(isinstance(r, (TimeoutError, asyncio.TimeoutError)) for r in results)
    return RETRY_SAME if accepted or timed_out else REROUTE


class ShardHealth:
    """Per-shard state, last known process and restart count, for ``num_shards`` shards of one role.

    Args:
        restartable: whether the shards' actors have Ray restarts left (max_restarts != 0).
        retry_after_s: a down shard is offered to callers again (probed) this long after it failed.
    """

    def __init__(self, num_shards: int, restartable: bool, retry_after_s: float = 1.0) -> None:
        self.states = [ALIVE] * num_shards
        self.incarnations: list[str | None] = [None] * num_shards
        self.pids: list[int | None] = [None] * num_shards
        self.restarts = [0] * num_shards
        self.failures = [0] * num_shards
        self._down_at = [0.0] * num_shards
        self._restartable = restartable
        self._retry_after_s = retry_after_s

    def alive(self, k: int) -> bool:
        return self.states[k] == ALIVE

    def live(self) -> list[int]:
        return [k for k, state in enumerate(self.states) if state == ALIVE]

    def worth_trying(self, k: int) -> bool:
        """Alive, or down long enough that a caller should probe it again."""
        return self.states[k] == ALIVE or (self.states[k] == RESTARTING and time.monotonic() - self._down_at[k] >= self._retry_after_s)

    def mark_down(self, k: int) -> None:
        if self.states[k] == ALIVE:
            self.failures[k] += 1
        self.states[k] = RESTARTING if self._restartable else DEAD
        self._down_at[k] = time.monotonic()

    def observe(self, k: int, incarnation: str, pid: int) -> bool:
        """Records which process answered for shard k; True when it is a new one (a restart)."""
        restarted = self.incarnations[k] not in (None, incarnation)
        if restarted:
            self.restarts[k] += 1
        self.incarnations[k] = incarnation
        self.pids[k] = pid
        return restarted

    def mark_alive(self, k: int) -> None:
        self.states[k] = ALIVE
