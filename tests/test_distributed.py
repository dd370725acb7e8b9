"""Distributed replay: sampling helpers and the plain shard (no Ray), then coordinator and client on a local Ray."""

from __future__ import annotations

import time

import numpy as np
import pytest
import ray
from helpers import SCHEMA, assert_rows_consistent, transitions
from scipy import stats

from ray_replay import BUFFER_TYPES, ReplayBuffer
from ray_replay.distributed import RateLimiter, ReplayClient, ReplayCoordinator, ReplayShardImpl, ShardTable, Snapshot
from ray_replay.distributed.direct import RECONNECT_AFTER_S
from ray_replay.distributed.runtime import LOOPBACK
from ray_replay.distributed.sampling import (
    LOCAL_ID_BITS,
    encode_ids,
    fifo_counts,
    global_weights,
    multinomial_counts,
    split_capacity,
    split_ids,
)
from ray_replay.distributed.shard import StalePlanError

ALPHA, BETA = 0.6, 0.4


def uneven_priorities(n_per_shard: int, num_shards: int) -> list[np.ndarray]:
    """Very uneven mass per shard: shard k's priorities are ~ 100^-k, with one masked item in shard 0."""
    rng = np.random.default_rng(3)
    groups = [rng.uniform(0.5, 2.0, n_per_shard) * 100.0**-k for k in range(num_shards)]
    groups[0][0] = 0.0
    return groups


def expected_masses(groups: list[np.ndarray]) -> np.ndarray:
    p = np.concatenate(groups)
    return np.where(p == 0, 0.0, np.maximum(p, 1e-6) ** ALPHA)


def assert_frequencies(actions: np.ndarray, mass: np.ndarray) -> None:
    observed = np.bincount(actions, minlength=len(mass)).astype(float)
    assert observed.sum() == len(actions) and len(observed) == len(mass)
    zero = mass == 0
    assert observed[zero].sum() == 0, "an item of priority 0 was sampled"
    expected = mass[~zero] / mass.sum() * len(actions)
    assert stats.chisquare(observed[~zero], expected).pvalue > 0.001


def local_reference(groups: list[np.ndarray]) -> ReplayBuffer:
    """One local buffer holding the same items (action = item index) with the same priorities."""
    p = np.concatenate(groups)
    buf = ReplayBuffer(len(p), "prioritized", schema=SCHEMA, alpha=ALPHA, beta=BETA, seed=5)
    buf.add_batch(**transitions(len(p)), priorities=p)
    return buf


def reference_weights(buf: ReplayBuffer, n: int) -> np.ndarray:
    """Weight of each item (by action) as the local buffer reports it."""
    weights = np.full(n, np.nan)
    for _ in range(3000):  # enough draws that even the items of mass ~1e-4 of the total come up
        batch = buf.sample(n)
        weights[batch["action"]] = batch["weights"]
    weights[0] = 1.0  # item 0 has priority 0: never sampled, never checked
    assert not np.isnan(weights).any()
    return weights


# -- helpers without Ray --------------------------------------------------------------------------


def test_split_capacity_spreads_the_remainder():
    assert split_capacity(10, 3) == [4, 3, 3]
    assert split_capacity(1_000_000, 2) == [500_000, 500_000]
    with pytest.raises(ValueError, match="capacity must be >= num_shards"):
        split_capacity(2, 3)
    with pytest.raises(TypeError, match="num_shards must be an int"):
        split_capacity(10, 2.0)


def test_ids_carry_their_shard_and_split_back():
    ids = np.concatenate([encode_ids(2, np.array([5, 7])), encode_ids(0, np.array([1])), encode_ids(1, np.array([(1 << 40) + 3]))])
    groups = split_ids(ids, [0.1, 0.2, 0.3, 0.4], 3)
    assert [k for k, _, _ in groups] == [0, 1, 2]
    assert groups[2][1].tolist() == ids[:2].tolist() and groups[2][2].tolist() == [0.1, 0.2]
    assert (groups[1][1] & ((1 << LOCAL_ID_BITS) - 1)).tolist() == [(1 << 40) + 3]


@pytest.mark.parametrize(
    "ids, priorities, error, message",
    [
        (np.array([0.5]), [1.0], TypeError, "ids must be an integer array"),
        (np.zeros((1, 1), np.int64), [1.0], ValueError, "one-dimensional"),
        (np.array([0, 1]), [1.0], ValueError, "expected 2 values"),
        (np.array([0]), [-1.0], ValueError, r"priorities\[0\]"),
        (np.array([0]), [np.nan], ValueError, r"priorities\[0\]"),
        (encode_ids(3, np.array([0])), [1.0], ValueError, "never issued"),
        (np.array([-1]), [1.0], ValueError, "never issued"),
    ],
)
def test_split_ids_rejects_bad_input(ids, priorities, error, message):
    with pytest.raises(error, match=message):
        split_ids(ids, priorities, 3)


