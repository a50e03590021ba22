"""The fast doorbell's host end (native/bell.c; guest/include/unifork_abi.h,
"The fast doorbell").

A VM of a job that spans hosts gets a vhost-user-blk device whose only use
is its queue's notify register: the guest rings it from ring 3 in ~3 us
and KVM signals an eventfd that the bridge's thread (relay.c) waits on,
where COM2 holds the guest ~50 us and reaches us ~57 us later.  The
vhost-user socket is answered by one C thread per process (`bells()`):
QEMU asks it things while guests wait (at start, when the guest starts
the device, when a fork stops and restarts it).  Only under KVM: with TCG
there is no ioeventfd, and the guest keeps COM2.
"""
from __future__ import annotations

import os
import threading

from workers.native.lib import BELLS_STATS, counters, native


class Bell:
    """One VM's fast doorbell: (fd) is readable when the guest rang."""

    def __init__(self, bells: "Bells", sock_fd: int) -> None:
        self._bells = bells
        self._c = bells._lib.uf_bell_new(bells._c, sock_fd)     # takes sock_fd
        if not self._c:
            raise OSError("the fast doorbell's backend cannot take another VM")
        self.fd = bells._lib.uf_bell_fd(self._c)

    @property
    def handle(self) -> int:
        """What relay.c is told (uf_relay_vms)."""
        return self._c

    def take(self) -> bool:
        """Whether the guest rang since the last take."""
        return bool(self._bells._lib.uf_bell_take(self._c))

    def close(self) -> None:
        if self._c:
            self._bells._lib.uf_bell_free(self._bells._c, self._c)
            self._c = None


class Bells:
    """The process's vhost-user backend thread."""


    def __init__(self) -> None:
        lib = self._lib = native()
        self._c = lib.uf_bells_new()
        if not self._c:
            raise OSError("the fast doorbell's backend thread did not start")

    def open(self, sock_fd: int) -> Bell:
        """A bell on vhost-user socket (sock_fd), whose QEMU is not started yet."""
        return Bell(self, sock_fd)

    def stats(self) -> dict[str, int]:
        return counters(BELLS_STATS, self._lib.uf_bells_stats(self._c))


_bells: Bells | None = None
_lock = threading.Lock()


def _forgotten_in_child() -> None:
    """A forked child has no copy of the thread: it starts its own if it needs one."""
    global _bells, _lock
    _bells, _lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forgotten_in_child)


def bells() -> Bells:
    """This process's backend, started at its first use (it lives as long)."""
    global _bells
    with _lock:
        if _bells is None:
            _bells = Bells()
        return _bells
