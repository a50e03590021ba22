"""`unifork worker`: the host agent of one KVM host.

Registers the host in Redis (refusing a name a live worker holds),
heartbeats, and runs a Celery worker that consumes the shared job queue and
this host's own queue, one job per slot at most, and the shared fork
queue.  `unifork drain NAME` makes it stop taking jobs and forks (its slots
are refused to new processes, its own jobs' forks go elsewhere); its
running processes finish.  `unifork undrain NAME` undoes it.
"""
from __future__ import annotations

import logging
import threading

from broker import keys, state
from workers import config
from workers.errors import AgentError
from broker.app import FORKS_QUEUE, JOBS_QUEUE, RUN_JOB, app, host_queue

log = logging.getLogger("unifork.worker")

HEARTBEAT_EVERY = 1.0


def _heartbeat(r, name: str, stop: threading.Event) -> None:
    draining = False
    while not stop.wait(HEARTBEAT_EVERY):
        try:
            state.heartbeat(r, name)
            rescue_lost_jobs(r, name)
            now = r.hget(keys.host(name), "draining") == b"1"
            if now != draining:         # (drained or undrained: a broadcast may be missed)
                draining = now
                (_stop_taking if now else _start_taking)(name)
        except Exception:           # noqa: BLE001 - Redis hiccup: try again next beat
            pass


def rescue_lost_jobs(r, name: str) -> list[str]:
    """Send again each job whose worker is lost (state.lost_jobs), once
    per lost run whichever worker sees it first: the worker that takes it
    runs it again from the start (state.claim_job).  Without this, the
    broker would hand it out only after its visibility timeout, an hour.
    The ids of the jobs sent."""
    sent = []
    for job_id, holder, inc, request in state.lost_jobs(r):
        if r.set(keys.job_rescue(job_id, inc), name, nx=True, ex=24 * 3600):
            log.warning("job %s: its host %s was lost: sending it again", job_id, holder)
            app.send_task(RUN_JOB, task_id=job_id, queue=JOBS_QUEUE, kwargs=request)
            sent.append(job_id)
    return sent


def serve(name: str, slots: int, advertise: str) -> None:
    """Register (name) and run its Celery worker until it is stopped.

    :raise AgentError: Redis unreachable, or (name) held by a live worker.
    """
    if slots < 1:
        raise AgentError("--slots must be at least 1")
    try:
        r = state.connect(app.conf.broker_url)
    except state.Unreachable as err:
        raise AgentError(str(err)) from err
    incarnation = state.register_host(r, name, slots, advertise)
    if incarnation is None:
        age = state.host_alive_age(r, name)
        raise AgentError(f"a worker named {name} is already alive "
                         f"(heartbeat {age or 0:.1f} s ago)")
    config.override(host_name=name, incarnation=incarnation)   # (Celery's pool inherits it)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(r, name, stop), daemon=True)
    beat.start()
    try:
        app.worker_main(["worker", "-n", f"unifork@{name}", "-Q",
                         f"{JOBS_QUEUE},{FORKS_QUEUE},{host_queue(name)}", "-c", str(slots),
                         "--pool", "prefork", "-l", config.get().log_level, "--without-gossip",
                         "--without-mingle"])
    finally:
        stop.set()
        state.unregister_host(r, name)


def drain(name: str, draining: bool = True) -> None:
    """Make host (name) take no new jobs or forks; or (draining False)
    take them again.  :raise AgentError: no host has that name."""
    r = state.connect(app.conf.broker_url)
    if not r.exists(keys.host(name)):
        raise AgentError(f"no host named {name}")
    r.hset(keys.host(name), "draining", int(draining))
    (_stop_taking if draining else _start_taking)(name)


def _stop_taking(name: str) -> None:
    """Stop consuming the shared queues (placement.take_slot refuses too)."""
    for queue in (JOBS_QUEUE, FORKS_QUEUE):
        app.control.cancel_consumer(queue, destination=[f"unifork@{name}"])


def _start_taking(name: str) -> None:
    """Consume the shared queues again (after a drain)."""
    for queue in (JOBS_QUEUE, FORKS_QUEUE):
        app.control.add_consumer(queue, destination=[f"unifork@{name}"])
