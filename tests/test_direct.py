"""The direct sample channel (ray_replay.distributed.direct) without Ray: frames, pipelining, errors,
tokens, malformed input and a closed server, over sockets on this machine."""

from __future__ import annotations

import socket
import struct
import time

import numpy as np
import pytest

from ray_replay.distributed.direct import ChannelError, DirectChannel, DirectServer, RemoteError
from ray_replay.errors import StalePlanError

HOST = "127.0.0.1"


class Handler:
    """A fake shard: rows whose values encode the round and count; records the updates it got."""

    def __init__(self) -> None:
        self.updates: list[tuple[np.ndarray, np.ndarray]] = []
        self.calls = 0

    def __call__(self, counts, updates):
        self.calls += 1
        if updates is not None:
            self.updates.append((updates[0].copy(), updates[1].copy()))
        if counts and counts[0] < 0:
            raise StalePlanError("no rows")
        if counts and counts[0] == 999:
            raise KeyError("not a draw error")
        parts = []
        for j, n in enumerate(counts):
            if n == 0:
                parts.append(None)
                continue
            parts.append({
                "obs": np.arange(n * 6, dtype=np.float32).reshape(n, 2, 3) + j,
                "action": np.full(n, self.calls, np.int64),
                "done": np.arange(n) % 2 == 0,
                "ids": np.arange(n, dtype=np.int64) << 40,
            })
        return parts, (sum(counts), 1.5, 0.25, self.calls, 0)


@pytest.fixture
def server():
    handler = Handler()
    server = DirectServer(handler, HOST)
    yield server, handler
    server.close()


def test_pipelined_draws_come_back_in_order_with_their_arrays(server):
    srv, handler = server
    channel = DirectChannel(srv.address, timeout_s=10)
    replies = [channel.draw([n, 0, 2], None) for n in (1, 5, 3)]
    for n, reply in zip((1, 5, 3), replies):
        parts, snapshot = reply.get(10)
        assert snapshot == (n + 2, 1.5, 0.25, snapshot[3], 0)
        assert parts[1] is None and len(parts) == 3
        np.testing.assert_array_equal(parts[0]["obs"], np.arange(n * 6, dtype=np.float32).reshape(n, 2, 3))
        np.testing.assert_array_equal(parts[2]["obs"], np.arange(12, dtype=np.float32).reshape(2, 2, 3) + 2)
        assert parts[0]["obs"].dtype == np.float32 and parts[0]["done"].dtype == np.bool_
        np.testing.assert_array_equal(parts[0]["done"], np.arange(n) % 2 == 0)
        np.testing.assert_array_equal(parts[0]["ids"], np.arange(n, dtype=np.int64) << 40)
    assert [r.get(10)[1][3] for r in replies] == [1, 2, 3]  # served in the order sent; a reply can be read again
    channel.close()


def test_updates_ride_with_a_draw(server):
    srv, handler = server
    channel = DirectChannel(srv.address, timeout_s=10)
    ids, values = np.array([3, 1 << 41, 7], np.int64), np.array([0.5, 2.0, 9.0])
    channel.draw([0], (ids, values)).get(10)
    channel.draw([0], (ids[:1], 4.0)).get(10)  # a scalar priority broadcasts
    (got_ids, got_values), (one_id, one_value) = handler.updates
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(got_values, values)
    assert one_id.tolist() == [3] and one_value.tolist() == [4.0]
    channel.close()


def test_a_draw_error_is_raised_as_itself_when_known_and_the_channel_goes_on(server):
    srv, _ = server
    channel = DirectChannel(srv.address, timeout_s=10, known=(StalePlanError,))
    with pytest.raises(StalePlanError, match="no rows"):
        channel.draw([-1], None).get(10)
    with pytest.raises(RemoteError, match="KeyError"):
        channel.draw([999], None).get(10)
    assert channel.broken is None and channel.draw([2], None).get(10)[0][0]["action"].shape == (2,)
    channel.close()


def test_another_token_or_a_malformed_frame_loses_the_connection_not_the_server(server):
    srv, handler = server
    host, port, _ = srv.address
    stranger = DirectChannel((host, port, "not-the-token"), timeout_s=10)
    with pytest.raises(ChannelError):
        stranger.draw([1], None).get(10)
    assert stranger.broken is not None and handler.calls == 0
    with pytest.raises(ChannelError):  # a broken channel stays broken
        stranger.draw([1], None).get(10)
    huge_from_a_stranger = struct.pack("<IIQ", 0x52524431, 16, 1 << 20) + b'{"token":"nope"}'  # refused before its payload is read
    for garbage in (b"\x00" * 16, struct.pack("<IIQ", 0x52524431, 3, 0) + b"[1]", struct.pack("<IIQ", 0x52524431, 1 << 30, 0),
                    struct.pack("<IIQ", 0x52524431, 2, 1 << 40) + b"{}", huge_from_a_stranger):
        raw = socket.create_connection((host, port), timeout=10)
        raw.sendall(garbage)
        raw.settimeout(10)
        try:
            assert raw.recv(16) == b""  # closed by the server ...
        except ConnectionResetError:
            pass  # ... with bytes of ours still unread
        raw.close()
    assert handler.calls == 0
    friend = DirectChannel(srv.address, timeout_s=10)
    assert friend.draw([1], None).get(10)[0][0]["action"].tolist() == [1]
    friend.close()


