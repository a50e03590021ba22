"""The host's end of the rings (struct uf_ring) and the job's shared region.

The job's shared-memory region is a memfd that every VM of the job on this
host maps as its second NUMA node; the host maps it too.  A ring's producer
and consumer each follow the protocol in unifork_abi.h: move a counter,
fence, and wake the other side if its wait flag is up.
"""
from __future__ import annotations

import mmap
import os

from workers import abi

_R = abi.RING
_HEAD, _TAIL = _R.offsets["head"], _R.offsets["tail"]
_WRITERS, _READERS = _R.offsets["writers"], _R.offsets["readers"]
_ENDS = _READERS                # readers | writers << 32: one atomic word
_FLAG = {"wr_wait": _R.offsets["wr_wait"], "rd_wait": _R.offsets["rd_wait"]}
_LOCKS = (_R.offsets["wlock"], _R.offsets["rlock"])
_HUNGRY, _BRIDGED = _R.offsets["hungry"], _R.offsets["bridged"]
_Q, _I = 8, 4                   # the width of a counter or flag, in bytes
_USED = abi.SHM.offsets["used"]


def _fence() -> None:
    """A full memory fence (x86 orders everything but store-then-load)."""
    from workers.vm.cpu import mfence  # ctypes: kept off unifork run's start-up path
    global _fence
    _fence = mfence
    mfence()


class HostRing:
    """One ring as the host sees it, at (off) inside a mapped buffer."""

    def __init__(self, buf: mmap.mmap, off: int, base: "list[int] | None" = None) -> None:
        self._buf = buf
        self._off = off
        self._base = base if base is not None else [0]  # the mapping's address, shared
        self.size = _R.get(buf, off, "size")
        if not 0 < self.size <= abi.RING_SIZE or self.size & (self.size - 1):
            raise ValueError(f"ring at {off:#x} has a bad size {self.size}")
        self.corrupt = False    # a guest broke the counters: we stop using it
        self._data = memoryview(buf)[off + _R.size:off + _R.size + self.size]
        # The header as words.  Guests move these counters while we look: each
        # load and store must be one instruction, as a memoryview's item is
        # (struct.pack_into zeroes the field first and then writes it byte by
        # byte: a guest saw a head of 0, or half-written, and read past it).
        header = memoryview(buf)[off:off + _R.size]
        self._w64, self._w32 = header.cast("Q"), header.cast("I")
        header.release()

    @property
    def offset(self) -> int:
        """Where the ring is in its buffer."""
        return self._off

    @classmethod
    def create(cls, buf: mmap.mmap, off: int, size: int) -> "HostRing":
        """Make an empty ring with one writer and one reader (memory must be zero)."""
        _R.put(buf, off, size=size, writers=1, readers=1)
        return cls(buf, off)

    def _get(self, at: int, width: int = _Q) -> int:
        return self._w64[at >> 3] if width == _Q else self._w32[at >> 2]

    def _set(self, at: int, v: int, width: int = _Q) -> None:
        if width == _Q:
            self._w64[at >> 3] = v & 0xFFFFFFFFFFFFFFFF
        else:
            self._w32[at >> 2] = v

    @property
    def writers(self) -> int:
        return self._get(_WRITERS, _I)

    @property
    def readers(self) -> int:
        return self._get(_READERS, _I)

    # -- consumer side -------------------------------------------------
    def _used(self) -> int:
        """Bytes in the ring; marks the ring corrupt (and says 0) when the
        counters are impossible, as only a misbehaving guest makes them.

        Only for rings the host is an end of: its own counter does not move
        under it, so the sample is exact.  Between two guests, both counters
        move while they are read: see may_read/may_write."""
        n = (self._get(_HEAD) - self._get(_TAIL)) % 2**64
        if n > self.size:
            self.corrupt = True
        return 0 if self.corrupt else n

    def readable(self) -> int:
        return self._used()

    def read(self, limit: int = 1 << 30) -> tuple[bytes, bool]:
        """Take what is there, up to (limit) bytes (none from a corrupt ring).

        :return: the bytes, and whether the producer waits to be woken.
        """
        tail = self._get(_TAIL)
        n = min(self._used(), limit)
        if n == 0:
            return b"", False
        off = tail & (self.size - 1)
        first = min(n, self.size - off)
        out = bytes(self._data[off:off + first])
        if n > first:
            out += bytes(self._data[:n - first])
        self._set(_TAIL, tail + n)
        return out, self._take_flag("wr_wait")

    # -- producer side -------------------------------------------------
    def space(self) -> int:
        used = self._used()
        return 0 if self.corrupt else self.size - used

    def write(self, data: bytes) -> tuple[int, bool]:
        """Put as much of (data) as fits.

        :return: the count written, and whether the consumer waits to be woken.
        """
        head = self._get(_HEAD)
        n = min(len(data), self.space())
        if n == 0:
            return 0, False
        off = head & (self.size - 1)
        first = min(n, self.size - off)
        self._data[off:off + first] = data[:first]
        self._data[:n - first] = data[first:n]
        self._set(_HEAD, head + n)
        return n, self._take_flag("rd_wait")

    def add_ends(self, readers: int, writers: int) -> int:
        """Atomically add to the open ends (negative: close), as guests do;
        returns the new readers | writers << 32."""
        from workers.vm.cpu import address, atomic_add
        if not self._base[0]:
            self._base[0] = address(self._buf)
        return atomic_add(self._base[0] + self._off + _ENDS, readers + (writers << 32))

    def close_write(self) -> bool:
        """Drop the host's write end (EOF); returns whether the reader waits."""
        self.add_ends(0, -1)
        return self._take_flag("rd_wait")

    def close_read(self) -> bool:
        """Drop the host's read end (EPIPE); returns whether a writer waits."""
        self.add_ends(-1, 0)
        return self._take_flag("wr_wait")

    # -- as one of several writers or readers (the pipe bridge) ----------
    def _lock(self, which: int) -> int:
        from workers.vm.cpu import address, cas32
        if not self._base[0]:
            self._base[0] = address(self._buf)
        at = self._base[0] + self._off + _LOCKS[which]
        while not cas32(at, 0, abi.HOST_LOCKER):
            pass                    # guests hold it only while they copy
        return at

    def _unlock(self, which: int) -> None:
        _fence()
        self._set(_LOCKS[which], 0, _I)

    def _room(self) -> int:
        """Free bytes, sampled while others move both counters: the tail is
        read first, so the guess errs on the full side; never 'corrupt'."""
        tail = self._get(_TAIL)
        used = (self._get(_HEAD) - tail) % 2**64
        return self.size - used if used <= self.size else 0

    def write_whole(self, data: bytes) -> bool:
        """Put all of (data) in at once, under the writers' lock, so that no
        guest's write lands inside it; False if there is not room for it all."""
        if self._room() < len(data):
            return False
        self._lock(0)
        try:
            if self._room() < len(data):     # under the lock the head is ours
                return False
            head = self._get(_HEAD)
            off = head & (self.size - 1)
            first = min(len(data), self.size - off)
            self._data[off:off + first] = data[:first]
            self._data[:len(data) - first] = data[first:]
            _fence()
            self._set(_HEAD, head + len(data))
            return True
        finally:
            self._unlock(0)

    def release_locks(self, pid: int) -> None:
        """Free the copy locks a dead process (pid) held."""
        for at in _LOCKS:
            if self._get(at, _I) == pid:
                self._set(at, 0, _I)

    # -- readiness of a ring between guests (for waking its sleepers) -----
    # Sampled while guests move both counters: never judged corrupt here; a
    # wrong guess only wakes a sleeper that checks again.
    def may_read(self) -> bool:
        return self._get(_HEAD) != self._get(_TAIL) or self.writers == 0

    @property
    def bridged(self) -> int:
        return self._get(_BRIDGED, _I)

    @bridged.setter
    def bridged(self, v: int) -> None:
        self._set(_BRIDGED, v, _I)

    @property
    def hungry(self) -> int:
        """Guests waiting to read this (bridged) ring while it is empty."""
        return self._get(_HUNGRY, _I)

    def state(self) -> tuple[int, int, int, int]:
        """head, tail, the ends word and hungry: when none of them moved,
        nothing about the ring changed for the bridge."""
        w = self._w64
        return w[_HEAD >> 3], w[_TAIL >> 3], w[_ENDS >> 3], self._w32[_HUNGRY >> 2]

    def readable_between_guests(self) -> bool:
        """Bytes are waiting (a sample: never judged corrupt)."""
        return self._get(_HEAD) != self._get(_TAIL)

    def may_write(self) -> bool:
        tail = self._get(_TAIL)
        return (self._get(_HEAD) - tail) % 2**64 < self.size or self.readers == 0

    # -- waiting ---------------------------------------------------------
    def arm(self, flag: str) -> None:
        """Raise our wait flag before sleeping; the caller re-checks after."""
        self._set(_FLAG[flag], 1, _I)
        _fence()

    def _take_flag(self, flag: str) -> bool:
        _fence()
        if self._get(_FLAG[flag], _I):
            self._set(_FLAG[flag], 0, _I)
            return True
        return False

    def release(self) -> None:
        """Drop the views into the buffer so that it can be unmapped."""
        for view in (self._data, self._w64, self._w32):
            view.release()


