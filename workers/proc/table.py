"""A job on this host: the process table of one program's process tree,
one VM a process.

The Job holds the processes (Proc) and answers their requests (struct
uf_ctl in unifork_abi.h) through the modules beside it: forks.py, waits.py,
signals.py, execve.py; remote.py for processes on other hosts; sleepers.py
wakes the halted guests whose wait is over.  It reaps processes that end
(their VMs park, and go back to the job's idle VMs, workers/fork/pool.py)
and VMs that stop, and closes the pipe ends of a VM that died without
closing them.  It does no I/O of its own beyond the guests' memory: the
supervisor (supervisor.py) tells it what happened.

Everything read from a guest's memory is untrusted: a guest that writes
garbage gets an error reply or is killed, never the host's trouble.
"""
from __future__ import annotations

import errno
import os
import time

from workers import abi, config
from workers.proc import execve, forks, remote, signals, waits, watch
from workers.proc.signals import SIGKILL
from workers.vm import elf
from workers.vm.machine import VM
from workers.vm.rings import SharedRegion

# The fork engine and the pool are imported at the first fork, QMP at the
# first nudge: `unifork run` of a program that never forks must start in
# milliseconds.


class Proc:
    """One process: a VM while it runs, a wait status once it has ended.

    A child forked onto another host is a Proc here too, with no VM: (host)
    runs it in subtree (tree), which reports its end (broker/cluster/link.py)."""

    def __init__(self, pid: int, ppid: int, vm: VM | None, host: str | None = None,
                 tree: int | None = None) -> None:
        self.pid, self.ppid = pid, ppid
        self.vm: VM | None = vm
        self.host, self.tree = host, tree    # set for a process on another host
        self.parent_tree: int | None = None  # set when the parent is on another host
        self.wstatus: int | None = None      # set when it has ended: a zombie
        self.killed_by: int | None = None    # a signal the host delivered
        self.parked_seq = -1                  # a WAIT request waiting for a child
        self.watched_parked = -1              # ... as the bridge's thread knows it
        self.reaped = False                   # waited for by its parent
        # While its VM is sent to another host for a fork: the child's pid and
        # its pipes' links (bridge.py); the VM is closed only after that.
        self.sending: tuple[int, list[dict]] | None = None
        self.close_pending = False            # it ended while its VM was being sent
        # The entries the host wrote in its children's table: slot -> pid
        # (unifork_abi.h, "Children"; waits.publish_kids).
        self.kid_slots: dict[int, int] = {}

    @property
    def remote(self) -> bool:
        return self.host is not None

    @property
    def running(self) -> bool:
        return self.wstatus is None


def exit_status(code: int) -> int:
    return (code & 0xFF) << 8


