"""The embedded Ray (``init_ray()`` with no address) listens on loopback only.

A fresh Python starts it (with the dashboard, a replay coordinator and its shard workers), and the
listening TCP sockets of exactly that Ray session's processes are read from /proc: the descendants
of that Python (GCS, raylet, dashboard, monitor, agents, workers) and any process whose command line
names the session's directory. None may listen on a non-loopback address except the exceptions the
README documents ("What the embedded Ray exposes"), listed in DOCUMENTED_EXCEPTIONS. The subprocess
and its Ray are stopped by pid (the driver shuts Ray down when its stdin closes; leftovers of the
processes recorded here are killed by pid). How init_ray treats each kind of address is checked
without Ray.
"""

from __future__ import annotations

import ipaddress
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray._private import services

from ray_replay.distributed import runtime

# Non-loopback listeners of the embedded Ray (and of the shards' direct sample servers, which a
# client of the driver opens) that the README documents, as {a fragment of the
# process's command line or title: why it listens there}. Ray 2.60 on node address 127.0.0.1 binds
# every listening socket of every one of its processes to 127.0.0.1, so there are none.
DOCUMENTED_EXCEPTIONS: dict[str, str] = {}

STARTUP_TIMEOUT_S = 120  # a busy 2-core machine; the run takes ~20 s when idle
# Listening sockets are read at least SNAPSHOTS times, 1 s apart, and until the metrics servers of
# the dashboard and the autoscaler monitor (the last to start) are up, at most MAX_SNAPSHOTS times.
SNAPSHOTS, MAX_SNAPSHOTS = 3, 10

DRIVER = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
from conftest import prepare_ray_start  # the test suite's patient start-up deadlines
prepare_ray_start()
import ray
from helpers import SCHEMA, transitions
from ray_replay import ReplayClient, ReplayCoordinator, init_ray

context = init_ray(num_cpus=1, include_dashboard=True, logging_level="ERROR")
replay = ReplayCoordinator.remote(capacity=64, num_shards=2, buffer_type="prioritized", schema=SCHEMA, seed=0)
ray.get(replay.add_batch.remote(**transitions(16)))
assert ray.get(replay.size.remote()) == 16
client = ReplayClient(replay, sample_transport="direct")  # each shard starts its direct sample server
assert len(client.sample(8)["ids"]) == 8 and client._rounds._channels.get(0) is not None
info = context.address_info
print("READY " + json.dumps({"session_dir": info["session_dir"], "node_ip_address": info["node_ip_address"],
                             "gcs_address": info["gcs_address"], "webui_url": info.get("webui_url")}), flush=True)
sys.stdin.read()  # until the test closes stdin
ray.shutdown()
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    return children


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot): with the pid, it names one process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _session_pids(driver_pid: int, session_dir: str | None) -> set[int]:
    """The driver, its descendants, and processes naming the session's directory, with theirs."""
    roots = {driver_pid}
    if session_dir:
        roots |= {int(e) for e in os.listdir("/proc") if e.isdigit() and session_dir in _command_line(int(e))}
    children, found, todo = _children(), set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


def _address(hex_address: str, ipv6: bool) -> tuple[str, int]:
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    if ipv6:  # four 32-bit words, each in host (little-endian) order
        text = socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
    else:
        text = socket.inet_ntop(socket.AF_INET, raw[::-1])
    return text, int(port, 16)


