"""Monitoring: coordinator stats, Ray metrics scraped from the Prometheus endpoint, `ray-replay stats`."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
from helpers import wait_for

SCHEMA = {"obs": ((4,), np.float32), "reward": ((), np.float32)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def metrics_ray(ray_stopped):
    """A Ray of its own with a Prometheus endpoint on loopback, reporting metrics every 0.5 s."""
    import ray

    from ray_replay.distributed.runtime import LOOPBACK, init_ray

    port = free_port()
    init_ray(num_cpus=2, include_dashboard=False, namespace="monitoring-test", _metrics_export_port=port,
             _system_config={"metrics_report_interval_ms": 500})
    yield f"http://{LOOPBACK}:{port}/metrics"
    ray.shutdown()


def drive(replay) -> None:
    import ray

    rng = np.random.default_rng(0)
    ray.get(replay.add_batch.remote(obs=rng.random((500, 4), np.float32), reward=rng.random(500, np.float32)))
    for _ in range(5):
        batch = ray.get(replay.sample.remote(64))
        ray.get(replay.update_priorities.remote(batch["ids"], rng.random(64)))


def test_metrics_reach_prometheus_and_stats_are_live(metrics_ray):
    import ray

    from ray_replay import ReplayCoordinator

    replay = ReplayCoordinator.options(name="metrics-replay").remote(capacity=1000, num_shards=2, buffer_type="prioritized", schema=SCHEMA)
    drive(replay)
    stats = ray.get(replay.stats.remote())
    total = stats["total"]
    assert total["size"] == 500 and total["adds"] == 500 and total["samples"] == 320
    assert total["sample_latency_p50_ms"] > 0 and total["sample_latency_p99_ms"] >= total["sample_latency_p50_ms"]
    assert total["restarts"] == 0
    assert all(s["pid"] > 0 and s["node_id"] for s in stats["shards"])
    drive(replay)
    again = ray.get(replay.stats.remote())["total"]
    assert again["inserts_per_second"] > 0 and again["samples_per_second"] > 0

    # Shards publish at most once a second: keep them busy until the scrape shows both shards' metrics.
    scraped = {"text": ""}

    def both_shards_scraped() -> list[str] | None:
        drive(replay)
        try:
            text = scraped["text"] = urllib.request.urlopen(metrics_ray, timeout=30).read().decode()
        except OSError as error:  # the metrics agent may not listen yet on a busy machine
            scraped["text"] = f"no scrape: {error!r}"
            return None
        sizes = [line for line in text.splitlines() if line.startswith("ray_replay_size{") and 'replay="metrics-replay"' in line]
        return sizes if len(sizes) == 2 and "ray_replay_sample_seconds_bucket" in text else None

    sizes = wait_for(both_shards_scraped, 120, lambda: f"both shards' metrics in the scrape; last scrape:\n{scraped['text'][:2000]}",
                     interval_s=1.0)
    text = scraped["text"]
    assert len(sizes) == 2, text[:2000]  # one per shard
    assert sum(float(line.rsplit(" ", 1)[1]) for line in sizes) >= 500
    assert any(line.startswith("ray_replay_adds_total{") for line in text.splitlines())
    assert any(line.startswith("ray_replay_total_priority{") and float(line.rsplit(" ", 1)[1]) > 0 for line in text.splitlines())
    assert "ray_replay_sample_seconds_bucket" in text

    # The command-line view of the same coordinator.
    address = ray.get_runtime_context().gcs_address
    result = subprocess.run(
        [sys.executable, "-m", "ray_replay", "stats", "--address", address, "--name", "metrics-replay",
         "--namespace", "monitoring-test", "--once"],
        capture_output=True, text=True, timeout=120, cwd="/",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split("|")[1].strip() for line in result.stdout.splitlines() if line.startswith("|")]
    assert rows[0] == "shard" and rows[-3:] == ["0", "1", "total"]
    assert "metrics-replay: prioritized, 2 shards" in result.stdout
    ray.get(replay.shutdown.remote())
