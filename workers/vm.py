"""One unifork VM: its RAM file, its QEMU process, its doorbell and QMP.

The RAM is a memfd that the host maps (to lay out the program before boot
and to read the control page and kernel log after) and QEMU maps through
/proc/self/fd.  The doorbell and QMP are socketpairs.  When the VM is
closed nothing remains: no process, no file, no socket path.
"""
from __future__ import annotations

import enum
import mmap
import os
import signal
import socket
import subprocess
import time
from typing import TYPE_CHECKING

from . import abi, cpu, layout
from .elf import Program
from .errors import VMError
from .qemu import VMSpec, kvm_usable
from .rings import HostRing, SharedRegion

if TYPE_CHECKING:
    from qemu.qmp import QMPClient

KERNEL = os.environ.get(
    "UNIFORK_KERNEL",
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                 "guest", "build", "kernel.elf"))


def _die_with_parent() -> None:
    """In QEMU's child process: SIGKILL it if we die, even by SIGKILL."""
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class VMState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"       # QEMU has exited
    CLOSED = "closed"


class VM:
    """A unikernel VM of (ram_mib) MiB that maps the job's (shm) region."""

    def __init__(self, ram_mib: int, shm: SharedRegion) -> None:
        if ram_mib % 2 or not 16 <= ram_mib <= abi.MAX_RAM >> 20:
            raise VMError(f"VM memory must be an even number of MiB in 16..{abi.MAX_RAM >> 20}")
        self.state = VMState.CREATED
        self.ram_mib = ram_mib
        self.shm = shm
        self.layout = layout.Layout(ram_mib << 20, shm.size)
        self.kvm = kvm_usable()
        self.ram_fd = os.memfd_create("unifork-ram", 0)
        os.ftruncate(self.ram_fd, ram_mib << 20)
        self.mem = mmap.mmap(self.ram_fd, ram_mib << 20)
        self.bell, self._bell_peer = socket.socketpair()
        self.bell.setblocking(False)
        self._qmp_sock, self._qmp_peer = socket.socketpair()
        self.proc: subprocess.Popen[bytes] | None = None
        self.pidfd = -1
        self._qmp: QMPClient | None = None
        self.log = HostRing.create(self.mem, abi.LOG_ADDR, abi.LOG_SIZE)

    # -- before boot -------------------------------------------------------
    def load(self, prog: Program, argv: list[bytes], envp: list[bytes], exe: bytes,
             pid: int, ppid: int, stdio: tuple[int, int, int], tty: int = 0,
             tty_size: tuple[int, int] = (0, 0), hostname: bytes = b"unifork") -> None:
        """Lay out (prog) and its boot page in RAM."""
        lay = self.layout
        uid, gid = os.getuid(), os.getgid()
        layout.page_tables(self.mem, lay)
        layout.load_program(self.mem, prog)
        sp = layout.initial_stack(self.mem, lay, prog, argv, envp, exe, uid, gid, cpu.hwcap())
        b = abi.Boot.from_buffer(self.mem, abi.BOOT_ADDR)
        b.magic, b.abi_version = abi.BOOT_MAGIC, abi.ABI_VERSION
        b.features = abi.FEAT_KVM if self.kvm else 0
        b.ram_size, b.shm_base, b.shm_size = lay.ram_size, lay.shm_base, lay.shm_size
        b.tsc_khz = cpu.tsc_khz()
        b.entry, b.sp = prog.entry, sp
        b.brk = (prog.end + abi.PAGE_SIZE - 1) & ~(abi.PAGE_SIZE - 1)
        b.mmap_top, b.stack_low = lay.mmap_top, lay.stack_low
        b.pid, b.ppid, b.uid, b.gid = pid, ppid, uid, gid
        b.stdio_ring[:] = list(stdio)
        b.tty, (b.tty_rows, b.tty_cols) = tty, tty_size
        b.seed[:] = list(os.urandom(32))
        b.exe = exe[:255]
        b.hostname = hostname[:64]
        # QEMU resets the TSC to 0 when it creates the vCPU, just after this.
        b.realtime_ns = time.time_ns()
        del b

    def start(self) -> None:
        """Start QEMU; the guest boots at once."""
        spec = VMSpec(KERNEL, self.ram_mib, self.shm.size >> 20, self.ram_fd, self.shm.fd,
                      self._bell_peer.fileno(), self._qmp_peer.fileno(), self.kvm)
        if not os.path.exists(KERNEL):
            raise VMError(f"guest kernel {KERNEL} is missing: run make setup")
        try:
            self.proc = subprocess.Popen(
                spec.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, start_new_session=True,
                preexec_fn=_die_with_parent,
                pass_fds=(self.ram_fd, self.shm.fd, self._bell_peer.fileno(),
                          self._qmp_peer.fileno()))
        except OSError as err:
            raise VMError(f"cannot start QEMU: {err}") from err
        self._bell_peer.close()
        self._qmp_peer.close()
        self.pidfd = os.pidfd_open(self.proc.pid)
        self.state = VMState.RUNNING

    # -- running -------------------------------------------------------------
    def wake(self) -> None:
        """Wake a halted guest: one byte to its doorbell UART."""
        try:
            self.bell.send(b"\1")
        except (BlockingIOError, OSError):
            pass                # a wake-up is already pending, or QEMU is gone

    def take_doorbells(self) -> None:
        """Consume the guest's doorbell bytes (they carry no data)."""
        try:
            while self.bell.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    async def qmp(self) -> "QMPClient":
        """The QMP client, connected on first use."""
        if self._qmp is None:
            from qemu.qmp import QMPClient
            client = QMPClient("unifork")
            await client.connect(self._qmp_sock)
            self._qmp = client
        return self._qmp

    async def quit(self, grace: float = 1.0) -> None:
        """Ask QEMU to quit over QMP; kill it if that does not work in time."""
        import asyncio
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            qmp = await asyncio.wait_for(self.qmp(), grace)
            await asyncio.wait_for(qmp.execute("quit"), grace)
        except Exception:   # noqa: BLE001 - any failure ends in SIGKILL below
            pass
        deadline = time.monotonic() + grace
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def reap(self) -> int:
        """Wait for QEMU to have exited; its exit code."""
        assert self.proc is not None
        rc = self.proc.wait()
        self.state = VMState.STOPPED
        return rc

    def qemu_stderr(self) -> str:
        if self.proc is None or self.proc.stderr is None:
            return ""
        try:
            return self.proc.stderr.read().decode(errors="replace").strip()
        except (OSError, ValueError):
            return ""

    @property
    def ctl(self) -> abi.Ctl:
        return abi.Ctl.from_buffer_copy(self.mem, abi.CTL_ADDR)

    def close(self) -> None:
        """Stop QEMU if it still runs and release every resource."""
        if self.state is VMState.CLOSED:
            return
        self.kill()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        if self.pidfd >= 0:
            os.close(self.pidfd)
        self.log.release()
        for s in (self.bell, self._bell_peer, self._qmp_sock, self._qmp_peer):
            s.close()
        self.mem.close()
        os.close(self.ram_fd)
        self.state = VMState.CLOSED
