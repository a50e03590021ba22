"""The host's end of the rings (struct uf_ring) and the job's shared region.

The job's shared-memory region is a memfd that every VM of the job on this
host maps as its second NUMA node; the host maps it too.  A ring's producer
and consumer each follow the protocol in unifork_abi.h: move a counter,
fence, and wake the other side if its wait flag is up.
"""
from __future__ import annotations

import mmap
import os

from . import abi, cpu

_HDR = 192  # sizeof(struct uf_ring)


class HostRing:
    """One ring as the host sees it, inside a mapped buffer."""

    def __init__(self, buf: mmap.mmap, off: int) -> None:
        self.hdr = abi.Ring.from_buffer(buf, off)
        self._data = memoryview(buf)[off + _HDR:off + _HDR + self.hdr.size]
        self.size = self.hdr.size

    @classmethod
    def create(cls, buf: mmap.mmap, off: int, size: int) -> "HostRing":
        """Make an empty ring with one writer and one reader (memory must be zero)."""
        hdr = abi.Ring.from_buffer(buf, off)
        hdr.size, hdr.writers, hdr.readers = size, 1, 1
        del hdr
        return cls(buf, off)

    # -- consumer side -------------------------------------------------
    def readable(self) -> int:
        return self.hdr.head - self.hdr.tail

    def read(self, limit: int = 1 << 30) -> tuple[bytes, bool]:
        """Take what is there, up to (limit) bytes.

        :return: the bytes, and whether the producer waits to be woken.
        """
        h = self.hdr
        tail = h.tail
        n = min(h.head - tail, limit)
        if n == 0:
            return b"", False
        off = tail & (self.size - 1)
        first = min(n, self.size - off)
        out = bytes(self._data[off:off + first]) + bytes(self._data[:n - first])
        h.tail = tail + n
        return out, self._take_flag("wr_wait")

    def eof(self) -> bool:
        """No writer is left and everything written has been read."""
        return self.hdr.writers == 0 and self.readable() == 0

    # -- producer side -------------------------------------------------
    def space(self) -> int:
        return self.size - (self.hdr.head - self.hdr.tail)

    def write(self, data: bytes) -> tuple[int, bool]:
        """Put as much of (data) as fits.

        :return: the count written, and whether the consumer waits to be woken.
        """
        h = self.hdr
        head = h.head
        n = min(len(data), self.size - (head - h.tail))
        if n == 0:
            return 0, False
        off = head & (self.size - 1)
        first = min(n, self.size - off)
        self._data[off:off + first] = data[:first]
        self._data[:n - first] = data[first:n]
        h.head = head + n
        return n, self._take_flag("rd_wait")

    def close_write(self) -> bool:
        """Drop the host's write end; returns whether the reader waits."""
        self.hdr.writers = max(0, self.hdr.writers - 1)
        return self._take_flag("rd_wait")

    def close_read(self) -> bool:
        """Drop the host's read end (EPIPE for writers); returns whether a writer waits."""
        self.hdr.readers = max(0, self.hdr.readers - 1)
        return self._take_flag("wr_wait")

    # -- waiting ---------------------------------------------------------
    def arm(self, flag: str) -> None:
        """Raise our wait flag before sleeping; the caller re-checks after."""
        setattr(self.hdr, flag, 1)
        cpu.mfence()

    def _take_flag(self, flag: str) -> bool:
        cpu.mfence()
        if getattr(self.hdr, flag):
            setattr(self.hdr, flag, 0)
            return True
        return False

    def release(self) -> None:
        """Drop the views into the buffer so it can be unmapped."""
        self._data.release()
        del self.hdr


class SharedRegion:
    """A job's shared-memory region on this host: a memfd, mapped here."""

    def __init__(self, size: int = abi.SHM_SIZE) -> None:
        self.size = size
        self.fd = os.memfd_create("unifork-shm", 0)
        os.ftruncate(self.fd, size)
        self.map = mmap.mmap(self.fd, size)
        hdr = abi.Shm.from_buffer(self.map, 0)
        hdr.magic, hdr.abi_version, hdr.nrings = abi.SHM_MAGIC, abi.ABI_VERSION, abi.SHM_RINGS
        del hdr
        self._rings: dict[int, HostRing] = {}
        self._next = 0

    def new_ring(self) -> tuple[int, HostRing]:
        """Allocate the next ring slot: an empty ring with one end each side."""
        if self._next >= abi.SHM_RINGS:
            raise RuntimeError("no free ring slot in the shared region")
        idx, self._next = self._next, self._next + 1
        ring = HostRing.create(self.map, abi.shm_ring_off(idx), abi.RING_SIZE)
        self._rings[idx] = ring
        return idx, ring

    def close(self) -> None:
        for r in self._rings.values():
            r.release()
        self._rings.clear()
        self.map.close()
        os.close(self.fd)
