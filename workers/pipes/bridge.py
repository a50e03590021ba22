"""The pipe bridge: pipes whose ends are in several shared regions (other
hosts, or other subtrees of the job on this one), carried over UDP.

Each region a pipe reaches has a ring for it; the guests there use it as
any other ring.  The rings of one pipe are joined in a tree: when a fork
sends a process holding ends of ring i to another region, a *link* joins
this region's ring i to the child's ring i (the same index there).  Each
side of a link is a channel (channel.py) carrying frames:

    U <bytes>       data written into the other side's ring; one frame is
                    what was in the ring at once (whole guest writes: a
                    write of up to PIPE_BUF bytes is never split), and it is
                    written in whole into this side's ring, under its lock
    S <flags>       "beyond me there are writers (1) / readers (2) /
                    readers waiting on an empty ring (4) / readers here
                    that keep bytes from you unless you say 4 (8)"

The bridge holds *virtual ends* in each ring: a writer while, beyond a
link, someone may still write (or its data is still on the way), a reader
while, beyond it, someone reads.  So a reader sees end of file only when
every writer of the pipe, everywhere, has closed and everything written has
arrived, and a writer gets EPIPE only when every reader everywhere has
closed: the guests' code path does not change.

Data goes where the readers are: with no local reader, the bridge takes
a ring's bytes (whole) and sends them over the first link with readers
beyond it.  With local readers too, bytes go over a link only while a
reader beyond it waits on an empty ring ("hungry": a guest reading a
bridged ring counts itself in the ring's `hungry` and rings the doorbell
before it sleeps), so a process that keeps a read end it never reads (a
parent that did not close its copy) does not keep the bytes from the
reader that wants them.  A link whose peer stops answering
(channel.py's dead_after) is closed as if every end beyond it were: the
pipe breaks visibly (EOF, EPIPE, and a line on the job's stderr), never
with bytes silently lost or duplicated.

Who moves the bytes: the Relay, a thread in C (native/relay.c) that owns
the region's doorbells, the UDP socket and the channels' timers.  pump()
decides, and tells it per ring where the bytes go (route) and per link
where its U frames go (deliver); the thread then moves them by itself,
and wakes the supervisor (fileno()) only for what it does not handle: a
doorbell it did not cause, an S frame, a dying channel, a link waiting to
be idle.  So a round trip between hosts has no Python on it.
(UNIFORK_BRIDGE_STATS=1: the thread's counts on the job's stderr at the end.)
"""
from __future__ import annotations

import functools
import hashlib
import time

from workers import abi, config
from workers.native.lib import (BEYOND_HUNGRY as HUNGRY, BEYOND_KEEPS as KEEPS,
                                BEYOND_READERS as READERS, BEYOND_WRITERS as WRITERS,
                                FRAME as _FRAME, FRAME_DATA as DATA, FRAME_STATE as STATE)
from workers.pipes.channel import Endpoint, new_channel_id
from workers.pipes.relay import Relay
from workers.vm.rings import SharedRegion

MAX_UNIT = abi.RING_SIZE


def open_bridge(shm: SharedRegion, secret: bytes | None, job_id: str, address: str,
                say) -> "Bridge":
    """The bridge of a subtree's region, on its host's address: a port from
    UNIFORK_BRIDGE_PORTS=LO-HI (for a firewall) or any free one; a peer that
    is silent for UNIFORK_BRIDGE_TIMEOUT seconds (5) is taken for gone.
    Without (secret), one made ahead for a job to come (Bridge.for_job)."""
    from workers.ports import bind_in
    cfg = config.get()
    dead_after, key = cfg.bridge_timeout, job_key(secret, job_id) if secret else b""
    return bind_in(cfg.bridge_ports, "UNIFORK_BRIDGE_PORTS",
                   lambda port: Bridge(shm, key, address, port, dead_after, say))


def _state_behind(buf, at: int) -> bool:
    """Whether an S frame has arrived after the frames from (at)."""
    while len(buf) - at >= _FRAME.size:
        kind, n = _FRAME.unpack_from(buf, at)
        if kind != DATA:
            return True
        at += _FRAME.size + n
    return False


