"""Multi-process programs run as one VM per process, with output and status
identical to the native run: fork, wait, kill, orphans, pipes, dup2,
execve of the program's own image, signal handlers, select, limits, and
misbehaving guests."""
from __future__ import annotations

import time

import pytest

from conftest import LIBCS, native, qemu_pids, status, unifork
from workers.vm.qemu import kvm_usable

PROGRAMS = ["forkbasic", "family", "pipes", "writers", "pipeline", "clocks", "deaths",
            "execfast", "forkrandom", "adopt", "signals", "selects", "faults", "altstack", "computing"]


@pytest.mark.parametrize("libc", LIBCS)
@pytest.mark.parametrize("name", PROGRAMS)
def test_multi_process_program_matches_native(program, name, libc):
    prog = program(name, libc)
    want = native(prog)
    got = unifork("run", prog, timeout=120)
    assert got.stdout == want.stdout, got.stderr.decode()
    assert status(got) == status(want)


def test_pipe_records_of_pipe_buf_bytes_are_never_torn(program):
    got = unifork("run", program("writers", "glibc"))
    assert b"records: 200 200 200 200 \ntorn: 0, leftover bytes: 0\n" == got.stdout


@pytest.mark.skipif(not kvm_usable(), reason="without KVM a child's TSC is QEMU's, not the "
                    "host's: its clock is set as of when its vCPU ran (ms late under TCG)")
@pytest.mark.parametrize("libc", LIBCS)
def test_a_forked_childs_clock_is_its_parents(program, libc):
    """CLOCK_MONOTONIC is one clock for all the processes of a job: the
    child reads a time between the one its parent read after the fork and
    sent it and the one the parent reads when the child's comes back (the
    child's lagged by 1-5 ms: the host's turn)."""
    got = unifork("run", program("xpipes", libc), "clock")
    assert got.stdout == b"the child's clock is its parent's\n", got.stderr


@pytest.mark.parametrize("libc", LIBCS)
def test_lines_printed_by_two_processes_at_once_are_never_torn(program, libc):
    got = unifork("run", program("lines", libc)).stdout.decode().splitlines()
    want = {f"{who} line {i} of 3000" for who in ("parent", "child") for i in range(3000)}
    assert len(got) == 6000 and set(got) == want


@pytest.mark.parametrize("libc", LIBCS)
def test_the_example_job_matches_native(example, libc):
    prog = example("primes", libc)
    want = native(prog, 300000, 6)
    got = unifork("run", prog, 300000, 6)
    assert got.returncode == 0, got.stderr.decode()
    assert got.stdout == want.stdout
    assert b"6 workers, all well: yes" in got.stdout


@pytest.mark.parametrize("limit,children", [(1, 0), (3, 2), (5, 4)])
def test_fork_past_max_procs_fails_with_eagain(program, limit, children):
    got = unifork("run", "--max-procs", limit, program("limit", "musl"))
    assert got.stdout == f"fork failed after {children} children: EAGAIN\n".encode()
    assert b"limit of %d processes" % limit in got.stderr


def test_fork_past_the_hosts_slots_fails_with_eagain(program):
    got = unifork("run", program("limit", "glibc"), env={"UNIFORK_HOST_MAX_VMS": "3"})
    assert got.stdout == b"fork failed after 2 children: EAGAIN\n"
    assert b"this host's 3 slots (VMs) are all in use" in got.stderr


@pytest.mark.parametrize("args", [[], ["fork"]], ids=["scribble", "scribble-then-fork"])
def test_a_guest_scribbling_on_shared_state_does_not_hurt_the_host(program, args):
    t0 = time.monotonic()
    got = unifork("run", "--timeout", "20", program("hostile", "musl"), *args)
    assert time.monotonic() - t0 < 20
    assert got.returncode in (0, 3)
    assert len(got.stdout) < 100
    assert b"overwritten by a guest" in got.stderr


def test_the_job_ends_when_pid_1_exits_and_stops_the_rest(tmp_path):
    src = tmp_path / "leave.c"
    src.write_text('#include <unistd.h>\n#include <stdio.h>\n'
                   'int main(void) { if (fork() == 0) for (;;) pause(); '
                   'puts("parent leaves"); return 4; }\n')
    import subprocess
    subprocess.run(["musl-gcc", "-static", "-o", tmp_path / "leave", src], check=True)
    before = qemu_pids()
    got = unifork("run", tmp_path / "leave", timeout=60)
    assert got.returncode == 4 and got.stdout == b"parent leaves\n"
    assert qemu_pids() - before == set()


