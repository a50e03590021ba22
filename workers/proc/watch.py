"""Answering a process's file calls as fast as it makes them.

A FILE request comes with a doorbell, which costs the guest a trap to
QEMU and the host a turn of its loop (~0.2 ms here together), and a
program that does file calls does them in runs.  So after answering one,
the supervisor watches that control page for a while (WATCH_S) with
host_watch set, and the guest asks without ringing (unifork_abi.h,
host_watch).  A request other than FILE ends the watch and is answered
as the loop would; so is one that comes as the watch ends: the host
clears host_watch, fences and looks once more, the guest stores req_seq,
fences and reads host_watch, so that one of them sees the other.  After
MAX_RUN requests the supervisor takes its turn (output, other VMs) and
comes back (Job.unrung) to what may have been asked without a doorbell.
"""
from __future__ import annotations

import time

from workers import abi
from workers.vm.cpu import mfence

TYPE_CHECKING = False    # (not typing's: it takes longer to import than QEMU to start)
if TYPE_CHECKING:
    from workers.proc.table import Job, Proc

WATCH_S = 0.0003                # how long a quiet process is watched
MAX_RUN = 256                   # requests served in one watch, before the loop's turn
_SEQ = abi.CTL_ADDR + abi.CTL.offsets["req_seq"]
_REP = abi.CTL_ADDR + abi.CTL.offsets["rep_seq"]
_REQ = abi.CTL_ADDR + abi.CTL.offsets["req"]
_WATCH = abi.CTL_ADDR + abi.CTL.offsets["host_watch"]


def watch(job: Job, p: Proc) -> None:
    """Serve (p)'s next requests without doorbells until it is quiet."""
    vm = p.vm
    words = memoryview(vm.mem)[abi.CTL_ADDR:abi.CTL_ADDR + abi.PAGE_SIZE].cast("I")
    seq_i, rep_i = (_SEQ - abi.CTL_ADDR) // 4, (_REP - abi.CTL_ADDR) // 4
    req_i, watch_i = (_REQ - abi.CTL_ADDR) // 4, (_WATCH - abi.CTL_ADDR) // 4
    words[watch_i] = 1
    clock, end = time.perf_counter, time.perf_counter() + WATCH_S
    served = 0
    try:
        while served < MAX_RUN:
            if words[seq_i] == words[rep_i]:
                if clock() < end:
                    continue
                words[watch_i] = 0
                mfence()
                if words[seq_i] == words[rep_i]:
                    return              # quiet: the next request rings
            if words[req_i] != abi.Req.FILE or not p.running or p.vm is not vm:
                words[watch_i] = 0
                job.service(p, watching=False)
                return
            job.serve_file(p)
            served += 1
            end = clock() + WATCH_S
        words[watch_i] = 0              # the loop's turn: it looks here again first
        job.unrung = True
    finally:
        words.release()
