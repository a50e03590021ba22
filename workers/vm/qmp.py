"""QMP (qemu.qmp, asyncio) from the supervisor's poll loop: a loop in a
thread of its own for every QMP conversation of a job.  Only the host's
nudge (an NMI into a guest that computes past a posted signal) needs QMP
now; fork needs none (workers/fork/clone.py)."""
from __future__ import annotations

import asyncio
import logging
import threading

# qemu.qmp logs a cancelled connection (a VM closed while its client is
# connected) as an error; every failure that matters reaches the job as an
# exception.
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)


class QMPThread:
    """An asyncio loop in a thread of its own; the supervisor waits only
    for the conversations it starts."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="qmp", daemon=True)
        self._thread.start()

    def call(self, coro, timeout: float = 30.0):
        """Run (coro) on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


async def inject_nmi(vm) -> None:
    qmp = await vm.qmp()
    await qmp.execute("inject-nmi")
