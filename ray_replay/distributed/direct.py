"""Samples over a direct socket between a ReplayClient and a shard: the learner's round trip without
Ray's per-call cost (``ReplayClient(..., sample_transport="direct")``).

Why: on the 2-core VM every Ray actor call costs 400-450 us of CPU in the caller and as much in the
shard, against about 100 us of native work for a 512-row prioritized draw; the learner's sample is
the latency users feel. Over this channel a draw costs one ``sendall`` and one read each side, and the
rows come back as raw column bytes (no pickle).

What travels (``ReplayShard.draw`` over a socket, nothing else): the request is a shard's rounds
(counts) and the priority updates riding with it; the reply is the rows of each round and the shard's
snapshot, or the error the draw raised. Writes, sequences, checkpoints and control stay on Ray.

Frames: a 16-byte header (magic, JSON length, payload length), a small JSON document, then the
payload: raw array bytes back to back, described by the JSON (name, dtype, shape). Nothing is
unpickled. Every request carries the shard's token (handed out by the shard's ``direct_address``
over Ray), and a connection whose frame is malformed or carries another token is closed.

Thread roles: ``DirectServer`` runs an accept thread and one thread per connection, each answering
its connection's requests in order through ``handler`` (the shard serializes its draws, see
ReplayShardImpl.serve_draw). A ``DirectChannel`` is used by one thread (the client's); its requests
are pipelined and the replies read in order. Failure: any socket error, EOF or timeout on a channel
raises ``ChannelError`` and breaks the channel; the client then sends that draw again through Ray
(rounds._Call), whose verdict on the shard counts as for any call, and ``DirectChannels`` reopens the
channel through Ray later. (``ChannelError`` is also a health.PROCESS_FAILURES, for a draw with no
Ray retry.)

Ray-free: the server and channel run over plain sockets (tests/test_direct.py drives them without
Ray); only ``DirectChannels`` asks the shard actors for their addresses.
"""

from __future__ import annotations

import json
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["CONNECT_TIMEOUT_S", "MAX_RECONNECT_AFTER_S", "RECONNECT_AFTER_S", "ChannelError", "DirectChannel", "DirectChannels", "DirectReply",
           "DirectServer", "RemoteError"]

MAGIC = 0x52524431  # "RRD1"
HEADER = struct.Struct("<IIQ")  # magic, JSON bytes, payload bytes
MAX_JSON_BYTES = 1 << 20
MAX_PAYLOAD_BYTES = 1 << 34  # 16 GiB: a reply past this is malformed
MAX_REQUEST_PAYLOAD_BYTES = 1 << 26  # 64 MiB: a request's updates (16 bytes a row; a client holds at most 65,536 rows a shard)
RECONNECT_AFTER_S = 1.0  # a broken channel is reopened (through the shard actor) no sooner than this
MAX_RECONNECT_AFTER_S = 60.0  # ... and after each failed try twice as late, up to this
CONNECT_TIMEOUT_S = 2.0  # a connection not made within this (or shard_timeout_s, if shorter) fails

Arrays = dict[str, np.ndarray]
# handler(counts, updates) -> (parts, snapshot): ReplayShardImpl.serve_draw
Handler = Callable[[list[int], "tuple[np.ndarray, np.ndarray] | None"], "tuple[list[Arrays | None], Sequence[Any]]"]


class ChannelError(ConnectionError):
    """A direct channel to a shard failed (reset, closed, timed out or malformed): the shard did not answer."""


class RemoteError(Exception):
    """A draw that raised in the shard, by the name of its type (re-raised by the client as that type
    where it is one of ``known``)."""


def _pack(document: dict[str, Any], arrays: Sequence[np.ndarray]) -> list[Any]:
    body = json.dumps(document, separators=(",", ":")).encode()
    buffers = [np.ascontiguousarray(a) for a in arrays]
    size = sum(b.nbytes for b in buffers)
    return [HEADER.pack(MAGIC, len(body), size), body, *(b.reshape(-1).view(np.uint8).data for b in buffers if b.nbytes)]


