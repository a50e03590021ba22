#!/usr/bin/env python3
"""Driver benchmark: what running VMs through libvirt costs against
starting QEMU directly, both drivers in the same run.

  boot      `unifork run` of hello, wall time (the first process of a job
            waits for its VM's boot); under libvirt also libvirtd's part,
            createXML of a paused domain, measured alone.
  fork      bench/forkbench.c (a parent that touched 1 MiB), paced (150 ms
            apart) and back-to-back: fork() until the child runs, p50 and
            p90 (forks fill the job's parked VMs under both drivers); and a
            job's first fork, which waits for a VM to be made and boot.
  memory    per idle VM of a job (the 4 its pool keeps): PSS of its QEMU
            without the guest-RAM mapping, plus the pages its RAM holds;
            and libvirtd's and virtlogd's own, once per host.
It starts its own virtlogd and libvirtd (tests/libvirtd.py) and stops them.

    .venv/bin/python bench/drivers.py [-n 30]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.join(ROOT, "tests"), ROOT]
UNIFORK = os.path.join(os.path.dirname(sys.executable), "unifork")

import libvirtd  # noqa: E402
from fork import HOLD, build, latencies, pct, vm_cost  # noqa: E402

DRIVERS = ("qemu", "libvirt")


def boot_ms(hello: str, driver: str, runs: int) -> float:
    """Median wall time of `unifork run --driver DRIVER hello`."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([UNIFORK, "run", "--driver", driver, hello], check=True,
                       capture_output=True, timeout=120)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def first_fork_ms(fork: str, driver: str, runs: int) -> float:
    """Median ms of a job's first fork until its child runs."""
    firsts = []
    for _ in range(runs):
        out = subprocess.run([UNIFORK, "run", "--driver", driver, fork, "1", "1", "0"],
                             capture_output=True, check=True, timeout=120).stdout
        firsts.append(int(out.split()[0]) / 1000)
    return statistics.median(firsts)


def create_ms(runs: int) -> tuple[float, float]:
    """Median ms of libvirt's createXML (paused) and of the guest's boot
    from resume until it parks, for a vessel (this process's VMs)."""
    from workers import config
    from workers.vm.machine import VM
    from workers.vm.rings import SharedRegion
    config.override(driver="libvirt")
    shm = SharedRegion()
    made, booted = [], []
    try:
        for _ in range(runs):
            t0 = time.perf_counter()
            vm = VM(128, shm)
            t1 = time.perf_counter()
            vm.load_vessel()
            vm.start()
            while not vm.parked:
                time.sleep(0.0002)
            made.append((t1 - t0) * 1000)
            booted.append((time.perf_counter() - t1) * 1000)
            vm.close()
    finally:
        shm.close()
    return statistics.median(made), statistics.median(booted)


def qemus_of(job: int, driver: str) -> list[int]:
    """The QEMUs of `unifork run` (job)'s VMs."""
    found = []
    for d in os.listdir("/proc"):
        try:
            if not d.isdigit() or not open(f"/proc/{d}/comm").read().startswith("qemu-system"):
                continue
            if driver == "libvirt":
                mine = f"guest=unifork-{job}-".encode() in open(f"/proc/{d}/cmdline", "rb").read()
            else:
                mine = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1]) == job
        except OSError:
            continue
        if mine:
            found.append(int(d))
    return found


def idle_vm_cost(hold: str, driver: str) -> tuple[float, float, int]:
    """Median (QEMU, RAM) MiB of the idle VMs 4 ended children leave."""
    p = subprocess.Popen([UNIFORK, "run", "--driver", driver, hold, "1", "4"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"live\n"
        p.stdin.write(b"x")
        p.stdin.flush()
        assert p.stdout.readline() == b"idle\n"
        time.sleep(1.0)
        costs = [vm_cost(q) for q in qemus_of(p.pid, driver)]
        costs = sorted(costs, key=lambda c: c[1])[:-1]      # not pid 1's
        p.stdin.close()
        p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    return (statistics.median(c[0] for c in costs), statistics.median(c[1] for c in costs),
            len(costs))


def daemon_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Pss:"):
                total += int(line.split()[1])
    return total / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=30, help="forks per case (default 30)")
    ap.add_argument("--boots", type=int, default=7, help="runs of hello per driver (default 7)")
    args = ap.parse_args()
    why = libvirtd.available()
    if why:
        sys.exit(f"bench/drivers.py: {why}")
    daemons = libvirtd.Daemons().start()
    os.environ.update(daemons.env)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run(args, tmp, daemons)
    finally:
        daemons.stop()


def run(args, tmp: str, daemons: libvirtd.Daemons) -> None:
    hello = os.path.join(ROOT, "guest", "build", "examples", "hello.musl")
    fork = build(tmp, "forkbench")
    src = os.path.join(tmp, "hold.c")
    open(src, "w").write(HOLD)
    hold = build(tmp, "hold", src)
    boot_ms(hello, "libvirt", 1)        # libvirtd probes QEMU once, as it first starts one
    rows: dict[str, dict[str, float]] = {d: {} for d in DRIVERS}
    for d in DRIVERS:
        rows[d]["boot"] = boot_ms(hello, d, args.boots)
        for pause, how in ((150, "paced"), (0, "back-to-back")):
            child, _ = latencies([UNIFORK, "run", "--driver", d, fork, "1", str(args.n + 2),
                                  str(pause)])
            rows[d][f"{how} p50"], rows[d][f"{how} p90"] = pct(child, .5), pct(child, .9)
        rows[d]["first fork"] = first_fork_ms(fork, d, args.boots)
        q, r, rows[d]["idle VMs"] = idle_vm_cost(hold, d)
        rows[d]["QEMU MiB"], rows[d]["RAM MiB"], rows[d]["VM MiB"] = q, r, q + r
    made, booted = create_ms(args.boots)
    print(f"drivers: boot (`unifork run` hello, median of {args.boots}), fork of a 1 MiB parent "
          f"(child runs, ms, {args.n} forks), memory of an idle VM (MiB)")
    print(f"{'':22} {'qemu':>10} {'libvirt':>10} {'ratio':>8}")
    for key, unit in (("boot", "ms"), ("paced p50", "ms"), ("paced p90", "ms"),
                      ("back-to-back p50", "ms"), ("back-to-back p90", "ms"),
                      ("first fork", "ms"),
                      ("QEMU MiB", ""), ("RAM MiB", ""), ("VM MiB", "")):
        a, b = rows["qemu"][key], rows["libvirt"][key]
        label = f"{key} ({unit})" if unit else key
        print(f"{label:22} {a:10.2f} {b:10.2f} {b / a if a else float('nan'):7.2f}x")
    print(f"\nlibvirt alone: createXML of a paused domain {made:.0f} ms, its guest's boot "
          f"{booted:.0f} ms (median of {args.boots}); libvirtd + virtlogd PSS "
          f"{daemon_mib(daemons.pids):.1f} MiB")


if __name__ == "__main__":
    main()
