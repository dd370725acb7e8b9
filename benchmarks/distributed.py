"""Distributed replay benchmark DIST-1 (issue 4), with the naive single-actor baseline in the same run.

DIST-1: 2 writer actors insert batches of 1000 transitions (obs float32[8], action int64, reward
float32, next_obs float32[8], done bool); 1 learner samples prioritized batches of 512 (alpha 0.6,
beta 0.4) and updates the priorities of every batch; capacity 1,000,000 (2 shards); measured for
``--seconds`` after a prefill of ``--prefill`` rows.

Every system is driven alike: each writer keeps 8 insert calls of 1000 rows in flight, the learner 2
sample calls (then updates the priorities of each batch, fire and forget); each is credited only with
the rows acknowledged (a returned call, or ReplayClient.stats()["rows_acknowledged"]), over the time
until the last acknowledgement.

* ray_replay: ReplayCoordinator with 2 shards; writers and learner use ReplayClient (the data path of
  DistributedReplay: every payload straight to or from a shard), one call per 1000-row batch; the
  learner's client asks each shard for ``--rounds-per-call`` (default 2) prefetched rounds per call,
  keeping 2 to 3 rounds in flight (the peers keep 2 calls).
* one_shard: ray_replay whose learner's client draws each batch whole from one shard picked by mass
  (``ReplayClient(batch_from="one_shard")``): one shard call per round.
* direct, one_shard_direct: ray_replay and one_shard with the learner's client sampling over each
  shard's socket (``ReplayClient(sample_transport="direct")``, ray_replay/distributed/direct.py): the
  same rounds without a Ray call per round. Writes as ray_replay's.
* handle: the same replay through the object users pass around, ``DistributedReplay`` (writers and
  learner get it pickled and call ``replay.add_batch.remote(**batch)``, ``replay.sample.remote(512)``,
  ``replay.update_priorities.remote(...)``, driven exactly as the naive actor's handle, calls in flight
  included); its ``.remote`` calls run this process's ReplayClient, so every payload takes one hop; a
  writer is credited with its client's rows_acknowledged.
* handle_one_shard: handle, with ``client_options={"batch_from": "one_shard"}``: ``replay.sample.remote(512)``
  returns the ObjectRef of the shard's own reply (ReplayClient.sample_ref), so the learner's calls in
  flight are in flight as on the naive actor's handle.
* coordinator: the same replay driven through the coordinator actor's own handle (add_batch.remote,
  sample.remote, update_priorities.remote): every payload relayed by the coordinator actor (kept for
  compatibility; DistributedReplay is the handle to pass around).
* naive: numpy ring + numpy sum tree (benchmarks/baselines/numpy_sum_tree.py) in one plain Ray
  actor; add_batch.remote, sample.remote, update_priorities.remote.
* torchrl (when installed): TorchRL's RayReplayBuffer hosting a prioritized ReplayBuffer
  (LazyTensorStorage, PrioritizedSampler; benchmarks/baselines/torchrl_ray_buffer.py); writers extend
  it with TensorDicts of 1000 rows, the learner samples 512 with return_info=True and calls
  update_priority, each through its own ``client()``.

Reported: inserted/s and sampled/s (rows), learner-side sample latency p50/p99, and CPU-us per
transition = CPU time (user+sys, from /proc) of every process of the workload (writers, learner,
shards, coordinator or naive actor) during the window / (rows inserted + rows sampled). Also
single-transition ``add.remote(...)`` calls/s from the driver (window of 1000 calls in flight; 5 s,
2 s with --quick).
``--cluster`` instead runs DIST-1 with 1, 2 and 4 shards (2 writers), then with 1 and 4 writers (4
shards), on a simulated 4-node Ray Cluster and reports throughput and CPU-us per transition.
``--durability`` runs ray_replay's DIST-1 plain, with shard checkpoints every second (to a temporary
folder on the local disk), with replication_factor=2, and with both, interleaved, and reports each
beside the plain run (backups' CPU time counted too). Medians over ``--repeats`` runs. Everything
runs on loopback.

    python benchmarks/distributed.py [--seconds 20] [--repeats 2] [--quick | --smoke] [--cluster | --durability]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from baselines import torchrl_ray_buffer  # noqa: E402
from common import SCHEMA, machine_info, write_json  # noqa: E402

from ray_replay.distributed import DistributedReplay, ReplayClient, ReplayCoordinator  # noqa: E402
from ray_replay.distributed.runtime import LOOPBACK, init_ray  # noqa: E402

FIELDS = tuple(SCHEMA)
CAPACITY = 1_000_000
WRITE_BATCH = 1000
SAMPLE_BATCH = 512
ALPHA, BETA, EPS = 0.6, 0.4, 1e-6
# The data-path targets: ratios against the naive actor of the same run, and latency bounds in ms.
RATIO_TARGETS = {"inserted_per_s": 2.0, "sampled_per_s": 3.0, "cpu_us_per_transition": 2.0, "single_add_per_s": 2.0}
LATENCY_TARGETS = {"sample_p50_ms": 2.0, "sample_p99_ms": 10.0}


def make_rows(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    state = rng.standard_normal((n, 8), dtype=np.float32)
    return {
        "state": state,
        "action": rng.integers(0, 4, n),
        "reward": rng.standard_normal(n, dtype=np.float32),
        "next_state": state + 0.1,
        "done": rng.random(n) < 0.01,
    }


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@ray.remote(num_cpus=0)
class NaiveReplay:
    """The baseline: numpy ring + numpy sum tree in one plain (one call at a time) Ray actor."""

    def __init__(self, capacity: int) -> None:
        from baselines.numpy_sum_tree import NumpySumTreePER

        self.buffer = NumpySumTreePER(capacity, SCHEMA, alpha=ALPHA, beta=BETA, eps=EPS)

    def pid(self) -> int:
        return os.getpid()

    def add(self, state, action, reward, next_state, done) -> None:
        self.buffer.add_batch(state[None], np.array([action]), np.array([reward]), next_state[None], np.array([done]))

    def add_batch(self, state, action, reward, next_state, done, priorities=None) -> None:
        self.buffer.add_batch(state, action, reward, next_state, done, priorities)

    def sample(self, n: int) -> dict[str, np.ndarray]:
        return self.buffer.sample(n)

    def update_priorities(self, ids: np.ndarray, priorities: np.ndarray) -> None:
        self.buffer.update_priorities(ids, priorities)


WRITES_IN_FLIGHT = 8  # insert calls each writer keeps outstanding, for every system alike
SAMPLES_IN_FLIGHT = 2  # sample calls the learner keeps outstanding (the client's prefetch), for every system alike


@ray.remote(num_cpus=0)
class Writer:
    """Inserts batches of WRITE_BATCH rows with WRITES_IN_FLIGHT calls outstanding, whichever system;
    credited only with rows acknowledged (a call that returned, or the client's rows_acknowledged)."""

    def __init__(self, replay: Any, kind: str, seed: int, batch_rows: int) -> None:
        self.replay, self.kind = replay, kind
        options = {"batch_rows": batch_rows, "max_in_flight": WRITES_IN_FLIGHT}
        self.client = ReplayClient(replay, **options) if kind == "ray_replay" else None
        if kind == "handle":  # what `Writer.remote(distributed_replay)` unpickles to
            self.replay = DistributedReplay.from_actor(replay, client_options=options)
        self.batches = [make_rows(WRITE_BATCH, seed * 100 + i) for i in range(8)]
        if kind == "torchrl":
            self.batches = [torchrl_ray_buffer.tensordict(b) for b in self.batches]

    def pid(self) -> int:
        return os.getpid()

    def run(self, start_at: float, seconds: float) -> tuple[int, float]:
        """(rows acknowledged, seconds from the start until the last acknowledgement)."""
        while time.time() < start_at:
            time.sleep(0.001)
        end, acked, pending, i = start_at + seconds, 0, [], 0
        while time.time() < end:
            batch = self.batches[i % len(self.batches)]
            i += 1
            if self.kind in ("naive", "coordinator", "handle"):
                pending.append(self.replay.add_batch.remote(*batch.values()) if self.kind == "naive" else self.replay.add_batch.remote(**batch))
                if len(pending) >= WRITES_IN_FLIGHT:
                    ray.get(pending.pop(0))
                    acked += WRITE_BATCH
            elif self.kind == "torchrl":
                self.replay.extend(batch)  # its client returns once the rows are stored
                acked += WRITE_BATCH
            else:
                self.client.add_batch(**batch)
        ray.get(pending)
        acked += WRITE_BATCH * len(pending)
        if self.client is not None:
            self.client.flush()
            acked = self.client.stats()["rows_acknowledged"]
        if self.kind == "handle":  # its ObjectRefs say a row was handed over, not stored: count what the shards acknowledged
            self.replay.flush()
            acked = self.replay.client_stats()["rows_acknowledged"]
        return acked, time.time() - start_at


@ray.remote(num_cpus=0)
class Learner:
    """Samples SAMPLE_BATCH prioritized rows with SAMPLES_IN_FLIGHT calls outstanding and updates the
    priorities of every batch (fire and forget), whichever system."""

    def __init__(self, replay: Any, kind: str, prefetch: int, rounds_per_call: int = 1, batch_from: str = "all_shards",
                 sample_transport: str = "ray") -> None:
        self.replay, self.kind = replay, kind
        # With rounds_per_call G > 1 the client keeps prefetch .. prefetch + G - 1 rounds in flight: never
        # fewer than the peers' calls in flight.
        options = {"prefetch": prefetch + rounds_per_call - 1, "rounds_per_call": rounds_per_call, "max_in_flight": 8, "seed": 0, "batch_from": batch_from}
        self.client = ReplayClient(replay, **options, sample_transport=sample_transport) if kind == "ray_replay" else None
        if kind == "handle":
            self.replay = DistributedReplay.from_actor(replay, client_options=options)
        self.prefetch = prefetch
        self.rng = np.random.default_rng(0)

    def pid(self) -> int:
        return os.getpid()

    def run(self, start_at: float, seconds: float) -> dict[str, Any]:
        while time.time() < start_at:
            time.sleep(0.001)
        end, latencies, rows, waiting = start_at + seconds, [], 0, []
        while time.time() < end:
            t0 = time.perf_counter()
            if self.kind in ("naive", "coordinator", "handle"):
                while len(waiting) <= self.prefetch:
                    waiting.append(self.replay.sample.remote(SAMPLE_BATCH))
                batch = ray.get(waiting.pop(0))
            elif self.kind == "torchrl":
                batch, info = self.replay.sample(SAMPLE_BATCH, return_info=True)
            else:
                batch = self.client.sample(SAMPLE_BATCH)
            latencies.append(time.perf_counter() - t0)
            priorities = self.rng.uniform(0.1, 2.0, SAMPLE_BATCH)
            if self.kind == "naive":
                self.replay.update_priorities.remote(batch["indexes"], priorities)
            elif self.kind in ("coordinator", "handle"):
                self.replay.update_priorities.remote(batch["ids"], priorities)
            elif self.kind == "torchrl":
                torchrl_ray_buffer.update_priorities(self.replay, info["index"], priorities)
            else:
                self.client.update_priorities(batch["ids"], priorities)
            rows += SAMPLE_BATCH
        if self.client is not None:
            self.client.close()
        if self.kind == "handle":
            self.replay.client.close()
        if not latencies:  # no sample came back within the window (a very loaded machine, a 1 s smoke run)
            return {"rows": 0, "p50_ms": float("nan"), "p99_ms": float("nan")}
        ms = np.array(latencies) * 1e3
        return {"rows": rows, "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def prefill(replay: Any, kind: str, rows: int) -> None:
    chunk = make_rows(min(rows, 100_000), 99)
    refs = []
    for start in range(0, rows, len(chunk["action"])):
        n = min(len(chunk["action"]), rows - start)
        part = {k: v[:n] for k, v in chunk.items()}
        if kind == "torchrl":
            replay.extend(torchrl_ray_buffer.tensordict(part))
            continue
        refs.append(replay.add_batch.remote(*part.values()) if kind == "naive" else replay.add_batch.remote(**part))
        if len(refs) >= 2:
            ray.get(refs.pop(0))
    ray.get(refs)


def actor_pid(actor: Any) -> int:
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))


