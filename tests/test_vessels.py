"""A VM outlives its process (unifork_abi.h, "Vessels"): a fork fills a
parked VM of the job with a copy of the parent, no QEMU starts for it.
Nothing of a VM's last occupant reaches the next; VMs and children killed
at any moment are reported and replaced; nothing leaks."""
from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import BUILD, UNIFORK, forkloop_steps, native, qemu_pids, unifork


def counting_qemu(tmp_path: Path) -> tuple[dict, Path]:
    """An environment whose QEMU notes each start in a file."""
    log = tmp_path / "starts"
    wrapper = tmp_path / "qemu"
    qemu = subprocess.run(["sh", "-c", "command -v qemu-system-x86_64"], capture_output=True,
                          text=True, check=True).stdout.strip()
    wrapper.write_text(f'#!/bin/sh\necho start >> {log}\nexec {qemu} "$@"\n')
    wrapper.chmod(0o755)
    return {"UNIFORK_QEMU": str(wrapper)}, log


def qemus_of(pid: int) -> list[int]:
    """The QEMU processes (pid) started, oldest first (pid 1's VM first)."""
    found = []
    for q in qemu_pids():
        try:
            fields = Path(f"/proc/{q}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append((int(fields[19]), q))      # (start time, pid)
    return [q for _, q in sorted(found)]


def test_memory_a_child_gets_in_a_recycled_vm_reads_as_zero(program, tmp_path):
    env, starts = counting_qemu(tmp_path)
    prog = program("recycle", "musl")
    got = unifork("run", "--mem", "64", prog, env=env)
    assert got.stdout == native(prog).stdout, got.stderr.decode()
    assert b"SEES OLD DATA" not in got.stdout and got.stdout.count(b"zero") == 8
    # eight children, and far fewer VMs: they were recycled
    assert len(starts.read_text().split()) <= 4


def _fds(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return out


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_a_fork_loop_of_2000_forks_leaks_nothing(program):
    samples = []

    def sample(pid: int, _line: bytes) -> None:
        time.sleep(0.2)             # a fork's VM has parked and is idle by now
        fds = _fds(pid)
        qemus = qemus_of(pid)
        samples.append({
            "fds": len(fds), "memfds": sum("memfd:" in f for f in fds),
            "qemus": len(qemus), "rss": _rss_kib(pid),
            "qemu_rss": sum(_rss_kib(q) for q in qemus)})
    forkloop_steps(program, 2000, 250, sample)
    first = samples[1]          # after 500 forks: every pool there will be
    for s in samples[2:]:
        assert s["fds"] <= first["fds"] and s["memfds"] <= first["memfds"], samples
        assert s["qemus"] <= first["qemus"], samples
        assert s["rss"] < first["rss"] + 4096, samples          # KiB
        assert s["qemu_rss"] < first["qemu_rss"] + 8192, samples


def test_a_child_killed_as_it_is_made_is_reported_killed(program):
    got = unifork("run", program("killkids", "glibc"), "40")
    assert got.stdout == b"40 of 40 killed; then a child exited 5\n", got.stderr.decode()
    assert got.returncode == 0


def test_vms_killed_from_outside_during_forks_are_reported_and_replaced(program):
    """Children and parked VMs killed at random while the job forks: a
    child is reported killed, or its fork fails with EAGAIN; the job ends
    well, and leaves nothing."""
    p = subprocess.Popen([str(UNIFORK), "run", str(program("storm", "musl")), "300"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killed = []
    stop = threading.Event()

    def killer() -> None:
        time.sleep(0.3)
        while not stop.wait(random.uniform(0.005, 0.03)):
            others = qemus_of(p.pid)[1:]            # all but pid 1's
            if others:
                victim = random.choice(others)
                try:
                    os.kill(victim, signal.SIGKILL)
                    killed.append(victim)
                except ProcessLookupError:
                    pass
            if len(killed) >= 25:
                return
    t = threading.Thread(target=killer)
    t.start()
    try:
        out, err = p.communicate(timeout=120)
    finally:
        stop.set()
        t.join()
    assert p.returncode == 0, err.decode()
    words = out.split()
    exited, dead, eagain, other = (int(w) for w in words[1::2])
    assert other == 0 and exited + dead + eagain == 300, out
    assert len(killed) >= 10 and exited > 0, (killed, out)
    assert b"Traceback" not in err, err.decode()


def test_a_parked_vm_killed_from_outside_is_dropped_and_replaced(program):
    p = subprocess.Popen([str(UNIFORK), "run", str(program("parked", "musl"))],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"ready\n"
        time.sleep(0.3)
        idle = qemus_of(p.pid)[1:]
        assert idle, "no parked VM to kill"
        for q in idle:              # dead, all its threads (a dying one is not yet)
            fd = os.pidfd_open(q)
            os.kill(q, signal.SIGKILL)
            assert select.select([fd], [], [], 10)[0]
            os.close(fd)
        out, err = p.communicate(b"g", timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err.decode()
    assert out == b"".join(b"child %d ran\nchild %d exited %d\n" % (i, i, i) for i in range(5))


def test_garbage_in_the_park_page_neither_starts_the_vm_nor_harms_the_next_child(program):
    prog = program("parkgarbage", "musl")
    got = unifork("run", prog)
    assert got.returncode == 0, got.stderr.decode()
    assert got.stdout == b"".join(b"child %d ran\nchild %d: exited %d\n" % (i, i, 10 + i)
                                  for i in range(6))


def _symbol(name: str) -> int:
    out = subprocess.run(["nm", str(BUILD / "kernel.elf")], capture_output=True, text=True,
                         check=True).stdout
    return next(int(a, 16) for a, _, n in (line.split() for line in out.splitlines()) if n == name)


def test_a_child_whose_saved_context_is_garbage_is_killed_and_the_job_goes_on(
        program, monkeypatch, tmp_path):
    """The host corrupts what the child's kernel restores (as a guest
    scribbling on its own kernel could): only that child dies, reported
    killed by SIGKILL; the next child, in the same VM, runs."""
    from workers.fork import clone as fork
    from workers.proc.run import RunRequest, run
    ctx = _symbol("forkctx")
    make_child = fork.make_child
    calls = []

    def corrupt_first(parent, child, pid, ppid):
        copied = make_child(parent, child, pid, ppid)
        if not calls:
            child.mem[ctx:ctx + 16] = os.urandom(16)        # rip and rsp
        calls.append(child)
        return copied
    monkeypatch.setattr(fork, "make_child", corrupt_first)
    out, err = tmp_path / "out", tmp_path / "err"
    with open(out, "wb") as o, open(err, "wb") as e, open(os.devnull, "rb") as i:
        code = run(RunRequest(str(program("twokids", "musl")), [], [], stdin=i.fileno(),
                              stdout=o.fileno(), stderr=e.fileno()))
    assert code == 0, err.read_text()
    assert out.read_bytes() == (b"child 0: killed by signal 9\n"
                                b"child 1 ran\nchild 1: exited 21\n")
    assert "the parent's saved context is not one" in err.read_text()
    assert calls[0] is calls[1], "the killed child's VM was not the next one's"


def test_a_vessel_boots_a_program_once_and_never_after_it_has_run_one(example):
    """`unifork run`'s way: a VM booted with no program parks; given one, it
    runs it as at boot.  A VM whose process has ended refuses to boot
    another (its kernel's data is no longer as it booted)."""
    from workers.errors import VMError
    from workers.proc.run import RunRequest, prepare
    from workers.vm.machine import vessel
    from workers.vm.rings import SharedRegion
    hello = str(example("hello", "musl"))
    shm = SharedRegion()
    rings = [shm.new_ring() for _ in range(3)]
    vm = vessel(128, shm)
    try:
        assert vm.wait_parked(60)
        vm.load(prepare(RunRequest(hello, [], [])), [b"hello"], [], hello.encode(), 1, 0,
                tuple(r[0] for r in rings))
        vm.boot()
        deadline = time.monotonic() + 60
        while not vm.parked:
            assert time.monotonic() < deadline and vm.poll() is None, vm.qemu_stderr()
            select.select([vm.bell], [], [], 1.0)
            vm.take_doorbells()
        assert rings[1][1].read()[0] == b"hello from a unikernel\n"
        assert vm.ctl["status"] == 0
        with pytest.raises(VMError, match="only a vessel that has run no process"):
            vm.boot()
    finally:
        vm.close()
        for _, r in rings:
            r.release()
        shm.close()
