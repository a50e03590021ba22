"""`unifork run`: one program, one VM, on this machine, no broker.

run() starts pid 1's QEMU first, as a vessel (its guest boots and parks:
park.c), and meanwhile imports the rest, makes the job's file tree
(workers/files/), finds the program (in the tree if it is there, else on
the host), makes the job's shared region with its stdio rings and the
Job; then it gives the parked VM the program (VM.boot) and hands the job
to the supervisor (supervisor.py), which runs it until pid 1 ends and
says how it did.  QEMU's start-up hides the rest (bench/boot.py).
"""
from __future__ import annotations

import errno
import os
import sys

from workers import abi, config
from workers.errors import BadProgram, ExecError, UniforkError, UsageError, VMError
from workers.vm import elf
from workers.vm.layout import Layout
from workers.vm.machine import VM, vessel
from workers.vm.rings import SharedRegion

BOOT_WAIT = 60.0        # seconds for pid 1's vessel to boot (TCG is slow)


class RunRequest:
    """What to run, with what, and where its stdio goes."""

    def __init__(self, program: str, args: list[str], env: list[str], mem_mib: int = 128,
                 timeout: float | None = None, stdin: int = 0, stdout: int = 1,
                 stderr: int = 2, max_procs: int = 64, name: str | None = None,
                 slots=None, events=None, link=None, fork_wait: float | None = None,
                 volumes: list[str] | None = None, workdir: str = "/") -> None:
        self.program, self.args, self.env = program, args, env
        self.mem_mib, self.timeout = mem_mib, timeout
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.max_procs = max_procs
        self.name = name or program     # argv[0], and how messages name it
        self.slots = slots              # the host's VM slots (job.Slots by default)
        self.events = events            # process changes, for the cluster's state
        self.link = link                # cluster.Link: forks may go to other hosts
        self.fork_wait = fork_wait      # a fork's wait for a VM (then EAGAIN); None: config
        self.volumes = volumes or []    # HOST_DIR:GUEST_DIR[:ro], the job's tree
        self.workdir = workdir          # pid 1's working directory in it


def prepare(req: RunRequest) -> elf.Program:
    """Read and validate the program on the host; every problem is a BadProgram."""
    try:
        with open(req.program, "rb") as f:
            data = f.read()
    except OSError as err:
        raise BadProgram(f"{req.program}: {err.strerror}") from err
    return elf.parse(req.program, data, abi.PIE_BASE, Layout(req.mem_mib << 20).mmap_top)


def check(req: RunRequest) -> None:
    """The options that do not depend on the program."""
    if req.mem_mib % 2 or not 16 <= req.mem_mib <= abi.MAX_RAM >> 20:
        raise BadProgram(f"--mem {req.mem_mib}: must be an even number of MiB "
                         f"from 16 to {abi.MAX_RAM >> 20}")
    if req.max_procs < 1:
        raise BadProgram(f"--max-procs {req.max_procs}: must be at least 1")
    if not req.workdir.startswith("/"):
        raise UsageError(f"--workdir {req.workdir}: must be an absolute path in the tree")


def open_tree(req: RunRequest):
    """The job's files (calls.Files), and its program (programs.Found):
    the tree's when the tree has it (as `docker run` finds it), else the
    host's."""
    from workers.files import linux, programs
    from workers.files.calls import Files
    from workers.files.tree import Tree, parse_volume
    cfg = config.get()
    files = Files(Tree([parse_volume(v) for v in req.volumes]), None, cfg.files_max_open,
                  cfg.files_max_write)
    try:
        workdir = os.fsencode(req.workdir)
        files.start(1, workdir, None, "")
        argv = [os.fsencode(req.name), *map(os.fsencode, req.args)]
        walk = lambda q, first: files.walk_path(1, linux.AT_FDCWD, q, True)   # noqa: E731
        limit = Layout(req.mem_mib << 20).mmap_top
        try:
            found = programs.find(files.tree, walk, os.fsencode(req.program), argv, limit)
        except ExecError as err:
            if err.code != errno.ENOENT or not os.path.exists(req.program):
                raise BadProgram(err.why) from err
            found = programs.Found(prepare(req), os.fsencode(os.path.abspath(req.program)),
                                   os.path.abspath(req.program), argv, in_tree=False)
        try:
            files.walk_path(1, linux.AT_FDCWD, workdir, True).release()
        except OSError as err:
            raise UsageError(f"--workdir {req.workdir}: {err.strerror} in the job's tree") \
                from err
        files.start(1, workdir, found.exe if found.in_tree else None, found.host)
        return files, found
    except BaseException:
        files.close()
        raise