def create_replay(kind: str, num_shards: int = 2, **coordinator_options: Any) -> tuple[Any, Any, list[int]]:
    """(owner, handle for writers and learner, pids of the replay's processes)."""
    if kind == "naive":
        replay = NaiveReplay.remote(CAPACITY)
        return replay, replay, [actor_pid(replay)]
    if kind == "torchrl":
        owner = torchrl_ray_buffer.create(CAPACITY, ALPHA, BETA, EPS)
        return owner, owner.client(), [actor_pid(owner._rb)]  # _rb: the actor, read for its pid only
    # "ray_replay": writers and learner through ReplayClient (DistributedReplay's data path);
    # "handle": through DistributedReplay's .remote calls (the same data path, one hop);
    # "coordinator": through the coordinator's own handle (every payload relayed by it).
    replay = ReplayCoordinator.remote(
        capacity=CAPACITY, num_shards=num_shards, buffer_type="prioritized", alpha=ALPHA, beta=BETA, schema=SCHEMA, seed=0,
        collect_stats=False, **coordinator_options,
    )
    ray.get(replay.size.remote())
    replicas = ray.get(replay.shard_handles.remote()) + ray.get(replay.backup_handles.remote())
    return replay, replay, [actor_pid(a) for a in [*replicas, replay]]


