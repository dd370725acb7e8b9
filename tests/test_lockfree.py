"""The lock-free buffer under many threads: no torn transitions, counters that add up."""

from __future__ import annotations

import threading
import time

import numpy as np
from helpers import SCHEMA, assert_rows_consistent, transitions

from ray_replay import ReplayBuffer


def test_writers_and_samplers_at_once_never_see_a_torn_transition():
    # A small ring is overwritten constantly, so readers race writers on the same slots.
    buf = ReplayBuffer(97, "lockfree", schema=SCHEMA, seed=2)
    writers, samplers, rows_per_batch = 3, 3, 50
    deadline = time.monotonic() + 2.0
    added = [0] * writers
    checked = [0] * samplers
    errors: list[BaseException] = []

    def write(w: int) -> None:
        start = w * 10**9  # disjoint indices per writer
        try:
            while time.monotonic() < deadline:
                if added[w] % 2:
                    buf.add_batch(**transitions(rows_per_batch, start + added[w]))
                    added[w] += rows_per_batch
                else:
                    row = transitions(1, start + added[w])
                    buf.add(**{name: values[0] for name, values in row.items()})
                    added[w] += 1
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    def sample(s: int) -> None:
        try:
            while len(buf) == 0:
                time.sleep(0.001)
            while time.monotonic() < deadline:
                batch = buf.sample(64)
                assert_rows_consistent(batch)
                checked[s] += 64
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    threads += [threading.Thread(target=sample, args=(s,)) for s in range(samplers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[0]
    assert min(checked) > 0
    stats = buf.stats()
    assert stats["adds"] == sum(added)
    assert stats["size"] == 97
    assert stats["evictions"] == stats["adds"] - stats["size"]
    assert stats["samples"] == sum(checked)
    # Every slot holds a distinct row: no write landed twice or tore another.
    held = np.sort(buf.get_state()["columns"]["action"])
    assert len(np.unique(held)) == 97
