"""What `unifork cluster status|drain|undrain|logs|restart` do and print.

Each reads the inventory (--inventory FILE) and works on its KVM hosts
over SSH; a host it cannot reach, or a command that fails there, is one
line on stderr naming the host and a non-zero exit status.
"""
from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass

from workers.errors import RemoteError, UniforkError, UsageError

from broker.ops import inventory
from broker.ops.inventory import Host, Inventory
from broker.ops.remote import SERVICE, Remote, q, service, service_state, unifork

_MARK = "::unifork-cluster::"
COLUMNS = ("HOST", "SSH", "WORKER", "SLOTS", "USED", "FREE", "LOAD", "VERSION")


def _err(msg: str) -> None:
    print(f"unifork: {msg}", file=sys.stderr, flush=True)


def _masked(text: str) -> str:
    """(text) without the passwords of the URLs in it."""
    return re.sub(r"(://[^:/@\s]*:)[^@\s]+@", r"\1***@", text)


def _said(got) -> str:
    """The last line a failed command printed, without `unifork: `."""
    lines = (got.err.strip() or got.out.strip()).splitlines()
    return _masked(lines[-1].removeprefix("unifork: ")) if lines else f"exit status {got.code}"


def main(args) -> int:
    try:
        inv = inventory.load(args.inventory)
        return ACTIONS[args.action](inv, args)
    except UsageError as err:
        _err(str(err))
        return 2
    except UniforkError as err:
        _err(str(err))
        return 1


# -- status -------------------------------------------------------------------
@dataclass
class Row:
    cells: tuple[str, ...]          # as COLUMNS
    note: str = ""
    problem: str | None = None      # why the host is not fine; None: it is


def _status_script(host: Host) -> str:
    """One shell script printing each part of a host's status after a mark."""
    parts = {"service": service(host, "status"), "load": "cat /proc/loadavg",
             "version": f"{q(host.unifork)} --version",
             "slots": f"grep '^UNIFORK_WORKER_SLOTS=' {q(host.etc + '/worker.env')}",
             "hosts": unifork(host, "hosts", "--json")}
    return "; ".join(f"echo {_MARK}{name}; ( {cmd} ) 2>&1" for name, cmd in parts.items())


def _sections(out: str) -> dict[str, str]:
    got: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith(_MARK):
            current = got.setdefault(line[len(_MARK):], [])
        elif current is not None:
            current.append(line)
    return {name: "\n".join(lines).strip() for name, lines in got.items()}


def _registered(host: Host, said: str) -> tuple[dict | None, str]:
    """The worker's record in `unifork hosts --json`'s output, or None and why not."""
    try:
        records = json.loads(said)
    except ValueError:
        return None, _masked(said.splitlines()[0].removeprefix("unifork: ")) if said else \
            "`unifork hosts` said nothing"
    for rec in records:
        if rec.get("name") == host.worker_name:
            if rec.get("heartbeat_age") is None:
                return None, f"{host.worker_name} is dead in `unifork hosts`"
            return rec, ""
    return None, f"{host.worker_name} is not in `unifork hosts`"


def _status_row(host: Host, connect_timeout: float) -> Row:
    try:
        with Remote(host, connect_timeout) as remote:
            parts = _sections(remote.run(_status_script(host)).out)
    except RemoteError as err:
        return Row((host.name, host.address, "unreachable", *"-----"), problem=str(err))
    worker = service_state(parts.get("service", ""))
    slots = parts.get("slots", "").partition("=")[2].strip() or "?"
    load = " ".join(parts.get("load", "").split()[:3]) or "?"
    version = (parts.get("version", "").splitlines() or ["?"])[0].removeprefix("unifork ")
    rec, why = _registered(host, parts.get("hosts", ""))
    used = str(rec["used"]) if rec else "-"
    free = str(max(0, rec["slots"] - rec["used"])) if rec else "-"
    note = "draining" if rec and rec.get("draining") else why
    problem = None
    if worker != "running":
        problem = f"{host.name} ({host.address}): the worker ({SERVICE}) is {worker}"
    elif rec is None:
        problem = f"{host.name} ({host.address}): {why}"
    return Row((host.name, host.address, worker, slots, used, free, load, version),
               note=note, problem=problem)


