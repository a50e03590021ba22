"""The child's half of a fork across hosts, top to bottom.

A fork_child task (sending.py sent it) reaches a worker with the fork's
ticket, and take() then:

1. has a VM for the child, parked and listening (workers/fork/arrival.py;
   each worker process keeps one ready), before it claims the ticket: the
   claim and the child's address go to Redis in one trip (placement.py);
   a host with no free slot puts the task back for another;
2. reads the parent's RAM from the stream into that VM (Arrival.receive);
3. gives the child its pid, its rings and the links of the pipes it
   inherited (the pipe bridge), lets it go, and tells the parent's host;
4. supervises the subtree the child is the root of until its last process
   here ends (link.py says how subtrees talk).

The child keeps what it inherited: its stdout and stderr (and its
children's) go to the job's output from here; its stdin and its pipes
reach it over the pipe bridge (workers/pipes/bridge.py), which links each
ring it holds to the same ring in this subtree's region.  A pipe no link
carries (none should remain) reads end of file and fails writes with
EPIPE, and the job's stderr says so once.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time

from broker import placement, state
from broker.cluster.host import Here
from broker.cluster.link import Link, cluster_secret

from workers import abi
from workers.errors import TransferError
from workers.fork import arrival, clone, wire
from workers.files.remote import RemoteFiles
from workers.fork.arrival import Arrival
from workers.proc.stdio import Stdio
from workers.proc.supervisor import Supervisor
from workers.proc.table import Job
from workers.seal import recv_exact
from workers.vm import elf
from workers.vm.layout import Layout
from workers.vm.rings import SharedRegion

log = logging.getLogger("unifork.worker")

FULL = "full"           # take(): no slot here, the task goes back to the queue
HELLO_TIMEOUT = 5.0     # take_offered(): seconds for a fork's nonce and header


@dataclasses.dataclass
class ForkTask:
    """A fork_child task's arguments: the fork's (ticket), the child (pid)
    of (ppid) in subtree (parent_tree) of (job), its (image) and argv[0]
    (name), its VM's size; the task is void after (deadline) (time.time).
    (holder) is the (host, incarnation) of the run of the job the parent is
    of: the child's output and records count only while it holds it.
    (nonce), hex, is the fork's: its stream's keys come from it."""

    ticket: str
    job: str
    image: str
    name: str
    pid: int
    ppid: int
    parent_tree: int
    mem_mib: int
    deadline: float
    fork_wait: float = 5.0
    holder: tuple[str, str] = ("", "")
    nonce: str = ""

    def __post_init__(self) -> None:
        self.holder = tuple(self.holder)


def take(here: Here, task: ForkTask) -> str:
    """Make the child of (task) here and run its subtree until it ends:
    "done", "failed", FULL, or why the task was refused ("late", ...)."""
    r = here.r
    if time.time() > task.deadline:
        return placement.refused(r, "late")
    a = failed = None
    try:                            # the child's VM, listening, before the claim:
        if len(bytes.fromhex(task.nonce)) != 16:        # claim and place: one trip
            raise ValueError("the fork task has no nonce (a parent's host of an older unifork)")
        a = arrival.arrival(task.mem_mib, here.address, bytes.fromhex(task.nonce), task.job)
    except Exception as err:        # noqa: BLE001 - said to the parent once claimed
        failed = err
    got = (placement.claim_and_place(r, task.ticket, here.host, a.where(here.host, here.address))
           if a is not None else placement.claim_with_slot(r, task.ticket, here.host))
    if got != "won":
        if a is not None:
            arrival.give_back(a)
        return FULL if got == "full" else placement.refused(
            r, "duplicate" if got in ("claimed", "arrived") else "late")
    return _child_here(here, task, a, failed, lambda: run_child(here, task, a))


def _child_here(here: Here, task: ForkTask, a: Arrival | None, failed: BaseException | None,
                run) -> str:
    """run() the child of (task) in (a) and its subtree, its slot here
    taken, unless making it (failed) already: "done", or "failed" said to
    the parent (its fork fails with the reason) and in the job's stderr;
    then its VM and slot are let go, unless its subtree's Job has them, the
    VM its subtree ended in is kept for the job, and a spare is made ready
    for the next fork onto this host."""
    try:
        if failed is not None:
            raise failed
        run()
        return "done"
    except Exception as err:        # noqa: BLE001 - the parent's fork fails with the reason
        _failed(here, task, a, err)
        return "failed"
    finally:
        if a is not None and a.parked_vm is not None:   # its region is free now: kept
            arrival.keep(task.job, a.parked_vm, a.shm, task.mem_mib, here.address)
            a.parked_vm = a.shm = None
        if a is not None:
            a.close()
        if a is None or not a.adopted:
            placement.give_slot(here.r, here.host)
        arrival.spare(task.mem_mib, here.address)


def _failed(here: Here, task: ForkTask, a: Arrival | None, err: Exception) -> None:
    """Say why: to the parent's fork if it still waits, and in the job's stderr."""
    if a is not None and a.adopted:
        what = f"the processes of pid {task.pid} on {here.host} were lost: {err}"
    else:
        placement.place(here.r, task.ticket, {"host": here.host, "error": str(err)})
        what = f"fork of pid {task.ppid} onto {here.host} failed: {err}"
    state.append_output(here.r, task.job, "err", f"unifork: {what}\n".encode())
    log.warning("%s", what, exc_info=True)


def take_offered(here: Here, conn: socket.socket) -> str:
    """Make the child of a fork sent straight to this process's offer
    (offers.py) and run its subtree here until it ends: "done", "failed",
    or why the stream was refused.  Its ticket was claimed, and a slot
    here taken, by the parent's host."""
    secret = cluster_secret(here.r)
    try:
        conn.settimeout(HELLO_TIMEOUT)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        nonce = recv_exact(conn, wire.OFFER_NONCE)
        began = time.monotonic()
        got = wire.open_fork(conn, secret, nonce)   # a stream without the secret ends here
        conn.settimeout(30)
        task = _offered_task(got.header)
        if not placement.arrive(here.r, task.ticket, here.host):
            wire.send_reply(conn, secret, nonce, {"error": "the fork's ticket is not for here"})
            conn.close()
            return placement.refused(here.r, "duplicate")
    except BaseException:
        conn.close()
        raise
    a = failed = None
    try:
        a = arrival.vessel(task.mem_mib, task.job)
        a.nonce = nonce
        a.take(got, conn, secret, task.pid)
    except BaseException as err:    # said to the parent's host, unless take() did
        if a is None or a.refused is None:
            _reply_error(conn, secret, nonce, err)
        conn.close()
        failed = err
    return _child_here(here, task, a, failed,
                       lambda: run_child(here, task, a, (got.header, conn, began)))


