"""Reliable, ordered, authenticated and encrypted byte channels over UDP:
the transport of the pipe bridge (bridge.py).  Small on purpose: what it
does is described here, and done in native/channel.c (C: the bridge's data
path must not pay for an interpreter); this file is its face in Python.

One UDP socket (an Endpoint) carries many channels.  A channel is a pair of
byte streams, one each way, between two endpoints; its 16-byte id is made
at random by the side that creates it and says which channel a datagram
belongs to.  Every datagram is

     0   4  b"UFB2"
     4  16  channel id
    20   1  kind: DATA 1, ACK 2, PING 3 (a PING asks for an ACK)
    21   8  seq: DATA: the offset in the sender's stream of its first byte
    29   8  ack: the next offset the sender expects from its peer
    37   4  wnd: bytes past (ack) the sender will accept
    41   8  n: this datagram's number, from this side of this channel
    49   m  payload, encrypted: DATA's bytes; an ACK's SACK blocks, up to
            MAX_SACK (start, end) offsets (<QQ each) of what arrived past ack
   -16  16  tag

sealed with AES-256-GCM (the header is authenticated, the payload also
encrypted; AES-GCM runs at ~8 GB/s here, nine times faster than the keyed
BLAKE2b of the first version): each direction of a channel has its own key,
derived from the job's key and the channel id, and n is its nonce, never
used twice under a key (a retransmission is a new datagram).

A datagram that does not open (wrong key, altered) is dropped and counted
("forged"); one for an unknown channel too ("stale": e.g. a channel of an
earlier process, or an id altered on the way); DATA
that was already received (a retransmission, a network duplicate, a replay)
is dropped, counted ("duplicate") and acknowledged again.  A replayed ACK or
PING changes nothing: acknowledgements only move forward.

Sending: bytes stay in the channel's buffer until acknowledged; at most
min(congestion window, peer's window) bytes are in flight, not counting
what the peer said it holds out of order (its SACK blocks).  Selective
repeat: an ACK with SACK blocks shows holes, and each hole below the
highest block is sent again, and again if a round trip later it is still
a hole (its resend was lost too); the congestion window is halved once per
recovery (until everything sent before it began is acknowledged).
A retransmission timer (RTO from the measured round trip, doubled on each
expiry, 1 s at most) goes back to the first unacknowledged byte and sends
again what no SACK block covers, halves the congestion window and quarters
the segment size.  The window grows by one segment per ACK.  The segment
size follows the loss: 64 KB datagrams are IP fragments, and one lost
fragment loses them all, so every MSS_ROUND segments it halves if more
than a quarter had to be sent again, and doubles if under 1 in 20 did.

Receiving: an ACK goes at once for anything out of order and for every
second segment once ACK_BYTES are unacknowledged, else it waits up to
ACK_DELAY for data going back to carry it (small messages one way, whose
answers go back on another channel, are acknowledged a few at a time);
out-of-order segments inside the window are kept (never dropped once
SACKed) and listed, lowest first, in every ACK; the stream
is delivered in order into `inbuf`, which the user drains with consume();
the window advertised is what is left of WINDOW, so a slow consumer stops
its sender (flow control end to end, no unbounded buffering).

A channel that hears nothing valid for `dead_after` seconds is dead (its
user says what that means); idle channels send a PING every second, a
silent peer gets one four times a second.  A channel its user drops
lingers `dead_after` seconds, acknowledging what its peer still sends, so
that the peer too sees its last words arrive and closes.

For tests only: Endpoint.set_filter() loses chosen datagrams on their way
out; UNIFORK_TEST_BRIDGE_RELAY=IP:PORT sends every datagram to
a relay (tests/relay.py) that delays, reorders, duplicates, forges and
replays them: each goes out as the destination's address (4 + 2 bytes)
and the datagram, and comes in as the source's address and the datagram.
"""
from __future__ import annotations

import ctypes
import hashlib
import os

from workers import config
from workers.native.lib import EP_STATS, FILTER, ChanState, native

_lib: ctypes.CDLL | None = None     # native(), once an endpoint is made

DATA, ACK, PING = 1, 2, 3
WINDOW = 4 << 20            # bytes a receiver buffers; a sender keeps unacked
MSS_MAX = 65000             # payload per datagram, when nothing is lost
MSS_MIN = 1200              # ... and on a lossy path (one IP fragment)
ACK_DELAY = 0.002           # a lone segment's ACK waits this long for a ride
ACK_BYTES = 16 << 10        # ... unless this much is unacknowledged
MAX_SACK = 32               # SACK blocks per ACK (512 bytes: one IP fragment)
# (the same as native/net.h's and channel.c's: tests/test_channel.py checks; the
# others are channel.c's own: RTO_MIN, RTO_MAX, PING_EVERY, MSS_ROUND)
def _direction(key: bytes, cid: bytes, caller: bool) -> bytes:
    """The AES-256 key of one direction of channel (cid): the caller's (the
    side that knew its peer's address) or the other's."""
    return hashlib.blake2b(cid + (b"C" if caller else b"L"), key=key[:64],
                           digest_size=32, person=b"unifork-chan").digest()