def _listening(pid: int) -> set[tuple[str, int]]:
    """The (address, port) of every TCP socket this process holds that is listening."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return set()
    found = set()
    for table, ipv6 in (("tcp", False), ("tcp6", True)):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # state LISTEN, and the socket is this process's
                found.add(_address(fields[1], ipv6))
    return found


def _is_loopback(host: str) -> bool:
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1, a dual-stack socket bound to 127.0.0.1
    return address.is_loopback


def _wait_ready(driver: subprocess.Popen, stderr_path: Path) -> dict:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        ready, _, _ = select.select([driver.stdout], [], [], 1.0)
        if ready:
            line = driver.stdout.readline()
            if line.startswith("READY "):
                return json.loads(line[len("READY "):])
            if not line and driver.poll() is not None:
                break
    pytest.fail(f"the driver did not start Ray (exit {driver.poll()}):\n{stderr_path.read_text()[-3000:]}")


def _stop(driver: subprocess.Popen, seen: dict[int, str | None], session_dir: str | None) -> None:
    """Closes the driver's stdin (it shuts its Ray down and exits), then kills by pid whatever of the
    processes recorded here is still running (the same pid with the same start time)."""
    for pid in _session_pids(driver.pid, session_dir):
        seen.setdefault(pid, _start_time(pid))
    try:
        driver.stdin.close()
    except OSError:
        pass
    try:
        driver.wait(timeout=60)
    except subprocess.TimeoutExpired:
        driver.kill()
        driver.wait(timeout=10)
    deadline = time.monotonic() + 10  # Ray's own shutdown kills the rest; give it a moment
    while time.monotonic() < deadline and any(_start_time(p) == t and t for p, t in seen.items()):
        time.sleep(0.2)
    for pid, started in seen.items():
        if started is not None and _start_time(pid) == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.ray
def test_embedded_ray_listens_on_loopback_only(tmp_path):
    tests = Path(__file__).resolve().parent
    stderr_path = tmp_path / "driver.stderr"
    # The dashboard's and the autoscaler monitor's metrics servers have fixed ports (44227, 44217) that
    # another Ray on the machine may hold, and then do not start; free ones are given, so they are
    # checked. (The dashboard agent's HTTP port, 52365, has no such setting in ray.init: where another
    # Ray holds it, this agent runs without its HTTP server.)
    metric_ports = {"DASHBOARD_METRIC_PORT": _free_port(), "AUTOSCALER_METRIC_PORT": _free_port()}
    env = {**os.environ, **{name: str(port) for name, port in metric_ports.items()}}
    with open(stderr_path, "w") as stderr:
        driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(tests)], cwd=tmp_path, text=True, env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)
    seen: dict[int, str | None] = {driver.pid: _start_time(driver.pid)}
    info: dict = {}
    try:
        info = _wait_ready(driver, stderr_path)
        listeners: dict[int, set[tuple[str, int]]] = {}
        titles: dict[int, str] = {}
        for snapshot in range(MAX_SNAPSHOTS):
            if snapshot:
                time.sleep(1)
            for pid in _session_pids(driver.pid, info["session_dir"]):
                seen.setdefault(pid, _start_time(pid))
                titles.setdefault(pid, _command_line(pid))
                listeners.setdefault(pid, set()).update(_listening(pid))
            ports = {port for found in listeners.values() for _, port in found}
            if snapshot + 1 >= SNAPSHOTS and set(metric_ports.values()) <= ports:
                break  # the dashboard's and the autoscaler monitor's metrics servers, which start last
        report = "\n".join(f"{pid} {titles[pid][:100]!r}: {sorted(found)}" for pid, found in sorted(listeners.items()) if found)

        # It is the embedded Ray's session that was read, with its servers and the replay's workers.
        assert info["node_ip_address"] == runtime.LOOPBACK
        assert info["gcs_address"].startswith(f"{runtime.LOOPBACK}:")
        listening = [titles[pid] for pid, found in listeners.items() if found]
        for process in ("gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent", "dashboard.py"):
            assert any(process in title for title in listening), f"no listening {process} found:\n{report}"
        assert sum("ReplayShard" in titles[pid] for pid in listeners) >= 2, report
        assert set(metric_ports.values()) <= {port for found in listeners.values() for _, port in found}, report
        assert any("ReplayCoordinator" in titles[pid] for pid in listeners), report

        unexpected, excepted = [], set()
        for pid, found in listeners.items():
            for host, port in sorted(found):
                if _is_loopback(host):
                    continue
                matches = [key for key in DOCUMENTED_EXCEPTIONS if key in titles[pid]]
                if matches:
                    excepted.update(matches)
                else:
                    unexpected.append(f"{pid} {titles[pid][:100]!r} listens on {host}:{port}")
        assert not unexpected, "listening beyond loopback:\n" + "\n".join(unexpected) + f"\n\nall listeners:\n{report}"
        assert excepted == set(DOCUMENTED_EXCEPTIONS), f"documented but not seen: {set(DOCUMENTED_EXCEPTIONS) - excepted}"
    finally:
        _stop(driver, seen, info.get("session_dir"))


class _RecordedInit:
    """Stands in for ray.init: records its arguments and what resolve_ip_for_localhost does meanwhile."""

    def __init__(self):
        self.calls = []

    def __call__(self, **kwargs):
        self.calls.append((kwargs, services.resolve_ip_for_localhost("127.0.0.1"),
                           services.resolve_ip_for_localhost("localhost")))
        return "context"


@pytest.fixture
def recorded_init(monkeypatch):
    recorded = _RecordedInit()
    monkeypatch.setattr(runtime.ray, "init", recorded)
    monkeypatch.setattr(services, "get_node_ip_address", lambda address=None: "192.0.2.77")  # "this machine's address"
    return recorded


def test_init_ray_starts_the_embedded_ray_on_loopback(recorded_init):
    assert runtime.init_ray(num_cpus=1) == "context"
    assert runtime.init_ray(address="local", _node_ip_address="10.1.2.3", dashboard_host="0.0.0.0") == "context"
    (first, *resolved), (second, *_) = recorded_init.calls
    assert first == {"address": "local", "num_cpus": 1, "_node_ip_address": "127.0.0.1", "dashboard_host": "127.0.0.1"}
    assert resolved == ["127.0.0.1", "127.0.0.1"]  # ray.init keeps the node address on loopback
    assert second["_node_ip_address"] == "10.1.2.3"  # the caller's choice wins
    assert second["dashboard_host"] == "0.0.0.0"
    assert services.resolve_ip_for_localhost("127.0.0.1") == "192.0.2.77"  # Ray's own behaviour is back after


def test_init_ray_joins_clusters_as_before(recorded_init):
    """A remote cluster: plain ray.init, nothing added, Ray's address resolution untouched. A cluster
    on loopback: its address is kept on loopback, and Ray picks this machine's node for the driver."""
    runtime.init_ray(address="10.0.0.5:6379")
    runtime.init_ray(address="ray://head.example:10001", namespace="x")
    runtime.init_ray(address="127.0.0.1:6379")
    (remote, *remote_resolved), (client, *_), (loopback, *loopback_resolved) = recorded_init.calls
    assert remote == {"address": "10.0.0.5:6379"} and remote_resolved == ["192.0.2.77", "192.0.2.77"]
    assert client == {"address": "ray://head.example:10001", "namespace": "x"}
    assert loopback == {"address": "127.0.0.1:6379"} and loopback_resolved == ["127.0.0.1", "127.0.0.1"]
