"""The Celery app: Redis is the broker and the result backend.

Configured from UNIFORK_REDIS_URL (workers/config.py; default
redis://127.0.0.1:6379/0); the `unifork` command's --redis sets it.  One shared queue, unifork.jobs, is
consumed by every worker with prefetch 1 and late acks, so a job lands on
a host that has a free slot; each host also has its own queue.  Forks that
their parent's host has no slot for go to unifork.forks (broker/placement.py).
"""
from __future__ import annotations

from celery import Celery

from workers import config

JOBS_QUEUE = "unifork.jobs"
RUN_JOB = "unifork.run_job"
FORKS_QUEUE = "unifork.forks"       # forks that their parent's host had no slot for
FORK_CHILD = "unifork.fork_child"
PING = "unifork.ping"               # a trivial task: the baseline of bench/cluster.py


def host_queue(host: str) -> str:
    return f"unifork.host.{host}"


def make_app(url: str | None = None) -> Celery:
    url = url or config.get().redis_url
    app = Celery("unifork", broker=url, backend=url, include=["broker.cluster.tasks"])
    app.conf.update(
        task_default_queue=JOBS_QUEUE,
        task_acks_late=True,                 # a job is taken again if its worker dies
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,        # take a job only with a free slot
        task_serializer="json", result_serializer="json", accept_content=["json"],
        result_expires=7 * 24 * 3600,
        broker_connection_retry_on_startup=False,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


app = make_app()
