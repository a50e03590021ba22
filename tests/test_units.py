"""Unit tests of the host side's pure parts: ELF checks, the guest memory
layout, and the host's end of a ring (on an ordinary buffer)."""
from __future__ import annotations

import ctypes
import mmap
import struct
import subprocess
from pathlib import Path

import pytest

from workers import abi
from workers.vm import elf, layout
from workers.errors import BadProgram
from workers.vm.rings import HostRing

MIB = 1 << 20


def test_et_exec_keeps_its_addresses_and_pie_moves_to_the_pie_base(example, program):
    exe = elf.parse("x", example("hello", "musl").read_bytes(), abi.PIE_BASE, 100 * MIB)
    assert not exe.pie and exe.bias == 0 and exe.start >= abi.USER_BASE
    pie = elf.parse("y", program("sysinfo", "glibc", pie=True).read_bytes(), abi.PIE_BASE,
                    100 * MIB)
    assert pie.pie and pie.start == abi.PIE_BASE and pie.entry > abi.PIE_BASE


def test_elf_errors_name_the_program():
    with pytest.raises(BadProgram, match="^prog: not an ELF file$"):
        elf.parse("prog", b"hello", abi.PIE_BASE, 100 * MIB)


def test_page_tables_leave_page_zero_unmapped_and_map_all_ram():
    lay = layout.Layout(64 * MIB)
    mem = bytearray(64 * MIB)
    layout.page_tables(mem, lay)
    pt = abi.PT_ADDR + 0x6000
    assert struct.unpack_from("<Q", mem, pt)[0] == 0                  # page 0
    assert struct.unpack_from("<Q", mem, pt + 8)[0] & 0x7 == 0x7        # page 1: P RW US
    pd = abi.PT_ADDR + 0x2000
    last = (64 * MIB >> 21) - 1
    assert struct.unpack_from("<Q", mem, pd + 8 * last)[0] == (last << 21) | 0x87
    shm0 = struct.unpack_from("<Q", mem, pd + 8 * (last + 1))[0]
    assert shm0 == (64 * MIB) | 0x87                                     # shm follows RAM


def test_a_shm_region_above_4_gib_is_mapped_by_the_spare_page_directory():
    """The libvirt driver's layout: the job's region at abi.SHM_HIGH (a pc
    machine's device memory), RAM as ever."""
    lay = layout.Layout(64 * MIB, shm_high=True)
    mem = bytearray(64 * MIB)
    layout.page_tables(mem, lay)
    assert lay.shm_base == abi.SHM_HIGH == 4 << 30
    pdpt, spare = abi.PT_ADDR + 0x1000, abi.PT_ADDR + 0x7000
    assert struct.unpack_from("<Q", mem, pdpt + 8 * 4)[0] == spare | 0x7
    n = lay.shm_size + (2 * MIB - 1) >> 21
    assert [struct.unpack_from("<Q", mem, spare + 8 * i)[0] for i in range(n + 1)] == \
        [(abi.SHM_HIGH + (i << 21)) | 0x87 for i in range(n)] + [0]
    pd = abi.PT_ADDR + 0x2000
    assert struct.unpack_from("<Q", mem, pd + 8 * (64 * MIB >> 21))[0] == 0   # none after RAM


def test_initial_stack_is_linux_shaped(example):
    lay = layout.Layout(32 * MIB)
    mem = bytearray(32 * MIB)
    prog = elf.parse("p", example("hello", "musl").read_bytes(), abi.PIE_BASE, lay.mmap_top)
    sp = layout.initial_stack(mem, lay, prog, [b"p", b"arg"], [b"A=1"], b"/x/p", 7, 8)
    assert sp % 16 == 0
    argc, a0, a1, null, e0, null2 = struct.unpack_from("<6Q", mem, sp)
    assert (argc, null, null2) == (2, 0, 0)
    assert mem[a1:a1 + 4] == b"arg\0" and mem[e0:e0 + 4] == b"A=1\0"
    aux = dict(struct.unpack_from("<2Q", mem, sp + 48 + 16 * i) for i in range(19))
    assert aux[layout.AT_PAGESZ] == 4096 and aux[layout.AT_ENTRY] == prog.entry
    assert aux[layout.AT_UID] == 7 and aux[layout.AT_GID] == 8 and aux[layout.AT_SECURE] == 0
    assert mem[aux[layout.AT_EXECFN]:aux[layout.AT_EXECFN] + 5] == b"/x/p\0"


