"""Timing helpers shared by the benchmarks: calibrated repetitions, medians, machine info, JSON, Markdown.

A *case* is a callable ``run(count) -> (wall_ns, cpu_ns)`` that performs ``count`` operations of
one implementation in a pre-built loop (inputs generated beforehand) and returns the wall time and the
thread's CPU time of the loop alone (:func:`start` / :func:`stop`). :func:`measure_interleaved` calibrates each case so that one repetition lasts about
``rep_seconds``, then runs the repetitions round-robin over the cases in a shuffled order, so that
load spikes on a noisy machine fall on every implementation alike instead of on whichever ran last.

The tables quote wall-clock medians. The thread CPU time (CLOCK_THREAD_CPUTIME_ID) is recorded beside
it: it leaves out the time the benchmark waited for a CPU while other processes ran, so on an
oversubscribed machine it shows how much of a wall figure is queueing rather than work.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Case = Callable[[int], "tuple[int, int]"]

# The transition of the issues' workloads: obs float32[8], action int64, reward float32, next_obs, done.
SCHEMA = {
    "state": ((8,), "float32"),
    "action": ((), "int64"),
    "reward": ((), "float32"),
    "next_state": ((8,), "float32"),
    "done": ((), "bool"),
}


def start() -> tuple[int, int]:
    """Clocks at the start of a timed loop: (wall ns, thread CPU ns)."""
    cpu = time.thread_time_ns()
    return time.perf_counter_ns(), cpu


def stop(started: tuple[int, int]) -> tuple[int, int]:
    """Elapsed (wall ns, thread CPU ns) since :func:`start`."""
    wall = time.perf_counter_ns()
    cpu = time.thread_time_ns()
    return wall - started[0], cpu - started[1]


@dataclass
class Measurement:
    """Per-operation times (ns) of one case, one value per repetition."""

    name: str
    ops_per_rep: int
    per_op_ns: list[float] = field(default_factory=list)
    cpu_per_op_ns: list[float] = field(default_factory=list)

    @property
    def median_ns(self) -> float:
        return statistics.median(self.per_op_ns)

    @property
    def cpu_median_ns(self) -> float:
        return statistics.median(self.cpu_per_op_ns)

    @property
    def min_ns(self) -> float:
        return min(self.per_op_ns)

    def to_json(self, items_per_op: int = 1) -> dict[str, Any]:
        out: dict[str, Any] = {
            "median_ns_per_op": self.median_ns,
            "min_ns_per_op": self.min_ns,
            "max_ns_per_op": max(self.per_op_ns),
            "repetitions": len(self.per_op_ns),
            "ops_per_repetition": self.ops_per_rep,
            "cpu_median_ns_per_op": self.cpu_median_ns,
            "cpu_min_ns_per_op": min(self.cpu_per_op_ns),
            "samples_ns_per_op": [round(x, 3) for x in self.per_op_ns],
            "cpu_samples_ns_per_op": [round(x, 3) for x in self.cpu_per_op_ns],
        }
        if items_per_op != 1:
            out["median_items_per_s"] = items_per_op * 1e9 / self.median_ns
        return out


def _timed(case: Case, count: int) -> tuple[int, int]:
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return case(count)
    finally:
        if gc_was_enabled:
            gc.enable()


def calibrate(case: Case, rep_seconds: float, max_count: int, min_count: int = 1) -> int:
    """Number of operations for one repetition of about ``rep_seconds`` (at most ``max_count``).

    One untimed call first: a first call's one-off costs (lazy initialization, cold caches) would
    otherwise shrink the count of a slow case to one call per repetition."""
    _timed(case, min_count)
    count = min_count
    while True:
        elapsed = max(_timed(case, count)[0], 1)
        if elapsed >= rep_seconds * 1e9 * 0.2 or count >= max_count:
            break
        count = min(max_count, count * 8)
    per_op = elapsed / count
    return max(min_count, min(max_count, int(rep_seconds * 1e9 / per_op)))


def measure_interleaved(
    cases: Mapping[str, tuple[Case, int]],
    repetitions: int,
    rep_seconds: float,
    seed: int = 0,
    warmup: int = 1,
) -> dict[str, Measurement]:
    """Median-ready measurements of every case; ``cases`` maps name -> (run, max ops per repetition)."""
    rng = random.Random(seed)
    counts = {name: calibrate(run, rep_seconds, max_count) for name, (run, max_count) in cases.items()}
    results = {name: Measurement(name, counts[name]) for name in cases}
    names = list(cases)
    for rep in range(warmup + repetitions):
        rng.shuffle(names)
        for name in names:
            wall, cpu = _timed(cases[name][0], counts[name])
            if rep >= warmup:
                results[name].per_op_ns.append(wall / counts[name])
                results[name].cpu_per_op_ns.append(cpu / counts[name])
    return results


# ---------------------------------------------------------------------------------------------
# Machine information


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # not installed
        return None


def machine_info() -> dict[str, Any]:
    import numpy as np

    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "numpy": np.__version__,
        "ray_replay": _version("ray_replay"),
        "ray": _version("ray"),
        "cpprb": _version("cpprb"),
        "torchrl": _version("torchrl"),
        "tensordict": _version("tensordict"),
        "torch": _version("torch"),
        "pybind11": _version("pybind11"),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        import ray_replay

        info["ray_replay_path"] = os.path.dirname(ray_replay.__file__)
    except ImportError:
        pass
    return info


# ---------------------------------------------------------------------------------------------
# Output


def write_json(data: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    tmp.replace(out)
    return out


def format_value(ns: float, unit: str, items_per_op: int = 1) -> str:
    """Human figure of a per-op time in ``unit``: ns, us, ms, or M/s (items per second)."""
    if unit == "ns":
        return f"{ns:,.0f} ns"
    if unit == "us":
        return f"{ns / 1e3:,.2f} us"
    if unit == "ms":
        return f"{ns / 1e6:,.2f} ms"
    if unit == "M/s":
        return f"{items_per_op * 1e3 / ns:,.1f} M/s"
    raise ValueError(unit)


def ratio_text(subject_ns: float, baseline_ns: float) -> str:
    """'3.1x faster' / '2.0x slower' of subject against baseline (same op, lower time is better)."""
    if subject_ns <= 0 or baseline_ns <= 0:
        return "n/a"
    r = baseline_ns / subject_ns
    if r >= 1:
        return f"{r:.1f}x faster"
    return f"{1 / r:.1f}x slower"


@dataclass
class Row:
    name: str
    median_ns: float
    cpu_median_ns: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""


def markdown_table(
    title: str,
    rows: Sequence[Row],
    baselines: Mapping[str, float],
    unit: str,
    items_per_op: int = 1,
) -> str:
    """A Markdown table: implementation, median, one ratio column per baseline, target, met."""
    with_cpu = any(r.cpu_median_ns is not None for r in rows)
    headers = ["implementation", "median"] + (["CPU-time median"] if with_cpu else [])
    headers += [f"vs {b}" for b in baselines] + ["target", "met"]
    lines = [f"### {title}", "", "| " + " | ".join(headers) + " |", "|" + "|".join(["---"] * len(headers)) + "|"]
    for row in rows:
        cells = [row.name + (f" ({row.note})" if row.note else ""), format_value(row.median_ns, unit, items_per_op)]
        if with_cpu:
            cells.append("" if row.cpu_median_ns is None else format_value(row.cpu_median_ns, unit, items_per_op))
        for bname, bns in baselines.items():
            cells.append("-" if bname == row.name else ratio_text(row.median_ns, bns))
        cells.append(row.target or "")
        cells.append("" if row.met is None else ("yes" if row.met else "**no**"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
