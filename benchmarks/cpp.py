"""Builds (when needed) and runs the C++ benchmark ``bench_add`` (cpp/benchmarks), returning its JSON.

The build directory is the one ``make test-cpp`` uses (build/cpp, configured with
``-DREPLAY_BUFFER_BUILD_TESTS=ON``, RelWithDebInfo; bench_add adds -O3). When the executable is
newer than its sources it is run as is, so the benchmark never touches a build another job is using
unless it must.

    python benchmarks/cpp.py [--runs 3] [--capacity 1000000] [--repetitions 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BUILD_DIR = ROOT / "build" / "cpp"
EXECUTABLE = BUILD_DIR / "cpp" / "benchmarks" / "bench_add"


def _cmake() -> str:
    venv_cmake = Path(sys.executable).parent / "cmake"
    found = str(venv_cmake) if venv_cmake.exists() else shutil.which("cmake")
    if not found:
        raise RuntimeError("cmake not found (make test installs it into .venv)")
    return found


def _newest_source_mtime() -> float:
    sources = [ROOT / "CMakeLists.txt", *(ROOT / "cpp" / "benchmarks").glob("*"), *(ROOT / "cpp" / "include").rglob("*.hpp")]
    return max(p.stat().st_mtime for p in sources if p.is_file())


def build() -> tuple[Path, str]:
    """The bench_add executable, and what was done to get it ('up to date' or 'built')."""
    if EXECUTABLE.exists() and EXECUTABLE.stat().st_mtime >= _newest_source_mtime():
        return EXECUTABLE, "up to date"
    cmake = _cmake()
    if not (BUILD_DIR / "CMakeCache.txt").exists():
        generator = ["-G", "Ninja"] if shutil.which("ninja") or (Path(sys.executable).parent / "ninja").exists() else []
        subprocess.run(
            [cmake, "-S", str(ROOT), "-B", str(BUILD_DIR), *generator,
             "-DCMAKE_BUILD_TYPE=RelWithDebInfo", "-DREPLAY_BUFFER_BUILD_TESTS=ON"],
            check=True, capture_output=True, text=True,
        )
    subprocess.run([cmake, "--build", str(BUILD_DIR), "--target", "bench_add", "-j", "2"],
                   check=True, capture_output=True, text=True)
    return EXECUTABLE, "built"


def run(runs: int = 3, capacity: int = 1_000_000, repetitions: int = 5, timeout: float = 300) -> dict[str, Any]:
    """Median over ``runs`` runs of each figure bench_add prints (each itself a median)."""
    exe, how = build()
    outputs = []
    for _ in range(runs):
        done = subprocess.run([str(exe), str(capacity), str(repetitions)], check=True,
                              capture_output=True, text=True, timeout=timeout)
        outputs.append(json.loads(done.stdout))
    keys = [k for k, v in outputs[0].items() if isinstance(v, (int, float))]
    medians = {k: statistics.median(o[k] for o in outputs) for k in keys}
    return {"executable": str(exe), "build": how, "runs": runs, "medians": medians, "raw": outputs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--capacity", type=int, default=1_000_000)
    parser.add_argument("--repetitions", type=int, default=5)
    args = parser.parse_args(argv)
    print(json.dumps(run(args.runs, args.capacity, args.repetitions), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