class SharedRegion:
    """A job's shared-memory region on this host: a memfd, mapped here."""

    def __init__(self, size: int = abi.SHM_SIZE) -> None:
        self.size = size
        self.fd = os.memfd_create("unifork-shm", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, size)
        self.map = mmap.mmap(self.fd, size)
        self._rings: dict[int, HostRing] = {}
        self._header()

    def _header(self) -> None:
        abi.SHM.put(self.map, 0, magic=abi.SHM_MAGIC, abi_version=abi.ABI_VERSION,
                    nrings=abi.SHM_RINGS)
        self._base = [0]

    def new_ring(self) -> tuple[int, HostRing]:
        """Allocate a ring slot for the host's use (stdio): an empty ring
        with one end each side.  Only before any guest runs."""
        used = abi.SHM.get(self.map, 0, "used")
        idx = next(i for i in range(abi.SHM_RINGS) if not used >> i & 1)
        abi.SHM.put(self.map, 0, used=used | 1 << idx)
        ring = HostRing.create(self.map, abi.shm_ring_off(idx), abi.RING_SIZE)
        ring._base = self._base
        self._rings[idx] = ring
        return idx, ring

    def ring(self, idx: int) -> HostRing:
        """The host's view of ring slot (idx), allocated by anyone."""
        r = self._rings.get(idx)
        if r is None:
            r = self._rings[idx] = HostRing(self.map, abi.shm_ring_off(idx), self._base)
        return r

    def renew(self) -> None:
        """Make the region as new: its pages freed (they read as zero in
        every VM that maps it), no ring of its last processes left
        (arrival.keep)."""
        for r in self._rings.values():
            r.release()
        self._rings.clear()
        self.map.madvise(mmap.MADV_REMOVE)
        self._header()

    def used(self) -> int:
        """The bitmap of ring slots in use."""
        return abi.SHM.get(self.map, 0, "used")

    def close(self) -> None:
        for r in self._rings.values():
            r.release()
        self._rings.clear()
        self.map.close()
        os.close(self.fd)