def _load_pid1(vm: VM, req: RunRequest, found, stdio: tuple[int, int, int]) -> None:
    """Lay out pid 1 in (vm): (found)'s program, its argv and environment,
    its stdio rings, and which of them are terminals (and their size)."""
    tty = sum(1 << i for i, fd in enumerate((req.stdin, req.stdout, req.stderr))
              if os.isatty(fd))
    try:
        cols, rows = os.get_terminal_size(req.stdout)
    except OSError:
        cols, rows = 0, 0
    vm.load(found.prog, found.argv, [os.fsencode(e) for e in req.env], found.exe,
            pid=1, ppid=0, stdio=stdio, tty=tty, tty_size=(rows, cols),
            hostname=os.uname().nodename.encode())


def _first_vm(req: RunRequest, shm: SharedRegion) -> VM:
    """pid 1's VM, on its way: a vessel that boots and parks while the
    rest is made (under libvirt, a domain that waits, paused)."""
    if config.get().driver == "libvirt":     # its domains are named after the job
        from workers.vm.libvirt_domain import for_job
        for_job(req.link.job_id if req.link is not None else str(os.getpid()))
        return VM(req.mem_mib, shm, fast_bell=req.link is not None)
    return vessel(req.mem_mib, shm, fast_bell=req.link is not None)


def _cluster_side(req: RunRequest, shm: SharedRegion, files, say):
    """A cluster job's pipe bridge (to its processes on other hosts) and
    file server (for them), or None each."""
    if req.link is None:
        return None, None
    from workers.pipes.bridge import open_bridge
    bridge = open_bridge(shm, req.link.secret, req.link.job_id, req.link.address,
                         lambda msg: say(1, msg))
    server = None
    if req.link.address:
        from workers.files.server import FileServer
        server = FileServer(files, req.link.secret, req.link.job_id, req.link.address)
        req.link.set_files(server.address)
    return bridge, server


def run(req: RunRequest) -> int:
    """Run (req) to completion; returns the exit status for our caller.

    :raise BadProgram: before the program runs, when it cannot.
    :raise UsageError: a bad volume or working directory.
    :raise VMError: when QEMU cannot be started, or its guest does not boot.
    """
    check(req)
    shm = SharedRegion()
    vm = files = slots = job = server = None
    try:
        vm = _first_vm(req, shm)
        # Imported while QEMU starts (supervisor.py, the file tree).
        from workers.proc.stdio import Stdio
        from workers.proc.supervisor import Supervisor
        from workers.proc.table import Job, Slots
        files, found = open_tree(req)
        slots = req.slots or Slots(config.get().host_max_vms)
        if not slots.take():
            slots = None                # (none taken: none to give back)
            raise VMError("this host has no free slot for the job's first VM")
        rings = [shm.new_ring() for _ in range(3)]
        sup = Supervisor(Stdio(req.name, *(r[1] for r in rings), req.stdin, req.stdout,
                               req.stderr), req.timeout)
        files.tell = sup.say            # the job's stderr, from now on
        booted = vm.wait_parked(BOOT_WAIT)
        if booted:                      # (else the supervisor finds its QEMU ended)
            _load_pid1(vm, req, found, (rings[0][0], rings[1][0], rings[2][0]))
        bridge, server = _cluster_side(req, shm, files, sup.say)
        job = Job(req.program, found.prog, req.mem_mib, shm, req.max_procs, slots, sup.say,
                  fork_wait=config.get().fork_wait if req.fork_wait is None else req.fork_wait,
                  events=req.events, link=req.link, bridge=bridge, files=files)
        sup.job = job
        job.add(vm, pid=1)
        if booted:
            vm.boot()
        return sup.run()
    finally:
        if server is not None:
            server.close()
        if job is not None:
            job.close()             # closes the VMs, gives back their slots
        else:
            if vm is not None:
                vm.close()
            if slots is not None:
                slots.give()
            if files is not None:
                files.close()
        shm.close()


def main_run(req: RunRequest) -> int:
    try:
        return run(req)
    except (BadProgram, UsageError) as err:
        print(f"unifork: {err}", file=sys.stderr)
        return 2
    except UniforkError as err:
        print(f"unifork: {err}", file=sys.stderr)
        return 1
