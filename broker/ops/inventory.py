"""The hosts of an Ansible YAML inventory, read as the hosts' contract
says (ansible/inventory.example.yml is one), without Ansible.

Groups are the top-level keys (usually `all`) and, under a group, its
`children`; a group has `hosts` (name: variables) and `vars`.  A host's
variable comes from its own entry, else from its deepest group that sets
it (groups of one depth in name order, as Ansible does), else from `all`.
Jinja is not evaluated: a templated value that is needed is an error
naming it.  Exactly one host in `broker`, one or more in `kvm_hosts`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from workers.errors import InventoryError

BROKER, KVM_HOSTS = "broker", "kvm_hosts"
DEFAULTS = {"ansible_user": "root", "ansible_port": 22, "unifork_prefix": "/opt/unifork",
            "unifork_etc": "/etc/unifork", "unifork_log_dir": "/var/log/unifork",
            "unifork_run_dir": "/run/unifork"}


@dataclass(frozen=True)
class Host:
    """One host of the inventory, as `unifork cluster` reaches it."""
    name: str               # its inventory name
    ssh_host: str           # ansible_host
    user: str
    port: int
    key_file: str | None    # ansible_ssh_private_key_file
    worker_name: str        # its name in the cluster (unifork_host_name)
    prefix: str
    etc: str
    log_dir: str
    run_dir: str

    @property
    def unifork(self) -> str:
        return f"{self.prefix}/venv/bin/unifork"

    @property
    def address(self) -> str:
        """user@host, and :port if it is not 22."""
        return f"{self.user}@{self.ssh_host}" + ("" if self.port == 22 else f":{self.port}")


@dataclass(frozen=True)
class Inventory:
    path: str
    broker: str                     # the broker's inventory name
    kvm_hosts: dict[str, Host]      # by inventory name, in the inventory's order

    def host(self, name: str) -> Host:
        """The KVM host (name).  :raise InventoryError: there is none."""
        if name not in self.kvm_hosts:
            raise InventoryError(f"no KVM host {name} in the inventory {self.path} "
                                 f"(its {KVM_HOSTS}: {', '.join(self.kvm_hosts)})")
        return self.kvm_hosts[name]


class _Vaulted:
    """A `!vault` value: encrypted, never needed here."""


def _yaml(path: str):
    import yaml

    class Loader(yaml.SafeLoader):
        pass
    Loader.add_constructor("!vault", lambda loader, node: _Vaulted())
    Loader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.load(f, Loader=Loader)
    except OSError as err:
        raise InventoryError(f"cannot read the inventory {path}: {err.strerror}") from err
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        where = getattr(err, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        what = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise InventoryError(f"the inventory {path} is not YAML{line}: {what}") from err


def _mapping(value, path: str, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InventoryError(f"the inventory {path}: {where} is not a mapping")
    return value


def _walk(name: str, group, depth: int, where: str, path: str, seen: dict) -> set[str]:
    """Record group (name)'s hosts, its children's, and its vars into (seen):
    host name -> {"groups": {group: depth}, "host": vars, "layers": [...]}.
    The hosts it holds, its children's included."""
    group = _mapping(group, path, where)
    layer = (depth, name, _mapping(group.get("vars"), path, f"{where}.vars"))
    members = set()
    for host, hvars in _mapping(group.get("hosts"), path, f"{where}.hosts").items():
        entry = seen.setdefault(str(host), {"groups": {}, "host": {}, "layers": []})
        entry["host"].update(_mapping(hvars, path, f"{where}.hosts.{host}"))
        members.add(str(host))
    for child, sub in _mapping(group.get("children"), path, f"{where}.children").items():
        members |= _walk(str(child), sub, depth + 1, f"{where}.children.{child}", path, seen)
    for host in members:
        if name not in seen[host]["groups"]:
            seen[host]["groups"][name] = depth
            seen[host]["layers"].append(layer)
    return members


def _resolve(entry: dict, all_vars: dict) -> dict:
    merged = dict(DEFAULTS)
    merged.update(all_vars)
    for _, _, layer in sorted(entry["layers"], key=lambda t: (t[0], t[1])):
        merged.update(layer)
    merged.update(entry["host"])
    return merged


def _plain(path: str, host: str, var: str, value) -> str:
    """(value) as a string, if it is a plain one."""
    if isinstance(value, _Vaulted):
        raise InventoryError(f"the inventory {path}: {host}'s {var} is vault-encrypted "
                             "(!vault); `unifork cluster` needs a plain value")
    if isinstance(value, str) and "{{" in value:
        raise InventoryError(f"the inventory {path}: {host}'s {var} is a template "
                             f"({value}); `unifork cluster` does not evaluate Jinja: "
                             "give it a plain value")
    if isinstance(value, (dict, list)) or value is None or value == "":
        raise InventoryError(f"the inventory {path}: {host}'s {var} is not a plain value")
    return str(value)


def _host(path: str, name: str, v: dict) -> Host:
    get = lambda var: _plain(path, name, var, v[var])     # noqa: E731
    port = get("ansible_port")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise InventoryError(f"the inventory {path}: {name}'s ansible_port {port!r} is not a port")
    key = get("ansible_ssh_private_key_file") if "ansible_ssh_private_key_file" in v else None
    return Host(name=name, ssh_host=get("ansible_host") if "ansible_host" in v else name,
                user=get("ansible_user"), port=int(port),
                key_file=os.path.expanduser(key) if key else None,
                worker_name=get("unifork_host_name") if "unifork_host_name" in v else name,
                prefix=get("unifork_prefix"), etc=get("unifork_etc"),
                log_dir=get("unifork_log_dir"), run_dir=get("unifork_run_dir"))


def load(path: str) -> Inventory:
    """The inventory in the YAML file (path).

    :raise InventoryError: missing, not YAML, no (or several) broker, no
        KVM host, a needed value that is not plain.
    """
    top = _yaml(path)
    if not isinstance(top, dict):
        raise InventoryError(f"the inventory {path} is not a mapping of groups "
                             "(`all:` with `children:`)")
    seen: dict[str, dict] = {}
    for name, group in top.items():
        _walk(str(name), group, 0 if name == "all" else 1, str(name), path, seen)
    all_vars = _mapping(_mapping(top.get("all"), path, "all").get("vars"), path, "all.vars")
    brokers = [h for h, e in seen.items() if BROKER in e["groups"]]
    if not brokers:
        raise InventoryError(f"the inventory {path} has no broker: the group `{BROKER}` "
                             "needs one host (Redis runs there)")
    if len(brokers) > 1:
        raise InventoryError(f"the inventory {path} has {len(brokers)} brokers "
                             f"({', '.join(brokers)}): the group `{BROKER}` takes one host")
    kvm = {h: _host(path, h, _resolve(e, all_vars)) for h, e in seen.items()
           if KVM_HOSTS in e["groups"]}
    if not kvm:
        raise InventoryError(f"the inventory {path} has no KVM host: the group `{KVM_HOSTS}` "
                             "needs at least one")
    return Inventory(path=path, broker=brokers[0], kvm_hosts=kvm)
