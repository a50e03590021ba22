"""One unifork VM: its RAM file, its QEMU process, its doorbell and QMP.

The RAM is a memfd that the host maps (to lay out the program before boot,
to fill it with a forked child, and to read the control page and kernel
log) and QEMU maps through /proc/self/fd.  The doorbell and QMP are
socketpairs.  QEMU runs in its own session (a terminal's Ctrl-C reaches us,
not it) and is killed if we die (setpriv --pdeathsig).  After close()
nothing remains: no process, no file, no socket path.

A VM outlives its process: when the process ends, the guest parks
(unifork_abi.h, "Vessels") and the VM may become another process of the
job, a forked child (workers/fork/clone.py); a VM can also boot with no program at all,
straight into the park (load_vessel).

Start-up speed matters (`unifork run` is measured against a bare QEMU
launch): this module imports nothing heavy; QMP is imported when used.
"""
from __future__ import annotations

import _socket
import mmap
import os
import select
import time

from workers import abi, config
from workers.vm import cpu, layout
from workers.vm.elf import Program
from workers.errors import VMError
from workers.vm.qemu import VMSpec, kvm_usable
from workers.vm.rings import HostRing, SharedRegion

SETPRIV = "/usr/bin/setpriv"
_kernel_id: str | None = None


def kernel_id() -> str:
    """What the guest kernel is (a hash of its image): a forked child's VM
    must run the same one as its parent's (the child resumes in its
    parent's kernel, from its own parked one)."""
    global _kernel_id
    if _kernel_id is None:
        import hashlib
        try:
            with open(config.get().kernel, "rb") as f:
                _kernel_id = hashlib.sha256(f.read()).hexdigest()[:32]
        except OSError as err:
            raise VMError(f"guest kernel {config.get().kernel}: {err.strerror}; "
                          "run make setup") from err
    return _kernel_id


class VMState:
    """Where a VM is in its life (VM.state)."""

    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"       # QEMU has exited and was reaped
    CLOSED = "closed"


