"""The Celery tasks that run on a KVM host.

unifork.run_job runs one job on this host: pid 1 from the program's image
(fetched from Redis by content hash, cached on disk), its forks as VMs on
this host while it has free slots (counted in Redis), its output streamed
into Redis as it comes, its processes recorded there.  A fork that finds
no slot here becomes unifork.fork_child on the shared fork queue
(broker/placement.py): the host that takes it runs the child and its
descendants (broker/cluster/subtree.py) until they end.  Both tasks are acked
late and idempotent: a finished job is not run again, a claimed fork ticket
makes no second child.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import os
import tempfile
import threading
import time

from celery.exceptions import Ignore
from celery.signals import worker_process_init

from broker import keys, placement, state
from broker.app import FORK_CHILD, FORKS_QUEUE, PING, RUN_JOB, app
from broker.keys import JobStatus

from workers.errors import BadProgram, UniforkError
from workers.proc.run import RunRequest, run

log = logging.getLogger("unifork.worker")
IMAGE_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "unifork", "images")


def host_name() -> str:
    return os.environ.get("UNIFORK_HOST_NAME") or os.uname().nodename


def host_incarnation() -> str:
    """This worker's incarnation (state.register_host), "" outside one."""
    return os.environ.get("UNIFORK_HOST_INCARNATION", "")


class RedisSlots:
    """This host's slots as the cluster sees them (the host's hash in Redis)."""

    def __init__(self, r, host: str) -> None:
        self.r, self.host = r, host
        self.limit = int(r.hget(keys.host(host), "slots") or 0)

    def take(self) -> bool:
        return placement.take_slot(self.r, self.host)

    def give(self) -> None:
        placement.give_slot(self.r, self.host)


