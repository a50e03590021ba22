"""The Python twin of guest/include/unifork_abi.h.

Every constant and structure here mirrors the header; tests/test_abi.py
compiles the header and checks sizes, offsets and values against this file.
"""
from __future__ import annotations

import struct

ABI_VERSION = 13
BRIDGED, BRIDGED_TELL = 1, 2        # uf_ring.bridged

PAGE_SIZE = 0x1000
KERNEL_BASE = 0x100000
BOOT_ADDR = 0x200000
CTL_ADDR = 0x201000
PT_ADDR = 0x202000
PT_PAGES = 8
LOG_ADDR = 0x20A000
LOG_SIZE = 0x4000
PARK_ADDR = 0x210000
PARK_SIZE = 0x2000
USER_BASE = 0x400000
PIE_BASE = 0x400000
MAX_RAM = 0x80000000
SHM_HIGH = 0x100000000

DOORBELL_PORT = 0x2F8
DOORBELL_IRQ = 3
EXIT_PORT = 0xF4
ACPI_PM1A_CNT = 0x604
ACPI_SLP_EN = 0x2000
VEC_TIMER = 0x20
VEC_DOORBELL = 0x21
VEC_SPURIOUS = 0xFF

BOOT_MAGIC = 0x544F4F42464E55
FEAT_KVM = 1 << 0
FEAT_BELL = 1 << 1
VIRTIO_MMIO_BASE = 0xFEB00000
VIRTIO_MMIO_SLOT = 0x200
VIRTIO_MMIO_SLOTS = 8
BELL_DEVICE_ID = 2
BELL_VRING = 0x3F0000
BELL_QUEUE = 8
TTY_STDIN = 1 << 0
TTY_STDOUT = 1 << 1
TTY_STDERR = 1 << 2

SHM_MAGIC = 0x4D485346494E55
SHM_RINGS = 64
RING_SIZE = 0x100000
SHM_SLOT = RING_SIZE + 0x1000
SHM_SIZE = 0x4200000


def shm_ring_off(i: int) -> int:
    """Offset of ring slot i in the job's shared-memory region."""
    return 0x1000 + i * SHM_SLOT


class State:
    """Why the guest stopped (enum uf_state in struct uf_ctl.state)."""

    NONE = 0
    RUNNING = 1
    EXITED = 2
    KILLED = 3
    PANIC = 4


class Req:
    """Requests from guest to host (enum uf_req in struct uf_ctl.req)."""

    NONE = 0
    FORK = 1
    WAIT = 2
    KILL = 3
    EXEC = 4
    EXIT = 5
    FILE = 6


class Node:
    """What an open gave the guest (enum uf_node, an open's val0)."""

    NONE = 0
    HOST = 1
    NULL = 2
    ZERO = 3
    RANDOM = 4


class Sleep:
    """What a halted guest waits for (enum uf_sleep in struct uf_ctl.asleep)."""

    NONE = 0
    REPLY = 1
    READ = 2
    WRITE = 3
    TIMER = 4


PIPE_BUF = 4096
HOST_LOCKER = 0x7FFFFFFF            # the host's "pid" in a ring's wlock and rlock


def _bits(*sigs: int) -> int:
    return sum(1 << (sig - 1) for sig in sigs)


# bit (sig - 1): ignored by default (SIGCHLD, SIGCONT, SIGURG, SIGWINCH);
# stopping, so ignored, there being no job control (SIGSTOP .. SIGTTOU)
SIG_DEFAULT_IGNORED = _bits(17, 18, 23, 28)
SIG_STOPPING = _bits(19, 20, 21, 22)


