"""However a run ends (the program exits, a timeout, Ctrl-C, a dead QEMU, a
killed `unifork`), nothing is left behind and the status says what happened."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from conftest import UNIFORK, qemu_pids, unifork


def start(*args) -> subprocess.Popen:
    """Start `unifork run ARGS` and wait for the program's "ready" line."""
    p = subprocess.Popen([str(UNIFORK), "run", *map(str, args)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.readline() == b"ready\n"
    return p


def children_qemu(before: set[int]) -> set[int]:
    return qemu_pids() - before


def test_timeout_stops_the_vm_with_status_124(program):
    t0 = time.monotonic()
    got = unifork("run", "--timeout", "1", program("waiter", "musl"), "spin")
    assert got.returncode == 124
    assert b"timed out after 1 s" in got.stderr
    assert time.monotonic() - t0 < 10


def test_ctrl_c_stops_the_vm_with_status_130(program):
    p = start(program("waiter", "glibc"), "spin")
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=20)
    assert p.returncode == 130
    assert b"interrupted" in err


def test_sigterm_stops_the_vm_with_status_143(program):
    p = start(program("waiter", "musl"), "stdin")
    p.terminate()
    p.communicate(timeout=20)
    assert p.returncode == 143


def test_qemu_dies_with_a_killed_unifork(program):
    before = qemu_pids()
    p = start(program("waiter", "musl"), "spin")
    assert children_qemu(before), "QEMU should be running"
    p.kill()
    p.wait()
    deadline = time.monotonic() + 5
    while children_qemu(before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not children_qemu(before)


def test_a_dead_qemu_is_reported_as_killed_never_success(program):
    before = qemu_pids()
    p = start(program("waiter", "musl"), "spin")
    (qemu,) = children_qemu(before)
    os.kill(qemu, signal.SIGKILL)
    _, err = p.communicate(timeout=20)
    assert p.returncode == 137
    assert b"without an exit status" in err


def test_a_halted_guest_wakes_for_each_line_of_stdin(program):
    p = start(program("waiter", "glibc"), "stdin")
    for i in range(3):
        time.sleep(0.2)                   # long enough for the guest to halt
        p.stdin.write(b"line %d\n" % i)
        p.stdin.flush()
        assert p.stdout.readline() == b"got line %d\n" % i
    p.stdin.close()
    assert p.stdout.read() == b"eof\n"
    assert p.wait(timeout=20) == 0


def test_a_guest_waiting_for_input_halts_instead_of_spinning(program):
    before = qemu_pids()
    p = start(program("waiter", "musl"), "stdin")
    (qemu,) = children_qemu(before)
    ticks = os.sysconf("SC_CLK_TCK")

    def cpu() -> float:
        fields = open(f"/proc/{qemu}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks

    c0 = cpu()
    time.sleep(2)
    used = cpu() - c0
    p.stdin.close()
    p.wait(timeout=20)
    assert used < 0.5, f"QEMU used {used:.2f} s of CPU in 2 s while the guest waited"


def test_sleep_sleeps_for_the_time_asked(program):
    t0 = time.monotonic()
    got = unifork("run", program("waiter", "glibc"), "sleep", 300)
    assert got.stdout == b"ready\nslept\n"
    assert time.monotonic() - t0 >= 0.3


@pytest.mark.parametrize("libc", ["musl", "glibc"])
def test_a_closed_stdout_kills_the_writer_with_sigpipe(program, libc):
    p = subprocess.Popen([str(UNIFORK), "run", str(program("waiter", libc)), "flood"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.read(100)
    p.stdout.close()
    _, err = p.communicate(timeout=20)
    assert p.returncode == 128 + signal.SIGPIPE, err
    assert b"killed by SIGPIPE" in err


def test_an_ignored_sigpipe_gives_epipe(program):
    p = subprocess.Popen([str(UNIFORK), "run", str(program("waiter", "glibc")), "ignpipe"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.read(100)
    p.stdout.close()
    _, err = p.communicate(timeout=20)
    assert p.returncode == 3
    assert b"write: EPIPE" in err


TRIPLE = r"""
/* A PVH kernel that triple-faults: an empty IDT, then a breakpoint. */
	.section .note.pvh, "a"
	.p2align 2
	.long 4, 4, 18
	.asciz "Xen"
	.long pvh_start
	.section .text.boot, "ax"
	.code32
	.globl pvh_start
pvh_start:
	lidt idt0
	int3
idt0:
	.word 0
	.long 0
"""


def test_a_triple_fault_is_reported_as_killed_never_success(example, tmp_path):
    from conftest import ROOT
    src = tmp_path / "triple.S"
    src.write_text(TRIPLE)
    kernel = tmp_path / "triple.elf"
    subprocess.run(["gcc", "-c", "-o", tmp_path / "triple.o", src], check=True)
    subprocess.run(["gcc", "-nostdlib", "-static", "-no-pie", "-Wl,--build-id=none",
                    "-T", ROOT / "guest" / "kernel" / "kernel.ld", "-o", kernel,
                    tmp_path / "triple.o"], check=True)
    got = unifork("run", example("hello", "musl"), env={"UNIFORK_KERNEL": str(kernel)})
    assert got.returncode == 137
    assert got.stdout == b""
    assert b"without an exit status" in got.stderr


def test_ctrl_c_stops_every_vm_of_a_job(example):
    before = qemu_pids()
    p = subprocess.Popen([str(UNIFORK), "run", str(example("primes", "musl")), "50000000", "4"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while len(qemu_pids() - before) < 5:        # pid 1 and its four workers
        assert time.monotonic() < deadline and p.poll() is None
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 130
    assert b"interrupted" in err
    assert qemu_pids() - before == set()
