"""Placement of forks: which host runs a child the parent's host has no slot for.

A fork that finds no free slot on its own host becomes a fork *ticket* and
a Celery task, unifork.fork_child.  The parent's host sends it straight to
the queue of the host with the most free slots (pick()), or, when none has
one, to the shared fork queue (unifork.forks), which every worker consumes
with prefetch 1 and late acks.  A worker without a free slot (or draining)
puts the task back on the shared queue and another host takes it.  The
first worker that takes a slot *claims* the ticket: a task delivered twice
finds it claimed and does nothing, so one fork makes one child.  If nobody claims
it within the job's fork wait, the parent abandons the ticket and its
fork() returns EAGAIN; a late worker then finds it abandoned.

The Celery hop costs a few ms, so a host's idle worker processes also
*offer* themselves (broker/cluster/offers.py): each listens on a port and
puts it in the host's list of offers.  When the host the parent's host
picks has one, open_ticket() claims the ticket for it, takes its slot and
hands out the offer in the same round trip, and the parent's host sends
the fork straight there; the child's host marks the ticket *arrived* as
the stream comes (a stream replayed later finds it so).  An offer that
turns out stale (its process went busy or away) is given back unclaimed,
and the fork goes by its task as before.

    waiting ──claim──▶ claimed ──place──▶ (the parent reads where)
       │                 └──arrive──▶ arrived      (an offer's stream)
       └──abandon──▶ abandoned
"""
from __future__ import annotations

import json
import time

import redis

from broker import keys

TICKET_TTL = 3600

# Take a slot on a host that is not draining.  KEYS[1] host hash.
_TAKE_SLOT = """
local h = redis.call('HMGET', KEYS[1], 'slots', 'used', 'draining')
if h[3] == '1' or tonumber(h[2] or 0) >= tonumber(h[1] or 0) then return 0 end
redis.call('HINCRBY', KEYS[1], 'used', 1)
return 1
"""
# The live, undrained host with the most free slots but ARGV[1], or false
# (KEYS[1] the set of hosts, ARGV[2] the prefix of their keys).  It reads
# host keys it is not passed: fine on one Redis, not on a cluster.
_PICK = """
local best, most = false, 0
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if name ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. name .. ':alive') == 1 then
    local h = redis.call('HMGET', ARGV[2] .. name, 'slots', 'used', 'draining')
    local free = tonumber(h[1] or 0) - tonumber(h[2] or 0)
    if h[3] ~= '1' and free > most then best, most = name, free end
  end
end
return best
"""
# A new ticket KEYS[2] (job ARGV[3], pid ARGV[4], created ARGV[5], living
# ARGV[6] s), and _PICK's answer: one round trip on the fork's path.  If
# the host picked has an offer (its list is ARGV[2] .. name .. ARGV[7]),
# the ticket is claimed for it, with one of its slots, {host, offer}
# returned instead, and the ticket (ARGV[8]) kept under the offer's id.
# The offers of processes that keep a VM of the job (list .. ':' .. job)
# go first.
_OPEN_TICKET = """
redis.call('HSET', KEYS[2], 'state', 'waiting', 'job', ARGV[3], 'pid', ARGV[4],
           'created', ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[6])
local best = (function()""" + _PICK + """end)()
if not best or ARGV[7] == '' then return best end
local offer = redis.call('LPOP', ARGV[2] .. best .. ARGV[7] .. ':' .. ARGV[3])
if not offer then offer = redis.call('LPOP', ARGV[2] .. best .. ARGV[7]) end
if not offer then return best end
redis.call('HINCRBY', ARGV[2] .. best, 'used', 1)
redis.call('HSET', KEYS[2], 'state', 'claimed', 'host', best)
redis.call('SET', ARGV[2] .. best .. ':offer:' .. cjson.decode(offer)['id'], ARGV[8],
           'EX', ARGV[6])
return {best, offer}
"""
# Give back a ticket KEYS[1] claimed for host ARGV[1] (hash KEYS[2]) whose
# offer was stale: waiting again, the slot free.
_UNCLAIM = """
if redis.call('HGET', KEYS[1], 'state') ~= 'claimed'
   or redis.call('HGET', KEYS[1], 'host') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'waiting')
redis.call('HINCRBY', KEYS[2], 'used', -1)
return 1
"""
_ARRIVE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'claimed'
   or redis.call('HGET', KEYS[1], 'host') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'arrived')
