"""The receiving end of a fork across hosts, and the subtree it starts.

A worker that claimed a fork ticket (broker/placement.py) makes the child
here: a QEMU waiting with -incoming defer in a shared region of its own,
a listening socket whose address and nonce go to the parent's host, the
parent's RAM and device state read from that socket (transfer.py), and
then the child runs as the root of a subtree that this worker supervises
until its last process here ends (cluster.py says how subtrees talk).

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

from . import abi, elf, fork, transfer
from .cluster import Link
from .job import Job
from .layout import Layout
from .rings import SharedRegion
from .run import RunRequest, Supervisor
from .vm import VM

ACCEPT_TIMEOUT = 15.0


class Arrival:
    """A child VM being made here for a fork ticket: a QEMU of (mem_mib)
    waiting with -incoming defer in a shared region of its own, armed in
    the background.  Each worker process keeps one ready (spare())."""

    def __init__(self, mem_mib: int) -> None:
        self.mem_mib = mem_mib
        self.shm = SharedRegion()
        self.qmp: fork.QMPThread | None = fork.QMPThread()
        self.vm: VM | None = VM(mem_mib, self.shm, fast_bell=True)   # as its parent's
        self.listener: socket.socket | None = None
        self.adopted = False        # a subtree's Job owns the VM (and its slot) now
        self.armed = None
        try:
            self.vm.start(incoming=True)
        except BaseException:
            self.close()
            raise
        self.armed = self.qmp.submit(fork.arm(self.vm))

    def usable(self, mem_mib: int) -> bool:
        return (self.mem_mib == mem_mib and self.vm.poll() is None
                and not (self.armed.done() and self.armed.exception()))

    def listen(self, address: str) -> None:
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
        self.nonce = os.urandom(16)

    def where(self, host: str, address: str) -> dict:
        return {"host": host, "address": address, "port": self.listener.getsockname()[1],
                "nonce": self.nonce.hex()}

    def receive(self, secret: bytes, pid: int) -> tuple[dict, socket.socket, float]:
        """Take the parent's stream and load it: the child is ready to run
        (paused).  Returns the header, the connection, and when the stream
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
            # QEMU writes its ROMs (the kernel) into RAM as it starts: only
            # once it is armed may the parent's RAM go in.
            self.armed.result(30)
            fork.punch(self.vm.ram_fd, 0, self.vm.layout.ram_size)
            with memoryview(self.vm.mem) as ram:
                header, device_state = transfer.receive_fork(conn, secret, self.nonce, ram)
            why = self._refusal(header, pid)
            if why:                     # the whole stream came: the parent waits for our word
                transfer.send_reply(conn, secret, self.nonce, {"error": why})
                raise transfer.TransferError(why)
            fork.load_state(self.vm, device_state)
            return header, conn, began
        except BaseException:
            conn.close()
            raise

    def _refusal(self, header: dict, pid: int) -> str | None:
        """Why a whole fork stream cannot become this child, if it cannot."""
        if header.get("pid") != pid or header.get("ram_size") != self.vm.layout.ram_size:
            return "the fork stream is for another child"
        if bool(header.get("fast_bell")) != (self.vm.fast is not None):
            return ("the parent's VM and this host's differ in the fast doorbell device "
                    "(KVM on one host and not the other, or UNIFORK_FAST_BELL set differently)")
        return None

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
        if self.vm is not None:
            if self.qmp is not None:
                if self.armed is not None:
                    self.armed.cancel()
                self.qmp.call(self.vm.aclose_qmp())
            self.vm.close()
        if self.qmp is not None:
            self.qmp.close()
        self.shm.close()


_spare: Arrival | None = None


def arrival(mem_mib: int, address: str) -> Arrival:
    """A child VM for a fork: this process's spare if it fits, else a new one."""
    global _spare
    a, _spare = _spare, None
    if a is not None and not a.usable(mem_mib):
        a.close()
        a = None
    a = a or Arrival(mem_mib)
    try:
        a.listen(address)
    except BaseException:
        a.close()
        raise
    return a


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
        from .bridge import open_bridge
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
                try:
                    a.qmp.call(fork.start_child(a.vm, int(header["tsc"]), began,
                                                bool(header.get("host_tsc_clock"))))
                except Exception:
                    if not a.vm.ran_and_ended():
                        raise
            except Exception as err:
                why = str(err) or repr(err)
                if a.vm.poll() is not None:         # QEMU refused the state: its words
                    why = f"QEMU exited ({a.vm.returncode}): {a.vm.qemu_stderr() or why}"
                transfer.send_reply(conn, secret, a.nonce, {"error": why})
                raise RuntimeError(why) from err
            transfer.send_reply(conn, secret, a.nonce, {"ok": True})
        # The child runs: now the rest (Redis, a thread) off its critical path.
        link = Link(url, job_id, host, pid, image, fork_wait, address, holder)
        if bridge is None:      # for the pipes the subtree makes and forks elsewhere
            bridge = make_bridge()
        job = Job(image_path, prog, mem_mib, a.shm, 64, slots, sup.say, events=events,
                  link=link, tree=pid, bridge=bridge)
        job._qmp = a.qmp            # the arrival's QMP thread serves the subtree
        a.qmp = None
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