def test_counts_plans():
    rng = np.random.default_rng(0)
    counts = np.array([multinomial_counts(rng, 100, [1.0, 0.0, 3.0]) for _ in range(2000)])
    assert (counts.sum(axis=1) == 100).all() and (counts[:, 1] == 0).all()
    assert abs(counts[:, 2].mean() - 75) < 1
    with pytest.raises(ValueError, match="empty"):
        multinomial_counts(rng, 4, [0.0, 0.0])
    assert fifo_counts(10, [30, 10]).tolist() in ([8, 2], [7, 3])
    assert fifo_counts(50, [30, 10]).tolist() == [30, 10]
    assert fifo_counts(3, [1, 0, 5]).sum() == 3 and fifo_counts(3, [1, 0, 5])[1] == 0


def test_global_weights_use_the_global_minimum():
    masses = np.array([4.0, 2.0])
    np.testing.assert_allclose(global_weights(masses, 1.0, 0.5), [0.5, 2**-0.5], rtol=1e-6)
    assert global_weights(masses, 8.0, 0.5).max() == 1.0  # a stale minimum never makes a weight > 1


def test_rate_limiter():
    table = ShardTable(2, "uniform", [Snapshot(30, 30.0, 0.0, 40, 0), Snapshot(20, 20.0, 0.0, 20, 0)])
    assert RateLimiter().blocked(table, 1000) is None
    assert "min_size_to_sample=60" in RateLimiter(min_size_to_sample=60).blocked(table, 1)
    limiter = RateLimiter(samples_per_insert=2.0, error_buffer=10)
    assert limiter.blocked(table, 130) is None  # 60 inserts * 2 + 10
    assert "samples_per_insert" in limiter.blocked(table, 131)
    with pytest.raises(ValueError, match="samples_per_insert"):
        RateLimiter(samples_per_insert=0.0)
    with pytest.raises(ValueError, match="min_size_to_sample"):
        RateLimiter(min_size_to_sample=-1)


def plain_shards(groups: list[np.ndarray]) -> list[ReplayShardImpl]:
    shards, start = [], 0
    for k, p in enumerate(groups):
        shard = ReplayShardImpl(k, 2 * len(p), "prioritized", schema=SCHEMA, alpha=ALPHA, beta=BETA, seed=k)
        shard.add_batch(**transitions(len(p), start), priorities=p)
        shards.append(shard)
        start += len(p)
    return shards


def test_plain_shards_sample_globally_like_one_buffer():
    """The sampling algorithm alone (no Ray): frequencies, probabilities and weights of one buffer."""
    groups = uneven_priorities(10, 3)
    shards = plain_shards(groups)
    table = ShardTable(3, "prioritized", [s.snapshot() for s in shards])
    rng = np.random.default_rng(1)
    mass = expected_masses(groups)
    reference = reference_weights(local_reference(groups), len(mass))
    actions = []
    for _ in range(100):
        counts = table.plan(rng, 1000)
        replies = [shard.sample(int(c)) for shard, c in zip(shards, counts)]
        for k, (_, snapshot) in enumerate(replies):
            table.update(k, snapshot)
        batch = table.merge([part for part, _ in replies], BETA)
        np.testing.assert_allclose(batch["probabilities"], mass[batch["action"]] / mass.sum(), rtol=1e-9)
        np.testing.assert_allclose(batch["weights"], reference[batch["action"]], rtol=1e-5)
        assert_rows_consistent({k: v for k, v in batch.items() if k in SCHEMA})
        actions.append(batch["action"])
    assert_frequencies(np.concatenate(actions), mass)


def test_plain_shard_routes_priorities_and_counts_stale_ids():
    shard = ReplayShardImpl(1, 4, "prioritized", schema=SCHEMA, seed=0)
    shard.add_batch(**transitions(4))
    batch, snapshot = shard.sample(4)
    assert (batch["ids"] >> LOCAL_ID_BITS == 1).all() and snapshot.size == 4
    shard.add_batch(**transitions(4, 4))  # overwrites every sampled row
    snapshot = shard.update_priorities(batch["ids"], np.ones(4))
    assert shard.stats()["stale_priority_updates"] == 4 and snapshot.size == 4
    with pytest.raises(ValueError, match="belongs to shard 0"):
        shard.update_priorities(encode_ids(0, np.array([5])), [1.0])
    with pytest.raises(ValueError, match="never issued"):
        shard.update_priorities(encode_ids(1, np.array([1000])), [1.0])
    assert shard.sample(0) == (None, shard.snapshot())