def close_replay(kind: str, owner: Any) -> None:
    if kind == "torchrl":
        owner.close()
        return
    if kind in ("ray_replay", "handle", "coordinator"):
        ray.get(owner.shutdown.remote())
    ray.kill(owner)


def run_dist1(kind: str, seconds: float, prefill_rows: int, num_shards: int = 2, batch_rows: int = WRITE_BATCH, prefetch: int = SAMPLES_IN_FLIGHT,
              num_writers: int = 2, rounds_per_call: int = 1, batch_from: str = "all_shards", sample_transport: str = "ray",
              **coordinator_options: Any) -> dict[str, Any]:
    """One DIST-1 run; every actor it creates is killed at the end. ``kind`` "one_shard" is "ray_replay"
    whose learner draws each batch from one shard (ReplayClient batch_from="one_shard")."""
    if kind == "one_shard":
        kind, batch_from = "ray_replay", "one_shard"
    elif kind == "handle_one_shard":
        kind, batch_from = "handle", "one_shard"
    elif kind == "direct":
        kind, sample_transport = "ray_replay", "direct"
    elif kind == "one_shard_direct":
        kind, batch_from, sample_transport = "ray_replay", "one_shard", "direct"
    owner, replay, pids = create_replay(kind, num_shards, **coordinator_options)
    prefill(replay, kind, prefill_rows)
    writers = [Writer.remote(replay, kind, i, batch_rows) for i in range(num_writers)]
    learner = Learner.remote(replay, kind, prefetch, rounds_per_call, batch_from, sample_transport)
    pids += ray.get([a.pid.remote() for a in [*writers, learner]])
    start_at = time.time() + 1.0
    cpu0 = sum(cpu_seconds(p) for p in pids)
    wall0 = time.perf_counter()
    written = [w.run.remote(start_at, seconds) for w in writers]
    learned = learner.run.remote(start_at, seconds)
    acks, result = ray.get(written), ray.get(learned)
    inserted = sum(rows for rows, _ in acks)
    acked_within = max(t for _, t in acks)  # rows acknowledged after the window count, over the time they took
    cpu = sum(cpu_seconds(p) for p in pids) - cpu0
    elapsed = time.perf_counter() - wall0 - 1.0  # the actors start together one second after wall0
    out = {
        "inserted_per_s": inserted / max(acked_within, seconds),
        "sampled_per_s": result["rows"] / seconds,
        "sample_p50_ms": result["p50_ms"],
        "sample_p99_ms": result["p99_ms"],
        "cpu_us_per_transition": cpu * 1e6 / (inserted + result["rows"]),
        "overrun_s": elapsed - seconds,
    }
    if kind in ("ray_replay", "handle", "coordinator"):
        out["shard_sizes"] = [s["size"] for s in ray.get(owner.stats.remote())["shards"]]
    for actor in [*writers, learner]:
        ray.kill(actor)
    close_replay(kind, owner)
    return out


