"""The bridge's transport (workers/pipes/channel.py), two endpoints in this
process: bytes arrive in order and exactly once through a relay that
drops, delays, reorders, duplicates, forges and replays datagrams; forged
ones are counted; payloads are encrypted; a silent peer is declared dead."""
from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time

import pytest

from workers import config
from workers.pipes import channel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def transfer(a, b, ca, cb, data: bytes, timeout: float = 60) -> bytes:
    got = bytearray()
    sent = 0
    deadline = time.monotonic() + timeout
    while len(got) < len(data):
        assert time.monotonic() < deadline, f"stalled at {len(got)} of {len(data)} bytes"
        now = time.monotonic()
        if sent < len(data) and ca.room() > 0:
            n = min(ca.room(), len(data) - sent, 256 << 10)
            ca.send(data[sent:sent + n])
            sent += n
        a.flush(now)
        b.flush(now)
        select.select([a, b], [], [], 0.002)
        now = time.monotonic()
        a.receive(now)
        b.receive(now)
        n = len(cb.inbuf)
        got += cb.inbuf
        cb.consume(n)
        assert not ca.dead and not cb.dead
    return bytes(got)


@pytest.fixture
def relay(monkeypatch):
    port = free_udp_port()
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "relay.py"),
                          "127.0.0.1", str(port), "drop=0.15", "delay=0.003", "dup=0.1",
                          "forge=0.05", "replay=0.05", "dup_every=4", "forge_every=6"])
    time.sleep(0.3)
    monkeypatch.setattr(config, "_current", config.load(
        {**os.environ, "UNIFORK_TEST_BRIDGE_RELAY": f"127.0.0.1:{port}"}))
    yield
    p.kill()
    p.wait()


def pair(key_b: bytes = b"k" * 32):
    a = channel.Endpoint(b"k" * 32, dead_after=5)
    b = channel.Endpoint(key_b, dead_after=5)
    cid = channel.new_channel_id()
    return a, b, a.channel(cid, b.address), b.channel(cid)


def test_bytes_arrive_in_order_and_once_on_a_clean_path():
    a, b, ca, cb = pair()
    data = os.urandom(8 << 20)
    assert transfer(a, b, ca, cb, data) == data
    assert a.stats["forged"] == b.stats["forged"] == 0


def test_bytes_arrive_in_order_and_once_through_a_bad_network(relay):
    a, b, ca, cb = pair()
    data = os.urandom(2 << 20)
    assert transfer(a, b, ca, cb, data, timeout=120) == data
    forged = a.stats["forged"] + b.stats["forged"]
    dup = a.stats["duplicate"] + b.stats["duplicate"]
    assert forged > 0 and dup > 0         # dropped, and counted
    assert a.stats["timeouts"] + a.stats["recoveries"] > 0   # losses were repaired


def test_datagrams_under_another_key_are_dropped_and_counted():
    a, b, ca, cb = pair(key_b=b"x" * 32)
    ca.send(b"hello")
    for _ in range(20):
        a.flush(time.monotonic())
        time.sleep(0.01)
        b.receive(time.monotonic())
    assert cb.inbuf == b"" and b.stats["forged"] > 0


def test_payload_is_encrypted_on_the_wire():
    sniffer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sniffer.bind(("127.0.0.1", 0))
    a = channel.Endpoint(b"k" * 32, dead_after=5)
    ca = a.channel(channel.new_channel_id(), sniffer.getsockname())
    secret = b"the plaintext of a pipe " * 40
    ca.send(secret)
    a.flush(time.monotonic())
    sniffer.settimeout(5)
    datagram = sniffer.recv(65536)
    assert ca.cid in datagram                  # the channel id travels in clear
    assert len(datagram) >= len(secret) and b"plaintext" not in datagram
    sniffer.close()


def test_a_silent_peer_is_declared_dead():
    a = channel.Endpoint(b"k" * 32, dead_after=0.3)
    ca = a.channel(channel.new_channel_id(), ("127.0.0.1", free_udp_port()))
    ca.send(b"anyone?")
    deadline = time.monotonic() + 5
    while not ca.dead:
        assert time.monotonic() < deadline
        a.flush(time.monotonic())
        time.sleep(0.02)


