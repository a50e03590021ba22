"""The cluster's state in Redis: hosts, jobs, their processes and output,
and program images by content hash.  Writes take an optional pipeline."""
from __future__ import annotations

import hashlib
import json
import os
import time

import redis

from workers.errors import Unreachable

from broker import keys
from broker.keys import JobStatus

HEARTBEAT_TTL = 5.0          # seconds without a heartbeat before a host is dead
OUTPUT_TTL = 7 * 24 * 3600   # job records and output expire a week after they end


_clients: dict[str, redis.Redis] = {}    # by URL: this process's, shared by its threads


def connect(url: str) -> redis.Redis:
    """The client for (url) of this process, checked with a PING as it is
    made.  One for all (a subtree on another host makes its Link and
    listener from it: a connection, its AUTH and PING each cost every fork
    onto this host CPU and round trips); its pool hands each thread a connection of its
    own, and makes new ones after a fork (redis-py checks the pid).

    :raise Unreachable: with a one-line reason (the password never in it).
    """
    if url in _clients:
        return _clients[url]
    try:
        r = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=10)
        r.ping()
        return _clients.setdefault(url, r)
    except redis.exceptions.AuthenticationError as err:
        raise Unreachable(_refusal(url, err)) from None
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
            ValueError) as err:
        raise Unreachable(f"cannot reach Redis at {shown(url)}: {err}") from None


def shown(url: str) -> str:
    """(url) as it may be printed: a password in it replaced by ***."""
    scheme, sep, rest = url.partition("://")
    auth, at, where = rest.rpartition("@")
    if not (sep and at):
        return url
    user, colon, _ = auth.partition(":")
    return f"{scheme}://{user}{colon}{'***' if colon else ''}@{where}"


def _refusal(url: str, err: Exception) -> str:
    """Why Redis at (url) would not let us in, in one line."""
    if "@" in url.partition("://")[2]:
        return f"Redis at {shown(url)} refused the password in the URL"
    return (f"Redis at {url} requires a password: give it in the URL, "
            f"redis://:PASSWORD@HOST:PORT/DB (--redis or UNIFORK_REDIS_URL)")


# -- images -------------------------------------------------------------------
def put_image(r: redis.Redis, data: bytes) -> str:
    """Store a program once by its sha256; returns the hash."""
    sha = hashlib.sha256(data).hexdigest()
    r.set(keys.image(sha), data, nx=True)
    return sha


def get_image(r: redis.Redis, sha: str) -> bytes | None:
    return r.get(keys.image(sha))


def keep_tree(r: redis.Redis, job_id: str, archive: bytes, seconds: int) -> None:
    """The job's tree as it ended, for `unifork fetch`, for (seconds)."""
    r.set(keys.job_tree(job_id), archive, ex=seconds)


def kept_tree(r: redis.Redis, job_id: str) -> bytes | None:
    return r.get(keys.job_tree(job_id))


# -- hosts --------------------------------------------------------------------
def host_alive_age(r: redis.Redis, name: str) -> float | None:
    """Seconds since host (name)'s last heartbeat, None if it is not alive."""
    beat = r.get(keys.host_alive(name))
    return None if beat is None else max(0.0, time.time() - float(beat))


def host_alive(r: redis.Redis, name: str, incarnation: str | None = None) -> bool:
    """Whether host (name) heartbeats and, given its (incarnation) when a
    process started there, is still the same worker: one restarted under
    the same name took none of its predecessor's VMs with it."""
    p = r.pipeline()
    p.exists(keys.host_alive(name))
    p.hget(keys.host(name), "incarnation")
    alive, current = p.execute()
    return bool(alive) and (not incarnation or
                            (current.decode() if current else "") == incarnation)


def register_host(r: redis.Redis, name: str, slots: int, address: str) -> str | None:
    """Claim (name) for this worker; its incarnation (a fresh id: a worker
    restarted under the same name is another one), or None if a live
    worker holds the name."""
    if not r.set(keys.host_alive(name), time.time(), nx=True, px=int(HEARTBEAT_TTL * 1000)):
        return None
    incarnation = os.urandom(8).hex()
    p = r.pipeline()
    p.hset(keys.host(name), mapping={"slots": slots, "used": 0, "address": address,
                                     "draining": 0, "started": time.time(),
                                     "incarnation": incarnation})
    p.sadd(keys.HOSTS, name)
    p.delete(keys.host_offers(name))        # a former incarnation's processes are gone
    p.execute()
    return incarnation


def heartbeat(r: redis.Redis, name: str) -> None:
    r.set(keys.host_alive(name), time.time(), px=int(HEARTBEAT_TTL * 1000))


def unregister_host(r: redis.Redis, name: str) -> None:
    p = r.pipeline()
    p.delete(keys.host_alive(name))
    p.hset(keys.host(name), "used", 0)
    p.execute()


