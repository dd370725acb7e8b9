"""DIST-1-like load for the network scenarios: writer threads and a learner thread, each with a ReplayClient
of its own, recording what was acknowledged, what was sampled and when (run by drive.py, in the head's
namespace).

Writer w writes rows whose action is ``w * ROWS_PER_WRITER + i`` (i = 0, 1, ...), in batches of
``batch_rows``, each flushed: a row counts as acknowledged once ``flush()`` returned after it. The
learner samples 32 rows at a time, checks every row against the row it must be (helpers.rows_for), and
updates their priorities; it counts the priority updates it sent.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np
import ray
from helpers import SCHEMA, assert_rows_consistent, transitions

from ray_replay.distributed import ReplayClient

ROWS_PER_WRITER = 10_000_000
SAMPLE_ROWS = 32


class Load:
    def __init__(self, replay: Any, writers: int = 2, batch_rows: int = 50, pace_s: float = 0.01) -> None:
        self.replay = replay
        self.stop = threading.Event()
        self.acked: list[list[tuple[float, int]]] = [[] for _ in range(writers)]  # (time, rows acknowledged so far)
        self.flush_s: list[list[float]] = [[] for _ in range(writers)]  # how long each batch took to be acknowledged
        self.sampled_at: list[float] = []
        self.sampled: list[np.ndarray] = []
        self.updates_sent = 0
        self.dropped_updates = 0
        self.client_stats: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._batch_rows, self._pace_s = batch_rows, pace_s
        self._threads = [threading.Thread(target=self._write, args=(w,), daemon=True) for w in range(writers)]
        self._threads.append(threading.Thread(target=self._learn, daemon=True))

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def acknowledged_rows(self) -> int:
        return sum(log[-1][1] if log else 0 for log in self.acked)

    def wait_rows(self, rows: int, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while self.acknowledged_rows() < rows:
            if self.errors or time.monotonic() > deadline:
                raise RuntimeError(f"only {self.acknowledged_rows()} rows acknowledged; errors: {self.errors}")
            time.sleep(0.05)

    def finish(self, timeout_s: float = 120) -> list[str]:
        """Stops the threads; returns the names of any that did not end within ``timeout_s`` (hung)."""
        self.stop.set()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(timeout=max(deadline - time.monotonic(), 0.1))
        return [t.name for t in self._threads if t.is_alive()]

    def _write(self, w: int) -> None:
        client = ReplayClient(self.replay, batch_rows=self._batch_rows, seed=10 + w)
        try:
            done = 0
            while not self.stop.is_set():
                started = time.monotonic()
                client.add_batch(**transitions(self._batch_rows, w * ROWS_PER_WRITER + done))
                client.flush()
                now = time.monotonic()
                done += self._batch_rows
                self.acked[w].append((now, done))
                self.flush_s[w].append(now - started)
                time.sleep(self._pace_s)
        except BaseException as error:  # noqa: BLE001 - reported in the scenario's result
            self.errors.append(f"writer {w}: {error!r}")
        finally:
            try:
                client.close()
                self.client_stats.append(client.stats())
            except BaseException as error:  # noqa: BLE001
                self.errors.append(f"writer {w} close: {error!r}")

    def _learn(self) -> None:
        # RAY_REPLAY_CHAOS_SAMPLE_TRANSPORT=direct runs the scenarios with the learner sampling over the
        # shards' direct channels (ray_replay/distributed/direct.py) instead of Ray calls.
        transport = os.environ.get("RAY_REPLAY_CHAOS_SAMPLE_TRANSPORT", "ray")
        client = ReplayClient(self.replay, prefetch=0, seed=2, sample_transport=transport)
        try:
            while not self.stop.is_set():
                if self.acknowledged_rows() == 0:
                    time.sleep(0.01)
                    continue
                batch = client.sample(SAMPLE_ROWS)
                assert_rows_consistent({k: v for k, v in batch.items() if k in SCHEMA})
                self.sampled_at.append(time.monotonic())
                self.sampled.append(batch["action"])
                client.update_priorities(batch["ids"], np.full(len(batch["ids"]), 2.0))
                self.updates_sent += len(batch["ids"])
        except BaseException as error:  # noqa: BLE001 - reported in the scenario's result
            self.errors.append(f"learner: {error!r}")
        finally:
            try:
                client.close()
                self.dropped_updates = client.stats()["dropped_priority_updates"]
            except BaseException as error:  # noqa: BLE001
                self.errors.append(f"learner close: {error!r}")

    # -- what the scenario reports -----------------------------------------------------------------

    def acknowledged_actions(self) -> np.ndarray:
        parts = [w * ROWS_PER_WRITER + np.arange(log[-1][1]) for w, log in enumerate(self.acked) if log]
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def rate(self, start: float, stop: float) -> float:
        """Rows acknowledged per second between two times (all writers)."""
        rows = 0
        for log in self.acked:
            before = max((n for t, n in log if t <= start), default=0)
            upto = max((n for t, n in log if t <= stop), default=0)
            rows += upto - before
        return rows / max(stop - start, 1e-9)

    def samples_between(self, start: float, stop: float) -> int:
        return sum(start <= t < stop for t in self.sampled_at)

    def longest_sample_gap(self, start: float, stop: float) -> float:
        times = [start, *[t for t in self.sampled_at if start <= t <= stop], stop]
        return float(max(np.diff(times))) if len(times) > 1 else stop - start

    def first_sample_after(self, moment: float) -> float | None:
        later = [t - moment for t in self.sampled_at if t > moment]
        return min(later) if later else None

    def summary(self) -> dict[str, Any]:
        acknowledged = self.acknowledged_actions()
        sampled = np.unique(np.concatenate(self.sampled)) if self.sampled else np.zeros(0, np.int64)
        flushes = [s for log in self.flush_s for s in log]
        return {"errors": self.errors, "acknowledged_rows": int(len(acknowledged)), "samples": len(self.sampled_at),
                "sampled_never_acknowledged": int(np.setdiff1d(sampled, acknowledged).size),
                "longest_flush_s": max(flushes, default=0.0), "median_flush_s": float(np.median(flushes)) if flushes else 0.0,
                "updates_sent": self.updates_sent, "learner_dropped_updates": self.dropped_updates, "client_stats": self.client_stats}


def stored(replay: Any, handles: str = "shard_handles") -> np.ndarray:
    """Every action the given replicas hold (a duplicate shows twice), sorted."""
    states = ray.get([shard.get_state.remote() for shard in ray.get(getattr(replay, handles).remote())], timeout=60)
    parts = [s["columns"]["action"] for s in states if "columns" in s]
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def held_exactly(actual: np.ndarray, expected: np.ndarray) -> dict[str, int]:
    """How ``actual`` (held rows) differs from ``expected`` (acknowledged rows): missing, duplicated, extra."""
    values, counts = np.unique(actual, return_counts=True)
    return {"missing": int(np.setdiff1d(expected, values).size), "duplicated": int((counts > 1).sum()),
            "never_acknowledged": int(np.setdiff1d(values, expected).size)}
