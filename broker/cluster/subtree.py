"""The receiving end of a fork across hosts, and the subtree it starts.

A worker that claimed a fork ticket (broker/placement.py) makes the child
here: a parked VM in a shared region of its own (each worker process keeps
one booted ahead of time), a listening socket whose address goes to the
parent's host, the parent's RAM read from that socket into the
parked VM (transfer.py, fork.py), and then the child runs as the root of a
subtree that this worker supervises until its last process here ends
(cluster.py says how subtrees talk).

The child keeps what it inherited: its stdout and stderr (and its
children's) go to the job's output from here; its stdin and its pipes
reach it over the pipe bridge (bridge.py), which links each ring it holds
to the same ring in this subtree's region.  A pipe no link carries (none
should remain) reads end of file and fails writes with EPIPE, and the
job's stderr says so once.
"""
from __future__ import annotations

import os
import random
import select
import socket
import time

from broker import state

from workers import abi
from workers.vm import elf
from workers.fork import clone as fork, wire as transfer
from broker.cluster.link import Link
from workers.proc.table import Job
from workers.vm.layout import Layout
from workers.vm.rings import SharedRegion
from workers.proc.run import RunRequest, Supervisor
from workers.vm.machine import VM, kernel_id

ACCEPT_TIMEOUT = 15.0


class Arrival:
    """A child VM to be made here for a fork ticket: a VM of (mem_mib) that
    boots with no program and parks, in a shared region of its own.  Each
    worker process keeps one ready (spare())."""

    def __init__(self, mem_mib: int) -> None:
        self.mem_mib = mem_mib
        self.shm = SharedRegion()
        self.vm: VM | None = VM(mem_mib, self.shm, fast_bell=True)   # as its parent's
        self.listener: socket.socket | None = None
        self.adopted = False        # a subtree's Job owns the VM (and its slot) now
        try:
            self.vm.load_vessel()
            self.vm.start()
        except BaseException:
            self.close()
            raise

    def usable(self, mem_mib: int) -> bool:
        return self.mem_mib == mem_mib and self.vm.poll() is None and not self.vm.check_stderr()

    def _parked(self, timeout: float) -> None:
        """Wait for the VM to have booted and parked."""
        deadline = time.monotonic() + timeout
        while not self.vm.parked:
            if self.vm.poll() is not None or time.monotonic() > deadline:
                raise transfer.TransferError(
                    f"this host's VM for the child did not boot: {self.vm.qemu_stderr()}")
            select.select([self.vm.bell, self.vm.pidfd], [], [], 0.05)
        self.vm.take_doorbells()

    def listen(self, address: str, nonce: bytes) -> None:
        """Listen for the parent's stream, sealed under keys from (nonce)."""
        for port in _ports():
            try:
                self.listener = socket.create_server((address, port), backlog=1)
                break
            except OSError:
                continue
        else:
            raise OSError(f"no free TCP port in UNIFORK_FORK_PORTS="
                          f"{os.environ.get('UNIFORK_FORK_PORTS')}")
        self.listener.settimeout(ACCEPT_TIMEOUT)
        self.nonce = nonce

    def where(self, host: str, address: str) -> dict:
        return {"host": host, "address": address, "port": self.listener.getsockname()[1]}

    def receive(self, secret: bytes, pid: int) -> tuple[dict, socket.socket, float]:
        """Take the parent's stream into the parked VM: the child is ready
        to be let go.  Returns the header, the connection, and when the stream
        began to arrive (monotonic): the header's clock reading was taken
        just before it was sent, so the child's clock runs on from then."""
        conn, _ = self.listener.accept()
        self.listener.close()
        try:
            conn.settimeout(30)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if not select.select([conn], [], [], 30)[0]:
                raise transfer.TransferError("the parent's host sent no fork stream")
            began = time.monotonic()
            self._parked(30)
            # Where the parked kernel does not run, the parent's RAM goes
            # straight in (fork.py); what was there is not the child's.
            fork.punch(self.vm.ram_fd, abi.USER_BASE, self.vm.layout.ram_size - abi.USER_BASE)
            with memoryview(self.vm.mem) as ram:
                got = transfer.receive_fork(conn, secret, self.nonce, ram, abi.USER_BASE)
            why = self._refusal(got.header, pid)
            if why:                     # the whole stream came: the parent waits for our word
                transfer.send_reply(conn, secret, self.nonce, {"error": why})
                raise transfer.TransferError(why)
            fork.fill_received(self.vm, got)
            return got.header, conn, began
        except BaseException:
            conn.close()
            raise

    def _refusal(self, header: dict, pid: int) -> str | None:
        """Why a whole fork stream cannot become this child, if it cannot."""
        if header.get("pid") != pid or header.get("ram_size") != self.vm.layout.ram_size:
            return "the fork stream is for another child"
        if header.get("kernel") != kernel_id():
            return "the parent's host and this one run different guest kernels (make setup)"
        if bool(header.get("fast_bell")) != (self.vm.fast is not None):
            return ("the parent's VM and this host's differ in the fast doorbell device "
                    "(KVM on one host and not the other, or UNIFORK_FAST_BELL set differently)")
        return None

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
        if self.vm is not None:
            self.vm.close()
        self.shm.close()


