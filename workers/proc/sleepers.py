"""Waking the halted guests whose wait is over (unifork_abi.h: what a
halted guest waits for, struct uf_ctl.asleep).  The rule is relay.c's
uf_sleeper_ready too, for the jobs whose doorbells its thread owns:
tests/test_native.py runs both on the same states."""
from __future__ import annotations


from workers import abi

TYPE_CHECKING = False    # (not typing's: it takes longer to import than QEMU to start)
if TYPE_CHECKING:
    from workers.proc.table import Job
    from workers.vm.rings import SharedRegion


def ready(mem, shm: SharedRegion, used: int) -> bool:
    """Whether the guest whose RAM is (mem) sleeps on something that is
    there now, in region (shm) whose ring bitmap is (used)."""
    what = abi.CTL.get(mem, abi.CTL_ADDR, "asleep")
    if what in (abi.Sleep.NONE, abi.Sleep.TIMER):
        return False
    if what == abi.Sleep.REPLY:
        return abi.CTL.get(mem, abi.CTL_ADDR, "rep_seq") == abi.CTL.get(mem, abi.CTL_ADDR,
                                                                         "req_seq")
    idx = abi.CTL.get(mem, abi.CTL_ADDR, "sleep_ring")
    if not (0 <= idx < abi.SHM_RINGS and used >> idx & 1):
        return True                 # nonsense: wake it, it re-checks
    try:
        ring = shm.ring(idx)
    except ValueError:
        return True                 # (a ring of a bad size: the same)
    return ring.may_read() if what == abi.Sleep.READ else ring.may_write()


def wake_sleepers(job: Job) -> None:
    """Wake every halted guest whose wait is over."""
    from workers.vm.cpu import mfence
    mfence()
    used = job.shm.used()
    for p in job.procs.values():
        if p.running and p.vm is not None and ready(p.vm.mem, job.shm, used):
            p.vm.wake()
