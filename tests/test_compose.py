"""Deploying with docker-compose (docker-compose.yml, Dockerfile): the file
is valid for Debian's docker-compose (`config -q`, no engine needed, nothing
built), and it deploys what the Ansible roles do: the same variable names,
the same ports, the same packages, the same paths, the worker's environment
the same as worker.env's."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

pytestmark = pytest.mark.skipif(shutil.which("docker-compose") is None,
                                reason="docker-compose is not installed (make setup installs it)")

ROLES = ROOT / "ansible" / "roles"
DEFAULTS = yaml.safe_load((ROLES / "unifork" / "defaults" / "main.yml").read_text())


def compose(env_file: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker-compose", "--env-file", str(env_file), "-f",
                           str(ROOT / "docker-compose.yml"), *args], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})


@pytest.fixture
def env_file(tmp_path):
    path = tmp_path / "compose.env"
    path.write_text("unifork_redis_password=pw-test-0123456789abcdef\n"
                    "unifork_secret=secret-test-0123456789abcdef\n")
    return path


@pytest.fixture
def resolved(env_file) -> dict:
    """docker-compose.yml as docker-compose resolves it."""
    got = compose(env_file, "config")
    assert got.returncode == 0, got.stderr
    return yaml.safe_load(got.stdout)


def test_docker_compose_config_validates_the_file(env_file):
    got = compose(env_file, "config", "-q")
    assert got.returncode == 0 and got.stdout == "", got.stderr


def test_without_the_redis_password_docker_compose_says_so_in_one_line(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("unifork_secret=secret-test-0123456789abcdef\n")
    got = compose(empty, "config", "-q")
    assert got.returncode != 0
    assert got.stderr.count("\n") <= 1 and "set unifork_redis_password in .env" in got.stderr


def test_the_example_env_file_names_the_roles_variables():
    names = re.findall(r"^(\w+)=", (ROOT / "compose.env.example").read_text(), re.M)
    assert names == ["unifork_redis_password", "unifork_secret"]
    tasks = (ROLES / "preflight" / "tasks" / "main.yml").read_text()
    assert all(f"{name} is defined" in tasks for name in names)     # the roles' names


def test_redis_has_a_password_and_aof_on_the_roles_port(resolved):
    redis = resolved["services"]["redis"]
    cmd = redis["command"]
    assert cmd[cmd.index("--requirepass") + 1] == "pw-test-0123456789abcdef"
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--port") + 1] == str(DEFAULTS["unifork_redis_port"])
    assert "ports" not in redis                     # reached on the cluster's network only


def workers(resolved) -> dict:
    return {name: s for name, s in resolved["services"].items()
            if s.get("command") == ["worker"]}


def test_two_workers_with_kvm_distinct_names_and_slots(resolved):
    found = workers(resolved)
    assert len(found) == 2
    for service in found.values():
        assert "/dev/kvm:/dev/kvm" in service["devices"]
    names = {s["environment"]["UNIFORK_HOST_NAME"] for s in found.values()}
    hostnames = {s["hostname"] for s in found.values()}
    slots = [s["environment"]["UNIFORK_WORKER_SLOTS"] for s in found.values()]
    assert len(names) == 2 and names == hostnames and len(set(slots)) == 2
    for service in found.values():
        address = service["environment"]["UNIFORK_WORKER_ADVERTISE"]
        assert service["networks"]["cluster"]["ipv4_address"] == address


def test_the_workers_get_what_worker_env_holds_with_the_roles_ports(resolved):
    template = (ROLES / "kvm_host" / "templates" / "worker.env.j2").read_text()
    keys = re.findall(r"^(UNIFORK_\w+)=", template, re.M)
    port = DEFAULTS["unifork_redis_port"]
    for service in workers(resolved).values():
        env = service["environment"]
        assert sorted(env) == sorted(keys)
        assert env["UNIFORK_FORK_PORTS"] == DEFAULTS["unifork_fork_ports"]
        assert env["UNIFORK_FILES_PORTS"] == DEFAULTS["unifork_files_ports"]
        assert env["UNIFORK_BRIDGE_PORTS"] == DEFAULTS["unifork_bridge_ports"]
        assert env["UNIFORK_REDIS_URL"] == f"redis://:pw-test-0123456789abcdef@redis:{port}/0"
        assert env["UNIFORK_SECRET"] == "secret-test-0123456789abcdef"


def test_flower_watches_the_same_redis_from_this_machine_only(resolved):
    flower = resolved["services"]["flower"]
    assert "flower" in flower["command"]
    port = DEFAULTS["unifork_redis_port"]
    assert flower["environment"]["UNIFORK_REDIS_URL"] == \
        f"redis://:pw-test-0123456789abcdef@redis:{port}/0"
    assert [str(p).split(":")[0] for p in flower["ports"]] == ["127.0.0.1"]


def test_the_image_has_the_roles_packages_and_paths():
    dockerfile = (ROOT / "Dockerfile").read_text()
    role = yaml.safe_load((ROLES / "kvm_host" / "tasks" / "main.yml").read_text())
    packages = next(t["ansible.builtin.apt"]["name"] for t in role
                    if "ansible.builtin.apt" in t)
    install = re.search(r"apt-get install (.*?)&&", dockerfile, re.S)[1].split()
    assert set(packages) - {"nftables"} <= set(install)    # the firewall: the Docker host's
    prefix = DEFAULTS["unifork_prefix"]
    assert f"WORKDIR {prefix}/src" in dockerfile and f"{prefix}/venv/bin/unifork" in dockerfile
    assert dockerfile.startswith("#") and "\nFROM debian:12\n" in dockerfile
