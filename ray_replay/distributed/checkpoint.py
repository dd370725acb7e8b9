"""Periodic checkpoints of one buffer to one file, written off the caller's thread (no Ray here).

A checkpoint copies the buffer's state (``get_state()``: rows, priorities, counters, random state) on
the caller's thread, which is the only time adds and samples wait, then writes that copy with the
atomic ray_replay file format (temporary file, fsync, rename) on a background thread. A crash at any
moment leaves the previous checkpoint intact. At most one write runs at a time: a checkpoint that
falls due while one is being written is taken at the next call after it finishes.
"""

from __future__ import annotations

import math
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ray_replay.buffer import ReplayBuffer
from ray_replay.persistence import write_state

__all__ = ["Checkpointer"]


class Checkpointer:
    """Checkpoints a buffer to ``path`` every ``every_s`` seconds or ``every_adds`` rows, whichever first.

    Args:
        path: the checkpoint file (its folder is created); a shared file system path for multi-node.
        every_s: seconds between checkpoints of a changed buffer (None: no time trigger).
        every_adds: rows added between checkpoints (None: no count trigger). At least one trigger is needed.
    """

    def __init__(self, path: str | os.PathLike[str], every_s: float | None = None, every_adds: int | None = None) -> None:
        if every_s is None and every_adds is None:
            raise ValueError("checkpoints need checkpoint_every_s or checkpoint_every_adds")
        if every_s is not None and not (isinstance(every_s, (int, float)) and math.isfinite(every_s) and every_s > 0):
            raise ValueError(f"checkpoint_every_s must be a number > 0, got {every_s!r}")
        if every_adds is not None and (isinstance(every_adds, bool) or not isinstance(every_adds, int) or every_adds < 1):
            raise ValueError(f"checkpoint_every_adds must be an int >= 1, got {every_adds!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._every_s, self._every_adds = every_s, every_adds
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ray_replay-checkpoint")
        self._pending: Future[None] | None = None
        self._lock = threading.Lock()  # guards the counters below against the writer thread
        self._adds_since = 0
        self._last = time.monotonic()
        self.written = 0
        self.failures = 0
        self.last_error: str | None = None
        self.last_written_at: float | None = None  # time.time() of the last completed write

    def restore(self) -> ReplayBuffer | None:
        """The buffer of the latest checkpoint, or None when there is none yet."""
        return ReplayBuffer.load(self.path) if self.path.exists() else None

    def changed(self, buffer: ReplayBuffer, rows_added: int = 0) -> None:
        """Called after every change of ``buffer``; starts a checkpoint when one is due."""
        self._adds_since += rows_added
        due_by_count = self._every_adds is not None and self._adds_since >= self._every_adds
        due_by_time = self._every_s is not None and time.monotonic() - self._last >= self._every_s
        if (due_by_count or due_by_time) and (self._pending is None or self._pending.done()):
            self._start(buffer)

    def _start(self, buffer: ReplayBuffer) -> None:
        state = buffer.get_state()  # the copy: the only part that holds up the caller
        self._adds_since = 0
        self._last = time.monotonic()
        self._pending = self._writer.submit(self._write, state)

    def _write(self, state: dict[str, Any]) -> None:
        try:
            write_state(state, self.path)
        except Exception as error:  # reported in stats; the previous checkpoint stays intact
            with self._lock:
                self.failures += 1
                self.last_error = f"{type(error).__name__}: {error}"
            return
        with self._lock:
            self.written += 1
            self.last_written_at = time.time()

    def wait(self) -> None:
        """Returns once the write in progress, if any, has finished."""
        if self._pending is not None:
            self._pending.result()

    def checkpoint_now(self, buffer: ReplayBuffer) -> None:
        """Writes a checkpoint of ``buffer`` and waits for it (and for any write in progress)."""
        self.wait()
        self._start(buffer)
        self.wait()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"checkpoints_written": self.written, "checkpoint_failures": self.failures,
                    "last_checkpoint_error": self.last_error, "last_checkpoint_at": self.last_written_at}

    def close(self) -> None:
        """Waits for a write in progress, then stops the writer thread."""
        self._writer.shutdown(wait=True)
