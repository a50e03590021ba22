"""execve: the host reads the path, argv and envp from the guest's memory
(untrusted: a bad pointer is EFAULT), finds the program in the job's tree
(workers/files/programs.py) and lays out its image in the VM's RAM; the
guest's kernel carries on from there.  A path the tree does not have
that names the program given on the host runs that again."""
from __future__ import annotations

import errno
import os

from workers import abi
from workers.errors import BadProgram, ExecError
from workers.files import linux, programs
from workers.vm import guestmem, layout

TYPE_CHECKING = False    # (not typing's: it takes longer to import than QEMU to start)
if TYPE_CHECKING:
    from workers.proc.table import Job, Proc


def execve(job: Job, p: Proc, path_p: int, argv_p: int, envp_p: int,
           dirh: int = linux.AT_FDCWD) -> None:
    """(p)'s EXEC request: (path_p) relative to the directory handle (dirh)."""
    vm = p.vm
    try:
        path = guestmem.read_str(vm, path_p)
    except OverflowError:
        return job.reply(p, -errno.ENAMETOOLONG)
    except ValueError:
        return job.reply(p, -errno.EFAULT)
    try:
        argv, envp = guestmem.read_strv(vm, argv_p), guestmem.read_strv(vm, envp_p)
    except OverflowError:
        return job.reply(p, -errno.E2BIG)
    except ValueError:
        return job.reply(p, -errno.EFAULT)
    try:
        found = _find(job, p, path, argv, dirh)
    except ExecError as err:
        job.say_once(p.pid, f"execve: {err.why}")
        return job.reply(p, -err.code)
    _load(job, p, found, envp)


def _find(job: Job, p: Proc, path: bytes, argv: list[bytes], dirh: int) -> programs.Found:
    limit = p.vm.layout.mmap_top
    own = {os.fsencode(job.program), os.fsencode(job.exe)}
    try:
        return job.files.find_program(p.pid, path, argv, dirh, limit)
    except ExecError as err:
        if err.code == errno.ENOENT and path in own:     # the program given on the host
            return programs.find_host(job.exe, argv, limit)
        raise


def _load(job: Job, p: Proc, found: programs.Found, envp: list[bytes]) -> None:
    from workers.fork.clone import punch     # (not on `unifork run`'s start path)
    vm = p.vm
    lay = vm.layout
    punch(vm.ram_fd, abi.USER_BASE, lay.ram_size - abi.USER_BASE)
    layout.load_program(vm.mem, found.prog)
    try:
        sp = layout.initial_stack(vm.mem, lay, found.prog, found.argv, envp, found.exe,
                                  os.getuid(), os.getgid())
    except BadProgram:      # arguments and environment too big for the stack
        return job.reply(p, -errno.E2BIG)
    abi.BOOT.put(vm.mem, abi.BOOT_ADDR, entry=found.prog.entry, sp=sp,
                 brk=(found.prog.end + abi.PAGE_SIZE - 1) & -abi.PAGE_SIZE,
                 mmap_top=lay.mmap_top, stack_low=lay.stack_low, exe=found.exe[:255])
    job.files.exec_done(p.pid, found)
    job.reply(p, 0)
