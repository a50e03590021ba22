"""The guest's memory before boot: page tables, boot page, program, stack.

The host writes all of it straight into the VM's RAM file, so the guest's
ring-0 code copies nothing (ring 0 is emulated and slow on nested KVM).
Guest virtual addresses equal guest physical ones.
"""
from __future__ import annotations

import os
import struct

from workers import abi
from workers.vm.elf import Program
from workers.errors import BadProgram

MIB = 1 << 20
_P, _RW, _US, _PWT, _PCD, _PS = 1, 2, 4, 8, 16, 128
_LAPIC, _IOAPIC = 0xFEE00000, 0xFEC00000

# auxv keys
AT_NULL, AT_PHDR, AT_PHENT, AT_PHNUM, AT_PAGESZ, AT_BASE, AT_FLAGS, AT_ENTRY = \
    0, 3, 4, 5, 6, 7, 8, 9
AT_UID, AT_EUID, AT_GID, AT_EGID, AT_PLATFORM, AT_HWCAP, AT_CLKTCK = \
    11, 12, 13, 14, 15, 16, 17
AT_SECURE, AT_RANDOM, AT_HWCAP2, AT_EXECFN = 23, 25, 26, 31


class Layout:
    """Where things are in a guest of (ram_size) bytes."""

    def __init__(self, ram_size: int, shm_size: int = abi.SHM_SIZE, shm_high: bool = False) -> None:
        """(shm_high): the shm region is at abi.SHM_HIGH (a pc machine's
        device memory, under libvirt), not right after RAM (microvm's
        second NUMA node)."""
        self.ram_size = ram_size
        self.shm_size = shm_size
        self.shm_base = abi.SHM_HIGH if shm_high else ram_size

    @property
    def stack_size(self) -> int:
        return min(8 * MIB, self.ram_size // 8)

    @property
    def stack_low(self) -> int:
        return self.ram_size - self.stack_size

    @property
    def mmap_top(self) -> int:
        return self.stack_low - abi.PAGE_SIZE


def page_tables(mem, layout: Layout) -> None:
    """Identity-map RAM, the shm region, the APICs and the virtio-mmio slots,
    at abi.PT_ADDR.

    PML4, PDPT, four page directories (4 GiB), one page table for the
    first 2 MiB so that page 0 stays unmapped (null pointers fault), and
    the spare page directory for a shm region above 4 GiB.
    Everything the program may touch is user-accessible: the VM is the
    isolation boundary, and the system-call layer runs at CPL 3 on PVM.
    """
    base = abi.PT_ADDR
    pml4, pdpt, pd, pt = base, base + 0x1000, base + 0x2000, base + 0x6000
    user = _P | _RW | _US
    struct.pack_into("<Q", mem, pml4, pdpt | user)
    struct.pack_into("<4Q", mem, pdpt, *(pd + i * 0x1000 | user for i in range(4)))
    struct.pack_into("<Q", mem, pd, pt | user)
    struct.pack_into("<511Q", mem, pt + 8, *((i << 12) | user for i in range(1, 512)))

    def map_2m(start: int, end: int, flags: int, table: int = pd, table_at: int = 0) -> None:
        """2 MiB pages for [start, end) in (table), whose first entry maps
        (table_at); the first 2 MiB of all are the page table's."""
        first, last = max(start >> 21, 1), (end + (1 << 21) - 1) >> 21
        struct.pack_into(f"<{last - first}Q", mem, table + 8 * (first - (table_at >> 21)),
                         *((i << 21) | flags | _PS for i in range(first, last)))

    map_2m(0, layout.ram_size, user)
    shm_end = layout.shm_base + layout.shm_size
    if layout.shm_base >= 4 << 30:      # its GiB has the spare page directory
        gib = layout.shm_base >> 30
        if (shm_end - 1) >> 30 != gib:
            raise ValueError("the shm region crosses a GiB boundary above 4 GiB")
        high = base + 0x7000
        struct.pack_into("<Q", mem, pdpt + 8 * gib, high | user)
        map_2m(layout.shm_base, shm_end, user, high, gib << 30)
    else:
        map_2m(layout.shm_base, shm_end, user)
    map_2m(_IOAPIC, _IOAPIC + (2 << 20), _P | _RW | _PCD | _PWT)
    # the fast doorbell's notify register is written from ring 3 (bell.c)
    map_2m(abi.VIRTIO_MMIO_BASE, abi.VIRTIO_MMIO_BASE + abi.VIRTIO_MMIO_SLOTS * abi.VIRTIO_MMIO_SLOT,
           user | _PCD | _PWT)
    map_2m(_LAPIC, _LAPIC + (2 << 20), _P | _RW | _PCD | _PWT)


def load_program(mem, prog: Program) -> None:
    """Copy the PT_LOAD segments to their addresses; the rest is zero."""
    for s in prog.segments:
        at = s.vaddr + prog.bias
        mem[at:at + s.filesz] = prog.data[s.offset:s.offset + s.filesz]


def initial_stack(mem, layout: Layout, prog: Program, argv: list[bytes],
                  envp: list[bytes], exe: bytes, uid: int, gid: int,
                  hwcap: int = 0) -> int:
    """Build the Linux initial stack at the top of RAM; return its rsp.

    From the top down: strings, AT_RANDOM bytes; then, 16-byte aligned,
    argc, argv[], NULL, envp[], NULL, auxv pairs, AT_NULL.
    """
    top = layout.ram_size - 64
    pos = top

    def put(b: bytes) -> int:
        nonlocal pos
        pos -= len(b)
        mem[pos:pos + len(b)] = b
        return pos

    execfn = put(exe + b"\0")
    platform = put(b"x86_64\0")
    rand = put(os.urandom(16))
    envs = [put(e + b"\0") for e in envp]
    args = [put(a + b"\0") for a in argv]
    auxv = [
        (AT_PHDR, prog.phdr), (AT_PHENT, 56), (AT_PHNUM, prog.phnum),
        (AT_PAGESZ, abi.PAGE_SIZE), (AT_BASE, 0), (AT_FLAGS, 0),
        (AT_ENTRY, prog.entry), (AT_UID, uid), (AT_EUID, uid), (AT_GID, gid),
        (AT_EGID, gid), (AT_SECURE, 0), (AT_RANDOM, rand), (AT_HWCAP, hwcap),
        (AT_HWCAP2, 0), (AT_CLKTCK, 100), (AT_PLATFORM, platform),
        (AT_EXECFN, execfn), (AT_NULL, 0),
    ]
    words = [len(argv), *args, 0, *envs, 0]
    for k, v in auxv:
        words += [k, v]
    sp = (pos - 8 * len(words)) & ~15
    struct.pack_into(f"<{len(words)}Q", mem, sp, *words)
    if sp < layout.stack_low + 4096:
        raise BadProgram("arguments and environment do not fit on the stack")
    return sp