def test_small_messages_one_way_are_acknowledged_a_few_at_a_time():
    """A stream of small messages whose answers go back on another channel
    (a ping-pong over two pipes) is not acknowledged every second message:
    each ACK is a datagram and a turn of the sender's worker.  Bulk is."""
    a, b, ca, cb = pair()
    for _ in range(20):                 # 20 one-byte messages, one by one
        assert transfer(a, b, ca, cb, b"x") == b"x"
    assert b.stats["acks"] <= 4, f"{b.stats['acks']} ACKs for 20 one-byte messages"


def losing(ep, lost) -> list[int]:
    """Make (ep) lose the DATA datagrams for which lost(seqs sent so far,
    this one's seq) holds; returns the list of seqs sent."""
    sent: list[int] = []

    def lose(kind, seq):
        if kind != channel.DATA:
            return False
        sent.append(seq)
        return lost(sent, seq)
    ep.set_filter(lose)
    return sent


def test_only_the_lost_segments_are_sent_again():
    """Selective repeat: three datagrams of a dozen lost (one near the end,
    where too few ACKs follow to count duplicates) are each sent again once,
    the others not at all, and without waiting for a timeout."""
    a, b, ca, cb = pair()
    sent = losing(a, lambda sent, seq: len(sent) in (3, 7, 9))
    data = os.urandom(10 * channel.MSS_MAX)
    assert transfer(a, b, ca, cb, data) == data
    assert (a.stats["retransmits"], a.stats["timeouts"]) == (3, 0)
    lost = {sent[i - 1] for i in (3, 7, 9)}
    assert sum(1 for seq in sent if seq in lost) == 6     # each twice, no more


def test_a_resend_lost_too_is_sent_again_without_a_timeout():
    a, b, ca, cb = pair()
    losing(a, lambda sent, seq: len(sent) == 3 or        # the third datagram,
           len(sent) > 3 and seq == sent[2] and sent.count(seq) == 2)  # and its first resend
    data = os.urandom(10 * channel.MSS_MAX)
    assert transfer(a, b, ca, cb, data) == data
    assert (a.stats["retransmits"], a.stats["timeouts"]) == (2, 0)


def test_bulk_and_disorder_are_acknowledged_at_once():
    """Every second segment once ACK_BYTES are unacknowledged, and anything
    out of order, is acknowledged in the receiver's next flush; a lone small
    one waits up to ACK_DELAY for data going back."""
    a, ca = pair()[::2]                 # (the side that knows where its peer is)
    ca._on_data(0, b"x")
    assert not ca.ack_due and ca.ack_at is not None
    ca._on_data(1, bytes(channel.ACK_BYTES))
    assert ca.ack_due
    a.flush(time.monotonic())           # the ACK goes
    assert not ca.ack_due and a.stats["acks"] == 1
    ca._on_data(1 + channel.ACK_BYTES + 100, b"z")     # a gap before it
    assert ca.ack_due


def test_the_bridges_thread_carries_bytes_both_ways_without_its_supervisor():
    """The data path of a pipe between hosts (bridge.Relay, native/relay.c):
    what a guest writes into a ring routed to a channel arrives in the ring
    the other side delivers that channel to, a write in one piece, moved by
    the two bridges' threads alone; neither wakes its supervisor."""
    from workers.pipes.bridge import Relay
    from workers.vm.rings import SharedRegion
    a, b, ca, cb = pair()
    shm_a, shm_b = SharedRegion(), SharedRegion()
    (out_a, ping_a), (in_a, pong_a) = shm_a.new_ring(), shm_a.new_ring()
    (in_b, ping_b), (out_b, pong_b) = shm_b.new_ring(), shm_b.new_ring()
    relay_a, relay_b = Relay(a, shm_a), Relay(b, shm_b)
    try:
        with relay_a:
            relay_a.route(out_a, ca)
            relay_a.deliver(ca, in_a)
        with relay_b:
            relay_b.route(out_b, cb)
            relay_b.deliver(cb, in_b)

        def arrives(src, src_relay, dst, data: bytes) -> bytes:
            assert src.write(data)[0] == len(data)   # as a guest; its doorbell:
            with src_relay:                          # the thread looks again
                pass
            deadline = time.monotonic() + 5
            while dst.readable() < len(data):
                assert time.monotonic() < deadline, "the bytes did not arrive"
                time.sleep(0.001)
            return dst.read()[0]

        for i in range(20):
            msg = f"ping {i}".encode() * 100
            assert arrives(ping_a, relay_a, ping_b, msg) == msg
            assert arrives(pong_b, relay_b, pong_a, msg.upper()) == msg.upper()
        woken, _, _ = select.select([relay_a.efd, relay_b.efd], [], [], 0.1)
        assert woken == [], "a supervisor was woken for bytes its thread moved"
        assert relay_a.stats()["delivered"] == relay_b.stats()["delivered"] == 20
    finally:
        relay_a.close()
        relay_b.close()
        a.close()
        b.close()
        for shm in (shm_a, shm_b):
            shm.close()


