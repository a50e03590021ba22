"""`unifork run`: one program, one VM, on this machine, no broker.

The program's stdin, stdout and stderr are rings in the job's shared region;
this module pumps them to and from our own file descriptors as bytes arrive,
prints the guest kernel's log on stderr, and turns the way the VM stopped
into an exit status the way a shell would (128 + signal when killed).
"""
from __future__ import annotations

import dataclasses
import os
import signal
import socket
import stat
import sys

from . import abi, elf
from .errors import BadProgram, UniforkError
from .rings import HostRing, SharedRegion
from .vm import VM

EXIT_TIMEOUT = 124


@dataclasses.dataclass
class RunRequest:
    program: str
    args: list[str]
    env: list[str]
    mem_mib: int = 128
    timeout: float | None = None
    stdin: int = 0
    stdout: int = 1
    stderr: int = 2


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def prepare(req: RunRequest) -> elf.Program:
    """Read and validate the program; every problem is a BadProgram."""
    try:
        with open(req.program, "rb") as f:
            data = f.read()
    except OSError as err:
        raise BadProgram(f"{req.program}: {err.strerror}") from err
    if req.mem_mib % 2 or not 16 <= req.mem_mib <= abi.MAX_RAM >> 20:
        raise BadProgram(f"--mem {req.mem_mib}: must be an even number of MiB "
                         f"from 16 to {abi.MAX_RAM >> 20}")
    from .layout import Layout
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
        exe = os.path.abspath(req.program).encode()
        vm.load(prog, [req.program.encode(), *map(os.fsencode, req.args)],
                [os.fsencode(e) for e in req.env], exe, pid=1, ppid=0,
                stdio=(rings[0][0], rings[1][0], rings[2][0]), tty=tty,
                tty_size=(rows, cols), hostname=socket.gethostname().encode())
        vm.start()
        # Imported only now: asyncio and qemu.qmp take ~40 ms to import,
        # which overlaps with QEMU's own start-up this way.
        import asyncio
        sup = Supervisor(vm, req, rings[0][1], rings[1][1], rings[2][1])
        return asyncio.run(sup.run())
    finally:
        if vm is not None:
            vm.close()
        shm.close()


class Supervisor:
    """Pumps one VM's stdio and log until QEMU exits; decides the status."""

    def __init__(self, vm: VM, req: RunRequest, stdin: HostRing, stdout: HostRing,
                 stderr: HostRing) -> None:
        self.vm, self.req = vm, req
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.out_fds = {id(stdout): req.stdout, id(stderr): req.stderr}
        self.pending_in = b""
        self.stdin_eof = False
        self.stdin_polled = False
        self.stdin_ready = False
        self.log_partial = b""
        self.stop_reason: str | None = None

    async def run(self) -> int:
        import asyncio
        loop = asyncio.get_running_loop()
        self.kick = asyncio.Event()
        kick = self.kick.set
        loop.add_reader(self.vm.bell, kick)
        loop.add_reader(self.vm.pidfd, kick)
        for sig, why in ((signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated"),
                         (signal.SIGHUP, "hung up")):
            loop.add_signal_handler(sig, self._stop, why)
        if self.req.timeout:
            loop.call_later(self.req.timeout, self._stop, "timeout")
        qmp = asyncio.create_task(self.vm.qmp())    # ready for quit, off the boot path
        self._start_stdin(loop)
        try:
            while True:
                self.kick.clear()
                self.vm.take_doorbells()
                self._pump()
                if self.vm.proc.poll() is not None or self.stop_reason:
                    break
                self.stdout.arm("rd_wait")
                self.stderr.arm("rd_wait")
                if self.stdout.readable() or self.stderr.readable():
                    continue
                await self.kick.wait()
            if self.stop_reason:
                await self.vm.quit()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            loop.remove_reader(self.vm.bell)
            loop.remove_reader(self.vm.pidfd)
            if self.stdin_polled:
                loop.remove_reader(self.req.stdin)
            self.stdin_polled = False
            await self._close_qmp(qmp)
        rc = self.vm.reap()
        self._pump()
        self._flush_log()
        return self._status(rc)

    @staticmethod
    async def _close_qmp(task) -> None:
        if not task.done():
            task.cancel()
        try:
            client = await task
            await client.disconnect()
        except BaseException:   # noqa: BLE001 - QEMU is gone or going: nothing to tell
            pass

    def _stop(self, why: str) -> None:
        self.stop_reason = self.stop_reason or why
        self.kick.set()

    # -- stdin ---------------------------------------------------------------
    # Our stdin is read only when the guest's stdin ring has room for more:
    # the reader callback disarms itself until what it read is in the ring.
    def _start_stdin(self, loop) -> None:
        self.loop = loop
        try:
            mode = os.fstat(self.req.stdin).st_mode
        except OSError:
            self._stdin_done()
            return
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            try:
                loop.add_reader(self.req.stdin, self._stdin_readable)
                self.stdin_polled = True
                return
            except PermissionError:
                pass            # not pollable (/dev/null): it never blocks
        self.stdin_ready = True         # read on demand

    def _stdin_readable(self) -> None:
        self.loop.remove_reader(self.req.stdin)
        self.stdin_ready = True
        self.kick.set()

    def _stdin_done(self) -> None:
        if not self.stdin_eof:
            self.stdin_eof = True
            self.pending_in = b""
            if self.stdin.close_write():
                self.vm.wake()

    def _feed(self) -> None:
        if self.stdin_eof:
            return
        if self.stdin.hdr.readers == 0:     # the program closed its stdin
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
            elif self.stdin_polled:      # all in the ring: listen again
                self.stdin_ready = False
                self.loop.add_reader(self.req.stdin, self._stdin_readable)
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
            return 128 + {"interrupted": signal.SIGINT, "terminated": signal.SIGTERM,
                          "hung up": signal.SIGHUP}[self.stop_reason]
        state = ctl.state
        if state == abi.State.EXITED:
            return ctl.status
        if state == abi.State.KILLED:
            self._say(f"killed by {_signame(ctl.status)}")
            return 128 + ctl.status
        if state == abi.State.PANIC:
            self._say("the guest kernel failed (see above); the program was killed")
            return 128 + signal.SIGKILL
        detail = self.vm.qemu_stderr()
        self._say("the VM stopped without an exit status "
                  f"(QEMU exit code {qemu_rc}: a triple fault or a QEMU crash)"
                  + (f": {detail}" if detail else ""))
        return 128 + signal.SIGKILL


def main_run(req: RunRequest) -> int:
    try:
        return run(req)
    except BadProgram as err:
        print(f"unifork: {err}", file=sys.stderr)
        return 2
    except UniforkError as err:
        print(f"unifork: {err}", file=sys.stderr)
        return 1
