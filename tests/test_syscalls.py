"""The system calls static musl and glibc programs need behave as on Linux;
the ones unifork lacks fail with ENOSYS and are logged once each."""
from __future__ import annotations

import pytest

from conftest import LIBCS, native, status, unifork


@pytest.mark.parametrize("libc", LIBCS)
def test_startup_syscalls_answer_like_linux(program, libc):
    prog = program("sysinfo", libc)
    want = native(prog, "a", "b")
    got = unifork("run", prog, "a", "b")
    assert got.stdout == want.stdout, got.stderr.decode()
    assert status(got) == status(want) == 0


@pytest.mark.parametrize("libc", LIBCS)
def test_unsupported_syscall_returns_enosys_and_is_logged_once(program, libc):
    got = unifork("run", program("enosys", libc))
    assert got.returncode == 0
    assert got.stdout.count(b"errno ENOSYS") == 4
    log = got.stderr.decode()
    assert log.count("unsupported system call 425 (io_uring_setup)") == 1
    assert log.count("unsupported system call 1000") == 1


@pytest.mark.parametrize("libc", LIBCS)
def test_static_pie_programs_run(program, libc):
    prog = program("sysinfo", libc, pie=True)
    want = native(prog)
    got = unifork("run", prog)
    assert got.stdout == want.stdout, got.stderr.decode()
    assert got.returncode == 0


@pytest.mark.parametrize("libc", LIBCS)
def test_memory_runs_out_as_enomem_not_a_crash(program, libc):
    got = unifork("run", "--mem", "32", program("alloc", libc), "64")
    assert got.returncode == 0, got.stderr.decode()
    assert b"allocation failed cleanly" in got.stdout


def test_glibc_startup_is_silent(example):
    """No ENOSYS noise from what glibc probes at start (rseq and the like)."""
    got = unifork("run", example("hello", "glibc"))
    assert got.stderr == b""


@pytest.mark.parametrize("accel", ["kvm", "tcg"])
def test_the_wall_clock_is_the_hosts(program, accel):
    """CLOCK_REALTIME in the guest is the host's (it was the host's plus the
    host's uptime where the guest's TSC runs on from the host's: PVM, TCG)."""
    import time
    env = {"UNIFORK_ACCEL": "tcg"} if accel == "tcg" else None
    before = time.time()
    got = unifork("run", program("walltime", "musl"), env=env)
    after = time.time()
    real, tod = got.stdout.split()
    assert before - 1 <= float(real) <= after + 1, (before, real, after)
    assert before - 2 <= int(tod) <= after + 1
