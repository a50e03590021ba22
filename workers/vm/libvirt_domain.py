"""The libvirt driver: a unifork VM as a transient libvirt domain.

`--driver libvirt` (UNIFORK_DRIVER) runs each VM as a domain that
libvirtd starts (createXML, never defineXML: nothing is defined, and the
domain is gone when its QEMU ends; AUTODESTROY: also when we end, as
setpriv --pdeathsig does for the direct driver).  libvirt has no microvm,
so the domain is a `pc` machine booted by qboot (SeaBIOS takes ~3.8 s
here and writes its tables over the top of RAM, where the program's
stack is), with what libvirt knows of:

- RAM: one NUMA cell, `<memoryBacking><source type='memfd'/><access
  mode='shared'/>`: QEMU's memory-backend-memfd, which the host opens
  through /proc/QEMU/fd (QEMU is started paused; the host lays out the
  boot page, the program and the page tables, then resumes it);
- the job's shared region: an `<memory model='nvdimm'>` whose source is
  the job's memfd (/proc/OURS/fd/N: one file for every domain of the job),
  at abi.SHM_HIGH (4 GiB, the start of a pc's device memory; the boot
  page's shm_base says so).  An nvdimm needs ACPI, which gives the guest
  its way to power off (abi.ACPI_PM1A_CNT; `<on_poweroff>destroy`);
- the doorbell: COM2, `<serial type='unix'>` connecting to a socket the
  host listens on for the moment QEMU starts (then it is unlinked); its
  peer credentials give QEMU's pid, whose pidfd the supervisor polls;
- the host's nudge: virDomainInjectNMI.  No console: the guest's log is
  a ring in its RAM.  No fast doorbell (it is a virtio-mmio device, and a
  pc has none): VMs of jobs across hosts ring COM2 only.

QEMU runs as root (a static DAC label), like the direct driver's.
"""
from __future__ import annotations

import itertools
import os
import select
import shutil
import signal
import socket
import struct
import tempfile
import threading
import time

from workers import abi, config
from workers.errors import VMError
from workers.vm.qemu import qemu_binary

QBOOT = "/usr/share/qemu/qboot.rom"
LOG_DIR = "/var/log/libvirt/qemu"        # QEMU's stderr, through virtlogd
ACCEPT_WAIT = 10.0                       # seconds for QEMU to reach our doorbell socket
FATAL = (b"KVM internal error", b"emulation failure")
LOG_LINGER = 10.0                        # seconds after which libvirt is done with a log

_conn = None               # a domain made with auto-destroy lives as long as its connection
_conn_pid = 0
_conn_lock = threading.Lock()
_serial = itertools.count(1)
_job = ""                                # what domains are named after (for_job)
_closed_logs: list[tuple[float, str]] = []      # (when, the log of a domain closed then)


def connection():
    """This process's connection to libvirtd (UNIFORK_LIBVIRT_URI), opened
    on first use (again in a forked process: a connection is not shared).

    :raise VMError: libvirt-python is missing, or libvirtd does not answer.
    """
    with _conn_lock:        # (the pool's threads make VMs too)
        return _connect()


def _connect():
    global _conn, _conn_pid
    if _conn is not None and _conn_pid == os.getpid():
        return _conn
    try:
        import libvirt
    except ImportError as err:
        raise VMError("the libvirt driver needs libvirt-python: run make setup") from err
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)   # errors are raised
    uri = config.get().libvirt_uri
    try:
        _conn = libvirt.open(uri)
    except libvirt.libvirtError as err:
        raise VMError(f"libvirt is not running at {uri} ({err.get_error_message()}): "
                      "start virtlogd and libvirtd, or set UNIFORK_LIBVIRT_URI") from None
    _conn_pid = os.getpid()
    _sweep_logs(_conn)
    return _conn


def check_reachable() -> None:
    """Whether libvirtd answers (raise VMError if not), keeping no
    connection: a worker asks before its pool's processes fork from it."""
    global _conn
    with _conn_lock:
        conn, _conn = _connect(), None
    conn.close()


