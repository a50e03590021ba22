"""Three instructions Python lacks: rdtsc, mfence and cpuid.

The host shares rings with guests and must order its stores and loads the
way the guest does (a full fence between raising a wait flag and re-reading
a counter), and it tells the guest the TSC rate.  Each helper is a few bytes
of x86-64 machine code in an executable page, called through ctypes.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import time

_CODE = {
    # rdtsc; shl $32, %rdx; or %rdx, %rax; ret
    "rdtsc": bytes.fromhex("0f31 48c1e220 4809d0 c3"),
    # mfence; ret
    "mfence": bytes.fromhex("0faef0 c3"),
    # push %rbx; mov %edi, %eax; xor %ecx, %ecx; cpuid; mov %edx, %eax; pop %rbx; ret
    "cpuid_edx": bytes.fromhex("53 89f8 31c9 0fa2 89d0 5b c3"),
}

_page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
_funcs = {}
_off = 0
for _name, _code in _CODE.items():
    _page[_off:_off + len(_code)] = _code
    _addr = ctypes.addressof(ctypes.c_char.from_buffer(_page, _off))
    _funcs[_name] = _addr
    _off += (len(_code) + 15) & ~15

rdtsc = ctypes.CFUNCTYPE(ctypes.c_uint64)(_funcs["rdtsc"])
mfence = ctypes.CFUNCTYPE(None)(_funcs["mfence"])
_cpuid_edx = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_uint32)(_funcs["cpuid_edx"])


def hwcap() -> int:
    """CPUID leaf 1 EDX: what Linux puts in AT_HWCAP on x86."""
    return int(_cpuid_edx(1))


def _measure_tsc_khz() -> int:
    t0, c0 = time.perf_counter_ns(), rdtsc()
    time.sleep(0.02)
    t1, c1 = time.perf_counter_ns(), rdtsc()
    return (c1 - c0) * 1_000_000 // (t1 - t0)


def tsc_khz() -> int:
    """The TSC rate in kHz: measured once per machine boot, then cached."""
    try:
        boot_id = open("/proc/sys/kernel/random/boot_id").read().strip()
    except OSError:
        boot_id = "unknown"
    cache = os.path.join(os.path.expanduser("~/.cache/unifork"), f"tsc-khz-{boot_id}")
    try:
        return int(open(cache).read())
    except (OSError, ValueError):
        pass
    khz = _measure_tsc_khz()
    try:
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        with open(cache + ".tmp", "w") as f:
            f.write(str(khz))
        os.replace(cache + ".tmp", cache)
    except OSError:
        pass
    return khz
