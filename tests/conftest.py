"""Fixtures: test programs built with both C libraries, a way to run them
under `unifork run` and natively, and a check that every test leaves no
QEMU process behind."""
from __future__ import annotations

import collections
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "guest" / "build"
PROGRAMS = Path(__file__).resolve().parent / "programs"
UNIFORK = Path(sys.executable).parent / "unifork"
LIBCS = ("musl", "glibc")
EXAMPLES = sorted(p.stem for p in (ROOT / "guest" / "examples").glob("*.c"))
MUSL = "/usr/lib/x86_64-linux-musl"


def _gcc_file(name: str) -> str:
    return subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True,
                          text=True, check=True).stdout.strip()


def compile_program(src: Path, out: Path, libc: str, pie: bool = False) -> Path:
    """Build (src) statically with (libc); static-PIE when (pie)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and out.stat().st_mtime >= src.stat().st_mtime:
        return out
    inc = f"-I{ROOT / 'guest' / 'include'}"        # the ABI, for programs that poke it
    if libc == "glibc":
        cmd = ["gcc", "-O2", inc, "-static-pie" if pie else "-static", "-o", out, src, "-lm"]
    elif not pie:
        cmd = ["musl-gcc", "-O2", inc, "-static", "-o", out, src]
    else:
        # Debian's musl-gcc specs always link Scrt1.o; a static PIE needs rcrt1.o.
        obj = out.with_suffix(".o")
        subprocess.run(["musl-gcc", "-O2", "-fPIE", "-c", "-o", obj, src], check=True)
        cmd = ["gcc", "-nostdlib", "-static-pie", "-o", out, f"{MUSL}/rcrt1.o", f"{MUSL}/crti.o",
               _gcc_file("crtbeginS.o"), obj, f"-L{MUSL}", "-lc", _gcc_file("libgcc.a"),
               _gcc_file("crtendS.o"), f"{MUSL}/crtn.o"]
    subprocess.run(cmd, check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def program():
    """program(name, libc, pie=False): tests/programs/NAME.c, built."""
    def build(name: str, libc: str, pie: bool = False) -> Path:
        suffix = f"{libc}{'-pie' if pie else ''}"
        return compile_program(PROGRAMS / f"{name}.c", BUILD / "tests" / f"{name}.{suffix}",
                               libc, pie)
    return build


@pytest.fixture(scope="session")
def example():
    """example(name, libc): guest/examples/NAME.c as built by make."""
    def path(name: str, libc: str) -> Path:
        p = BUILD / "examples" / f"{name}.{libc}"
        if not p.exists():
            subprocess.run(["make", "-s", "-C", ROOT / "guest"], check=True)
        return p
    return path


def unifork(*args: object, input: bytes = b"", timeout: float = 120,
            env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """Run the unifork command; returns the completed process (bytes)."""
    return subprocess.run([str(UNIFORK), *map(str, args)], input=input, capture_output=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, **kw)


def native(path: Path, *args: object, input: bytes = b"", env: dict | None = None
           ) -> subprocess.CompletedProcess:
    """Run (path) as an ordinary Linux process, the reference behaviour."""
    return subprocess.run([str(path), *map(str, args)], input=input, capture_output=True,
                          timeout=120, env=env if env is not None else {})


def forkloop_steps(program, n: int, every: int, at_each, *opts: str) -> int:
    """`unifork run [OPTS] forkloop N EVERY`: at_each(pid of unifork run,
    the line it printed) every EVERY forks, then let it go on; the pid.
    The run must end with status 0."""
    p = subprocess.Popen([str(UNIFORK), "run", *opts, str(program("forkloop", "musl")),
                          str(n), str(every)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(n // every):
            line = p.stdout.readline()
            assert line.strip().isdigit(), (line, p.stderr.read(4096) if not line else b"")
            at_each(p.pid, line)
            p.stdin.write(b"g")
            p.stdin.flush()
        p.stdin.close()
        assert p.wait(timeout=60) == 0, p.stderr.read().decode()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return p.pid


def status(p: subprocess.CompletedProcess) -> int:
    """A shell-style exit status: 128+N when killed by signal N."""
    return 128 - p.returncode if p.returncode < 0 else p.returncode


def qemu_pids() -> set[int]:
    pids = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().startswith("qemu-system"):
                    pids.add(int(d.name))
            except OSError:
                pass
    return pids


def assert_no_qemu_after(before: set[int]) -> None:
    """Once a cluster's workers have stopped, none of their QEMUs is left."""
    deadline = time.monotonic() + 10
    while qemu_pids() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert qemu_pids() - before == set(), "the workers left QEMU processes behind"


def stray_qemus() -> set[int]:
    """QEMU processes but the two each worker process may keep for the next
    forks onto its host: its spare, and a job's VM kept for a few seconds
    after its process ended (workers/fork/arrival.py)."""
    pids, kept = qemu_pids(), collections.Counter()
    for pid in sorted(pids):
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            parent = Path(f"/proc/{ppid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if b"worker" in parent and kept[ppid] < 2:
            kept[ppid] += 1
            pids.discard(pid)
    return pids


def describe(pids: set[int]) -> str:
    """Each of (pids) with its parent's command line, to tell whose it is."""
    out = []
    for pid in sorted(pids):
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            parent = Path(f"/proc/{ppid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            ppid, parent = 0, "(gone)"
        out.append(f"{pid} (parent {ppid}: {parent[:120].strip()})")
    return "; ".join(out)


@pytest.fixture(autouse=True)
def no_leftovers():
    """Every test must leave no QEMU process (but workers' spares: a
    cluster fixture checks that none is left once its workers stop) and no
    file in /dev/shm."""
    shm_before = set(os.listdir("/dev/shm"))
    before = stray_qemus()
    yield
    deadline = time.monotonic() + 5
    while (stray_qemus() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = stray_qemus() - before
    assert left == set(), f"QEMU processes were left running: {describe(left)}"
    assert set(os.listdir("/dev/shm")) - shm_before == set(), "a file was left in /dev/shm"