def _sweep_logs(conn) -> None:
    """Remove the logs libvirt kept of unifork domains that ended a while
    ago (one a VM: libvirt writes the last line as it drops a domain, and
    keeps the log of one that ended with the process that made it)."""
    import glob
    try:
        running = {d.name() for d in conn.listAllDomains()}
    except Exception:       # noqa: BLE001 - a sweep another time
        return
    old = time.time() - 60
    for path in glob.glob(os.path.join(LOG_DIR, "unifork-*.log")):
        try:
            if os.path.basename(path)[:-4] not in running and os.stat(path).st_mtime < old:
                os.unlink(path)
        except OSError:
            pass


def for_job(label: str) -> None:
    """Name the domains made from now on after job (label): `unifork run`'s
    pid, or a cluster job's id (a subtree's, on another host, too)."""
    global _job
    _job = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def domain_xml(name: str, title: str, ram_mib: int, shm_path: str, shm_size: int,
               bell_path: str, kvm: bool) -> str:
    """The domain: a pc of (ram_mib) MiB in one shared memfd cell, the
    job's region as an nvdimm at abi.SHM_HIGH, COM2 to (bell_path)."""
    from xml.sax.saxutils import escape

    def text(v: str) -> str:
        return escape(v, {"'": "&apos;"})
    kernel, shm_path, bell_path = text(config.get().kernel), text(shm_path), text(bell_path)
    cpu = ("<cpu mode='host-passthrough' check='none' migratable='off'>"
           "<feature policy='disable' name='arch-capabilities'/>" if kvm
           else "<cpu mode='maximum'>")
    shm_kib, ram_kib = shm_size >> 10, ram_mib << 10
    return f"""<domain type='{"kvm" if kvm else "qemu"}'>
  <name>{name}</name><title>{text(title)}</title>
  <memory unit='KiB'>{ram_kib + shm_kib}</memory>
  <maxMemory slots='1' unit='KiB'>{(abi.SHM_HIGH >> 10) + shm_kib}</maxMemory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><loader type='rom'>{QBOOT}</loader>
    <kernel>{kernel}</kernel></os>
  <features><acpi/></features>
  {cpu}<numa><cell id='0' cpus='0' memory='{ram_kib}' unit='KiB' memAccess='shared'/></numa></cpu>
  <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <emulator>{text(qemu_binary())}</emulator>
    <serial type='unix'><source mode='connect' path='{bell_path}'/><target port='1'/></serial>
    <memory model='nvdimm' access='shared'><source><path>{shm_path}</path></source>
      <target><size unit='KiB'>{shm_kib}</size><node>0</node></target>
      <address type='dimm' slot='0' base='{abi.SHM_HIGH:#x}'/></memory>
    <controller type='usb' model='none'/><memballoon model='none'/>
    <video><model type='none'/></video>
  </devices>
  <seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>
</domain>"""


