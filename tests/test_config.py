"""One configuration (workers/config.py): every UNIFORK_* knob is read and
checked in one place, named in the README's table, and a bad value is a
one-line error naming it."""
from __future__ import annotations

import re

import pytest

from conftest import ROOT, unifork
from workers import config
from workers.errors import ConfigError


def test_the_defaults_parse():
    c = config.load({})
    assert c.fork_wait == 5.0 and c.host_max_vms == 64 and c.fast_bell is True
    assert c.fork_ports is None and c.accel == "" and c.kernel.endswith("kernel.elf")


@pytest.mark.parametrize("var, value, attr, want", [
    ("UNIFORK_FORK_PORTS", "7000-7010", "fork_ports", (7000, 7010)),
    ("UNIFORK_BRIDGE_PORTS", "9000", "bridge_ports", (9000, 9000)),
    ("UNIFORK_FAST_BELL", "0", "fast_bell", False),
    ("UNIFORK_IDLE_VMS", " 2 ", "idle_vms", 2),
    ("UNIFORK_BRIDGE_TIMEOUT", "0.5", "bridge_timeout", 0.5),
])
def test_a_value_in_the_environment_is_read(var, value, attr, want):
    assert getattr(config.load({var: value}), attr) == want


@pytest.mark.parametrize("var, value", [
    ("UNIFORK_FORK_WAIT", "soon"), ("UNIFORK_FORK_WAIT", "-1"), ("UNIFORK_HOST_MAX_VMS", "0"),
    ("UNIFORK_FORK_PORTS", "9-2"), ("UNIFORK_FORK_PORTS", "1-99999"), ("UNIFORK_ACCEL", "xen"),
    ("UNIFORK_FAST_BELL", "yes"), ("UNIFORK_BRIDGE_NICE", "5"),
])
def test_a_bad_value_is_an_error_that_names_the_variable_and_the_value(var, value):
    with pytest.raises(ConfigError, match=f"^{var}={re.escape(repr(value))}: it takes "):
        config.load({var: value})


def test_the_command_line_sets_a_knob_checked_the_same_way(monkeypatch):
    monkeypatch.setattr(config, "_current", config.load({}))
    assert config.override(fork_ports="100-200").fork_ports == (100, 200)
    assert config.get().fork_ports == (100, 200)
    with pytest.raises(ConfigError, match="UNIFORK_BRIDGE_PORTS='x'"):
        config.override(bridge_ports="x")
    assert config.override(bridge_ports=None).bridge_ports is None     # None: as it is


def test_the_readme_lists_every_knob_and_no_other():
    readme = (ROOT / "README.md").read_text()
    listed = set(re.findall(r"^\| `(UNIFORK_[A-Z_]+)` \|", readme, re.M))
    assert listed == {k[0] for k in config.KNOBS}


def test_unifork_run_with_a_bad_knob_says_which_in_one_line(example):
    got = unifork("run", example("hello", "musl"), env={"UNIFORK_FORK_WAIT": "soon"})
    assert got.returncode == 1
    assert got.stderr == b"unifork: UNIFORK_FORK_WAIT='soon': it takes a number of seconds, " \
                         b"at least 0\n"


def test_the_worker_takes_its_slots_and_address_from_the_environment_when_not_given():
    from argparse import Namespace
    from broker.commands import worker_identity
    none = Namespace(host_name=None, slots=None, advertise=None)
    cfg = config.load({"UNIFORK_HOST_NAME": "kvm1", "UNIFORK_WORKER_SLOTS": "6",
                       "UNIFORK_WORKER_ADVERTISE": "192.0.2.11"})
    assert worker_identity(none, cfg) == ("kvm1", 6, "192.0.2.11")
    given = Namespace(host_name="kvm2", slots=2, advertise="192.0.2.12")
    assert worker_identity(given, cfg) == ("kvm2", 2, "192.0.2.12")     # options win


@pytest.mark.parametrize("env, says", [
    ({"UNIFORK_WORKER_ADVERTISE": "127.0.0.1"}, "--slots N or UNIFORK_WORKER_SLOTS=N"),
    ({"UNIFORK_WORKER_SLOTS": "2"}, "--advertise ADDR or UNIFORK_WORKER_ADVERTISE=ADDR"),
])
def test_a_worker_without_slots_or_address_says_which_and_both_ways_to_give_it(env, says):
    got = unifork("worker", env={"UNIFORK_WORKER_SLOTS": "", "UNIFORK_WORKER_ADVERTISE": "",
                                 **env})
    assert got.returncode == 2
    assert got.stderr.decode().count("\n") == 1 and says in got.stderr.decode()
