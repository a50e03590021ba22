"""workers/native/lib.py is the twin of workers/native/ufnet.h, the
interface of libufnet.so: every function Python calls is declared there
with the types Python gives it, the library exports nothing else
undeclared, the constants agree, and the rules both sides apply (which
halted guest to wake) give the same answers."""
from __future__ import annotations

import ctypes
import itertools
import re
import subprocess

import pytest

from conftest import ROOT
from workers import abi
from workers.native import lib
from workers.proc import sleepers
from workers.vm.cpu import address
from workers.vm.rings import SharedRegion

NATIVE = ROOT / "workers" / "native"
UFNET_H = NATIVE / "ufnet.h"
_SCALARS = {"int": ctypes.c_int, "double": ctypes.c_double, "size_t": ctypes.c_size_t,
            "uint64_t": ctypes.c_uint64, "int64_t": ctypes.c_int64, "uf_filter": lib.FILTER}


def _declarations(path) -> dict[str, tuple[str, list[str]]]:
    """The functions (path) declares: name -> (result, [argument, ...]), in C."""
    text = re.sub(r"/\*.*?\*/", " ", path.read_text(), flags=re.S)
    text = re.sub(r"\s+", " ", re.sub(r"^#.*$", "", text, flags=re.M))
    out = {}
    for statement in re.split(r"[;{}]", text):
        m = re.fullmatch(r"\s*([A-Za-z_][\w ]*?[ *]+)(uf_\w+|buf_\w+)\(([^()]*)\)\s*", statement)
        if m:
            res, name, args = m.groups()
            out[name] = (res.strip(), [a.strip() for a in args.split(",") if a.strip() != "void"])
    return out


def _ctype(decl: str, result: bool):
    """The ctypes type lib.py's convention gives a C result or argument."""
    decl = re.sub(r"\b(const|volatile)\b", "", decl)
    pointer = "*" in decl or "[" in decl
    base = re.sub(r"\[.*?\]|\*", " ", decl).split()
    base = " ".join(base[:2] if base[0] == "struct" else base[:1])
    if not pointer:
        return None if base == "void" else _SCALARS[base]
    if result or base == "void" or base.startswith("struct"):
        return ctypes.c_void_p              # a handle, or memory Python mapped
    if base in ("char", "uint8_t"):
        return ctypes.c_char_p              # bytes Python passes, or a buffer it lends
    return ctypes.POINTER(_SCALARS[base])


def test_every_function_python_calls_is_declared_in_ufnet_h_with_its_types():
    declared = _declarations(UFNET_H)
    assert set(declared) == set(lib.PROTOTYPES), "ufnet.h declares what lib.py types, only"
    for name, (res, args) in declared.items():
        want = (_ctype(res, True), [_ctype(a, False) for a in args])
        assert lib.PROTOTYPES[name][0] == want[0], f"{name}'s result"
        assert lib.PROTOTYPES[name][1] == want[1], f"{name}'s arguments"


def test_the_library_exports_only_what_its_headers_declare():
    lib.native()                            # (built)
    nm = subprocess.run(["nm", "-D", "--defined-only", lib.LIBRARY], capture_output=True,
                        text=True, check=True).stdout
    exported = {line.split()[-1] for line in nm.splitlines() if line.split()[1] == "T"}
    declared = set(_declarations(UFNET_H)) | set(_declarations(NATIVE / "net.h"))
    assert exported - declared == set(), "exported but in no header: make them static"
    assert set(lib.PROTOTYPES) <= exported


