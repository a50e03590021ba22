"""The fork engine: a cooperative clone into a parked VM of the job.

The guest does its share (unifork_abi.h, "Vessels"; guest/kernel/park.c):
the parent's kernel saves its own context in its RAM and asks to fork;
the child's VM is one whose process has ended, or that booted with none,
parked in its kernel.  The host, while the parent waits:

1. fills the parked VM's RAM file with the parent's (fill): the extents the
   parent holds are copied in place, into pages the VM already has where it
   has them; everything else is punched, so that nothing of the VM's last
   occupant survives and what the parent never touched reads as zero; the
   park page, where the parked kernel runs, is left alone;
2. makes the copy the child (answer_child): its pid, ppid and entropy in
   its boot page, fork's reply (0) in its control page, nothing of the
   parent's pending signals or alarm;
3. tells it what its parent's clocks read (resume_clock), and lets it go
   (VM.go): it restores the context and returns 0 from fork.

No QEMU starts, none is paused, nothing migrates, and the parent runs on
(it only waits in its kernel): what the child needs of the parent's RAM
does not change while it waits.  The caller answers the parent.
"""
from __future__ import annotations

import ctypes
import errno
import os
import time

from workers import abi
from workers.vm.machine import VM

FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2
_libc = ctypes.CDLL(None, use_errno=True)
PARK = (abi.PARK_ADDR, abi.PARK_ADDR + abi.PARK_SIZE)    # never copied, never punched


def punch(fd: int, offset: int, length: int) -> None:
    """Free the pages of [offset, offset+length) of a memfd: they read as zero."""
    if length <= 0:
        return
    if _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                       ctypes.c_long(offset), ctypes.c_long(length)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"fallocate(PUNCH_HOLE): {os.strerror(e)}")


def data_extents(fd: int, size: int):
    """The (offset, length) extents of memfd (fd) that hold data."""
    off = 0
    while off < size:
        try:
            data = os.lseek(fd, off, os.SEEK_DATA)
        except OSError as err:
            if err.errno == errno.ENXIO:       # no data past off
                return
            raise
        if data >= size:
            return
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), size)
        yield data, hole - data
        off = hole


def child_extents(fd: int, size: int):
    """What of a parent's RAM (memfd (fd)) a child gets: its data extents,
    but the park page (the child's VM has its own, in use)."""
    lo, hi = PARK
    for off, length in data_extents(fd, size):
        end = off + length
        if off < lo:
            yield off, min(end, lo) - off
        if end > hi:
            yield max(off, hi), end - max(off, hi)


def holes(extents, size: int):
    """The gaps that (extents), sorted, leave in [0, size), but the park page."""
    at = 0
    for off, length in [*extents, (size, 0)]:
        for a, b in ((at, min(off, PARK[0])), (max(at, PARK[1]), off)):
            if b > a:
                yield a, b - a
        at = max(at, off + length)


def fill(src: int, dst: int, size: int) -> int:
    """Make memfd (dst), a parked VM's RAM, its park page aside, a copy of
    memfd (src): src's extents copied in place (into pages (dst) holds
    already, where it does), all else punched (cheap where it holds
    nothing: cheaper than finding what it holds).  (dst) stays mapped by
    its QEMU, so it is never truncated or replaced.  Returns the bytes
    copied."""
    extents = list(child_extents(src, size))
    for off, length in holes(extents, size):
        punch(dst, off, length)
    for off, length in extents:
        pos, end = off, off + length
        while pos < end:
            n = os.copy_file_range(src, dst, end - pos, pos, pos)
            if n <= 0:
                raise OSError(errno.EIO, "copy_file_range copied nothing")
            pos += n
    return sum(length for _, length in extents)


def fill_received(child: VM, got) -> None:
    """Make parked (child)'s RAM the fork stream (got) (wire.Received)
    has opened: its extents from UF_USER_BASE on are in place already;
    punch what else the child holds, and write what was kept aside, but
    the park page."""
    for off, length in holes(got.extents, child.layout.ram_size):
        punch(child.ram_fd, off, length)
    lo, hi = PARK
    for off, data in got.aside:
        end = off + len(data)
        for a, b in ((off, min(end, lo)), (max(off, hi), end)):
            if b > a:
                child.mem[a:b] = data[a - off:b - off]


def answer_child(mem, pid: int, ppid: int) -> None:
    """Make a cloned guest's memory the child's, before it runs: its pid,
    its parent, a seed of its own, and fork's answer, 0.  Nothing the
    parent had posted is the child's (it may be sent signals of its own as
    soon as the parent hears of it, while musl's fork still blocks them),
    nor its alarm, its sleep, or its children."""
    abi.BOOT.put(mem, abi.BOOT_ADDR, pid=pid, ppid=ppid, seed=os.urandom(32), tsc_resume=0)
    seq = abi.CTL.get(mem, abi.CTL_ADDR, "req_seq")
    abi.CTL.put(mem, abi.CTL_ADDR, ret=0, val=(0, 0), sig_posted=0, alarm_real_ns=0,
                asleep=abi.Sleep.NONE, kids_alive=0, kids_unlisted=0,
                kids=bytes(abi.KIDS * abi.KID.size))
    abi.CTL.put(mem, abi.CTL_ADDR, rep_seq=seq)


def make_child(parent: VM, child: VM, pid: int, ppid: int) -> int:
    """Fill parked (child) with a copy of (parent), which waits for its fork
    to be answered, and make it the child (pid, ppid); it runs once told
    its clock and let go (start).  Returns the bytes of RAM copied."""
    copied = fill(parent.ram_fd, child.ram_fd, parent.layout.ram_size)
    answer_child(child.mem, pid, ppid)
    return copied


def start(child: VM, reading: int, at: float, offset: int | None = None) -> None:
    """Let a made child run, its clocks reading its parent's (resume_clock)."""
    resume_clock(child, reading, at, offset)
    child.go()


def clock_offset(vm: VM) -> int | None:
    """What (vm)'s clocks read minus the host's TSC, if the host knows: a VM
    that booted with the host's TSC says so (0), a child's the host set."""
    if vm.clock_k is None and abi.CTL.get(vm.mem, abi.CTL_ADDR, "tsc_is_host"):
        vm.clock_k = 0
    return vm.clock_k


def resume_clock(child: VM, reading: int, at: float, offset: int | None = None) -> None:
    """Tell a child what its parent's clocks read, as of the host's TSC now
    (the child reads it as it first runs, clock.c): the host's TSC plus
    their (offset), when known; else (reading) at (at) (monotonic) plus the
    time since.  From then on the host knows the child's offset."""
    from workers.vm import cpu
    tsc_khz = abi.BOOT.get(child.mem, abi.BOOT_ADDR, "tsc_khz")
    host_tsc = cpu.rdtsc()
    value = (host_tsc + offset if offset is not None
             else reading + int((time.monotonic() - at) * tsc_khz * 1000))
    abi.BOOT.put(child.mem, abi.BOOT_ADDR, host_tsc=host_tsc)
    abi.BOOT.put(child.mem, abi.BOOT_ADDR, tsc_resume=value)   # the child waits for it
    child.clock_k = value - host_tsc
