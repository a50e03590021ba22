"""A subtree's link to the rest of its job, when the job spans hosts.

A job's processes on one host that descend from one root form a
*subtree*, supervised there by one Job: pid 1's subtree on the job's home
host, and one more for each child forked onto another host (its root).
Subtrees talk through Redis: each has an inbox (a list, keys.job_inbox),
which a thread here watches, handing messages to the supervisor's poll()
through a pipe.  Messages are JSON objects with a "type":

    exit      {pid, wstatus}        a child of one of ours has ended
    kill      {pid, sig}            signal one of our processes
    killall   {sig, sender, init}   signal all ours but (sender), pid 1 if (init)
    adopt     {pid, host, tree, wstatus}   pid 1 takes over an orphan
    reparent  {pid}                 our root's parent is now pid 1
    end       {why?}                pid 1 has ended (or its host is lost): stop everything

and two made here: forked {pid, host, tree | error} when a fork onto
another host has finished, and lost {pid, why} when a remote child's host
stops heartbeating or its exit was missed (a periodic check against the
processes' records in Redis).

Pids are unique in the job: a Redis counter hands them out, a block of
PID_BLOCK to a subtree at a time.
"""
from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import socket
import threading
import time
import uuid

from broker import keys, placement, state

from workers.fork import wire as transfer

CHECK_EVERY = 1.0        # seconds between checks on remote children's hosts
INBOX_TTL = 7 * 24 * 3600
FORKERS = 4              # forks onto other hosts under way at once, per subtree
PID_BLOCK = 8            # pids a subtree takes from the job's counter at once


def _warm_up() -> None:
    """Connect this thread's producer to the broker, as the first task sent
    from it would (~100 ms the first time in a process)."""
    from broker.app import app
    try:
        with app.producer_or_acquire() as producer:
            producer.connection.ensure_connection(max_retries=1)
    except Exception:       # noqa: BLE001 - the first fork connects, as it would have
        pass


def cluster_secret(r) -> bytes:
    """The key that authenticates hosts to each other: UNIFORK_SECRET, or
    one made on first use and kept in Redis."""
    env = os.environ.get("UNIFORK_SECRET")
    if env:
        return env.encode()
    r.set(keys.SECRET, os.urandom(32).hex(), nx=True)
    return r.get(keys.SECRET)


