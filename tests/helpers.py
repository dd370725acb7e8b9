"""Shared helpers for the local-buffer tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np

T = TypeVar("T")

SCHEMA = {
    "state": ((8,), np.float32),
    "action": ((), np.int64),
    "reward": ((), np.float32),
    "next_state": ((8,), np.float32),
    "done": ((), np.bool_),
}


def rows_for(index: np.ndarray) -> dict[str, np.ndarray]:
    """The transitions whose every field is derived from their index, so any sampled row can be checked."""
    index = np.asarray(index, dtype=np.int64)
    state = index[:, None].astype(np.float32) + np.arange(8, dtype=np.float32) / 8
    return {
        "state": state,
        "action": index,
        "reward": (index * 0.5).astype(np.float32),
        "next_state": state + 1,
        "done": index % 3 == 0,
    }


def transitions(n: int, start: int = 0) -> dict[str, np.ndarray]:
    return rows_for(np.arange(start, start + n))


def assert_rows_consistent(batch: dict[str, np.ndarray]) -> None:
    """Every sampled row is the row rows_for() makes for its action: no torn or mixed-up transitions."""
    for name, values in rows_for(batch["action"]).items():
        np.testing.assert_array_equal(batch[name], values, err_msg=name)


def assert_same_contents(actual, expected) -> None:
    """Two buffers hold the same rows (oldest first), counters and priority masses."""
    left, right = actual.get_state(), expected.get_state()
    for name, column in right["columns"].items():
        np.testing.assert_array_equal(left["columns"][name], column, err_msg=name)
    for key in ("total_adds", "samples", "evictions"):
        assert left[key] == right[key], key
    np.testing.assert_array_equal(left["masses"], right["masses"])


def run_threads(*targets: Callable[[], object]) -> None:
    """Runs each target in a thread of its own, waits for all, and fails with what any of them raised
    (a failed assertion in a thread would otherwise only be printed)."""
    errors: list[BaseException] = []

    def guarded(target: Callable[[], object]) -> None:
        try:
            target()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(target,)) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


def wait_for(condition: Callable[[], T], timeout_s: float, message: str | Callable[[], str], interval_s: float = 0.1) -> T:
    """Polls ``condition()`` until it returns something truthy, and returns that. After ``timeout_s``
    fails with ``message`` (or, if callable, what it returns then: e.g. the last state seen), so a
    wait on a busy machine is bounded and says what it waited for, instead of a fixed sleep."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {message() if callable(message) else message}")
        time.sleep(interval_s)
