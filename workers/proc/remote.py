"""Processes on other hosts, when the job spans hosts: the messages from
the rest of the job (broker/cluster/link.py says which), the end of a
child elsewhere, and orphans handed to pid 1 wherever it is."""
from __future__ import annotations


from workers import abi
from workers.proc import forks, signals, waits

TYPE_CHECKING = False    # (not typing's: it takes longer to import than QEMU to start)
if TYPE_CHECKING:
    from workers.proc.table import Job, Proc


def to_init(job: Job, c: Proc) -> None:
    """(c)'s parent has ended: pid 1 adopts it, wherever each of them is."""
    c.ppid = 1
    if c.running and c.vm is not None:
        abi.BOOT.put(c.vm.mem, abi.BOOT_ADDR, ppid=1)
    if c.remote and c.running:       # its end must now be told to pid 1's subtree
        job.link.post(c.tree, {"type": "reparent", "pid": c.pid})
    if 1 in job.procs or job.link is None:
        return
    # pid 1 is on another host: it takes (c) over; we forget it
    job.link.post(1, {"type": "adopt", "pid": c.pid, "host": c.host or job.link.host,
                      "tree": c.tree or job.tree,
                      "wstatus": None if c.running else c.wstatus})
    if c.remote or not c.running:
        job.procs.pop(c.pid, None)
        job.link.watch.pop(c.pid, None)
    else:
        c.parent_tree = 1


def on_message(job: Job, msg: dict) -> None:
    """Act on one message from another subtree; malformed ones are ignored."""
    try:
        kind = msg["type"]
        if kind == "forked":
            return forks.forked(job, msg)
        if kind == "superseded":
            job.superseded = True
            return
        if kind == "end":
            if msg.get("why") and not job.ended:
                job.say(job.tree, str(msg["why"]))
            job.ended = True
            return
        if kind == "killall":
            for t in job.live():
                if t.pid != msg["sender"] and (msg["init"] or t.pid != 1):
                    signals.deliver(job, t, int(msg["sig"]))
            return
        p = job.procs.get(int(msg["pid"]))
        if kind == "adopt":
            if p is None:
                w = msg.get("wstatus")
                job.add_remote(int(msg["pid"]), 1, str(msg["host"]), int(msg["tree"]),
                               None if w is None else int(w))
                waits.retry_parked(job, job.procs[1])
            return
        if p is None:
            return
        if kind == "kill" and p.running and not p.remote:
            signals.deliver(job, p, int(msg["sig"]))
        elif kind == "reparent" and not p.remote:
            p.ppid, p.parent_tree = 1, 1
            if p.running:
                abi.BOOT.put(p.vm.mem, abi.BOOT_ADDR, ppid=1)
            waits.publish_kids(job, job.procs.get(1))
        elif kind in ("exit", "lost") and p.remote and p.running:
            if kind == "lost":
                job.say(p.pid, f"{msg.get('why', 'its host was lost')}: "
                        "reported as killed")
            remote_ended(job, p, 9 if kind == "lost" else int(msg["wstatus"]))
    except (KeyError, ValueError, TypeError):
        pass


def remote_ended(job: Job, p: Proc, wstatus: int) -> None:
    """Remote process (p) has ended with (wstatus)."""
    p.wstatus = wstatus
    job.files.end(p.pid)            # (its host told the home already, unless it was lost)
    waits.publish_kids(job, job.procs.get(p.ppid))
    signals.sigchld(job, p)
    if job.link is not None:
        job.link.watch.pop(p.pid, None)
    if p.ppid not in job.procs:
        p.reaped = True
    for q in (job.procs.get(p.ppid), job.procs.get(1)):
        if q is not None:
            waits.retry_parked(job, q)