def _table(rows: list[Row]) -> str:
    width = [max(len(c) for c in col) for col in zip(COLUMNS, *(r.cells for r in rows))]
    right = {"SLOTS", "USED", "FREE"}

    def line(cells: tuple[str, ...], note: str = "") -> str:
        text = "  ".join(c.rjust(w) if name in right else c.ljust(w)
                         for name, c, w in zip(COLUMNS, cells, width))
        return (text + ("  " + note if note else "")).rstrip()
    return "\n".join([line(COLUMNS), *(line(r.cells, r.note) for r in rows)])


def status(inv: Inventory, args) -> int:
    """Each KVM host side by side; 0 if every one is reachable, its worker
    running and alive in `unifork hosts`."""
    from concurrent.futures import ThreadPoolExecutor
    hosts = list(inv.kvm_hosts.values())
    with ThreadPoolExecutor(max_workers=min(16, len(hosts))) as pool:
        rows = list(pool.map(lambda h: _status_row(h, args.connect_timeout), hosts))
    print(_table(rows), flush=True)
    for row in rows:
        if row.problem:
            _err(row.problem)
    return 1 if any(r.problem for r in rows) else 0


# -- drain, undrain, logs, restart --------------------------------------------
def drain(inv: Inventory, args) -> int:
    host = inv.host(args.host)
    with Remote(host, args.connect_timeout) as remote:
        got = remote.run(unifork(host, args.action, host.worker_name))
    if got.code:
        raise RemoteError(f"{host.name}: `unifork {args.action} {host.worker_name}` failed: "
                          f"{_said(got)}")
    print(f"{host.name}: drained: it takes no new jobs or forks; its running ones finish"
          if args.action == "drain" else f"{host.name}: undrained: it takes jobs and forks")
    return 0


def logs(inv: Inventory, args) -> int:
    host = inv.host(args.host)
    if args.lines < 0:
        raise UsageError(f"-n {args.lines}: give a number of lines, 0 or more")
    log = host.log_dir + "/worker.log"
    check = f"[ -r {q(log)} ] || {{ echo \"cannot read {log}\" >&2; exit 66; }}"
    tail = f"tail -n {args.lines} {'-F ' if args.follow else ''}{q(log)}"
    with Remote(host, args.connect_timeout) as remote:
        if args.follow:         # (the terminal there adds no \r and echoes no ^C)
            got = remote.run(f"{check} || exit; stty -onlcr -echo 2>/dev/null; exec {tail}",
                             timeout=None, stream=True)
            return 1 if got.code == 66 else 0       # (else: it ended with our ^C)
        got = remote.run(f"{check} && {tail}")
        sys.stdout.write(got.out)
    if got.code:
        raise RemoteError(f"{host.name}: {_said(got)}")
    return 0


def _record(remote: Remote, host: Host) -> tuple[dict | None, str]:
    got = remote.run(unifork(host, "hosts", "--json"))
    return _registered(host, got.out if got.code == 0 else got.err or got.out)


def restart(inv: Inventory, args) -> int:
    """Restart the worker's service, then wait (up to --wait S) until a new
    worker holds the host's name in `unifork hosts`."""
    host = inv.host(args.host)
    with Remote(host, args.connect_timeout) as remote:
        before, _ = _record(remote, host)
        got = remote.run(service(host, "restart") + " 2>&1", timeout=max(60.0, args.wait))
        # (supervisorctl restarting a stopped worker says "ERROR (not running)", then
        # "started", and exits 0)
        if got.code or "ERROR" in (got.out.strip().splitlines() or [""])[-1]:
            raise RemoteError(f"{host.name}: restarting {SERVICE} failed: {_said(got)}")
        print(f"{host.name}: {SERVICE} restarted; waiting for it in `unifork hosts` "
              f"(up to {args.wait:g} s)", flush=True)
        start = time.monotonic()
        while True:
            now, why = _record(remote, host)
            if now and (before is None or now.get("started") != before.get("started")):
                print(f"{host.name}: back in `unifork hosts` after "
                      f"{time.monotonic() - start:.1f} s, {now['slots']} slots")
                return 0
            if time.monotonic() - start > args.wait:
                raise RemoteError(f"{host.name}: not back in `unifork hosts` after "
                                  f"{args.wait:g} s ({why or 'the old worker is still there'}; "
                                  f"see `unifork cluster logs {host.name}`)")
            time.sleep(1.0)


ACTIONS = {"status": status, "drain": drain, "undrain": drain, "logs": logs,
           "restart": restart}
