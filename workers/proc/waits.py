"""wait: the host's answer to a WAIT request, and the children's table it
keeps in each process's control page so that most waits need none
(unifork_abi.h, "Children")."""
from __future__ import annotations

import errno
import os

from workers import abi

TYPE_CHECKING = False    # (not typing's: it takes longer to import than QEMU to start)
if TYPE_CHECKING:
    from workers.proc.table import Job, Proc

WNOHANG, WNOWAIT = 1, 0x01000000


def wait(job: Job, p: Proc, pid: int, options: int) -> None:
    """(p)'s WAIT request, for child (pid) or any (-1): the first that has
    ended, 0 with WNOHANG, ECHILD; else it is parked until one ends."""
    kids_waited(job, p)
    kids = [c for c in job.procs.values() if c.ppid == p.pid and not c.reaped
            and (pid == -1 or c.pid == pid)]
    if not kids:
        return job.reply(p, -errno.ECHILD)
    done = next((c for c in kids if not c.running), None)
    if done is not None:
        if not options & WNOWAIT:
            done.reaped = True
            unlist_kid(p, done)
        return job.reply(p, done.pid, done.wstatus, os.getuid())
    if options & WNOHANG:
        return job.reply(p, 0)
    p.parked_seq = abi.CTL.get(p.vm.mem, abi.CTL_ADDR, "req_seq")


def retry_parked(job: Job, parent: Proc) -> None:
    """Answer (parent)'s parked wait again, if one is: a child has ended."""
    if (parent.running and parent.parked_seq >= 0 and parent.vm is not None
            and parent.sending is None):
        args = abi.CTL.get(parent.vm.mem, abi.CTL_ADDR, "arg")
        parent.parked_seq = -1
        wait(job, parent, args[0], args[1])


def publish_kids(job: Job, parent: Proc | None) -> None:
    """Write in (parent)'s control page what its waits can answer
    without asking: its children that have ended and are not waited for
    (entries, each whole before its state), then how many it has still
    running.  After any change to its children, before it is told."""
    if parent is None or not parent.running or parent.remote or parent.vm is None:
        return
    mem = parent.vm.mem
    kids_waited(job, parent)
    listed = set(parent.kid_slots.values())
    free = [i for i in range(abi.KIDS) if i not in parent.kid_slots]
    alive = unlisted = 0
    for c in job.procs.values():
        if c.ppid != parent.pid or c.reaped:
            continue
        if c.running:
            alive += 1
        elif c.pid not in listed:
            if not free:
                unlisted += 1
                continue
            slot = free.pop(0)
            at = abi.kid_addr(slot)
            abi.KID.put(mem, at, pid=c.pid, wstatus=c.wstatus)
            abi.KID.put(mem, at, state=abi.Kid.ENDED)
            parent.kid_slots[slot] = c.pid
    abi.CTL.put(mem, abi.CTL_ADDR, kids_unlisted=unlisted)
    abi.CTL.put(mem, abi.CTL_ADDR, kids_alive=alive)


def kids_waited(job: Job, parent: Proc) -> None:
    """The entries of (parent)'s table that its waits took: those
    children are reaped, and the entries free again.  Before anything
    that judges whether they are."""
    if parent.vm is None:
        return
    mem = parent.vm.mem
    for slot, pid in list(parent.kid_slots.items()):
        at = abi.kid_addr(slot)
        state = abi.KID.get(mem, at, "state")
        if state == abi.Kid.ENDED and abi.KID.get(mem, at, "pid") == pid:
            continue
        if state == abi.Kid.WAITED and abi.KID.get(mem, at, "pid") == pid \
                and pid in job.procs:
            job.procs[pid].reaped = True
        # (else the guest wrote over it: its loss; the child stays unwaited)
        abi.KID.put(mem, at, state=abi.Kid.EMPTY)
        del parent.kid_slots[slot]


def unlist_kid(parent: Proc, child: Proc) -> None:
    """(child) was reported to (parent) by a WAIT request: out of its
    table (the guest, waiting for the reply, does not look at it)."""
    for slot, pid in list(parent.kid_slots.items()):
        if pid == child.pid:
            abi.KID.put(parent.vm.mem, abi.kid_addr(slot), state=abi.Kid.EMPTY)
            del parent.kid_slots[slot]