def single_adds(kind: str, seconds: float) -> float:
    """Single-transition add calls per second from the driver: add.remote with up to 1000 in flight
    (ray_replay: DistributedReplay's add.remote, straight to the shards; coordinator: the coordinator
    handle's); TorchRL's client waits for the reply of each add. Timed until every row is stored."""
    owner, replay, _ = create_replay(kind)
    if kind in ("ray_replay", "handle"):
        replay = DistributedReplay.from_actor(owner)
    if kind == "torchrl":
        one = torchrl_ray_buffer.tensordict(make_rows(1, 0))[0]
        add = lambda: replay.add(one)  # noqa: E731
    else:
        row = tuple(v[0] for v in make_rows(1, 0).values())
        add = lambda: replay.add.remote(*row)  # noqa: E731
    calls, window = 0, []
    start = time.perf_counter()
    while time.perf_counter() < start + seconds:
        result = add()
        calls += 1
        if isinstance(result, ray.ObjectRef):
            window.append(result)
            if len(window) >= 1000:
                ray.get(window[:500])
                del window[:500]
    ray.get(window)
    if isinstance(replay, DistributedReplay):
        replay.flush()
    rate = calls / (time.perf_counter() - start)
    close_replay(kind, owner)
    return rate


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k, v in runs[0].items() if isinstance(v, float)]
    out = {k: statistics.median(r[k] for r in runs) for k in keys}
    out["runs"] = runs
    return out