def _offered_task(header: dict) -> ForkTask:
    """The task an offered fork's header carries."""
    try:
        return ForkTask(**header["task"])
    except (KeyError, TypeError) as err:
        raise TransferError(f"a fork stream to an offer without its task: {err}") from None


def _reply_error(conn: socket.socket, secret: bytes, nonce: bytes, err: Exception) -> None:
    try:
        wire.send_reply(conn, secret, nonce, {"error": str(err) or repr(err)})
    except OSError:
        pass                        # the parent's host has gone: its fork fails anyway


def run_child(here: Here, task: ForkTask, a: Arrival, received: tuple | None = None) -> None:
    """Make the child from the parent's stream (or what of it was
    (received) already: header, connection, when it began) and supervise
    its subtree until its last process here ends.  The slot taken for it is
    (here)'s."""
    secret = cluster_secret(here.r)
    child = _Child(here, task, a, secret, here.image_path(task.image) if task.image else "")
    header, conn, began = received or a.receive(secret, task.pid)
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with conn:
            try:
                sup, cut = child.make(header, null, began)
            except Exception as err:
                why = str(err) or repr(err)
                if a.vm.poll() is not None:         # the VM died: QEMU's words
                    why = f"QEMU exited ({a.vm.returncode}): {a.vm.qemu_stderr() or why}"
                wire.send_reply(conn, secret, a.nonce, {"error": why})
                raise RuntimeError(why) from err
            wire.send_reply(conn, secret, a.nonce, {"ok": True, "kept": bool(a.job)})
        # The child runs: now the rest (Redis, a thread) off its critical path.
        child.adopt(sup)
        for i in cut:
            sup.say(task.pid, f"pipe {i} has ends on another host that no link carries; "
                    "it reads end of file and writes fail (EPIPE)")
        sup.run()
    finally:
        child.close()
        os.close(null)


