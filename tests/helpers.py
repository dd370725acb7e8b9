"""Shared helpers for the local-buffer tests."""

from __future__ import annotations

import numpy as np

SCHEMA = {
    "state": ((8,), np.float32),
    "action": ((), np.int64),
    "reward": ((), np.float32),
    "next_state": ((8,), np.float32),
    "done": ((), np.bool_),
}


def transitions(n: int, start: int = 0) -> dict[str, np.ndarray]:
    """n transitions whose every field is derived from its index, so any row can be checked."""
    index = np.arange(start, start + n)
    state = index[:, None].astype(np.float32) + np.arange(8, dtype=np.float32) / 8
    return {
        "state": state,
        "action": index.astype(np.int64),
        "reward": (index * 0.5).astype(np.float32),
        "next_state": state + 1,
        "done": index % 3 == 0,
    }


def assert_rows_consistent(batch: dict[str, np.ndarray]) -> None:
    """Every sampled row matches the row transitions() made for its action index."""
    expected = transitions(1, 0)  # shape reference
    index = batch["action"]
    reference = {name: np.stack([transitions(1, int(i))[name][0] for i in index]) for name in expected}
    for name, values in reference.items():
        np.testing.assert_array_equal(batch[name], values, err_msg=name)
