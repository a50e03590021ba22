"""An idle worker process offers itself to forks from other hosts.

A fork's Celery task takes a few ms to reach a worker process here (the
broker, the worker's consumer, its pool); most of a cross-host fork's
dispatch.  So each worker process, while it runs no task, listens on a
port of UNIFORK_FORK_PORTS and puts where in its host's offers
(placement.offer).  A parent's host that picks this host takes the offer
with the fork's ticket, in one round trip, and connects straight here: the
fork's nonce in the clear, then the fork stream (workers/fork/wire.py)
whose header carries the task.  The child and its subtree run in this
process's offer thread (receiving.take_offered) as a fork_child task's
would in its main thread; the process offers itself again once they end.

A task that starts in this process withdraws the offer (a parent's host
that took it just before finds the fork made all the same: both run, the
slots in Redis are still right).  An offer taken by a host that never
connects (it died) is given back after STALE_AFTER seconds: the ticket
unclaimed, its slot free.  Bytes that do not open as a fork stream of
this cluster (wire.py) are dropped with a line in the log; while a
connection holds the offer's thread (HELLO_TIMEOUT at most before its
header has opened) forks go by their task.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import select
import socket
import threading
import time

from broker import placement
from broker.cluster import receiving
from broker.cluster.host import Here

from workers import config
from workers.errors import TransferError
from workers.fork import arrival
from workers.ports import bind_in

log = logging.getLogger("unifork.worker")

STALE_AFTER = 10.0      # seconds an offer may be taken with nobody connecting


class Offers:
    """This worker process's offer: a listening socket, and its entry in
    the host's offers while the process runs neither a task nor a fork
    that came by the offer."""

    def __init__(self, here: Here) -> None:
        self.here = here
        self.sock = bind_in(config.get().fork_ports, "UNIFORK_FORK_PORTS",
                            lambda port: socket.create_server((here.address, port)))
        self._where = {"address": here.address, "port": self.sock.getsockname()[1]}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._entry: str | None = None      # in Redis now, as far as we know
        self._tasks = 0                     # Celery tasks running in this process
        self._gone_since: float | None = None
        self._closed = False
        threading.Thread(target=self._serve, name="offer", daemon=True).start()

    def task_started(self) -> None:
        """A task runs in this process: no offer until it ends."""
        with self._lock:
            self._tasks += 1
            self._withdraw()

    def task_ended(self) -> None:
        with self._lock:
            self._tasks -= 1

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._withdraw()
        self.sock.close()

    def _withdraw(self) -> bool:
        """Take our entry out of the host's offers; False if there was none
        there (a fork took it: it connects)."""
        entry, self._entry = self._entry, None
        try:
            return entry is not None and placement.withdraw(self.here.r, self.here.host, entry)
        except Exception:           # noqa: BLE001 - a fork that takes it finds us listening
            return False

    def _serve(self) -> None:
        while not self._closed:
            try:
                self._offer()
                if select.select([self.sock], [], [], 1.0)[0]:
                    self._take(self.sock.accept()[0])
                else:
                    self._check_taken()
            except (OSError, TransferError) as err:
                if self._closed:
                    return
                log.warning("offer of worker process %d: %s", os.getpid(), err)
            except Exception:       # noqa: BLE001 - logged; the next offer goes on
                log.warning("offer of worker process %d: a fork that came by it failed",
                            os.getpid(), exc_info=True)

    def _take(self, conn: socket.socket) -> None:
        """A connection to our offer: a fork whose parent's host took it
        (or anyone else's bytes, which do not open as one)."""
        with self._lock:
            entry, self._entry = self._entry, None
        fork = False
        try:
            fork = receiving.take_offered(self.here, conn) in ("done", "failed")
        finally:
            if not fork and entry is not None:      # not the fork that took our entry
                placement.withdraw(self.here.r, self.here.host, entry)

    def _offer(self) -> None:
        """Offer this process (to the forks of the job whose VM it keeps
        first, arrival.keep), unless it is offered already as it should be."""
        arrival.expire()
        job = arrival.kept_job()
        with self._lock:
            if self._entry is not None and json.loads(self._entry).get("job", "") != job:
                entry = self._entry     # kept VM gone, or a new one: offered again,
                if not self._withdraw():    # unless a fork took it just now (it connects)
                    self._entry = entry
            if self._closed or self._tasks or self._entry is not None:
                return
            where = {**self._where, "id": f"{os.getpid()}.{next(self._ids)}"}
            if job:
                where["job"] = job
            self._entry = placement.offer(self.here.r, self.here.host, where)
            self._gone_since = None

    def _check_taken(self) -> None:
        """Our offer, taken by a host that has not connected for
        STALE_AFTER seconds: give its ticket back and offer again."""
        with self._lock:
            entry = self._entry
        if entry is None or placement.offered(self.here.r, self.here.host, entry):
            self._gone_since = None
            return
        now = time.monotonic()
        if self._gone_since is None:
            self._gone_since = now
        elif now - self._gone_since > STALE_AFTER:
            ticket = placement.taken_by(self.here.r, self.here.host, entry)
            if ticket:
                placement.unclaim(self.here.r, ticket, self.here.host)
            with self._lock:
                if self._entry == entry:
                    self._entry = None
