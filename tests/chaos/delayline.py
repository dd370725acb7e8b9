"""A user-space netem for one node: forwards Ethernet frames between two links, delaying and dropping
the node's own frames. (This kernel has no sch_netem; tc's tbf can only limit bandwidth.)

Usage: delayline.py NODE_SIDE_LINK BRIDGE_SIDE_LINK CONTROL_FILE (run by netbed.NetBed in the bridge's
namespace). Frames arriving on NODE_SIDE_LINK (sent by the node) are held ``delay_ms`` and dropped
with probability ``loss``, as ``tc qdisc add dev eth0 root netem delay <d>ms loss <p>`` on the node's
own interface would (its egress only); frames towards the node pass at once. CONTROL_FILE holds
``{"delay_ms": d, "loss": p}`` and is re-read whenever it changes (at most every 50 ms), so a test can
slow the node down and restore it while it runs. Frames keep their order (a FIFO: every frame waits
the same delay). Counters are printed on exit (SIGTERM). Python's timer resolution and the machine's
load add up to a few ms of jitter on top of the delay.
"""

from __future__ import annotations

import collections
import json
import os
import random
import select
import signal
import socket
import sys
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4  # a frame this host sent on the link, seen by the packet socket: not forwarded


def open_link(name: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((name, 0))
    sock.setblocking(False)
    return sock


def main(node_side: str, bridge_side: str, control: str) -> None:
    from_node, to_node = open_link(node_side), open_link(bridge_side)
    held: collections.deque[tuple[float, bytes]] = collections.deque()
    settings = {"delay_ms": 0.0, "loss": 0.0}
    mtime, checked = 0.0, 0.0
    counts = {"from_node": 0, "to_node": 0, "dropped": 0, "delayed": 0}
    rng = random.Random(0)
    running = True

    def stop(*_: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    while running:
        now = time.monotonic()
        if now - checked > 0.05:
            checked = now
            try:
                stamp = os.stat(control).st_mtime
                if stamp != mtime:
                    mtime = stamp
                    with open(control) as file:
                        settings.update(json.load(file))
            except (OSError, ValueError):
                pass
        while held and held[0][0] <= now:
            try:
                to_node.send(held.popleft()[1])
            except OSError:
                pass  # the bridge side is down (a partition): the frame is lost, as on a wire
        timeout = 0.05 if not held else max(0.0, held[0][0] - now)
        readable, _, _ = select.select([from_node, to_node], [], [], timeout)
        for sock in readable:
            while True:
                try:
                    frame, address = sock.recvfrom(65536)
                except BlockingIOError:
                    break
                except OSError:
                    break
                if address[2] == PACKET_OUTGOING:
                    continue
                if sock is to_node:  # towards the node: undelayed
                    counts["to_node"] += 1
                    try:
                        from_node.send(frame)
                    except OSError:
                        pass
                    continue
                counts["from_node"] += 1
                if settings["loss"] > 0 and rng.random() < settings["loss"]:
                    counts["dropped"] += 1
                    continue
                delay = settings["delay_ms"] / 1000.0
                if delay > 0:
                    counts["delayed"] += 1
                    held.append((time.monotonic() + delay, frame))
                else:
                    try:
                        to_node.send(frame)
                    except OSError:
                        pass
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