return 1
"""
# Claim ticket KEYS[1] for host ARGV[1] whose hash is KEYS[2], taking one of
# its slots, in one step.  Returns the ticket's state if it is not waiting,
# 'full' if the host has no free slot (or drains), else 'won'.
_CLAIM_WITH_SLOT = """
local st = redis.call('HGET', KEYS[1], 'state')
if st ~= 'waiting' then return st or 'gone' end
local h = redis.call('HMGET', KEYS[2], 'slots', 'used', 'draining')
if h[3] == '1' or tonumber(h[2] or 0) >= tonumber(h[1] or 0) then return 'full' end
redis.call('HINCRBY', KEYS[2], 'used', 1)
redis.call('HSET', KEYS[1], 'state', 'claimed', 'host', ARGV[1])
return 'won'
"""
# The same, and when won, where the child runs (ARGV[2], JSON) for the
# parent's host (list KEYS[3], living ARGV[3] s): one round trip.
_CLAIM_AND_PLACE = _CLAIM_WITH_SLOT.replace("return 'won'", """
redis.call('RPUSH', KEYS[3], ARGV[2])
redis.call('EXPIRE', KEYS[3], ARGV[3])
return 'won'""")
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


def open_ticket(r: redis.Redis, ticket: str, job: str, pid: int, but: str,
                offers: bool = False) -> tuple[str | None, dict | None]:
    """Make ticket (ticket) for job (job)'s fork of (pid), waiting, and say
    which host to send it to: alive, not draining, with the most free
    slots, other than (but); None when no host has a free slot.  With
    (offers), if that host has an offer, the ticket is claimed for it (a
    slot taken) and the offer is the second value.  One round trip (it is
    on the fork's path)."""
    got = r.eval(_OPEN_TICKET, 2, keys.HOSTS, keys.ticket(ticket), but, keys.host(""), job,
                 pid, time.time(), TICKET_TTL, OFFERS_SUFFIX if offers else "", ticket)
    if isinstance(got, list):
        return got[0].decode(), json.loads(got[1])
    return (got.decode() if got else None), None


OFFERS_SUFFIX = keys.host_offers("")[len(keys.host("")):]     # ":offers"


def unclaim(r: redis.Redis, ticket: str, host: str) -> bool:
    """Give back (ticket), claimed for (host) with an offer that was stale:
    waiting again, its slot free; False if it is not so claimed."""
    return bool(r.eval(_UNCLAIM, 2, keys.ticket(ticket), keys.host(host), host))


def arrive(r: redis.Redis, ticket: str, host: str) -> bool:
    """The stream of (ticket), claimed for (host) with an offer, is here:
    True the first time only (a replayed stream finds it arrived)."""
    return bool(r.eval(_ARRIVE, 1, keys.ticket(ticket), host))


def offer(r: redis.Redis, host: str, where: dict) -> str:
    """Put (where), whose "id" is new, in (host)'s offers (those for job
    where["job"] if it names one: its forks take them first); returns the
    entry, for withdraw() and offered()."""
    entry = json.dumps(where, sort_keys=True)
    key = _offers_of(host, entry)
    p = r.pipeline()
    p.rpush(key, entry)
    if where.get("job"):
        p.expire(key, TICKET_TTL)       # (a worker restarted leaves a job's list behind)
    p.execute()
    return entry


def _offers_of(host: str, entry: str) -> str:
    job = json.loads(entry).get("job")
    return keys.host_offers(host) + (f":{job}" if job else "")


def withdraw(r: redis.Redis, host: str, entry: str) -> bool:
    """Take (entry) out of (host)'s offers; False if a fork took it first."""
    return bool(r.lrem(_offers_of(host, entry), 0, entry))


def offered(r: redis.Redis, host: str, entry: str) -> bool:
    """Whether (entry) is still among (host)'s offers."""
    return r.lpos(_offers_of(host, entry), entry) is not None


def taken_by(r: redis.Redis, host: str, entry: str) -> str | None:
    """The ticket of the fork that took offer (entry) of (host), if known."""
    got = r.get(keys.offer_taken(host, json.loads(entry)["id"]))
    return got.decode() if got else None


def claim_with_slot(r: redis.Redis, ticket: str, host: str) -> str:
    """Take a slot on (host) and claim (ticket) for it, atomically:
    'won'; 'full' (no free slot, or draining: try another host); or the
    ticket's state when it is not waiting any more ('claimed': a
    duplicate delivery; 'abandoned'; 'gone': expired)."""
    got = r.eval(_CLAIM_WITH_SLOT, 2, keys.ticket(ticket), keys.host(host), host)
    return got.decode() if isinstance(got, bytes) else str(got)


def claim_and_place(r: redis.Redis, ticket: str, host: str, where: dict) -> str:
    """claim_with_slot(), and when it is won, place(r, ticket, where), in
    one round trip."""
    got = r.eval(_CLAIM_AND_PLACE, 3, keys.ticket(ticket), keys.host(host),
                 keys.ticket_placed(ticket), host, json.dumps(where), TICKET_TTL)
    return got.decode() if isinstance(got, bytes) else str(got)


def abandon(r: redis.Redis, ticket: str) -> bool:
    """The parent gives up waiting; False if a host claimed it first."""
    return bool(r.eval(_MOVE, 1, keys.ticket(ticket), "waiting", "abandoned", ""))


def refused(r: redis.Redis, why: str) -> str:
    """Count a fork task that made no child: a "duplicate" delivery of a
    claimed ticket, or a "late" one (abandoned, or past its deadline)."""
    r.hincrby(keys.FORK_STATS, why, 1)
    return why


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
