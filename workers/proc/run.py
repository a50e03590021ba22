"""`unifork run`: one program, one VM, on this machine, no broker.

The program's stdin, stdout and stderr are rings in the job's shared region;
the Supervisor pumps them to and from our own file descriptors as bytes
arrive, prints the guest kernel's log on stderr, and turns the way the VM
stopped into an exit status the way a shell would (128 + signal if killed).

The waiting is a poll() over each VM's doorbell, pidfd and QEMU's stderr,
our stdin and a signal pipe: `unifork run` is measured against a bare QEMU
launch, and asyncio alone takes longer to import than the guest takes to boot.
"""
from __future__ import annotations

import os
import stat
import struct
import sys

from workers import abi
from workers.vm import elf
from workers.errors import BadProgram, UniforkError, VMError
from workers.vm.layout import Layout
from workers.vm.rings import HostRing, SharedRegion
from workers.proc.table import Job, Proc, Slots
from workers.vm.machine import VM

EXIT_TIMEOUT = 124
SIGINT, SIGKILL, SIGTERM, SIGHUP = 2, 9, 15, 1
_STOPS = {SIGINT: "interrupted", SIGTERM: "terminated", SIGHUP: "hung up"}


class RunRequest:
    """What to run, with what, and where its stdio goes."""

    def __init__(self, program: str, args: list[str], env: list[str], mem_mib: int = 128,
                 timeout: float | None = None, stdin: int = 0, stdout: int = 1,
                 stderr: int = 2, max_procs: int = 64, name: str | None = None,
                 slots=None, events=None, link=None, fork_wait: float = 5.0) -> None:
        self.program, self.args, self.env = program, args, env
        self.mem_mib, self.timeout = mem_mib, timeout
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.max_procs = max_procs
        self.name = name or program     # argv[0], and how messages name it
        self.slots = slots              # the host's VM slots (job.Slots by default)
        self.events = events            # process changes, for the cluster's state
        self.link = link                # cluster.Link: forks may go to other hosts
        self.fork_wait = fork_wait      # how long a fork waits for a VM (then EAGAIN)


def host_max_vms() -> int:
    """The most VMs this host runs at once (UNIFORK_HOST_MAX_VMS, default 64)."""
    try:
        return max(1, int(os.environ.get("UNIFORK_HOST_MAX_VMS", "64")))
    except ValueError:
        return 64


def _raise_priority() -> bytes | None:
    """A supervisor that carries pipes to other hosts (from their first
    link on) relays both ways of every round trip while the guests waiting
    for the answer spin on the CPUs: let it take a CPU from a spinning
    guest as soon as it wakes.  At
    nice UNIFORK_BRIDGE_NICE (default -20; 0: as is) with a short time
    slice (100 us, which lets a waking task preempt under EEVDF, Linux
    6.12+): bench/xpipe.py's round trip ~1.09 ms with the nice alone,
    0.78-0.86 ms with both.  (Not SCHED_FIFO: that halved its throughput, starving the
    softirqs that move the datagrams.)  With RESET_ON_FORK, the QEMUs and
    threads it starts run as usual.  What to restore, or None."""
    try:
        nice = max(-20, min(0, int(os.environ.get("UNIFORK_BRIDGE_NICE", "-20"))))
    except ValueError:
        nice = -20
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
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(new or _SCHED_ATTR.size, _SCHED_ATTR.size)
    if new is None:
        ok = libc.syscall(_SYS_SCHED_GETATTR, 0, buf, _SCHED_ATTR.size, 0) == 0
    else:
        ok = libc.syscall(_SYS_SCHED_SETATTR, 0, buf, 0) == 0
    return buf.raw if ok else None


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


def prepare(req: RunRequest) -> elf.Program:
    """Read and validate the program; every problem is a BadProgram."""
    if req.mem_mib % 2 or not 16 <= req.mem_mib <= abi.MAX_RAM >> 20:
        raise BadProgram(f"--mem {req.mem_mib}: must be an even number of MiB "
                         f"from 16 to {abi.MAX_RAM >> 20}")
    try:
        with open(req.program, "rb") as f:
            data = f.read()
    except OSError as err:
        raise BadProgram(f"{req.program}: {err.strerror}") from err
    return elf.parse(req.program, data, abi.PIE_BASE, Layout(req.mem_mib << 20).mmap_top)


