"""The cluster commands of `unifork`: worker, submit, ps, logs, hosts,
cancel, drain, undrain, fetch.  Each prints a one-line error and exits non-zero on
trouble: an unreachable Redis, an unknown job, a bad program."""
from __future__ import annotations

import sys
import time


def _err(msg: str, code: int = 1) -> int:
    print(f"unifork: {msg}", file=sys.stderr)
    return code


def main(args) -> int:
    from workers import config
    from workers.errors import BadProgram, ConfigError, UniforkError, UsageError
    try:
        config.override(redis_url=getattr(args, "redis", None))
        config.get()
    except ConfigError as err:
        return _err(str(err), 2)

    from broker import client, state
    try:
        return COMMANDS[args.command](args, client, state)
    except (BadProgram, UsageError) as err:
        return _err(str(err), 2)
    except UniforkError as err:     # Redis out of reach, an unknown job, ...
        return _err(str(err))


def worker(args, client, state) -> int:
    from broker.cluster.agent import serve
    from workers import config
    from workers.errors import UniforkError, UsageError
    try:
        cfg = config.override(fork_ports=args.fork_ports, bridge_ports=args.bridge_ports,
                              files_ports=args.files_ports, driver=args.driver)
        name, slots, advertise = worker_identity(args, cfg)
    except UsageError as err:
        return _err(str(err), 2)
    try:
        if cfg.driver == "libvirt":     # a libvirtd that does not answer: said now
            from workers.vm.libvirt_domain import check_reachable
            check_reachable()
        serve(name, slots, advertise)
    except UniforkError as err:
        return _err(str(err))
    return 0


def worker_identity(args, cfg) -> tuple[str, int, str]:
    """The worker's name, slots and address: its options, else the
    environment's UNIFORK_HOST_NAME (else the node name),
    UNIFORK_WORKER_SLOTS and UNIFORK_WORKER_ADVERTISE.

    :raise UsageError: slots or address given by neither.
    """
    import os
    from workers.errors import UsageError
    name = args.host_name or cfg.host_name or os.uname().nodename
    slots = args.slots if args.slots is not None else cfg.worker_slots
    advertise = args.advertise or cfg.worker_advertise
    if slots is None:
        raise UsageError("worker: its slots are not given: --slots N or UNIFORK_WORKER_SLOTS=N")
    if not advertise:
        raise UsageError("worker: the address other hosts reach it at is not given: "
                         "--advertise ADDR or UNIFORK_WORKER_ADVERTISE=ADDR")
    return name, slots, advertise


def submit(args, client, state) -> int:
    stdin = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    job = client.submit(args.program, args.args, args.env, stdin, args.mem, args.max_procs,
                        args.timeout, args.fork_wait, args.input, args.workdir, args.output)
    if not (args.wait or args.follow):
        print(job.id)
        return 0
    status = follow(job) if args.follow else job.wait()
    if not args.follow:
        sys.stdout.buffer.write(job.stdout)
        sys.stderr.buffer.write(job.stderr)
    if args.out and args.output and job.info().get("outputs"):
        client.fetch(job.id, [], args.out)
    return status


def fetch(args, client, state) -> int:
    for path in client.fetch(args.job, args.paths, args.out):
        print(path)
    return 0


def follow(job) -> int:
    """Stream output and process events until the job ends."""
    from broker.client import DONE
    from broker import state
    sent = {"out": 0, "err": 0, "events": 0}
    out = {"out": sys.stdout.buffer, "err": sys.stderr.buffer}
    while True:
        done = job.status in DONE
        for stream in ("out", "err"):
            chunks = state.output(job.r, job.id, stream, sent[stream])
            sent[stream] += len(chunks)
            for c in chunks:
                out[stream].write(c)
            out[stream].flush()
        for e in state.events(job.r, job.id, sent["events"]):
            sent["events"] += 1
            print(f"unifork: pid {e['pid']} (parent {e['ppid']}) {e['state']} on "
                  f"{e.get('host', '?')}",
                  file=sys.stderr, flush=True)
        if done:
            return job.exit_status if job.exit_status is not None else 1
        time.sleep(0.1)


def ps(args, client, state) -> int:
    if args.job is None:
        r = client.connect()
        from broker import keys
        for jid in r.zrevrange(keys.JOBS, 0, 19):
            info = state.job_info(r, jid.decode()) or {}
            print(f"{jid.decode()}  {info.get('status', '?'):9}  {info.get('host', '-'):10}  "
                  f"{info.get('program', '')}")
        return 0
    job = client.job(args.job)
    info = job.info()
    print(f"job {job.id}: {info['status']}"
          + (f", exit status {info['exit_status']}" if "exit_status" in info else ""))
    print(f"{'PID':>5} {'PPID':>5} {'HOST':12} {'STATE':8} STATUS")
    for pid, p in sorted(job.processes().items()):
        ws = p.get("wstatus")
        how = "" if ws is None else (f"signal {ws & 0x7f}" if ws & 0x7f else f"exit {ws >> 8}")
        print(f"{pid:>5} {p['ppid']:>5} {p['host']:12} {p['state']:8} {how}")
    return 0


def logs(args, client, state) -> int:
    job = client.job(args.job)
    sys.stdout.buffer.write(job.stdout)
    sys.stderr.buffer.write(job.stderr)
    return 0


def hosts(args, client, state) -> int:
    r = client.connect()
    if args.json:
        import json
        print(json.dumps(state.hosts(r)))
        return 0
    print(f"{'HOST':12} {'ADDRESS':16} {'USED':>4} {'FREE':>4} {'HEARTBEAT':>10}")
    for h in state.hosts(r):
        age = h["heartbeat_age"]
        beat = "dead" if age is None else f"{age:.1f} s ago"
        note = "  draining" if h["draining"] else ""
        print(f"{h['name']:12} {h['address']:16} {h['used']:>4} "
              f"{max(0, h['slots'] - h['used']):>4} {beat:>10}{note}")
    return 0


def cancel(args, client, state) -> int:
    client.job(args.job).cancel()
    return 0


def drain(args, client, state) -> int:
    from broker.cluster.agent import AgentError, drain as do_drain
    try:
        do_drain(args.name, draining=args.command == "drain")
    except AgentError as err:
        return _err(str(err))
    return 0


COMMANDS = {"worker": worker, "submit": submit, "ps": ps, "logs": logs, "hosts": hosts,
            "cancel": cancel, "drain": drain, "undrain": drain, "fetch": fetch}