class Channel:
    """Both directions of one channel.  send() queues bytes (check room()
    first); inbuf holds what arrived, in order; consume(n) frees it."""

    __slots__ = ("ep", "cid", "_c")

    def __init__(self, ep: "Endpoint", cid: bytes, handle: int) -> None:
        self.ep, self.cid, self._c = ep, cid, handle

    def room(self) -> int:
        return _lib.uf_chan_room(self._c)

    def send(self, data) -> None:
        if _lib.uf_chan_send(self._c, bytes(data), len(data)):
            raise MemoryError(f"no memory to queue {len(data)} bytes on a bridge channel")

    def consume(self, n: int) -> None:
        _lib.uf_chan_consume(self._c, n)

    def idle(self) -> bool:
        """Everything sent was acknowledged."""
        return bool(_lib.uf_chan_idle(self._c))

    @property
    def inbuf(self) -> memoryview:
        """What arrived, in order: a view of the channel's buffer, good until
        the next call into the channel (and, with a relay, while it is held)."""
        n = ctypes.c_size_t()
        at = _lib.uf_chan_inbuf(self._c, ctypes.byref(n))
        if not n.value:
            return memoryview(b"")
        return memoryview((ctypes.c_ubyte * n.value).from_address(at)).cast("B")

    @property
    def dead(self) -> bool:
        return bool(_lib.uf_chan_state(self._c) & ChanState.DEAD)

    def kill(self) -> None:
        """Its user gives up on it (the peer broke the frames' rules)."""
        _lib.uf_chan_kill(self._c)

    @property
    def ack_due(self) -> bool:
        return bool(_lib.uf_chan_state(self._c) & ChanState.ACK_DUE)

    def want_ack(self) -> None:
        """Send an ACK soon, even with nothing to acknowledge (a hello)."""
        _lib.uf_chan_want_ack(self._c)

    @property
    def ack_at(self) -> bool | None:
        """Whether a delayed ACK is pending (None: none)."""
        return True if _lib.uf_chan_state(self._c) & ChanState.ACK_AT else None

    @property
    def peer(self) -> tuple[str, int] | None:
        ip = ctypes.create_string_buffer(16)
        port = _lib.uf_chan_peer(self._c, ip)
        return None if port < 0 else (ip.value.decode(), port)

    def _on_data(self, seq: int, data: bytes) -> None:
        """For tests: as if a DATA datagram had brought (data) at (seq)."""
        _lib.uf_chan_on_data(self.ep._c, self._c, seq, data, len(data))


class Endpoint:
    """A UDP socket and the channels on it, all under one key."""

    def __init__(self, key: bytes, address: str = "127.0.0.1", port: int = 0,
                 dead_after: float = 5.0) -> None:
        global _lib
        lib = _lib = native()
        self.key, self.dead_after = key, dead_after
        relay = config.get().test_bridge_relay
        rip, _, rport = relay.partition(":")
        self._c = lib.uf_ep_new(address.encode(), port, dead_after, rip.encode() or None,
                                int(rport or 0))
        if not self._c:
            err = ctypes.get_errno()
            raise OSError(err, f"the bridge's UDP socket on {address}:{port}: "
                               f"{os.strerror(err)}")
        ip = ctypes.create_string_buffer(16)
        port = lib.uf_ep_address(self._c, ip)
        self.address = (ip.value.decode(), port)
        self._stats = (ctypes.c_uint64 * len(EP_STATS)).from_address(lib.uf_ep_stats(self._c))
        self._news = ctypes.create_string_buffer(16 * 64)
        self._filter = None
        self.channels: dict[bytes, Channel] = {}

    def fileno(self) -> int:
        return _lib.uf_ep_fileno(self._c)

    @property
    def stats(self) -> dict[str, int]:
        return dict(zip(EP_STATS, self._stats))

    def channel(self, cid: bytes, peer: tuple | None = None) -> Channel:
        caller = peer is not None
        handle = _lib.uf_chan_new(self._c, cid, _direction(self.key, cid, caller),
                                  _direction(self.key, cid, not caller),
                                  peer[0].encode() if peer else None, peer[1] if peer else 0)
        if not handle:
            raise MemoryError("no memory for a bridge channel")
        self._reap()                    # (a channel of the same id is replaced)
        ch = self.channels[cid] = Channel(self, cid, handle)
        return ch

    def drop(self, cid: bytes) -> None:
        """Its user is done with channel (cid).  It lingers a while to
        acknowledge what the peer still sends (its last frames, or their
        retransmissions if our ACK was lost), so that the peer closes too
        instead of taking our silence for death."""
        ch = self.channels.get(cid)
        if ch is not None:
            _lib.uf_ep_drop(self._c, ch._c)

    def lingering(self) -> bool:
        """Some dropped channel still owes its peer an acknowledgement."""
        return bool(_lib.uf_ep_lingering(self._c))

    def receive(self, now: float) -> set[bytes]:
        """Take every datagram waiting; the ids of the channels they were for."""
        _lib.uf_ep_receive(self._c, now)
        n = _lib.uf_ep_news(self._c, self._news, 64)    # (also what a relay received)
        raw = self._news.raw
        return {raw[16 * i:16 * i + 16] for i in range(n)}

    def flush(self, now: float) -> None:
        _lib.uf_ep_flush(self._c, now)
        if _lib.uf_ep_count(self._c) != len(self.channels):
            self._reap()

    def _reap(self) -> None:
        """Free the channels the endpoint let go (dropped, done lingering)."""
        for cid, ch in list(self.channels.items()):
            if _lib.uf_chan_state(ch._c) & ChanState.GONE:
                _lib.uf_chan_free(ch._c)
                del self.channels[cid]

    def set_filter(self, lose) -> None:
        """For tests: lose(kind, seq) -> True drops that datagram on its way out
        (after it was numbered, as a loss on the wire)."""
        self._filter = FILTER(lambda kind, seq: int(bool(lose(kind, seq))))
        _lib.uf_ep_set_filter(self._c, self._filter)

    def close(self) -> None:
        if self._c:
            for ch in self.channels.values():
                if _lib.uf_chan_state(ch._c) & ChanState.GONE:
                    _lib.uf_chan_free(ch._c)
            self.channels.clear()
            _lib.uf_ep_free(self._c)
            self._c = None


def new_channel_id() -> bytes:
    return os.urandom(16)