def _send(sock: socket.socket, pieces: list[Any]) -> None:
    if sum(len(p) for p in pieces) < (1 << 20):
        sock.sendall(b"".join(pieces))  # one copy of a small frame, one syscall
        return
    for piece in pieces:
        sock.sendall(piece)


def _read_exactly(sock: socket.socket, size: int) -> bytearray:
    out = bytearray(size)
    view, got = memoryview(out), 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            raise ChannelError("the connection was closed")
        got += n
    return out


def _read_frame(sock: socket.socket, token: str | None = None, max_payload: int = MAX_PAYLOAD_BYTES) -> tuple[dict[str, Any], bytearray]:
    """One frame; with ``token`` (the server) a frame without it is refused before its payload is read."""
    magic, json_bytes, payload_bytes = HEADER.unpack(_read_exactly(sock, HEADER.size))
    if magic != MAGIC or json_bytes > MAX_JSON_BYTES or payload_bytes > max_payload:
        raise ChannelError("a malformed frame")
    document = json.loads(_read_exactly(sock, json_bytes))
    if not isinstance(document, dict) or (token is not None and document.get("token") != token):
        raise ChannelError("a malformed frame, or not one of this shard's clients")
    return document, _read_exactly(sock, payload_bytes)


def _describe(arrays: Arrays) -> list[list[Any]]:
    return [[name, a.dtype.str, list(a.shape)] for name, a in arrays.items()]


def _arrays(spec: list[list[Any]], payload: bytearray, offset: int) -> tuple[Arrays, int]:
    """The arrays ``spec`` describes, viewing ``payload`` from ``offset`` (no copy); the next offset."""
    out: Arrays = {}
    for name, dtype_str, shape in spec:
        dtype = np.dtype(dtype_str)
        if dtype.hasobject:
            raise ChannelError("a malformed frame")
        count = int(np.prod(shape, dtype=np.int64))
        size = count * dtype.itemsize
        if offset + size > len(payload):
            raise ChannelError("a malformed frame")
        out[str(name)] = np.frombuffer(payload, dtype=dtype, count=count, offset=offset).reshape(shape)
        offset += size
    return out, offset