class Slots:
    """This host's VM slots, counted here (unifork run; a worker counts them
    in Redis, see broker/cluster/host.py)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    def take(self) -> bool:
        if self.used >= self.limit:
            return False
        self.used += 1
        return True

    def give(self) -> None:
        self.used = max(0, self.used - 1)


class Job:
    """The processes of one program on this host.

    (say) prints a line about process (pid) on our stderr.
    """

    def __init__(self, req_program: str, prog: elf.Program, mem_mib: int, shm: SharedRegion,
                 max_procs: int, slots: "Slots", say, fork_wait: float = 5.0,
                 events=None, link=None, tree: int = 1, bridge=None, *, files) -> None:
        self.program, self.prog = req_program, prog
        self.exe = os.path.abspath(req_program)
        self.mem_mib, self.shm = mem_mib, shm
        self.max_procs, self.slots = max_procs, slots
        self.say = say
        self.events = events        # events(pid, ppid, state, wstatus, tree): changes
        self.procs: dict[int, Proc] = {}
        self.next_pid = 1
        self.fork_wait = fork_wait  # how long a fork waits for a VM to be ready
        self._qmp = None            # qmp.QMPThread, made at the first nudge
        self._pool = None           # pool.Pool, made at the first fork
        self.keep_parked = None     # (VM) -> bool: takes a parked VM the pool does not
        self.changed = True         # the set of VMs changed (the supervisor re-polls)
        self._said: set[str] = set()
        self.link = link            # cluster.Link when the job spans hosts, else None
        self.tree = tree            # the root pid of this subtree (1: the whole job here)
        self.ended = False          # told that pid 1 has ended (a subtree)
        self.superseded = False     # another run of the job took it over
        self.nudges: dict[int, float] = {}  # pid -> when to nudge it (nudge_due)
        self.alarm_nudged: dict[int, float] = {}  # pid -> when it was last nudged
        self.alarms_due: float | None = None  # when nudge_alarms must look again
        self.bridge = bridge        # bridge.Bridge: pipes with ends in other regions
        self.files = files          # the job's tree: workers/files/ calls.Files, or remote.RemoteFiles
        self.unrung = False         # a request may wait that rang no doorbell (watch.py)

    @property
    def qmp(self):
        """The thread that runs QMP (qemu.qmp is asyncio), made when first needed."""
        if self._qmp is None:
            from workers.vm.qmp import QMPThread
            self._qmp = QMPThread()
        return self._qmp

    @property
    def spans_hosts(self) -> bool:
        """Its pipes may reach other hosts: its VMs get the fast doorbell."""
        return self.bridge is not None

    @property
    def pool(self):
        """The job's idle VMs here, for forks (pool.Pool), made at the first fork."""
        if self._pool is None:
            from workers.fork.pool import Pool
            self._pool = Pool(self.mem_mib, self.shm, min(config.get().idle_vms, self.slots.limit),
                              fast_bell=self.spans_hosts)
        return self._pool

    def new_pid(self) -> int:
        if self.link is not None:
            return self.link.alloc_pid()
        pid, self.next_pid = self.next_pid, self.next_pid + 1
        return pid

    def add(self, vm: VM, ppid: int = 0, pid: int | None = None,
            parent_tree: int | None = None, record: bool = True) -> Proc:
        """A new process (its VM holds one of the host's slots); unless not
        (record), its record in the cluster's state too (else record())."""
        p = Proc(self.new_pid() if pid is None else pid, ppid, vm)
        self.next_pid = max(self.next_pid, p.pid + 1)
        p.parent_tree = parent_tree
        self.procs[p.pid] = p
        self.changed = True
        waits.publish_kids(self, self.procs.get(ppid))
        if record:
            self.record(p)
        return p

    def record(self, p: Proc) -> None:
        if self.events:
            self.events(p.pid, p.ppid, "running", None, self.tree)

    def add_remote(self, pid: int, ppid: int, host: str, tree: int,
                   wstatus: int | None = None) -> Proc:
        """A process that runs on (host), in subtree (tree)."""
        p = Proc(pid, ppid, None, host, tree)
        p.wstatus = wstatus
        self.procs[pid] = p
        if p.running and self.link is not None:
            self.link.watch[pid] = host
        waits.publish_kids(self, self.procs.get(ppid))
        return p

    def live(self) -> list[Proc]:
        """The processes running here (each a VM)."""
        return [p for p in self.procs.values() if p.running and not p.remote]

    def count(self) -> int:
        """The processes running, here and on other hosts."""
        return sum(p.running for p in self.procs.values())

    def say_once(self, pid: int, msg: str) -> None:
        if msg not in self._said:
            self._said.add(msg)
            self.say(pid, msg)

    # -- requests ------------------------------------------------------------
    def service(self, p: Proc, watching: bool = True) -> None:
        """Answer (p)'s request if it has a new one; after a FILE request,
        and if (watching), answer the next ones as they come (watch.py)."""
        vm = p.vm
        if vm is None or not p.running:
            return
        mem = vm.mem
        seq = abi.CTL.get(mem, abi.CTL_ADDR, "req_seq")
        if seq == abi.CTL.get(mem, abi.CTL_ADDR, "rep_seq") or seq == p.parked_seq:
            return
        req, args = abi.CTL.get(mem, abi.CTL_ADDR, "req"), abi.CTL.get(mem, abi.CTL_ADDR, "arg")
        if req == abi.Req.FORK:
            forks.fork(self, p, asked=time.monotonic())
        elif req == abi.Req.WAIT:
            waits.wait(self, p, args[0], args[1])
        elif req == abi.Req.KILL:
            signals.kill(self, p, args[0], args[1])
        elif req == abi.Req.FILE:
            self.serve_file(p)
            if watching:
                watch.watch(self, p)
        elif req == abi.Req.EXEC:
            execve.execve(self, p, args[0], args[1], args[2], args[3])
        elif req == abi.Req.EXIT:
            return              # it has ended and parked: the supervisor reaps it
        else:
            self.say_once(p.pid, f"unknown request {req} from the guest: ENOSYS")
            self.reply(p, -errno.ENOSYS)
        if self.bridge is not None and p.parked_seq != p.watched_parked:
            self.watch_vms()

    def serve_file(self, p: Proc) -> None:
        """Answer (p)'s FILE request (workers/files/)."""
        mem = p.vm.mem
        self.reply(p, *self.files.call(p.pid, p.vm, abi.CTL.get(mem, abi.CTL_ADDR, "arg")[0]))

    def reply(self, p: Proc, ret: int, val0: int = 0, val1: int = 0,
              wake: bool = True) -> None:
        """Answer (p)'s current request and, unless not (wake), wake it if
        it sleeps on that."""
        mem = p.vm.mem
        seq = abi.CTL.get(mem, abi.CTL_ADDR, "req_seq")
        abi.CTL.put(mem, abi.CTL_ADDR, ret=ret, val=(val0, val1))
        abi.CTL.put(mem, abi.CTL_ADDR, rep_seq=seq)
        p.parked_seq = -1
        if wake:
            self.wake_if(p, abi.Sleep.REPLY)

    def wake_if(self, p: Proc, what: int) -> None:
        from workers.vm.cpu import mfence
        mfence()
        if abi.CTL.get(p.vm.mem, abi.CTL_ADDR, "asleep") == what:
            p.vm.wake()

    def aio(self, coro):
        """Run a QMP conversation to its end, on the QMP thread."""
        return self.qmp.call(coro)

    # -- ends ------------------------------------------------------------------
    def reap(self, p: Proc) -> None:
        """(p)'s QEMU has exited: record how it ended, close what it held,
        hand its children to pid 1, and tell a waiting parent."""
        vm = p.vm
        waits.kids_waited(self, p)        # the children its waits took are not pid 1's to adopt
        ctl = abi.CTL.read(vm.mem, abi.CTL_ADDR)
        if p.killed_by is not None:
            p.wstatus = p.killed_by
        elif ctl["state"] == abi.State.EXITED:
            p.wstatus = exit_status(ctl["status"])
        elif ctl["state"] == abi.State.KILLED and 0 < ctl["status"] < 65:
            p.wstatus = ctl["status"]
        else:
            p.wstatus = SIGKILL
            if p.pid != 1:
                detail = vm.qemu_stderr()
                self.say(p.pid, "the VM stopped without an exit status (a triple fault "
                         "or a QEMU crash)" + (f": {detail}" if detail else ""))
        self.slots.give()
        self.files.end(p.pid)
        if self.events:
            self.events(p.pid, p.ppid, "killed" if p.wstatus & 0x7F else "exited", p.wstatus,
                        self.tree)
        forks.count_ends(self, vm, -1)
        used = self.shm.used()
        for i in range(abi.SHM_RINGS):
            if used >> i & 1:
                try:
                    ring = self.shm.ring(i)
                except ValueError:
                    continue
                ring.release_locks(p.pid)
        self.changed = True
        waits.publish_kids(self, self.procs.get(p.ppid))
        signals.sigchld(self, p)
        for c in list(self.procs.values()):
            if c.ppid == p.pid:
                remote.to_init(self, c)
        waits.publish_kids(self, self.procs.get(1))    # (it may have adopted some)
        if p.ppid == 0 or p.ppid not in self.procs:
            p.reaped = True
            if p.parent_tree is not None and self.link is not None:
                self.link.post(p.parent_tree, {"type": "exit", "pid": p.pid,
                                               "wstatus": p.wstatus})
        # Its parent may wait for it; pid 1 may wait for the zombies it just
        # adopted.  A retry answers only a wait that is still parked.
        for q in (self.procs.get(p.ppid), self.procs.get(1)):
            if q is not None:
                waits.retry_parked(self, q)


    # -- messages from the rest of the job (remote.py) --------------------------

    def tend_pool(self) -> float | None:
        """Let go of idle VMs past their time; when (monotonic) to look again."""
        return self._pool.tend() if self._pool is not None else None

    def close_vm(self, p: Proc) -> None:
        """Free (p)'s VM (its QEMU has exited or is killed), unless a fork
        onto another host still reads it (then when that is over)."""
        if p.sending is not None:
            p.close_pending = True
            return
        if p.vm is not None:
            if self.bridge is not None:     # its doorbell and memory: not the bridge's now
                self.watch_vms(exclude=p)
            vm, p.vm = p.vm, None
            if vm.poll() is None and vm.parked:
                if self.keep_parked is not None and self.keep_parked(vm):
                    return                  # kept for the job's next fork onto this host
                if self._pool is not None and self._pool.give(vm):
                    return                  # idle now, for the next fork
            if vm._qmp is not None:
                self.qmp.call(vm.aclose_qmp())
            vm.close()

    def watch_vms(self, exclude: Proc | None = None) -> None:
        """Tell the bridge's thread the VMs running here (their doorbells
        and control pages) and the requests held back (parked)."""
        procs = [q for q in self.live() if q is not exclude and q.vm is not None]
        for q in procs:
            q.watched_parked = q.parked_seq
        self.bridge.watch([(q.vm, q.parked_seq) for q in procs])

    def close(self) -> None:
        """Stop and free everything; processes never reaped (the job broke
        off) give their slots back."""
        if self.link is not None:
            self.link.close()           # waits for forks in flight
            for msg in self.link.messages():
                if msg.get("type") == "forked":
                    forks.forked(self, msg)
        for p in self.procs.values():
            if p.running and p.vm is not None:
                self.slots.give()
                if self.link is not None:       # its parent elsewhere must hear of it
                    self.events(p.pid, p.ppid, "killed", SIGKILL, self.tree)
                    if p.parent_tree is not None:
                        self.link.post(p.parent_tree, {"type": "exit", "pid": p.pid,
                                                       "wstatus": SIGKILL})
            p.sending = None
            self.close_vm(p)
        if self._pool is not None:
            self._pool.close()
        if self.bridge is not None:
            self.bridge.close()
        self.files.close()
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None


# A signal posted to a running process waits this long for it to be taken
# (at its next system call) before the process is nudged (Job.nudge_due).
NUDGE_AFTER = 0.02