PEER_LABELS = {"naive": "naive actor", "one_shard": "ray_replay, batch_from='one_shard'",
               "direct": "ray_replay, sample_transport='direct'", "one_shard_direct": "ray_replay, one_shard, sample_transport='direct'", "handle": "ray_replay via DistributedReplay's .remote",
               "handle_one_shard": "ray_replay via DistributedReplay's .remote, batch_from='one_shard'", "coordinator": "ray_replay via the coordinator actor (relay)",
               "torchrl": torchrl_ray_buffer.NAME}


def _target(key: str, value: float, naive: float | None, higher: bool) -> tuple[str, str]:
    """(the target for a metric, whether value meets it) for ray_replay's DIST-1 targets."""
    if key in RATIO_TARGETS and naive:
        want = RATIO_TARGETS[key]
        ratio = value / naive if higher else naive / value
        return f"{want:g}x {'naive' if higher else 'fewer than naive'}", "yes" if ratio >= want else "**no**"
    if key in LATENCY_TARGETS:
        return f"<= {LATENCY_TARGETS[key]:g}", "yes" if value <= LATENCY_TARGETS[key] else "**no**"
    return "", ""


def markdown(results: dict[str, Any]) -> str:
    """ray_replay (the client) against each peer; the targets are checked for the client and, when
    measured, for batch_from='one_shard' and for DistributedReplay's .remote handle (with either batch_from)."""
    ours = results["ray_replay"]
    peers = [name for name in PEER_LABELS if name in results]
    also = [name for name in ("one_shard", "direct", "one_shard_direct", "handle", "handle_one_shard") if name in results]
    also_labels = {"one_shard": "met (one_shard)", "direct": "met (direct)", "one_shard_direct": "met (one_shard, direct)", "handle": "met (.remote handle)",
                   "handle_one_shard": "met (.remote handle, one_shard)"}
    lines = [
        "### DIST-1 (medians of %d runs, %.0f s each after a %s-row prefill)" % (results["repeats"], results["seconds"], f"{results['prefill']:,}"),
        "",
        "| metric | ray_replay | " + " | ".join(f"{PEER_LABELS[p]} | ratio" for p in peers) + " | target | met" + "".join(f" | {also_labels[a]}" for a in also) + " |",
        "|---|---|" + "---|---|" * len(peers) + "---|---|" + "---|" * len(also),
    ]
    rows = [
        ("inserted/s", "inserted_per_s", "{:,.0f}", True),
        ("sampled/s", "sampled_per_s", "{:,.0f}", True),
        ("sample p50 (ms)", "sample_p50_ms", "{:.2f}", False),
        ("sample p99 (ms)", "sample_p99_ms", "{:.2f}", False),
        ("CPU-us per transition", "cpu_us_per_transition", "{:.2f}", False),
        ("single add calls/s", "single_add_per_s", "{:,.0f}", True),
    ]
    for label, key, fmt, higher in rows:
        a = ours[key]
        cells = []
        for peer in peers:
            b = results[peer][key]
            ratio = (a / b if higher else b / a) if a and b else float("nan")
            verdict = f"{ratio:.1f}x better" if ratio >= 1 else f"{1 / ratio:.1f}x worse"
            cells.append(f"{fmt.format(b)} | {verdict}")
        naive = results.get("naive", {}).get(key)
        tgt, met = _target(key, a, naive, higher)
        for name in also:
            met += " | " + _target(key, results[name][key], naive, higher)[1]
        lines.append(f"| {label} | {fmt.format(a)} | " + " | ".join(cells) + f" | {tgt} | {met} |")
    return "\n".join(lines) + "\n"