def test_the_one_argument_calls_are_add_batch_and_sample_rounds():
    """add_run and draw (the calls of the client and the coordinator, one Ray argument each) do what
    add_batch and sample_rounds do: a batch id applies once, updates ride first, rounds come back."""
    shard = ReplayShardImpl(0, 100, "prioritized", schema=SCHEMA, seed=0)
    rows = transitions(40)
    snapshot = shard.add_run(((), {**rows, "batch_id": "b1"}))
    assert type(snapshot) is tuple and Snapshot(*snapshot) == shard.snapshot() and snapshot[0] == 40  # a plain tuple on the wire
    assert shard.add_run(((), {**rows, "batch_id": "b1"}))[0] == 40  # applied once
    shard.add_run((tuple(transitions(10, 40).values()), {"priorities": np.full(10, 5.0)}))
    assert len(shard.buffer) == 50 and shard.stats()["max_priority"] == 5.0  # the named priorities were applied
    first, _ = shard.sample(10)
    parts, snapshot = shard.draw(([6, 0, 4], None, (first["ids"], np.zeros(10)), None))
    assert [None if p is None else len(p["action"]) for p in parts] == [6, None, 4] and Snapshot(*snapshot).size == 50
    assert shard.stats()["priority_updates"] == 10
    assert not set(first["action"].tolist()) & set(np.concatenate([parts[0]["action"], parts[2]["action"]]).tolist())
    with pytest.raises(ValueError):  # a bad batch is refused as add_batch refuses it, and changes nothing
        shard.add_run(((), {**transitions(5, 50), "reward": np.zeros(4, np.float32)}))
    assert len(shard.buffer) == 50


def test_one_shard_call_serves_several_rounds_with_the_updates_applied_first():
    shard = ReplayShardImpl(0, 100, "prioritized", schema=SCHEMA, seed=0)
    with pytest.raises(StalePlanError):  # empty: the caller plans again
        shard.sample_rounds([3, 2])
    shard.add_batch(**transitions(100))
    first, _ = shard.sample(10)
    parts, snapshot = shard.sample_rounds([7, 0, 5], updates=(first["ids"], np.zeros(10)))
    assert [None if p is None else len(p["action"]) for p in parts] == [7, None, 5]
    assert shard.stats()["priority_updates"] == 10 and snapshot.size == 100
    masked = set(first["action"].tolist())  # priority 0: never drawn again
    assert not masked & set(np.concatenate([parts[0]["action"], parts[2]["action"]]).tolist())
    for part in (parts[0], parts[2]):
        assert_rows_consistent({k: v for k, v in part.items() if k in SCHEMA})
        assert (part["ids"] >> LOCAL_ID_BITS == 0).all() and "masses" in part and "weights" not in part


# -- on a local Ray ---------------------------------------------------------------------------------


def replay_options(capacity: int, num_shards: int, buffer_type: str = "prioritized", **kwargs) -> dict:
    kwargs.setdefault("seed", 7)
    if buffer_type == "prioritized":
        kwargs.setdefault("alpha", ALPHA)
        kwargs.setdefault("beta", BETA)
    return {"capacity": capacity, "num_shards": num_shards, "buffer_type": buffer_type, "schema": SCHEMA, **kwargs}


def make_replay(*args, **kwargs):
    return ReplayCoordinator.remote(**replay_options(*args, **kwargs))


@pytest.fixture
def replays(coordinators):
    """make(capacity, num_shards, buffer_type="prioritized", **options): coordinators with this module's
    defaults, shut down after the test (conftest's ``coordinators``)."""
    return lambda *args, **kwargs: coordinators(**replay_options(*args, **kwargs))


def fill_uneven(replay, groups: list[np.ndarray]) -> None:
    start = 0
    for k, p in enumerate(groups):
        assert ray.get(replay.add_batch.remote(**transitions(len(p), start), priorities=p)) == k  # round robin
        start += len(p)


