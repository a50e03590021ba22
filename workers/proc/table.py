"""A job on this host: the process tree of one program, one VM a process.

The Job answers its guests' requests (fork, wait, kill, execve: struct
uf_ctl in unifork_abi.h), reaps processes that end (their VMs park, and
go back to the job's idle VMs, pool.py) and VMs that stop, reparents
orphans to pid 1, closes the pipe ends of a VM that died without closing
them, and wakes the guests whose wait is over.  It does no I/O of its own
beyond the guests' memory: the supervisor (run.py) tells it what happened.

Everything read from a guest's memory is untrusted: a guest that writes
garbage gets an error reply or is killed, never the host's trouble.
"""
from __future__ import annotations

import errno
import os
import struct
import time

from workers import abi
from workers.vm import elf, layout
from workers.errors import BadProgram
from workers.vm.rings import SharedRegion
from workers.vm.machine import VM

# The fork engine and the pool are imported at the first fork, QMP at the
# first nudge: `unifork run` of a program that never forks must start in
# milliseconds.

SIGKILL, SIGCHLD, SIGCONT, SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU, SIGURG, SIGWINCH = \
    9, 17, 18, 19, 20, 21, 22, 23, 28
DEFAULT_IGNORED = {SIGCHLD, SIGURG, SIGWINCH, SIGCONT}
STOPPING = {SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU}
WNOHANG, WNOWAIT = 1, 0x01000000
MAX_ARGS, MAX_ARG_BYTES = 4096, 1 << 20


