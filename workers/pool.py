"""The warm pool: QEMUs started ahead of time, paused and waiting for a
fork to migrate a guest into them (`-incoming defer`).

A fork takes one and the pool starts a replacement at once, so a fork
never waits for a QEMU to start unless the pool is empty.  A pool belongs to
one job on this host: its VMs map the job's shared-memory region and have
the job's VM size.
"""
from __future__ import annotations

from .fork import QMPThread, arm
from .rings import SharedRegion
from .vm import VM


class Pool:
    """Up to (size) idle VMs of (ram_mib) MiB mapping (shm); they are armed
    for a fork (fork.arm) in the background, on (qmp)'s loop."""

    def __init__(self, ram_mib: int, shm: SharedRegion, qmp: QMPThread, size: int = 2,
                 fast_bell: bool = False) -> None:
        self.ram_mib, self.shm, self.size, self.qmp = ram_mib, shm, size, qmp
        self.fast_bell = fast_bell  # its VMs have the fast doorbell (as the job's do)
        self.idle: list[VM] = []

    def fill(self, size: int) -> None:
        """Start VMs until (size) are idle; they start and arm asynchronously.
        Idle VMs hold no slot: a slot is a VM that runs a process."""
        while len(self.idle) < size:
            vm = VM(self.ram_mib, self.shm, self.fast_bell)
            vm.start(incoming=True)
            vm.armed = self.qmp.submit(arm(vm))
            self.idle.append(vm)

    def take(self, timeout: float = 30.0) -> VM | None:
        """An armed idle VM (waiting for the oldest to be ready), or None if
        the pool is empty.  VMs that died or failed to arm are dropped."""
        while self.idle:
            vm = self.idle.pop(0)
            try:
                vm.armed.result(timeout)
            except Exception:       # noqa: BLE001 - a broken pool VM: drop it
                self.discard(vm)
                continue
            if vm.poll() is None:
                return vm
            self.discard(vm)
        return None

    def discard(self, vm: VM) -> None:
        self.qmp.call(vm.aclose_qmp())
        vm.close()

    def close(self) -> None:
        for vm in self.idle:
            if vm.armed is not None:
                vm.armed.cancel()
            self.discard(vm)
        self.idle.clear()