@pytest.mark.parametrize("rounds_per_call", [1, 2])
def test_prioritized_sampling_over_shards_has_the_distribution_of_one_buffer(replays, rounds_per_call):
    groups = uneven_priorities(10, 3)
    replay = replays(3000, 3)
    fill_uneven(replay, groups)
    mass = expected_masses(groups)
    reference = reference_weights(local_reference(groups), len(mass))
    client = ReplayClient(replay, prefetch=2, rounds_per_call=rounds_per_call, seed=3)
    actions = []
    for i in range(120):  # 120,000 draws: 20 through the coordinator, 100 through the client
        batch = ray.get(replay.sample.remote(1000)) if i < 20 else client.sample(1000)
        np.testing.assert_allclose(batch["probabilities"], mass[batch["action"]] / mass.sum(), rtol=1e-9)
        np.testing.assert_allclose(batch["weights"], reference[batch["action"]], rtol=1e-5)
        actions.append(batch["action"])
    assert_frequencies(np.concatenate(actions), mass)
    client.close()


@pytest.mark.parametrize("rounds_per_call, by_ref", [(1, False), (2, False), (1, True), (3, True)])
def test_one_shard_batches_pick_the_shard_by_mass_and_keep_global_probabilities(replays, rounds_per_call, by_ref):
    """batch_from="one_shard": each batch comes whole from one shard, the shard picked with probability
    mass_k / mass (chi-square over the batches), the rows within it by their mass in that shard
    (chi-square per shard); probabilities and weights are those of one buffer holding every row.
    ``by_ref``: the batches come from sample_ref, finished by the shard (3 kept in flight; with
    rounds_per_call 3, one shard call per picked shard serves 3 rounds)."""
    groups = uneven_priorities(10, 2)
    replay = replays(2000, 2)
    fill_uneven(replay, groups)
    mass = expected_masses(groups)
    reference = reference_weights(local_reference(groups), len(mass))
    client = ReplayClient(replay, prefetch=max(2, rounds_per_call), rounds_per_call=rounds_per_call, batch_from="one_shard", seed=3)
    picks, rows = np.zeros(2), [[], []]
    in_flight = [client.sample_ref(200) for _ in range(3)] if by_ref else []
    for _ in range(600):
        if by_ref:
            in_flight.append(client.sample_ref(200))
            batch = ray.get(in_flight.pop(0))
        else:
            batch = client.sample(200)
        shards = np.unique(batch["ids"] >> LOCAL_ID_BITS)
        assert len(shards) == 1, f"a one_shard batch came from shards {shards.tolist()}"
        np.testing.assert_allclose(batch["probabilities"], mass[batch["action"]] / mass.sum(), rtol=1e-9)
        np.testing.assert_allclose(batch["weights"], reference[batch["action"]], rtol=1e-5)
        picks[shards[0]] += 1
        rows[shards[0]].append(batch["action"])
    shard_mass = np.array([mass[:10].sum(), mass[10:].sum()])
    assert stats.chisquare(picks, shard_mass / shard_mass.sum() * picks.sum()).pvalue > 0.001
    for k in range(2):
        within = mass[10 * k:10 * (k + 1)]
        observed = np.bincount(np.concatenate(rows[k]) - 10 * k, minlength=10).astype(float)
        live = within > 0
        assert observed[~live].sum() == 0, "an item of priority 0 was sampled"
        assert stats.chisquare(observed[live], within[live] / within.sum() * observed.sum()).pvalue > 0.001
    client.close()


def test_sample_ref_with_rounds_per_call_asks_once_per_group_and_drops_them_for_another_shape(replays):
    replay = replays(2000, 1, "prioritized")
    ray.get(replay.add_batch.remote(**transitions(500)))
    client = ReplayClient(replay, prefetch=2, rounds_per_call=2, batch_from="one_shard", seed=0)
    rounds = client._rounds
    first = client.sample_ref(32)
    calls = len(rounds._direct)  # shard calls not yet read (each sample_ref call that asked a shard adds one)
    second = client.sample_ref(32)  # drawn by the first call
    assert len(rounds._direct) == calls
    a, b = ray.get([first, second])
    assert len(a["ids"]) == len(b["ids"]) == 32 and not np.array_equal(a["ids"], b["ids"])
    client.sample_ref(32)  # a new call, for 2 batches: one is left ...
    assert len(rounds._refs) == 1
    assert len(ray.get(client.sample_ref(16))["ids"]) == 16  # ... and dropped for another batch size
    assert len(rounds._refs) == 1  # (the new call's second batch of 16)
    client.close()
    assert not rounds._refs and not rounds._direct