class Link:
    """Subtree (tree) of job (job_id) on (host), and its way to the others."""

    def __init__(self, url: str, job_id: str, host: str, tree: int, image: str,
                 fork_wait: float, address: str = "",
                 holder: tuple[str, str] = ("", "")) -> None:
        self.url, self.job_id, self.host, self.tree = url, job_id, host, tree
        self.image, self.fork_wait, self.address = image, fork_wait, address
        self.r = state.connect(url)
        # The run of the job this subtree belongs to: (host, incarnation) of
        # the worker that claimed it, handed down with each fork.  Another
        # run taking the job over (this one's worker stalled and was taken
        # for lost) ends this one.
        self.holder = tuple(holder)
        self.superseded = False
        self.secret = cluster_secret(self.r)
        self._inbox: collections.deque[dict] = collections.deque()
        self._rfd, self._wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.watch: dict[int, str] = {}       # remote children: pid -> host
        self._pids: collections.deque[int] = collections.deque()   # (alloc_pid)
        self.pid1_lost = False                # (a subtree) pid 1's host is gone
        self._stop = threading.Event()
        # Forks onto other hosts run on threads that stay: one that has sent
        # a task before sends the next in ~0.6 ms, a new one in 3-5 ms (its
        # own connection to the broker).  The first is warmed up now.
        self._forkers = concurrent.futures.ThreadPoolExecutor(FORKERS, thread_name_prefix="fork")
        self._forks: list[concurrent.futures.Future] = [self._forkers.submit(_warm_up)]
        self.r.sadd(keys.job_trees(job_id), tree)
        if tree == 1:
            self.r.set(keys.job_pids(job_id), 1, nx=True)
        self.closed = False
        self._listener = threading.Thread(target=self._listen, name="inbox", daemon=True)
        self._listener.start()

    # -- messages ------------------------------------------------------------
    def fileno(self) -> int:
        """Readable when messages have arrived."""
        return self._rfd

    def _deliver(self, msg: dict) -> None:
        self._inbox.append(msg)
        try:
            os.write(self._wfd, b"m")
        except BlockingIOError:
            pass

    def messages(self) -> list[dict]:
        try:
            while not self.closed and os.read(self._rfd, 4096):
                pass
        except BlockingIOError:
            pass
        out = []
        while self._inbox:
            out.append(self._inbox.popleft())
        return out

    def post(self, tree: int, msg: dict) -> None:
        if self.superseded:     # the trees now are another run's
            return
        key = keys.job_inbox(self.job_id, tree)
        p = self.r.pipeline()
        p.rpush(key, json.dumps(msg))
        p.expire(key, INBOX_TTL)
        p.execute()

    def post_all(self, msg: dict) -> None:
        """(msg) to every other subtree of the job."""
        for t in self.r.smembers(keys.job_trees(self.job_id)):
            if int(t) != self.tree:
                self.post(int(t), msg)

    def _listen(self) -> None:
        r = state.connect(self.url)
        key = keys.job_inbox(self.job_id, self.tree)
        next_check = time.monotonic() + CHECK_EVERY
        while not self._stop.is_set():
            try:
                got = r.blpop([key], timeout=0.5)
                if got is not None:
                    try:
                        msg = json.loads(got[1])
                    except ValueError:
                        continue
                    if isinstance(msg, dict) and msg.get("type") != "stop":
                        self._deliver(msg)
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + CHECK_EVERY
                    self._check_remote(r)
            except Exception:       # noqa: BLE001 - Redis hiccup: try again
                self._stop.wait(0.2)

    def _check_remote(self, r) -> None:
        """A remote child whose host is gone, or whose end we missed, is
        reported; in a subtree, pid 1's host gone ends the subtree too.  A
        run of the job that another has taken over is told to stop."""
        if not self.superseded and not state.holds_job(r, self.job_id, self.holder):
            self.superseded = True
            self._deliver({"type": "superseded"})
            return
        watch = dict(self.watch)
        if not watch and (self.tree == 1 or self.pid1_lost):
            return
        records = state.procs(r, self.job_id)
        for pid, host in watch.items():
            rec = records.get(pid, {})
            if rec.get("state") in ("exited", "killed"):
                self._deliver({"type": "exit", "pid": pid, "wstatus": rec.get("wstatus") or 9})
            elif not state.host_alive(r, host, rec.get("incarnation")):
                self._deliver({"type": "lost", "pid": pid, "why": f"host {host} was lost"})
            else:
                continue
            self.watch.pop(pid, None)
        init = records.get(1, {})
        # pid 1's record may say "killed" already: written by its own host's
        # supervisor as that host went down, with no "end" sent to us
        if (self.tree != 1 and not self.pid1_lost and init.get("host")
                and not state.host_alive(r, init["host"], init.get("incarnation"))):
            self.pid1_lost = True       # no "end" will come from there
            self._deliver({"type": "end", "why": f"pid 1's host {init.get('host')} was lost: "
                                                 "the job is over, its processes here are stopped"})

    def lookup(self, pid: int) -> dict | None:
        """Process (pid)'s record in the job (its tree, host, state)."""
        return state.procs(self.r, self.job_id).get(pid)

    def alloc_pid(self) -> int:
        """A pid unique in the job: from a block of PID_BLOCK this subtree
        took from the job's counter (one Redis round trip a block, not a
        fork)."""
        if not self._pids:
            top = int(self.r.incrby(keys.job_pids(self.job_id), PID_BLOCK))
            self._pids.extend(range(top - PID_BLOCK + 1, top + 1))
        return self._pids.popleft()

    # -- forks onto other hosts ------------------------------------------------
    def fork(self, parent_vm, pid: int, ppid: int, asked: float, parent_tsc: int,
             tsc_khz: int, name: str, mem_mib: int, pipes: list[dict]) -> None:
        """Start forking (parent_vm) onto another host as (pid); a "forked"
        message says how it went.  The parent guest waits for its reply
        meanwhile (its RAM does not change while it does: fork.py)."""
        self._forks = [f for f in self._forks if not f.done()] + [self._forkers.submit(
            self._fork, parent_vm, pid, ppid, asked, parent_tsc, tsc_khz, name, mem_mib, pipes)]

    def _fork(self, parent_vm, pid, ppid, asked, parent_tsc, tsc_khz, name, mem_mib, pipes):
        from workers.fork.clone import child_extents
        try:
            ticket, nonce, timing = self._dispatch(pid, ppid, name, mem_mib)
            # while the task travels: the parent's RAM, sealed, ready to go
            with memoryview(parent_vm.mem) as ram:
                sealed = transfer.seal_ram(self.secret, nonce, ram, child_extents(
                    parent_vm.ram_fd, parent_vm.layout.ram_size))
            where = self._placed(ticket, timing)
            if where is None:
                return self._deliver({"type": "forked", "pid": pid, "eagain": True,
                                      "error": f"no host had a free slot for "
                                               f"{self.fork_wait:g} s"})
            self._send(parent_vm, where, nonce, sealed, pid, ppid, asked, parent_tsc, tsc_khz,
                       pipes)
            fork_ms = round(1000 * (time.monotonic() - asked), 2)
            self._deliver({"type": "forked", "pid": pid, "host": where["host"], "tree": pid})
            # The fork's event (the child's host records its "running"): where
            # it went, and how long placing it and the whole fork took.
            state.add_event(self.r, self.job_id, {
                "pid": pid, "ppid": ppid, "state": "placed", "host": where["host"],
                "dispatch_ms": round(1000 * (timing["placed"] - timing["sent"]), 2),
                "fork_ms": fork_ms})
        except Exception as err:        # noqa: BLE001 - the parent gets EAGAIN and the reason
            self._deliver({"type": "forked", "pid": pid, "error": str(err) or repr(err)})

    def _dispatch(self, pid, ppid, name, mem_mib) -> tuple[str, bytes, dict]:
        """Make the fork's ticket and send its task; the ticket, the fork's
        nonce (its stream's keys come from it), and when it was sent."""
        from broker.app import FORK_CHILD, FORKS_QUEUE, app, host_queue
        ticket, nonce = uuid.uuid4().hex, os.urandom(16)
        target = placement.open_ticket(self.r, ticket, self.job_id, pid, self.host)
        queue = host_queue(target) if target else FORKS_QUEUE
        kwargs = dict(ticket=ticket, job=self.job_id, image=self.image, name=name, pid=pid,
                      ppid=ppid, parent_tree=self.tree, mem_mib=mem_mib,
                      deadline=time.time() + self.fork_wait, fork_wait=self.fork_wait,
                      holder=list(self.holder), nonce=nonce.hex())
        timing = {"sent": time.monotonic()}
        for _ in range(2 if os.environ.get("UNIFORK_TEST_DUPLICATE_FORKS") else 1):
            app.send_task(FORK_CHILD, kwargs=kwargs, queue=queue)
        return ticket, nonce, timing

    def _placed(self, ticket: str, timing: dict) -> dict | None:
        """Where the ticket's child is made, once a host has claimed it; None
        if none did within the fork wait (the ticket is abandoned)."""
        deadline = timing["sent"] + self.fork_wait
        where = None
        while where is None and not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                if placement.abandon(self.r, ticket):
                    return None
                left = 10.0         # claimed just now: its placement follows
                deadline = time.monotonic() + left
            where = placement.wait_placed(self.r, ticket, min(left, 0.5))
        if where is None:
            raise RuntimeError("the job ended while the fork was being placed")
        timing["placed"] = time.monotonic()
        if "error" in where:
            raise RuntimeError(f"host {where.get('host')}: {where['error']}")
        return where

    def _send(self, parent_vm, where, nonce, sealed, pid, ppid, asked, parent_tsc, tsc_khz,
              pipes) -> None:
        from workers.vm import cpu
        from workers.fork.clone import clock_offset
        from workers.vm.machine import kernel_id
        with socket.create_connection((where["address"], where["port"]), timeout=30) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # the parent's clocks as the stream begins (the child's run on
            # from there, subtree.py): the host's TSC plus their offset, if
            # known; else its reading as it asked, plus the time since
            offset = clock_offset(parent_vm)
            tsc = (cpu.rdtsc() + offset if offset is not None
                   else parent_tsc + int((time.monotonic() - asked) * tsc_khz * 1000))
            size = parent_vm.layout.ram_size
            header = {"pid": pid, "ppid": ppid, "ram_size": size, "pipes": pipes, "tsc": tsc,
                      # the child resumes in its parent's kernel: the same one
                      "kernel": kernel_id(),
                      # its devices: the child's VM must have the same
                      "fast_bell": parent_vm.fast is not None}
            transfer.send_fork(sock, self.secret, nonce, header, sealed)
            reply = transfer.receive_reply(sock, self.secret, nonce)
        if not reply.get("ok"):
            raise RuntimeError(f"host {where['host']}: {reply.get('error', 'refused the fork')}")

    # -- the end ---------------------------------------------------------------
    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._stop.set()
        self.post(self.tree, {"type": "stop"})     # ends the listener's BLPOP now
        concurrent.futures.wait(self._forks, timeout=15)
        self._forkers.shutdown(wait=False, cancel_futures=True)
        self._listener.join(5)
        os.close(self._rfd)
        os.close(self._wfd)