class DirectServer:
    """Answers draws over TCP on ``host`` (an ephemeral port): see the module doc. ``address`` is what a
    client needs: (host, port, token). ``close()`` stops accepting and closes every connection."""

    def __init__(self, handler: Handler, host: str) -> None:
        self._handler = handler
        self.token = secrets.token_hex(16)
        self._listener = socket.create_server((host, 0), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.address: tuple[str, int, str] = (host, self._listener.getsockname()[1], self.token)
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="ray_replay-direct-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return  # closed
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._closed:
                    connection.close()
                    return
                self._connections.append(connection)
            threading.Thread(target=self._serve, args=(connection,), name="ray_replay-direct", daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        try:
            while True:
                document, payload = _read_frame(connection, self.token, MAX_REQUEST_PAYLOAD_BYTES)
                _send(connection, self._answer(document, payload))
        except (OSError, ChannelError, ValueError, TypeError, KeyError):
            return  # the client went away, or sent something malformed: drop the connection
        finally:
            with self._lock:
                if connection in self._connections:
                    self._connections.remove(connection)
            connection.close()

    def _answer(self, document: dict[str, Any], payload: bytearray) -> list[Any]:
        counts = [int(n) for n in document["counts"]]
        n = int(document.get("updates", 0))
        updates = None
        if n:
            if len(payload) != 16 * n:
                raise ValueError("updates do not match the payload")
            updates = (np.frombuffer(payload, np.int64, n, 0), np.frombuffer(payload, np.float64, n, 8 * n))
        try:
            parts, snapshot = self._handler(counts, updates)
        except Exception as error:  # noqa: BLE001 - the draw's own error goes back to the client
            return _pack({"error": [type(error).__name__, str(error)]}, [])
        specs, arrays = [], []
        for part in parts:
            specs.append(None if part is None else _describe(part))
            arrays += [] if part is None else list(part.values())
        return _pack({"parts": specs, "snapshot": list(snapshot)}, arrays)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            connection.close()


class DirectReply:
    """A draw sent on a DirectChannel: ``get(timeout_s)`` gives (parts, snapshot) as ReplayShard.draw
    does (read once, then kept), or raises what the draw raised."""

    __slots__ = ("channel", "reply", "seq")

    def __init__(self, channel: DirectChannel, seq: int) -> None:
        self.channel, self.seq = channel, seq
        self.reply: tuple[list[Arrays | None], tuple[Any, ...]] | None = None

    def get(self, timeout_s: float) -> tuple[list[Arrays | None], tuple[Any, ...]]:
        if self.reply is None:
            self.reply = self.channel.result(self.seq, timeout_s)
        return self.reply

    def abandon(self) -> None:
        """Nobody will read this reply (a dropped prefetched round): the channel discards it on arrival."""
        if self.reply is None:
            self.channel.abandon(self.seq)


class DirectChannel:
    """One client's connection to one shard's DirectServer (one thread uses it). ``known``: exception
    types a shard's error is re-raised as, by name (others come as RemoteError)."""

    def __init__(self, address: Sequence[Any], timeout_s: float, known: Sequence[type[BaseException]] = (),
                 connect_timeout_s: float | None = None) -> None:
        host, port, self._token = str(address[0]), int(address[1]), str(address[2])
        self._known = {cls.__name__: cls for cls in known}
        try:
            self._sock = socket.create_connection((host, port), timeout=connect_timeout_s if connect_timeout_s is not None else timeout_s)
        except OSError as error:
            raise ChannelError(f"cannot connect to {host}:{port}: {error}") from error
        self._sock.settimeout(timeout_s)  # a send or a read that takes longer fails
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sent = 0  # requests sent
        self._read = 0  # replies read
        self._replies: dict[int, Any] = {}  # read, not yet taken: seq -> (parts, snapshot) or an exception
        self._abandoned: set[int] = set()  # sent, and nobody will take the reply
        self.broken: ChannelError | None = None

    def draw(self, counts: Sequence[int], updates: tuple[np.ndarray, np.ndarray] | None) -> DirectReply:
        """Sends a draw of ``counts`` rows per round (the updates riding along) without waiting."""
        document: dict[str, Any] = {"token": self._token, "counts": [int(n) for n in counts]}
        arrays: list[np.ndarray] = []
        if updates is not None:
            ids, values = np.asarray(updates[0], np.int64), np.asarray(updates[1], np.float64)
            document["updates"] = len(ids)
            arrays = [ids, np.broadcast_to(values, ids.shape)]
        seq = self._sent
        self._sent += 1
        if self.broken is None:
            try:
                _send(self._sock, _pack(document, arrays))
            except OSError as error:
                self._break(ChannelError(f"sending a draw failed: {error}"))
        return DirectReply(self, seq)

    def result(self, seq: int, timeout_s: float) -> tuple[list[Arrays | None], tuple[Any, ...]]:
        while seq not in self._replies:
            if self.broken is not None:
                raise self.broken
            try:
                self._sock.settimeout(timeout_s)
                document, payload = _read_frame(self._sock)
                if self._read in self._abandoned:
                    self._abandoned.discard(self._read)
                else:
                    self._replies[self._read] = self._decode(document, payload)
            except (OSError, ChannelError, ValueError, TypeError, KeyError) as error:
                broken = error if isinstance(error, ChannelError) else ChannelError(f"reading a draw failed: {error!r}")
                self._break(broken)
                raise broken from error
            self._read += 1
        reply = self._replies.pop(seq)
        if isinstance(reply, BaseException):
            raise reply
        return reply  # type: ignore[no-any-return]

    def abandon(self, seq: int) -> None:
        """Reply ``seq`` will not be taken: dropped now if it was read, else when it arrives."""
        if self._replies.pop(seq, None) is None and seq >= self._read:
            self._abandoned.add(seq)

    def _decode(self, document: dict[str, Any], payload: bytearray) -> Any:
        if "error" in document:
            name, message = document["error"]
            return self._known.get(name, RemoteError)(message if name in self._known else f"{name}: {message}")
        parts: list[Arrays | None] = []
        offset = 0
        for spec in document["parts"]:
            if spec is None:
                parts.append(None)
                continue
            part, offset = _arrays(spec, payload, offset)
            parts.append(part)
        return parts, tuple(document["snapshot"])

    def _break(self, error: ChannelError) -> None:
        self.broken = error
        self.close()

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass


class DirectChannels:
    """A client's channels to its shards, opened through each shard actor's ``direct_address`` (Ray) and
    reopened when one breaks, without blocking the caller on a shard that does not answer. ``get(k)`` is
    the channel to use for shard k now, or None (then the client uses Ray). A shard whose channel could
    not be opened (its address not given within ``timeout_s``, or no connection within
    CONNECT_TIMEOUT_S: a firewall that drops the port) is tried again after RECONNECT_AFTER_S, then
    after twice as long each time, up to MAX_RECONNECT_AFTER_S, so that a client that cannot reach the
    servers samples through Ray at the cost of a rare connect."""

    def __init__(self, shards: Sequence[Any], timeout_s: float, known: Sequence[type[BaseException]] = ()) -> None:
        import ray

        self._ray = ray
        self._shards, self._timeout_s, self._known = list(shards), timeout_s, tuple(known)
        n = len(self._shards)
        self._channels: list[DirectChannel | None] = [None] * n
        self._tried_at = [-np.inf] * n
        self._wait_s = [RECONNECT_AFTER_S] * n  # the pause before shard k's next try
        self._asked: list[Any] = [shard.direct_address.remote() for shard in self._shards]  # refs not yet read
        ready, _ = ray.wait(self._asked, num_returns=n, timeout=timeout_s)  # every shard at once
        ready_refs = set(ready)
        for k in range(n):
            if self._asked[k] in ready_refs:
                self._open(k)
            else:  # not answering now: Ray meanwhile; its address is read once it comes
                self._tried_at[k] = time.monotonic()

    def _open(self, k: int) -> None:
        """Connects to shard k with the address its (answered) direct_address call gave."""
        ref, self._asked[k] = self._asked[k], None
        try:
            self._channels[k] = DirectChannel(self._ray.get(ref), self._timeout_s, self._known, min(self._timeout_s, CONNECT_TIMEOUT_S))
            self._wait_s[k] = RECONNECT_AFTER_S
        except Exception:  # noqa: BLE001 - not reachable (or the shard is down): Ray meanwhile, later again
            self._tried_at[k] = time.monotonic()
            self._wait_s[k] = min(2 * self._wait_s[k], MAX_RECONNECT_AFTER_S)

    def get(self, k: int) -> DirectChannel | None:
        channel = self._channels[k]
        if channel is not None:
            if channel.broken is None:
                return channel
            self._channels[k] = None
            self._tried_at[k] = time.monotonic()  # it failed just now: reopened no sooner than its wait
        if self._asked[k] is None:
            if time.monotonic() - self._tried_at[k] >= self._wait_s[k]:
                self._tried_at[k] = time.monotonic()
                self._asked[k] = self._shards[k].direct_address.remote()
            return None
        ready, _ = self._ray.wait([self._asked[k]], timeout=0)
        if ready:
            self._open(k)
        return self._channels[k]

    def close(self) -> None:
        for channel in self._channels:
            if channel is not None:
                channel.close()
        self._channels = [None] * len(self._shards)