class Domain:
    """One VM's domain, created paused: its RAM (ram_fd, QEMU's memfd),
    its doorbell socket (bell), QEMU's pid and pidfd."""

    def __init__(self, ram_mib: int, shm_fd: int, shm_size: int, kvm: bool) -> None:
        import libvirt
        self.conn = conn = connection()     # (held: its domains end with it)
        job = _job or str(os.getpid())
        self.name = f"unifork-{job}-{next(_serial)}"
        self.dom = None
        self.ram_fd = self.pidfd = -1
        self._log_seen = 0
        where = tempfile.mkdtemp(prefix="unifork-bell-")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            path = os.path.join(where, "bell")
            listener.bind(path)
            listener.listen(1)
            xml = domain_xml(self.name, f"unifork: a VM of job {job}", ram_mib,
                             f"/proc/{os.getpid()}/fd/{shm_fd}", shm_size, path, kvm)
            try:
                self.dom = conn.createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED
                                          | libvirt.VIR_DOMAIN_START_AUTODESTROY)
            except libvirt.libvirtError as err:
                raise VMError(f"libvirt cannot start a VM: {err.get_error_message()}") from None
            self.bell = self._accept(listener)
        except BaseException:
            self.close()
            raise
        finally:
            listener.close()
            shutil.rmtree(where, ignore_errors=True)

    def _accept(self, listener: socket.socket) -> socket.socket:
        """QEMU's connection to our doorbell socket; its pid, pidfd and RAM."""
        if not select.select([listener], [], [], ACCEPT_WAIT)[0]:
            raise VMError(f"libvirt's QEMU for {self.name} did not connect its doorbell")
        bell, _ = listener.accept()
        bell.setblocking(False)
        creds = bell.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        self.pid = struct.unpack("3i", creds)[0]
        self.pidfd = os.pidfd_open(self.pid)
        self.ram_fd = _open_ram(self.pid)
        return bell

    def resume(self) -> None:
        try:
            self.dom.resume()
        except Exception as err:        # noqa: BLE001 - libvirtError: said in one line
            raise VMError(f"libvirt cannot start {self.name}: {err}") from None

    def inject_nmi(self) -> None:
        self.dom.injectNMI(0)

    def destroy(self) -> None:
        """End its QEMU: SIGKILL, as the direct driver ends its own; libvirt
        drops the domain as it sees QEMU gone.  (virDomainDestroy sends
        SIGTERM and polls every 200 ms until QEMU is gone: 0.2 s a VM with
        an init that reaps at once, 1.2-1.8 s on this machine.)  A domain
        whose QEMU we never heard from is destroyed through libvirt."""
        if self.pidfd >= 0:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except OSError:     # gone already: nothing to stop
                pass
        elif self.dom is not None:
            try:
                self.dom.destroy()
            except Exception:   # noqa: BLE001 - gone already
                pass

    def exited(self, timeout: float = 0.0) -> bool:
        """Whether its QEMU has ended (waiting up to (timeout))."""
        return bool(self.pidfd >= 0 and select.select([self.pidfd], [], [], timeout)[0])

    def fatal(self) -> bool:
        """Whether QEMU said it cannot run the guest (it then pauses it)."""
        try:
            size = os.stat(self.log_path).st_size
        except OSError:
            return False
        if size == self._log_seen:
            return False
        self._log_seen = size
        return any(f in self._log() for f in FATAL)

    @property
    def log_path(self) -> str:
        return os.path.join(LOG_DIR, self.name + ".log")

    def _log(self) -> bytes:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()
        except OSError:
            return b""

    def stderr_lines(self) -> list[str]:
        """What QEMU printed (libvirt's own lines of the log left out)."""
        text = self._log().decode(errors="replace").splitlines()
        return [line.split("Z ", 1)[-1] for line in text
                if not line.startswith("LC_ALL=") and ("qemu-system" in line or "KVM" in line)]

    def close(self) -> None:
        """End the domain; forget its log; close what we hold of it."""
        self.destroy()
        self.dom = None
        if self.pidfd >= 0:
            self.exited(5.0)
        for fd in (self.pidfd, self.ram_fd):
            if fd >= 0:
                os.close(fd)
        self.pidfd = self.ram_fd = -1
        _forget_log(self.log_path)


def _forget_log(path: str) -> None:
    """Remove a closed domain's log, and those of domains closed a while
    ago: libvirt writes its last line ("shutting down") as it drops the
    domain, seconds after its QEMU ended."""
    now = time.monotonic()
    _closed_logs.append((now, path))
    while _closed_logs and _closed_logs[0][0] < now - LOG_LINGER:
        try:
            os.unlink(_closed_logs.pop(0)[1])
        except OSError:
            pass
    try:
        os.unlink(path)
    except OSError:
        pass


def _open_ram(pid: int) -> int:
    """QEMU (pid)'s RAM: its memory-backend-memfd, opened read-write."""
    fds = f"/proc/{pid}/fd"
    for n in os.listdir(fds):
        try:
            if os.readlink(f"{fds}/{n}").startswith("/memfd:memory-backend-memfd"):
                return os.open(f"{fds}/{n}", os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue
    raise VMError(f"libvirt's QEMU (pid {pid}) has no memfd RAM")