def run(req: RunRequest) -> int:
    """Run (req) to completion; returns the exit status for our caller.

    :raise BadProgram: before any VM starts, when the program cannot run.
    :raise VMError: when QEMU cannot be started.
    """
    prog = prepare(req)
    if req.max_procs < 1:
        raise BadProgram(f"--max-procs {req.max_procs}: must be at least 1")
    slots = req.slots or Slots(host_max_vms())
    if not slots.take():
        raise VMError("this host has no free slot for the job's first VM")
    shm = SharedRegion()
    vm: VM | None = None
    job = None
    try:
        rings = [shm.new_ring() for _ in range(3)]
        vm = VM(req.mem_mib, shm, fast_bell=req.link is not None)
        tty = sum(1 << i for i, fd in enumerate((req.stdin, req.stdout, req.stderr))
                  if os.isatty(fd))
        try:
            cols, rows = os.get_terminal_size(req.stdout)
        except OSError:
            cols, rows = 0, 0
        vm.load(prog, [os.fsencode(req.name), *map(os.fsencode, req.args)],
                [os.fsencode(e) for e in req.env], os.fsencode(os.path.abspath(req.program)),
                pid=1, ppid=0, stdio=(rings[0][0], rings[1][0], rings[2][0]), tty=tty,
                tty_size=(rows, cols), hostname=os.uname().nodename.encode())
        sup = Supervisor(req, rings[0][1], rings[1][1], rings[2][1])
        bridge = None
        if req.link is not None:
            from workers.pipes.bridge import open_bridge
            bridge = open_bridge(shm, req.link.secret, req.link.job_id, req.link.address,
                                 lambda msg: sup.say(1, msg))
        job = Job(req.program, prog, req.mem_mib, shm, req.max_procs, slots, sup.say,
                  fork_wait=req.fork_wait, events=req.events, link=req.link, bridge=bridge)
        sup.job = job
        job.add(vm, pid=1)
        vm.start()
        return sup.run()
    finally:
        if job is not None:
            job.close()             # closes the VMs, gives back their slots
        else:
            if vm is not None:
                vm.close()
            slots.give()
        shm.close()


