"""The C++ library as C++ users get it: find_package(ReplayBuffer) from the pip-installed package and
from `cmake --install` of the repository, used by the consumer project in examples/cpp."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "cpp"
CMAKE = shutil.which("cmake", path=str(Path(sys.executable).parent)) or "cmake"  # the venv's, from make test


def run(*args: str, cwd: Path | None = None) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def build_and_run_example(build_dir: Path, *cmake_args: str) -> str:
    run(CMAKE, "-S", str(EXAMPLE), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release", *cmake_args)
    run(CMAKE, "--build", str(build_dir))
    return run(str(build_dir / "replay_example"))


def test_cmake_dir_of_the_installed_package_is_found(tmp_path):
    # Run outside the repository, so `-m` finds the installed package rather than the source tree.
    cmake_dir = run(sys.executable, "-m", "ray_replay", "--cmake-dir", cwd=tmp_path).strip()
    assert (Path(cmake_dir) / "ReplayBufferConfig.cmake").is_file()
    output = build_and_run_example(tmp_path / "build", f"-DReplayBuffer_DIR={cmake_dir}")
    assert "lockfree size=1000 sampled=32; prioritized sampled=16 updated=16" in output


def test_cmake_install_of_the_repository_is_found(tmp_path):
    prefix = tmp_path / "prefix"
    run(CMAKE, "-S", str(ROOT), "-B", str(tmp_path / "lib"), f"-DCMAKE_INSTALL_PREFIX={prefix}")
    run(CMAKE, "--install", str(tmp_path / "lib"))
    assert (prefix / "include" / "replay_buffer" / "core" / "lockfree_buffer.hpp").is_file()
    output = build_and_run_example(tmp_path / "build", f"-DCMAKE_PREFIX_PATH={prefix}")
    assert "updated=16" in output
