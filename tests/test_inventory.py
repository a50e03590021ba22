"""`unifork cluster` reads the Ansible inventory itself, as the hosts'
contract says (no Ansible needed); bad inventories and unknown hosts are
one line and a non-zero exit, before any SSH."""
from __future__ import annotations

import subprocess

import pytest

from conftest import ROOT, UNIFORK, unifork
from broker.ops import inventory
from workers.errors import InventoryError

GOOD = """\
all:
  vars:
    unifork_redis_password: "{{ vault_unifork_redis_password }}"
    unifork_prefix: /srv/unifork
    ansible_user: admin
  children:
    broker:
      hosts:
        broker1:
          ansible_host: 192.0.2.10
    kvm_hosts:
      vars:
        ansible_user: ops
        unifork_log_dir: /var/log/uf
      hosts:
        kvm1:
          ansible_host: 192.0.2.11
          ansible_port: 2222
          ansible_ssh_private_key_file: ~/.ssh/kvm
        kvm2:
          unifork_host_name: second
          ansible_user: root
      children:
        rack2:
          vars:
            unifork_log_dir: /var/log/rack2
          hosts:
            kvm3:
"""


def write(tmp_path, text: str):
    path = tmp_path / "inventory.yml"
    path.write_text(text)
    return path


def test_a_host_variable_wins_over_its_group_which_wins_over_all(tmp_path):
    inv = inventory.load(str(write(tmp_path, GOOD)))
    assert inv.broker == "broker1" and list(inv.kvm_hosts) == ["kvm1", "kvm2", "kvm3"]
    kvm1, kvm2, kvm3 = inv.kvm_hosts.values()
    assert (kvm1.ssh_host, kvm1.port, kvm1.user) == ("192.0.2.11", 2222, "ops")
    assert kvm1.key_file.endswith("/.ssh/kvm") and "~" not in kvm1.key_file
    assert kvm1.unifork == "/srv/unifork/venv/bin/unifork" and kvm1.log_dir == "/var/log/uf"
    assert (kvm2.ssh_host, kvm2.user, kvm2.worker_name) == ("kvm2", "root", "second")
    assert kvm2.address == "root@kvm2" and kvm1.address == "ops@192.0.2.11:2222"
    assert kvm3.log_dir == "/var/log/rack2", "a child group wins over its parent"
    assert (kvm3.etc, kvm3.run_dir, kvm3.worker_name) == ("/etc/unifork", "/run/unifork", "kvm3")


def test_a_templated_value_that_is_needed_is_an_error_naming_it(tmp_path):
    path = write(tmp_path, GOOD.replace("ansible_host: 192.0.2.11",
                                        'ansible_host: "{{ kvm1_address }}"'))
    with pytest.raises(InventoryError, match=r"kvm1's ansible_host is a template "
                                             r"\(\{\{ kvm1_address \}\}\)"):
        inventory.load(str(path))


def test_a_vault_value_that_is_not_needed_is_fine(tmp_path):
    path = write(tmp_path, GOOD.replace('"{{ vault_unifork_redis_password }}"',
                                        "!vault |\n      $ANSIBLE_VAULT;1.1;AES256\n      3132"))
    assert inventory.load(str(path)).broker == "broker1"


@pytest.mark.parametrize("text, says", [
    (GOOD.replace("broker:", "brokers:"), "has no broker: the group `broker` needs one host"),
    (GOOD.replace("        broker1:\n", "        broker1:\n        broker2:\n"),
     "has 2 brokers (broker1, broker2)"),
    (GOOD.replace("kvm_hosts:", "kvms:"), "has no KVM host: the group `kvm_hosts`"),
    ("all: [1, 2\n", "is not YAML (line 2)"),
    ("- a list\n", "is not a mapping of groups"),
    (GOOD.replace("ansible_port: 2222", "ansible_port: ssh"), "kvm1's ansible_port 'ssh'"),
    ("all:\n  children:\n    broker:\n      hosts: [broker1]\n",
     "all.children.broker.hosts is not a mapping"),
])
def test_a_bad_inventory_is_one_line_and_exit_status_2(tmp_path, text, says):
    path = write(tmp_path, text)
    got = unifork("cluster", "status", "--inventory", path, timeout=30)
    assert got.returncode == 2
    assert got.stderr.decode().startswith(f"unifork: the inventory {path}")
    assert says in got.stderr.decode() and len(got.stderr.splitlines()) == 1
    assert got.stdout == b""


def test_a_missing_inventory_is_one_line(tmp_path):
    got = unifork("cluster", "status", "-i", tmp_path / "nope.yml", timeout=30)
    assert got.returncode == 2
    assert got.stderr == f"unifork: cannot read the inventory {tmp_path / 'nope.yml'}: " \
                         f"No such file or directory\n".encode()


@pytest.mark.parametrize("action", ["drain", "undrain", "logs", "restart"])
def test_a_host_not_in_the_inventory_is_one_line_naming_the_ones_it_has(tmp_path, action):
    path = write(tmp_path, GOOD)
    got = unifork("cluster", action, "kvm9", "-i", path, timeout=30)
    assert got.returncode == 2
    assert got.stderr == f"unifork: no KVM host kvm9 in the inventory {path} " \
                         f"(its kvm_hosts: kvm1, kvm2, kvm3)\n".encode()


def test_version_names_the_package_version_and_the_git_commit():
    got = unifork("--version")
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    assert got.returncode == 0
    assert got.stdout.decode() == f"unifork 0.1.0 (git {commit})\n"
