"""Reliable, ordered, authenticated and encrypted byte channels over UDP:
the transport of the pipe bridge (bridge.py).  Small on purpose; everything
it does is here.

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

For tests only: UNIFORK_TEST_BRIDGE_RELAY=IP:PORT sends every datagram to
a relay (tests/relay.py) that delays, reorders, duplicates, forges and
replays them: each goes out as the destination's address (4 + 2 bytes)
and the datagram, and comes in as the source's address and the datagram.
"""
from __future__ import annotations

import bisect
import errno
import hashlib
import os
import socket
import struct
import time

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_ADDR = struct.Struct("!4sH")

MAGIC = b"UFB2"
HDR = struct.Struct("<4s16sBQQIQ")
TAG_SIZE = 16
DATA, ACK, PING = 1, 2, 3
WINDOW = 4 << 20            # bytes a receiver buffers; a sender keeps unacked
MSS_MAX = 65000             # payload per datagram, when nothing is lost
MSS_MIN = 1200              # ... and on a lossy path (one IP fragment)
RTO_MIN, RTO_MAX = 0.02, 1.0
ACK_DELAY = 0.002           # a lone segment's ACK waits this long for a ride
ACK_BYTES = 16 << 10        # ... unless this much is unacknowledged
PING_EVERY = 1.0
MSS_ROUND = 32              # segments between two looks at the segment size
MAX_SACK = 32               # SACK blocks per ACK (512 bytes: one IP fragment)
_SACK = struct.Struct("<QQ")


def _direction(key: bytes, cid: bytes, caller: bool) -> AESGCM:
    """The cipher of one direction of channel (cid): the caller's (the side
    that knew its peer's address) or the other's."""
    return AESGCM(hashlib.blake2b(cid + (b"C" if caller else b"L"), key=key[:64],
                                  digest_size=32, person=b"unifork-chan").digest())


