"""The job's idle VMs on this host: parked VMs that a fork fills.

A VM whose process has ended parks (unifork_abi.h, "Vessels") and comes
back here if the job wants it; the pool also boots VMs with no program,
in the background, which park as soon as they have booted.  A fork takes
one (clone.py fills it with the child) and never waits for a QEMU to
start unless none is parked or booting.  Idle VMs never pass from one job
to another (they map the job's shared region, and have its VM size), and
hold no slot: a slot is a VM that runs a process.

How many: a child's VM comes back when it ends, so a fork-and-wait loop
runs on two VMs by turns; the pool boots more when forks find none parked
(want: one, and one more for each such fork in the last second), up to
(cap) idle and booting, and keeps every VM that comes back while it has
fewer than (cap) idle.  A VM idle for LINGER seconds is let go (its QEMU
and RAM freed).

Under the libvirt driver a VM takes libvirtd ~0.6 s to create (createXML),
so it is made in a thread of its own, and the supervisor goes on.
"""
from __future__ import annotations

import collections
import select
import threading
import time

from workers import config
from workers.errors import VMError
from workers.vm.rings import SharedRegion
from workers.vm.machine import VM, vessel

LINGER = 5.0            # seconds an idle VM is kept without a fork taking it
MISS_WINDOW = 1.0       # the forks of the last second that found no VM size the pool


class Pool:
    """Idle VMs of (ram_mib) MiB mapping (shm), at most (cap) of them."""

    def __init__(self, ram_mib: int, shm: SharedRegion, cap: int, fast_bell: bool = False) -> None:
        self.ram_mib, self.shm, self.cap = ram_mib, shm, max(1, cap)
        self.fast_bell = fast_bell  # its VMs have the fast doorbell (as the job's do)
        self.idle: list[tuple[VM, float]] = []      # parked: (VM, since when)
        self.booting: list[VM] = []                 # started, not parked yet
        self._misses: collections.deque[float] = collections.deque()
        self._threads: list[threading.Thread] = []  # making VMs (the libvirt driver)
        self._made: list[VM | BaseException] = []   # what they made, or why not
        self._closed = False
        self._lock = threading.Lock()               # between _make and close

    @property
    def want(self) -> int:
        """How many VMs to have idle or booting: one, and one for each recent
        fork that found none parked."""
        horizon = time.monotonic() - MISS_WINDOW
        while self._misses and self._misses[0] < horizon:
            self._misses.popleft()
        return min(self.cap, 1 + len(self._misses))

    def fill(self) -> None:
        """Boot VMs until (want) are idle or on their way; they park by
        themselves, in the background."""
        self._settle()
        for _ in range(self.want - len(self.idle) - len(self.booting) - len(self._threads)):
            self._boot()

    def _boot(self) -> None:
        if config.get().driver == "libvirt":
            t = threading.Thread(target=self._make, name="vessel", daemon=True)
            self._threads.append(t)
            t.start()
            return
        self.booting.append(self._new())

    def _make(self) -> None:
        """A thread's: a VM for the pool, in (_made) for _settle to take."""
        try:
            vm = self._new()
        except BaseException as err:    # noqa: BLE001 - told by _settle
            self._made.append(err)
            return
        with self._lock:
            keep = not self._closed
            if keep:
                self._made.append(vm)
        if not keep:
            vm.close()

    def _new(self) -> VM:
        return vessel(self.ram_mib, self.shm, self.fast_bell)

    def _settle(self) -> str | None:
        """Booting VMs that have parked are idle now; dead ones are dropped.
        What QEMU said of the last that failed to boot, if one did (not one
        killed from outside)."""
        failed = None
        self._threads = [t for t in self._threads if t.is_alive()]
        while self._made:
            made = self._made.pop(0)
            if isinstance(made, BaseException):
                failed = str(made)
            else:
                self.booting.append(made)
        for vm in list(self.booting):
            if vm.poll() is not None or vm.check_stderr():
                self.booting.remove(vm)
                vm.kill()
                if vm.returncode >= 0 or vm.check_stderr():
                    failed = vm.qemu_stderr() or f"QEMU exited ({vm.returncode})"
                vm.close()
            elif vm.parked:
                self.booting.remove(vm)
                vm.take_doorbells()
                self.idle.append((vm, time.monotonic()))
        return failed

    def take(self, timeout: float) -> VM | None:
        """A parked VM, waiting up to (timeout) for one to boot if none is;
        None if none was ready in time.  VMs that died are dropped.

        :raise VMError: a VM booted for it failed before it parked (QEMU's
            words say why): the host cannot make VMs now.
        """
        deadline = time.monotonic() + timeout
        missed = False
        while True:
            failed = self._settle()
            while self.idle:
                vm, _ = self.idle.pop()     # the last parked: its pages are warm
                if vm.poll() is None and vm.parked:
                    vm.take_doorbells()
                    return vm
                vm.close()
            if failed and not self.booting and not self._threads:
                raise VMError(f"a VM for the child died as it booted: {failed}")
            if not missed:
                missed = True
                self._misses.append(time.monotonic())
            if not self.booting and not self._threads:
                self._boot()
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            poller = select.poll()
            for vm in self.booting:         # its doorbell says it has parked
                poller.register(vm.bell.fileno(), select.POLLIN)
                poller.register(vm.pidfd, select.POLLIN)
            poller.poll(min(left, 0.1) * 1000)

    def give(self, vm: VM) -> bool:
        """Keep (vm), parked after its process ended; if the pool is full,
        let the VM idle longest go instead (the pages (vm) holds are worth
        keeping: a child filled into them needs no new ones)."""
        self._settle()
        if vm.poll() is not None:
            return False
        if len(self.idle) >= self.cap:
            self.idle.pop(0)[0].close()
        vm.take_doorbells()
        self.idle.append((vm, time.monotonic()))
        return True

    def tend(self) -> float | None:
        """Let go of the VMs idle for LINGER, take in the booted ones, drop
        dead ones; when (monotonic) to tend again, if a VM is idle."""
        self._settle()
        now = time.monotonic()
        for vm, since in list(self.idle):
            if now - since >= LINGER:
                self.idle.remove((vm, since))
                vm.close()
        return min((since + LINGER for _, since in self.idle), default=None)

    def close(self) -> None:
        with self._lock:                # a VM still being made closes as it is made
            self._closed = True
        self._settle()
        for vm in [*self.booting, *(vm for vm, _ in self.idle)]:
            vm.close()
        self.booting.clear()
        self.idle.clear()
