"""Signals between processes: kill(), delivery as the target's control
page says it would take it (kill the VM, drop, or post and wake), SIGCHLD,
and the nudge (an NMI) that takes a signal into a program that computes
without system calls."""
from __future__ import annotations

import errno
import time

from workers import abi
from workers.proc import waits

TYPE_CHECKING = False    # (not typing's: it takes longer to import than QEMU to start)
if TYPE_CHECKING:
    from workers.proc.table import Job, Proc

SIGKILL, SIGCHLD = 9, 17
# A signal posted to a running process waits this long for it to be taken
# (at its next system call) before the process is nudged (nudge_due).
NUDGE_AFTER = 0.02


def kill(job: Job, p: Proc, pid: int, sig: int) -> None:
    """(p)'s KILL request: (sig) to (pid), to all the job (0, < -1: it is one
    process group) or all but pid 1 (-1), wherever they run."""
    if not 0 <= sig <= 64:
        return job.reply(p, -errno.EINVAL)
    if pid > 0:
        target = job.procs.get(pid)
        if target is None and job.link is not None:     # elsewhere in the job?
            rec = job.link.lookup(pid)
            if rec is None or rec.get("tree") is None:
                return job.reply(p, -errno.ESRCH)
            if sig and rec.get("state") == "running":
                job.link.post(rec["tree"], {"type": "kill", "pid": pid, "sig": sig})
            return job.reply(p, 0)
        parent = job.procs.get(target.ppid) if target is not None else None
        if parent is not None and parent.running and parent.vm is not None:
            waits.kids_waited(job, parent)   # (a wait there may have reaped it)
        if target is None or target.reaped:
            return job.reply(p, -errno.ESRCH)
        targets = [target]
    else:       # 0 or < -1: the job is one process group; -1: all but init
        targets = [t for t in job.procs.values() if t.running and t.pid != p.pid
                   and (pid != -1 or t.pid != 1) and not t.remote]
        if job.link is not None and sig:
            job.link.post_all({"type": "killall", "sig": sig, "sender": p.pid,
                               "init": pid != -1})
    for t in targets:
        if sig and t.running:
            if t.remote:
                job.link.post(t.tree, {"type": "kill", "pid": t.pid, "sig": sig})
            else:
                deliver(job, t, sig)
    job.reply(p, 0)


def deliver(job: Job, t: Proc, sig: int) -> None:
    """Deliver (sig) to (t) from outside it, as its dispositions say."""
    if sig != SIGKILL:
        if abi.SIG_STOPPING >> (sig - 1) & 1:
            return job.say_once(t.pid, f"signal {sig}: stopping a process is not "
                                "supported; ignored")
        blocked, caught, ignored = disposition(t, sig)
        if blocked or caught:       # the guest takes it: pending, or its handler
            bit = 1 << (sig - 1)
            if not abi.CTL.get(t.vm.mem, abi.CTL_ADDR, "sig_posted") & bit:
                from workers.vm.cpu import address, atomic_add
                atomic_add(address(t.vm.mem) + abi.CTL_ADDR
                           + abi.CTL.offsets["sig_posted"], bit)
            if blocked:
                # It may have unblocked it as we posted, and looked for
                # posted signals just before: then it is ours to act on.
                blocked, caught, ignored = disposition(t, sig)
                if blocked:
                    return
            if caught:
                t.vm.wake()         # out of a halt, to give way to it,
                # ... or, computing, out of its loop (nudge_due):
                job.nudges.setdefault(t.pid, time.monotonic() + NUDGE_AFTER)
                return
        if ignored:
            return
    t.killed_by = sig
    t.vm.kill()


def disposition(t: Proc, sig: int) -> tuple[bool, bool, bool]:
    """Whether (t) blocks (sig), catches it, or would ignore it now, as
    its control page says (a guest that never called sigaction has not
    published its default-ignored signals: abi.SIG_DEFAULT_IGNORED)."""
    ctl = abi.CTL.read(t.vm.mem, abi.CTL_ADDR)
    bit = 1 << (sig - 1)
    caught = bool(ctl["sig_caught"] & bit)
    default_ignored = bool(abi.SIG_DEFAULT_IGNORED & bit) and not caught
    return (bool(ctl["sig_blocked"] & bit), caught,
            bool(ctl["sig_ignored"] & bit) or default_ignored)


def sigchld(job: Job, child: Proc) -> None:
    """(child) has ended: SIGCHLD to its parent, if it is here."""
    parent = job.procs.get(child.ppid)
    if parent is not None and parent.running and not parent.remote and parent.vm:
        deliver(job, parent, SIGCHLD)


def nudge_due(job: Job, now: float) -> float | None:
    """Nudge each process that was posted a signal NUDGE_AFTER ago and
    has not taken it yet: it computes without system calls, where it
    would.  An NMI (QMP inject-nmi) takes it into its handler at once.
    Returns when the next nudge is due, if any."""
    for pid, due in list(job.nudges.items()):
        if due > now:
            continue
        del job.nudges[pid]
        p = job.procs.get(pid)
        if p is None or not p.running or p.remote or p.vm is None:
            continue
        mem = p.vm.mem
        if (abi.CTL.get(mem, abi.CTL_ADDR, "sig_posted")
                & ~abi.CTL.get(mem, abi.CTL_ADDR, "sig_blocked")):
            nudge(job, p)
    return min(job.nudges.values(), default=None)


def nudge_alarms(job: Job, now: float) -> None:
    """Nudge each process whose SIGALRM was due NUDGE_AFTER ago (wall
    clock, its control page's alarm_real_ns) and which has not taken
    it: it computes without system calls.  Again every 5 NUDGE_AFTER
    while it has not (it may block SIGALRM; its clock, from the TSC, may
    run a little behind ours).  Sets alarms_due (monotonic): when to
    look next without news from a guest (one arming an alarm rings)."""
    nxt = None
    for p in job.live():
        at = abi.CTL.get(p.vm.mem, abi.CTL_ADDR, "alarm_real_ns")
        if not at:
            continue
        due = at / 1e9 + NUDGE_AFTER
        if due <= now:
            if now - job.alarm_nudged.get(p.pid, 0.0) >= 5 * NUDGE_AFTER:
                job.alarm_nudged[p.pid] = now
                nudge(job, p)
            # a periodic timer re-arms as it is taken: nothing tells us
            due = now + 5 * NUDGE_AFTER
        nxt = due if nxt is None else min(nxt, due)
    job.alarms_due = None if nxt is None else time.monotonic() + (nxt - now)


def nudge(job: Job, p: Proc) -> None:
    """An NMI (QMP inject-nmi, or libvirt's) into (p), unless it is halted (a halt
    looks at signals as it ends): its handler for the NMI takes the
    posted signals from the program's own code (trap.c)."""
    if abi.CTL.get(p.vm.mem, abi.CTL_ADDR, "asleep") != abi.Sleep.NONE:
        return
    try:
        p.vm.nmi(job.aio)
    except Exception:       # noqa: BLE001 - the VM is going: its end says so
        pass