def test_a_closed_server_breaks_its_channels(server):
    srv, _ = server
    channel = DirectChannel(srv.address, timeout_s=10)
    assert channel.draw([1], None).get(10)[0][0]["action"].shape == (1,)
    srv.close()
    deadline = time.monotonic() + 10
    with pytest.raises(ChannelError):
        while time.monotonic() < deadline:  # the close may land between a send and its read
            channel.draw([1], None).get(10)
    assert channel.broken is not None
    with pytest.raises(ChannelError):
        DirectChannel(srv.address, timeout_s=2)  # nobody listens any more


def test_a_silent_server_times_out():
    listener = socket.create_server((HOST, 0))  # accepts (the kernel does) and never answers
    try:
        channel = DirectChannel((HOST, listener.getsockname()[1], "t"), timeout_s=0.3)
        started = time.monotonic()
        with pytest.raises(ChannelError):
            channel.draw([1], None).get(0.3)
        assert time.monotonic() - started < 5
    finally:
        listener.close()


def test_an_abandoned_reply_is_dropped_not_kept(server):
    srv, _ = server
    channel = DirectChannel(srv.address, timeout_s=10)
    dropped = [channel.draw([3], None) for _ in range(3)]
    kept = channel.draw([2], None)
    dropped[0].abandon()
    channel.result(dropped[1].seq, 10)  # reads replies 0 and 1: 0 is dropped on arrival
    dropped[1].abandon()  # already read and taken: nothing left to drop
    dropped[2].abandon()
    assert kept.get(10)[0][0]["action"].shape == (2,)
    assert channel._replies == {} and channel._abandoned == set()
    channel.close()


class _Ref:
    def __init__(self, value):
        self.value = value


class _FakeRay:
    """ray.wait / ray.get over _Ref: every call has answered."""

    @staticmethod
    def wait(refs, num_returns=1, timeout=None):
        return list(refs), []

    @staticmethod
    def get(ref, timeout=None):
        return ref.value


class _FakeShard:
    """A shard actor handle whose direct_address gives ``address`` (counted)."""

    def __init__(self, address):
        self.address, self.asked = address, 0
        outer = self

        class _Method:
            @staticmethod
            def remote():
                outer.asked += 1
                return _Ref(outer.address)

        self.direct_address = _Method()


def test_channels_to_a_server_out_of_reach_are_tried_again_later_and_later(server, monkeypatch):
    """A shard whose server cannot be reached is sampled through Ray (get gives None) and tried again
    after RECONNECT_AFTER_S, then twice as late after each failure; once reachable, its channel opens
    and the wait starts over."""
    import sys

    from ray_replay.distributed import direct

    monkeypatch.setitem(sys.modules, "ray", _FakeRay)
    now = [1000.0]
    monkeypatch.setattr(direct.time, "monotonic", lambda: now[0])
    closed = socket.create_server((HOST, 0))
    nobody = (HOST, closed.getsockname()[1], "t")
    closed.close()  # nothing listens there: refused at once
    shard = _FakeShard(nobody)
    channels = direct.DirectChannels([shard], timeout_s=5)
    assert channels.get(0) is None and shard.asked == 1
    waits = []
    for _ in range(3):
        wait = channels._wait_s[0]
        waits.append(wait)
        now[0] += wait - 0.01
        assert channels.get(0) is None and shard.asked == len(waits)  # not yet
        now[0] += 0.02
        assert channels.get(0) is None and shard.asked == len(waits) + 1  # asked again ...
        assert channels.get(0) is None  # ... and the connection failed again
    assert waits == [direct.RECONNECT_AFTER_S * 2, direct.RECONNECT_AFTER_S * 4, direct.RECONNECT_AFTER_S * 8]
    shard.address = server[0].address  # reachable now
    now[0] += channels._wait_s[0]
    assert channels.get(0) is None  # asked
    channel = channels.get(0)
    assert channel is not None and channel.draw([1], None).get(5)[0][0]["action"].shape == (1,)
    assert channels._wait_s[0] == direct.RECONNECT_AFTER_S
    channels.close()

