"""The warm pool: QEMUs started ahead of time, paused and waiting for a
fork to migrate a guest into them (`-incoming defer`).

A fork takes one and the pool starts a replacement at once, so a fork
never waits for a QEMU to start unless the pool is empty.  A pool belongs to
one job on this host: its VMs map the job's shared-memory region and have
the job's VM size.
"""
from __future__ import annotations

from .rings import SharedRegion
from .vm import VM


class Pool:
    """Up to (size) idle VMs of (ram_mib) MiB mapping (shm)."""

    def __init__(self, ram_mib: int, shm: SharedRegion, size: int = 2) -> None:
        self.ram_mib, self.shm, self.size = ram_mib, shm, size
        self.idle: list[VM] = []

    def fill(self, room: int) -> None:
        """Start VMs until the pool is full, or (room) more would exceed
        the host's limit; starting is asynchronous (QEMU boots alone)."""
        while len(self.idle) < self.size and room > 0:
            vm = VM(self.ram_mib, self.shm)
            vm.start(incoming=True)
            self.idle.append(vm)
            room -= 1

    def take(self) -> VM | None:
        """An idle VM, or None if the pool is empty.  Dead ones are dropped."""
        while self.idle:
            vm = self.idle.pop(0)
            if vm.poll() is None:
                return vm
            vm.close()
        return None

    def close(self) -> None:
        for vm in self.idle:
            vm.close()
        self.idle.clear()