def hosts(r: redis.Redis) -> list[dict]:
    out = []
    for name in sorted(n.decode() for n in r.smembers(keys.HOSTS)):
        h = {k.decode(): v.decode() for k, v in r.hgetall(keys.host(name)).items()}
        out.append({"name": name, "slots": int(h.get("slots", 0)), "used": int(h.get("used", 0)),
                    "address": h.get("address", ""), "draining": h.get("draining") == "1",
                    "started": float(h.get("started", 0)),
                    "heartbeat_age": host_alive_age(r, name)})
    return out


# -- jobs ---------------------------------------------------------------------
def new_job(r: redis.Redis, job_id: str, program: str, args: list[str], pipeline=None) -> None:
    p = pipeline or r.pipeline()
    # (a job another delivery has claimed meanwhile keeps its status)
    p.hsetnx(keys.job(job_id), "status", JobStatus.QUEUED.value)
    p.hset(keys.job(job_id), mapping={"program": program, "args": json.dumps(args),
                                      "submitted": time.time()})
    p.zadd(keys.JOBS, {job_id: time.time()})
    if pipeline is None:
        p.execute()


def claim_job(r: redis.Redis, job_id: str, host: str, incarnation: str,
              request: dict | None = None) -> str:
    """Take job (job_id) for this worker, as one step: "run" (it is ours
    now), "done" (it has ended), or "busy": a live worker runs it (a
    second delivery: the broker hands a job out again when it outlives
    the visibility timeout, or a client sent it twice).  A job whose
    worker is gone (dead, or restarted since) is ours to run again.
    (request), the task's arguments, is kept to send the job again if this
    worker is lost (lost_jobs)."""
    key = keys.job(job_id)
    with r.pipeline() as p:
        while True:
            try:
                p.watch(key)
                status, holder, inc = (v.decode() if v else None for v in
                                       p.hmget(key, "status", "host", "incarnation"))
                if status in (JobStatus.FINISHED.value, JobStatus.FAILED.value,
                              JobStatus.CANCELLED.value):
                    return "done"
                if status == JobStatus.RUNNING.value and holder and host_alive(r, holder, inc):
                    return "busy"
                rerun = status == JobStatus.RUNNING.value and holder
                trees = [int(t) for t in r.smembers(keys.job_trees(job_id))] if rerun else []
                p.multi()
                p.hset(key, mapping={"status": JobStatus.RUNNING.value, "host": host,
                                     "incarnation": incarnation})
                if request is not None:
                    p.hset(key, "request", json.dumps(request))
                p.sadd(keys.RUNNING, job_id)
                if rerun:           # its processes died with their host: start afresh
                    p.delete(keys.job_procs(job_id), keys.job_pids(job_id),
                             keys.job_trees(job_id), *(keys.job_inbox(job_id, t) for t in trees))
                    p.rpush(keys.job_output(job_id, "err"),
                            f"unifork: the job's host {holder} was lost: the job runs again "
                            f"from the start on {host}\n".encode())
                p.execute()
                return "run"
            except redis.WatchError:
                continue


def lost_jobs(r: redis.Redis) -> list[tuple[str, str, str, dict]]:
    """The jobs claimed by a worker that is gone (its heartbeat lapsed, or
    it was restarted since): (job id, its host, that worker's incarnation,
    the task's arguments).  The broker would hand such a job out again only
    after its visibility timeout (an hour with Redis).  Such a job that was
    cancelled is marked so here: nobody else is left to."""
    lost = []
    alive: dict[tuple, bool] = {}       # (host, incarnation): asked once per look
    for raw in r.smembers(keys.RUNNING):
        job_id = raw.decode()
        status, holder, inc, request, cancel = (v.decode() if v else None for v in r.hmget(
            keys.job(job_id), "status", "host", "incarnation", "request", "cancel"))
        if status != JobStatus.RUNNING.value:
            r.srem(keys.RUNNING, job_id)        # it ended (or expired) meanwhile
            continue
        if holder and (holder, inc) not in alive:
            alive[holder, inc] = host_alive(r, holder, inc)
        if holder and not alive[holder, inc]:
            if cancel == "1":                   # nobody is left to end it: we do
                append_output(r, job_id, "err", f"unifork: the job's host {holder} was "
                              "lost after the job was cancelled\n".encode())
                set_job(r, job_id, status=JobStatus.CANCELLED.value, exit_status=143)
                expire_job(r, job_id)
            elif request:
                lost.append((job_id, holder, inc or "", json.loads(request)))
    return lost


def set_job(r: redis.Redis, job_id: str, **fields) -> None:
    r.hset(keys.job(job_id), mapping={k: v if isinstance(v, (str, int, float)) else json.dumps(v)
                                      for k, v in fields.items()})


def job_info(r: redis.Redis, job_id: str) -> dict | None:
    h = r.hgetall(keys.job(job_id))
    if not h:
        return None
    return {k.decode(): v.decode() for k, v in h.items()}