def test_host_ring_wraps_and_reports_waiters():
    buf = mmap.mmap(-1, 4096)
    ring = HostRing.create(buf, 0, 1024)
    n, wake = ring.write(b"a" * 1000)
    assert (n, wake) == (1000, False)
    assert ring.read(600)[0] == b"a" * 600
    abi.RING.put(buf, 0, rd_wait=1)                 # the guest sleeps on read
    n, wake = ring.write(bytes(range(256)) * 4)
    assert n == 624 and wake                        # fills up, across the end
    assert abi.RING.get(buf, 0, "rd_wait") == 0     # the flag is taken
    data, _ = ring.read()
    assert data == b"a" * 400 + (bytes(range(256)) * 4)[:624]
    assert ring.space() == 1024
    ring.release()


@pytest.fixture(scope="module")
def watch_word(tmp_path_factory):
    """A C thread that counts the times a counter it watches went backwards."""
    so = tmp_path_factory.mktemp("watch") / "watch_word.so"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-pthread", "-o", str(so),
                    str(Path(__file__).with_name("watch_word.c"))], check=True)
    lib = ctypes.CDLL(str(so))
    lib.watch_stop.restype = ctypes.c_long
    return lib


def _watched_address(buf: mmap.mmap, off: int) -> ctypes.c_void_p:
    return ctypes.c_void_p(ctypes.addressof(ctypes.c_char.from_buffer(buf)) + off)


def test_a_guest_never_sees_a_ring_counter_half_written(watch_word):
    # A guest reading the head as the host moves it must see the old value
    # or the new one: struct.pack_into wrote 0 first, then byte by byte, and
    # a reader that saw a head behind its tail read garbage past it.
    buf = mmap.mmap(-1, 8192)
    ring = HostRing.create(buf, 0, 4096)
    watch_word.watch_start(_watched_address(buf, abi.RING.offsets["head"]))
    for _ in range(200_000):
        ring.write(b"x")
        ring.read()
    assert watch_word.watch_stop() == 0
    assert abi.RING.get(buf, 0, "head") == 200_000
    ring.release()


def test_a_guest_never_sees_a_control_field_half_written(watch_word):
    buf = mmap.mmap(-1, 8192)
    watch_word.watch_start(_watched_address(buf, abi.CTL.offsets["sig_blocked"]))
    for v in range(1, 200_000):
        abi.CTL.put(buf, 0, sig_blocked=v)
    assert watch_word.watch_stop() == 0
    assert abi.CTL.get(buf, 0, "sig_blocked") == 199_999


def test_a_bridged_supervisor_runs_at_raised_priority_and_what_it_starts_does_not():
    import os
    import subprocess
    import threading
    from workers.proc import supervisor as run
    seen = {}

    def body():                     # a thread of its own: pytest's keeps its priority
        old = run._raise_priority()
        if old is None:
            seen["refused"] = True
            return
        seen["raised"] = os.getpriority(os.PRIO_PROCESS, 0)
        seen["slice"] = run._SCHED_ATTR.unpack(run._sched_attr(None))[5]
        seen["child"] = subprocess.run(["sh", "-c", "cut -d' ' -f19 /proc/self/stat"],
                                       capture_output=True, text=True).stdout.strip()
        run._sched_attr(old)
        seen["restored"] = os.getpriority(os.PRIO_PROCESS, 0)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    if seen.get("refused"):
        pytest.skip("this machine refuses a negative nice to us (not root)")
    assert seen == {"raised": -20, "slice": 100_000, "child": "0", "restored": 0}


@pytest.mark.parametrize("pid1_state", ["running", "killed"])
def test_a_subtree_ends_when_pid_1s_host_is_lost_whatever_pid_1s_record_says(monkeypatch,
                                                                               pid1_state):
    """pid 1's host, going down, may have recorded pid 1 killed (its VM died
    first) without sending the subtrees their "end": the subtrees end on
    the host's lapse all the same.  (Redis is faked: the rule alone.)"""
    from broker.cluster import link as cluster
    link = object.__new__(cluster.Link)
    link.superseded, link.pid1_lost, link.tree, link.watch = False, False, 5, {}
    link.job_id, link.holder = "job", ("hostA", "1")
    got: list[dict] = []
    link.deliver = got.append
    alive = {"hostB": True}
    monkeypatch.setattr(cluster.state, "holds_job", lambda r, job, holder: True)
    monkeypatch.setattr(cluster.state, "procs", lambda r, job: {
        1: {"host": "hostB", "incarnation": "7", "state": pid1_state}})
    monkeypatch.setattr(cluster.state, "host_alive", lambda r, host, inc: alive.get(host, False))
    link._check_remote(None)
    assert got == []                        # its host lives: its "end" will come
    alive["hostB"] = False
    link._check_remote(None)
    assert [m["type"] for m in got] == ["end"] and "hostB was lost" in got[0]["why"]
    link._check_remote(None)
    assert len(got) == 1                    # once
