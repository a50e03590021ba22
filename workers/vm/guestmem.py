"""A guest's memory as the host reads and writes it on a request's behalf.

Memory is identity mapped (unifork_abi.h), so the program's pointers are
offsets in the VM's RAM file, which the host has mapped (VM.mem).  Every
pointer comes from the guest and is untrusted: each access is checked to
lie in its RAM, and one that does not is a ValueError (the request's
EFAULT), never the host's trouble.
"""
from __future__ import annotations

import struct

from workers import abi

TYPE_CHECKING = False    # (not typing's: it takes longer to import than QEMU to start)
if TYPE_CHECKING:
    from workers.vm.machine import VM

MAX_ARGS, MAX_ARG_BYTES = 4096, 1 << 20


def span(vm: VM, addr: int, n: int) -> memoryview:
    """The (n) bytes at (addr), to read or write in place.

    :raise ValueError: they are not all in (vm)'s RAM.
    """
    if n < 0 or addr < 0 or addr + n > vm.layout.ram_size:
        raise ValueError(f"{n} bytes at {addr:#x}: outside the guest's memory")
    return memoryview(vm.mem)[addr:addr + n]


def read_str(vm: VM, addr: int, limit: int = 4096) -> bytes:
    """The NUL-terminated string at (addr) in (vm)'s program memory.

    :raise ValueError: it is not there.
    :raise OverflowError: it is (limit) bytes or longer (ENAMETOOLONG, E2BIG).
    """
    if not abi.USER_BASE <= addr < vm.layout.ram_size:
        raise ValueError(f"a string at {addr:#x}: outside the program's memory")
    stop = min(addr + limit, vm.layout.ram_size)
    end = vm.mem.find(b"\0", addr, stop)
    if end < 0:
        if stop < addr + limit:
            raise ValueError(f"a string at {addr:#x}: runs past the guest's memory")
        raise OverflowError
    return vm.mem[addr:end]


def read_strv(vm: VM, addr: int) -> list[bytes]:
    """The NULL-terminated array of strings at (addr) (argv, envp).

    :raise ValueError: a pointer outside the program's memory.
    :raise OverflowError: more than the kernel's limits (E2BIG).
    """
    out, total = [], 0
    if addr == 0:
        return out
    for i in range(MAX_ARGS):
        at = addr + 8 * i
        if not abi.USER_BASE <= at <= vm.layout.ram_size - 8:
            raise ValueError(f"an array at {addr:#x}: outside the program's memory")
        ptr = struct.unpack_from("<Q", vm.mem, at)[0]
        if ptr == 0:
            return out
        s = read_str(vm, ptr, MAX_ARG_BYTES)
        total += len(s) + 1
        if total > MAX_ARG_BYTES:
            raise OverflowError
        out.append(s)
    raise OverflowError


def iovecs(vm: VM, addr: int, count: int) -> list[memoryview]:
    """The buffers of the struct iovec array at (addr), (count) of them.

    :raise ValueError: the array or a buffer outside the guest's memory.
    """
    if not 0 <= count <= 1024:
        raise OverflowError
    raw = span(vm, addr, 16 * count)
    return [span(vm, base, n) for base, n in struct.iter_unpack("<QQ", raw) if n]
