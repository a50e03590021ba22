"""Every Redis key unifork uses, in one place, and the job status."""
from __future__ import annotations

import enum

PREFIX = "unifork:"


class JobStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"       # pid 1 ended; exit_status says how
    FAILED = "failed"           # it could not run (bad program, no VM)
    CANCELLED = "cancelled"


def host(name: str) -> str:             # hash: slots, used, address, heartbeat, draining
    return f"{PREFIX}host:{name}"


HOSTS = f"{PREFIX}hosts"                # set of host names ever registered


def host_alive(name: str) -> str:       # string with a TTL: the heartbeat
    return f"{PREFIX}host:{name}:alive"


def job(job_id: str) -> str:            # hash: status, program, host, exit_status, ...
    return f"{PREFIX}job:{job_id}"


JOBS = f"{PREFIX}jobs"                  # sorted set of job ids by submission time


def job_output(job_id: str, stream: str) -> str:   # list of chunks, stream: out|err
    return f"{PREFIX}job:{job_id}:{stream}"


def job_procs(job_id: str) -> str:      # hash: pid -> JSON of ppid, host, state, status
    return f"{PREFIX}job:{job_id}:procs"


def job_events(job_id: str) -> str:     # list of JSON process events, in order
    return f"{PREFIX}job:{job_id}:events"


def image(sha256: str) -> str:          # the program's bytes, by content
    return f"{PREFIX}image:{sha256}"