def cached_image(r, sha: str) -> str:
    """The path of image (sha) on this host, fetched from Redis once."""
    path = os.path.join(IMAGE_CACHE, sha)
    if os.path.exists(path):
        return path
    data = state.get_image(r, sha)
    if data is None or hashlib.sha256(data).hexdigest() != sha:
        raise BadProgram(f"image {sha} is not in Redis")
    os.makedirs(IMAGE_CACHE, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=IMAGE_CACHE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    return path


def fork_wait_default() -> float:
    """Seconds a fork waits for a free slot in the cluster (UNIFORK_FORK_WAIT, 5)."""
    try:
        return max(0.0, float(os.environ.get("UNIFORK_FORK_WAIT", "5")))
    except ValueError:
        return 5.0


def _address(r, host: str) -> str:
    return (r.hget(keys.host(host), "address") or b"127.0.0.1").decode()


_conn: tuple | None = None


def _here() -> tuple:
    """This worker process's Redis client, host name and address (kept:
    a fork task's claim is on the fork's critical path)."""
    global _conn
    if _conn is None:
        r = state.connect(app.conf.broker_url)
        _conn = (r, host_name(), _address(r, host_name()))
    return _conn


@worker_process_init.connect
def _preload(**_) -> None:
    """Import the fork engine in each pool process before the first task needs it."""
    import qemu.qmp  # noqa: F401

    from broker.cluster import subtree
    from workers.fork import clone  # noqa: F401
    from workers.pipes import bridge  # noqa: F401
    subtree.spare()


def _pump(fd: int, r, job_id: str, stream: str, sink: list[bytes],
          holder: tuple[str, str]) -> None:
    """Copy a pipe into the job's output list in Redis, as it comes, while
    this run holds the job (a superseded run's output is read and dropped)."""
    while chunk := os.read(fd, 65536):
        sink.append(chunk)
        state.append_output(r, job_id, stream, chunk, holder)
    os.close(fd)


@app.task(name=RUN_JOB, bind=True)
def run_job(self, image: str | None = None, program: str | None = None, name: str = "program",
            args: list[str] | tuple = (), env: list[str] | tuple = (), stdin: str = "",
            mem_mib: int = 128, max_procs: int = 64, timeout: float | None = None,
            fork_wait: float | None = None) -> dict:
    """Run a job; returns {job, exit_status, stdout, stderr} (output in base64).

    (image) is the sha256 of a program stored in Redis, or (program) the
    program itself in base64; (name) is its argv[0], (args) the rest.
    A fork that finds no free slot in the cluster for (fork_wait) seconds
    returns EAGAIN.
    """
    r = state.connect(app.conf.broker_url)
    job_id = self.request.id
    host = host_name()
    if state.job_info(r, job_id) is None:       # sent by plain Celery client code
        state.new_job(r, job_id, name, list(args))
    if program is not None:                     # kept by content, like a submitted one
        image, program = state.put_image(r, base64.b64decode(program)), None
    request = {"image": image, "name": name, "args": list(args), "env": list(env),
               "stdin": stdin, "mem_mib": mem_mib, "max_procs": max_procs,
               "timeout": timeout, "fork_wait": fork_wait}
    holder = (host, host_incarnation())
    claim = state.claim_job(r, job_id, *holder, request)
    if claim == "done":                         # delivered twice: already done
        return _result(r, job_id, state.job_info(r, job_id))
    if claim == "busy":                         # delivered twice: it runs elsewhere
        raise Ignore()
    out_sink: list[bytes] = []
    err_sink: list[bytes] = []
    link = None
    try:
        if not image:
            raise BadProgram("run_job needs image (a sha256) or program (base64)")
        path = cached_image(r, image)
        stdin_f = tempfile.TemporaryFile()
        stdin_f.write(base64.b64decode(stdin))
        stdin_f.seek(0)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        pumps = [threading.Thread(target=_pump, args=(out_r, r, job_id, "out", out_sink, holder)),
                 threading.Thread(target=_pump, args=(err_r, r, job_id, "err", err_sink, holder))]
        for t in pumps:
            t.start()

        events = state.proc_recorder(r, job_id, *holder, holder)
        from broker.cluster.link import Link
        link = Link(app.conf.broker_url, job_id, host, 1, image,
                    fork_wait_default() if fork_wait is None else fork_wait, _address(r, host),
                    holder)
        try:
            status = run(RunRequest(path, list(args), list(env), mem_mib, timeout,
                                    stdin=stdin_f.fileno(), stdout=out_w, stderr=err_w,
                                    max_procs=max_procs, name=name,
                                    slots=RedisSlots(r, host), events=events, link=link))
        finally:
            link.close()
            os.close(out_w)
            os.close(err_w)
            for t in pumps:
                t.join()
            stdin_f.close()
        final = JobStatus.FINISHED
    except BadProgram as err:
        status, final = 2, JobStatus.FAILED
        msg = f"unifork: {err}\n".encode()
        err_sink.append(msg)
        state.append_output(r, job_id, "err", msg, holder)
    except UniforkError as err:
        status, final = 1, JobStatus.FAILED
        msg = f"unifork: {err}\n".encode()
        err_sink.append(msg)
        state.append_output(r, job_id, "err", msg, holder)
    except Exception as err:
        if link is not None:
            link.close()
        # Not ours to explain: the job must not stay "running" for ever.
        state.append_output(r, job_id, "err", f"unifork: the job failed on {host}: {err}\n".encode(),
                            holder)
        state.end_job(r, job_id, holder, JobStatus.FAILED.value, 1)
        raise
    if status == 143 and state.job_info(r, job_id).get("cancel") == "1":
        final = JobStatus.CANCELLED
    if not state.end_job(r, job_id, holder, final.value, status):
        # This run was taken for lost (its worker stalled) and the job ran
        # again elsewhere: that run's result is the job's, not ours.
        log.warning("job %s: another run took it over; this run's result is dropped", job_id)
        raise Ignore()
    return _result(r, job_id, {"exit_status": status})   # with other hosts' output


def _result(r, job_id: str, info: dict) -> dict:
    return {"job": job_id, "exit_status": int(info.get("exit_status", 1)),
            "stdout": base64.b64encode(b"".join(state.output(r, job_id, "out"))).decode(),
            "stderr": base64.b64encode(b"".join(state.output(r, job_id, "err"))).decode()}


@app.task(name=FORK_CHILD, bind=True, max_retries=None)   # bounded by (deadline)
def fork_child(self, ticket: str, job: str, image: str, name: str, pid: int, ppid: int,
               parent_tree: int, mem_mib: int, deadline: float, fork_wait: float = 5.0,
               holder: list[str] | tuple[str, str] = ("", ""), nonce: str = "") -> str:
    """Run the child of a fork whose parent's host had no free slot, and its
    descendants here, until they end.  A host with no free slot puts the
    task back for another; the first to take a slot claims the ticket.
    (holder) is the (host, incarnation) of the run of the job the parent
    is of: the child's output and records count only while it holds it.
    (nonce), hex, is the fork's: its stream's keys come from it."""
    from broker.cluster import subtree
    r, host, address = _here()
    if time.time() > deadline:
        return placement.refused(r, "late")
    arrival = failed = None
    try:                            # the child's VM, listening, before the claim:
        if len(bytes.fromhex(nonce)) != 16:             # claim and place: one trip
            raise ValueError("the fork task has no nonce (a parent's host of an older unifork)")
        arrival = subtree.arrival(mem_mib, address, bytes.fromhex(nonce))
    except Exception as err:        # noqa: BLE001 - said to the parent once claimed
        failed = err
    got = (placement.claim_and_place(r, ticket, host, arrival.where(host, address))
           if arrival is not None else placement.claim_with_slot(r, ticket, host))
    if got != "won":
        if arrival is not None:
            subtree.give_back(arrival)
        if got == "full":           # put back at once; past a few bounces, gently
            if self.request.retries >= len(state.hosts(r)):
                time.sleep(0.01)
            raise self.retry(countdown=0, queue=FORKS_QUEUE)
        return placement.refused(r, "duplicate" if got == "claimed" else "late")
    try:
        if failed is not None:
            raise failed
        from broker.cluster.link import cluster_secret
        subtree.run_child(r, app.conf.broker_url, arrival, host, host_incarnation(), job,
                          cached_image(r, image), name, pid, ppid, parent_tree, mem_mib,
                          cluster_secret(r), fork_wait, image, address, RedisSlots(r, host),
                          tuple(holder))
        return "done"
    except Exception as err:        # noqa: BLE001 - the parent's fork fails with the reason
        if arrival is not None and arrival.adopted:
            what = f"the processes of pid {pid} on {host} were lost: {err}"
        else:
            placement.place(r, ticket, {"host": host, "error": str(err)})
            what = f"fork of pid {ppid} onto {host} failed: {err}"
        state.append_output(r, job, "err", f"unifork: {what}\n".encode())
        log.warning("%s", what, exc_info=True)
        return "failed"
    finally:
        if arrival is not None:
            arrival.close()
        if arrival is None or not arrival.adopted:
            placement.give_slot(r, host)
        subtree.spare(mem_mib)          # ready for the next fork onto this host


@app.task(name=PING)
def ping() -> str:
    """Does nothing: the baseline Celery round trip of bench/cluster.py."""
    return "pong"
