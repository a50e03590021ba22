"""`unifork run`: one program, one VM, on this machine, no broker.

The program's stdin, stdout and stderr are rings in the job's shared region;
the Supervisor pumps them to and from our own file descriptors as bytes
arrive, prints the guest kernel's log on stderr, and turns the way the VM
stopped into an exit status the way a shell would (128 + signal if killed).

The waiting is a poll() over four descriptors (doorbell, QEMU's pidfd,
stdin, a signal pipe): `unifork run` is measured against a bare QEMU launch,
and asyncio alone takes longer to import than the guest takes to boot.
"""
from __future__ import annotations

import os
import stat
import sys

from . import abi, elf
from .errors import BadProgram, UniforkError
from .layout import Layout
from .rings import HostRing, SharedRegion
from .vm import VM

EXIT_TIMEOUT = 124
SIGINT, SIGKILL, SIGTERM, SIGHUP = 2, 9, 15, 1
_STOPS = {SIGINT: "interrupted", SIGTERM: "terminated", SIGHUP: "hung up"}


class RunRequest:
    """What to run, with what, and where its stdio goes."""

    def __init__(self, program: str, args: list[str], env: list[str], mem_mib: int = 128,
                 timeout: float | None = None, stdin: int = 0, stdout: int = 1,
                 stderr: int = 2) -> None:
        self.program, self.args, self.env = program, args, env
        self.mem_mib, self.timeout = mem_mib, timeout
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr


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
    shm = SharedRegion()
    vm: VM | None = None
    try:
        rings = [shm.new_ring() for _ in range(3)]
        vm = VM(req.mem_mib, shm)
        tty = sum(1 << i for i, fd in enumerate((req.stdin, req.stdout, req.stderr))
                  if os.isatty(fd))
        try:
            cols, rows = os.get_terminal_size(req.stdout)
        except OSError:
            cols, rows = 0, 0
        vm.load(prog, [req.program.encode(), *map(os.fsencode, req.args)],
                [os.fsencode(e) for e in req.env], os.fsencode(os.path.abspath(req.program)),
                pid=1, ppid=0, stdio=(rings[0][0], rings[1][0], rings[2][0]), tty=tty,
                tty_size=(rows, cols), hostname=os.uname().nodename.encode())
        vm.start()
        return Supervisor(vm, req, rings[0][1], rings[1][1], rings[2][1]).run()
    finally:
        if vm is not None:
            vm.close()
        shm.close()


class Supervisor:
    """Pumps one VM's stdio and log until QEMU exits; decides the status.

    _pump() is the whole protocol and never blocks; run() only decides when
    to call it again.
    """

    def __init__(self, vm: VM, req: RunRequest, stdin: HostRing, stdout: HostRing,
                 stderr: HostRing) -> None:
        self.vm, self.req = vm, req
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.out_fds = {id(stdout): req.stdout, id(stderr): req.stderr}
        self.pending_in = b""
        self.stdin_eof = False
        self.stdin_polled = False    # stdin is pollable (pipe, tty, socket)
        self.stdin_ready = False     # a read will not block
        self.log_partial = b""
        self.stop_reason: str | None = None

    def run(self) -> int:
        # Imported here, once QEMU is starting: nothing delays its launch.
        global select, signal
        import select
        import signal
        poller = select.poll()
        poller.register(self.vm.bell.fileno(), select.POLLIN)
        poller.register(self.vm.pidfd, select.POLLIN)
        sig_r, sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        poller.register(sig_r, select.POLLIN)
        old_wakeup = signal.set_wakeup_fd(sig_w)
        old = {s: signal.signal(s, self._on_signal) for s in _STOPS}
        self._start_stdin(poller)
        deadline = None
        if self.req.timeout:
            import time
            deadline = time.monotonic() + self.req.timeout
        try:
            while True:
                self.vm.take_doorbells()
                self._pump()
                if self.vm.poll() is not None or self.stop_reason:
                    break
                self.stdout.arm("rd_wait")
                self.stderr.arm("rd_wait")
                if self.stdout.readable() or self.stderr.readable():
                    continue
                self._sync_stdin(poller)
                wait_ms = None
                if deadline is not None:
                    import time
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self.stop_reason = "timeout"
                        break
                    wait_ms = int(left * 1000) + 1
                for fd, _ in poller.poll(wait_ms):
                    if fd == self.req.stdin:
                        self.stdin_ready = True
                    elif fd == sig_r:
                        try:
                            os.read(sig_r, 64)
                        except OSError:
                            pass
            if self.stop_reason:
                self.vm.quit()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for s, h in old.items():
                signal.signal(s, h)
            os.close(sig_r)
            os.close(sig_w)
        rc = self.vm.wait()
        self._pump()
        self._flush_log()
        return self._status(rc)

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

    def _stdin_done(self) -> None:
        if not self.stdin_eof:
            self.stdin_eof = True
            self.pending_in = b""
            if self.stdin.close_write():
                self.vm.wake()

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
            if wake:
                self.vm.wake()
            if self.pending_in:          # ring full: the guest's read wakes us
                self.stdin.arm("wr_wait")
                if self.stdin.space() == 0:
                    return

    # -- output --------------------------------------------------------------
    def _pump(self) -> None:
        for ring in (self.stdout, self.stderr):
            data, wake = ring.read()
            if data:
                self._write_out(ring, data)
            if wake:
                self.vm.wake()
        log, _ = self.vm.log.read()
        if log:
            self._log(log)
        self._feed()

    def _write_out(self, ring: HostRing, data: bytes) -> None:
        fd = self.out_fds[id(ring)]
        if fd < 0:
            return               # the reader is gone: output is discarded
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view):]
        except BrokenPipeError:
            self.out_fds[id(ring)] = -1
            if ring.close_read():    # the program now gets SIGPIPE/EPIPE
                self.vm.wake()

    def _log(self, data: bytes) -> None:
        lines = (self.log_partial + data).split(b"\n")
        self.log_partial = lines.pop()
        for line in lines:
            self._say(line.decode(errors="replace"))

    def _flush_log(self) -> None:
        if self.log_partial:
            self._say(self.log_partial.decode(errors="replace"))
            self.log_partial = b""

    def _say(self, msg: str) -> None:
        try:
            os.write(self.req.stderr, f"unifork: {self.req.program}: {msg}\n".encode())
        except OSError:
            pass

    # -- the end -------------------------------------------------------------
    def _status(self, qemu_rc: int) -> int:
        ctl = self.vm.ctl
        if self.stop_reason == "timeout":
            self._say(f"timed out after {self.req.timeout:g} s; the VM was stopped")
            return EXIT_TIMEOUT
        if self.stop_reason:
            self._say(f"{self.stop_reason}; the VM was stopped")
            return 128 + {v: k for k, v in _STOPS.items()}[self.stop_reason]
        state, status = ctl["state"], ctl["status"]
        if state == abi.State.EXITED:
            return status
        if state == abi.State.KILLED:
            self._say(f"killed by {_signame(status)}")
            return 128 + status
        if state == abi.State.PANIC:
            self._say("the guest kernel failed (see above); the program was killed")
            return 128 + SIGKILL
        detail = self.vm.qemu_stderr()
        self._say("the VM stopped without an exit status "
                  f"(QEMU exit code {qemu_rc}: a triple fault or a QEMU crash)"
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