class Supervisor:
    """Runs a job's I/O until pid 1 ends: wakes on doorbells, VM exits,
    stdin and signals; pumps stdio and the guests' logs; hands requests and
    exits to the Job.  Decides the exit status.

    _pump() is the whole stdio protocol and never blocks; run() only
    decides when to call it again.
    """

    job: Job

    def __init__(self, req: RunRequest, stdin: HostRing, stdout: HostRing,
                 stderr: HostRing, out=None) -> None:
        self.req = req
        self.out = out          # out(stream, bytes) instead of writing req.stdout/stderr
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.out_fds = {id(stdout): req.stdout, id(stderr): req.stderr}
        self.pending_in = b""
        self.stdin_eof = False
        self.stdin_polled = False    # stdin is pollable (pipe, tty, socket)
        self.stdin_ready = False     # a read will not block
        self.log_partial: dict[int, bytes] = {}
        self.stop_reason: str | None = None

    def run(self) -> int:
        # Imported here, once QEMU is starting: nothing delays its launch.
        global select, signal
        import select
        import signal
        import time
        job = self.job
        sig_r, sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_wakeup = signal.set_wakeup_fd(sig_w)
        old = {s: signal.signal(s, self._on_signal) for s in _STOPS}
        poller = select.poll()
        self._start_stdin(poller)
        polled: set[int] = set()
        deadline = None
        if self.req.timeout:
            deadline = time.monotonic() + self.req.timeout
        pid1 = job.procs.get(1)     # None in a subtree on another host (cluster.py)
        priority = None     # raised once a pipe reaches another host (a link)
        raise_when_linked = job.bridge is not None
        if job.bridge is not None:      # what its thread must leave to us
            at = {abi.shm_ring_off(i): 1 << i for i in range(abi.SHM_RINGS)}
            job.bridge.stdio = at.get(self.stdout.offset, 0) | at.get(self.stderr.offset, 0)
            job.bridge.stdin = at.get(self.stdin.offset, 0)
        try:
            fired: set[int] | None = None   # the fds poll() reported; None: look at all
            while True:
                if job.changed:
                    polled = self._repoll(poller, polled, sig_r)
                    fired = None
                if job.link is not None and (fired is None or job.link.fileno() in fired):
                    for msg in job.link.messages():
                        job.on_message(msg)
                    if job.superseded:  # the job runs again elsewhere: stop here
                        self.stop_reason = "superseded"
                        break
                for p in job.live():
                    if fired is not None and fired.isdisjoint(p.vm.fds):
                        continue        # nothing from this VM: nothing new about it
                    exited = p.vm.poll() is not None
                    if not exited and p.vm.check_stderr():
                        p.vm.kill()     # QEMU paused a guest it cannot run
                        exited = True
                    if not exited and job.bridge is None:   # (else its thread's)
                        p.vm.take_doorbells()   # before looking: none is lost
                    if exited or p.vm.parked:   # (parked: its process has ended)
                        self._ended(p)
                    else:
                        job.service(p)
                self._pump()
                if job.bridge is not None:
                    job.bridge.pump()
                if raise_when_linked and job.bridge.links:
                    raise_when_linked = False
                    # (not the bridge's thread: a 1-byte ping-pong between hosts
                    # took 237-277 us with it at nice -20 too, 166-220 without)
                    priority = _raise_priority()
                job.wake_sleepers()
                if self._over(pid1) or self.stop_reason:
                    break
                if job.changed:         # a VM came or went: poll the new set
                    continue
                self.stdout.arm("rd_wait")
                self.stderr.arm("rd_wait")
                if self.stdout.readable() or self.stderr.readable():
                    fired = None
                    continue
                self._sync_stdin(poller)
                wait_ms = None
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self.stop_reason = "timeout"
                        break
                    wait_ms = int(left * 1000) + 1
                now = time.monotonic()
                if job.bridge is not None and job.bridge.active():
                    wait_ms = _sooner(wait_ms, job.bridge.next_event(), now)
                # SIGALRMs a computing program would miss (arming one rings)
                job.nudge_alarms(time.time())
                if job.alarms_due is not None:
                    wait_ms = _sooner(wait_ms, job.alarms_due, now)
                if job.nudges:          # a signal not taken yet: a nudge is due
                    wait_ms = _sooner(wait_ms, job.nudge_due(now), now)
                wait_ms = _sooner(wait_ms, job.tend_pool(), now)
                events = poller.poll(wait_ms)
                fired = {fd for fd, _ in events} if events else None
                for fd, _ in events:
                    if fd == self.req.stdin:
                        self.stdin_ready = True
                    elif job.bridge is not None and fd == job.bridge.fileno():
                        try:
                            os.read(fd, 8)      # (an eventfd: reset it)
                        except OSError:
                            pass
                    elif fd == sig_r:
                        try:
                            os.read(sig_r, 64)
                        except OSError:
                            pass
        finally:
            if priority is not None:
                _sched_attr(priority)
            signal.set_wakeup_fd(old_wakeup)
            for s, h in old.items():
                signal.signal(s, h)
            os.close(sig_r)
            os.close(sig_w)
        if self.stop_reason and pid1 is not None and pid1.running:
            pid1.vm.quit()
        if job.link is not None and pid1 is not None:
            job.link.post_all({"type": "end"})
        for p in job.live():            # pid 1 has ended: so does the job
            if p.vm is not None and p.vm.poll() is None:
                p.killed_by = SIGKILL
                p.vm.kill()
            self._ended(p)
        self._pump()
        for pid in list(self.log_partial):
            self._flush_log(pid)
        return self._status(pid1) if pid1 is not None else 0

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
        self._drain_log(p)
        # What it wrote goes out before its end is told (to a parent on
        # another host, which may print next): the order a reader expects.
        self._pump_output()
        self.job.reap(p)
        if p.pid == 1:
            self.pid1_qemu_rc = vm.returncode
            self.pid1_ctl = vm.ctl
            self.pid1_qemu_err = vm.qemu_stderr()
        self.job.close_vm(p)

    def _on_signal(self, signum: int, frame) -> None:
        self.stop_reason = self.stop_reason or _STOPS[signum]

    # -- stdin ---------------------------------------------------------------
    # Our stdin is read only when the guest's stdin ring has room for more.
    def _start_stdin(self, poller) -> None:
        try:
            mode = os.fstat(self.req.stdin).st_mode
        except OSError:
            self._stdin_done()
            return
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            try:
                poller.register(self.req.stdin, select.POLLIN)
                poller.unregister(self.req.stdin)
                self.stdin_polled = True
                return
            except OSError:
                pass            # not pollable (/dev/null): it never blocks
        self.stdin_ready = True

    def _sync_stdin(self, poller) -> None:
        """Poll stdin only while we want to read it."""
        if not self.stdin_polled:
            return
        want = not self.stdin_eof and not self.pending_in and not self.stdin_ready
        if want:
            poller.register(self.req.stdin, select.POLLIN)
        else:
            try:
                poller.unregister(self.req.stdin)
            except KeyError:
                pass

    def stdin_elsewhere(self) -> None:
        """The stdin ring is not ours to write: on a host other than pid
        1's, the job's stdin comes through the pipe bridge."""
        self.stdin_eof = True

    def _stdin_done(self) -> None:
        if not self.stdin_eof:
            self.stdin_eof = True
            self.pending_in = b""
            self.stdin.close_write()

    def _feed(self) -> None:
        if self.stdin_eof:
            return
        if self.stdin.readers == 0:     # the program closed its stdin
            self._stdin_done()
            return
        while True:
            if not self.pending_in:
                if not self.stdin_ready:
                    return
                try:
                    self.pending_in = os.read(self.req.stdin, abi.RING_SIZE)
                except OSError:
                    self.pending_in = b""
                if self.stdin_polled:
                    self.stdin_ready = False
                if not self.pending_in:
                    self._stdin_done()
                    return
            n, wake = self.stdin.write(self.pending_in)
            self.pending_in = self.pending_in[n:]
            if self.pending_in:          # ring full: the guest's read wakes us
                self.stdin.arm("wr_wait")
                if self.stdin.space() == 0:
                    return

    # -- output --------------------------------------------------------------
    def _pump(self) -> None:
        self._pump_output()
        for p in self.job.live():
            self._drain_log(p)
        self._feed()

    def _pump_output(self) -> None:
        for ring, name in ((self.stdout, "stdout"), (self.stderr, "stderr")):
            data, _ = ring.read()
            if data:
                self._write_out(ring, data)
            if ring.corrupt and self.out_fds[id(ring)] >= 0:
                self.out_fds[id(ring)] = -1
                self.say(1, f"the job's {name} ring was overwritten by a guest: "
                         f"its {name} is discarded from here on")

    def _drain_log(self, p: Proc) -> None:
        if p.vm.log.corrupt:
            return
        log, _ = p.vm.log.read()
        if p.vm.log.corrupt:
            self.say(p.pid, "its kernel log ring was overwritten: log discarded")
        if log:
            lines = (self.log_partial.pop(p.pid, b"") + log).split(b"\n")
            if lines[-1]:
                self.log_partial[p.pid] = lines[-1]
            for line in lines[:-1]:
                self.say(p.pid, line.decode(errors="replace"))

    def _write_out(self, ring: HostRing, data: bytes) -> None:
        if self.out is not None:
            self.out("out" if ring is self.stdout else "err", data)
            return
        fd = self.out_fds[id(ring)]
        if fd < 0:
            return               # the reader is gone: output is discarded
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view):]
        except BrokenPipeError:
            self.out_fds[id(ring)] = -1
            ring.close_read()        # the program now gets SIGPIPE/EPIPE

    def _flush_log(self, pid: int) -> None:
        rest = self.log_partial.pop(pid, b"")
        if rest:
            self.say(pid, rest.decode(errors="replace"))

    def say(self, pid: int, msg: str) -> None:
        """One line on our stderr about process (pid) of the job."""
        who = self.req.name if pid == 1 else f"{self.req.name} (pid {pid})"
        if self.out is not None:
            self.out("err", f"unifork: {who}: {msg}\n".encode())
            return
        try:
            os.write(self.req.stderr, f"unifork: {who}: {msg}\n".encode())
        except OSError:
            pass

    # -- the end -------------------------------------------------------------
    def _status(self, pid1: Proc) -> int:
        if self.stop_reason == "timeout":
            self.say(1, f"timed out after {self.req.timeout:g} s; the VM was stopped")
            return EXIT_TIMEOUT
        if self.stop_reason == "superseded":
            return 128 + SIGKILL
        if self.stop_reason:
            self.say(1, f"{self.stop_reason}; the VM was stopped")
            return 128 + {v: k for k, v in _STOPS.items()}[self.stop_reason]
        ctl = self.pid1_ctl
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
        detail = self.pid1_qemu_err
        self.say(1, "the VM stopped without an exit status "
                 f"(QEMU exit code {self.pid1_qemu_rc}: a triple fault or a QEMU crash)"
                 + (f": {detail}" if detail else ""))
        return 128 + SIGKILL


def main_run(req: RunRequest) -> int:
    try:
        return run(req)
    except BadProgram as err:
        print(f"unifork: {err}", file=sys.stderr)
        return 2
    except UniforkError as err:
        print(f"unifork: {err}", file=sys.stderr)
        return 1