def cluster_mode(args: argparse.Namespace) -> dict[str, Any]:
    """DIST-1 on a simulated 4-node cluster (head + 3 workers, 1 CPU each): 1, 2, 4 shards with 2
    writers, then 1 and 4 writers with 4 shards (the learner's batches from ``--batch-from``); then
    2 and 4 shards with the other batch_from (1 shard: the same either way); then 1, 2, 4 shards with
    one_shard batches over direct channels (sample_transport="direct")."""
    from ray.cluster_utils import Cluster

    cluster = Cluster()
    other = "one_shard" if args.batch_from == "all_shards" else "all_shards"
    results: dict[str, Any] = {"shards": {}, "writers": {}, "writers_with_shards": 4, "batch_from": args.batch_from, f"shards_{other}": {},
                               "shards_one_shard_direct": {}}

    def measure(table: str, key: int, **options: Any) -> dict[str, Any]:
        options.setdefault("batch_from", args.batch_from)
        runs = [run_dist1("ray_replay", args.seconds, args.prefill, rounds_per_call=args.rounds_per_call, **options) for _ in range(args.repeats)]
        r = results[table][str(key)] = median_of(runs)
        print(f"{options}: {r['inserted_per_s']:,.0f} inserted/s, {r['sampled_per_s']:,.0f} sampled/s, "
              f"{r['cpu_us_per_transition']:.2f} CPU-us/transition", flush=True)
        return r

    try:
        for _ in range(4):
            cluster.add_node(num_cpus=1, node_ip_address=LOOPBACK, include_dashboard=False, object_store_memory=300 * 1024**2)
        init_ray(address=cluster.address, runtime_env={"env_vars": {"PYTHONPATH": _pythonpath()}})
        for shards in (1, 2, 4):
            measure("shards", shards, num_shards=shards)
        results["writers"]["2"] = results["shards"]["4"]
        for writers in (1, 4):
            measure("writers", writers, num_shards=4, num_writers=writers)
        results["writers"] = dict(sorted(results["writers"].items(), key=lambda kv: int(kv[0])))
        results[f"shards_{other}"]["1"] = results["shards"]["1"]
        for shards in (2, 4):
            measure(f"shards_{other}", shards, num_shards=shards, batch_from=other)
        for shards in (1, 2, 4):
            measure("shards_one_shard_direct", shards, num_shards=shards, batch_from="one_shard", sample_transport="direct")
    finally:
        ray.shutdown()
        cluster.shutdown()
    lines = ["### DIST-1 on a simulated 4-node cluster", ""]
    for table, label in (("shards", f"shards (2 writers, batch_from={args.batch_from})"), ("writers", "writers (4 shards)"),
                         (f"shards_{other}", f"shards (2 writers, batch_from={other})"),
                         ("shards_one_shard_direct", "shards (2 writers, batch_from=one_shard, sample_transport=direct)")):
        lines += [f"| {label} | inserted/s | sampled/s | p50 ms | CPU-us per transition |", "|---|---|---|---|---|"]
        for key, r in results[table].items():
            lines.append(f"| {key} | {r['inserted_per_s']:,.0f} | {r['sampled_per_s']:,.0f} | {r['sample_p50_ms']:.2f} | {r['cpu_us_per_transition']:.2f} |")
        lines.append("")
    results["markdown"] = "\n".join(lines)
    print(results["markdown"])
    return results


