"""A program that crashes dies the way Linux would kill it: the status is
128 + the signal, and the faulting address is reported on stderr."""
from __future__ import annotations

import pytest

from conftest import LIBCS, native, status, unifork

CASES = [
    ("segv", "SIGSEGV", "page fault at rip 0x"),
    ("wild", "SIGSEGV", "page fault at rip 0x10 addr 0x10"),
    ("ill", "SIGILL", "invalid opcode at rip 0x"),
    ("fpe", "SIGFPE", "divide error at rip 0x"),
    ("abort", "SIGABRT", None),
    ("raise", "SIGTERM", None),
]


@pytest.mark.parametrize("libc", LIBCS)
@pytest.mark.parametrize("how,signame,report", CASES, ids=[c[0] for c in CASES])
def test_crash_is_reported_like_a_linux_kill(program, libc, how, signame, report):
    prog = program("crash", libc)
    want = native(prog, how)
    got = unifork("run", prog, how)
    err = got.stderr.decode()
    assert status(got) == status(want) > 128
    assert got.stdout == want.stdout          # output before the crash is kept
    assert f"killed by {signame}" in err
    if report:
        assert report in err


def test_null_dereference_reports_address_zero(program):
    got = unifork("run", program("crash", "musl"), "segv")
    assert got.returncode == 139
    assert "addr 0x0 " in got.stderr.decode()


@pytest.mark.parametrize("code", [0, 1, 42, 255])
def test_exit_status_is_passed_through(program, code):
    assert unifork("run", program("crash", "glibc"), "exit", code).returncode == code