def _locked(method):
    """The method works on the endpoint: the relay's thread waits meanwhile."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self.relay:
            return method(self, *args, **kwargs)
    return locked


def job_key(secret: bytes, job_id: str) -> bytes:
    """The key of a job's bridge datagrams (channel.py derives a key per
    channel and direction from it), from the cluster secret."""
    return hashlib.blake2b(job_id.encode(), key=secret[:64], digest_size=32,
                           person=b"unifork-pipes").digest()


class Link:
    """One side of a link on ring (idx)."""

    def __init__(self, idx: int, chan, beyond_w: bool, beyond_r: bool) -> None:
        self.idx, self.chan = idx, chan
        self.beyond_w, self.beyond_r = beyond_w, beyond_r    # as the peer last said
        self.hungry = False            # ... and whether a reader there waits
        self.keeps = False             # ... and whether it has local readers
        self.vw = self.vr = 0          # virtual ends held in our ring for it
        self.told: tuple[bool, bool, bool, bool] | None = None
        self.units: list[bytes] = []   # arrived, not yet in our ring


class Bridge:
    """The links of one region (a subtree's shared region) and its UDP endpoint."""

    def __init__(self, shm: SharedRegion, key: bytes, address: str, port: int = 0,
                 dead_after: float = 5.0, say=None) -> None:
        self.shm = shm
        self.ep = Endpoint(key, address, port, dead_after)
        self.relay = Relay(self.ep, shm)
        self.links: dict[int, list[Link]] = {}
        self._seen: dict[int, tuple] = {}   # each ring's state() as our last look began
        self.say = say or (lambda msg: None)
        self.stdio = self.stdin = 0         # the rings the host reads, writes (masks)

    def for_job(self, secret: bytes, job_id: str, say) -> Bridge:
        """A bridge made ahead, before it has a link, is now (job_id)'s
        (its UDP socket and thread cost ~1 ms to make)."""
        assert not self.links
        self.ep.key, self.say = job_key(secret, job_id), say
        return self

    def fileno(self) -> int:
        """Readable when the bridge (or a doorbell) wants the supervisor."""
        return self.relay.efd

    def watch(self, vms: list) -> None:
        """The region's VMs now (their doorbells go to the relay's thread,
        which wakes the supervisor through fileno()); before a VM is closed."""
        from workers.vm.cpu import address
        with self.relay:
            self.relay.vms([(vm.bell.fileno(), vm.fast.handle if vm.fast else 0,
                             address(vm.mem) + abi.CTL_ADDR, parked)
                            for vm, parked in vms], self.stdio, self.stdin)

    @property
    def address(self) -> tuple:
        return self.ep.address

    def active(self) -> bool:
        """Links remain, or a dropped one still owes its peer an ACK."""
        if self.links:
            return True
        with self.relay.looking():
            return self.ep.lingering()

    # -- making links -------------------------------------------------------
    @_locked
    def link_child(self, idx: int, child_r: int, child_w: int) -> dict:
        """A process holding (child_r, child_w) ends of our ring (idx) is
        being forked elsewhere: beyond the new link are its ends.  The
        virtual ends go in now, before the parent can close its own."""
        cid = new_channel_id()
        link = Link(idx, self.ep.channel(cid), child_w > 0, child_r > 0)
        self.links.setdefault(idx, []).append(link)
        self._seen.pop(idx, None)
        self._ends(link)
        abi.RING.put(self.shm.map, abi.shm_ring_off(idx), bridged=1)
        return {"ring": idx, "cid": cid.hex(), "addr": list(self.address)}

    @_locked
    def unlink(self, spec: dict) -> None:
        """Undo link_child() for a fork that failed."""
        cid = bytes.fromhex(spec["cid"])
        for link in self.links.get(spec["ring"], []):
            if link.chan.cid == cid:
                link.beyond_w = link.beyond_r = False
                link.units.clear()
                self._ends(link)
                self._drop(link)
                return

    @_locked
    def link_parent(self, spec: dict, readers: int, writers: int) -> None:
        """Our root was forked here holding (readers, writers) ends of ring
        spec["ring"], whose other ends are beyond the link to its parent's
        region: make our ring, with virtual ends for beyond (everything may
        be there until the parent's side says)."""
        idx = spec["ring"]
        link = Link(idx, self.ep.channel(bytes.fromhex(spec["cid"]), tuple(spec["addr"])),
                    True, True)
        abi.RING.put(self.shm.map, abi.shm_ring_off(idx), size=abi.RING_SIZE,
                     readers=readers + 1, writers=writers + 1, bridged=1)
        link.vw = link.vr = 1
        abi.SHM.put(self.shm.map, 0, used=self.shm.used() | 1 << idx)
        self.links.setdefault(idx, []).append(link)
        self._seen.pop(idx, None)
        link.chan.want_ack()            # say hello: the parent's side learns where we are

    # -- the work -------------------------------------------------------------
    @_locked
    def pump(self) -> None:
        """Decide what moves where; call on every turn of the supervisor
        (which then wakes the guests whose wait is over)."""
        if not self.ep.channels:    # no pipe reaches elsewhere: not even a recvfrom
            return
        now = time.monotonic()
        heard = self.ep.receive(now)
        for idx, links in list(self.links.items()):
            ring = self.shm.ring(idx)
            before = ring.state()
            if (before == self._seen.get(idx) and not any(
                    l.units or l.chan.dead or l.chan.cid in heard for l in links)):
                continue        # neither the guests nor the far side did anything
            for link in links:
                while link.units and ring.write_whole(link.units[0]):
                    link.units.pop(0)
                self._take_frames(link, ring)
                # its U frames go straight into the ring while none are held
                self.relay.deliver(link.chan, -1 if link.units else idx)
            for link in links:
                self._ends(link)
            # the ring's state, read once for this turn
            local_r, local_w = self._local(ring, links)
            target = self._target(links, local_r)
            hungry = local_r > 0 and ring.hungry > 0
            # The far sides hear of ends closed here before the bytes this
            # turn sends them: a side whose last reader closed as its writer
            # wrote must say so first, or the other side, counting that
            # reader still, could send the bytes back and then hear the
            # writers gone while they travel (an early end of file).
            has_data = ring.readable_between_guests()
            for link in links:
                self._tell(link, links, local_r, local_w, has_data, hungry)
            self.relay.route(idx, target.chan if target is not None else None)
            self.relay.forward(idx)     # (and from now on its thread does)
            has_data = ring.readable_between_guests()
            for link in list(links):
                self._tell(link, links, local_r, local_w, has_data, hungry)
                if link.chan.dead:
                    self._lost(link)
                elif ((link.told is not None and not any(link.told[:2])
                       or not (link.beyond_w or link.beyond_r)) and not link.units):
                    if link.chan.idle():
                        self._drop(link)    # one side has no end left, nor ever will
                    else:
                        self.relay.want_idle(link.chan)     # (then again)
            if idx in self.links:
                self._arm(ring, links, local_r)
            # Next turn, the ring is skipped only if nothing moved since
            # (before): a guest that wrote while we worked is not missed.
            self._seen[idx] = before
        self.ep.flush(now)

    def next_event(self) -> float | None:
        """When pump() must run next, at the latest (monotonic); None: when
        fileno() says so."""
        if any(l.units for ls in self.links.values() for l in ls):
            return time.monotonic() + 0.001      # waiting for room in a ring
        # The rest wakes us through fileno(): the channels' timers and deaths
        # are the relay thread's, and so is the look every 50 ms for what no
        # doorbell told (an end closed, hunger, a request).
        return None

    def _arm(self, ring, links: list[Link], local_r: int) -> None:
        """Ask the guests for a doorbell when what we wait for may change."""
        want = abi.BRIDGED | (abi.BRIDGED_TELL if any(l.keeps for l in links) else 0)
        if ring.bridged != want:        # hunger is news only to a side that keeps bytes
            ring.bridged = want
        if any(l.units for l in links):
            ring.arm("wr_wait")          # room for a unit
        if local_r == 0:
            ring.arm("rd_wait")          # bytes to forward, and closes

    def _take_frames(self, link: Link, ring) -> None:
        """Act on the frames that have arrived: data into the ring at once
        when it fits (else held, up to a ring's worth), states noted."""
        buf = link.chan.inbuf
        used = 0
        held = sum(map(len, link.units))
        view = memoryview(buf)
        while len(buf) - used >= _FRAME.size and held < MAX_UNIT:
            # (what stays in inbuf closes the sender's window: flow control)
            kind, n = _FRAME.unpack_from(buf, used)
            if n > MAX_UNIT or kind not in (DATA, STATE):
                self.say(f"pipe {link.idx}: a malformed frame from the other side: "
                         "the link is closed")
                link.chan.kill()
                break
            if len(buf) - used < _FRAME.size + n:
                break
            body = view[used + _FRAME.size:used + _FRAME.size + n]
            used += _FRAME.size + n
            if kind == DATA:
                if link.units or not ring.write_whole(body):
                    if not link.units and not _state_behind(buf, used):
                        used -= _FRAME.size + n     # the relay's thread puts it in
                        body.release()              # when the ring has room
                        break
                    link.units.append(bytes(body))  # (held: what follows is read)
                    held += n
            elif body:
                link.beyond_w, link.beyond_r = bool(body[0] & WRITERS), bool(body[0] & READERS)
                link.hungry = bool(body[0] & HUNGRY)
                link.keeps = bool(body[0] & KEEPS)
            body.release()
        view.release()
        buf.release()                   # (a view of the channel's own buffer)
        if used:
            link.chan.consume(used)

    def _local(self, ring, links: list[Link]) -> tuple[int, int]:
        """The ring's ends held by guests (not by the bridge)."""
        return (ring.readers - sum(l.vr for l in links), ring.writers - sum(l.vw for l in links))

    def _ends(self, link: Link) -> None:
        """Hold the virtual ends the link's far side calls for."""
        want_w = int(link.beyond_w or bool(link.units))
        want_r = int(link.beyond_r)
        dr, dw = want_r - link.vr, want_w - link.vw
        if dr or dw:
            ring = self.shm.ring(link.idx)
            now = ring.add_ends(dr, dw)
            link.vr, link.vw = want_r, want_w
            if now == 0:                 # nobody holds the ring: free its slot
                from workers.vm.cpu import address, atomic_add
                used = self.shm.used()
                if used >> link.idx & 1:
                    atomic_add(address(self.shm.map) + abi.SHM.offsets["used"],
                               -(1 << link.idx))

    @staticmethod
    def _target(links: list[Link], local_r: int) -> Link | None:
        """Where the ring's bytes go: over the first link with readers
        beyond it, or, while the ring has local readers, with readers
        waiting beyond it; else nowhere (they stay for the local readers)."""
        return next((l for l in links if l.beyond_r and not l.chan.dead
                     and (l.hungry or not local_r)), None)

    def _tell(self, link: Link, links: list[Link], local_r: int, local_w: int,
              has_data: bool, hungry: bool) -> None:
        """Tell the far side of (link) whether writers and readers remain on
        ours (bytes still to go to it count as a writer), and whether a
        reader here waits for bytes."""
        others = [l for l in links if l is not link]
        w = local_w > 0 or (has_data and link.beyond_r) or any(
            l.beyond_w or l.units for l in others)
        r = local_r > 0 or any(l.beyond_r for l in others)
        # hunger matters only to a side that would keep the bytes otherwise
        h = link.keeps and not has_data and (
            hungry or any(l.hungry and l.beyond_r for l in others))
        k = local_r > 0
        if (w, r, h, k) != link.told:
            if link.chan.room() < _FRAME.size + 1:
                return
            link.chan.send(_FRAME.pack(STATE, 1) +
                           bytes([w * WRITERS | r * READERS | h * HUNGRY | k * KEEPS]))
            link.told = (w, r, h, k)

    def _lost(self, link: Link) -> None:
        peer = link.chan.peer
        where = f"{peer[0]}:{peer[1]}" if peer else "another host"
        self.say(f"pipe {link.idx}: its ends on {where} stopped answering: they are "
                 "closed (readers see end of file, writers EPIPE)"
                 + (f"; {sum(map(len, link.units))} bytes received were not yet read"
                    if link.units else ""))
        link.beyond_w = link.beyond_r = False
        link.units.clear()
        self._ends(link)
        self._drop(link)

    def _drop(self, link: Link) -> None:
        links = self.links.get(link.idx, [])
        if link in links:
            links.remove(link)
        if not links:
            self.links.pop(link.idx, None)
            self._seen.pop(link.idx, None)
        self.relay.deliver(link.chan, -1)
        if self.relay.routed(link.idx) is link.chan:
            self.relay.route(link.idx, None)
        self.ep.drop(link.chan.cid)

    def close(self) -> None:
        if config.get().bridge_stats:
            from workers.vm import bell
            fast = bell._bells.stats() if bell._bells is not None else {}
            self.say(f"pipe bridge: {self.relay.stats()} {self.ep.stats} fast doorbells: {fast}")
        self.relay.close()              # (its thread ends first)
        st = self.ep.stats
        if st["forged"] or st["duplicate"] or st["stale"]:
            self.say(f"pipe bridge: dropped {st['forged']} forged, {st['duplicate']} "
                     f"duplicate or replayed and {st['stale']} stale datagrams")
        self.ep.close()
