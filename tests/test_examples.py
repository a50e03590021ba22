"""Every example, built with musl and with glibc, behaves under `unifork run`
exactly as it does as a native Linux process: same stdout, same status."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import EXAMPLES, LIBCS, UNIFORK, native, status, unifork

STDIN = b"".join(b"line %d of the input, with bytes \x00\xff\x7f\n" % i for i in range(5000))
ARGS = {"echo": ["first", "a b  c", "", "\u00e9t\u00e9"]}
ENV = {"echo": {"HOME": "/root", "UNIFORK_TEST": "x=y z"}}


@pytest.mark.parametrize("libc", LIBCS)
@pytest.mark.parametrize("name", EXAMPLES)
def test_example_output_and_status_match_native(example, name, libc):
    prog = example(name, libc)
    args, env = ARGS.get(name, []), ENV.get(name, {})
    want = native(prog, *args, input=STDIN, env=env)
    got = unifork("run", *[f"--env={k}={v}" for k, v in env.items()], prog, *args,
                  input=STDIN)
    assert got.stdout == want.stdout
    assert status(got) == status(want), got.stderr.decode()


@pytest.mark.parametrize("libc", LIBCS)
def test_cat_copies_binary_stdin_of_several_ring_sizes(example, libc):
    data = bytes(range(256)) * 4096 + b"tail"       # 1 MiB, every byte value
    got = unifork("run", example("cat", libc), input=data)
    assert got.returncode == 0, got.stderr.decode()
    assert got.stdout == data
    assert f"{len(data)} bytes".encode() in got.stderr


def test_stdin_from_a_regular_file_reaches_the_program(example, tmp_path):
    f = tmp_path / "in"
    f.write_bytes(STDIN)
    with open(f, "rb") as stdin:
        import subprocess
        from conftest import UNIFORK
        got = subprocess.run([str(UNIFORK), "run", str(example("cat", "musl"))], stdin=stdin,
                             capture_output=True, timeout=60)
    assert got.stdout == STDIN


def test_the_program_sees_only_the_environment_given_with_env(example):
    got = unifork("run", "--env", "ONLY=this", example("echo", "glibc"))
    assert b"env: ONLY=this\n" in got.stdout
    assert got.stdout.count(b"env: ") == 1


# What `unifork run` need not import, each of them milliseconds of every run
# (bench/boot.py): the cluster's operations, typing, shutil, asyncio, JSON.
NOT_ON_THE_RUN_PATH = {"fabric", "paramiko", "invoke", "yaml", "typing", "shutil", "asyncio",
                       "qemu", "json", "celery", "redis"}


def test_unifork_run_imports_only_what_running_a_program_needs(example):
    got = subprocess.run([sys.executable, "-X", "importtime", "-S", str(UNIFORK), "run",
                          example("hello", "musl")], capture_output=True, timeout=60)
    assert got.returncode == 0, got.stderr[-500:]
    imported = {line.split("|")[-1].strip().split(".")[0]
                for line in got.stderr.decode().splitlines() if line.startswith("import time:")}
    assert "os" in imported or "posix" in imported
    assert not imported & NOT_ON_THE_RUN_PATH, imported & NOT_ON_THE_RUN_PATH
