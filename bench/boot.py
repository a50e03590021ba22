#!/usr/bin/env python3
"""Boot benchmark: `unifork run` of a hello program until it exits, against
a bare QEMU microvm launch until its empty kernel's first serial byte.

All in one run, alternating, on the same machine:
  bare          qemu-system-x86_64 -M microvm (default machine options),
                kernel = guest/build/empty.elf: launch -> first byte on COM1
  bare-tuned    the same with the machine options unifork uses
                (acpi, pit, pic, rtc off)
  vm            unifork's VM alone (library call): QEMU spawn -> the guest has
                printed hello through the rings and parked (its process over);
                shows what kernel and loader add
  unifork run   the command, as a user runs it: exec -> exit
Targets (issue 2): unifork run <= 1.3x bare, and < 100 ms.

    .venv/bin/python bench/boot.py [-n 30]
"""
from __future__ import annotations

import argparse
import os
import select
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from workers.vm import qemu as uq  # noqa: E402
from workers.proc.run import RunRequest, prepare  # noqa: E402
from workers.vm.rings import SharedRegion  # noqa: E402
from workers.vm.machine import VM  # noqa: E402

EMPTY = os.path.join(ROOT, "guest", "build", "empty.elf")
HELLO = os.path.join(ROOT, "guest", "build", "examples", "hello.musl")
UNIFORK = os.path.join(os.path.dirname(sys.executable), "unifork")


def bare(tuned: bool) -> float:
    kvm = uq.kvm_usable()
    machine = "microvm,accel=" + ("kvm" if kvm else "tcg")
    if tuned:
        machine += ",acpi=off,pit=off,pic=off,rtc=off,x-option-roms=off"
    argv = [uq.qemu_binary(), "-M", machine, "-cpu", "host,-arch-capabilities" if kvm else "max",
            "-m", "128M", "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none",
            "-serial", "stdio", "-kernel", EMPTY]
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    assert p.stdout.read(1) == b"!"
    t = time.perf_counter() - t0
    p.kill()
    p.wait()
    return t


def vm_alone() -> float:
    req = RunRequest(HELLO, [], [])
    prog = prepare(req)
    shm = SharedRegion()
    rings = [shm.new_ring() for _ in range(3)]
    vm = VM(128, shm)
    vm.load(prog, [b"hello"], [], HELLO.encode(), 1, 0, tuple(r[0] for r in rings))
    t0 = time.perf_counter()
    vm.start()
    while not vm.parked:
        select.select([vm.bell], [], [], 1.0)
    t = time.perf_counter() - t0
    out, _ = rings[1][1].read()
    assert out == b"hello from a unikernel\n", out
    for _, r in rings:
        r.release()
    vm.close()
    shm.close()
    return t


# As a user's machine runs it: with its bytecode cached (the warm-up run writes it).
USER_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def unifork_run() -> float:
    t0 = time.perf_counter()
    p = subprocess.run([UNIFORK, "run", HELLO], capture_output=True, env=USER_ENV)
    t = time.perf_counter() - t0
    assert p.returncode == 0 and p.stdout == b"hello from a unikernel\n", p
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=30, help="runs of each (default 30)")
    n = ap.parse_args().n
    cases = {"bare": lambda: bare(False), "bare-tuned": lambda: bare(True),
             "vm": vm_alone, "unifork run": unifork_run}
    times: dict[str, list[float]] = {k: [] for k in cases}
    for f in cases.values():        # warm caches (page cache, bytecode, tsc cache)
        f()
    for _ in range(n):
        for k, f in cases.items():
            times[k].append(f() * 1000)
    accel = "KVM" if uq.kvm_usable() else "TCG"
    print(f"boot benchmark, {n} runs each, {accel}, interleaved")
    print(f"{'':14} {'median':>8} {'p90':>8} {'min':>8}   (ms)")
    med = {}
    for k, ts in times.items():
        ts.sort()
        med[k] = statistics.median(ts)
        print(f"{k:14} {med[k]:8.1f} {ts[int(0.9 * (len(ts) - 1))]:8.1f} {ts[0]:8.1f}")
    print()
    print(f"unifork run / bare        = {med['unifork run'] / med['bare']:.2f}  (target <= 1.3)")
    print(f"unifork run / bare-tuned  = {med['unifork run'] / med['bare-tuned']:.2f}")
    print(f"vm alone / bare-tuned     = {med['vm'] / med['bare-tuned']:.2f}  "
          "(what the kernel and loader add, to the end of the process)")
    print(f"unifork run, absolute     = {med['unifork run']:.1f} ms  (target < 100)")


if __name__ == "__main__":
    main()