_spare: Arrival | None = None


def arrival(mem_mib: int, address: str, nonce: bytes) -> Arrival:
    """A child VM for a fork, listening for its stream (sealed under keys
    from (nonce)): this process's spare if it fits, else a new one."""
    global _spare
    a, _spare = _spare, None
    if a is not None and not a.usable(mem_mib):
        a.close()
        a = None
    a = a or Arrival(mem_mib)
    try:
        a.listen(address, nonce)
    except BaseException:
        a.close()
        raise
    return a


def give_back(a: Arrival) -> None:
    """(a) was not needed after all: the next fork's, if it can be."""
    global _spare
    a.listener.close()
    a.listener = None
    if _spare is None and a.usable(a.mem_mib):
        _spare = a
    else:
        a.close()


def spare(mem_mib: int = 128) -> None:
    """Have a VM of (mem_mib) ready for the next fork onto this host; it
    holds no slot (a slot is a VM that runs a process)."""
    global _spare
    if _spare is None:
        try:
            _spare = Arrival(mem_mib)
        except Exception:       # noqa: BLE001 - no spare: the next fork starts one
            _spare = None


def _ports() -> list[int]:
    """Ports for an incoming fork, in the order to try: any free port, or
    those of UNIFORK_FORK_PORTS=LO-HI (`unifork worker --fork-ports`), for
    a firewall, shuffled."""
    spec = os.environ.get("UNIFORK_FORK_PORTS", "")
    if not spec:
        return [0]
    lo, hi = (int(x) for x in spec.split("-"))
    ports = list(range(lo, hi + 1))
    random.shuffle(ports)
    return ports


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
            raise transfer.TransferError("a malformed pipe link in the fork header")
    return out


def run_child(r, url: str, a: Arrival, host: str, incarnation: str, job_id: str,
              image_path: str,
              name: str, pid: int, ppid: int, parent_tree: int, mem_mib: int,
              secret: bytes, fork_wait: float, image: str, address: str, slots,
              holder: tuple[str, str]) -> None:
    """Make the child from the parent's stream and supervise its subtree
    until its last process here ends.  The slot taken for it is (slots)'s;
    (holder), the run of the job its parent is of (cluster.Link)."""
    header, conn, began = a.receive(secret, pid)

    def out(stream: str, data: bytes) -> None:
        state.append_output(r, job_id, stream, data, holder)

    events = state.proc_recorder(r, job_id, host, incarnation, holder)

    def make_bridge():
        from workers.pipes.bridge import open_bridge
        return open_bridge(a.shm, secret, job_id, address, lambda msg: sup.say(pid, msg))

    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    req = RunRequest(image_path, [], [], mem_mib, stdin=null, name=name, slots=slots,
                     events=events)
    bridge = job = link = None
    try:
        with conn:
            try:
                prog = _program(image_path, mem_mib)
                fork.answer_child(a.vm.mem, pid, ppid)
                pipes = _pipe_specs(header)
                cut = stdio_rings(a.shm, a.vm.mem, set(pipes))
                if pipes:
                    bridge = make_bridge()
                    ends = abi.CTL.get(a.vm.mem, abi.CTL_ADDR, "ends")
                    for i, spec in pipes.items():
                        bridge.link_parent(spec, ends[2 * i], ends[2 * i + 1])
                sup = Supervisor(req, *(a.shm.ring(i) for i in range(3)), out=out)
                if 0 in pipes:
                    sup.stdin_elsewhere()       # the job's stdin comes over its link
                fork.start(a.vm, int(header["tsc"]), began)
            except Exception as err:
                why = str(err) or repr(err)
                if a.vm.poll() is not None:         # the VM died: QEMU's words
                    why = f"QEMU exited ({a.vm.returncode}): {a.vm.qemu_stderr() or why}"
                transfer.send_reply(conn, secret, a.nonce, {"error": why})
                raise RuntimeError(why) from err
            transfer.send_reply(conn, secret, a.nonce, {"ok": True})
        # The child runs: now the rest (Redis, a thread) off its critical path.
        link = Link(url, job_id, host, pid, image, fork_wait, address, holder)
        if bridge is None:      # for the pipes the subtree makes and forks elsewhere
            bridge = make_bridge()
        job = Job(image_path, prog, mem_mib, a.shm, 64, slots, sup.say, fork_wait=fork_wait,
                  events=events, link=link, tree=pid, bridge=bridge)
        sup.job = job
        job.add(a.vm, ppid, pid=pid, parent_tree=parent_tree)
        a.vm, a.adopted = None, True
        for i in cut:
            sup.say(pid, f"pipe {i} has ends on another host that no link carries; "
                    "it reads end of file and writes fail (EPIPE)")
        sup.run()
    finally:
        if job is not None:
            job.close()             # closes the link and the bridge
        else:
            if link is not None:
                link.close()
            if bridge is not None:
                bridge.close()
        os.close(null)
