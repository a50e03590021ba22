"""fork in the process table: onto a parked VM here (workers/fork/), or,
when this host has no free slot, onto another host through the job's link
(the parent's request is answered when the "forked" message comes)."""
from __future__ import annotations

import errno

from workers import abi
from workers.proc import remote

TYPE_CHECKING = False    # (not typing's: it takes longer to import than QEMU to start)
if TYPE_CHECKING:
    from workers.proc.table import Job, Proc
    from workers.vm.machine import VM


class Outgoing:
    """A fork onto another host, as the link takes it: the child (pid) of
    (ppid), whose VM (parent_vm) asked at (asked) (monotonic) with its TSC
    reading (parent_tsc) at (tsc_khz); the child's argv[0] (name), VM size,
    and the links of the pipes it inherits (bridge.link_child).  (Not a
    dataclass: dataclasses costs `unifork run` 10 ms to import.)"""

    __slots__ = ("parent_vm", "pid", "ppid", "asked", "parent_tsc", "tsc_khz", "name",
                 "mem_mib", "pipes")

    def __init__(self, parent_vm: VM, pid: int, ppid: int, asked: float, parent_tsc: int,
                 tsc_khz: int, name: str, mem_mib: int, pipes: list[dict]) -> None:
        self.parent_vm, self.pid, self.ppid, self.asked = parent_vm, pid, ppid, asked
        self.parent_tsc, self.tsc_khz, self.name = parent_tsc, tsc_khz, name
        self.mem_mib, self.pipes = mem_mib, pipes


def fork(job: Job, parent: Proc, asked: float) -> None:
    """Clone (parent), whose request arrived at (asked) (monotonic)."""
    if job.count() >= job.max_procs:
        job.say_once(parent.pid, f"fork: the job's limit of {job.max_procs} "
                     "processes is reached: EAGAIN")
        return job.reply(parent, -errno.EAGAIN)
    if not job.slots.take():
        if job.link is not None:
            return fork_remote(job, parent, asked)
        job.say_once(parent.pid, f"fork: this host's {job.slots.limit} slots "
                     "(VMs) are all in use: EAGAIN")
        return job.reply(parent, -errno.EAGAIN)
    try:
        child_vm = job.pool.take(job.fork_wait)
    except Exception as err:        # noqa: BLE001 - QEMU cannot start: EAGAIN
        job.slots.give()
        job.say(parent.pid, f"fork failed: {err}")
        return job.reply(parent, -errno.EAGAIN)
    if child_vm is None:
        job.slots.give()
        job.say_once(parent.pid, f"fork: no VM was ready within {job.fork_wait:g} s: "
                     "EAGAIN")
        return job.reply(parent, -errno.EAGAIN)
    from workers.fork import clone     # (not on `unifork run`'s start path)
    pid = job.new_pid()
    try:
        clone.make_child(parent.vm, child_vm, pid, parent.pid)
    except Exception as err:        # noqa: BLE001 - any failure: EAGAIN, nothing left
        job.slots.give()
        child_vm.close()
        job.say(parent.pid, f"fork failed: {err}")
        return job.reply(parent, -errno.EAGAIN)
    count_ends(job, child_vm, +1)
    job.files.fork(parent.pid, pid, here=True)
    child = job.add(child_vm, parent.pid, pid, record=False)
    parent_tsc = abi.CTL.get(parent.vm.mem, abi.CTL_ADDR, "arg")[1]
    clone.start(child_vm, parent_tsc, asked, clone.clock_offset(parent.vm))
    job.reply(parent, pid)
    job.record(child)          # (in Redis, for a cluster's job: off their path)
    job.pool.fill()


def fork_remote(job: Job, parent: Proc, asked: float) -> None:
    """No slot here: the fork goes to whichever host has one (its link).
    The parent's request stays unanswered until the "forked" message."""
    mem = parent.vm.mem
    parent.parked_seq = abi.CTL.get(mem, abi.CTL_ADDR, "req_seq")
    pid, pipes = job.new_pid(), []
    parent.sending = (pid, pipes)
    job.files.fork(parent.pid, pid)    # before the child can run, wherever it does
    if job.bridge is not None:     # the child's pipes (and stdin) reach it over a link
        ends = abi.CTL.get(mem, abi.CTL_ADDR, "ends")
        used = job.shm.used()
        for i in (0, *range(3, abi.SHM_RINGS)):     # (each host pumps its own output)
            r, w = ends[2 * i], ends[2 * i + 1]
            if (r or w) and used >> i & 1:
                pipes.append(job.bridge.link_child(i, r, w))
    job.link.fork(Outgoing(parent.vm, pid, parent.pid, asked,
                           abi.CTL.get(mem, abi.CTL_ADDR, "arg")[1],
                           abi.BOOT.get(mem, abi.BOOT_ADDR, "tsc_khz"), job.program,
                           job.mem_mib, pipes))


def forked(job: Job, msg: dict) -> None:
    """A fork onto another host has finished, or failed."""
    pid = msg.get("pid")
    parent = next((p for p in job.procs.values()
                   if p.sending is not None and p.sending[0] == pid), None)
    if parent is None:
        return
    pipes, parent.sending = parent.sending[1], None
    if "error" in msg and job.bridge is not None:
        for spec in pipes:
            job.bridge.unlink(spec)
    if "error" in msg:
        job.files.end(pid)
    if "error" in msg:
        if parent.running:
            job.say_once(parent.pid, f"fork onto another host failed: {msg['error']}: EAGAIN")
            job.reply(parent, -errno.EAGAIN)
    else:
        child = job.add_remote(pid, parent.pid, msg["host"], msg["tree"])
        if parent.running:
            job.reply(parent, child.pid)
        else:               # the parent died meanwhile: pid 1 adopts the child
            remote.to_init(job, child)
    if parent.close_pending:
        job.close_vm(parent)


def count_ends(job: Job, vm: VM, sign: int) -> None:
    """Add (or, sign -1, take away) the ring ends (vm)'s process holds."""
    ends = abi.CTL.get(vm.mem, abi.CTL_ADDR, "ends")
    used = job.shm.used()
    for i in range(abi.SHM_RINGS):
        r, w = ends[2 * i], ends[2 * i + 1]
        if (r or w) and used >> i & 1:
            try:
                job.shm.ring(i).add_ends(sign * r, sign * w)
            except ValueError:
                pass            # a ring the guests corrupted: leave it
