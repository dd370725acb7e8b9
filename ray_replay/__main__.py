"""The ``ray-replay`` command.

    ray-replay demo [--address ADDR] [--seconds S] [--local]   the demo (a local Ray by default)
    ray-replay stats --address ADDR --name NAME [--namespace NS] [--interval S] [--once]
                                                             live stats of a running ReplayCoordinator
    ray-replay bench [--quick] [--skip STEP ...]             every benchmark (from a source checkout; = make bench)
    ray-replay --cmake-dir | --include-dir                   where the C++ package is, for CMake users
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

__all__ = ["main"]

_PACKAGE_DIR = Path(__file__).resolve().parent


def cmake_dir() -> Path:
    """Folder holding ReplayBufferConfig.cmake, for ``-DReplayBuffer_DIR=...``."""
    return _PACKAGE_DIR / "share" / "cmake" / "ReplayBuffer"


def benchmark_runner(start: Path) -> Path | None:
    """benchmarks/run.py of the source checkout holding ``start`` (the benchmarks are not installed)."""
    for folder in (start, *start.parents):
        runner = folder / "benchmarks" / "run.py"
        if runner.is_file():
            return runner
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ray-replay", description=__doc__)
    parser.add_argument("--cmake-dir", action="store_true", help="print the CMake package folder and exit")
    parser.add_argument("--include-dir", action="store_true", help="print the C++ include folder and exit")
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="run the demo (a local Ray by default)")
    demo.add_argument("--address", default=None, help="join an existing Ray cluster instead of starting one")
    demo.add_argument("--seconds", type=float, default=15.0, help="how long writers and learner run")
    demo.add_argument("--local", action="store_true", help="fill and sample each local buffer type, no Ray")
    stats = sub.add_parser("stats", help="print live stats of a named ReplayCoordinator, refreshing")
    stats.add_argument("--address", default="auto", help="the Ray cluster to join (default: auto)")
    stats.add_argument("--name", required=True, help="the coordinator's actor name")
    stats.add_argument("--namespace", default=None, help="the coordinator's Ray namespace")
    stats.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    stats.add_argument("--once", action="store_true", help="print once and exit")
    sub.add_parser("bench", help="run benchmarks/run.py of the source checkout around the current folder", add_help=False)
    args, rest = parser.parse_known_args(argv)

    if args.cmake_dir:
        print(cmake_dir())
        return 0
    if args.include_dir:
        print(_PACKAGE_DIR / "include")
        return 0
    if args.command == "demo":
        from ray_replay import demo as demo_module

        return demo_module.main(args)
    if args.command == "stats":
        from ray_replay.distributed.live_stats import watch

        return watch(args.address, args.name, args.namespace, args.interval, args.once)
    if args.command == "bench":
        runner = benchmark_runner(Path.cwd())
        if runner is None:
            print("ray-replay bench: no benchmarks/run.py here or above: run it from a ray_replay source checkout", file=sys.stderr)
            return 2
        return subprocess.call([sys.executable, str(runner), *rest])
    parser.print_help()
    return 0 if not rest else 2


if __name__ == "__main__":
    sys.exit(main())