# Run the rest of a script only while the job (KEYS[1]) is held by the run
# (ARGV[1] host, ARGV[2] incarnation); else return -1.
_IF_HOLDER = ("if redis.call('HGET', KEYS[1], 'host') ~= ARGV[1] or "
              "redis.call('HGET', KEYS[1], 'incarnation') ~= ARGV[2] then return -1 end ")


def append_output(r: redis.Redis, job_id: str, stream: str, data: bytes,
                  holder: tuple[str, str] | None = None) -> None:
    """Add (data) to the job's (stream).  Given (holder), the (host,
    incarnation) of the run that writes, only while that run holds the job
    (holds_job): a run superseded by another (its worker stalled, was
    taken for lost and the job ran again) adds nothing."""
    if holder is None:
        r.rpush(keys.job_output(job_id, stream), data)
    else:
        r.eval(_IF_HOLDER + "return redis.call('RPUSH', KEYS[2], ARGV[3])",
               2, keys.job(job_id), keys.job_output(job_id, stream), *holder, data)


def holds_job(r: redis.Redis, job_id: str, holder: tuple[str, str]) -> bool:
    """Whether the run of (holder), the (host, incarnation) of the worker
    that claimed the job (claim_job), still holds it: claim_job gives it to
    another run when that worker is taken for lost."""
    now = tuple(v.decode() if v else "" for v in r.hmget(keys.job(job_id), "host",
                                                          "incarnation"))
    return now == tuple(holder)


def end_job(r: redis.Redis, job_id: str, holder: tuple[str, str], status: str,
            exit_status: int) -> bool:
    """Record how the run of (holder) ended the job, and let the job expire,
    unless another run holds it now.  Whether it did."""
    with r.pipeline() as p:
        try:
            p.watch(keys.job(job_id))
            if not holds_job(p, job_id, holder):
                return False
            p.multi()
            p.hset(keys.job(job_id), mapping={"status": status, "exit_status": exit_status})
            p.execute()
        except redis.WatchError:
            return False        # claimed meanwhile: by another run
    expire_job(r, job_id)
    return True


def output(r: redis.Redis, job_id: str, stream: str, start: int = 0) -> list[bytes]:
    return r.lrange(keys.job_output(job_id, stream), start, -1)


def proc_recorder(r: redis.Redis, job_id: str, host: str, incarnation: str,
                  holder: tuple[str, str] | None = None):
    """A Job's events callback for its processes on (host), worker
    (incarnation): each change goes into the job's process table, while
    the run of (holder) holds the job (append_output)."""
    def record(pid: int, ppid: int, pstate: str, wstatus: int | None, tree: int) -> None:
        set_proc(r, job_id, pid, holder, ppid=ppid, host=host, incarnation=incarnation,
                 state=pstate, wstatus=wstatus, tree=tree)
    return record


def set_proc(r: redis.Redis, job_id: str, pid: int, holder: tuple[str, str] | None = None,
             **info) -> None:
    """Record process (pid)'s state, and the change as an event (given
    (holder), only while that run holds the job)."""
    record, event = json.dumps(info), json.dumps({"pid": pid, **info})
    if holder is not None:
        r.eval(_IF_HOLDER + "redis.call('HSET', KEYS[2], ARGV[3], ARGV[4]) "
               "return redis.call('RPUSH', KEYS[3], ARGV[5])", 3, keys.job(job_id),
               keys.job_procs(job_id), keys.job_events(job_id), *holder, str(pid), record, event)
        return
    p = r.pipeline()
    p.hset(keys.job_procs(job_id), str(pid), record)
    p.rpush(keys.job_events(job_id), event)
    p.execute()


def add_event(r: redis.Redis, job_id: str, event: dict) -> None:
    r.rpush(keys.job_events(job_id), json.dumps(event))


def events(r: redis.Redis, job_id: str, start: int = 0) -> list[dict]:
    return [json.loads(e) for e in r.lrange(keys.job_events(job_id), start, -1)]


def procs(r: redis.Redis, job_id: str) -> dict[int, dict]:
    return {int(k): json.loads(v) for k, v in r.hgetall(keys.job_procs(job_id)).items()}


def expire_job(r: redis.Redis, job_id: str) -> None:
    """The job has ended: its records stay for a while."""
    p = r.pipeline()
    p.srem(keys.RUNNING, job_id)
    trees = [int(t) for t in r.smembers(keys.job_trees(job_id))]
    for k in (keys.job(job_id), keys.job_output(job_id, "out"), keys.job_output(job_id, "err"),
              keys.job_procs(job_id), keys.job_events(job_id), keys.job_pids(job_id),
              keys.job_trees(job_id), *(keys.job_inbox(job_id, t) for t in trees)):
        p.expire(k, OUTPUT_TTL)
    p.execute()
