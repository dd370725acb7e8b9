"""A multi-host Ray cluster on one machine: one network namespace per node, all on a bridge of their own.

Layout (every name carries this run's tag, so two runs, or other users' namespaces, never collide):

* ``<tag>-br``: a namespace holding only the bridge ``br0`` and the bridge-side ends of the veth pairs;
* ``<tag>-<node>``: one namespace per Ray node, whose only interfaces are ``lo`` and ``eth0`` with the
  node's address on the test's own subnet (``10.77.0.0/24`` unless told otherwise). Node 0 is the head
  (GCS); the test's driver runs inside its namespace (``run_driver``), so every packet between Ray
  processes, the driver included, travels over the bridge, between the test's own addresses.

Faults, all applied from outside the nodes:

* ``partition(node)`` / ``heal(node)``: the node's bridge port goes down / up. Packets are dropped
  silently (no reset, no ICMP), as when a switch port or a cable fails: peers' calls hang until their
  own timeouts, and the node's processes keep running and believe they are alive.
* ``block(node, peers)`` / ``unblock(node)``: nftables rules in the node's namespace drop everything
  to and from the given peers' addresses (a partial partition); other paths keep working.
* ``slow(node, delay_ms, loss)``: for a node built with ``delay_line=True``, every frame the node sends
  is held ``delay_ms`` and dropped with probability ``loss`` (tests/chaos/delayline.py, a user-space
  forwarder: this kernel has no sch_netem). ``slow(node, 0, 0)`` restores the plain path.

Teardown (``close``, also on any failure while starting) stops every process inside the bed's
namespaces (found with ``ip netns pids``: only processes started here live there), then deletes the
namespaces, which deletes every link made here. Nothing is ever done to processes or links outside
the bed; ``ray stop`` is never used (it would stop every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPOSITORY = HERE.parent.parent
GCS_PORT = 6379  # each node has a network namespace of its own: no clash with another Ray on the machine
STARTUP_TIMEOUT_S = 180  # for every node to register on a busy machine


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def can_make_namespaces() -> str | None:
    """None when this process can create network namespaces, veth pairs and a bridge; else why not."""
    missing = [tool for tool in ("ip", "nft", "ethtool", "ss", "mount") if shutil.which(tool) is None]
    if missing:
        return f"missing tools: {', '.join(missing)} (Debian: apt-get install iproute2 nftables ethtool mount)"
    probe = f"rrprobe{os.getpid()}"
    try:
        made = _ip("netns", "add", probe, check=False)
        if made.returncode != 0:
            return f"`ip netns add` failed: {made.stderr.strip()} (needs root, or CAP_SYS_ADMIN and CAP_NET_ADMIN)"
        link = _ip("-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1", check=False)
        if link.returncode != 0:
            return f"cannot create a veth pair in a namespace: {link.stderr.strip()}"
        bridge = _ip("-n", probe, "link", "add", "b0", "type", "bridge", check=False)
        if bridge.returncode != 0:
            return f"cannot create a bridge in a namespace: {bridge.stderr.strip()}"
        return None
    except FileNotFoundError:
        return "the `ip` command (iproute2) is not installed"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)


@dataclass
class Node:
    name: str
    namespace: str
    address: str
    port: str  # the bridge-side end of its veth pair (in the bridge namespace)
    num_cpus: float = 1
    resources: dict[str, float] = field(default_factory=dict)
    delay_line: bool = False


class NetBed:
    """Builds the namespaces and starts Ray in them; ``close()`` undoes all of it.

    Args:
        workers: one mapping per worker node: ``name``, optional ``num_cpus`` (1), ``resources`` (a
            ``{name: 1}`` resource of the node's name is always added, to place actors on it) and
            ``delay_line`` (route the node through a forwarder that ``slow`` can slow down).
        head_cpus: the head's CPUs (0 by default: shards go to the workers; the coordinator and the
            driver run on the head, given the "head" resource).
        subnet: the first three octets of the test's /24.
    """

    def __init__(self, workers: Sequence[Mapping[str, Any]], head_cpus: float = 0, subnet: str = "10.77.0") -> None:
        self.tag = f"rr{os.getpid() % 100_000}"
        self.bridge_ns = f"{self.tag}-br"
        self.root = Path(tempfile.mkdtemp(prefix=f"{self.tag}-", dir="/tmp"))  # short: Ray's unix sockets live below
        specs = [{"name": "head", "num_cpus": head_cpus, "resources": {"head": 1}}, *workers]
        self.nodes: dict[str, Node] = {}
        for index, spec in enumerate(specs):
            name = str(spec["name"])
            resources = {f"node_{name}": 1.0, **{k: float(v) for k, v in dict(spec.get("resources", {})).items()}}
            self.nodes[name] = Node(name, f"{self.tag}-{name}", f"{subnet}.{index + 1}", f"{self.tag}p{index}",
                                    float(spec.get("num_cpus", 1)), resources, bool(spec.get("delay_line", False)))
        self.head = self.nodes["head"]
        self.gcs_address = f"{self.head.address}:{GCS_PORT}"
        self.forwarders: dict[str, subprocess.Popen[bytes]] = {}
        self.started_pids: dict[str, set[int]] = {}  # every process seen in each namespace
        self._made_namespaces: list[str] = []
        # Ray 2.60's `ray start --head` turns token authentication on: a token of this bed's own, given
        # to every node and driver (never ~/.ray/auth_token, which other Rays on the machine may use).
        self._token = secrets.token_hex(32)

    # -- building ---------------------------------------------------------------------------------

    def __enter__(self) -> NetBed:
        try:
            self._build_network()
            self._start_ray()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._made_namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _build_network(self) -> None:
        self._namespace(self.bridge_ns)
        _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge_ns, "link", "set", "br0", "up")
        for node in self.nodes.values():
            self._namespace(node.namespace)
            _ip("link", "add", "eth0", "netns", node.namespace, "type", "veth", "peer", "name", node.port, "netns", self.bridge_ns)
            # No offloads: frames read by the delay line must be complete, checksummed, MTU-sized packets.
            self._no_offloads(node.namespace, "eth0")
            self._no_offloads(self.bridge_ns, node.port)
            _ip("-n", node.namespace, "addr", "add", f"{node.address}/24", "dev", "eth0")
            _ip("-n", node.namespace, "link", "set", "eth0", "up")
            if node.delay_line:
                # eth0 -> port -> [delayline.py] -> <port>d -> <port>b (on the bridge)
                inner, outer = f"{node.port}d", f"{node.port}b"
                _ip("-n", self.bridge_ns, "link", "add", inner, "type", "veth", "peer", "name", outer)
                for link in (inner, outer):
                    self._no_offloads(self.bridge_ns, link)
                    _ip("-n", self.bridge_ns, "link", "set", link, "up")
                _ip("-n", self.bridge_ns, "link", "set", outer, "master", "br0")
                _ip("-n", self.bridge_ns, "link", "set", node.port, "up")
                self._start_forwarder(node, inner)
            else:
                _ip("-n", self.bridge_ns, "link", "set", node.port, "master", "br0")
                _ip("-n", self.bridge_ns, "link", "set", node.port, "up")

    @staticmethod
    def _no_offloads(namespace: str, link: str) -> None:
        for feature in ("tx", "tso", "gso", "gro"):
            subprocess.run(["ip", "netns", "exec", namespace, "ethtool", "-K", link, feature, "off"], capture_output=True)

    def _start_forwarder(self, node: Node, inner: str) -> None:
        control = control_file(self.root, node.name)
        control.write_text(json.dumps({"delay_ms": 0, "loss": 0.0}))
        log = open(self.root / f"delayline-{node.name}.log", "wb")  # noqa: SIM115 - kept open by the child
        self.forwarders[node.name] = subprocess.Popen(
            ["ip", "netns", "exec", self.bridge_ns, sys.executable, str(HERE / "delayline.py"), node.port, inner, str(control)],
            stdout=log, stderr=subprocess.STDOUT)

    def environment(self) -> dict[str, str]:
        """The environment of every Ray process and of the driver: Ray's patient startup deadlines
        (tests/conftest.py), this checkout and the tests on the path."""
        sys.path.insert(0, str(HERE.parent))
        from conftest import RAY_STARTUP_ENV  # tests/conftest.py

        # The checkout goes on the path only when it holds a built extension (an in-place build): from a
        # clean clone its ray_replay/ has no _core and would hide the installed package.
        checkout = [str(REPOSITORY)] if any((REPOSITORY / "ray_replay").glob("_core.*.so")) else []
        path = os.pathsep.join([*checkout, str(HERE), str(HERE.parent)])
        return {**os.environ, **RAY_STARTUP_ENV, "PYTHONPATH": path, "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self._token,
                "RAY_REPLAY_NETBED": json.dumps(self.describe())}

    def _ray_start(self, node: Node, *args: str) -> None:
        ray = str(Path(sys.executable).with_name("ray"))
        command = ["ip", "netns", "exec", node.namespace, ray, "start", f"--node-ip-address={node.address}",
                   f"--num-cpus={node.num_cpus:g}", f"--resources={json.dumps(node.resources)}", "--disable-usage-stats",
                   f"--temp-dir={self.root / node.name}", "--object-store-memory=100000000", *args]
        done = subprocess.run(command, capture_output=True, text=True, env=self.environment(), timeout=STARTUP_TIMEOUT_S, cwd=self.root)
        self._record_pids()
        if done.returncode != 0:
            raise RuntimeError(f"ray start on {node.name} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")

    def _start_ray(self) -> None:
        self._ray_start(self.head, "--head", f"--port={GCS_PORT}", "--include-dashboard=false")
        for node in self.nodes.values():
            if node is not self.head:
                self._ray_start(node, f"--address={self.gcs_address}")
        self.wait_for_nodes()

    def wait_for_nodes(self) -> None:
        """Until the GCS lists every node alive (asked from the head's namespace)."""
        script = ("import ray, sys, time\n"
                  f"ray.init(address={self.gcs_address!r}, _node_ip_address={self.head.address!r}, log_to_driver=False)\n"
                  f"deadline = time.monotonic() + {STARTUP_TIMEOUT_S}\n"
                  f"while sum(n['Alive'] for n in ray.nodes()) < {len(self.nodes)}:\n"
                  "    if time.monotonic() > deadline: sys.exit('nodes missing: %s' % ray.nodes())\n"
                  "    time.sleep(0.5)\n")
        done = self.run_in(self.head, [sys.executable, "-c", script], timeout=STARTUP_TIMEOUT_S + 60)
        if done.returncode != 0:
            raise RuntimeError(f"the nodes did not all register:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")

    # -- running and inspecting -------------------------------------------------------------------

    def run_in(self, node: Node, command: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["ip", "netns", "exec", node.namespace, *command], capture_output=True, text=True,
                              env=self.environment(), timeout=timeout, cwd=self.root)
        self._record_pids()
        return done

    def run_driver(self, scenario: str, timeout: float, **options: Any) -> dict[str, Any]:
        """Runs ``drive.py <scenario>`` in the head's namespace and returns the JSON it writes."""
        out = self.root / f"{scenario}.json"
        command = [sys.executable, str(HERE / "drive.py"), scenario, str(out), json.dumps(options)]
        done = self.run_in(self.head, command, timeout)
        if done.returncode != 0 or not out.exists():
            raise AssertionError(f"driver {scenario} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}")
        return json.loads(out.read_text())

    def pids(self, namespace: str) -> set[int]:
        listed = _ip("netns", "pids", namespace, check=False)
        return {int(p) for p in listed.stdout.split()} if listed.returncode == 0 else set()

    def _record_pids(self) -> None:
        for name in self._made_namespaces:
            self.started_pids.setdefault(name, set()).update(self.pids(name))

    def connections(self, node: Node) -> list[str]:
        """The node's TCP connections (``ss -tn``), one line each, for checking which addresses are used."""
        done = subprocess.run(["ip", "netns", "exec", node.namespace, "ss", "-tnH"], capture_output=True, text=True)
        return [line for line in done.stdout.splitlines() if line.strip()]

    def describe(self) -> dict[str, Any]:
        return {"tag": self.tag, "bridge_ns": self.bridge_ns, "root": str(self.root), "gcs_address": self.gcs_address,
                "nodes": {name: asdict(node) for name, node in self.nodes.items()}}

    # -- faults (see Faults) -------------------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        return Faults(self.describe())

    # -- teardown ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Stops every process in the bed's namespaces (TERM, then KILL after 5 s) and its forwarders,
        deletes the namespaces (and with them every link made here) and the temporary folder."""
        self._record_pids()
        for forwarder in self.forwarders.values():
            if forwarder.poll() is None:
                forwarder.terminate()
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            alive = {pid for name in self._made_namespaces for pid in self.pids(name)}
            for pid in alive:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            while alive and time.monotonic() < deadline:
                alive = {pid for name in self._made_namespaces for pid in self.pids(name)}
                time.sleep(0.1)
        for forwarder in self.forwarders.values():
            try:
                forwarder.wait(timeout=5)
            except subprocess.TimeoutExpired:
                forwarder.kill()
                forwarder.wait()
        for name in reversed(self._made_namespaces):
            _ip("netns", "del", name, check=False)
        self._made_namespaces.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """Namespaces of this bed that still exist (none after close)."""
        listed = _ip("netns", "list", check=False).stdout
        return [line.split()[0] for line in listed.splitlines() if line.startswith(f"{self.tag}-")]


class Faults:
    """The bed's faults, from its description alone: usable by the driver inside the head's namespace
    (``Faults(attached())``) as well as by the test. See the module doc for what each does."""

    def __init__(self, description: Mapping[str, Any]) -> None:
        self.bridge_ns = str(description["bridge_ns"])
        self.root = Path(description["root"])
        self.nodes = {name: Node(**spec) for name, spec in description["nodes"].items()}

    def _bridge_port(self, node: Node) -> str:
        return f"{node.port}b" if node.delay_line else node.port

    def partition(self, name: str) -> None:
        _ip("-n", self.bridge_ns, "link", "set", self._bridge_port(self.nodes[name]), "down")

    def heal(self, name: str) -> None:
        _ip("-n", self.bridge_ns, "link", "set", self._bridge_port(self.nodes[name]), "up")

    def block(self, name: str, peers: Sequence[str]) -> None:
        """Drops everything between node ``name`` and each of ``peers`` (rules in ``name``'s namespace)."""
        addresses = ", ".join(self.nodes[p].address for p in peers)
        rules = (f"table inet chaos {{\n chain out {{ type filter hook output priority 0; ip daddr {{ {addresses} }} drop; }}\n"
                 f" chain in {{ type filter hook input priority 0; ip saddr {{ {addresses} }} drop; }}\n}}\n")
        subprocess.run(["ip", "netns", "exec", self.nodes[name].namespace, "nft", "-f", "-"], input=rules, text=True, check=True,
                       capture_output=True)

    def unblock(self, name: str, missing_ok: bool = False) -> None:
        subprocess.run(["ip", "netns", "exec", self.nodes[name].namespace, "nft", "delete", "table", "inet", "chaos"],
                       check=not missing_ok, capture_output=True)

    def slow(self, name: str, delay_ms: float, loss: float) -> None:
        """Every frame node ``name`` sends is held ``delay_ms`` and dropped with probability ``loss``."""
        node = self.nodes[name]
        if not node.delay_line:
            raise ValueError(f"node {name!r} was built without delay_line=True")
        control = control_file(self.root, name)
        temporary = control.with_suffix(".tmp")
        temporary.write_text(json.dumps({"delay_ms": delay_ms, "loss": loss}))
        os.replace(temporary, control)


def control_file(root: Path, name: str) -> Path:
    """The file node ``name``'s delay line reads its delay and loss from."""
    return root / f"delay-{name}.json"


def attached() -> dict[str, Any]:
    """In a driver started by run_driver: the bed's description (addresses, namespaces)."""
    return dict(json.loads(os.environ["RAY_REPLAY_NETBED"]))