class VM:
    """A unikernel VM of (ram_mib) MiB that maps the job's (shm) region."""

    def __init__(self, ram_mib: int, shm: SharedRegion, fast_bell: bool = False) -> None:
        """(fast_bell): give it the fast doorbell (bell.py), if KVM runs it
        and UNIFORK_FAST_BELL is not 0; the VMs of a job that spans hosts
        have it (a child resumes in its parent's kernel, which may use it)."""
        if ram_mib % 2 or not 16 <= ram_mib <= abi.MAX_RAM >> 20:
            raise VMError(f"VM memory must be an even number of MiB in 16..{abi.MAX_RAM >> 20}")
        self.state = VMState.CREATED
        self._stamp_clock = False       # load() leaves the boot page's clock to start()
        self.ram_mib = ram_mib
        self.shm = shm
        self.kvm = kvm_usable()
        self.domain = None              # libvirt_domain.Domain, under the libvirt driver
        self.pid = 0
        self.pidfd = -1
        self._qmp_sock = self._qmp_peer = self._bell_peer = None
        if config.get().driver == "libvirt":
            self._start_domain(ram_mib, shm)
        else:
            self.ram_fd = os.memfd_create("unifork-ram", os.MFD_CLOEXEC)
            os.ftruncate(self.ram_fd, ram_mib << 20)
            self.bell, self._bell_peer = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
            self.bell.setblocking(False)
            self._qmp_sock, self._qmp_peer = _socket.socketpair(_socket.AF_UNIX,
                                                                _socket.SOCK_STREAM)
        self.layout = layout.Layout(ram_mib << 20, shm.size, shm_high=self.domain is not None)
        self.mem = mmap.mmap(self.ram_fd, ram_mib << 20)
        self.fast = None                # bell.Bell: the fast doorbell, if it has one
        self._fast_peer = None
        if fast_bell and self.kvm and config.get().fast_bell and self.domain is None:
            from workers.vm.bell import bells
            ours, self._fast_peer = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
            try:
                self.fast = bells().open(ours.fileno())
            except BaseException:
                ours.close()
                self._fast_peer.close()
                raise
            ours.detach()               # the bell's now
        self.fds: frozenset[int] = frozenset()  # what the supervisor polls for it
        self.returncode: int | None = None
        self._stderr_r = -1
        self._stderr_buf = b""
        self.log = HostRing.create(self.mem, abi.LOG_ADDR, abi.LOG_SIZE)
        self._qmp = None               # qemu.qmp QMPClient, connected on first use
        self.clock_k: int | None = None  # its clocks read the host's TSC + this, if known

    def _start_domain(self, ram_mib: int, shm: SharedRegion) -> None:
        """Under the libvirt driver: its domain, paused (its QEMU runs, and
        maps the RAM we are about to lay out)."""
        from workers.vm.libvirt_domain import Domain
        self.domain = Domain(ram_mib, shm.fd, shm.size, self.kvm)
        self.ram_fd, self.bell = self.domain.ram_fd, self.domain.bell
        self.pid, self.pidfd = self.domain.pid, self.domain.pidfd

    # -- before boot -------------------------------------------------------
    def load(self, prog: Program, argv: list[bytes], envp: list[bytes], exe: bytes,
             pid: int, ppid: int, stdio: tuple[int, int, int], tty: int = 0,
             tty_size: tuple[int, int] = (0, 0), hostname: bytes = b"unifork") -> None:
        """Lay out (prog), its stack and the boot page in RAM."""
        lay = self.layout
        uid, gid = os.getuid(), os.getgid()
        tsc_khz, hwcap = cpu.machine()
        layout.page_tables(self.mem, lay)
        layout.load_program(self.mem, prog)
        sp = layout.initial_stack(self.mem, lay, prog, argv, envp, exe, uid, gid, hwcap)
        abi.BOOT.put(
            self.mem, abi.BOOT_ADDR, magic=abi.BOOT_MAGIC, abi_version=abi.ABI_VERSION,
            features=(abi.FEAT_KVM if self.kvm else 0) | (abi.FEAT_BELL if self.fast else 0),
            ram_size=lay.ram_size,
            shm_base=lay.shm_base, shm_size=lay.shm_size, tsc_khz=tsc_khz,
            entry=prog.entry, sp=sp, brk=(prog.end + abi.PAGE_SIZE - 1) & -abi.PAGE_SIZE,
            mmap_top=lay.mmap_top, stack_low=lay.stack_low, pid=pid, ppid=ppid,
            uid=uid, gid=gid, stdio_ring=stdio, tty=tty, tty_rows=tty_size[0],
            tty_cols=tty_size[1], seed=os.urandom(32), exe=exe[:255],
            hostname=hostname[:64], realtime_ns=0, host_tsc=0)
        self._stamp_clock = True        # start() does, once QEMU is on its way

    def load_vessel(self) -> None:
        """Lay out a VM with no program: it boots and parks, for a fork to
        fill (the boot page's entry is 0)."""
        lay = self.layout
        layout.page_tables(self.mem, lay)
        abi.BOOT.put(
            self.mem, abi.BOOT_ADDR, magic=abi.BOOT_MAGIC, abi_version=abi.ABI_VERSION,
            features=(abi.FEAT_KVM if self.kvm else 0) | (abi.FEAT_BELL if self.fast else 0),
            ram_size=lay.ram_size, shm_base=lay.shm_base, shm_size=lay.shm_size, entry=0)

    def start(self) -> None:
        """Start QEMU; the guest boots at once."""
        kernel = config.get().kernel
        if not os.path.exists(kernel):
            raise VMError(f"guest kernel {kernel} is missing: run make setup")
        if self.domain is not None:
            self._stamp()
            self.domain.resume()
            self.state = VMState.RUNNING
            return
        passed = (self.ram_fd, self.shm.fd, self._bell_peer.fileno(), self._qmp_peer.fileno())
        fast_fd = self._fast_peer.fileno() if self._fast_peer is not None else -1
        spec = VMSpec(kernel, self.ram_mib, self.shm.size >> 20, *passed, kvm=self.kvm,
                      fast_bell_fd=fast_fd)
        if fast_fd >= 0:
            passed += (fast_fd,)
        argv = spec.argv()
        if os.access(SETPRIV, os.X_OK):
            argv = [SETPRIV, "--pdeathsig", "KILL", "--", *argv]
        self._stderr_r, stderr_w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self._stderr_r, False)
        for fd in passed:
            os.set_inheritable(fd, True)
        try:
            self.pid = os.posix_spawn(
                argv[0], argv, os.environ, setsid=True, file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
                    (os.POSIX_SPAWN_DUP2, stderr_w, 2),
                ])
        except OSError as err:
            raise VMError(f"cannot start QEMU ({argv[0]}): {err.strerror}") from err
        finally:
            os.close(stderr_w)
            for fd in (self.ram_fd, self.shm.fd):
                os.set_inheritable(fd, False)
            self._bell_peer.close()
            self._qmp_peer.close()
            if self._fast_peer is not None:
                self._fast_peer.close()
        self.pidfd = os.pidfd_open(self.pid)
        self.state = VMState.RUNNING
        self._stamp()

    def _stamp(self) -> None:
        """The wall clock and the host's TSC, read together, for the guest's
        clocks (clock.c waits for host_tsc, written last).  As QEMU starts,
        not in load(): the first rdtsc loads ctypes (~2 ms), which QEMU's
        own start-up now hides."""
        if self._stamp_clock:
            abi.BOOT.put(self.mem, abi.BOOT_ADDR, realtime_ns=time.time_ns())
            abi.BOOT.put(self.mem, abi.BOOT_ADDR, host_tsc=cpu.rdtsc())
            self._stamp_clock = False

    # -- between processes ---------------------------------------------------
    @property
    def parked(self) -> bool:
        """Whether the guest has parked (its process ended, or it booted with
        none) and waits to be made another process (workers/fork/clone.py)."""
        mem = self.mem
        return (abi.CTL.get(mem, abi.CTL_ADDR, "req") == abi.Req.EXIT
                and abi.CTL.get(mem, abi.CTL_ADDR, "req_seq")
                != abi.CTL.get(mem, abi.CTL_ADDR, "rep_seq"))

    def go(self) -> None:
        """Let a parked guest whose RAM the host has filled run: it becomes
        the process that RAM holds (park.c)."""
        self.log.corrupt = False        # (the same ring; the parent's copy of it)
        abi.PARK.put(self.mem, abi.PARK_ADDR, go=abi.PARK.get(self.mem, abi.PARK_ADDR, "parked"))
        self.wake()

    def wait_parked(self, timeout: float) -> bool:
        """Wait for a vessel to have booted and parked (load_vessel, start);
        False if its QEMU ended first, or said the guest cannot go on (the
        supervisor says how, as of a process's VM).  A libvirt domain not
        started yet waits, paused: at once.

        :raise VMError: (timeout) passed.
        """
        if self.domain is not None and self.state is VMState.CREATED:
            return True
        deadline = time.monotonic() + timeout
        cpu.rdtsc()                     # its first call loads ctypes (~2 ms): boot() reads it
        while not self.parked:
            if self.poll() is not None or self.check_stderr():
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                raise VMError(f"the VM did not boot within {timeout:g} s")
            select.select([self.bell, self.pidfd, self.stderr_fd], [], [], min(left, 1.0))
            self.take_doorbells()
        return True

    def boot(self) -> None:
        """Start the program load() has laid out, in a vessel that parked as
        it booted and has run no process (load_vessel, start): as if it had
        booted with it, its QEMU's start-up behind it already (park.c).  A
        libvirt domain not started yet is started.

        :raise VMError: the VM has run a process (its kernel's data is not
        as it booted).
        """
        if self.domain is not None and self.state is VMState.CREATED:
            return self.start()
        if abi.PARK.get(self.mem, abi.PARK_ADDR, "parked") != 1:
            raise VMError("only a vessel that has run no process can boot a program")
        self.mem[abi.CTL_ADDR:abi.CTL_ADDR + abi.PAGE_SIZE] = bytes(abi.PAGE_SIZE)
        self._stamp()
        abi.PARK.put(self.mem, abi.PARK_ADDR, boot=1)
        self.go()

    # -- running -------------------------------------------------------------
    def wake(self) -> None:
        """Wake a halted guest: one byte to its doorbell UART."""
        try:
            self.bell.send(b"\1")
        except OSError:
            pass                # a wake-up is already pending, or QEMU is gone

    def take_doorbells(self) -> None:
        """Consume the guest's doorbell bytes (they carry no data)."""
        try:
            while len(self.bell.recv(4096)) == 4096:
                pass
        except OSError:
            pass

    def poll(self) -> int | None:
        """QEMU's exit code if it has exited (and reap it), else None
        (under libvirt, which reaps it: 1 if it ended by itself, -9 if
        we ended it)."""
        if self.returncode is None and self.domain is not None:
            if self.domain.exited():
                self.returncode, self.state = 1, VMState.STOPPED
        elif self.returncode is None and self.pid:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._reaped(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None and self.domain is not None:
            self.domain.exited(None)
            self.poll()
        elif self.returncode is None:
            self._reaped(os.waitpid(self.pid, 0)[1])
        return self.returncode

    def _reaped(self, status: int) -> None:
        self.returncode = os.waitstatus_to_exitcode(status)
        self.state = VMState.STOPPED

    async def qmp(self):
        """This VM's QMP client (qemu.qmp), connected on first use."""
        if self._qmp is None:
            import socket
            from qemu.qmp import QMPClient
            client = QMPClient(f"vm{self.pid}")
            await client.connect(socket.socket(fileno=self._qmp_sock.detach()))
            self._qmp = client
        return self._qmp

    async def aclose_qmp(self) -> None:
        if self._qmp is not None:
            try:
                await self._qmp.disconnect()
            except Exception:       # noqa: BLE001 - QEMU is gone: nothing to say
                pass
            self._qmp = None

    def nmi(self, aio) -> None:
        """The host's nudge: an NMI (QMP inject-nmi, run by (aio); or libvirt's)."""
        if self.domain is not None:
            self.domain.inject_nmi()
            return
        from workers.vm.qmp import inject_nmi
        aio(inject_nmi(self))

    def quit(self, grace: float = 1.0) -> None:
        """Ask QEMU to quit over QMP; kill it if that does not work in time."""
        if self.poll() is not None:
            return
        if self._qmp is not None or self.domain is not None:           # QMP is held by the fork engine's loop
            self.kill()
            return
        try:
            import socket
            from qemu.qmp.legacy import QEMUMonitorProtocol
            sock = socket.socket(fileno=self._qmp_sock.detach())
            qmp = QEMUMonitorProtocol(sock)     # type: ignore[arg-type]
            qmp.settimeout(grace)
            qmp.connect()
            qmp.cmd("quit")
            qmp.close()
        except Exception:       # noqa: BLE001 - any failure ends in SIGKILL below
            pass
        deadline = time.monotonic() + grace
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        self.kill()

    def kill(self) -> None:
        if self.poll() is None and self.domain is not None:
            self.domain.destroy()
            self.domain.exited(None)
            self.returncode, self.state = -9, VMState.STOPPED
        elif self.poll() is None:
            os.kill(self.pid, 9)        # SIGKILL
            self.wait()

    # QEMU's words for a guest it cannot run on: it then pauses the VM
    # instead of exiting (a triple fault in emulated ring 0 on nested KVM).
    FATAL = (b"KVM internal error", b"emulation failure")

    @property
    def stderr_fd(self) -> int:
        """What the supervisor polls for QEMU's words (under libvirt, which
        keeps them, its pidfd again)."""
        return self._stderr_r if self.domain is None else self.pidfd

    def check_stderr(self) -> bool:
        """Collect what QEMU printed; True if it says the guest cannot go on."""
        if self.domain is not None:
            return self.domain.fatal()
        if self._stderr_r < 0:
            return False
        try:
            while chunk := os.read(self._stderr_r, 65536):
                self._stderr_buf += chunk
        except (BlockingIOError, OSError):
            pass
        return any(f in self._stderr_buf for f in self.FATAL)

    def qemu_stderr(self) -> str:
        """What QEMU printed (all of it once it has exited)."""
        self.check_stderr()
        lines = (self._stderr_buf.decode(errors="replace").strip().splitlines()
                 if self.domain is None else self.domain.stderr_lines())
        return "; ".join(lines[:3])

    @property
    def ctl(self) -> dict:
        return abi.CTL.read(self.mem, abi.CTL_ADDR)

    def close(self) -> None:
        """Stop QEMU if it still runs and release every resource."""
        if self.state is VMState.CLOSED:
            return
        if self.domain is not None:
            self.domain.close()         # (its fds: pidfd, ram_fd)
            self.pidfd = self.ram_fd = -1
        elif self.pid:
            self.kill()
        for fd in (self.pidfd, self._stderr_r):
            if fd >= 0:
                os.close(fd)
        self.log.release()
        for s in (self.bell, self._bell_peer, self._qmp_sock, self._qmp_peer, self._fast_peer):
            try:
                if s is not None:
                    s.close()
            except OSError:
                pass
        if self.fast is not None:       # (QEMU is gone: it asks nothing more)
            self.fast.close()
            self.fast = None
        self.mem.close()
        if self.ram_fd >= 0:
            os.close(self.ram_fd)
        self.state = VMState.CLOSED


def vessel(ram_mib: int, shm: SharedRegion, fast_bell: bool = False) -> VM:
    """A VM on its way with no program: it boots and parks, for a fork to
    fill (workers/fork/clone.py) or a program to start in it (VM.boot)."""
    vm = VM(ram_mib, shm, fast_bell)
    try:
        vm.load_vessel()
        vm.start()
    except BaseException:
        vm.close()
        raise
    return vm