def test_priorities_route_back_to_their_shards_and_stale_ids_are_ignored(replays):
    groups = uneven_priorities(10, 2)
    replay = replays(20, 2)
    fill_uneven(replay, groups)
    client = ReplayClient(replay, prefetch=0)
    batch = client.sample(20)
    shards = batch["ids"] >> LOCAL_ID_BITS
    client.update_priorities(batch["ids"], np.full(20, 1000.0))
    client.flush()
    per_shard = ray.get(replay.stats.remote())["shards"]
    assert [s["priority_updates"] for s in per_shard] == [int(np.sum(shards == k)) for k in range(2)]
    # Overwrite everything, then update the old ids: ignored and counted, not an error.
    for k in range(2):
        ray.get(replay.add_batch.remote(**transitions(10, 100 + 10 * k)))
    ray.get(replay.update_priorities.remote(batch["ids"], np.ones(20)))
    client.update_priorities(batch["ids"], np.ones(20))
    client.flush()
    total = ray.get(replay.stats.remote())["total"]
    assert total["stale_priority_updates"] == 40 and total["size"] == 20
    # Ids never issued: the shard's ValueError, through the coordinator and (at the next call) the client.
    never = encode_ids(1, np.array([10**6]))
    with pytest.raises(ValueError, match="never issued"):
        ray.get(replay.update_priorities.remote(never, [1.0]))
    client.update_priorities(never, [1.0])
    with pytest.raises(ValueError, match="never issued"):
        client.flush()
    client.close()


def test_updated_priorities_change_the_global_distribution(replays):
    replay = replays(40, 2)
    ray.get(replay.add_batch.remote(**transitions(20), priorities=np.ones(20)))
    ray.get(replay.add_batch.remote(**transitions(20, 20), priorities=np.ones(20)))
    batch = ray.get(replay.sample.remote(40))
    hot = batch["ids"][batch["action"] == batch["action"][0]][:1]
    ray.get(replay.update_priorities.remote(hot, [1e6]))
    actions = np.concatenate([ray.get(replay.sample.remote(40))["action"] for _ in range(5)])
    assert np.mean(actions == batch["action"][0]) > 0.9


@pytest.mark.parametrize("buffer_type", BUFFER_TYPES)
def test_every_buffer_type_works_sharded(replays, buffer_type):
    replay = replays(300, 3, buffer_type)
    with ReplayClient(replay, batch_rows=32) as client:
        for i in range(100):
            client.add(**{k: v[0] for k, v in transitions(1, i).items()})
        client.add_batch(**transitions(50, 100))
        client.flush()
        assert ray.get(replay.size.remote()) == 150
        sizes = [s["size"] for s in ray.get(replay.stats.remote())["shards"]]
        assert sum(sizes) == 150 and min(sizes) > 0
        if buffer_type == "fifo":
            first = client.sample(60)
            rest = ray.get(replay.sample.remote(200, partial=True))
            assert sorted(np.concatenate([first["action"], rest["action"]]).tolist()) == list(range(150))
            assert ray.get(replay.size.remote()) == 0
            with pytest.raises(ValueError, match="empty"):
                ray.get(replay.sample.remote(1))
            with pytest.raises(ValueError, match="batch_from='one_shard' does not apply to a fifo replay"):
                ReplayClient(replay, batch_from="one_shard")
        else:
            with ReplayClient(replay, batch_from="one_shard", seed=1) as one_shard:
                batches = (client.sample(64), ray.get(replay.sample.remote(64)), one_shard.sample(64), one_shard.sample(64))
            for batch in batches:
                assert_rows_consistent({k: v for k, v in batch.items() if k in SCHEMA})
                assert len(batch["action"]) == 64 and batch["action"].max() < 150
            assert ray.get(replay.size.remote()) == 150


def test_uniform_sampling_weighs_shards_by_size(replays):
    replay = replays(200, 2, "uniform")
    ray.get(replay.add_batch.remote(**transitions(10)))
    ray.get(replay.add_batch.remote(**transitions(90, 10)))
    client = ReplayClient(replay, seed=2)
    actions = np.concatenate([client.sample(100)["action"] for _ in range(200)])
    assert stats.chisquare(np.bincount(actions, minlength=100)).pvalue > 0.001
    client.close()


def test_single_adds_through_the_coordinator_arrive(replays):
    replay = replays(1000, 2, "prioritized", batch_rows=64)
    rows = transitions(300)
    refs = [replay.add.remote(**{k: v[i] for k, v in rows.items()}, priority=1.0 + i % 2) for i in range(150)]
    refs += [replay.add.remote(**{k: v[i] for k, v in rows.items()}) for i in range(150, 300)]
    ray.get(refs)
    assert ray.get(replay.size.remote()) == 300
    assert ray.get(replay.sample.remote(300))["action"].max() <= 299


