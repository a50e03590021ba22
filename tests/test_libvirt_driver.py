"""The libvirt driver (`--driver libvirt`): every VM a transient libvirt
domain, started by a libvirtd (and virtlogd) these tests start and stop
themselves.  The one-host fork, pipe and signal tests of
test_processes.py run again under it; `virsh list` shows a job's domains
while it runs and none after; a libvirtd that does not answer is one line
and a non-zero exit."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

import libvirtd
import test_busybox as busybox
import test_processes as processes
from conftest import UNIFORK, forkloop_steps, qemu_pids, unifork

WHY_NOT = libvirtd.available()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=str(WHY_NOT))


@pytest.fixture(scope="module")
def daemons():
    d = libvirtd.Daemons().start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def under_libvirt(daemons, monkeypatch):
    """unifork, as the tests below run it, asks our libvirtd for its VMs."""
    monkeypatch.setenv("UNIFORK_DRIVER", "libvirt")
    monkeypatch.setenv("UNIFORK_LIBVIRT_URI", daemons.uri)
    return daemons


FORK_PIPE_SIGNAL = ["forkbasic", "family", "pipes", "pipeline", "deaths", "adopt", "signals",
                    "selects", "computing", "faults"]


@pytest.mark.parametrize("name", FORK_PIPE_SIGNAL)
def test_a_program_that_forks_pipes_and_takes_signals_matches_native(under_libvirt, program,
                                                                     name):
    processes.test_multi_process_program_matches_native(program, name, "musl")


@pytest.mark.parametrize("name", ["pipelines", "kill", "trap"])
def test_a_busybox_shell_matches_native(under_libvirt, name):
    """A real program: pipelines of re-executed applets, kill and traps."""
    if busybox.BUSYBOX is None:
        pytest.skip("busybox-static is not installed (make setup installs it)")
    busybox.test_busybox_shell_matches_native(name)


def test_the_example_job_matches_native(under_libvirt, example):
    processes.test_the_example_job_matches_native(example, "glibc")


def test_pipe_records_are_never_torn(under_libvirt, program):
    processes.test_pipe_records_of_pipe_buf_bytes_are_never_torn(program)


def test_the_command_line_option_chooses_the_driver(daemons, program, monkeypatch):
    monkeypatch.delenv("UNIFORK_DRIVER", raising=False)
    monkeypatch.setenv("UNIFORK_LIBVIRT_URI", daemons.uri)
    p = subprocess.Popen([str(UNIFORK), "run", "--driver", "libvirt",
                          str(program("forkloop", "musl")), "2", "1"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"1\n"
        assert any(n.startswith(f"unifork-{p.pid}-") for n in daemons.domains())
        p.communicate(b"gg", timeout=60)
        assert p.returncode == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def _qemus_of_job(pid: int) -> set[int]:
    """The QEMUs of the domains of the job `unifork run` (pid) runs."""
    mine = set()
    for q in qemu_pids():
        try:
            if f"guest=unifork-{pid}-".encode() in Path(f"/proc/{q}/cmdline").read_bytes():
                mine.add(q)
        except OSError:
            pass
    return mine


def test_a_job_s_domains_are_listed_while_it_runs_forks_fill_them_and_none_is_left(
        under_libvirt, program):
    """300 forks run in the few domains the job's idle pool keeps (its
    vessels), each named after the job; when the job ends, so do they."""
    seen: set[int] = set()
    wants = iter((b"100\n", b"200\n", b"300\n"))

    def look(pid: int, line: bytes) -> None:
        nonlocal seen
        assert line == next(wants)
        assert [n for n in under_libvirt.domains() if n.startswith(f"unifork-{pid}-")], \
            under_libvirt.domains()
        seen |= _qemus_of_job(pid)
    pid = forkloop_steps(program, 300, 100, look)
    assert 2 <= len(seen) <= 6          # pid 1's, and the pool's (UNIFORK_IDLE_VMS 4)
    deadline = time.monotonic() + 20    # (libvirt drops a domain ~2 s after its QEMU ends)
    while [n for n in under_libvirt.domains() if n.startswith(f"unifork-{pid}-")]:
        assert time.monotonic() < deadline, under_libvirt.domains()
        time.sleep(0.2)


@pytest.mark.parametrize("command", ["run", "worker"])
def test_a_libvirtd_that_is_not_running_is_one_line_and_a_non_zero_exit(example, tmp_path,
                                                                        command):
    sock = Path(tmp_path) / "no-libvirt-sock"
    args = ([example("hello", "musl")] if command == "run" else
            ["--host-name", "hostL", "--slots", "1", "--advertise", "127.0.0.1"])
    got = unifork(command, "--driver", "libvirt", *args, timeout=60,
                  env={"UNIFORK_LIBVIRT_URI": f"qemu:///system?socket={sock}"})
    assert got.returncode == 1 and got.stdout == b""
    lines = got.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unifork: libvirt is not running at "), lines
    assert "start virtlogd and libvirtd" in lines[0]


def test_a_guest_kernel_that_fails_powers_its_domain_off(daemons, monkeypatch):
    """A pc has no isa-debug-exit: the guest's power-off goes through ACPI
    (PM1a_CNT), and libvirt ends the domain (<on_poweroff>destroy)."""
    from workers import abi, config
    from workers.vm.machine import VM
    from workers.vm.rings import SharedRegion
    monkeypatch.setattr(config, "_current", config._current)   # as it was, after
    config.override(driver="libvirt", libvirt_uri=daemons.uri)
    shm = SharedRegion()
    vm = VM(64, shm)
    try:
        assert vm.domain is not None and vm.layout.shm_base == abi.SHM_HIGH
        vm.load_vessel()
        abi.BOOT.put(vm.mem, abi.BOOT_ADDR, magic=1)    # the kernel refuses it, and fails
        vm.start()
        deadline = time.monotonic() + 20
        while vm.poll() is None:
            assert time.monotonic() < deadline, "the domain did not power off"
            time.sleep(0.01)
        assert vm.returncode == 1 and vm.ctl["state"] == abi.State.PANIC
    finally:
        vm.close()
        shm.close()


@contextlib.contextmanager
def _cluster(daemons, tmp_path, workers: list[tuple[str, list[str], dict]], slots: int = 1):
    """Redis and `unifork worker`s (name, extra options, extra environment),
    (slots) each; yields the environment of a cluster command."""
    import test_cluster
    port = test_cluster.free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                             stdout=subprocess.DEVNULL)
    env = {"UNIFORK_REDIS_URL": f"redis://127.0.0.1:{port}/0", "UNIFORK_LIBVIRT_URI": daemons.uri}
    procs = []
    try:
        time.sleep(0.5)
        for name, opts, more in workers:
            procs.append(subprocess.Popen(
                [str(UNIFORK), "worker", *opts, "--host-name", name, "--slots", str(slots),
                 "--advertise", "127.0.0.1"], env={**os.environ, **env, **more},
                stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"{name}.log", "wb")))
        deadline = time.monotonic() + 30
        while unifork("hosts", env=env).stdout.count(b" ago") < len(workers):
            assert time.monotonic() < deadline, "the workers did not register"
            time.sleep(0.2)
        time.sleep(2)                   # the Celery workers connect to their queues
        yield env
    finally:
        for w in procs:
            w.terminate()
        for w in procs:
            try:
                w.wait(timeout=30)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
        redis.terminate()
        redis.wait(timeout=10)


def test_a_worker_with_the_libvirt_driver_runs_a_job_s_vms_as_domains(daemons, example,
                                                                      tmp_path):
    """`unifork worker --driver libvirt`: a submitted job that forks and
    pipes gives the native output, its VMs being domains while it runs."""
    prog = example("primes", "glibc")
    with _cluster(daemons, tmp_path, [("hostL", ["--driver", "libvirt"], {})], slots=4) as env:
        deadline = time.monotonic() + 120
        job_id = unifork("submit", prog, "3000000", "4", env=env).stdout.decode().strip()
        seen, state = set(), b""
        while b"FINISHED" not in state.upper():
            seen |= {n for n in daemons.domains() if n.startswith(f"unifork-{job_id}-")}
            state = unifork("ps", job_id, env=env).stdout.splitlines()[0]
            assert time.monotonic() < deadline, state
        assert state.endswith(b"exit status 0"), state
        got = unifork("logs", job_id, env=env)
    assert got.stdout == subprocess.run([str(prog), "3000000", "4"], capture_output=True).stdout
    assert len(seen) >= 2, seen     # pid 1's and its workers' (forked into vessels)


def test_a_fork_between_hosts_with_different_drivers_fails_and_says_why(daemons, program,
                                                                       tmp_path):
    """One slot on each host: pid 1's fork goes to the other, whose VMs map
    the job's region elsewhere; it is refused, fork fails with EAGAIN."""
    hosts = [("hostL", ["--driver", "libvirt"], {}),
             ("hostQ", ["--driver", "qemu"], {"UNIFORK_FAST_BELL": "0"})]   # (as libvirt's)
    with _cluster(daemons, tmp_path, hosts) as env:
        got = unifork("submit", "--wait", "--fork-wait", "2", program("spread", "musl"), 1, 10,
                      env=env, timeout=120)
    assert got.returncode == 0, got.stderr.decode()
    assert b"fork 0: Resource temporarily unavailable" in got.stdout, got.stdout
    assert b"run different VM drivers" in got.stderr, got.stderr.decode()