def test_a_fork_that_fails_half_way_leaves_nothing_and_returns_an_error(program, tmp_path):
    """QEMU cannot start the child's VM: fork fails with EAGAIN in the parent,
    the job goes on, and no process is left."""
    import shutil
    wrapper = tmp_path / "qemu"     # the first QEMU (pid 1's) starts, no other
    wrapper.write_text(f'#!/bin/sh\nif [ -e {tmp_path}/started ]; then echo "no VM for a child" >&2; '
                       f'exit 1; fi\ntouch {tmp_path}/started\n'
                       f'exec {shutil.which("qemu-system-x86_64")} "$@"\n')
    wrapper.chmod(0o755)
    before = qemu_pids()
    got = unifork("run", program("limit", "musl"), env={"UNIFORK_QEMU": str(wrapper)})
    assert got.returncode == 0
    assert got.stdout == b"fork failed after 0 children: EAGAIN\n"
    assert b"fork failed: a VM for the child died as it booted: no VM for a child" in got.stderr
    assert qemu_pids() - before == set()


def test_a_hostile_job_does_not_affect_another_job(program, example):
    import subprocess
    from conftest import UNIFORK
    hostile = subprocess.Popen([str(UNIFORK), "run", "--timeout", "20",
                                str(program("hostile", "glibc")), "fork"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    prog = example("primes", "musl")
    got = unifork("run", prog, 100000, 4)
    hostile.communicate(timeout=60)
    assert got.returncode == 0
    assert got.stdout == native(prog, 100000, 4).stdout


@pytest.mark.parametrize("libc", LIBCS)
def test_waits_on_more_ended_children_than_the_table_lists_reap_each_once(program, libc):
    """40 ended children: the control page lists 32 (unifork_abi.h,
    "Children"), the host answers for the rest; WNOWAIT looks without
    reaping, a wait for a pid takes that one, ECHILD after."""
    prog = program("zombies", libc)
    got = unifork("run", prog)
    assert got.stdout == native(prog).stdout, got.stderr.decode()


def test_a_child_reaped_by_its_parent_from_the_table_is_not_handed_to_pid_1(program):
    """Its parent took it from the control page and ended before the host
    looked: pid 1 adopts nothing (it once got the grandchild's status)."""
    prog = program("reaped", "musl")
    got = unifork("run", prog)
    assert got.stdout == b"20 of 20 right\n", got.stderr.decode()


def test_a_wait_the_childrens_table_answers_asks_the_host_nothing(program, monkeypatch, tmp_path):
    """bash's pattern: a child ends, the parent reaps it, then waits again
    (ECHILD): neither wait is a request to the host."""
    import os
    from workers.proc import waits
    from workers.proc.run import RunRequest, run
    asked = []
    wait = waits.wait

    def counted(job, p, pid, options):
        asked.append((pid, options))
        return wait(job, p, pid, options)
    monkeypatch.setattr(waits, "wait", counted)
    src = tmp_path / "reap.c"
    src.write_text('#include <stdio.h>\n#include <errno.h>\n#include <sys/wait.h>\n'
                   '#include <time.h>\n#include <unistd.h>\n'
                   'int main(void) { int st; for (int i = 0; i < 5; i++) {\n'
                   '  pid_t c = fork(); if (c == 0) _exit(i);\n'
                   '  struct timespec t = {0, 50000000}; nanosleep(&t, 0);\n'
                   '  if (waitpid(-1, &st, 0) != c || WEXITSTATUS(st) != i) return 1;\n'
                   '  if (waitpid(-1, &st, WNOHANG) != -1 || errno != ECHILD) return 2; }\n'
                   '  puts("ok"); return 0; }\n')
    exe = tmp_path / "reap"
    import subprocess
    subprocess.run(["musl-gcc", "-static", "-O2", "-o", exe, src], check=True)
    out = tmp_path / "out"
    with open(out, "wb") as o, open(os.devnull, "rb") as i:
        code = run(RunRequest(str(exe), [], [], stdin=i.fileno(), stdout=o.fileno(),
                              stderr=o.fileno()))
    assert (code, out.read_bytes()) == (0, b"ok\n")
    assert asked == []
