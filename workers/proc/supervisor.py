"""The supervisor: the event loop of a job on this host, until pid 1 ends
(in a subtree on another host: until its processes here have).

It waits in one poll() over each VM's doorbell, pidfd and QEMU's stderr,
our stdin, the job's link and bridge, and a signal pipe (`unifork run` is
measured against a bare QEMU launch, and asyncio alone takes longer to
import than the guest takes to boot).  Each turn it looks at what woke it:
messages from the rest of the job, VMs whose process ended or asked for
something (the Job answers), output to pump (stdio.py); then it wakes the
halted guests whose wait is over, and decides how long it may sleep.  At
the end it turns the way pid 1 ended into an exit status, the way a shell
would (128 + signal if killed).
"""
from __future__ import annotations

import os
import select
import struct
import time

from workers import abi, config
from workers.files.linux import syscall
from workers.proc import remote, signals, sleepers
from workers.proc.signals import SIGKILL
from workers.proc.stdio import Stdio
from workers.proc.table import Job, Proc

EXIT_TIMEOUT = 124
SIGINT, SIGTERM, SIGHUP = 2, 15, 1
STOPS = {SIGINT: "interrupted", SIGTERM: "terminated", SIGHUP: "hung up"}


class Supervisor:
    """Runs job (job, set before run()) with stdio (io); (timeout) seconds
    at most (None: no limit)."""

    job: Job

    def __init__(self, io: Stdio, timeout: float | None = None) -> None:
        self.io, self.timeout = io, timeout
        self.stop_reason: str | None = None
        self._priority = None           # what to restore, once raised (_raise_priority)
        self._raise_when_linked = False
        self.pid1_end: tuple | None = None   # pid 1's QEMU code, control page, QEMU's words

    def say(self, pid: int, msg: str) -> None:
        self.io.say(pid, msg)

    def run(self) -> int:
        """Supervise until the job is over here; its exit status."""
        import signal
        import threading
        job, pid1 = self.job, self.job.procs.get(1)   # (None in a subtree elsewhere)
        if job.bridge is not None:
            self._leave_stdio_to_us()
        sig_r, sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Signals reach the main thread only; a subtree that arrived on a
        # worker process's offer runs in another (broker/cluster/offers.py)
        # and leaves them to the process.
        main = threading.current_thread() is threading.main_thread()
        old_wakeup = signal.set_wakeup_fd(sig_w) if main else -1
        old = {s: signal.signal(s, self._on_signal) for s in STOPS} if main else {}
        try:
            self._loop(sig_r, pid1)
        finally:
            if self._priority is not None:
                _sched_attr(self._priority)
            if main:
                signal.set_wakeup_fd(old_wakeup)
            for s, h in old.items():
                signal.signal(s, h)
            os.close(sig_r)
            os.close(sig_w)
        return self._end(pid1)

    def _leave_stdio_to_us(self) -> None:
        """Tell the bridge's thread which rings the host reads and writes."""
        at = {abi.shm_ring_off(i): 1 << i for i in range(abi.SHM_RINGS)}
        bridge = self.job.bridge
        bridge.stdio = at.get(self.io.stdout.offset, 0) | at.get(self.io.stderr.offset, 0)
        bridge.stdin = at.get(self.io.stdin.offset, 0)
        self._raise_when_linked = True

    def _loop(self, sig_r: int, pid1: Proc | None) -> None:
        job, poller = self.job, select.poll()
        self.io.start(poller)
        polled: set[int] = set()
        fired: set[int] | None = None       # the fds poll() reported; None: look at all
        deadline = time.monotonic() + self.timeout if self.timeout else None
        while True:
            if job.changed:
                polled, fired = self._repoll(poller, polled, sig_r), None
            if not self._look(fired):
                return                      # the job runs again elsewhere
            self._move()
            if self._over(pid1) or self.stop_reason:
                return
            if job.changed:                 # a VM came or went: poll the new set
                continue
            if self.io.output_waiting() or job.unrung:
                job.unrung = False
                fired = None
                continue
            self.io.sync(poller)
            wait_ms = self._wait_ms(deadline)
            if wait_ms == -1:
                self.stop_reason = "timeout"
                return
            fired = self._poll(poller, wait_ms, sig_r)

    def _look(self, fired: set[int] | None) -> bool:
        """Act on what woke us: the rest of the job's messages, and each VM
        that may have news.  False if the job was taken over elsewhere."""
        job = self.job
        if job.link is not None and (fired is None or job.link.fileno() in fired):
            for msg in job.link.messages():
                remote.on_message(job, msg)
            if job.superseded:
                self.stop_reason = "superseded"
                return False
        for p in job.live():
            if fired is not None and fired.isdisjoint(p.vm.fds):
                continue            # nothing from this VM: nothing new about it
            exited = p.vm.poll() is not None
            if not exited and p.vm.check_stderr():
                p.vm.kill()         # QEMU paused a guest it cannot run
                exited = True
            if not exited and job.bridge is None:   # (else its thread's)
                p.vm.take_doorbells()   # before looking: none is lost
            if exited or p.vm.parked:   # (parked: its process has ended)
                self._ended(p)
            else:
                job.service(p)
        return True

    def _move(self) -> None:
        """Pump stdio and the bridge; wake the guests whose wait is over."""
        job = self.job
        self.io.pump(job.live())
        if job.bridge is not None:
            job.bridge.pump()
            if self._raise_when_linked and job.bridge.links:
                self._raise_when_linked = False
                # (not the bridge's thread: a 1-byte ping-pong between hosts
                # took 237-277 us with it at nice -20 too, 166-220 without)
                self._priority = _raise_priority()
        sleepers.wake_sleepers(job)

    def _wait_ms(self, deadline: float | None) -> int | None:
        """How long poll() may sleep (ms; None: until woken); -1: the job's
        time is up."""
        job, wait_ms, now = self.job, None, time.monotonic()
        if deadline is not None:
            if deadline <= now:
                return -1
            wait_ms = int((deadline - now) * 1000) + 1
        if job.bridge is not None and job.bridge.active():
            wait_ms = _sooner(wait_ms, job.bridge.next_event(), now)
        signals.nudge_alarms(job, time.time())  # SIGALRMs a computing program would miss
        wait_ms = _sooner(wait_ms, job.alarms_due, now)
        if job.nudges:              # a signal not taken yet: a nudge is due
            wait_ms = _sooner(wait_ms, signals.nudge_due(job, now), now)
        return _sooner(wait_ms, job.tend_pool(), now)

    def _poll(self, poller, wait_ms: int | None, sig_r: int) -> set[int] | None:
        """Sleep in poll(); the descriptors that woke us (None: none)."""
        events = poller.poll(wait_ms)
        bell = self.job.bridge.fileno() if self.job.bridge is not None else None
        for fd, _ in events:
            if fd == self.io.stdin_fd:
                self.io.stdin_ready = True
            elif fd in (bell, sig_r):       # an eventfd, the signal pipe: reset them
                try:
                    os.read(fd, 64)
                except OSError:
                    pass
        return {fd for fd, _ in events} if events else None

    def _over(self, pid1: Proc | None) -> bool:
        """pid 1 has ended; in a subtree: pid 1 has, or all our processes have."""
        if pid1 is not None:
            return not pid1.running
        return self.job.ended or not (self.job.live() or
                                      (self.job.bridge and self.job.bridge.active()))

    def _repoll(self, poller, polled: set[int], sig_r: int) -> set[int]:
        """Poll the descriptors of the VMs alive now (and the signal pipe)."""
        for fd in polled:
            poller.unregister(fd)
        polled = {sig_r}
        if self.job.link is not None:
            polled.add(self.job.link.fileno())
        bridge = self.job.bridge
        if bridge is not None:
            polled.add(bridge.fileno())
            self.job.watch_vms()
        for p in self.job.live():
            bell = bridge.fileno() if bridge is not None else p.vm.bell.fileno()
            p.vm.fds = frozenset((bell, p.vm.pidfd, p.vm.stderr_fd))
            polled |= p.vm.fds
        for fd in polled:
            poller.register(fd, select.POLLIN)
        self.job.changed = False
        return polled

    def _ended(self, p: Proc) -> None:
        """(p) has ended (its VM parked) or its QEMU has exited: reap it,
        keep its last log lines, free or recycle its VM."""
        vm = p.vm
        vm.poll()
        self.io.drain_log(p)
        # What it wrote goes out before its end is told (to a parent on
        # another host, which may print next): the order a reader expects.
        self.io.pump_output()
        self.job.reap(p)
        if p.pid == 1:
            self.pid1_end = (vm.returncode, vm.ctl, vm.qemu_stderr())
        self.job.close_vm(p)

    def _on_signal(self, signum: int, frame) -> None:
        self.stop_reason = self.stop_reason or STOPS[signum]

    # -- the end -------------------------------------------------------------
    def _end(self, pid1: Proc | None) -> int:
        """pid 1 has ended (or the job was stopped): so do the others here."""
        job = self.job
        if self.stop_reason and pid1 is not None and pid1.running:
            pid1.vm.quit()
        if job.link is not None and pid1 is not None:
            job.link.post_all({"type": "end"})
        for p in job.live():
            if p.vm is not None and p.vm.poll() is None:
                p.killed_by = SIGKILL
                p.vm.kill()
            self._ended(p)
        self.io.pump([])
        self.io.flush_logs()
        return self._status(pid1) if pid1 is not None else 0

    def _status(self, pid1: Proc) -> int:
        if self.stop_reason == "timeout":
            self.say(1, f"timed out after {self.timeout:g} s; the VM was stopped")
            return EXIT_TIMEOUT
        if self.stop_reason == "superseded":
            return 128 + SIGKILL
        if self.stop_reason:
            self.say(1, f"{self.stop_reason}; the VM was stopped")
            return 128 + {v: k for k, v in STOPS.items()}[self.stop_reason]
        qemu_rc, ctl, qemu_err = self.pid1_end
        state, status = ctl["state"], ctl["status"]
        if state == abi.State.EXITED:
            return status
        if state == abi.State.KILLED:
            self.say(1, f"killed by {_signame(status)}")
            return 128 + status
        if state == abi.State.PANIC:
            self.say(1, "the guest kernel failed (see above); the program was killed")
            return 128 + SIGKILL
        if pid1.killed_by is not None:
            self.say(1, f"killed by {_signame(pid1.killed_by)}")
            return 128 + pid1.killed_by
        self.say(1, "the VM stopped without an exit status "
                 f"(QEMU exit code {qemu_rc}: a triple fault or a QEMU crash)"
                 + (f": {qemu_err}" if qemu_err else ""))
        return 128 + SIGKILL