BAD_ADDS = [
    (lambda r: r.add.remote(**{**{k: v[0] for k, v in transitions(1).items()}, "action": "x"}), TypeError, "action"),
    (lambda r: r.add.remote(**{k: v[0] for k, v in transitions(1).items() if k != "done"}), (ValueError, TypeError), "done"),
    (lambda r: r.add.remote(**{k: v[0] for k, v in transitions(1).items()}, priority=-1.0), ValueError, "priorit"),
    (lambda r: r.add_batch.remote(**{**transitions(3), "action": np.zeros(2, np.int64)}), ValueError, "different lengths"),
    (lambda r: r.add_batch.remote(**transitions(3), priorities=[1.0, np.inf, 1.0]), ValueError, r"priorities\[1\]"),
    (lambda r: r.add_batch.remote(**{**transitions(3), "state": np.zeros((3, 7), np.float32)}), ValueError, "state"),
    (lambda r: r.update_priorities.remote(np.array([0.5]), [1.0]), TypeError, "integer"),
    (lambda r: r.sample.remote(0), ValueError, "batch_size"),
    (lambda r: r.sample.remote(2.5), TypeError, "batch_size must be an int"),
    (lambda r: r.sample.remote(4, beta=-1.0), ValueError, "beta"),
]


@pytest.fixture(scope="module")
def shared_replay(_session_ray):
    """One replay for the bad-input cases (creating actors costs seconds on 2 cores); holds 4 rows."""
    _session_ray.start()
    replay = make_replay(100, 2)
    ray.get(replay.add_batch.remote(**transitions(4)))
    yield replay
    ray.get(replay.shutdown.remote())
    ray.kill(replay)


@pytest.mark.parametrize("call, error, message", BAD_ADDS)
def test_bad_input_through_the_remote_api_raises_and_writes_nothing(shared_replay, call, error, message):
    with pytest.raises(error, match=message):
        ray.get(call(shared_replay))
    total = ray.get(shared_replay.stats.remote())["total"]
    assert total["size"] == 4 and total["adds"] == 4


@pytest.mark.parametrize(("options", "error", "message"), [
    ({"batch_rows": 0}, ValueError, "batch_rows must be >= 1"),
    ({"batch_rows": 1.5}, TypeError, "batch_rows must be an int"),
    ({"prefetch": -1}, ValueError, "prefetch must be >= 0"),
    ({"prefetch": 2, "rounds_per_call": 3}, ValueError, "rounds_per_call must be <= prefetch"),
    ({"rounds_per_call": 0}, ValueError, "rounds_per_call must be >= 1"),
    ({"flush_interval_s": 0}, ValueError, "flush_interval_s"),
    ({"batch_from": "any_shard"}, ValueError, "batch_from must be 'all_shards' or 'one_shard'"),
])
def test_bad_client_options_name_the_option(shared_replay, options, error, message):
    with pytest.raises(error, match=message):
        ReplayClient(shared_replay, **options)


def test_bad_input_through_the_client_raises_at_once_and_sends_nothing(replays):
    replay = replays(100, 2, "uniform")
    client = ReplayClient(replay, batch_rows=8)
    with pytest.raises(TypeError, match="action"):
        client.add(**{**{k: v[0] for k, v in transitions(1).items()}, "action": "x"})
    with pytest.raises(ValueError, match="different lengths"):
        client.add_batch(**{**transitions(3), "action": np.zeros(2, np.int64)})
    with pytest.raises(ValueError, match="only supported by buffer_type='prioritized'"):
        client.add(**{k: v[0] for k, v in transitions(1).items()}, priority=1.0)
    with pytest.raises(ValueError, match="only supported"):
        client.update_priorities(np.array([0]), [1.0])
    # A large batch goes out unstaged: its error surfaces at the next call.
    client.add_batch(**{**transitions(10), "reward": np.zeros(9, np.float32)})
    with pytest.raises(ValueError, match="different lengths"):
        client.flush()
    client.close()
    assert ray.get(replay.size.remote()) == 0
    with pytest.raises(RuntimeError, match="closed"):
        client.add(**{k: v[0] for k, v in transitions(1).items()})


@ray.remote
class Writer:
    def __init__(self, replay, seed: int) -> None:
        self.client = ReplayClient(replay, batch_rows=128, max_in_flight=2)
        self.seed = seed

    def write(self, batches: int, rows: int) -> int:
        for b in range(batches):
            self.client.add_batch(**transitions(rows, self.seed * 100_000 + b * rows))
        self.client.flush()
        return batches * rows


