#!/usr/bin/env python3
"""Fork benchmark: fork latency as the guest sees it, and what a child costs.

In one run, for a parent that touched ~1 MiB and one that touched 32 MiB:
  - bench/forkbench.c under `unifork run` (each fork clones the VM) and as
    a native Linux process: time from the fork() call until the child runs,
    and until fork() returns in the parent; p50 and p90, and the ratios.
    "paced": forks 150 ms apart, so a warm pool VM is always ready (the
    fork latency proper); "back-to-back": the pool runs dry and forks wait
    for QEMUs to start;
  - the host memory a child costs: PSS of its QEMU without its guest-RAM
    mapping, plus the pages its RAM file holds.
Targets (issue 3): p50 <= 5 ms for the small parent; <= 8 MiB per child.

    .venv/bin/python bench/fork.py [-n 40]
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
UNIFORK = os.path.join(os.path.dirname(sys.executable), "unifork")


def build(tmp: str) -> str:
    out = os.path.join(tmp, "forkbench")
    subprocess.run(["musl-gcc", "-static", "-O2", "-o", out,
                    os.path.join(ROOT, "bench", "forkbench.c")], check=True)
    return out


def latencies(cmd: list[str]) -> tuple[list[float], list[float]]:
    out = subprocess.run(cmd, capture_output=True, check=True, timeout=600).stdout
    rows = [tuple(map(int, line.split())) for line in out.decode().splitlines()]
    rows = rows[2:]                 # the first forks warm the pool and caches
    return [c / 1000 for c, _ in rows], [p / 1000 for _, p in rows]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))]


HOLD = r'''
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    long mib = atol(argv[1]); int kids = atoi(argv[2]);
    char *heap = malloc(mib << 20); memset(heap, 1, mib << 20);
    int go[2]; pipe(go);
    for (int i = 0; i < kids; i++) if (fork() == 0) { char b; close(go[1]); read(go[0], &b, 1); _exit(0); }
    write(1, "ready\n", 6);
    char b; read(0, &b, 1);       /* the driver measures, then closes our stdin */
    return 0;
}
'''


def qemu_children(before: set[int]) -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) not in before:
            try:
                if open(f"/proc/{d}/comm").read().startswith("qemu-system"):
                    pids.append(int(d))
            except OSError:
                pass
    return pids


def all_qemus() -> set[int]:
    return set(qemu_children(set()))


def child_cost(pid: int) -> tuple[float, float]:
    """(PSS of QEMU without its guest RAM mapping, RAM file bytes) in MiB."""
    pss, ram_pss = 0, 0
    current = ""
    for line in open(f"/proc/{pid}/smaps"):
        first = line.split()[0]
        if not first.endswith(":"):
            current = line
        elif first == "Pss:":
            kb = int(line.split()[1])
            pss += kb
            if "unifork-ram" in current:
                ram_pss += kb
    ram_bytes = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if "unifork-ram" in os.readlink(f"/proc/{pid}/fd/{fd}"):
                ram_bytes = os.stat(f"/proc/{pid}/fd/{fd}").st_blocks * 512
                break
        except OSError:
            pass
    return (pss - ram_pss) / 1024, ram_bytes / 2**20


def memory(tmp: str, mib: int, kids: int = 4) -> tuple[float, float]:
    src = os.path.join(tmp, "hold.c")
    open(src, "w").write(HOLD)
    exe = os.path.join(tmp, "hold")
    subprocess.run(["musl-gcc", "-static", "-O2", "-o", exe, src], check=True)
    before = all_qemus()
    p = subprocess.Popen([UNIFORK, "run", exe, str(mib), str(kids)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE)
    assert p.stdout.readline() == b"ready\n"
    time.sleep(0.5)
    pids = sorted(qemu_children(before))
    # pid 1's QEMU started first; pool QEMUs hold no guest yet: keep those with RAM.
    costs = [child_cost(q) for q in pids[1:]]
    costs = [c for c in costs if c[1] > 1][:kids]
    p.stdin.close()
    p.wait(timeout=60)
    qemu = statistics.median(c[0] for c in costs)
    ram = statistics.median(c[1] for c in costs)
    return qemu, ram


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=30, help="forks per case (default 30)")
    n = ap.parse_args().n
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(tmp)
        print(f"fork benchmark: {n} forks per case (the first 2 dropped), latency in ms")
        print(f"{'':>15} {'':>9} {'child runs':>22} {'parent returns':>22}")
        print(f"{'':>15} {'':>9} {'p50':>10} {'p90':>10}   {'p50':>10} {'p90':>10}")
        for mib, pause in ((1, 150), (32, 150), (1, 0)):
            how = "paced" if pause else "back-to-back"
            u_c, u_p = latencies([UNIFORK, "run", "--mem", "128", exe, str(mib), str(n + 2),
                                  str(pause)])
            n_c, n_p = latencies([exe, str(mib), str(n + 2), str(pause)])
            print(f"{mib} MiB, {how}:")
            for name, c, p in (("unifork", u_c, u_p), ("native", n_c, n_p)):
                print(f"{'':>15} {name:>9} {pct(c, .5):10.3f} {pct(c, .9):10.3f}   "
                      f"{pct(p, .5):10.3f} {pct(p, .9):10.3f}")
            print(f"{'':>15} {'ratio':>9} {pct(u_c, .5) / pct(n_c, .5):10.0f}x"
                  f"{'':>11}   {pct(u_p, .5) / pct(n_p, .5):10.0f}x")
        print("\ntarget: child runs p50 <= 5 ms for the 1 MiB parent")
        print("\nhost memory per child (median of 4 live children):")
        for mib in (1, 32):
            qemu, ram = memory(tmp, mib)
            print(f"  parent touched {mib:>2} MiB: QEMU {qemu:5.1f} MiB + guest RAM "
                  f"{ram:5.1f} MiB = {qemu + ram:5.1f} MiB   (target <= 8 MiB)")


if __name__ == "__main__":
    main()
