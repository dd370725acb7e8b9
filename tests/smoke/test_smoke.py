"""Smoke tests of an installed ray_replay (a wheel in a fresh venv): `make test-wheel` and cibuildwheel's
test step run them. Self-contained: numpy and pytest only, no Ray started, nothing from tests/helpers.py.

Run them from outside the source tree (or against an installed package) so `import ray_replay` finds
the installed package; test_the_installed_package_is_tested says which one was imported.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ray_replay
from ray_replay import BUFFER_TYPES, ReplayBuffer

SCHEMA = {
    "state": ((4,), np.float32),
    "action": ((), np.int64),
    "reward": ((), np.float32),
    "done": ((), np.bool_),
}


def rows(n: int) -> dict[str, np.ndarray]:
    action = np.arange(n, dtype=np.int64)
    return {
        "state": np.repeat(action[:, None], 4, axis=1).astype(np.float32),
        "action": action,
        "reward": action.astype(np.float32) / 2,
        "done": action % 7 == 0,
    }


def test_the_installed_package_is_tested():
    # make test-wheel and make test-pythons set RAY_REPLAY_SMOKE_SITE to the fresh venv: the package
    # must come from there (not from the source tree; an editable install is not what is tested then).
    expected = os.environ.get("RAY_REPLAY_SMOKE_SITE")
    if not expected:
        pytest.skip("RAY_REPLAY_SMOKE_SITE not set: testing whichever ray_replay is importable")
    package = Path(ray_replay.__file__).resolve().parent
    assert Path(expected).resolve() in package.parents, f"ray_replay imported from {package}, not from {expected}"


def test_import_and_version():
    assert re.fullmatch(r"\d+\.\d+\.\d+", ray_replay.__version__)
    assert ray_replay._core.__version__ == ray_replay.__version__
    assert set(BUFFER_TYPES) == {"fifo", "uniform", "prioritized", "lockfree"}


def test_import_does_not_import_ray(tmp_path):
    # In a fresh interpreter: other test modules of the same session may import Ray themselves.
    code = "import sys, ray_replay; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False", "import ray_replay imported Ray"


@pytest.mark.parametrize("buffer_type", BUFFER_TYPES)
def test_add_sample_save_load(buffer_type, tmp_path):
    buf = ReplayBuffer(64, buffer_type, schema=SCHEMA, seed=1)
    buf.add_batch(**rows(40))
    one = {name: values[0] for name, values in rows(1).items()}
    buf.add(**one)
    assert len(buf) == 41
    if buffer_type == "prioritized":
        batch = buf.sample(8)
        buf.update_priorities(batch["ids"], np.linspace(0.5, 2.0, 8))
    batch = buf.sample(8)
    assert batch["state"].shape == (8, 4) and batch["state"].dtype == np.float32
    np.testing.assert_array_equal(batch["state"][:, 0], batch["action"].astype(np.float32))
    np.testing.assert_array_equal(batch["reward"], batch["action"].astype(np.float32) / 2)

    path = tmp_path / f"{buffer_type}.rrb"
    buf.save(path)
    loaded = ReplayBuffer.load(path)
    assert loaded.buffer_type == buffer_type and len(loaded) == len(buf) and loaded.schema == buf.schema
    a, b = buf.sample(8), loaded.sample(8)  # same contents and random state: the same draws
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_dedup_frame_stacks_come_back_exact():
    # The SSE2 (x86_64) or portable (aarch64) frame kernels: (84, 84, 4) uint8 stacked on the last axis.
    buf = ReplayBuffer(32, "uniform", seed=2, next_state="dedup", frame_stack_axis=-1)
    frames = np.random.default_rng(0).integers(0, 256, size=(12, 84, 84), dtype=np.uint8)

    def stack(t: int) -> np.ndarray:
        return np.stack(frames[t : t + 4], axis=-1)

    for t in range(8):
        buf.add(state=stack(t), action=t, reward=0.0, next_state=stack(t + 1), done=False)
    batch = buf.sample(16)
    for state, next_state, t in zip(batch["state"], batch["next_state"], batch["action"]):
        np.testing.assert_array_equal(state, stack(t))
        np.testing.assert_array_equal(next_state, stack(t + 1))


def test_cmake_dir_exists(tmp_path):
    # Outside any source tree, so `-m ray_replay` is the installed package.
    out = subprocess.run(
        [sys.executable, "-m", "ray_replay", "--cmake-dir"], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.strip()
    cmake_dir = Path(out)
    assert (cmake_dir / "ReplayBufferConfig.cmake").is_file()
    config_version = (cmake_dir / "ReplayBufferConfigVersion.cmake").read_text()
    assert f'set(PACKAGE_VERSION "{ray_replay.__version__}")' in config_version
    include = subprocess.run(
        [sys.executable, "-m", "ray_replay", "--include-dir"], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.strip()
    version_header = Path(include) / "replay_buffer" / "version.hpp"
    assert version_header.is_file()
