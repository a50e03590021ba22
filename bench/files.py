#!/usr/bin/env python3
"""Files benchmark: a job's file system calls under `unifork run` against
the same program run natively, in one run.

  filebench   bench/filebench.c, timing itself: a MIB file written and
              read back in 1 MiB calls, STATS stat()s and open()+close()s,
              and 1000 small files created, written and closed; in a fresh
              directory natively, in a fresh tree (--volume DIR:/) under
              unifork, both in /dev/shm
  script      tests/test_files.py's script (bash-static and BusyBox over a
              directory of input files: loops, pipelines, find | xargs,
              tar | gzip, background subshells), wall time of the command:
              chrooted natively, `unifork run` with the tree

  remote      with --remote: filebench in a child forked onto the second
              host of a two-host cluster (network namespaces, Redis,
              workers of one slot each), its file calls served by the
              first, where its job's tree is

Targets (issue 17): sequential read and write >= 0.5x native on one host,
>= 100 MB/s from another host; stat and open+close: the ratio to native,
reported.

    .venv/bin/python bench/files.py [-r 5] [--mib 256] [--remote]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]
UNIFORK = os.path.join(os.path.dirname(sys.executable), "unifork")


def build() -> Path:
    out = ROOT / "guest" / "build" / "bench" / "filebench.musl"
    src = ROOT / "bench" / "filebench.c"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["musl-gcc", "-O2", "-static", "-o", out, src], check=True)
    return out


# On tmpfs, so that both runs measure the calls and not the disk's writeback
# (which swings a native 256 MiB write from 66 to 470 ms here).
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") else None


def filebench(exe: Path, how: str, args: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="filebench-", dir=SCRATCH) as d:
        shutil.copy2(exe, Path(d) / "filebench")
        if how == "native":
            cmd = [str(Path(d) / "filebench"), *args]
        else:
            cmd = [UNIFORK, "run", "--mem", "64", "--volume", f"{d}:/", "/filebench", *args]
        p = subprocess.run(cmd, capture_output=True, cwd=d, timeout=600)
    if p.returncode != 0:
        raise SystemExit(f"{how}: status {p.returncode}: {p.stderr.decode(errors='replace')}")
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in p.stdout.decode().splitlines())}


def remote(exe: Path, args: list[str], runs: int) -> list[dict[str, float]]:
    """filebench (args) in a child on another host than its job's home."""
    from netns import Hosts
    from conftest import UNIFORK as unifork
    out = []
    with tempfile.TemporaryDirectory(prefix="filebench-cluster-") as d, \
            Hosts(["hostA", "hostB"]) as net:
        url = net.start_redis(d)
        net.start_workers(unifork, url, {"hostA": 1, "hostB": 1}, d)
        for _ in range(runs):
            p = net.run("hub", unifork, "submit", "--redis", url, "--wait", "--mem", "64",
                        exe, *args, "fork", timeout=600)
            if p.returncode != 0:
                raise SystemExit(f"remote: status {p.returncode}: {p.stderr.decode()[-400:]}")
            out.append({k: float(v) for k, v in
                        (line.rsplit(" ", 1) for line in p.stdout.decode().splitlines())})
        net.stop_workers()
    return out


def script(how: str) -> float:
    import test_files as tf
    with tempfile.TemporaryDirectory(prefix="filescript-") as d:
        root = tf.make_tree(Path(d), shell=tf.BASH)
        tf._inputs(root)
        env = {"PATH": "/bin"}
        t0 = time.perf_counter()
        if how == "native":
            tf.native_devices(root)
            p = subprocess.run(["/bin/sh", "-c", tf.SCRIPT], capture_output=True, env=env,
                               preexec_fn=lambda: (os.chroot(root), os.chdir("/")))
        else:
            p = subprocess.run([UNIFORK, "run", "--volume", f"{root}:/", "--env", "PATH=/bin",
                                "/bin/sh", "-c", tf.SCRIPT], capture_output=True)
        t = (time.perf_counter() - t0) * 1000
    if p.returncode != 0:
        raise SystemExit(f"script {how}: status {p.returncode}: {p.stderr.decode()[-400:]}")
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-r", type=int, default=5, help="runs of each (default 5)")
    ap.add_argument("--mib", type=int, default=256, help="size of the big file (default 256)")
    ap.add_argument("--stats", type=int, default=2000, help="stat()s and opens (default 2000)")
    ap.add_argument("--remote", action="store_true",
                    help="also from another host (needs root, for network namespaces)")
    a = ap.parse_args()
    exe = build()
    runs: dict[str, list[dict]] = {"native": [], "unifork": []}
    scripts: dict[str, list[float]] = {"native": [], "unifork": []}
    for _ in range(a.r):
        for how in ("native", "unifork"):
            runs[how].append(filebench(exe, how, [str(a.mib), str(a.stats), "1000"]))
            scripts[how].append(script(how))
    med = {how: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
           for how, rs in runs.items()}
    print(f"files benchmark: {a.r} runs each, medians")
    print(f"{'':>22} {'unifork':>10} {'native':>10} {'ratio':>8}")
    for k, unit, scale in (("write", "MB/s", a.mib * 1048.576), ("read", "MB/s", a.mib * 1048.576)):
        u, n = scale / med["unifork"][k], scale / med["native"][k]
        print(f"{k + ' ' + str(a.mib) + ' MiB':>22} {u:>8.0f}{unit[:2]:>2} {n:>8.0f}{unit[:2]:>2} "
              f"{u / n:>7.2f}x  (target >= 0.5x; MB/s)")
    for k in ("stat", "open+close"):
        u, n = med["unifork"][k] * 1000 / a.stats, med["native"][k] * 1000 / a.stats
        print(f"{k + ' (us each)':>22} {u:>10.1f} {n:>10.2f} {u / n:>7.0f}x")
    u, n = med["unifork"]["small"], med["native"]["small"]
    print(f"{'1000 small files (ms)':>22} {u:>10.1f} {n:>10.2f} {u / n:>7.0f}x")
    u, n = statistics.median(scripts["unifork"]), statistics.median(scripts["native"])
    print(f"{'tree script (ms)':>22} {u:>10.1f} {n:>10.2f} {u / n:>7.0f}x")
    if not a.remote:
        return
    rs = remote(exe, [str(a.mib), str(a.stats), "1000"], a.r)
    far = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
    scale = a.mib * 1048.576
    print(f"from another host: write {scale / far['write']:.0f} MB/s, read "
          f"{scale / far['read']:.0f} MB/s (target >= 100), stat "
          f"{far['stat'] * 1000 / a.stats:.0f} us, open+close "
          f"{far['open+close'] * 1000 / a.stats:.0f} us, 1000 small files {far['small']:.0f} ms")


if __name__ == "__main__":
    main()
