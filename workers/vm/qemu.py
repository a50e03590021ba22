"""The QEMU command line for a unifork VM, and the choice of accelerator.

A VM is a `microvm` with no firmware tables, one vCPU, RAM and the job's
shared-memory region as two `memory-backend-file,share=on` NUMA nodes (the
second appears right after RAM), the doorbell UART (COM2), isa-debug-exit
for power-off, QMP, and for a VM of a job across hosts the fast doorbell's
vhost-user-blk on a virtio-mmio slot (bell.py).  Files and sockets are passed as inherited file
descriptors (/proc/self/fd/N, fd=N): nothing is created on disk.
"""
from __future__ import annotations

import fcntl
import os

from workers import config
from workers.errors import VMError

KVM_GET_API_VERSION = 0xAE00


_kvm: bool | None = None


def kvm_usable() -> bool:
    """Whether /dev/kvm opens and speaks KVM API 12 (the start-up check).

    UNIFORK_ACCEL=tcg forces TCG; UNIFORK_ACCEL=kvm insists on KVM.
    """
    global _kvm
    if _kvm is None:
        _kvm = _check_kvm()
    return _kvm


def _check_kvm() -> bool:
    want = config.get().accel
    if want == "tcg":
        return False
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        if want == "kvm":
            raise VMError(f"UNIFORK_ACCEL=kvm but /dev/kvm cannot be opened: {err}") from err
        return False
    try:
        return fcntl.ioctl(fd, KVM_GET_API_VERSION) == 12
    except OSError:
        return False
    finally:
        os.close(fd)


def qemu_binary() -> str:
    """The QEMU executable's path, from UNIFORK_QEMU or PATH."""
    qemu = config.get().qemu
    if os.sep in qemu:
        return qemu
    for d in os.get_exec_path():
        path = os.path.join(d, qemu)
        if os.access(path, os.X_OK):
            return path
    raise VMError(f"{qemu} not found: install qemu-system-x86 (make setup)")


class VMSpec:
    """What a VM is made of; the fds must be inheritable by QEMU."""

    def __init__(self, kernel: str, ram_mib: int, shm_mib: int, ram_fd: int, shm_fd: int,
                 doorbell_fd: int, qmp_fd: int, kvm: bool, fast_bell_fd: int = -1) -> None:
        self.kernel, self.ram_mib, self.shm_mib = kernel, ram_mib, shm_mib
        self.ram_fd, self.shm_fd = ram_fd, shm_fd
        self.doorbell_fd, self.qmp_fd = doorbell_fd, qmp_fd
        self.kvm = kvm
        self.fast_bell_fd = fast_bell_fd    # vhost-user socket of the fast doorbell, or -1

    def argv(self) -> list[str]:
        accel = "kvm" if self.kvm else "tcg"
        cpu = "host,-arch-capabilities" if self.kvm else "max"
        args = [
            qemu_binary(),
            "-M", f"microvm,accel={accel},acpi=off,pit=off,pic=off,rtc=off,"
                  "isa-serial=off,x-option-roms=off",
            "-cpu", cpu, "-smp", "1",
            "-m", f"{self.ram_mib + self.shm_mib}M",
            "-object", f"memory-backend-file,id=ram,size={self.ram_mib}M,"
                       f"mem-path=/proc/self/fd/{self.ram_fd},share=on",
            "-object", f"memory-backend-file,id=shm,size={self.shm_mib}M,"
                       f"mem-path=/proc/self/fd/{self.shm_fd},share=on",
            "-numa", "node,nodeid=0,memdev=ram",
            "-numa", "node,nodeid=1,memdev=shm",
            "-chardev", f"socket,id=bell,fd={self.doorbell_fd}",
            "-device", "isa-serial,chardev=bell,index=1",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
            "-chardev", f"socket,id=qmp,fd={self.qmp_fd}",
            "-mon", "chardev=qmp,mode=control",
            "-nodefaults", "-no-user-config", "-display", "none",
            "-no-reboot", "-kernel", self.kernel,
        ]
        if self.fast_bell_fd >= 0:  # its notify register, an ioeventfd (bell.py)
            args += ["-chardev", f"socket,id=fastbell,fd={self.fast_bell_fd}",
                     "-device", "vhost-user-blk,chardev=fastbell,num-queues=1",
                     "-global", "virtio-mmio.force-legacy=true"]     # (bell.c says why)
        return args
