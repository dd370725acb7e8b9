"""Runs the coverage-guided fuzzers for a bounded time, starting from the corpus in the repository."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent / "fuzz"


@pytest.mark.parametrize("target", ["loader", "bindings"])
def test_fuzzer_finds_nothing(target, tmp_path):
    new_inputs = tmp_path / "new"
    new_inputs.mkdir()
    result = subprocess.run(
        [sys.executable, str(FUZZ / f"fuzz_{target}.py"), str(new_inputs), str(FUZZ / "corpus" / target),
         "-max_total_time=20", "-rss_limit_mb=4096", f"-artifact_prefix={tmp_path}/", "-print_final_stats=1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "stat::number_of_executed_units" in result.stderr
    executed = int(result.stderr.split("stat::number_of_executed_units:")[1].split()[0])
    assert executed > 100


def test_loader_corpus_holds_valid_files():
    from ray_replay import ReplayBuffer

    files = sorted((FUZZ / "corpus" / "loader").iterdir())
    assert files
    loaded = [ReplayBuffer.load(path) for path in files]  # every seed file of the corpus loads
    assert all(len(buffer) <= buffer.capacity for buffer in loaded)
    assert all(buffer.stats()["size"] == len(buffer) for buffer in loaded)
    assert any(len(buffer) > 0 for buffer in loaded)
