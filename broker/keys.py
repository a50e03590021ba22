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


def host_offers(name: str) -> str:      # list of JSON: where its idle worker processes listen
    return f"{PREFIX}host:{name}:offers"


def offer_taken(name: str, offer_id: str) -> str:  # string: the ticket that took an offer
    return f"{PREFIX}host:{name}:offer:{offer_id}"


HOSTS = f"{PREFIX}hosts"                # set of host names ever registered


def host_alive(name: str) -> str:       # string with a TTL: the heartbeat
    return f"{PREFIX}host:{name}:alive"


def job(job_id: str) -> str:            # hash: status, program, host, exit_status, ...
    return f"{PREFIX}job:{job_id}"


JOBS = f"{PREFIX}jobs"                  # sorted set of job ids by submission time
RUNNING = f"{PREFIX}running"            # set of the job ids a worker has claimed, until they end


def job_rescue(job_id: str, incarnation: str) -> str:   # string: one worker re-sends a lost run
    return f"{PREFIX}job:{job_id}:rescue:{incarnation}"


def job_output(job_id: str, stream: str) -> str:   # list of chunks, stream: out|err
    return f"{PREFIX}job:{job_id}:{stream}"


def job_procs(job_id: str) -> str:      # hash: pid -> JSON of ppid, host, state, status
    return f"{PREFIX}job:{job_id}:procs"


def job_events(job_id: str) -> str:     # list of JSON process events, in order
    return f"{PREFIX}job:{job_id}:events"


def job_tree(job_id: str) -> str:        # a tar of the tree as the job ended (a TTL)
    return f"{PREFIX}tree:{job_id}"


def image(sha256: str) -> str:          # the program's bytes, by content
    return f"{PREFIX}image:{sha256}"


def job_pids(job_id: str) -> str:       # counter: the last pid handed out in the job
    return f"{PREFIX}job:{job_id}:pids"


def job_inbox(job_id: str, tree: int) -> str:   # list of JSON messages to a subtree
    return f"{PREFIX}job:{job_id}:inbox:{tree}"


def job_trees(job_id: str) -> str:      # set of subtree roots (pids) that run somewhere
    return f"{PREFIX}job:{job_id}:trees"


def ticket(ticket_id: str) -> str:      # hash: a fork being placed (state, host, ...)
    return f"{PREFIX}fork:{ticket_id}"


def ticket_placed(ticket_id: str) -> str:   # list: where the fork was placed (one JSON)
    return f"{PREFIX}fork:{ticket_id}:placed"


FORK_STATS = f"{PREFIX}stats:forks"    # hash: fork tasks that made no child, by reason
SECRET = f"{PREFIX}secret"              # the cluster secret, when no host was given one
