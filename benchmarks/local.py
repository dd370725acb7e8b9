"""Local benchmark: ray_replay beside its peers, measured in the same run, on the seed's workload.

    python benchmarks/local.py [--quick | --smoke] [--repetitions N] [--out benchmarks/results/local.json] [--no-cpp]

Transition: state float32[8], action int64, reward float32, next_state float32[8], done bool
(77 bytes); capacity 1,000,000. Workloads:

  (a) add one transition per Python call (ns per call)
  (b) add_batch of 1000 (transitions per second)
  (c) uniform sample of 256 from a full buffer (us per call), also into preallocated arrays (out=)
  (d) prioritized: sample 256 + update_priorities 256, sample only, update only (us per call)
  (e) (a)-(c) for buffer_type="lockfree"
  (C++) bench_add, the C++ add/sample benchmark (cpp/benchmarks), when it builds

Peers: a numpy ring buffer, collections.deque (the "Python standard"), cpprb's ReplayBuffer and
PrioritizedReplayBuffer (when installed), TorchRL's ReplayBuffer and PrioritizedReplayBuffer over a
LazyTensorStorage (when installed; TensorDict rows, and tuple-of-tensors rows as a variant), a numpy
sum-tree PER. Every implementation runs the same
loop (inputs generated beforehand, then a timed loop of calls); each repetition of each case is
calibrated to about the same wall time, and the repetitions run round-robin over the cases in a
shuffled order, so noise falls on all of them alike. Figures are wall-clock medians over repetitions
(the thread's CPU-time median beside them: it leaves out time spent waiting for a CPU on a loaded
machine); ratios compare wall-clock medians from this run. ray_replay is measured with its built-in latency monitoring on (the
default) and off (``collect_stats=False``).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import common  # noqa: E402
from baselines import cpprb_buffer, deque_buffer, numpy_ring, numpy_sum_tree, torchrl_buffer  # noqa: E402
from common import SCHEMA  # noqa: E402

ALPHA, BETA, EPS = 0.6, 0.4, 1e-6
ADD_BATCH = 1000
SAMPLE_BATCH = 256

# Targets (issues 2 and 3): (comparison, value in the table's unit)
TARGETS = {
    "add_ns": 400.0,
    "add_batch_mps": 120.0,
    "sample_us": 10.0,
    "per_us": 40.0,
    "per_vs_cpprb": 8.0,
    "cpp_add_ns": 20.0,
}

PROFILES: dict[str, dict[str, Any]] = {
    # repetitions, seconds per repetition, pool of single transitions, capacity, C++ runs
    "full": {"repetitions": 101, "rep_seconds": 0.01, "pool": 100_000, "capacity": 1_000_000, "cpp_runs": 3,
             "update_id_sets": 1024},
    "quick": {"repetitions": 21, "rep_seconds": 0.003, "pool": 30_000, "capacity": 1_000_000, "cpp_runs": 1,
              "update_id_sets": 256},
    "smoke": {"repetitions": 3, "rep_seconds": 0.0005, "pool": 1_000, "capacity": 5_000, "cpp_runs": 0,
              "update_id_sets": 4},
}

RR = "ray_replay"
NUMPY_SCALARS = " (numpy scalar inputs)"


# ---------------------------------------------------------------------------------------------
# Inputs


class Inputs:
    """Every input generated before any timing, shared by all implementations."""

    def __init__(self, capacity: int, pool: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        n = min(pool, capacity)
        self.states = rng.standard_normal((n, 8), dtype=np.float32)
        self.actions = rng.integers(0, 18, n, dtype=np.int64)
        self.rewards = rng.standard_normal(n, dtype=np.float32)
        self.next_states = rng.standard_normal((n, 8), dtype=np.float32)
        self.dones = rng.random(n) < 0.01
        # (a): what an environment loop hands over: fresh float32[8] arrays and Python scalars.
        self.transitions = [
            (s.copy(), int(a), float(r), ns.copy(), bool(d))
            for s, a, r, ns, d in zip(self.states, self.actions, self.rewards, self.next_states, self.dones)
        ]
        # (a'), information only: the same with numpy scalars (np.int64, np.float32, np.bool_), as
        # from a numpy policy or some environments.
        self.transitions_numpy_scalars = [
            (s, np.int64(a), np.float32(r), ns, np.bool_(d)) for s, a, r, ns, d in self.transitions
        ]
        # (b): distinct batches of ADD_BATCH rows (numpy columns), cycled.
        b = min(ADD_BATCH, n)
        self.batches = [
            tuple(col[i : i + b].copy() for col in self.columns())
            for i in range(0, n - b + 1, b)
        ][:8]
        self.batch_size = b
        # (d): priorities for updates; for prefill, one per stored row.
        self.priorities = [rng.uniform(0.01, 2.0, SAMPLE_BATCH) for _ in range(16)]
        self.prefill_priorities = rng.uniform(0.01, 2.0, n)

    def columns(self) -> tuple[np.ndarray, ...]:
        return (self.states, self.actions, self.rewards, self.next_states, self.dones)


def prefill_columns(buffer: Any, inputs: Inputs, capacity: int, prioritized: bool = False) -> None:
    """Fills ``buffer`` to capacity with add_batch of the input pool (repeated)."""
    cols = inputs.columns()
    n = len(cols[0])
    done = 0
    while done < capacity:
        k = min(n, capacity - done)
        part = [c[:k] for c in cols]
        if prioritized:
            buffer.add_batch(*part, priorities=inputs.prefill_priorities[:k])
        else:
            buffer.add_batch(*part)
        done += k


# ---------------------------------------------------------------------------------------------
# Cases: run(count) -> elapsed ns of the timed loop alone. The loop shapes are identical for all.


def add_case(add, transitions, before=None):
    def run(count: int) -> int:
        if before is not None:
            before()
        items = transitions[:count]
        t0 = common.start()
        for s, a, r, ns, d in items:
            add(s, a, r, ns, d)
        return common.stop(t0)

    return run


def add_batch_case(add_batch, batches, before=None):
    def run(count: int) -> int:
        if before is not None:
            before()
        items = [batches[i % len(batches)] for i in range(count)]
        t0 = common.start()
        for s, a, r, ns, d in items:
            add_batch(s, a, r, ns, d)
        return common.stop(t0)

    return run


def call_case(fn, before=None):
    """``fn()`` count times (sample, sample into out=, ...)."""

    def run(count: int) -> int:
        if before is not None:
            before()
        loop = range(count)
        t0 = common.start()
        for _ in loop:
            fn()
        return common.stop(t0)

    return run


def sample_update_case(sample, update, key, priorities, before=None):
    def run(count: int) -> int:
        if before is not None:
            before()
        items = [priorities[i % len(priorities)] for i in range(count)]
        t0 = common.start()
        for p in items:
            batch = sample()
            update(batch[key], p)
        return common.stop(t0)

    return run


def update_case(update, pairs, before=None):
    def run(count: int) -> int:
        if before is not None:
            before()
        items = [pairs[i % len(pairs)] for i in range(count)]
        t0 = common.start()
        for ids, p in items:
            update(ids, p)
        return common.stop(t0)

    return run


def stats_switch(buffer, on: bool):
    def before() -> None:
        buffer.collect_stats = on

    return before


# ---------------------------------------------------------------------------------------------


def installed_ray_replay() -> dict[str, Any]:
    """Where ray_replay comes from, and whether its compiled core looks older than the C++ sources."""
    import ray_replay
    from ray_replay import _core

    info: dict[str, Any] = {"package": os.path.dirname(ray_replay.__file__), "core": _core.__file__}
    src = HERE.parent / "cpp"
    if src.is_dir():
        newest = max((p for p in src.rglob("*") if p.suffix in {".hpp", ".cpp", ".h"}), key=lambda p: p.stat().st_mtime)
        core_mtime = os.path.getmtime(_core.__file__)
        info["stale"] = newest.stat().st_mtime > core_mtime
        if info["stale"]:
            info["newer_source"] = str(newest.relative_to(HERE.parent))
    return info


def build_implementations(capacity: int, inputs: Inputs, seed: int, log) -> tuple[dict[str, Any], dict[str, str]]:
    from ray_replay import ReplayBuffer

    impls: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for kind in ("uniform", "lockfree"):
        t = time.perf_counter()
        buf = ReplayBuffer(capacity, kind, schema=SCHEMA, seed=seed)
        prefill_columns(buf, inputs, capacity)
        impls[f"{RR} {kind}"] = buf
        log(f"  {RR} {kind}: filled {len(buf):,} in {time.perf_counter() - t:.1f}s")
    t = time.perf_counter()
    per = ReplayBuffer(capacity, "prioritized", schema=SCHEMA, seed=seed, alpha=ALPHA, beta=BETA, eps=EPS)
    prefill_columns(per, inputs, capacity, prioritized=True)
    impls[f"{RR} prioritized"] = per
    log(f"  {RR} prioritized: filled {len(per):,} in {time.perf_counter() - t:.1f}s")

    ring = numpy_ring.NumpyRing(capacity, SCHEMA, seed)
    prefill_columns(ring, inputs, capacity)
    impls[numpy_ring.NAME] = ring
    dq = deque_buffer.DequeBuffer(capacity, SCHEMA, seed)
    dq.prefill(inputs.transitions, capacity)
    impls[deque_buffer.NAME] = dq
    tree = numpy_sum_tree.NumpySumTreePER(capacity, SCHEMA, ALPHA, BETA, EPS, seed)
    prefill_columns(tree, inputs, capacity, prioritized=True)
    impls[numpy_sum_tree.NAME] = tree

    ok, detail = cpprb_buffer.available()
    if ok:
        try:
            cb = cpprb_buffer.CpprbBuffer(capacity, SCHEMA, seed)
            prefill_columns(cb, inputs, capacity)
            impls[cpprb_buffer.NAME] = cb
            cp = cpprb_buffer.CpprbPER(capacity, SCHEMA, ALPHA, BETA, EPS, seed)
            prefill_columns(cp, inputs, capacity, prioritized=True)
            impls[cpprb_buffer.PER_NAME] = cp
            log(f"  cpprb {detail}: filled")
        except Exception as error:  # a broken build: skip, say so
            skipped["cpprb"] = f"{type(error).__name__}: {error}"
            impls.pop(cpprb_buffer.NAME, None)
    else:
        skipped["cpprb"] = detail
    if "cpprb" in skipped:
        log(f"  note: cpprb skipped ({skipped['cpprb']}); install it with `pip install cpprb`")

    ok, detail = torchrl_buffer.available()
    if ok:
        try:
            for suffix, layout in (("", "tensordict"), (torchrl_buffer.TUPLE, "tuple")):
                tb = torchrl_buffer.TorchRLBuffer(capacity, SCHEMA, seed, layout)
                prefill_columns(tb, inputs, capacity)
                impls[torchrl_buffer.NAME + suffix] = tb
            if torchrl_buffer.per_available():
                for suffix, layout in (("", "tensordict"), (torchrl_buffer.TUPLE, "tuple")):
                    tp = torchrl_buffer.TorchRLPER(capacity, SCHEMA, ALPHA, BETA, EPS, seed, layout)
                    prefill_columns(tp, inputs, capacity, prioritized=True)
                    impls[torchrl_buffer.PER_NAME + suffix] = tp
            else:
                skipped["torchrl PER"] = "torchrl's compiled segment trees (torchrl._torchrl) did not load"
            log(f"  torchrl {detail}: filled")
        except Exception as error:  # a broken build: skip, say so
            skipped["torchrl"] = f"{type(error).__name__}: {error}"
            for name in [n for n in impls if n.startswith(torchrl_buffer.NAME)]:
                impls.pop(name)
    else:
        skipped["torchrl"] = detail
    if "torchrl" in skipped:
        log(f"  note: torchrl skipped ({skipped['torchrl']}); `make bench` installs it (pinned torchrl and tensordict)")
    elif "torchrl PER" in skipped:
        log(f"  note: torchrl PER skipped ({skipped['torchrl PER']})")
    return impls, skipped


def run_benchmarks(profile: dict[str, Any], seed: int, log) -> dict[str, Any]:
    capacity = profile["capacity"]
    reps, rep_s = profile["repetitions"], profile["rep_seconds"]
    inputs = Inputs(capacity, profile["pool"], seed)
    log(f"filling buffers to {capacity:,} ...")
    impls, skipped = build_implementations(capacity, inputs, seed, log)
    has_cpprb = cpprb_buffer.NAME in impls
    results: dict[str, dict[str, common.Measurement]] = {}
    pool = len(inputs.transitions)
    many = 1_000_000  # upper bound of calls per repetition where inputs are cycled

    def measure(group: str, cases: dict[str, tuple[Any, int]]) -> None:
        t = time.perf_counter()
        results[group] = common.measure_interleaved(cases, reps, rep_s, seed=seed)
        log(f"  {group}: {len(cases)} cases x {reps} repetitions in {time.perf_counter() - t:.1f}s")

    # Simple (non-prioritized) implementations: name -> (object, stats switch or None)
    simple: dict[str, tuple[Any, Any]] = {}
    for kind in ("uniform", "lockfree"):
        buf = impls[f"{RR} {kind}"]
        simple[f"{RR} {kind}"] = (buf, stats_switch(buf, True))
        simple[f"{RR} {kind}, stats off"] = (buf, stats_switch(buf, False))
    for name in (numpy_ring.NAME, deque_buffer.NAME, cpprb_buffer.NAME, torchrl_buffer.NAME,
                 torchrl_buffer.NAME + torchrl_buffer.TUPLE):
        if name in impls:
            simple[name] = (impls[name], None)

    log("(b) add_batch of %d ..." % inputs.batch_size)
    measure("add_batch", {n: (add_batch_case(o.add_batch, inputs.batches, sw), many) for n, (o, sw) in simple.items()})
    log("(a) add one transition per call ...")
    cases = {n: (add_case(o.add, inputs.transitions, sw), pool) for n, (o, sw) in simple.items()}
    for n in (f"{RR} uniform", numpy_ring.NAME):
        o, sw = simple[n]
        cases[n + NUMPY_SCALARS] = (add_case(o.add, inputs.transitions_numpy_scalars, sw), pool)
    measure("add", cases)
    log("(c) sample %d ..." % SAMPLE_BATCH)
    cases: dict[str, tuple[Any, int]] = {}
    for n, (o, sw) in simple.items():
        cases[n] = (call_case(functools.partial(o.sample, SAMPLE_BATCH), sw), many)
        if n.startswith(RR):
            out = o.sample(SAMPLE_BATCH)
            cases[n.replace(", stats off", "") + " out=" + (", stats off" if "stats off" in n else "")] = (
                call_case(functools.partial(o.sample, SAMPLE_BATCH, out=out), sw), many)
        elif n == numpy_ring.NAME:
            out = o.sample(SAMPLE_BATCH)
            cases[n + " out="] = (call_case(functools.partial(o.sample_into, SAMPLE_BATCH, out), None), many)
    measure("sample", cases)

    log("(d) prioritized sample %d + update %d ..." % (SAMPLE_BATCH, SAMPLE_BATCH))
    per_impls: dict[str, tuple[Any, Any, str]] = {}
    per = impls[f"{RR} prioritized"]
    per_impls[f"{RR} prioritized"] = (per, stats_switch(per, True), "ids")
    per_impls[f"{RR} prioritized, stats off"] = (per, stats_switch(per, False), "ids")
    per_impls[numpy_sum_tree.NAME] = (impls[numpy_sum_tree.NAME], None, "indexes")
    if cpprb_buffer.PER_NAME in impls:
        per_impls[cpprb_buffer.PER_NAME] = (impls[cpprb_buffer.PER_NAME], None, "indexes")
    for name in (torchrl_buffer.PER_NAME, torchrl_buffer.PER_NAME + torchrl_buffer.TUPLE):
        if name in impls:
            per_impls[name] = (impls[name], None, "index")
    for mode in ("per_sample_update", "per_sample", "per_update"):
        cases = {}
        for n, (o, sw, key) in per_impls.items():
            sample = functools.partial(o.sample, SAMPLE_BATCH)
            if mode == "per_sample_update":
                cases[n] = (sample_update_case(sample, o.update_priorities, key, inputs.priorities, sw), many)
            elif mode == "per_sample":
                cases[n] = (call_case(sample, sw), many)
            else:
                # Many distinct id sets (sampled beforehand), so the updated tree paths are not all
                # cache-hot as they would be if a few sets were cycled.
                sets = profile["update_id_sets"]
                pairs = [(o.sample(SAMPLE_BATCH)[key], inputs.priorities[i % len(inputs.priorities)]) for i in range(sets)]
                cases[n] = (update_case(o.update_priorities, pairs, sw), many)
        measure(mode, cases)
    for kind in ("uniform", "lockfree", "prioritized"):
        impls[f"{RR} {kind}"].collect_stats = True
    ok, detail = torchrl_buffer.available()
    return {"results": results, "skipped": skipped, "has_cpprb": has_cpprb, "batch_size": inputs.batch_size,
            "torchrl": detail if ok else None,
            "stats_sanity": {k: impls[f"{RR} {k}"].stats() for k in ("uniform", "lockfree", "prioritized")}}


# ---------------------------------------------------------------------------------------------
# Tables


def make_tables(results: dict[str, dict[str, common.Measurement]], batch_size: int, cpp: dict[str, Any] | None):
    """Markdown tables and the target verdicts, per workload."""
    tables: list[str] = []
    verdicts: dict[str, dict[str, Any]] = {}

    def med(group: str, name: str) -> float | None:
        m = results.get(group, {}).get(name)
        return m.median_ns if m else None

    def cpu(group: str, name: str) -> float | None:
        m = results.get(group, {}).get(name)
        return m.cpu_median_ns if m else None

    simple_baselines = [numpy_ring.NAME, deque_buffer.NAME, cpprb_buffer.NAME, torchrl_buffer.NAME]

    def simple_table(label: str, key: str, group: str, kind: str, unit: str, items: int,
                     target_text: str, check) -> None:
        base = {b: med(group, b) for b in simple_baselines if med(group, b) is not None}
        rows = []
        names = [n for n in results[group] if n.startswith(f"{RR} {kind}")] + list(base)
        if f"{numpy_ring.NAME}{NUMPY_SCALARS}" in results[group] and kind == "uniform":
            names.append(f"{numpy_ring.NAME}{NUMPY_SCALARS}")
        if group == "sample" and f"{numpy_ring.NAME} out=" in results[group]:
            names.insert(len(names) - len(base) + 1, f"{numpy_ring.NAME} out=")
        if torchrl_buffer.NAME + torchrl_buffer.TUPLE in results[group]:
            names.append(torchrl_buffer.NAME + torchrl_buffer.TUPLE)
        for n in names:
            value = med(group, n)
            is_rr = n.startswith(RR)
            met = check(value) if is_rr else None
            rows.append(common.Row(n, value, cpu(group, n), target_text if is_rr else "", met))
            if is_rr:
                verdicts.setdefault(key, {})[n] = {"target": target_text, "met": met,
                                                   "met_by_cpu_time": check(cpu(group, n))}
        tables.append(common.markdown_table(label, rows, base, unit, items))

    for kind, prefix in (("uniform", ""), ("lockfree", "(e) ")):
        tag = "" if kind == "uniform" else " (lockfree)"
        simple_table(f"{prefix}(a) add one transition per call{tag}: ns per call", f"{'e_' if prefix else ''}a_add",
                     "add", kind, "ns", 1, f"<= {TARGETS['add_ns']:.0f} ns", lambda v: v <= TARGETS["add_ns"])
        simple_table(f"{prefix}(b) add_batch of {batch_size}{tag}: transitions per second",
                     f"{'e_' if prefix else ''}b_add_batch", "add_batch", kind, "M/s", batch_size,
                     f">= {TARGETS['add_batch_mps']:.0f} M/s",
                     lambda v: batch_size * 1e3 / v >= TARGETS["add_batch_mps"])
        simple_table(f"{prefix}(c) uniform sample of {SAMPLE_BATCH} from a full buffer{tag}: us per call",
                     f"{'e_' if prefix else ''}c_sample", "sample", kind, "us", 1,
                     f"<= {TARGETS['sample_us']:.0f} us", lambda v: v <= TARGETS["sample_us"] * 1e3)

    per_baselines = [numpy_sum_tree.NAME, cpprb_buffer.PER_NAME, torchrl_buffer.PER_NAME]
    titles = {
        "per_sample_update": f"(d) prioritized: sample {SAMPLE_BATCH} + update_priorities {SAMPLE_BATCH}: us per step",
        "per_sample": f"(d) prioritized: sample {SAMPLE_BATCH} only: us per call",
        "per_update": f"(d) prioritized: update_priorities {SAMPLE_BATCH} only: us per call",
    }
    for group, title in titles.items():
        if group not in results:
            continue
        base = {b: med(group, b) for b in per_baselines if med(group, b) is not None}
        rows = []
        for n in results[group]:
            value = med(group, n)
            met = None
            target = ""
            if n.startswith(RR) and group == "per_sample_update":
                cp = base.get(cpprb_buffer.PER_NAME)
                target = f"<= {TARGETS['per_us']:.0f} us and >= {TARGETS['per_vs_cpprb']:.0f}x cpprb PER"
                met = value <= TARGETS["per_us"] * 1e3 and (cp is None or cp / value >= TARGETS["per_vs_cpprb"])
                c, cp_c = cpu(group, n), cpu(group, cpprb_buffer.PER_NAME)
                verdicts.setdefault("d_prioritized", {})[n] = {
                    "target": target, "met": met,
                    "met_by_cpu_time": c <= TARGETS["per_us"] * 1e3 and (cp_c is None or cp_c / c >= TARGETS["per_vs_cpprb"]),
                    "speedup_vs_cpprb": None if cp is None else cp / value,
                }
            rows.append(common.Row(n, value, cpu(group, n), target, met))
        tables.append(common.markdown_table(title, rows, base, "us"))

    if cpp and "medians" in cpp:
        m = cpp["medians"]
        rows = []
        for key, value in m.items():
            if key.endswith("_add_ns"):
                met = value <= TARGETS["cpp_add_ns"]
                rows.append(common.Row(f"C++ {key[:-7]} add", value, None, f"<= {TARGETS['cpp_add_ns']:.0f} ns", met))
                verdicts.setdefault("cpp_add", {})[key] = {"target": f"<= {TARGETS['cpp_add_ns']:.0f} ns", "met": met}
            elif key.endswith("_ns"):
                rows.append(common.Row(f"C++ {key[:-3]}", value))
        tables.append(common.markdown_table(
            f"(C++) bench_add, {m.get('transition_bytes', '?'):.0f}-byte transition, monitoring off: ns (median of {cpp['runs']} runs)",
            rows, {}, "ns"))
    return tables, verdicts


# ---------------------------------------------------------------------------------------------


def workload_definitions(profile: dict[str, Any], batch_size: int, results) -> dict[str, Any]:
    return {
        "transition": {name: {"shape": list(shape), "dtype": np.dtype(dt).name} for name, (shape, dt) in SCHEMA.items()},
        "transition_bytes": int(sum(np.dtype(dt).itemsize * int(np.prod(shape)) for shape, dt in SCHEMA.values())),
        "capacity": profile["capacity"],
        "prefilled_to_capacity": True,
        "a_add": {"call": "add(state, action, reward, next_state, done)", "unit": "ns per call",
                  "inputs": "fresh float32[8] numpy arrays for state/next_state; Python int, float, bool scalars",
                  "transitions_pool": profile["pool"],
                  "variant_numpy_scalar_inputs": "rows marked 'numpy scalar inputs': action np.int64, reward np.float32, "
                                                 "done np.bool_ (information; same loop)"},
        "b_add_batch": {"call": "add_batch(states, actions, rewards, next_states, dones)", "batch_size": batch_size,
                        "unit": "transitions per second", "distinct_batches_cycled": 8},
        "c_sample": {"call": "sample(256) and sample(256, out=preallocated)", "batch_size": SAMPLE_BATCH,
                     "unit": "us per call", "from": "a full buffer"},
        "d_prioritized": {"calls": ["sample(256) then update_priorities(ids, priorities)", "sample(256)",
                                    "update_priorities(ids of an earlier sample, priorities)"],
                          "batch_size": SAMPLE_BATCH, "alpha": ALPHA, "beta": BETA, "eps": EPS,
                          "priorities": "uniform(0.01, 2.0)", "unit": "us per call",
                          "update_only_distinct_id_sets": profile["update_id_sets"]},
        "e_lockfree": "workloads a, b, c with buffer_type='lockfree'",
        "torchrl": "ReplayBuffer(LazyTensorStorage, RandomSampler) and PrioritizedReplayBuffer(LazyTensorStorage): "
                   "extend(TensorDict of torch.from_numpy columns), add(TensorDict of one row), sample(n) "
                   "(return_info=True for PER; samples stay torch TensorDicts), update_priority(info['index'], "
                   "float32 priorities); '(tuple pytree)' rows store a tuple of tensors; torch.set_num_threads(1)",
        "timing": {"repetitions": profile["repetitions"], "seconds_per_repetition": profile["rep_seconds"],
                   "warmup_repetitions": 1, "interleaved_round_robin": True, "statistic": "median",
                   "gc_disabled_while_timed": True,
                   "ops_per_repetition": {g: {n: m.ops_per_rep for n, m in ms.items()} for g, ms in results.items()}},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="fewer, shorter repetitions (under a minute)")
    mode.add_argument("--smoke", action="store_true", help="tiny sizes, for tests (seconds; figures meaningless)")
    parser.add_argument("--repetitions", type=int, default=None, help="repetitions per case (median over them)")
    parser.add_argument("--out", default=str(HERE / "results" / "local.json"), help="JSON output (a .md beside it)")
    parser.add_argument("--no-cpp", action="store_true", help="skip the C++ benchmark")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    profile_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    profile = dict(PROFILES[profile_name])
    if args.repetitions is not None:
        if args.repetitions < 1:
            parser.error("--repetitions must be >= 1")
        profile["repetitions"] = args.repetitions

    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", flush=True)

    machine = common.machine_info()
    source = installed_ray_replay()
    if source.get("stale"):
        log(f"WARNING: the installed ray_replay core ({source['core']}) is older than {source['newer_source']}: "
            "the figures below may not reflect the current sources (reinstall with `make install`)")
    log(f"{profile_name} run: {machine['cpu_model']}, {machine['usable_cpus']} CPUs, Python {machine['python']}, "
        f"numpy {machine['numpy']}, ray_replay {machine['ray_replay']}, load {machine['load_average_at_start']}")

    out = run_benchmarks(profile, args.seed, log)
    results = out["results"]

    cpp: dict[str, Any] | None = None
    if profile["cpp_runs"] and not args.no_cpp:
        log("(C++) bench_add ...")
        try:
            import cpp as cpp_bench

            cpp = cpp_bench.run(runs=profile["cpp_runs"], capacity=profile["capacity"])
        except Exception as error:
            detail = getattr(error, "stderr", "") or ""
            cpp = {"skipped": f"{type(error).__name__}: {error} {detail[-500:]}".strip()}
            log(f"  note: C++ benchmark skipped ({cpp['skipped']})")

    tables, verdicts = make_tables(results, out["batch_size"], cpp)
    machine["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    markdown = (
        f"Machine: {machine['cpu_model']}, {machine['usable_cpus']} CPUs, Python {machine['python']}, "
        f"numpy {machine['numpy']}, ray_replay {machine['ray_replay']}, cpprb {machine['cpprb'] or 'not installed'}, "
        f"torchrl {out['torchrl'] or 'not installed'}; "
        f"{profile_name} run, medians of {profile['repetitions']} repetitions; load average "
        f"{machine['load_average_at_start'][0]:.1f} at start, {machine['load_average_at_end'][0]:.1f} at end.\n\n"
        + "\n".join(tables)
    )
    print()
    print(markdown)

    batch_size = out["batch_size"]
    data = {
        "benchmark": "ray_replay local",
        "format_version": 1,
        "mode": profile_name,
        "machine": machine,
        "ray_replay_build": source,
        "workloads": workload_definitions(profile, batch_size, results),
        "targets": TARGETS,
        "skipped": out["skipped"],
        "results": {
            group: {
                "unit": "ns per call" + (f" (of {batch_size} transitions)" if group == "add_batch" else ""),
                "implementations": {
                    n: m.to_json(batch_size if group == "add_batch" else 1) for n, m in ms.items()
                },
            }
            for group, ms in results.items()
        },
        "verdicts": verdicts,
        "cpp": cpp,
        "stats_after_run": out["stats_sanity"],
        "elapsed_seconds": time.perf_counter() - started,
        "markdown": markdown,
    }
    path = common.write_json(data, args.out)
    Path(path).with_suffix(".md").write_text(markdown, encoding="utf-8")
    log(f"wrote {path} and {Path(path).with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