DURABILITY = {
    "plain": {},
    "checkpoints every 1 s": {"checkpoint_every_s": 1.0},
    "replication_factor=2": {"replication_factor": 2},
    "both": {"checkpoint_every_s": 1.0, "replication_factor": 2},
}


def durability_mode(args: argparse.Namespace) -> dict[str, Any]:
    """ray_replay's DIST-1 with checkpoints and/or replication, interleaved with the plain run."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in DURABILITY}
    with tempfile.TemporaryDirectory(prefix="ray_replay-bench-") as folder:
        for rep in range(args.repeats):
            for name, options in DURABILITY.items():
                options = dict(options)
                if "checkpoint_every_s" in options:
                    options["checkpoint_dir"] = os.path.join(folder, f"{rep}-{len(runs[name])}-{name.split()[0]}")
                r = run_dist1("ray_replay", args.seconds, args.prefill, batch_rows=args.batch_rows, **options)
                runs[name].append(r)
                print(f"[{rep + 1}/{args.repeats}] {name}: " + ", ".join(f"{k}={v:,.2f}" for k, v in r.items() if isinstance(v, float)), flush=True)
    results = {name: median_of(rs) for name, rs in runs.items()}
    plain = results["plain"]
    lines = ["### DIST-1 with durability (medians of %d runs, %.0f s each after a %s-row prefill)" % (args.repeats, args.seconds, f"{args.prefill:,}"),
             "", "| configuration | inserted/s | vs plain | sampled/s | vs plain | sample p50 (ms) | CPU-us per transition |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['inserted_per_s']:,.0f} | {r['inserted_per_s'] / plain['inserted_per_s']:.2f}x | {r['sampled_per_s']:,.0f} | "
                     f"{r['sampled_per_s'] / plain['sampled_per_s']:.2f}x | {r['sample_p50_ms']:.2f} | {r['cpu_us_per_transition']:.2f} |")
    results["markdown"] = "\n".join(lines) + "\n"
    print(results["markdown"])
    return results


def _pythonpath() -> str:
    return os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window of each run")
    parser.add_argument("--prefill", type=int, default=CAPACITY, help="rows inserted before the window")
    parser.add_argument("--repeats", type=int, default=2, help="runs per configuration (medians reported)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="4 s windows, 200K prefill, 1 repeat")
    mode.add_argument("--smoke", action="store_true", help="1 s windows, 20K prefill, 1 repeat: for the test suite")
    parser.add_argument("--cluster", action="store_true", help="1, 2, 4 shards and 1, 2, 4 writers on a simulated multi-node cluster")
    parser.add_argument("--durability", action="store_true", help="plain vs checkpoints vs replication_factor=2")
    parser.add_argument("--batch-rows", type=int, default=WRITE_BATCH,
                        help="ReplayClient batch_rows of the writers (default: one call per 1000-row batch, as the peers)")
    parser.add_argument("--rounds-per-call", type=int, default=2,
                        help="ray_replay's learner: prefetched rounds per shard call (ReplayClient rounds_per_call; 1: one call per round)")
    parser.add_argument("--batch-from", choices=("all_shards", "one_shard"), default="all_shards",
                        help="ray_replay's learner: ReplayClient batch_from (one global draw over the shards, or each batch from one shard picked by mass)")
    parser.add_argument("--out", default=str(HERE / "results" / "distributed.json"))
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.prefill, args.repeats = 4.0, 200_000, 1
    if args.smoke:
        args.seconds, args.prefill, args.repeats = 1.0, 20_000, 1
    single_add_seconds = 2.0 if args.quick else min(args.seconds, 5.0)
    results: dict[str, Any] = {"machine": machine_info(), "seconds": args.seconds, "prefill": args.prefill, "repeats": args.repeats, "batch_rows": args.batch_rows,
                               "rounds_per_call": args.rounds_per_call, "batch_from": args.batch_from}
    if args.cluster:
        results["cluster"] = cluster_mode(args)
        write_json(results, Path(args.out).with_name("distributed_cluster.json"))
        Path(args.out).with_name("distributed_cluster.md").write_text(results["cluster"]["markdown"], encoding="utf-8")
        return 0
    runtime_env: dict[str, Any] = {"env_vars": {"PYTHONPATH": _pythonpath()}}
    torchrl_ok, torchrl_detail = torchrl_ray_buffer.available()
    if torchrl_ok and not args.durability:
        runtime_env["worker_process_setup_hook"] = torchrl_ray_buffer.WORKER_SETUP_HOOK
    init_ray(num_cpus=4, include_dashboard=False, runtime_env=runtime_env)
    if args.durability:
        try:
            results["durability"] = durability_mode(args)
        finally:
            ray.shutdown()
        write_json(results, Path(args.out).with_name("distributed_durability.json"))
        Path(args.out).with_name("distributed_durability.md").write_text(results["durability"]["markdown"], encoding="utf-8")
        return 0
    try:
        kinds = ["ray_replay", "naive", "one_shard", "direct", "one_shard_direct", "handle", "handle_one_shard", "coordinator"]
        if torchrl_ok:
            kinds.append("torchrl")
            results["torchrl_version"] = torchrl_detail
        else:
            print(f"{torchrl_ray_buffer.NAME} not measured: {torchrl_detail}", flush=True)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in kinds}
        for rep in range(args.repeats):  # interleaved, so load spikes fall on all alike
            for name in kinds:
                r = run_dist1(name, args.seconds, args.prefill, batch_rows=args.batch_rows, rounds_per_call=args.rounds_per_call, batch_from=args.batch_from)
                # one_shard, direct, one_shard_direct (handle_one_shard) differ from ray_replay (handle) in the learner
                # only: their single adds are those measured for ray_replay (handle) in this repeat
                same_writes = {"one_shard": "ray_replay", "direct": "ray_replay", "one_shard_direct": "ray_replay", "handle_one_shard": "handle"}.get(name)
                r["single_add_per_s"] = runs[same_writes][-1]["single_add_per_s"] if same_writes else single_adds(name, single_add_seconds)
                runs[name].append(r)
                print(f"[{rep + 1}/{args.repeats}] {name}: " + ", ".join(f"{k}={v:,.2f}" for k, v in r.items() if isinstance(v, float)), flush=True)
        for name, rs in runs.items():
            results[name] = median_of(rs)
    finally:
        ray.shutdown()
    table = markdown(results)
    print(table)
    results["markdown"] = table
    print("wrote", write_json(results, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
