"""VMs run under KVM where /dev/kvm works, and under TCG (software
emulation) otherwise; a smoke subset runs under TCG on every machine."""
from __future__ import annotations

import os
import subprocess

import pytest

from conftest import UNIFORK, native, qemu_pids, status, unifork

TCG = {"UNIFORK_ACCEL": "tcg"}


def accel_of_a_running_vm(program, env=None) -> str:
    before = qemu_pids()
    p = subprocess.Popen([str(UNIFORK), "run", str(program("waiter", "musl")), "stdin"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         env={**os.environ, **(env or {})})
    try:
        assert p.stdout.readline() == b"ready\n"
        (qemu,) = qemu_pids() - before
        cmdline = open(f"/proc/{qemu}/cmdline", "rb").read().split(b"\0")
    finally:
        p.stdin.close()
        p.wait(timeout=30)
    machine = next(a for a in cmdline if a.startswith(b"microvm"))
    return "kvm" if b"accel=kvm" in machine else "tcg"


@pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK),
                    reason="this machine has no usable /dev/kvm")
def test_vms_use_kvm_when_dev_kvm_works(program):
    assert accel_of_a_running_vm(program) == "kvm"


def test_unifork_accel_tcg_forces_software_emulation(program):
    assert accel_of_a_running_vm(program, TCG) == "tcg"


@pytest.mark.tcg
@pytest.mark.parametrize("name,libc", [("hello", "musl"), ("float", "glibc"),
                                       ("echo", "glibc"), ("cat", "musl")])
def test_examples_match_native_under_tcg(example, name, libc):
    prog = example(name, libc)
    want = native(prog, "x", input=b"some input\n")
    got = unifork("run", prog, "x", input=b"some input\n", env=TCG)
    assert got.stdout == want.stdout
    assert status(got) == status(want)


@pytest.mark.tcg
def test_a_crash_is_reported_under_tcg(program):
    got = unifork("run", program("crash", "glibc"), "segv", env=TCG)
    assert got.returncode == 139 and b"killed by SIGSEGV" in got.stderr


@pytest.mark.tcg
def test_syscalls_answer_like_linux_under_tcg(program):
    prog = program("sysinfo", "musl")
    got = unifork("run", prog, env=TCG)
    assert got.stdout == native(prog).stdout


@pytest.mark.tcg
@pytest.mark.parametrize("libc", ["musl", "glibc"])
def test_signal_handlers_match_native_under_tcg(program, libc):
    """There the system calls run at CPL 0 and return with sysretq, and
    without a TSC-deadline timer a sleep spins: it must still give way."""
    prog = program("signals", libc)
    got = unifork("run", prog, env=TCG, timeout=120)
    assert got.stdout == native(prog).stdout, got.stderr.decode()


@pytest.mark.tcg
@pytest.mark.parametrize("libc", ["musl", "glibc"])
def test_fault_handlers_match_native_under_tcg(program, libc):
    """There a fault leaves ring 3 for ring 0 for real, and the handler's
    frame is built back in ring 3, its return through an iret frame."""
    prog = program("faults", libc)
    got = unifork("run", prog, env=TCG, timeout=120)
    assert got.stdout == native(prog).stdout, got.stderr.decode()


@pytest.mark.tcg
def test_a_signal_reaches_a_computing_program_under_tcg(program):
    """The host's nudge is an NMI: under TCG too it takes the program out
    of a loop that makes no system call, into its handler."""
    prog = program("computing", "glibc")
    got = unifork("run", prog, env=TCG, timeout=120)
    assert got.stdout == native(prog).stdout, got.stderr.decode()


@pytest.mark.tcg
@pytest.mark.parametrize("name,libc", [("forkbasic", "glibc"), ("pipeline", "musl"),
                                       ("recycle", "musl"), ("family", "musl")])
def test_forks_into_parked_vms_match_native_under_tcg(program, name, libc):
    """There the system-call layer runs at CPL 0: the parent's context is
    saved there, and a parked VM resumes it there (park.c)."""
    prog = program(name, libc)
    got = unifork("run", "--mem", "64", prog, env=TCG, timeout=120)
    assert got.stdout == native(prog).stdout, got.stderr.decode()
    assert status(got) == status(native(prog))


@pytest.mark.tcg
def test_programs_of_the_tree_run_one_after_another_in_recycled_vms_under_tcg(tmp_path):
    """execve and forks into VMs that ran other programs: QEMU translates
    each new image afresh (vm_image_written in the guest)."""
    import shutil
    from test_files import make_tree
    if shutil.which("busybox") is None:
        pytest.skip("busybox-static is not installed (make setup installs it)")
    root = make_tree(tmp_path / "t", {"/hello": str(_example("hello", "musl"))})
    script = "for i in 1 2 3; do /hello; echo $i | cat | wc -c; done; ls /bin | wc -l"
    got = unifork("run", "--volume", f"{root}:/", "--env", "PATH=/bin", "/bin/sh", "-c",
                  script, env=TCG, timeout=300)
    want = b"hello from a unikernel\n2\n" * 3
    assert got.stdout.startswith(want), got.stderr.decode()
    assert status(got) == 0


def _example(name: str, libc: str):
    from conftest import BUILD
    return BUILD / "examples" / f"{name}.{libc}"