class Record:
    """A C structure of the ABI as (name, struct format) fields.

    Reads and writes go through struct at fixed offsets: cheap to import
    (unifork run imports this before QEMU starts) and fast to access.
    tests/test_abi.py checks every offset against the C header.

    A field that is one integer is read and written in one access (a
    memoryview's item): the guest may look at it meanwhile, and
    struct.pack_into zeroes a field first, then writes it a byte at a time.
    """

    def __init__(self, name: str, fields: list[tuple[str, str]]) -> None:
        self.name = name
        self.fields = fields
        self.offsets: dict[str, int] = {}
        self.formats: dict[str, str] = {}
        self._words: dict[str, tuple[int, int, str]] = {}    # one-integer fields
        fmt = "<"
        for fname, f in fields:
            at = self.offsets[fname] = struct.calcsize(fmt)
            self.formats[fname] = "<" + f
            if f in ("Q", "q", "I", "i", "H"):
                self._words[fname] = (at, struct.calcsize(f), f)
            fmt += f
        self.struct = struct.Struct(fmt)
        self.size = self.struct.size

    def get(self, buf, base: int, field: str):
        word = self._words.get(field)
        if word:
            at, size, code = word
            return memoryview(buf)[base + at:base + at + size].cast(code)[0]
        v = struct.unpack_from(self.formats[field], buf, base + self.offsets[field])
        return v if len(v) > 1 else v[0]

    def put(self, buf, base: int, **values) -> None:
        for field, v in values.items():
            word = self._words.get(field)
            if word:
                at, size, code = word
                memoryview(buf)[base + at:base + at + size].cast(code)[0] = v
                continue
            args = v if isinstance(v, (tuple, list)) else (v,)
            struct.pack_into(self.formats[field], buf, base + self.offsets[field], *args)

    def read(self, buf, base: int) -> dict:
        """Every field, arrays as tuples."""
        return {f: self.get(buf, base, f) for f, _ in self.fields}


BOOT = Record("uf_boot", [
    ("magic", "Q"), ("abi_version", "I"), ("features", "I"),
    ("ram_size", "Q"), ("shm_base", "Q"), ("shm_size", "Q"),
    ("tsc_khz", "Q"), ("realtime_ns", "Q"), ("entry", "Q"), ("sp", "Q"),
    ("brk", "Q"), ("mmap_top", "Q"), ("stack_low", "Q"),
    ("pid", "I"), ("ppid", "I"), ("uid", "I"), ("gid", "I"),
    ("stdio_ring", "3I"), ("tty", "I"), ("tty_rows", "H"), ("tty_cols", "H"),
    ("_pad0", "I"), ("seed", "32s"), ("exe", "256s"), ("hostname", "65s"),
    ("_pad1", "7s"), ("tsc_adjust", "q"), ("tsc_resume", "q"),
    ("host_tsc", "Q"),
])

CTL = Record("uf_ctl", [
    ("state", "I"), ("status", "i"), ("fault_vector", "Q"), ("fault_rip", "Q"),
    ("fault_addr", "Q"), ("fault_error", "Q"), ("syscalls", "Q"), ("_pad0", "16s"),
    ("req", "I"), ("req_seq", "I"), ("arg", "4q"), ("asleep", "I"), ("sleep_ring", "i"),
    ("_pad1", "16s"),
    ("rep_seq", "I"), ("_pad2", "I"), ("ret", "q"), ("val", "2q"), ("_pad3", "32s"),
    ("sig_ignored", "Q"), ("sig_caught", "Q"), ("sig_blocked", "Q"), ("sig_posted", "Q"),
    ("alarm_real_ns", "Q"), ("tsc_is_host", "I"), ("_pad4", "I"), ("_pad5", "16s"),
    ("ends", "128H"), ("kids_alive", "I"), ("kids_unlisted", "I"), ("_pad6", "Q"),
    ("kids", "512s"), ("sysarg", "6q"), ("host_watch", "I"), ("_pad7", "I"),
])

KIDS = 32


class Kid:
    """The state of an entry of the children's table (enum uf_kid_state)."""

    EMPTY = 0
    ENDED = 1
    WAITED = 2


KID = Record("uf_kid", [("state", "I"), ("pid", "I"), ("wstatus", "i"), ("_pad", "I")])


def kid_addr(i: int) -> int:
    """Guest-physical address of entry (i) of the children's table."""
    return CTL_ADDR + CTL.offsets["kids"] + i * KID.size

RING = Record("uf_ring", [
    ("head", "Q"), ("wlock", "I"), ("wr_wait", "I"), ("_pad0", "48s"),
    ("tail", "Q"), ("rlock", "I"), ("rd_wait", "I"), ("_pad1", "48s"),
    ("readers", "I"), ("writers", "I"), ("size", "I"), ("bridged", "I"), ("hungry", "I"),
    ("_pad2", "44s"),
])

PARK = Record("uf_park", [("parked", "I"), ("go", "I"), ("boot", "I"), ("_pad", "52s")])

SHM = Record("uf_shm", [("magic", "Q"), ("abi_version", "I"), ("nrings", "I"),
                        ("used", "Q")])
