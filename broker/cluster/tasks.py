"""The Celery tasks that run on a KVM host: thin wrappers around plain
functions a test can call.

unifork.run_job runs a job on this host (jobs.py).  A fork that finds no
slot here becomes unifork.fork_child (sending.py), on the shared fork
queue or the queue of the host its ticket names (broker/placement.py):
the host that takes it runs the child and its descendants until they end
(receiving.py).  Both are acked late and idempotent: a finished job is not
run again, a claimed fork ticket makes no second child.
"""
from __future__ import annotations

import time

from celery.exceptions import Ignore
from celery.signals import (task_postrun, task_prerun, worker_process_init,
                            worker_process_shutdown)

from broker import state
from broker.app import FORK_CHILD, FORKS_QUEUE, PING, RUN_JOB, app
from broker.cluster import jobs, receiving
from broker.cluster.host import Here

from workers import config
from workers.errors import Superseded

_here: Here | None = None
_offers = None              # offers.Offers: this process, offered to forks from elsewhere


def _kept_here() -> Here:
    """This worker process's Redis client, name, address and slots (kept:
    a fork task's claim is on the fork's critical path)."""
    global _here
    if _here is None:
        _here = Here.connect(app.conf.broker_url)
    return _here


@worker_process_init.connect
def _preload(**_) -> None:
    """Import the fork engine in each pool process before the first task needs it."""
    import qemu.qmp  # noqa: F401

    from workers.fork import arrival, clone  # noqa: F401
    from workers.pipes import bridge  # noqa: F401
    here = _kept_here()
    arrival.spare(address=here.address)
    if config.get().fork_offers:
        global _offers
        from broker.cluster.offers import Offers
        _offers = Offers(Here.connect(app.conf.broker_url))


@task_prerun.connect
def _busy(**_) -> None:
    if _offers is not None:
        _offers.task_started()


@task_postrun.connect
def _idle(**_) -> None:
    if _offers is not None:
        _offers.task_ended()


@worker_process_shutdown.connect
def _leaving(**_) -> None:
    if _offers is not None:
        _offers.close()


@app.task(name=RUN_JOB, bind=True)
def run_job(self, **request) -> dict:
    """Run a job (jobs.JobRequest says what it takes); returns {job,
    exit_status, stdout, stderr} (output in base64)."""
    try:
        return jobs.run_job(Here.connect(app.conf.broker_url), self.request.id,
                            jobs.JobRequest(**request))
    except Superseded:
        raise Ignore() from None


@app.task(name=FORK_CHILD, bind=True, max_retries=None)   # bounded by its deadline
def fork_child(self, **task) -> str:
    """Run the child of a fork whose parent's host had no free slot, and its
    descendants, here until they end (receiving.ForkTask says what it
    takes).  A host with no free slot puts the task back for another."""
    here = _kept_here()
    got = receiving.take(here, receiving.ForkTask(**task))
    if got == receiving.FULL:       # put back at once; past a few bounces, gently
        if self.request.retries >= len(state.hosts(here.r)):
            time.sleep(0.01)
        raise self.retry(countdown=0, queue=FORKS_QUEUE)
    return got


@app.task(name=PING)
def ping() -> str:
    """Does nothing: the baseline Celery round trip of bench/cluster.py."""
    return "pong"
