"""execve of the program's own image: the host reads the path, argv and
envp from the guest's memory (untrusted: a bad pointer is EFAULT) and lays
out a fresh image in its RAM; the guest's kernel carries on from there."""
from __future__ import annotations

import errno
import os
import struct

from workers import abi
from workers.errors import BadProgram
from workers.vm import layout

TYPE_CHECKING = False    # (not typing's: it takes longer to import than QEMU to start)
if TYPE_CHECKING:
    from workers.proc.table import Job, Proc
    from workers.vm.machine import VM

MAX_ARGS, MAX_ARG_BYTES = 4096, 1 << 20


def read_str(vm: VM, addr: int, limit: int = 4096) -> bytes:
    """The NUL-terminated string at (addr) in (vm)'s program memory.

    :raise ValueError: it is not there, or longer than (limit).
    """
    if not abi.USER_BASE <= addr < vm.layout.ram_size:
        raise ValueError
    end = vm.mem.find(b"\0", addr, min(addr + limit, vm.layout.ram_size))
    if end < 0:
        raise ValueError
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
            raise ValueError
        ptr = struct.unpack_from("<Q", vm.mem, at)[0]
        if ptr == 0:
            return out
        s = read_str(vm, ptr, MAX_ARG_BYTES)
        total += len(s) + 1
        if total > MAX_ARG_BYTES:
            raise OverflowError
        out.append(s)
    raise OverflowError


def execve(job: Job, p: Proc, path_p: int, argv_p: int, envp_p: int) -> None:
    """(p)'s EXEC request: its own image again, with new arguments."""
    vm = p.vm
    try:
        path = read_str(vm, path_p)
        argv, envp = read_strv(vm, argv_p), read_strv(vm, envp_p)
    except OverflowError:
        return job.reply(p, -errno.E2BIG)
    except ValueError:
        return job.reply(p, -errno.EFAULT)
    allowed = {os.fsencode(job.program), os.fsencode(job.exe), b"/proc/self/exe"}
    if path not in allowed:
        job.say_once(p.pid, f"execve({path.decode(errors='replace')}): only the "
                     "program's own image can be run; ENOENT")
        return job.reply(p, -errno.ENOENT)
    from workers.fork.clone import punch     # (not on `unifork run`'s start path)
    lay = vm.layout
    punch(vm.ram_fd, abi.USER_BASE, lay.ram_size - abi.USER_BASE)
    layout.load_program(vm.mem, job.prog)
    try:
        sp = layout.initial_stack(vm.mem, lay, job.prog, argv, envp, os.fsencode(job.exe),
                                  os.getuid(), os.getgid())
    except BadProgram:      # arguments and environment too big for the stack
        return job.reply(p, -errno.E2BIG)
    abi.BOOT.put(vm.mem, abi.BOOT_ADDR, entry=job.prog.entry, sp=sp,
                 brk=(job.prog.end + abi.PAGE_SIZE - 1) & -abi.PAGE_SIZE,
                 mmap_top=lay.mmap_top, stack_low=lay.stack_low)
    job.reply(p, 0)