class Proc:
    """One process: a VM while it runs, a wait status once it has ended.

    A child forked onto another host is a Proc here too, with no VM: (host)
    runs it in subtree (tree), which reports its end (cluster.py)."""

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
        # (unifork_abi.h, "Children"; Job.publish_kids).
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
    in Redis, see broker/cluster/tasks.py)."""

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
                 events=None, link=None, tree: int = 1, bridge=None) -> None:
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
        self.changed = True         # the set of VMs changed (the supervisor re-polls)
        self._said: set[str] = set()
        self.link = link            # cluster.Link when the job spans hosts, else None
        self.tree = tree            # the root pid of this subtree (1: the whole job here)
        self.ended = False          # told that pid 1 has ended (a subtree)
        self.superseded = False     # another run of the job took it over
        self.nudges: dict[int, float] = {}  # pid -> when to nudge it (nudge_due)
        self._alarm_nudged: dict[int, float] = {}  # pid -> when it was last nudged
        self.alarms_due: float | None = None  # when nudge_alarms must look again
        self.bridge = bridge        # bridge.Bridge: pipes with ends in other regions

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
            self._pool = Pool(self.mem_mib, self.shm, min(idle_vms_cap(), self.slots.limit),
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
        self.publish_kids(self.procs.get(ppid))
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
        self.publish_kids(self.procs.get(ppid))
        return p

    def live(self) -> list[Proc]:
        """The processes running here (each a VM)."""
        return [p for p in self.procs.values() if p.running and not p.remote]

    def count(self) -> int:
        """The processes running, here and on other hosts."""
        return sum(p.running for p in self.procs.values())

    def _say_once(self, pid: int, msg: str) -> None:
        if msg not in self._said:
            self._said.add(msg)
            self.say(pid, msg)

    # -- requests ------------------------------------------------------------
    def service(self, p: Proc) -> None:
        """Answer (p)'s request if it has a new one."""
        vm = p.vm
        if vm is None or not p.running:
            return
        mem = vm.mem
        seq = abi.CTL.get(mem, abi.CTL_ADDR, "req_seq")
        if seq == abi.CTL.get(mem, abi.CTL_ADDR, "rep_seq") or seq == p.parked_seq:
            return
        req, args = abi.CTL.get(mem, abi.CTL_ADDR, "req"), abi.CTL.get(mem, abi.CTL_ADDR, "arg")
        if req == abi.Req.FORK:
            self._fork(p, asked=time.monotonic())
        elif req == abi.Req.WAIT:
            self._wait(p, args[0], args[1])
        elif req == abi.Req.KILL:
            self._kill(p, args[0], args[1])
        elif req == abi.Req.EXEC:
            self._exec(p, args[0], args[1], args[2])
        elif req == abi.Req.EXIT:
            return              # it has ended and parked: the supervisor reaps it
        else:
            self._say_once(p.pid, f"unknown request {req} from the guest: ENOSYS")
            self.reply(p, -errno.ENOSYS)
        if self.bridge is not None and p.parked_seq != p.watched_parked:
            self.watch_vms()

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
            self._wake_if(p, abi.Sleep.REPLY)

    def _wake_if(self, p: Proc, what: int) -> None:
        from workers.vm.cpu import mfence
        mfence()
        if abi.CTL.get(p.vm.mem, abi.CTL_ADDR, "asleep") == what:
            p.vm.wake()

    # fork --------------------------------------------------------------------

    def _fork(self, parent: Proc, asked: float) -> None:
        """Clone (parent), whose request arrived at (asked) (monotonic)."""
        if self.count() >= self.max_procs:
            self._say_once(parent.pid, f"fork: the job's limit of {self.max_procs} "
                           "processes is reached: EAGAIN")
            return self.reply(parent, -errno.EAGAIN)
        if not self.slots.take():
            if self.link is not None:
                return self._fork_remote(parent, asked)
            self._say_once(parent.pid, f"fork: this host's {self.slots.limit} slots "
                           "(VMs) are all in use: EAGAIN")
            return self.reply(parent, -errno.EAGAIN)
        from workers.fork import clone as fork
        try:
            child_vm = self.pool.take(self.fork_wait)
        except Exception as err:        # noqa: BLE001 - QEMU cannot start: EAGAIN
            self.slots.give()
            self.say(parent.pid, f"fork failed: {err}")
            return self.reply(parent, -errno.EAGAIN)
        if child_vm is None:
            self.slots.give()
            self._say_once(parent.pid, f"fork: no VM was ready within {self.fork_wait:g} s: "
                           "EAGAIN")
            return self.reply(parent, -errno.EAGAIN)
        pid = self.new_pid()
        try:
            fork.make_child(parent.vm, child_vm, pid, parent.pid)
        except Exception as err:        # noqa: BLE001 - any failure: EAGAIN, nothing left
            self.slots.give()
            child_vm.close()
            self.say(parent.pid, f"fork failed: {err}")
            return self.reply(parent, -errno.EAGAIN)
        self._count_ends(child_vm, +1)
        child = self.add(child_vm, parent.pid, pid, record=False)
        parent_tsc = abi.CTL.get(parent.vm.mem, abi.CTL_ADDR, "arg")[1]
        fork.start(child_vm, parent_tsc, asked, fork.clock_offset(parent.vm))
        self.reply(parent, pid)
        self.record(child)          # (in Redis, for a cluster's job: off their path)
        self.pool.fill()

    def _fork_remote(self, parent: Proc, asked: float) -> None:
        """No slot here: the fork goes to whichever host has one (cluster.py).
        The parent's request stays unanswered until the "forked" message."""
        mem = parent.vm.mem
        parent.parked_seq = abi.CTL.get(mem, abi.CTL_ADDR, "req_seq")
        pid, pipes = self.new_pid(), []
        parent.sending = (pid, pipes)
        if self.bridge is not None:     # the child's pipes (and stdin) reach it over a link
            ends = abi.CTL.get(mem, abi.CTL_ADDR, "ends")
            used = self.shm.used()
            for i in (0, *range(3, abi.SHM_RINGS)):     # (each host pumps its own output)
                r, w = ends[2 * i], ends[2 * i + 1]
                if (r or w) and used >> i & 1:
                    pipes.append(self.bridge.link_child(i, r, w))
        self.link.fork(parent.vm, pid, parent.pid, asked,
                       abi.CTL.get(mem, abi.CTL_ADDR, "arg")[1],
                       abi.BOOT.get(mem, abi.BOOT_ADDR, "tsc_khz"), self.program, self.mem_mib,
                       pipes)

    def _forked(self, msg: dict) -> None:
        """A fork onto another host has finished, or failed."""
        pid = msg.get("pid")
        parent = next((p for p in self.procs.values()
                       if p.sending is not None and p.sending[0] == pid), None)
        if parent is None:
            return
        pipes, parent.sending = parent.sending[1], None
        if "error" in msg and self.bridge is not None:
            for spec in pipes:
                self.bridge.unlink(spec)
        if "error" in msg:
            if parent.running:
                self._say_once(parent.pid, f"fork onto another host failed: {msg['error']}: EAGAIN")
                self.reply(parent, -errno.EAGAIN)
        else:
            child = self.add_remote(pid, parent.pid, msg["host"], msg["tree"])
            if parent.running:
                self.reply(parent, child.pid)
            else:               # the parent died meanwhile: pid 1 adopts the child
                self._to_init(child)
        if parent.close_pending:
            self.close_vm(parent)

    def _count_ends(self, vm: VM, sign: int) -> None:
        """Add (or, sign -1, take away) the ring ends (vm)'s process holds."""
        ends = abi.CTL.get(vm.mem, abi.CTL_ADDR, "ends")
        used = self.shm.used()
        for i in range(abi.SHM_RINGS):
            r, w = ends[2 * i], ends[2 * i + 1]
            if (r or w) and used >> i & 1:
                try:
                    self.shm.ring(i).add_ends(sign * r, sign * w)
                except ValueError:
                    pass            # a ring the guests corrupted: leave it

    def _aio(self, coro):
        """Run a QMP conversation to its end, on the QMP thread."""
        return self.qmp.call(coro)

    # wait ----------------------------------------------------------------------
    def _wait(self, p: Proc, pid: int, options: int) -> None:
        self._kids_waited(p)
        kids = [c for c in self.procs.values() if c.ppid == p.pid and not c.reaped
                and (pid == -1 or c.pid == pid)]
        if not kids:
            return self.reply(p, -errno.ECHILD)
        done = next((c for c in kids if not c.running), None)
        if done is not None:
            if not options & WNOWAIT:
                done.reaped = True
                self._unlist_kid(p, done)
            return self.reply(p, done.pid, done.wstatus, os.getuid())
        if options & WNOHANG:
            return self.reply(p, 0)
        p.parked_seq = abi.CTL.get(p.vm.mem, abi.CTL_ADDR, "req_seq")

    def _retry_parked_wait(self, parent: Proc) -> None:
        if (parent.running and parent.parked_seq >= 0 and parent.vm is not None
                and parent.sending is None):
            args = abi.CTL.get(parent.vm.mem, abi.CTL_ADDR, "arg")
            parent.parked_seq = -1
            self._wait(parent, args[0], args[1])

    # the children's table (unifork_abi.h, "Children") -------------------------
    def publish_kids(self, parent: Proc | None) -> None:
        """Write in (parent)'s control page what its waits can answer
        without asking: its children that have ended and are not waited for
        (entries, each whole before its state), then how many it has still
        running.  After any change to its children, before it is told."""
        if parent is None or not parent.running or parent.remote or parent.vm is None:
            return
        mem = parent.vm.mem
        self._kids_waited(parent)
        listed = set(parent.kid_slots.values())
        free = [i for i in range(abi.KIDS) if i not in parent.kid_slots]
        alive = unlisted = 0
        for c in self.procs.values():
            if c.ppid != parent.pid or c.reaped:
                continue
            if c.running:
                alive += 1
            elif c.pid not in listed:
                if not free:
                    unlisted += 1
                    continue
                slot = free.pop(0)
                at = abi.kid_addr(slot)
                abi.KID.put(mem, at, pid=c.pid, wstatus=c.wstatus)
                abi.KID.put(mem, at, state=abi.Kid.ENDED)
                parent.kid_slots[slot] = c.pid
        abi.CTL.put(mem, abi.CTL_ADDR, kids_unlisted=unlisted)
        abi.CTL.put(mem, abi.CTL_ADDR, kids_alive=alive)

    def _kids_waited(self, parent: Proc) -> None:
        """The entries of (parent)'s table that its waits took: those
        children are reaped, and the entries free again.  Before anything
        that judges whether they are."""
        if parent.vm is None:
            return
        mem = parent.vm.mem
        for slot, pid in list(parent.kid_slots.items()):
            at = abi.kid_addr(slot)
            state = abi.KID.get(mem, at, "state")
            if state == abi.Kid.ENDED and abi.KID.get(mem, at, "pid") == pid:
                continue
            if state == abi.Kid.WAITED and abi.KID.get(mem, at, "pid") == pid \
                    and pid in self.procs:
                self.procs[pid].reaped = True
            # (else the guest wrote over it: its loss; the child stays unwaited)
            abi.KID.put(mem, at, state=abi.Kid.EMPTY)
            del parent.kid_slots[slot]

    def _unlist_kid(self, parent: Proc, child: Proc) -> None:
        """(child) was reported to (parent) by a WAIT request: out of its
        table (the guest, waiting for the reply, does not look at it)."""
        for slot, pid in list(parent.kid_slots.items()):
            if pid == child.pid:
                abi.KID.put(parent.vm.mem, abi.kid_addr(slot), state=abi.Kid.EMPTY)
                del parent.kid_slots[slot]

    # kill ----------------------------------------------------------------------
    def _kill(self, p: Proc, pid: int, sig: int) -> None:
        if not 0 <= sig <= 64:
            return self.reply(p, -errno.EINVAL)
        if pid > 0:
            target = self.procs.get(pid)
            if target is None and self.link is not None:     # elsewhere in the job?
                rec = self.link.lookup(pid)
                if rec is None or rec.get("tree") is None:
                    return self.reply(p, -errno.ESRCH)
                if sig and rec.get("state") == "running":
                    self.link.post(rec["tree"], {"type": "kill", "pid": pid, "sig": sig})
                return self.reply(p, 0)
            parent = self.procs.get(target.ppid) if target is not None else None
            if parent is not None and parent.running and parent.vm is not None:
                self._kids_waited(parent)   # (a wait there may have reaped it)
            if target is None or target.reaped:
                return self.reply(p, -errno.ESRCH)
            targets = [target]
        else:       # 0 or < -1: the job is one process group; -1: all but init
            targets = [t for t in self.procs.values() if t.running and t.pid != p.pid
                       and (pid != -1 or t.pid != 1) and not t.remote]
            if self.link is not None and sig:
                self.link.post_all({"type": "killall", "sig": sig, "sender": p.pid,
                                    "init": pid != -1})
        for t in targets:
            if sig and t.running:
                if t.remote:
                    self.link.post(t.tree, {"type": "kill", "pid": t.pid, "sig": sig})
                else:
                    self.signal(t, sig)
        self.reply(p, 0)

    def signal(self, t: Proc, sig: int) -> None:
        """Deliver (sig) to (t) from outside it, as its dispositions say."""
        if sig != SIGKILL:
            if sig in STOPPING:
                return self._say_once(t.pid, f"signal {sig}: stopping a process is not "
                                      "supported; ignored")
            blocked, caught, ignored = self._disposition(t, sig)
            if blocked or caught:       # the guest takes it: pending, or its handler
                bit = 1 << (sig - 1)
                if not abi.CTL.get(t.vm.mem, abi.CTL_ADDR, "sig_posted") & bit:
                    from workers.vm.cpu import address, atomic_add
                    atomic_add(address(t.vm.mem) + abi.CTL_ADDR
                               + abi.CTL.offsets["sig_posted"], bit)
                if blocked:
                    # It may have unblocked it as we posted, and looked for
                    # posted signals just before: then it is ours to act on.
                    blocked, caught, ignored = self._disposition(t, sig)
                    if blocked:
                        return
                if caught:
                    t.vm.wake()         # out of a halt, to give way to it,
                    # ... or, computing, out of its loop (nudge_due):
                    self.nudges.setdefault(t.pid, time.monotonic() + NUDGE_AFTER)
                    return
            if ignored:
                return
        t.killed_by = sig
        t.vm.kill()

    @staticmethod
    def _disposition(t: Proc, sig: int) -> tuple[bool, bool, bool]:
        """Whether (t) blocks (sig), catches it, or would ignore it now, as
        its control page says (a guest that never called sigaction has not
        published its default-ignored signals: DEFAULT_IGNORED)."""
        ctl = abi.CTL.read(t.vm.mem, abi.CTL_ADDR)
        bit = 1 << (sig - 1)
        caught = bool(ctl["sig_caught"] & bit)
        return (bool(ctl["sig_blocked"] & bit), caught,
                bool(ctl["sig_ignored"] & bit) or (sig in DEFAULT_IGNORED and not caught))

    # exec ----------------------------------------------------------------------
    def _read_str(self, vm: VM, addr: int, limit: int = 4096) -> bytes:
        if not abi.USER_BASE <= addr < vm.layout.ram_size:
            raise ValueError
        end = vm.mem.find(b"\0", addr, min(addr + limit, vm.layout.ram_size))
        if end < 0:
            raise ValueError
        return vm.mem[addr:end]

    def _read_strv(self, vm: VM, addr: int) -> list[bytes]:
        out, total = [], 0
        if addr == 0:
            return out
        for i in range(MAX_ARGS):
            at = addr + 8 * i
            if not abi.USER_BASE <= at <= vm.layout.ram_size - 8:
                raise ValueError
            ptr = struct.unpack_from("<Q", vm.mem, at)[0]
            if ptr == 0:
                return out
            s = self._read_str(vm, ptr, MAX_ARG_BYTES)
            total += len(s) + 1
            if total > MAX_ARG_BYTES:
                raise OverflowError
            out.append(s)
        raise OverflowError

    def _exec(self, p: Proc, path_p: int, argv_p: int, envp_p: int) -> None:
        vm = p.vm
        try:
            path = self._read_str(vm, path_p)
            argv, envp = self._read_strv(vm, argv_p), self._read_strv(vm, envp_p)
        except OverflowError:
            return self.reply(p, -errno.E2BIG)
        except ValueError:
            return self.reply(p, -errno.EFAULT)
        allowed = {os.fsencode(self.program), os.fsencode(self.exe), b"/proc/self/exe"}
        if path not in allowed:
            self._say_once(p.pid, f"execve({path.decode(errors='replace')}): only the "
                           "program's own image can be run; ENOENT")
            return self.reply(p, -errno.ENOENT)
        from workers.fork.clone import punch
        lay = vm.layout
        punch(vm.ram_fd, abi.USER_BASE, lay.ram_size - abi.USER_BASE)
        layout.load_program(vm.mem, self.prog)
        try:
            sp = layout.initial_stack(vm.mem, lay, self.prog, argv, envp, os.fsencode(self.exe),
                                      os.getuid(), os.getgid())
        except BadProgram:      # arguments and environment too big for the stack
            return self.reply(p, -errno.E2BIG)
        abi.BOOT.put(vm.mem, abi.BOOT_ADDR, entry=self.prog.entry, sp=sp,
                     brk=(self.prog.end + abi.PAGE_SIZE - 1) & -abi.PAGE_SIZE,
                     mmap_top=lay.mmap_top, stack_low=lay.stack_low)
        self.reply(p, 0)

    # ends ----------------------------------------------------------------------
    def reap(self, p: Proc) -> None:
        """(p)'s QEMU has exited: record how it ended, close what it held,
        hand its children to pid 1, and tell a waiting parent."""
        vm = p.vm
        self._kids_waited(p)        # the children its waits took are not pid 1's to adopt
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
        if self.events:
            self.events(p.pid, p.ppid, "killed" if p.wstatus & 0x7F else "exited", p.wstatus,
                        self.tree)
        self._count_ends(vm, -1)
        used = self.shm.used()
        for i in range(abi.SHM_RINGS):
            if used >> i & 1:
                try:
                    ring = self.shm.ring(i)
                except ValueError:
                    continue
                ring.release_locks(p.pid)
        self.changed = True
        self.publish_kids(self.procs.get(p.ppid))
        self._sigchld(p)
        for c in list(self.procs.values()):
            if c.ppid == p.pid:
                self._to_init(c)
        self.publish_kids(self.procs.get(1))    # (it may have adopted some)
        if p.ppid == 0 or p.ppid not in self.procs:
            p.reaped = True
            if p.parent_tree is not None and self.link is not None:
                self.link.post(p.parent_tree, {"type": "exit", "pid": p.pid,
                                               "wstatus": p.wstatus})
        # Its parent may wait for it; pid 1 may wait for the zombies it just
        # adopted.  A retry answers only a wait that is still parked.
        for q in (self.procs.get(p.ppid), self.procs.get(1)):
            if q is not None:
                self._retry_parked_wait(q)

    def _to_init(self, c: Proc) -> None:
        """(c)'s parent has ended: pid 1 adopts it, wherever each of them is."""
        c.ppid = 1
        if c.running and c.vm is not None:
            abi.BOOT.put(c.vm.mem, abi.BOOT_ADDR, ppid=1)
        if c.remote and c.running:       # its end must now be told to pid 1's subtree
            self.link.post(c.tree, {"type": "reparent", "pid": c.pid})
        if 1 in self.procs or self.link is None:
            return
        # pid 1 is on another host: it takes (c) over; we forget it
        self.link.post(1, {"type": "adopt", "pid": c.pid, "host": c.host or self.link.host,
                           "tree": c.tree or self.tree,
                           "wstatus": None if c.running else c.wstatus})
        if c.remote or not c.running:
            self.procs.pop(c.pid, None)
            self.link.watch.pop(c.pid, None)
        else:
            c.parent_tree = 1

    # -- messages from the rest of the job (cluster.py) -------------------------
    def on_message(self, msg: dict) -> None:
        """Act on one message from another subtree; malformed ones are ignored."""
        try:
            kind = msg["type"]
            if kind == "forked":
                return self._forked(msg)
            if kind == "superseded":
                self.superseded = True
                return
            if kind == "end":
                if msg.get("why") and not self.ended:
                    self.say(self.tree, str(msg["why"]))
                self.ended = True
                return
            if kind == "killall":
                for t in self.live():
                    if t.pid != msg["sender"] and (msg["init"] or t.pid != 1):
                        self.signal(t, int(msg["sig"]))
                return
            p = self.procs.get(int(msg["pid"]))
            if kind == "adopt":
                if p is None:
                    w = msg.get("wstatus")
                    self.add_remote(int(msg["pid"]), 1, str(msg["host"]), int(msg["tree"]),
                                    None if w is None else int(w))
                    self._retry_parked_wait(self.procs[1])
                return
            if p is None:
                return
            if kind == "kill" and p.running and not p.remote:
                self.signal(p, int(msg["sig"]))
            elif kind == "reparent" and not p.remote:
                p.ppid, p.parent_tree = 1, 1
                if p.running:
                    abi.BOOT.put(p.vm.mem, abi.BOOT_ADDR, ppid=1)
                self.publish_kids(self.procs.get(1))
            elif kind in ("exit", "lost") and p.remote and p.running:
                if kind == "lost":
                    self.say(p.pid, f"{msg.get('why', 'its host was lost')}: "
                             "reported as killed")
                self.remote_ended(p, 9 if kind == "lost" else int(msg["wstatus"]))
        except (KeyError, ValueError, TypeError):
            pass

    def _sigchld(self, child: Proc) -> None:
        """(child) has ended: SIGCHLD to its parent, if it is here."""
        parent = self.procs.get(child.ppid)
        if parent is not None and parent.running and not parent.remote and parent.vm:
            self.signal(parent, SIGCHLD)

    def remote_ended(self, p: Proc, wstatus: int) -> None:
        """Remote process (p) has ended with (wstatus)."""
        p.wstatus = wstatus
        self.publish_kids(self.procs.get(p.ppid))
        self._sigchld(p)
        if self.link is not None:
            self.link.watch.pop(p.pid, None)
        if p.ppid not in self.procs:
            p.reaped = True
        for q in (self.procs.get(p.ppid), self.procs.get(1)):
            if q is not None:
                self._retry_parked_wait(q)

    def nudge_due(self, now: float) -> float | None:
        """Nudge each process that was posted a signal NUDGE_AFTER ago and
        has not taken it yet: it computes without system calls, where it
        would.  An NMI (QMP inject-nmi) takes it into its handler at once.
        Returns when the next nudge is due, if any."""
        for pid, due in list(self.nudges.items()):
            if due > now:
                continue
            del self.nudges[pid]
            p = self.procs.get(pid)
            if p is None or not p.running or p.remote or p.vm is None:
                continue
            mem = p.vm.mem
            if (abi.CTL.get(mem, abi.CTL_ADDR, "sig_posted")
                    & ~abi.CTL.get(mem, abi.CTL_ADDR, "sig_blocked")):
                self._nudge(p)
        return min(self.nudges.values(), default=None)

    def nudge_alarms(self, now: float) -> None:
        """Nudge each process whose SIGALRM was due NUDGE_AFTER ago (wall
        clock, its control page's alarm_real_ns) and which has not taken
        it: it computes without system calls.  Again every 5 NUDGE_AFTER
        while it has not (it may block SIGALRM; its clock, from the TSC, may
        run a little behind ours).  Sets alarms_due (monotonic): when to
        look next without news from a guest (one arming an alarm rings)."""
        nxt = None
        for p in self.live():
            at = abi.CTL.get(p.vm.mem, abi.CTL_ADDR, "alarm_real_ns")
            if not at:
                continue
            due = at / 1e9 + NUDGE_AFTER
            if due <= now:
                if now - self._alarm_nudged.get(p.pid, 0.0) >= 5 * NUDGE_AFTER:
                    self._alarm_nudged[p.pid] = now
                    self._nudge(p)
                # a periodic timer re-arms as it is taken: nothing tells us
                due = now + 5 * NUDGE_AFTER
            nxt = due if nxt is None else min(nxt, due)
        self.alarms_due = None if nxt is None else time.monotonic() + (nxt - now)

    def _nudge(self, p: Proc) -> None:
        """An NMI (QMP inject-nmi) into (p), unless it is halted (a halt
        looks at signals as it ends): its handler for the NMI takes the
        posted signals from the program's own code (trap.c)."""
        if abi.CTL.get(p.vm.mem, abi.CTL_ADDR, "asleep") != abi.Sleep.NONE:
            return
        from workers.vm.qmp import inject_nmi
        try:
            self._aio(inject_nmi(p.vm))
        except Exception:       # noqa: BLE001 - the VM is going: its end says so
            pass

    def wake_sleepers(self) -> None:
        """Wake every halted guest whose wait is over."""
        from workers.vm.cpu import mfence
        mfence()
        used = self.shm.used()
        for p in self.procs.values():
            if not p.running or p.vm is None:
                continue
            ctl = p.vm.mem
            what = abi.CTL.get(ctl, abi.CTL_ADDR, "asleep")
            if what in (abi.Sleep.NONE, abi.Sleep.TIMER):
                continue
            if what == abi.Sleep.REPLY:
                ready = (abi.CTL.get(ctl, abi.CTL_ADDR, "rep_seq")
                         == abi.CTL.get(ctl, abi.CTL_ADDR, "req_seq"))
            else:
                idx = abi.CTL.get(ctl, abi.CTL_ADDR, "sleep_ring")
                try:
                    if not (0 <= idx < abi.SHM_RINGS and used >> idx & 1):
                        raise ValueError
                    ring = self.shm.ring(idx)
                except ValueError:
                    ready = True        # nonsense: wake it, it re-checks
                else:
                    ready = ring.may_read() if what == abi.Sleep.READ else ring.may_write()
            if ready:
                p.vm.wake()

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
            if vm.poll() is None and vm.parked and self._pool is not None and self._pool.give(vm):
                return                      # idle now, for the next fork
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
                    self._forked(msg)
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
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None


# A signal posted to a running process waits this long for it to be taken
# (at its next system call) before the process is nudged (Job.nudge_due).
NUDGE_AFTER = 0.02


def idle_vms_cap() -> int:
    """The most idle VMs a job keeps on a host (UNIFORK_IDLE_VMS, default 4)."""
    try:
        return max(1, int(os.environ.get("UNIFORK_IDLE_VMS", "4")))
    except ValueError:
        return 4
