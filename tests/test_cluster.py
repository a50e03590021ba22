"""The cluster's control plane on this machine: a real Redis, real Celery
workers started with `unifork worker`, jobs submitted with `unifork submit`,
the client API and plain Celery client code.  Both workers are on this
host's loopback: test_hosts.py has them in network namespaces."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time

import pytest

from conftest import UNIFORK, assert_no_qemu_after, native, qemu_pids

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server is not installed (make setup installs it)")


PASSWORD = "pw-of-the-test-cluster"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Redis on a free port, with a password as every deployment has, and
    two workers, hostA (4 slots) and hostB (5)."""
    port = free_port()
    d = tmp_path_factory.mktemp("redis")
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", str(d),
                              "--requirepass", PASSWORD], stdout=subprocess.DEVNULL)
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    env = {**os.environ, "UNIFORK_REDIS_URL": url}
    deadline = time.monotonic() + 10
    while subprocess.run(["redis-cli", "-p", str(port), "--no-auth-warning", "-a", PASSWORD,
                          "ping"], capture_output=True).stdout != b"PONG\n":
        assert time.monotonic() < deadline, "redis did not start"
        time.sleep(0.05)
    workers = {}
    qemu_before = qemu_pids()
    for name, slots in (("hostA", 4), ("hostB", 5)):
        workers[name] = subprocess.Popen(
            [str(UNIFORK), "worker", "--host-name", name, "--slots", str(slots),
             "--advertise", "127.0.0.1"], env=env, stdout=subprocess.DEVNULL,
            stderr=open(d / f"{name}.log", "wb"))
    c = {"url": url, "env": env, "port": port, "workers": workers, "dir": d}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        out = cli(c, "hosts").stdout
        if out.count(b" ago") == 2 and b"celery@" not in out:
            break
        time.sleep(0.2)
    time.sleep(2)               # the Celery workers connect to their queues
    yield c
    for w in workers.values():
        w.terminate()
    for w in workers.values():
        try:
            w.wait(timeout=20)
        except subprocess.TimeoutExpired:
            w.kill()
    redis.terminate()
    redis.wait(timeout=10)
    assert_no_qemu_after(qemu_before)


def cli(c, *args, input: bytes = b"", timeout: float = 120,
        env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(UNIFORK), *map(str, args)], input=input, capture_output=True,
                          env={**c["env"], **(env or {})}, timeout=timeout)


def test_hosts_lists_each_worker_with_its_slots(cluster):
    out = cli(cluster, "hosts").stdout.decode()
    assert "hostA" in out and "hostB" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert lines["hostA"][3] == "4" and lines["hostB"][3] == "5"     # FREE


def test_submit_wait_gives_the_output_and_status_of_the_native_run(cluster, example):
    prog = example("primes", "glibc")
    got = cli(cluster, "submit", "--wait", prog, 200000, 2)
    assert got.returncode == 0, got.stderr.decode()
    assert got.stdout == native(prog, 200000, 2).stdout


def test_a_job_sent_with_plain_celery_gets_the_same_result(cluster, example):
    prog = example("echo", "musl")
    via_cli = cli(cluster, "submit", "--wait", "--env", "K=v", prog, "a", "b c")
    script = f"""
import base64, sys
from celery import Celery
app = Celery(broker={cluster['url']!r}, backend={cluster['url']!r})
r = app.send_task("unifork.run_job", queue="unifork.jobs", kwargs={{
    "program": base64.b64encode(open({str(prog)!r}, "rb").read()).decode(),
    "name": {str(prog)!r}, "args": ["a", "b c"], "env": ["K=v"]}})
res = r.get(timeout=120)
sys.stdout.buffer.write(base64.b64decode(res["stdout"]))
sys.exit(res["exit_status"])
"""
    plain = subprocess.run([os.sys.executable, "-c", script], capture_output=True, timeout=180)
    assert plain.returncode == via_cli.returncode == 3       # echo exits with argc
    assert plain.stdout == via_cli.stdout
    assert b"argv[2] = b c" in plain.stdout


BUSYBOX = shutil.which("busybox")


@pytest.mark.skipif(BUSYBOX is None, reason="busybox-static is not installed (make setup installs it)")
def test_plain_celery_gives_a_job_files_and_gets_back_those_its_outputs_name(cluster):
    script = f"""
import base64, json, sys
from celery import Celery
app = Celery(broker={cluster['url']!r}, backend={cluster['url']!r})
r = app.send_task("unifork.run_job", queue="unifork.jobs", kwargs={{
    "program": base64.b64encode(open({BUSYBOX!r}, "rb").read()).decode(),
    "name": "busybox", "args": ["sh", "-c", "cd /data; busybox sort in.txt > out/sorted; busybox wc -l < in.txt"],
    "files": {{"/data/in.txt": base64.b64encode(b"b\\na\\nc\\n").decode(),
               "/data/out/.keep": ""}},
    "outputs": ["data/out/*"]}})
res = r.get(timeout=120)
print(json.dumps({{"out": base64.b64decode(res["stdout"]).decode(), "status": res["exit_status"],
                  "files": {{k: base64.b64decode(v).decode() for k, v in res["files"].items()}}}}))
"""
    got = subprocess.run([os.sys.executable, "-c", script], capture_output=True, timeout=180)
    res = json.loads(got.stdout)
    assert res == {"out": "3\n", "status": 0, "files": {"/data/out/sorted": "a\nb\nc\n"}}, got


