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
import json
import os
import threading
import time

from broker import keys, state
from broker.cluster.sending import Sender

from workers import config
from workers.proc.forks import Outgoing

CHECK_EVERY = 1.0        # seconds between checks on remote children's hosts
INBOX_TTL = 7 * 24 * 3600
PID_BLOCK = 8            # pids a subtree takes from the job's counter at once


SECRET_KEPT = 10.0                    # seconds a process keeps the secret it read from Redis
_secrets: dict[tuple, tuple[float, bytes]] = {}


def cluster_secret(r) -> bytes:
    """The key that authenticates hosts to each other: UNIFORK_SECRET, or
    one made on first use and kept in Redis (read again after SECRET_KEPT
    seconds, not on every fork: a Redis that lost its state makes a new one)."""
    secret = config.get().secret
    if secret:
        return secret.encode()
    kw = r.connection_pool.connection_kwargs
    where = (kw.get("host"), kw.get("port"), kw.get("path"), kw.get("db"))
    read, secret = _secrets.get(where, (0.0, b""))
    if time.monotonic() - read > SECRET_KEPT:
        r.set(keys.SECRET, os.urandom(32).hex(), nx=True)
        secret = r.get(keys.SECRET)
        _secrets[where] = (time.monotonic(), secret)
    return secret


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
        self.sender = Sender(self)
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

    def deliver(self, msg: dict) -> None:
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
                        self.deliver(msg)
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
            self.deliver({"type": "superseded"})
            return
        watch = dict(self.watch)
        if not watch and (self.tree == 1 or self.pid1_lost):
            return
        records = state.procs(r, self.job_id)
        for pid, host in watch.items():
            rec = records.get(pid, {})
            if rec.get("state") in ("exited", "killed"):
                wstatus = rec.get("wstatus")    # (0 for exit 0: not "none")
                self.deliver({"type": "exit", "pid": pid,
                              "wstatus": 9 if wstatus is None else wstatus})
            elif not state.host_alive(r, host, rec.get("incarnation")):
                self.deliver({"type": "lost", "pid": pid, "why": f"host {host} was lost"})
            else:
                continue
            self.watch.pop(pid, None)
        init = records.get(1, {})
        # pid 1's record may say "killed" already: written by its own host's
        # supervisor as that host went down, with no "end" sent to us
        if (self.tree != 1 and not self.pid1_lost and init.get("host")
                and not state.host_alive(r, init["host"], init.get("incarnation"))):
            self.pid1_lost = True       # no "end" will come from there
            self.deliver({"type": "end", "why": f"pid 1's host {init.get('host')} was lost: "
                                                 "the job is over, its processes here are stopped"})

    def lookup(self, pid: int) -> dict | None:
        """Process (pid)'s record in the job (its tree, host, state)."""
        return state.procs(self.r, self.job_id).get(pid)

    def set_files(self, address: str) -> None:
        """The job's file server is at (address) (its home's, HOST:PORT)."""
        state.set_job(self.r, self.job_id, files=address)

    def files_address(self) -> str | None:
        """Where the job's file server is, for a subtree (remote.py)."""
        info = state.job_info(self.r, self.job_id) or {}
        return info.get("files") or None

    def alloc_pid(self) -> int:
        """A pid unique in the job: from a block of PID_BLOCK this subtree
        took from the job's counter (one Redis round trip a block, not a
        fork)."""
        if not self._pids:
            top = int(self.r.incrby(keys.job_pids(self.job_id), PID_BLOCK))
            self._pids.extend(range(top - PID_BLOCK + 1, top + 1))
        return self._pids.popleft()

    # -- forks onto other hosts (sending.py) -----------------------------------
    def fork(self, out: Outgoing) -> None:
        """Start forking (out) onto another host; a "forked" message says
        how it went.  The parent guest waits for its reply meanwhile."""
        self.sender.submit(out)

    # -- the end ---------------------------------------------------------------
    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._stop.set()
        self.post(self.tree, {"type": "stop"})     # ends the listener's BLPOP now
        self.sender.close()
        self._listener.join(5)
        os.close(self._rfd)
        os.close(self._wfd)
