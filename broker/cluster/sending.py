"""The parent's half of a fork across hosts, top to bottom.

A fork that finds no free slot on its own host (workers/proc/forks.py)
comes here as an Outgoing, onto one of a few threads that stay; the
parent guest waits for its reply meanwhile, and its RAM does not change
while it does.  Sender.fork() then:

1. opens the fork's ticket in Redis, which picks the host with the most
   free slots, and takes an offer of one of its idle worker processes if
   it has one (placement.py, offers.py); without one, sends the fork_child
   task to that host's queue or to the shared fork queue;
2. seals the parent's RAM (wire.seal_ram), while the task travels;
3. with an offer, streams the fork there, its task in the header, and waits
   for that host's word (wire.py); an offer nobody listens to any more is
   given back and the fork goes by its task;
4. by the task: waits for a host to claim the ticket and say where its
   child listens (no claim within the fork wait: the ticket is
   abandoned, EAGAIN), streams the RAM there, and waits for its word;
5. tells the parent's subtree "forked" (its supervisor answers the parent)
   and records the fork's event.

The child's half is receiving.py.
"""
from __future__ import annotations

import concurrent.futures
import os
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING

from broker import placement, state

from workers import config
from workers.fork import wire
from workers.proc.forks import Outgoing

if TYPE_CHECKING:
    from broker.cluster.link import Link

FORKERS = 4              # forks onto other hosts under way at once, per process


def _warm_up() -> None:
    """Connect this thread's producer to the broker, as the first task sent
    from it would (~100 ms the first time in a process)."""
    from broker.app import app
    try:
        with app.producer_or_acquire() as producer:
            producer.connection.ensure_connection(max_retries=1)
    except Exception:       # noqa: BLE001 - the first fork connects, as it would have
        pass


_forkers: tuple[int, concurrent.futures.ThreadPoolExecutor] | None = None
_forkers_lock = threading.Lock()


def forkers() -> concurrent.futures.ThreadPoolExecutor:
    """This process's fork threads, shared by its subtrees.  Threads that
    stay: one that has sent a task before sends the next in ~0.6 ms, a new
    one in 3-5 ms (its own connection to the broker); the first is warmed
    up as they are made, once a process (again in a process Celery's pool
    forked), not once a subtree: most subtrees never fork elsewhere."""
    global _forkers
    with _forkers_lock:
        if _forkers is None or _forkers[0] != os.getpid():
            threads = concurrent.futures.ThreadPoolExecutor(FORKERS, thread_name_prefix="fork")
            threads.submit(_warm_up)
            _forkers = (os.getpid(), threads)
        return _forkers[1]