def test_many_writers_with_a_concurrent_learner(replays):
    replay = replays(20_000, 3)
    writers = [Writer.remote(replay, i) for i in range(6)]
    done = [w.write.remote(20, 100) for w in writers]
    single = [replay.add.remote(**{k: v[0] for k, v in transitions(1, 900_000 + i).items()}) for i in range(200)]
    learner = ReplayClient(replay, prefetch=4, rounds_per_call=2, seed=1, max_in_flight=8)  # updates ride with shared calls
    deadline, sampled = time.monotonic() + 60, 0
    while ray.wait(done, num_returns=len(done), timeout=0)[1] and time.monotonic() < deadline:
        try:
            batch = learner.sample(64)
        except ValueError:  # nothing written yet
            time.sleep(0.01)
            continue
        assert_rows_consistent({k: v for k, v in batch.items() if k in SCHEMA})
        learner.update_priorities(batch["ids"], np.abs(batch["reward"]) + 0.1)
        sampled += 64
    assert sum(ray.get(done)) == 12_000
    ray.get(single)
    learner.close()
    total = ray.get(replay.stats.remote())["total"]
    assert total["size"] == total["adds"] == 12_200
    assert sampled > 0 and total["priority_updates"] + total["stale_priority_updates"] >= sampled
    for w in writers:
        ray.kill(w)


def test_rate_limiter_waits_then_raises_and_never_deadlocks(replays):
    replay = replays(1000, 2, min_size_to_sample=100, samples_per_insert=1.0, error_buffer=10.0, sample_timeout_s=0.5)
    ray.get(replay.add_batch.remote(**transitions(50)))
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="min_size_to_sample=100"):
        ray.get(replay.sample.remote(10))
    assert 0.4 < time.monotonic() - start < 5
    # A waiting sample goes through as soon as writers catch up (the coordinator is not blocked).
    waiting = replay.sample.remote(100)
    ray.get(replay.add_batch.remote(**transitions(50, 50)))
    assert len(ray.get(waiting)["action"]) == 100
    ray.get(replay.sample.remote(10))  # 110 sampled <= 100 inserts * 1 + 10
    with pytest.raises(TimeoutError, match="samples_per_insert"):
        ray.get(replay.sample.remote(1))
    client = ReplayClient(replay, prefetch=2)
    with pytest.raises(TimeoutError, match="samples_per_insert"):
        client.sample(1)
    client.add_batch(**transitions(20, 100))
    client.flush()
    assert len(client.sample(20)["action"]) == 20
    client.close()


def test_shards_report_their_nodes(replays):
    replay = replays(100, 2)
    per_shard = ray.get(replay.stats.remote())["shards"]
    assert [s["shard"] for s in per_shard] == [0, 1]
    assert all(s["node_id"] == ray.get_runtime_context().get_node_id() for s in per_shard)
    assert len(ray.get(replay.shard_handles.remote())) == 2


