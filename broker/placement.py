"""Placement of forks: which host runs a child the parent's host has no slot for.

A fork that finds no free slot on its own host becomes a fork *ticket* and
a Celery task on the shared fork queue (unifork.forks).  Every worker
consumes that queue with prefetch 1 and late acks; a worker without a free
slot (or draining) puts the task back and another host takes it.  The first
worker that takes a slot *claims* the ticket: a task delivered twice finds
it claimed and does nothing, so one fork makes one child.  If nobody claims
it within the job's fork wait, the parent abandons the ticket and its
fork() returns EAGAIN; a late worker then finds it abandoned.

    waiting ──claim──▶ claimed ──place──▶ (the parent reads where)
       └──abandon──▶ abandoned
"""
from __future__ import annotations

import json
import time

import redis

from . import keys

TICKET_TTL = 3600

# Take a slot on a host that is not draining.  KEYS[1] host hash.
_TAKE_SLOT = """
local h = redis.call('HMGET', KEYS[1], 'slots', 'used', 'draining')
if h[3] == '1' or tonumber(h[2] or 0) >= tonumber(h[1] or 0) then return 0 end
redis.call('HINCRBY', KEYS[1], 'used', 1)
return 1
"""
# Move a ticket from state ARGV[1] to ARGV[2], setting field 'host' to ARGV[3].
_MOVE = """
if redis.call('HGET', KEYS[1], 'state') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'host', ARGV[3])
return 1
"""


def take_slot(r: redis.Redis, host: str) -> bool:
    """Count one more VM on (host), if it has a free slot and is not draining."""
    return bool(r.eval(_TAKE_SLOT, 1, keys.host(host)))


def give_slot(r: redis.Redis, host: str) -> None:
    r.hincrby(keys.host(host), "used", -1)


def new_ticket(r: redis.Redis, ticket: str, job: str, pid: int) -> None:
    r.hset(keys.ticket(ticket), mapping={"state": "waiting", "job": job, "pid": pid,
                                         "created": time.time()})
    r.expire(keys.ticket(ticket), TICKET_TTL)


def claim(r: redis.Redis, ticket: str, host: str) -> bool:
    """Make (host) the one that runs this fork's child; False if the ticket
    was claimed already (a duplicate delivery) or abandoned."""
    return bool(r.eval(_MOVE, 1, keys.ticket(ticket), "waiting", "claimed", host))


def abandon(r: redis.Redis, ticket: str) -> bool:
    """The parent gives up waiting; False if a host claimed it first."""
    return bool(r.eval(_MOVE, 1, keys.ticket(ticket), "waiting", "abandoned", ""))


def refused(r: redis.Redis, why: str) -> str:
    """Count a fork task that made no child: a "duplicate" delivery of a
    claimed ticket, or a "late" one (abandoned, or past its deadline)."""
    r.hincrby(keys.FORK_STATS, why, 1)
    return why


def state_of(r: redis.Redis, ticket: str) -> str | None:
    s = r.hget(keys.ticket(ticket), "state")
    return s.decode() if s else None


def place(r: redis.Redis, ticket: str, where: dict) -> None:
    """Tell the parent's host where to send the parent (or why not: 'error')."""
    p = r.pipeline()
    p.rpush(keys.ticket_placed(ticket), json.dumps(where))
    p.expire(keys.ticket_placed(ticket), TICKET_TTL)
    p.execute()


def wait_placed(r: redis.Redis, ticket: str, timeout: float) -> dict | None:
    """Where the ticket's child will run, once a host has claimed it."""
    got = r.blpop([keys.ticket_placed(ticket)], timeout=max(timeout, 0.01))
    return None if got is None else json.loads(got[1])
