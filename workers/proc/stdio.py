"""The job's stdin, stdout and stderr on this host, and the guests'
kernel logs: rings in the job's shared region on one side, our file
descriptors (or, in a worker, a function that takes the output) on the
other.  pump() is the whole protocol and never blocks; the supervisor
decides when to call it again.

Our stdin is read only when the guest's stdin ring has room for more.
"""
from __future__ import annotations

import os
import select
import stat

from workers import abi
from workers.vm.rings import HostRing


class Stdio:
    """The stdio rings (stdin, stdout, stderr) of a job on this host, and
    (stdin_fd, stdout_fd, stderr_fd) or (out)(stream, bytes) for the output;
    (name) is how its lines name the program."""

    def __init__(self, name: str, stdin: HostRing, stdout: HostRing, stderr: HostRing,
                 stdin_fd: int, stdout_fd: int, stderr_fd: int, out=None) -> None:
        self.name = name
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.stdin_fd, self.stderr_fd = stdin_fd, stderr_fd
        self.out = out          # out(stream, bytes) instead of writing the fds
        self.out_fds = {id(stdout): stdout_fd, id(stderr): stderr_fd}
        self.pending_in = b""
        self.stdin_eof = False
        self.stdin_polled = False    # stdin is pollable (pipe, tty, socket)
        self.stdin_ready = False     # a read will not block
        self.log_partial: dict[int, bytes] = {}

    # -- stdin ---------------------------------------------------------------
    def start(self, poller) -> None:
        """Find out how our stdin is read: polled, or read at once (a file)."""
        try:
            mode = os.fstat(self.stdin_fd).st_mode
        except OSError:
            self._stdin_done()
            return
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            try:
                poller.register(self.stdin_fd, select.POLLIN)
                poller.unregister(self.stdin_fd)
                self.stdin_polled = True
                return
            except OSError:
                pass            # not pollable (/dev/null): it never blocks
        self.stdin_ready = True

    def sync(self, poller) -> None:
        """Poll stdin only while we want to read it."""
        if not self.stdin_polled:
            return
        want = not self.stdin_eof and not self.pending_in and not self.stdin_ready
        if want:
            poller.register(self.stdin_fd, select.POLLIN)
        else:
            try:
                poller.unregister(self.stdin_fd)
            except KeyError:
                pass

    def elsewhere(self) -> None:
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
                    self.pending_in = os.read(self.stdin_fd, abi.RING_SIZE)
                except OSError:
                    self.pending_in = b""
                if self.stdin_polled:
                    self.stdin_ready = False
                if not self.pending_in:
                    self._stdin_done()
                    return
            n, _ = self.stdin.write(self.pending_in)
            self.pending_in = self.pending_in[n:]
            if self.pending_in:          # ring full: the guest's read wakes us
                self.stdin.arm("wr_wait")
                if self.stdin.space() == 0:
                    return

    # -- output --------------------------------------------------------------
    def pump(self, procs) -> None:
        """Move what there is: output out, the logs of (procs), stdin in."""
        self.pump_output()
        for p in procs:
            self.drain_log(p)
        self._feed()

    def pump_output(self) -> None:
        for ring, name in ((self.stdout, "stdout"), (self.stderr, "stderr")):
            data, _ = ring.read()
            if data:
                self._write_out(ring, data)
            if ring.corrupt and self.out_fds[id(ring)] >= 0:
                self.out_fds[id(ring)] = -1
                self.say(1, f"the job's {name} ring was overwritten by a guest: "
                         f"its {name} is discarded from here on")

    def output_waiting(self) -> bool:
        """Whether output came while we looked (its readers' flags raised
        first, so that more output rings us)."""
        self.stdout.arm("rd_wait")
        self.stderr.arm("rd_wait")
        return bool(self.stdout.readable() or self.stderr.readable())

    def drain_log(self, p) -> None:
        """(p)'s kernel log, a line of ours for each of its lines."""
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

    def flush_logs(self) -> None:
        """The logs' last lines, unfinished ones too."""
        for pid in list(self.log_partial):
            rest = self.log_partial.pop(pid, b"")
            if rest:
                self.say(pid, rest.decode(errors="replace"))

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

    def say(self, pid: int, msg: str) -> None:
        """One line on our stderr about process (pid) of the job."""
        who = self.name if pid == 1 else f"{self.name} (pid {pid})"
        line = f"unifork: {who}: {msg}\n".encode()
        if self.out is not None:
            self.out("err", line)
            return
        try:
            os.write(self.stderr_fd, line)
        except OSError:
            pass