def test_init_ray_starts_its_own_ray_beside_a_running_one(ray_local, tmp_path):
    """Plain ray.init() joins whatever Ray runs on the machine (here this session's, also named by
    RAY_ADDRESS) and then refuses num_cpus; init_ray() must start a new Ray on loopback instead."""
    import os
    import subprocess
    import sys

    running = ray.get_runtime_context().gcs_address
    script = (
        "import ray\n"
        "from ray_replay import init_ray\n"
        "context = init_ray(num_cpus=1, include_dashboard=False, logging_level='ERROR')\n"
        "print(context.address_info['gcs_address'])\n"
        "ray.shutdown()\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "RAY_ADDRESS": running})
    assert result.returncode == 0, result.stderr[-2000:]
    started = result.stdout.strip().splitlines()[-1]
    assert started != running
    assert started.startswith(f"{LOOPBACK}:")


def test_a_client_sends_codec_fields_compressed_and_the_shards_keep_them_as_sent(replays, monkeypatch):
    """The client compresses the codec fields of each run (writes.compress_codec_fields) and the shards
    store those bytes as they come: samples are exact, and the shards hold what one local buffer fed
    the same rows holds. A bad row is still refused with the shard's error, storing nothing."""
    from ray_replay.distributed import in_flight

    frames = np.zeros((120, 32, 32), np.uint8)
    frames[:, 8:24, 8:24] = (np.arange(120) % 200 + 1)[:, None, None]
    schema = {"obs": ((32, 32), np.uint8, "lz4"), "action": ((), np.int64), "reward": ((), np.float32)}

    def batch(ids: np.ndarray) -> dict:
        return {"obs": frames[ids], "action": ids.astype(np.int64), "reward": ids.astype(np.float32)}

    compressed = []
    real = in_flight.compress_codec_fields

    def spy(*args):
        result = real(*args)
        compressed.append("stored" in result[1])
        return result

    monkeypatch.setattr(in_flight, "compress_codec_fields", spy)
    replay = replays(200, 2, "uniform", schema=schema)
    with ReplayClient(replay, batch_rows=16, seed=0) as client:
        client.add_batch(**batch(np.arange(100)))
        for i in range(100, 120):
            client.add(**{key: value[0] for key, value in batch(np.array([i])).items()})
        client.flush()
        sample = client.sample(64)
        np.testing.assert_array_equal(sample["obs"], frames[sample["action"]])
        assert compressed and all(compressed)
        client.add_batch(obs=np.zeros((20, 31, 32), np.uint8), action=np.zeros(20, np.int64), reward=np.zeros(20, np.float32))
        with pytest.raises(ValueError, match="obs"):
            client.flush()
    local = ReplayBuffer(200, schema=schema)
    local.add_batch(**batch(np.arange(120)))
    total = ray.get(replay.stats.remote())["total"]
    assert total["size"] == 120 and total["bytes_held"] == local.stats()["bytes_held"]


@pytest.mark.parametrize("batch_from", ["all_shards", "one_shard"])
def test_direct_sample_transport_has_the_distribution_of_one_buffer(replays, batch_from):
    """sample_transport="direct": rounds travel over the shards' sockets (direct.py), with the same
    frequencies (chi-square), probabilities and weights as through Ray; updates ride along."""
    groups = uneven_priorities(10, 2)
    replay = replays(2000, 2)
    fill_uneven(replay, groups)
    mass = expected_masses(groups)
    reference = reference_weights(local_reference(groups), len(mass))
    client = ReplayClient(replay, prefetch=2, batch_from=batch_from, sample_transport="direct", seed=5)
    actions = []
    for _ in range(150):
        batch = client.sample(400)
        np.testing.assert_allclose(batch["probabilities"], mass[batch["action"]] / mass.sum(), rtol=1e-9)
        np.testing.assert_allclose(batch["weights"], reference[batch["action"]], rtol=1e-5)
        assert_rows_consistent({k: v for k, v in batch.items() if k in SCHEMA})
        actions.append(batch["action"])
    assert_frequencies(np.concatenate(actions), mass)
    channels = client._rounds._channels
    assert channels is not None and all(channels.get(k) is not None for k in range(2))  # every round went direct
    before = sum(s["priority_updates"] for s in ray.get(replay.stats.remote())["shards"])
    client.update_priorities(batch["ids"], np.full(400, 3.0))
    for _ in range(3):
        client.sample(400)  # the held updates ride with these requests
    after = sum(s["priority_updates"] for s in ray.get(replay.stats.remote())["shards"])
    assert after - before == 400
    for _ in range(3):  # another shape drops the prefetched rounds: their replies are not kept
        assert len(client.sample(100)["action"]) == 100
    assert all(channels.get(k)._replies == {} for k in range(2))  # (replies of rounds still prefetched are not read yet)
    client.close()
    with pytest.raises(ValueError, match="sample_transport"):
        ReplayClient(replay, sample_transport="grpc")
    with pytest.raises(ValueError, match="fifo"):
        ReplayClient(replays(100, 2, "fifo"), sample_transport="direct")


def test_a_direct_channel_that_fails_falls_back_to_ray_and_reopens(replays):
    replay = replays(2000, 2)
    for start in (0, 500):
        ray.get(replay.add_batch.remote(**transitions(500, start)))
    client = ReplayClient(replay, prefetch=0, sample_transport="direct", seed=0)
    client.sample(64)
    channels = client._rounds._channels
    first, other = channels.get(0), channels.get(1)
    shards = ray.get(replay.shard_handles.remote())
    ray.get(shards[0].close_direct.remote())  # its server goes away: the next draw over it fails
    failed_at = time.monotonic()
    for _ in range(40):  # no sample fails: the draw that met the closed channel went again through Ray, and so do the next
        assert len(client.sample(64)["action"]) == 64
    assert first.broken is not None and channels.get(1) is other
    deadline = time.monotonic() + 30
    while channels.get(0) is None and time.monotonic() < deadline:  # reopened (a new server) after RECONNECT_AFTER_S
        client.sample(64)
        time.sleep(0.05)
    assert channels.get(0) not in (None, first) and time.monotonic() - failed_at >= RECONNECT_AFTER_S
    seen = set()
    for _ in range(30):
        seen |= set((client.sample(64)["ids"] >> LOCAL_ID_BITS).tolist())
    assert seen == {0, 1}
    client.close()
    assert client._rounds._channels is None