class Channel:
    """Both directions of one channel.  send() queues bytes (check room()
    first); inbuf holds what arrived, in order; consume(n) frees it."""

    def __init__(self, ep: "Endpoint", cid: bytes, peer: tuple | None,
                 dead_after: float) -> None:
        self.ep, self.cid, self.peer, self.dead_after = ep, cid, peer, dead_after
        caller = peer is not None
        self.seal, self.open = _direction(ep.key, cid, caller), _direction(ep.key, cid, not caller)
        self.sent = 0                 # datagrams sent: the next one's nonce
        now = time.monotonic()
        # sending
        self.out = bytearray()        # from snd_una on
        self.snd_una = self.snd_nxt = self.snd_max = 0
        self.peer_wnd = WINDOW
        self.cwnd = 1 << 20
        self.mss = MSS_MAX
        self.rto, self.srtt = 0.1, 0.0
        self.timer: float | None = None
        self.rtt_probe: tuple[int, float] | None = None
        self.sacked: list[list[int]] = []   # [start, end) the peer holds past snd_una
        self.recover: int | None = None     # in a recovery until snd_una reaches it
        self.resent: dict[int, float] = {}  # a hole's segment: when last resent
        self.round_sent = self.round_resent = 0     # segments, for the MSS
        # receiving
        self.rcv_nxt = 0
        self.ooo: dict[int, bytes] = {}
        self.inbuf = bytearray()
        self.ack_due = False
        self.ack_at: float | None = None     # a delayed ACK, due then
        self.unacked_segs = self.unacked_bytes = 0
        self.heard, self.spoke = now, now
        self.dead = False
        self.closing: float | None = None    # dropped; lingers until then

    # -- the user's side -----------------------------------------------------
    def room(self) -> int:
        return WINDOW - len(self.out)

    def send(self, data: bytes) -> None:
        self.out += data

    def consume(self, n: int) -> None:
        before = self._wnd()
        del self.inbuf[:n]
        if before < WINDOW // 4 <= self._wnd():
            self.ack_due = True       # the window opened: tell the sender

    def idle(self) -> bool:
        """Everything sent was acknowledged."""
        return self.snd_una == self.snd_nxt and not self.out

    def _wnd(self) -> int:
        return max(0, WINDOW - len(self.inbuf))

    # -- datagrams in ----------------------------------------------------------
    def on_datagram(self, kind: int, seq: int, ack: int, wnd: int, payload: bytes,
                    now: float) -> None:
        self.heard = now
        self._on_ack(ack, wnd, now)
        if kind == ACK and payload:
            self._on_sack(payload, now)
        if kind == PING:
            self.ack_due = True
        elif kind == DATA and payload:
            self._on_data(seq, payload)

    def _on_data(self, seq: int, data) -> None:
        """(data) is the opened payload: copied once, where it goes.
        The ACK waits up to ACK_DELAY for data going back to carry it,
        except for anything out of order and for every second segment of
        ACK_BYTES or more (each one is a datagram, and a turn of the peer's
        worker: on a ping-pong over two pipes, one per round trip)."""
        self.unacked_segs += 1
        self.unacked_bytes += len(data)
        if (self.unacked_segs >= 2 and self.unacked_bytes >= ACK_BYTES) or seq != self.rcv_nxt:
            self.ack_due = True
        elif self.ack_at is None:
            self.ack_at = time.monotonic() + ACK_DELAY
        end = seq + len(data)
        if end <= self.rcv_nxt or seq in self.ooo:
            self.ep.stats["duplicate"] += 1
            return
        if end > self.rcv_nxt + self._wnd():
            return                      # past the window: the sender will resend
        if seq > self.rcv_nxt:
            self.ooo[seq] = bytes(data)
            return
        self.inbuf += data[self.rcv_nxt - seq:]
        self.rcv_nxt = end
        while self.ooo:                 # what arrived early may follow now
            nxt = min(self.ooo)
            if nxt > self.rcv_nxt:
                break
            d = self.ooo.pop(nxt)
            if nxt + len(d) > self.rcv_nxt:
                self.inbuf += d[self.rcv_nxt - nxt:]
                self.rcv_nxt = nxt + len(d)

    def _on_ack(self, ack: int, wnd: int, now: float) -> None:
        if ack > self.snd_max or ack < self.snd_una:
            return                      # from the future (bogus) or the past (replay)
        self.peer_wnd = wnd
        if ack > self.snd_nxt:          # sent before a timeout went back: not again
            self.snd_nxt = ack
        if ack > self.snd_una:
            if self.rtt_probe and ack >= self.rtt_probe[0]:
                sample = now - self.rtt_probe[1]
                self.srtt = sample if not self.srtt else 0.875 * self.srtt + 0.125 * sample
                self.rtt_probe = None
            self.rto = min(RTO_MAX, max(RTO_MIN, 3 * self.srtt))
            del self.out[:ack - self.snd_una]
            self.snd_una = ack
            while self.sacked and self.sacked[0][1] <= ack:
                self.sacked.pop(0)
            if self.sacked and self.sacked[0][0] < ack:
                self.sacked[0][0] = ack
            if self.recover is not None and ack >= self.recover:
                self.recover = None     # every hole of that loss is filled
            if self.resent:
                self.resent = {seq: t for seq, t in self.resent.items() if seq >= ack}
            self.cwnd = min(WINDOW, self.cwnd + self.mss)
            self.timer = now + self.rto if self.snd_nxt > self.snd_una else None

    def _on_sack(self, payload, now: float) -> None:
        """The peer holds these ranges past our snd_una: note them; a hole
        below them starts a recovery (its holes are resent by flush())."""
        if len(payload) % _SACK.size or len(payload) > MAX_SACK * _SACK.size:
            return
        ranges = self.sacked + [[max(start, self.snd_una), end]
                                for start, end in _SACK.iter_unpack(payload)
                                if max(start, self.snd_una) < end <= self.snd_max]
        ranges.sort()                   # (else old, or bogus)
        merged: list[list[int]] = []
        for r in ranges:
            if merged and r[0] <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], r[1])
            else:
                merged.append(r)
        self.sacked = merged
        if merged and self.recover is None:
            self._lost(now, timeout=False)
            self.recover = self.snd_nxt

    def _hole(self, pos: int) -> tuple[int, int | None]:
        """The first byte at or after (pos) the peer does not hold, and where
        the next range it holds begins (None: nothing known beyond)."""
        ranges = self.sacked               # sorted, disjoint, not touching
        i = bisect.bisect_right(ranges, pos, key=lambda r: r[1])
        if i == len(ranges):
            return pos, None
        if pos < ranges[i][0]:
            return pos, ranges[i][0]
        return ranges[i][1], ranges[i + 1][0] if i + 1 < len(ranges) else None

    def _sacked_bytes(self) -> int:
        return sum(end - start for start, end in self.sacked)

    # -- datagrams out ---------------------------------------------------------
    def _lost(self, now: float, timeout: bool) -> None:
        self.cwnd = max(2 * self.mss, self.cwnd // 2)
        self.rtt_probe = None
        if timeout:
            self.ep.stats["timeouts"] += 1
            self.mss = max(MSS_MIN, self.mss // 4)
            self.rto = min(RTO_MAX, self.rto * 2)
            self.snd_nxt = self.snd_una  # go back (past what the peer holds)
            self.recover = None
        else:
            self.ep.stats["recoveries"] += 1

    def _segment(self, seq: int, now: float, upto: int | None = None) -> int:
        """Send the bytes from (seq), one segment, not past (upto)."""
        off = seq - self.snd_una
        n = self.mss if upto is None else min(self.mss, upto - seq)
        chunk = memoryview(self.out)[off:off + n]
        if seq < self.snd_max:
            self.ep.stats["retransmits"] += 1
            self.round_resent += 1
        self.round_sent += 1
        if self.round_sent == MSS_ROUND:
            if self.round_resent * 4 > MSS_ROUND:
                self.mss = max(MSS_MIN, self.mss // 2)
            elif self.round_resent * 20 < MSS_ROUND:
                self.mss = min(MSS_MAX, self.mss * 2)
            self.round_sent = self.round_resent = 0
        self.ep.transmit(self, DATA, seq, chunk)
        n = len(chunk)
        chunk.release()
        return n

    def _resend_holes(self, now: float) -> None:
        """In a recovery: send the holes below the highest SACKed byte, each
        segment of them once a round trip at most."""
        top = min(self.sacked[-1][1] if self.sacked else self.snd_una, self.snd_nxt)
        again = max(2 * self.srtt, 0.002)
        pos = self.snd_una
        while pos < top:
            pos, nxt = self._hole(pos)
            if nxt is None or pos >= top:
                break
            if now - self.resent.get(pos, -1.0) < again:
                pos = min(nxt, pos + self.mss)      # just resent: not yet
                continue
            self.resent[pos] = now
            pos += self._segment(pos, now, nxt)
            self._acked()

    def flush(self, now: float) -> None:
        """Send what the windows allow, due ACKs and PINGs; retransmit on time."""
        if self.dead:
            return
        if self.closing is not None:    # dropped: only answer what still comes
            if self.ack_due and self.peer is not None:
                self.ep.transmit(self, ACK, self.snd_nxt, self._sack())
                self._acked()
            return
        if now - self.heard > self.dead_after:
            self.dead = True            # (or never heard from at all)
            return
        if self.peer is None:
            return
        if self.timer is not None and now >= self.timer:
            self._lost(now, timeout=True)
            self.timer = None
            if self.peer_wnd == 0:
                self.ep.transmit(self, PING, self.snd_nxt, b"")   # probe the window
                self.timer = now + self.rto
        if self.recover is not None:
            self._resend_holes(now)
        limit = self.snd_una + min(self.cwnd + self._sacked_bytes(), max(self.peer_wnd, 0))
        end = self.snd_una + len(self.out)
        while self.snd_nxt < min(limit, end):
            pos, nxt = self._hole(self.snd_nxt)     # what the peer holds is not resent
            if pos != self.snd_nxt:
                self.snd_nxt = pos
                continue
            if self.rtt_probe is None and self.snd_nxt >= self.snd_max:
                self.rtt_probe = (self.snd_nxt + 1, now)
            self.snd_nxt += self._segment(self.snd_nxt, now, nxt)
            self.snd_max = max(self.snd_max, self.snd_nxt)
            self._acked()               # DATA carries the ACK
        if self.snd_nxt > self.snd_una and self.timer is None:
            self.timer = now + self.rto
        if self.snd_nxt < end and self.peer_wnd == 0 and self.timer is None:
            self.timer = now + self.rto
        if self.ack_due or (self.ack_at is not None and now >= self.ack_at):
            self.ep.transmit(self, ACK, self.snd_nxt, self._sack())
            self._acked()
        elif now - self.spoke > PING_EVERY or (now - self.heard > PING_EVERY and
                                               now - self.spoke > PING_EVERY / 4):
            self.ep.transmit(self, PING, self.snd_nxt, b"")   # (a silent peer: 4 a second)

    def _acked(self) -> None:
        self.ack_due, self.ack_at = False, None
        self.unacked_segs = self.unacked_bytes = 0

    def _sack(self) -> bytes:
        """SACK blocks for an ACK: what arrived out of order, lowest first."""
        if not self.ooo:
            return b""
        blocks: list[list[int]] = []
        for seq in sorted(self.ooo):
            end = seq + len(self.ooo[seq])
            if blocks and seq <= blocks[-1][1]:
                blocks[-1][1] = max(blocks[-1][1], end)
            elif len(blocks) == MAX_SACK:
                break
            else:
                blocks.append([seq, end])
        return b"".join(_SACK.pack(s, e) for s, e in blocks)

    def next_event(self) -> float:
        """When flush() must run next, at the latest (monotonic)."""
        if self.dead:
            return float("inf")
        if self.closing is not None:
            return min(self.closing, time.monotonic() if self.ack_due else float("inf"))
        if self.peer is None:
            return self.heard + self.dead_after
        t = min(self.heard + self.dead_after, self.spoke + PING_EVERY,
                max(self.heard + PING_EVERY, self.spoke + PING_EVERY / 4))
        if self.ack_at is not None:
            t = min(t, self.ack_at)
        if self.timer is not None:
            t = min(t, self.timer)
        if self.recover is not None and self.resent:     # a resend may be lost too
            t = min(t, min(self.resent.values()) + max(2 * self.srtt, 0.002))
        return t


class Endpoint:
    """A UDP socket and the channels on it, all under one key."""

    def __init__(self, key: bytes, address: str = "127.0.0.1", port: int = 0,
                 dead_after: float = 5.0) -> None:
        self.key, self.dead_after = key, dead_after
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # Big socket buffers: past rmem_max (208 KiB by default) as root, so
        # that a burst of a window's worth is not dropped on arrival.
        for force, opt in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, force, 8 << 20)  # SO_*BUFFORCE
            except OSError:
                self.sock.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
        self.sock.bind((address, port))
        self.sock.setblocking(False)
        self.address = self.sock.getsockname()
        relay = os.environ.get("UNIFORK_TEST_BRIDGE_RELAY")
        self.relay = (relay.split(":")[0], int(relay.split(":")[1])) if relay else None
        self.channels: dict[bytes, Channel] = {}
        self.stats = {k: 0 for k in ("forged", "stale", "duplicate", "timeouts",
                                     "recoveries", "retransmits", "sent", "received")}
        self._buf = bytearray(65536)

    def fileno(self) -> int:
        return self.sock.fileno()

    def channel(self, cid: bytes, peer: tuple | None = None) -> Channel:
        ch = self.channels[cid] = Channel(self, cid, peer, self.dead_after)
        return ch

    def drop(self, cid: bytes) -> None:
        """Its user is done with channel (cid).  It lingers a while to
        acknowledge what the peer still sends (its last frames, or their
        retransmissions if our ACK was lost), so that the peer closes too
        instead of taking our silence for death."""
        ch = self.channels.get(cid)
        if ch is not None and ch.closing is None:
            ch.closing = time.monotonic() + self.dead_after
            ch.ack_due = ch.ack_due or ch.ack_at is not None
            ch.out.clear()

    def lingering(self) -> bool:
        """Some dropped channel still owes its peer an acknowledgement."""
        return any(ch.closing is not None and (ch.ack_due or ch.ack_at is not None)
                   for ch in self.channels.values())

    def transmit(self, ch: Channel, kind: int, seq: int, payload) -> None:
        ch.sent += 1
        head = HDR.pack(MAGIC, ch.cid, kind, seq, ch.rcv_nxt, ch._wnd(), ch.sent)
        sealed = ch.seal.encrypt(_nonce(ch.sent), payload, head)
        try:
            if self.relay:
                via = _ADDR.pack(socket.inet_aton(ch.peer[0]), ch.peer[1])
                self.sock.sendmsg([via, head, sealed], [], 0, self.relay)
            else:
                self.sock.sendmsg([head, sealed], [], 0, ch.peer)
            self.stats["sent"] += 1
        except BlockingIOError:
            pass                        # the socket buffer is full: a loss like any
        except OSError as err:
            if err.errno not in (errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH):
                raise
        ch.spoke = time.monotonic()

    def receive(self, now: float) -> set[bytes]:
        """Take every datagram waiting; the ids of the channels they were for."""
        got: set[bytes] = set()
        view = memoryview(self._buf)
        while True:
            try:
                n, addr = self.sock.recvfrom_into(self._buf)
            except (BlockingIOError, InterruptedError):
                return got
            except OSError:
                continue                # an ICMP error for an earlier send
            if self.relay and n >= _ADDR.size:
                ip, port = _ADDR.unpack_from(self._buf)
                addr = (socket.inet_ntoa(ip), port)
                self._buf[:n - _ADDR.size] = self._buf[_ADDR.size:n]
                n -= _ADDR.size
            if n < HDR.size + TAG_SIZE:
                self.stats["forged"] += 1
                continue
            magic, cid, kind, seq, ack, wnd, number = HDR.unpack_from(self._buf)
            ch = self.channels.get(cid)
            if magic != MAGIC or ch is None or ch.dead:
                self.stats["stale"] += 1
                continue
            try:
                payload = ch.open.decrypt(_nonce(number), view[HDR.size:n], view[:HDR.size])
            except InvalidTag:
                self.stats["forged"] += 1
                continue
            self.stats["received"] += 1
            if ch.peer is None:
                ch.peer = addr          # the first authentic datagram says where it is
            ch.on_datagram(kind, seq, ack, wnd, payload, now)
            if ch.closing is not None:
                ch.inbuf.clear()        # nobody reads a dropped channel
                ch.ack_due = True
                continue
            got.add(cid)

    def flush(self, now: float) -> None:
        for cid, ch in list(self.channels.items()):
            if ch.closing is not None and now >= ch.closing:
                del self.channels[cid]
            else:
                ch.flush(now)

    def next_event(self) -> float:
        return min((ch.next_event() for ch in self.channels.values()), default=float("inf"))

    def close(self) -> None:
        self.sock.close()


def _nonce(number: int) -> bytes:
    return number.to_bytes(12, "little")


def new_channel_id() -> bytes:
    return os.urandom(16)
