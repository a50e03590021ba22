"""The Python twin of guest/include/unifork_abi.h.

Every constant and structure here mirrors the header; tests/test_abi.py
compiles the header and checks sizes, offsets and values against this file.
"""
from __future__ import annotations

import ctypes
import enum

ABI_VERSION = 1

PAGE_SIZE = 0x1000
KERNEL_BASE = 0x100000
BOOT_ADDR = 0x200000
CTL_ADDR = 0x201000
PT_ADDR = 0x202000
PT_PAGES = 8
LOG_ADDR = 0x20A000
LOG_SIZE = 0x4000
USER_BASE = 0x400000
PIE_BASE = 0x400000
MAX_RAM = 0x80000000

DOORBELL_PORT = 0x2F8
DOORBELL_IRQ = 3
EXIT_PORT = 0xF4
VEC_TIMER = 0x20
VEC_DOORBELL = 0x21
VEC_SPURIOUS = 0xFF

BOOT_MAGIC = 0x544F4F42464E55
FEAT_KVM = 1 << 0
TTY_STDIN = 1 << 0
TTY_STDOUT = 1 << 1
TTY_STDERR = 1 << 2

SHM_MAGIC = 0x4D485346494E55
SHM_RINGS = 64
RING_SIZE = 0x10000
SHM_SLOT = RING_SIZE + 0x1000
SHM_SIZE = 0x800000


def shm_ring_off(i: int) -> int:
    """Offset of ring slot i in the job's shared-memory region."""
    return 0x1000 + i * SHM_SLOT


class State(enum.IntEnum):
    """Why the guest stopped (struct uf_ctl.state)."""

    NONE = 0
    RUNNING = 1
    EXITED = 2
    KILLED = 3
    PANIC = 4


class Boot(ctypes.Structure):
    _fields_ = [
        ("magic", ctypes.c_uint64),
        ("abi_version", ctypes.c_uint32),
        ("features", ctypes.c_uint32),
        ("ram_size", ctypes.c_uint64),
        ("shm_base", ctypes.c_uint64),
        ("shm_size", ctypes.c_uint64),
        ("tsc_khz", ctypes.c_uint64),
        ("realtime_ns", ctypes.c_uint64),
        ("entry", ctypes.c_uint64),
        ("sp", ctypes.c_uint64),
        ("brk", ctypes.c_uint64),
        ("mmap_top", ctypes.c_uint64),
        ("stack_low", ctypes.c_uint64),
        ("pid", ctypes.c_uint32),
        ("ppid", ctypes.c_uint32),
        ("uid", ctypes.c_uint32),
        ("gid", ctypes.c_uint32),
        ("stdio_ring", ctypes.c_uint32 * 3),
        ("tty", ctypes.c_uint32),
        ("tty_rows", ctypes.c_uint16),
        ("tty_cols", ctypes.c_uint16),
        ("_pad0", ctypes.c_uint32),
        ("seed", ctypes.c_uint8 * 32),
        ("exe", ctypes.c_char * 256),
        ("hostname", ctypes.c_char * 65),
        ("_pad1", ctypes.c_char * 7),
    ]


class Ctl(ctypes.Structure):
    _fields_ = [
        ("state", ctypes.c_uint32),
        ("status", ctypes.c_int32),
        ("fault_vector", ctypes.c_uint64),
        ("fault_rip", ctypes.c_uint64),
        ("fault_addr", ctypes.c_uint64),
        ("fault_error", ctypes.c_uint64),
        ("syscalls", ctypes.c_uint64),
        ("_pad", ctypes.c_uint64 * 2),
    ]


class Ring(ctypes.Structure):
    """The header of struct uf_ring; data[] follows it."""

    _fields_ = [
        ("head", ctypes.c_uint64),
        ("writers", ctypes.c_uint32),
        ("wr_wait", ctypes.c_uint32),
        ("_pad0", ctypes.c_uint8 * 48),
        ("tail", ctypes.c_uint64),
        ("readers", ctypes.c_uint32),
        ("rd_wait", ctypes.c_uint32),
        ("_pad1", ctypes.c_uint8 * 48),
        ("size", ctypes.c_uint32),
        ("_pad2", ctypes.c_uint32 * 15),
    ]


class Shm(ctypes.Structure):
    _fields_ = [
        ("magic", ctypes.c_uint64),
        ("abi_version", ctypes.c_uint32),
        ("nrings", ctypes.c_uint32),
    ]