def test_a_request_whose_doorbell_was_lost_reaches_the_supervisor_all_the_same():
    """A doorbell can be lost (QEMU takes a pending kick for itself when it
    stops the fast doorbell's device): the bridge's thread looks now and
    then as if one had rung, so a guest's request posted without one still
    wakes the supervisor (bytes go anyway: the channels' timers wake the
    thread, and it forwards at every turn); an idle bridge does not."""
    import ctypes
    import socket
    import struct
    from workers import abi
    from workers.pipes.bridge import Relay
    from workers.vm.rings import SharedRegion
    a, b, ca, cb = pair()
    shm = SharedRegion()
    relay = Relay(a, shm)
    ctl = ctypes.create_string_buffer(abi.CTL.size)     # a guest's control page
    bell, guest_end = socket.socketpair()
    try:
        with relay:
            relay.vms([(bell.fileno(), 0, ctypes.addressof(ctl), -1)], 0, 0)
        woken, _, _ = select.select([relay.efd], [], [], 0.3)
        assert woken == [], "an idle bridge woke its supervisor"
        struct.pack_into("<I", ctl, abi.CTL.offsets["req_seq"], 1)    # no doorbell
        woken, _, _ = select.select([relay.efd], [], [], 2)
        assert woken == [relay.efd], "a request without a doorbell was never seen"
    finally:
        relay.close()
        a.close()
        b.close()
        shm.close()
        bell.close()
        guest_end.close()


def test_a_malformed_frame_from_the_far_side_closes_the_link_and_says_so():
    """Two bridges (two regions, one ring each end) on loopback; the far
    side sends a frame of an unknown kind: this side closes the link, says
    why, and its ring's far ends count as closed (a reader sees EOF)."""
    import struct
    from workers.pipes.bridge import Bridge
    from workers.vm.rings import SharedRegion
    shm_a, shm_b = SharedRegion(), SharedRegion()
    said: list[str] = []
    a = Bridge(shm_a, b"k" * 32, "127.0.0.1", say=said.append)
    b = Bridge(shm_b, b"k" * 32, "127.0.0.1")
    try:
        idx, ring = shm_a.new_ring()
        b.link_parent(a.link_child(idx, 1, 1), 1, 1)
        with b.relay:
            b.links[idx][0].chan.send(struct.pack("<cI", b"X", 3) + b"bad")
        deadline = time.monotonic() + 5
        while not said:
            assert time.monotonic() < deadline, "the malformed frame went unnoticed"
            a.pump()
            b.pump()
            time.sleep(0.01)
        assert "a malformed frame from the other side: the link is closed" in said[0]
        while a.links:                              # the link goes
            assert time.monotonic() < deadline, "the link stayed"
            a.pump()
            time.sleep(0.01)
        assert ring.writers == 1                    # only the host's own end is left
    finally:
        a.close()
        b.close()
        shm_a.close()
        shm_b.close()


def test_the_python_face_says_what_the_c_does():
    """channel.py's constants are native/net.h's and channel.c's (the
    counters' names: test_native.py)."""
    import re
    text = "".join(open(os.path.join(ROOT, "workers", "native", f)).read()
                   for f in ("net.h", "channel.c"))
    defined = {m[0]: m[1] for m in re.findall(r"#define\s+(\w+)\s+\(?([^/\n]+?)\)?\s*(?:/\*|\n)", text)}

    def value(name):
        return eval(defined[name].replace("u <<", " <<"), {})      # e.g. (4u << 20)
    for name in ("WINDOW", "MSS_MAX", "MSS_MIN", "MAX_SACK", "ACK_DELAY", "ACK_BYTES"):
        assert value(name) == getattr(channel, name), name
    assert (channel.DATA, channel.ACK, channel.PING) == (1, 2, 3)
    assert "enum { DATA = 1, ACK = 2, PING = 3 };" in text