class Sender:
    """Forks from the subtree of (link) onto other hosts."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self._futures: list[concurrent.futures.Future] = []

    def submit(self, out: Outgoing) -> None:
        """Start the fork of (out); a "forked" message will say how it went."""
        self._futures = [f for f in self._futures if not f.done()]
        self._futures.append(forkers().submit(self.fork, out))

    def fork(self, out: Outgoing) -> None:
        link = self.link
        try:
            ticket, nonce, task = self._task(out)
            sent = time.monotonic()
            target, offer = placement.open_ticket(link.r, ticket, link.job_id, out.pid,
                                                  link.host, offers=config.get().fork_offers)
            if offer is None:
                self._queue(task, target)
            with memoryview(out.parent_vm.mem) as ram:
                sealed = wire.seal_ram(link.secret, nonce, ram, _extents(out.parent_vm))
            got = self._offered(out, target, offer, task, nonce, sealed) if offer else None
            if offer and got is None:           # stale: the ticket goes by its task
                placement.unclaim(link.r, ticket, target)
                self._queue(task, None)
            by = "offer" if got else "task"
            got = got or self._by_task(out, ticket, nonce, sealed, sent)
            if got is None:
                return link.deliver({"type": "forked", "pid": out.pid, "eagain": True,
                                     "error": f"no host had a free slot for "
                                              f"{link.fork_wait:g} s"})
            host, placed, reply = got
            link.deliver({"type": "forked", "pid": out.pid, "host": host, "tree": out.pid})
            # The fork's event (the child's host records its "running"): where
            # it went, by an offer or by its task, into a VM the job kept there
            # or a new one, and how long placing it and the whole fork took.
            state.add_event(link.r, link.job_id, {
                "pid": out.pid, "ppid": out.ppid, "state": "placed", "host": host,
                "by": by, "kept": bool(reply.get("kept")),
                "dispatch_ms": round(1000 * (placed - sent), 2),
                "fork_ms": round(1000 * (time.monotonic() - out.asked), 2)})
        except Exception as err:        # noqa: BLE001 - the parent gets EAGAIN and the reason
            link.deliver({"type": "forked", "pid": out.pid, "error": str(err) or repr(err)})

    def _task(self, out: Outgoing) -> tuple[str, bytes, dict]:
        """The fork's ticket, its nonce (its stream's keys come from it) and
        its fork_child task's arguments (receiving.ForkTask)."""
        link = self.link
        ticket, nonce = uuid.uuid4().hex, os.urandom(16)
        return ticket, nonce, dict(
            ticket=ticket, job=link.job_id, image=link.image, name=out.name, pid=out.pid,
            ppid=out.ppid, parent_tree=link.tree, mem_mib=out.mem_mib,
            deadline=time.time() + link.fork_wait, fork_wait=link.fork_wait,
            holder=list(link.holder), nonce=nonce.hex())

    def _queue(self, task: dict, target: str | None) -> None:
        """Send the fork's task: to (target)'s queue, or with none, to the
        shared fork queue."""
        from broker.app import FORK_CHILD, FORKS_QUEUE, app, host_queue
        queue = host_queue(target) if target else FORKS_QUEUE
        for _ in range(2 if config.get().test_duplicate_forks else 1):
            app.send_task(FORK_CHILD, kwargs=task, queue=queue)

    def _offered(self, out: Outgoing, host: str, offer: dict, task: dict, nonce: bytes,
                 sealed) -> tuple[str, float, dict] | None:
        """Send the fork straight to the worker process that offered itself
        on (host): (host, when it was connected to, its word); None if the
        offer was stale (nobody listens there any more: nothing was sent)."""
        try:
            sock = socket.create_connection((offer["address"], offer["port"]), timeout=1)
        except OSError:
            return None
        connected = time.monotonic()
        with sock:
            sock.settimeout(30)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(nonce)
            reply = self._stream(sock, out, host, nonce, sealed, task)
        if config.get().test_duplicate_forks:       # its ticket has arrived: a no-op
            self._queue(task, host)
        return host, connected, reply

    def _by_task(self, out: Outgoing, ticket: str, nonce: bytes, sealed,
                 sent: float) -> tuple[str, float, dict] | None:
        """The fork, its task sent: once a host has claimed it, stream it
        there: (host, when it was placed, its word); None if nobody claimed
        it within the fork wait."""
        where = self._placed(ticket, sent)
        if where is None:
            return None
        placed = time.monotonic()
        return where["host"], placed, self._send(out, where, nonce, sealed)

    def _placed(self, ticket: str, sent: float) -> dict | None:
        """Where the ticket's child is made, once a host has claimed it; None
        if none did within the fork wait (the ticket is abandoned)."""
        link = self.link
        deadline = sent + link.fork_wait
        where = None
        while where is None and not link.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                if placement.abandon(link.r, ticket):
                    return None
                left = 10.0         # claimed just now: its placement follows
                deadline = time.monotonic() + left
            where = placement.wait_placed(link.r, ticket, min(left, 0.5))
        if where is None:
            raise RuntimeError("the job ended while the fork was being placed")
        if "error" in where:
            raise RuntimeError(f"host {where.get('host')}: {where['error']}")
        return where

    def _send(self, out: Outgoing, where: dict, nonce: bytes, sealed) -> dict:
        """Stream the sealed RAM to the child's host; its word on it."""
        with socket.create_connection((where["address"], where["port"]), timeout=30) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return self._stream(sock, out, where["host"], nonce, sealed)

    def _stream(self, sock: socket.socket, out: Outgoing, host: str, nonce: bytes, sealed,
                task: dict | None = None) -> dict:
        """The fork stream, and the child's host's word on it ({"ok": true,
        "kept": whether the child went into a VM the job kept there})."""
        from workers.vm.machine import kernel_id
        secret = self.link.secret
        header = {"pid": out.pid, "ppid": out.ppid, "ram_size": out.parent_vm.layout.ram_size,
                  "pipes": out.pipes, "tsc": _parent_clock(out),
                  # the child resumes in its parent's kernel: the same one
                  "kernel": kernel_id(),
                  # its devices: the child's VM must have the same
                  "fast_bell": out.parent_vm.fast is not None,
                  "shm_base": out.parent_vm.layout.shm_base}
        if task is not None:            # to an offer: no task went before it
            header["task"] = task
        wire.send_fork(sock, secret, nonce, header, sealed)
        reply = wire.receive_reply(sock, secret, nonce)
        if not reply.get("ok"):
            raise RuntimeError(f"host {host}: {reply.get('error', 'refused the fork')}")
        return reply

    def close(self) -> None:
        """Wait for the forks under way (a closed link ends their waits);
        those not begun yet are dropped."""
        for f in self._futures:
            f.cancel()
        concurrent.futures.wait(self._futures, timeout=15)


def _extents(vm):
    from workers.fork.clone import child_extents
    return child_extents(vm.ram_fd, vm.layout.ram_size)


def _parent_clock(out: Outgoing) -> int:
    """The parent's TSC as the stream begins (the child's runs on from
    there, receiving.py): the host's TSC plus their offset, if known; else
    its reading as it asked, plus the time since."""
    from workers.fork.clone import clock_offset
    from workers.vm import cpu
    offset = clock_offset(out.parent_vm)
    if offset is not None:
        return cpu.rdtsc() + offset
    return out.parent_tsc + int((time.monotonic() - out.asked) * out.tsc_khz * 1000)
