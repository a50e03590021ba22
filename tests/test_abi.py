"""workers/abi.py is the twin of guest/include/unifork_abi.h: every
structure's size and every field's offset, and every constant, agree."""
from __future__ import annotations

import os
import re
import subprocess

import pytest

from conftest import ROOT
from workers import abi

RECORDS = [abi.BOOT, abi.CTL, abi.RING, abi.SHM, abi.PARK, abi.KID]
HEADER = ROOT / "guest" / "include" / "unifork_abi.h"
# Every constant of the header (#define UF_NAME value): abi.NAME is its twin.
CONSTANTS = [m for m in re.findall(r"^#define UF_([A-Z0-9_]+)[ \t]+\S", HEADER.read_text(), re.M)
             if m != "UL"]
# Every enum of the header, by its codes' prefix: the Python class of its codes.
TWINS = {"UF_STATE_": abi.State, "UF_REQ_": abi.Req, "UF_SLEEP_": abi.Sleep, "UF_KID_": abi.Kid,
         "UF_NODE_": abi.Node}
ENUMS = {prefix: TWINS.get(prefix) for prefix in
         re.findall(r"^enum uf_\w+ \{\s*(UF_[A-Z]+_)", HEADER.read_text(), re.M)}


def _members(cls) -> dict[str, int]:
    return {k: v for k, v in vars(cls).items() if k.isupper()}


@pytest.fixture(scope="module")
def header_facts(tmp_path_factory) -> dict[str, int]:
    """Compile a program against the header that prints what it says."""
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "unifork_abi.h"',
             "int main(void) {"]
    for rec in RECORDS:
        lines.append(f'printf("sizeof {rec.name} %zu\\n", sizeof(struct {rec.name}));')
        for field, _ in rec.fields:
            lines.append(f'printf("{rec.name}.{field} %zu\\n", offsetof(struct {rec.name}, {field}));')
    for c in CONSTANTS:
        lines.append(f'printf("UF_{c} %llu\\n", (unsigned long long)(UF_{c}));')
    for prefix, cls in ENUMS.items():
        for name in (*_members(cls or object), "MAX"):
            lines.append(f'printf("{prefix}{name} %d\\n", {prefix}{name});')
    lines.append('printf("ring_off_5 %llu\\n", (unsigned long long)UF_SHM_RING_OFF(5));')
    lines.append("return 0; }")
    d = tmp_path_factory.mktemp("abi")
    (d / "facts.c").write_text("\n".join(lines))
    subprocess.run(["gcc", "-I", ROOT / "guest" / "include", "-o", d / "facts", d / "facts.c"],
                   check=True)
    out = subprocess.run([d / "facts"], capture_output=True, text=True, check=True).stdout
    return {k: int(v) for k, v in (line.rsplit(" ", 1) for line in out.splitlines())}


@pytest.mark.parametrize("rec", RECORDS, ids=lambda r: r.name)
def test_structures_have_the_same_layout(header_facts, rec):
    assert header_facts[f"sizeof {rec.name}"] == rec.size
    for field, _ in rec.fields:
        assert header_facts[f"{rec.name}.{field}"] == rec.offsets[field], field


@pytest.mark.parametrize("name", CONSTANTS)
def test_constants_agree(header_facts, name):
    assert header_facts[f"UF_{name}"] == getattr(abi, name)


def test_the_header_s_constants_and_enums_are_all_found():
    assert len(CONSTANTS) > 40 and {"ABI_VERSION", "HOST_LOCKER", "PIPE_BUF"} <= set(CONSTANTS)
    assert set(ENUMS) == set(TWINS)       # a new enum needs its twin in TWINS


@pytest.mark.parametrize("prefix", ENUMS)
def test_every_code_of_each_enum_agrees_and_none_is_missing(header_facts, prefix):
    assert ENUMS[prefix] is not None, f"enum {prefix}* has no Python twin"
    members = _members(ENUMS[prefix])
    for name, value in members.items():
        assert header_facts[prefix + name] == value, name
    # the header's codes run 0 .. MAX-1: Python has each of them
    assert sorted(members.values()) == list(range(header_facts[prefix + "MAX"]))


def test_ring_offsets_agree(header_facts):
    assert header_facts["ring_off_5"] == abi.shm_ring_off(5)


def test_the_file_calls_numbers_are_linuxs():
    """workers/files/ serves FILE requests by the Linux numbers the guest
    forwards (guest/kernel/fs.c takes them from <asm/unistd_64.h>)."""
    from workers.files.calls import NR
    header = next(p for p in ("/usr/include/x86_64-linux-gnu/asm/unistd_64.h",
                              "/usr/include/asm/unistd_64.h") if os.path.exists(p))
    linux = {m[0]: int(m[1]) for m in
             re.findall(r"^#define __NR_(\w+) (\d+)$", open(header).read(), re.M)}
    assert {name: linux[name] for name in NR} == NR