def test_submit_sends_inputs_and_fetch_brings_the_outputs_back(cluster, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "words").write_text("pear\napple\n")
    args = ["--input", f"{src}:/in", "--input", f"{BUSYBOX}:/bin/busybox", "--workdir", "/in",
            "--output", "in/*.sorted", "/bin/busybox", "sh", "-c",
            "busybox sort words > words.sorted; busybox ls /in"]
    job_id = cli(cluster, "submit", *args).stdout.decode().strip()
    got = cli(cluster, "submit", "--wait", "--out", str(tmp_path / "back"), *args)
    assert got.returncode == 0 and got.stdout == b"words\nwords.sorted\n", got.stderr.decode()
    assert (tmp_path / "back" / "in" / "words.sorted").read_text() == "apple\npear\n"
    deadline = time.monotonic() + 60
    while cli(cluster, "ps", job_id).stdout.find(b"finished") < 0:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    fetched = cli(cluster, "fetch", job_id, "/in/words.sorted", "--out", str(tmp_path / "f"))
    assert fetched.stdout == b"in/words.sorted\n", fetched.stderr.decode()
    assert (tmp_path / "f" / "in" / "words.sorted").read_text() == "apple\npear\n"


def test_fetch_gets_files_from_the_tree_of_a_running_job_and_of_one_that_ended(cluster,
                                                                              tmp_path):
    job_id = cli(cluster, "submit", "--input", f"{BUSYBOX}:/bin/busybox", "/bin/busybox", "sh",
                 "-c", "busybox mkdir -p /w/d; echo early > /w/d/f; busybox sleep 30"
                 ).stdout.decode().strip()
    deadline = time.monotonic() + 60
    while True:
        got = cli(cluster, "fetch", job_id, "/w", "--out", str(tmp_path / "live"))
        if got.returncode == 0:
            break
        assert time.monotonic() < deadline, got.stderr.decode()
        time.sleep(0.3)
    assert (tmp_path / "live" / "w" / "d" / "f").read_text() == "early\n"
    missing = cli(cluster, "fetch", job_id, "/nowhere", "--out", str(tmp_path / "x"))
    assert missing.returncode == 1 and b"/nowhere: no such file in the job's tree" in missing.stderr
    cli(cluster, "cancel", job_id)
    while b"cancelled" not in cli(cluster, "ps", job_id).stdout:
        assert time.monotonic() < deadline + 60
        time.sleep(0.3)
    after = cli(cluster, "fetch", job_id, "/w/d", "--out", str(tmp_path / "after"))
    assert after.returncode == 0, after.stderr.decode()      # kept as it was at the end
    assert (tmp_path / "after" / "w" / "d" / "f").read_text() == "early\n"

def test_inputs_past_the_limit_are_refused_before_anything_is_queued(cluster, tmp_path):
    big = tmp_path / "big"
    big.write_bytes(b"x" * 5000)
    got = cli(cluster, "submit", "--input", str(big), "/big", env={"UNIFORK_INPUT_MAX": "4096"})
    assert got.returncode == 2
    assert b"5000 bytes of files, more than the 4096 UNIFORK_INPUT_MAX allows" in got.stderr

def test_ps_shows_the_process_tree_with_host_state_and_status(cluster, example):
    job_id = cli(cluster, "submit", example("primes", "musl"), 100000, 3).stdout.decode().strip()
    deadline = time.monotonic() + 120
    while b"finished" not in cli(cluster, "ps", job_id).stdout:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    out = cli(cluster, "ps", job_id).stdout.decode().splitlines()
    rows = [line.split() for line in out[2:]]
    assert len(rows) == 5                         # pid 1, 3 workers, the formatter
    assert {r[0] for r in rows} == {"1", "2", "3", "4", "5"}
    assert all(r[3] == "exited" and r[-1] == "0" for r in rows)
    assert all(r[2] in ("hostA", "hostB") for r in rows)
    logs = cli(cluster, "logs", job_id)
    assert b"primes below 100000: 9592" in logs.stdout