def _sooner(wait_ms: int | None, at: float | None, now: float) -> int | None:
    """poll()'s timeout (ms, None: none), shortened to wake by (at)."""
    if at is None:
        return wait_ms
    due = max(0, int((at - now) * 1000) + 1)
    return due if wait_ms is None else min(wait_ms, due)


def _signame(sig: int) -> str:
    import signal
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _raise_priority() -> bytes | None:
    """A supervisor that carries pipes to other hosts (from their first
    link on) relays both ways of every round trip while the guests waiting
    for the answer spin on the CPUs: let it take a CPU from a spinning
    guest as soon as it wakes.  At nice UNIFORK_BRIDGE_NICE (default -20;
    0: as is) with a short time slice (100 us, which lets a waking task
    preempt under EEVDF, Linux 6.12+): bench/xpipe.py's round trip ~1.09 ms
    with the nice alone, 0.78-0.86 ms with both.  (Not SCHED_FIFO: that
    halved its throughput, starving the softirqs that move the datagrams.)
    With RESET_ON_FORK, the QEMUs and threads it starts run as usual.  What
    to restore, or None."""
    nice = config.get().bridge_nice
    if nice == 0:
        return None
    old = _sched_attr(None)
    if old is None or struct.unpack_from("<I", old, 4)[0] != os.SCHED_OTHER:
        return None
    return old if _sched_attr(_SCHED_ATTR.pack(
        _SCHED_ATTR.size, os.SCHED_OTHER, _RESET_ON_FORK, nice, 0, 100_000, 0, 0)) else None


# struct sched_attr (size, policy, flags, nice, priority, runtime, deadline, period)
_SCHED_ATTR = struct.Struct("<IIQiIQQQ")
_RESET_ON_FORK = 1
_SYS_SCHED_SETATTR, _SYS_SCHED_GETATTR = 314, 315     # x86-64


def _sched_attr(new: bytes | None) -> bytes | None:
    """sched_setattr(2) on this thread with (new), or sched_getattr(2) if
    None; the attributes read, (new) once set, or None if refused."""
    import ctypes
    buf = ctypes.create_string_buffer(new or _SCHED_ATTR.size, _SCHED_ATTR.size)
    try:
        if new is None:
            syscall(_SYS_SCHED_GETATTR, 0, buf, _SCHED_ATTR.size, 0)
        else:
            syscall(_SYS_SCHED_SETATTR, 0, buf, 0)
    except OSError:
        return None
    return buf.raw