class _Child:
    """The child being made from (a) for (task), and then its subtree's Job."""

    def __init__(self, here: Here, task: ForkTask, a: Arrival, secret: bytes,
                 path: str) -> None:
        self.here, self.task, self.a, self.secret, self.path = here, task, a, secret, path
        self.bridge = self.job = self.link = None
        self.sup: Supervisor | None = None

    def out(self, stream: str, data: bytes) -> None:
        state.append_output(self.here.r, self.task.job, stream, data, self.task.holder)

    def make_bridge(self):
        from workers.pipes.bridge import open_bridge
        say = lambda msg: self.sup.say(self.task.pid, msg)      # noqa: E731
        return (self.a.take_bridge(self.secret, self.task.job, say)
                or open_bridge(self.a.shm, self.secret, self.task.job, self.here.address, say))

    def make(self, header: dict, null: int, began: float) -> tuple[Supervisor, list[int]]:
        """The child, let go: its supervisor, and the pipes it holds that
        no link carries."""
        a, task = self.a, self.task
        self.program = _program(self.path, task.mem_mib) if self.path else None
        clone.answer_child(a.vm.mem, task.pid, task.ppid)
        pipes = _pipe_specs(header)
        cut = stdio_rings(a.shm, a.vm.mem, set(pipes))
        if pipes:
            self.bridge = self.make_bridge()
            ends = abi.CTL.get(a.vm.mem, abi.CTL_ADDR, "ends")
            for i, spec in pipes.items():
                self.bridge.link_parent(spec, ends[2 * i], ends[2 * i + 1])
        self.sup = Supervisor(Stdio(task.name, *(a.shm.ring(i) for i in range(3)), null, -1, -1,
                                    out=self.out))
        if 0 in pipes:
            self.sup.io.elsewhere()         # the job's stdin comes over its link
        clone.start(a.vm, int(header["tsc"]), began)
        return self.sup, cut

    def adopt(self, sup: Supervisor) -> None:
        """The child's subtree: a Job here, with its link to the others."""
        here, task, a = self.here, self.task, self.a
        self.link = Link(here.url, task.job, here.host, task.pid, task.image, task.fork_wait,
                         here.address, task.holder)
        if self.bridge is None:     # for the pipes the subtree makes and forks elsewhere
            self.bridge = self.make_bridge()
        events = state.proc_recorder(here.r, task.job, here.host, here.incarnation, task.holder)
        link = self.link
        files = RemoteFiles(link.files_address, link.secret, task.job, sup.say,
                            task.mem_mib << 20)     # the job's tree is its home's
        self.job = Job(self.path, self.program, task.mem_mib, a.shm, 64,
                       here.slots, sup.say, fork_wait=task.fork_wait, events=events,
                       link=self.link, tree=task.pid, bridge=self.bridge, files=files)
        sup.job = self.job
        self.job.keep_parked = self._keep_parked
        self.job.add(a.vm, task.ppid, pid=task.pid, parent_tree=task.parent_tree)
        a.vm, a.adopted = None, True

    def _keep_parked(self, vm) -> bool:
        """The first of the subtree's VMs to park as its process ends is
        kept aside (not closed with the Job): the job's next fork onto this
        host may have it (arrival.keep, once the subtree is over)."""
        if self.a.parked_vm is not None or vm._qmp is not None:   # (its QMP is its Job's)
            return False
        self.a.parked_vm = vm
        return True

    def close(self) -> None:
        if self.job is not None:
            self.job.close()            # closes the link and the bridge
            return
        if self.link is not None:
            self.link.close()
        if self.bridge is not None:
            self.bridge.close()


def stdio_rings(shm: SharedRegion, mem, bridged: set[int]) -> list[int]:
    """Rings in this host's region for what the child holds: the job's stdio
    (0, 1, 2) with this host's ends, and the pipes it inherited that no
    link carries (bridged: those the bridge makes, stdin among them when
    the child holds it).  Returns the cut pipes."""
    ends = abi.CTL.get(mem, abi.CTL_ADDR, "ends")
    used, cut = 0, []
    for i in range(abi.SHM_RINGS):
        r, w = ends[2 * i], ends[2 * i + 1]
        if i in bridged or i > 2 and not (r or w):
            continue
        host_r, host_w = (0, 1) if i == 0 else (1, 0) if i < 3 else (0, 0)
        abi.RING.put(shm.map, abi.shm_ring_off(i), size=abi.RING_SIZE,
                     readers=r + host_r, writers=w + host_w)
        used |= 1 << i
        if i > 2:
            cut.append(i)
    abi.SHM.put(shm.map, 0, used=used)
    return cut


_programs: dict[tuple[str, int], elf.Program] = {}


def _program(path: str, mem_mib: int) -> elf.Program:
    """The parsed image (for execve of itself), once per worker process:
    parsing is on the fork's critical path."""
    key = (path, mem_mib)
    if key not in _programs:
        with open(path, "rb") as f:
            _programs[key] = elf.parse(path, f.read(), abi.PIE_BASE,
                                       Layout(mem_mib << 20).mmap_top)
    return _programs[key]


def _pipe_specs(header: dict) -> dict[int, dict]:
    """The links of the child's pipes, from the fork's header (checked)."""
    out = {}
    for spec in header.get("pipes", []):
        try:
            idx, cid, addr = int(spec["ring"]), bytes.fromhex(spec["cid"]), spec["addr"]
            if (idx == 0 or 3 <= idx < abi.SHM_RINGS) and len(cid) == 16:
                out[idx] = {"ring": idx, "cid": spec["cid"], "addr": [str(addr[0]), int(addr[1])]}
        except (KeyError, TypeError, ValueError, IndexError):
            raise TransferError("a malformed pipe link in the fork header")
    return out