def test_follow_streams_output_and_processes(cluster, example):
    got = cli(cluster, "submit", "--follow", example("primes", "musl"), 50000, 2)
    assert got.returncode == 0
    assert b"primes below 50000: 5133" in got.stdout
    assert b"pid 2 (parent 1) running on host" in got.stderr
    assert b"pid 2 (parent 1) exited on host" in got.stderr


def test_cancel_stops_a_running_job(cluster, program):
    job_id = cli(cluster, "submit", program("waiter", "musl"), "spin").stdout.decode().strip()
    deadline = time.monotonic() + 60
    while b"running" not in cli(cluster, "ps", job_id).stdout:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert cli(cluster, "cancel", job_id).returncode == 0
    while b"cancelled" not in cli(cluster, "ps", job_id).stdout:
        assert time.monotonic() < deadline, cli(cluster, "ps", job_id).stdout
        time.sleep(0.2)


def test_forks_go_to_the_other_host_and_fail_with_eagain_when_the_cluster_is_full(cluster,
                                                                                 program):
    """4 + 5 slots: pid 1 and 8 children; the 9th fork waits 0.5 s, then EAGAIN."""
    got = cli(cluster, "submit", "--wait", "--fork-wait", "0.5", program("spread", "musl"),
              12, 3000)
    out = got.stdout.decode()
    assert "fork 8: Resource temporarily unavailable" in out
    assert "8 forked" in out
    assert all(f"child {i} exited {10 + i}" in out for i in range(8)), out
    assert b"no host had a free slot for 0.5 s" in got.stderr
    assert got.returncode == 0


def test_a_second_worker_with_a_live_name_is_refused(cluster):
    got = cli(cluster, "worker", "--host-name", "hostA", "--slots", "1", "--advertise", "x",
              timeout=30)
    assert got.returncode == 1
    assert b"a worker named hostA is already alive" in got.stderr


def test_unknown_job_ids_and_bad_programs_get_one_line_errors(cluster, tmp_path):
    got = cli(cluster, "ps", "no-such-job")
    assert got.returncode == 1 and got.stderr == b"unifork: no job no-such-job\n"
    (tmp_path / "x").write_text("not a program")
    got = cli(cluster, "submit", tmp_path / "x")
    assert got.returncode == 2 and b"not an ELF file" in got.stderr


def test_an_unreachable_redis_is_a_one_line_error(example):
    got = subprocess.run([str(UNIFORK), "hosts", "--redis", f"redis://127.0.0.1:{free_port()}/0"],
                         capture_output=True, timeout=30)
    assert got.returncode == 1
    assert got.stderr.startswith(b"unifork: cannot reach Redis at redis://127.0.0.1:")
    assert len(got.stderr.splitlines()) == 1


def test_a_client_without_the_password_is_told_to_give_one(cluster):
    got = cli(cluster, "hosts", "--redis", f"redis://127.0.0.1:{cluster['port']}/0")
    assert got.returncode == 1
    assert got.stderr == (f"unifork: Redis at redis://127.0.0.1:{cluster['port']}/0 requires "
                          "a password: give it in the URL, redis://:PASSWORD@HOST:PORT/DB "
                          "(--redis or UNIFORK_REDIS_URL)\n").encode()


def test_a_worker_with_a_wrong_password_stops_with_one_line_that_hides_it(cluster):
    got = cli(cluster, "worker", "--host-name", "hostC", "--slots", "1", "--advertise",
              "127.0.0.1", env={"UNIFORK_REDIS_URL": f"redis://:wrong@127.0.0.1:{cluster['port']}/0"},
              timeout=30)
    assert got.returncode == 1
    assert got.stderr == (f"unifork: Redis at redis://:***@127.0.0.1:{cluster['port']}/0 "
                          "refused the password in the URL\n").encode()
    assert b"hostC" not in cli(cluster, "hosts").stdout


def test_drain_stops_placement_on_that_host_until_undrain(cluster, example):
    """Runs last: hostA takes no new job after the drain."""
    assert cli(cluster, "drain", "hostA").returncode == 0
    assert b"draining" in cli(cluster, "hosts").stdout
    time.sleep(1.5)
    ids = [cli(cluster, "submit", example("hello", "musl")).stdout.decode().strip()
           for _ in range(4)]
    for job_id in ids:
        deadline = time.monotonic() + 60
        while b"finished" not in cli(cluster, "ps", job_id).stdout:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        rows = cli(cluster, "ps", job_id).stdout.decode().splitlines()[2:]
        assert rows and all(r.split()[2] == "hostB" for r in rows)
    assert cli(cluster, "drain", "hostZ").stderr == b"unifork: no host named hostZ\n"
    assert cli(cluster, "undrain", "hostA").returncode == 0
    assert b"draining" not in cli(cluster, "hosts").stdout
    assert json.loads(cli(cluster, "hosts", "--json").stdout)[0]["draining"] is False
    assert cli(cluster, "undrain", "hostZ").stderr == b"unifork: no host named hostZ\n"