@pytest.fixture(scope="module")
def header_facts(tmp_path_factory) -> dict[str, int]:
    """Compile a program against ufnet.h that prints its constants."""
    names = re.findall(r"\b(UF_(?:FRAME|BEYOND|CHAN|EP_ST|RELAY_ST|BELLS_ST)_\w+)",
                       UFNET_H.read_text())
    lines = ['#include <stdio.h>', '#include "ufnet.h"', "int main(void) {"]
    lines += [f'printf("{n} %lld\\n", (long long)({n}));' for n in dict.fromkeys(names)]
    lines.append("return 0; }")
    d = tmp_path_factory.mktemp("ufnet")
    (d / "facts.c").write_text("\n".join(lines))
    subprocess.run(["gcc", "-I", NATIVE, "-o", d / "facts", d / "facts.c"], check=True)
    out = subprocess.run([d / "facts"], capture_output=True, text=True, check=True).stdout
    return {k: int(v) for k, v in (line.rsplit(" ", 1) for line in out.splitlines())}


def test_the_bridge_frames_are_the_same_on_both_sides(header_facts):
    assert header_facts["UF_FRAME_HEAD"] == lib.FRAME.size
    assert header_facts["UF_FRAME_DATA"] == lib.FRAME_DATA[0]
    assert header_facts["UF_FRAME_STATE"] == lib.FRAME_STATE[0]
    for flag in ("WRITERS", "READERS", "HUNGRY", "KEEPS"):
        assert header_facts[f"UF_BEYOND_{flag}"] == getattr(lib, f"BEYOND_{flag}"), flag


def test_the_channel_state_flags_agree_and_none_is_missing(header_facts):
    flags = {k[len("UF_CHAN_"):]: v for k, v in header_facts.items() if k.startswith("UF_CHAN_")}
    assert flags == {k: v for k, v in vars(lib.ChanState).items() if k.isupper()}


@pytest.mark.parametrize("prefix, names", [("UF_EP_ST_", lib.EP_STATS),
                                           ("UF_RELAY_ST_", lib.RELAY_STATS),
                                           ("UF_BELLS_ST_", lib.BELLS_STATS)])
def test_the_counters_have_the_same_names_in_the_same_order(header_facts, prefix, names):
    for i, name in enumerate(names):
        assert header_facts[prefix + name.upper()] == i, name
    assert header_facts[prefix + "MAX"] == len(names)


SIZES = [abi.RING_SIZE, 4096, 0, 3000]         # (the last two: garbage from a guest)
ASLEEP = [abi.Sleep.NONE, abi.Sleep.REPLY, abi.Sleep.READ, abi.Sleep.WRITE, abi.Sleep.TIMER, 9]
RINGS = [3, 4, -1, abi.SHM_RINGS, 1000]        # (ring 3 is in use, 4 is not)
COUNTERS = [(0, 0), (10, 0), (4096, 0), (abi.RING_SIZE, 0), (5, 2**64 - 5)]   # (head, tail)


@pytest.mark.parametrize("size", SIZES)
def test_c_and_python_wake_the_same_halted_guests(size):
    """relay.c's uf_sleeper_ready and sleepers.ready, on every state a
    control page and a ring can be in (garbage too)."""
    ready_c = lib.native().uf_sleeper_ready
    mem = bytearray(abi.CTL_ADDR + abi.CTL.size)
    ctl = ctypes.addressof(ctypes.c_char.from_buffer(mem)) + abi.CTL_ADDR
    shm = SharedRegion()
    try:
        abi.SHM.put(shm.map, 0, used=1 << 3)
        abi.RING.put(shm.map, abi.shm_ring_off(3), size=size)
        differ = []
        for what, seqs, idx, (head, tail), readers, writers in itertools.product(
                ASLEEP, [(1, 1), (2, 1)], RINGS, COUNTERS, (0, 1), (0, 1)):
            abi.CTL.put(mem, abi.CTL_ADDR, asleep=what, req_seq=seqs[0], rep_seq=seqs[1],
                        sleep_ring=idx)
            abi.RING.put(shm.map, abi.shm_ring_off(3), head=head, tail=tail, readers=readers,
                         writers=writers)
            py = sleepers.ready(mem, shm, shm.used())
            if py != bool(ready_c(ctl, address(shm.map))):
                differ.append((what, seqs, idx, head, tail, readers, writers, py))
        assert differ == []
    finally:
        shm.close()
