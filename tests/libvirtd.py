"""virtlogd and libvirtd for the libvirt driver's tests and bench/drivers.py,
started by hand (there is no systemd) and stopped after.

libvirtd listens on a socket of its own (unix_sock_dir in a directory of
ours, given to unifork as UNIFORK_LIBVIRT_URI), and logs there; as root,
its QEMU driver and virtlogd keep their state where a privileged libvirt
always does (/run/libvirt, /var/lib/libvirt, /var/log/libvirt), so only
one such pair may run at a time.

What a Debian host with libvirt-daemon-system has and this one may not:
the QEMU user (libvirt-qemu, made by make setup) must be able to open
/dev/kvm, or libvirt finds KVM "not available now" and probes QEMU's
capabilities again on every domain it starts (~52 s here instead of
~0.5 s): udev's rule makes /dev/kvm root:kvm 0660, so does start().

And an init that reaps: libvirt's QEMUs are daemons (their parent is
init), and libvirt waits for a QEMU it ends to be gone, zombie included;
this machine's init reaps every ~1-2 s, so a domain took that long to end.
The daemons run under reap() (a child subreaper), which reaps at once.
"""
from __future__ import annotations

import glob
import grp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

LIBVIRTD, VIRTLOGD = "/usr/sbin/libvirtd", "/usr/sbin/virtlogd"


def available() -> str | None:
    """Why the libvirt driver cannot be tried here, or None."""
    for path in (LIBVIRTD, VIRTLOGD):
        if not os.access(path, os.X_OK):
            return f"{path} is missing (make setup installs libvirt-daemon)"
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return "libvirt-python is missing (make setup installs it)"
    return None


def kvm_for_group() -> None:
    """/dev/kvm root:kvm 0660, as udev makes it on Debian."""
    if os.path.exists("/dev/kvm"):
        os.chown("/dev/kvm", 0, grp.getgrnam("kvm").gr_gid)
        os.chmod("/dev/kvm", 0o660)


class Daemons:
    """A virtlogd and a libvirtd of ours; uri is what unifork is given."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="unifork-libvirt-")
        self.uri = f"qemu:///system?socket={self.dir}/libvirt-sock"
        self.env = {"UNIFORK_LIBVIRT_URI": self.uri}
        self.pids: list[int] = []

    def start(self) -> "Daemons":
        kvm_for_group()
        for daemon in ("virtlogd", "libvirtd"):
            if _running(daemon):
                raise RuntimeError(f"a {daemon} runs already: stop it first")
        d = self.dir
        with open(f"{d}/virtlogd.conf", "w") as f:
            f.write(f'log_outputs = "3:file:{d}/virtlogd.log"\n')
        with open(f"{d}/libvirtd.conf", "w") as f:
            f.write(f'unix_sock_dir = "{d}"\nunix_sock_rw_perms = "0700"\n'
                    'auth_unix_rw = "none"\nauth_unix_ro = "none"\n'
                    f'log_outputs = "3:file:{d}/libvirtd.log"\n')
        self._spawn([VIRTLOGD, "-f", f"{d}/virtlogd.conf", "-p", f"{d}/virtlogd.pid"],
                    "/run/libvirt/virtlogd-sock")
        self._spawn([LIBVIRTD, "-f", f"{d}/libvirtd.conf", "-p", f"{d}/libvirtd.pid"],
                    f"{d}/libvirt-sock")
        return self

    def _spawn(self, argv: list[str], sock: str) -> None:
        """Start a daemon in the foreground, under a reaper of ours (reap());
        wait for its socket."""
        argv = [sys.executable, os.path.abspath(__file__), "--reap", *argv]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        self.pids.append(proc.pid)
        self._procs = getattr(self, "_procs", []) + [proc]
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{argv[3]} did not start: see {self.dir}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop libvirtd (its domains' QEMUs with it: they are transient and
        ours), then virtlogd; remove our directory."""
        self.destroy_all()
        for proc in reversed(getattr(self, "_procs", [])):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._procs = []
        shutil.rmtree(self.dir, ignore_errors=True)
        for log in glob.glob("/var/log/libvirt/qemu/unifork-*.log"):    # the last few
            os.unlink(log)


    def domains(self) -> list[str]:
        """The names of the domains running (`virsh list`)."""
        out = subprocess.run(["virsh", "-c", self.uri, "list", "--name"], capture_output=True,
                             text=True, timeout=30)
        return [n for n in out.stdout.split() if n]

    def destroy_all(self) -> None:
        """Destroy every unifork domain left (a test that failed midway)."""
        if not os.path.exists(f"{self.dir}/libvirt-sock"):
            return
        for name in self.domains():
            if name.startswith("unifork-"):
                subprocess.run(["virsh", "-c", self.uri, "destroy", name], capture_output=True,
                               timeout=30)


def _running(name: str) -> bool:
    """Whether a process called (name) runs (pgrep by exact name)."""
    return subprocess.run(["pgrep", "-x", name], capture_output=True).returncode == 0


def reap(argv: list[str]) -> int:
    """Run (argv) as our child and reap every orphan of its tree that lands
    on us (PR_SET_CHILD_SUBREAPER) as it ends; pass SIGTERM on; its status."""
    import ctypes
    PR_SET_CHILD_SUBREAPER = 36
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    child = subprocess.Popen(argv)
    signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
    status = None
    while True:
        try:
            pid, st = os.wait()
        except ChildProcessError:
            return status or 0
        except InterruptedError:
            continue
        if pid == child.pid:
            status = os.waitstatus_to_exitcode(st)
            child.returncode = status


if __name__ == "__main__" and sys.argv[1:2] == ["--reap"]:
    sys.exit(reap(sys.argv[2:]))
