"""The ``ray-replay`` command.

    ray-replay demo [--address ADDR] [--seconds S] [--actors N] [--env ID] [--json PATH]
                                                             Ape-X DQN through the sharded replay (a local Ray by default)
    ray-replay demo --synthetic | --local                    the synthetic throughput demo / the local buffers
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


def _installed(relative: str) -> Path:
    """``relative`` under the first folder of the package that has it: a wheel or normal install puts
    the C++ package beside the modules; an editable install keeps the modules in the source tree and
    puts it in site-packages (another entry of ``ray_replay.__path__``)."""
    import ray_replay

    folders = [Path(p) for p in ray_replay.__path__] + [_PACKAGE_DIR]
    return next((folder / relative for folder in folders if (folder / relative).exists()), _PACKAGE_DIR / relative)


def cmake_dir() -> Path:
    """Folder holding ReplayBufferConfig.cmake, for ``-DReplayBuffer_DIR=...``."""
    return _installed("share/cmake/ReplayBuffer")


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
    demo = sub.add_parser("demo", help="train Ape-X DQN through the sharded replay (a local Ray by default)")
    demo.add_argument("--address", default=None, help="join an existing Ray cluster instead of starting one")
    demo.add_argument("--seconds", type=float, default=None, help="time budget (default: 300 for Ape-X, 15 for --synthetic/--local)")
    demo.add_argument("--local", action="store_true", help="fill and sample each local buffer type, no Ray")
    demo.add_argument("--synthetic", action="store_true", help="the synthetic throughput demo (random writers and learner)")
    demo.add_argument("--actors", type=int, default=2, help="Ape-X actors (default 2)")
    demo.add_argument("--env", default="CartPole-v1", help="gymnasium id with a discrete action space (default CartPole-v1)")
    demo.add_argument("--device", default="cpu", help="the learner's torch device (default cpu)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--json", default=None, metavar="PATH", help="write the summary as JSON")
    demo.add_argument("--plot", default="apex_learning_curve.png", metavar="PATH", help="learning-curve PNG ('' for none)")
    demo.add_argument("--checkpoint-dir", default=None, help="replay and learner checkpoints in this folder")
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
        print(_installed("include"))
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
