"""What a file call reads and writes of the guest's memory, so that it can
be served on another host: the regions its arguments name, by Linux's
system-call number (the numbers and argument orders of calls.py).

A process on another host than its job's home does its file calls there
(remote.py, server.py).  Its host reads the regions the call reads (paths,
data to write, iovec arrays, structures given), the home host writes them
into a sparse copy of the guest's memory, runs the call, and sends back
the regions the call writes (data read, stat buffers, directory entries),
cut to what the call returned where the result is a length.
"""
from __future__ import annotations

import struct

from workers.files.calls import NR
from workers.vm import guestmem

TYPE_CHECKING = False    # (not typing's: it takes longer to import than QEMU to start)
if TYPE_CHECKING:
    from workers.vm.machine import VM

MAX_REMOTE_RW = 4 << 20         # a read or write from another host: at most this, at once
F_GETLK, F_SETLK = 5, 6
FIONREAD = 0x541B

# By call: (strings: argument indices of paths; reads: (pointer, length) of
# what it reads, a length as an argument index or a fixed size (negative);
# writes: the same for what it writes, and whether cut to the result).
SPECS: dict[int, tuple] = {
    NR["openat"]: ((1,), (), ()),
    NR["read"]: ((), (), ((1, 2, True),)),
    NR["pread64"]: ((), (), ((1, 2, True),)),
    NR["write"]: ((), ((1, 2),), ()),
    NR["pwrite64"]: ((), ((1, 2),), ()),
    NR["fstat"]: ((), (), ((1, -144, False),)),
    NR["newfstatat"]: ((1,), (), ((2, -144, False),)),
    NR["statx"]: ((1,), (), ((4, -256, False),)),
    NR["getdents64"]: ((), (), ((1, 2, True),)),
    NR["readlinkat"]: ((1,), (), ((2, 3, True),)),
    NR["getcwd"]: ((), (), ((1, 2, True),)),
    NR["statfs"]: ((1,), (), ((2, -120, False),)),
    NR["fstatfs"]: ((), (), ((1, -120, False),)),
    NR["faccessat2"]: ((1,), (), ()), NR["mkdirat"]: ((1,), (), ()),
    NR["unlinkat"]: ((1,), (), ()), NR["chdir"]: ((1,), (), ()),
    NR["truncate"]: ((1,), (), ()), NR["fchmodat"]: ((1,), (), ()),
    NR["fchownat"]: ((1,), (), ()),
    NR["renameat2"]: ((1, 3), (), ()), NR["linkat"]: ((1, 3), (), ()),
    NR["symlinkat"]: ((1, 2), (), ()),
}
# No memory at all: close, lseek, ftruncate, fsync, fdatasync, flock,
# fchmod, fchown, fchdir.


def regions(vm: VM, nr: int, args: list[int]) -> tuple[list[tuple[int, bytes]], list[tuple]]:
    """What call (nr) with (args) reads of (vm)'s memory, as (address,
    bytes), and where it writes, as (address, length, cut to the result).
    A length past MAX_REMOTE_RW is cut in (args) itself (a short read or
    write, as Linux may give).

    :raise ValueError: a region outside the guest's memory (EFAULT).
    """
    reads: list[tuple[int, bytes]] = []
    writes: list[tuple] = []
    if nr in (NR["readv"], NR["preadv"], NR["writev"], NR["pwritev"]):
        return _vectored(vm, nr, args)
    if nr == NR["utimensat"]:
        if args[1]:
            reads.append(_string(vm, args[1]))
        if args[2]:
            reads.append((args[2], bytes(guestmem.span(vm, args[2], 32))))
        return reads, writes
    if nr == NR["fcntl"] and args[1] in (F_GETLK, F_SETLK):
        reads.append((args[2], bytes(guestmem.span(vm, args[2], 32))))
        writes.append((args[2], 32, False))
        return reads, writes
    if nr == NR["ioctl"] and args[1] == FIONREAD:
        return reads, [(args[2], 4, False)]
    strings, rd, wr = SPECS.get(nr, ((), (), ()))
    for i in strings:
        reads.append(_string(vm, args[i]))
    for ptr, n in rd:
        length = _length(args, n)
        reads.append((args[ptr], bytes(guestmem.span(vm, args[ptr], length))))
    for ptr, n, by_result in wr:
        length = _length(args, n)
        guestmem.span(vm, args[ptr], length)        # (checked here: EFAULT)
        writes.append((args[ptr], length, by_result))
    return reads, writes


def _length(args: list[int], n: int) -> int:
    if n < 0:
        return -n
    args[n] = min(max(args[n], 0), MAX_REMOTE_RW)
    return args[n]


def _string(vm: VM, addr: int) -> tuple[int, bytes]:
    if not addr:                        # (a reopen of /proc/self/fd/N: no path)
        return 0, b""
    return addr, guestmem.read_str(vm, addr, 4096) + b"\0"


def _vectored(vm: VM, nr: int, args: list[int]):
    """readv and the like: the iovec array (lengths cut to MAX_REMOTE_RW
    in all), and its buffers."""
    count = args[2]
    if not 0 <= count <= 1024:
        raise OverflowError
    array = bytearray(guestmem.span(vm, args[1], 16 * count))
    reads, writes, total = [(args[1], array)], [], 0
    out = nr in (NR["readv"], NR["preadv"])
    for i, (base, n) in enumerate(struct.iter_unpack("<QQ", bytes(array))):
        n = min(n, MAX_REMOTE_RW - total)
        struct.pack_into("<QQ", array, 16 * i, base, n)
        total += n
        if not n:
            continue
        if out:
            guestmem.span(vm, base, n)
            writes.append((base, n, True))
        else:
            reads.append((base, bytes(guestmem.span(vm, base, n))))
    return reads, writes


def cut(writes: list[tuple], ret: int) -> list[tuple[int, int]]:
    """The (address, length) a call that returned (ret) wrote: all of
    each fixed region, and of the regions cut to the result, the first
    (ret) bytes in their order."""
    out, left = [], max(ret, 0)
    for addr, n, by_result in writes:
        if not by_result:
            out.append((addr, n))
            continue
        take = min(n, left)
        left -= take
        if take:
            out.append((addr, take))
    return out
