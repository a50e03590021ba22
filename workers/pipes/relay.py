"""The pipe bridge's data path (native/relay.c), from Python: a thread
that moves a region's ring bytes into channels and the DATA frames that
arrive into rings, owns the region's doorbells and the channels' timers,
and wakes the supervisor only for what it does not handle.  bridge.py
decides; this says it to the thread."""
from __future__ import annotations

import contextlib
import ctypes

from workers.native.lib import RELAY_STATS, counters, native
from workers.pipes.channel import Endpoint
from workers.vm.rings import SharedRegion


class Relay:
    """The data-path thread of region (shm) on endpoint (ep).  `with relay:`
    holds it off (bridge.py's every look at the endpoint)."""

    def __init__(self, ep: Endpoint, shm: SharedRegion) -> None:
        from workers.vm.cpu import address
        lib = self._lib = native()
        self._c = lib.uf_relay_new(ep._c, address(shm.map))
        if not self._c:
            raise OSError("the pipe bridge's thread did not start")
        self.efd = lib.uf_relay_efd(self._c)
        self._routes: dict[int, object] = {}

    def __enter__(self) -> Relay:
        self._lib.uf_relay_lock(self._c)
        return self

    def __exit__(self, *exc) -> None:
        self._lib.uf_relay_unlock(self._c, 1)      # (it looks again: timers, routes)

    @contextlib.contextmanager
    def looking(self):
        """Held off only to read: it is not woken after."""
        self._lib.uf_relay_lock(self._c)
        try:
            yield self
        finally:
            self._lib.uf_relay_unlock(self._c, 0)

    def route(self, idx: int, chan) -> None:
        """Ring (idx)'s bytes go to (chan) (None: nowhere)."""
        if self._routes.get(idx) is not chan:
            self._lib.uf_relay_route(self._c, idx, chan._c if chan is not None else None)
            self._routes[idx] = chan

    def routed(self, idx: int):
        return self._routes.get(idx)

    def forward(self, idx: int) -> None:
        """Ring (idx)'s bytes to its channel now (this turn's decision)."""
        self._lib.uf_relay_forward(self._c, idx)

    def want_idle(self, chan) -> None:
        """Wake the supervisor once all sent on (chan) is acknowledged."""
        self._lib.uf_relay_want_idle(self._c, chan._c)

    def deliver(self, chan, idx: int) -> None:
        """U frames arriving on (chan) go into ring (idx) (-1: not by the thread)."""
        self._lib.uf_relay_deliver(self._c, chan._c, idx)

    def vms(self, vms: list[tuple[int, int, int, int]], stdio: int, stdin: int) -> None:
        """The VMs (doorbell, fast doorbell's handle or 0, control page
        address, request held back), and the rings the host reads and
        writes (masks)."""
        n = len(vms)
        if self._lib.uf_relay_vms(self._c, n, (ctypes.c_int * n)(*(v[0] for v in vms)),
                                  (ctypes.c_uint64 * n)(*(v[1] for v in vms)),
                                  (ctypes.c_uint64 * n)(*(v[2] for v in vms)),
                                  (ctypes.c_int64 * n)(*(v[3] for v in vms)), stdio, stdin):
            raise MemoryError(f"the pipe bridge's thread cannot watch {n} VMs")

    def stats(self) -> dict[str, int]:
        return counters(RELAY_STATS, self._lib.uf_relay_stats(self._c))

    def close(self) -> None:
        if self._c:
            self._lib.uf_relay_free(self._c)
            self._c = None
