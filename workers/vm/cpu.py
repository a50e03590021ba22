"""Three instructions Python lacks (rdtsc, mfence, cpuid), and what the
guest needs to know about this CPU (its TSC rate, AT_HWCAP).

The host shares rings with guests and must order a store before a load the
way the guest does (a full fence between raising a wait flag and re-reading
a counter), and it tells the guest the TSC rate.  Each helper is a few bytes
of x86-64 machine code in an executable page, called through ctypes, which
is imported on first use only (it costs ~6 ms, `unifork run` counts them).
"""
from __future__ import annotations

import os

_CODE = {
    # rdtsc; shl $32, %rdx; or %rdx, %rax; ret
    "rdtsc": "0f31 48c1e220 4809d0 c3",
    # mfence; ret
    "mfence": "0faef0 c3",
    # push %rbx; mov %edi, %eax; xor %ecx, %ecx; cpuid; mov %edx, %eax; pop %rbx; ret
    "cpuid_edx": "53 89f8 31c9 0fa2 89d0 5b c3",
    # mov %rsi, %rax; lock xadd %rax, (%rdi); add %rsi, %rax; ret  (returns the new value)
    "atomic_add": "4889f0 f0480fc107 4801f0 c3",
    # mov %esi,%eax; lock cmpxchg %edx,(%rdi); sete %al; movzbl %al,%eax; ret
    "cas32": "89f0 f00fb117 0f94c0 0fb6c0 c3",
}
_funcs: dict = {}


def _machine_code(name: str):
    if not _funcs:
        import ctypes
        import mmap
        page = mmap.mmap(-1, mmap.PAGESIZE,
                         prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        off = 0
        for fname, hexcode in _CODE.items():
            code = bytes.fromhex(hexcode)
            page[off:off + len(code)] = code
            addr = ctypes.addressof(ctypes.c_char.from_buffer(page, off))
            argtypes = {"cpuid_edx": (ctypes.c_uint32,),
                        "atomic_add": (ctypes.c_void_p, ctypes.c_int64),
                        "cas32": (ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32),
                        }.get(fname, ())
            _funcs[fname] = ctypes.CFUNCTYPE(ctypes.c_uint64, *argtypes)(addr)
            off += (len(code) + 15) & ~15
        _funcs["page"] = page
    return _funcs[name]


def rdtsc() -> int:
    return int(_machine_code("rdtsc")())


def mfence() -> None:
    _machine_code("mfence")()


def address(buf) -> int:
    """The address of a writable mapping (an mmap), to hand to atomic_add."""
    import ctypes
    c = ctypes.c_char.from_buffer(buf)
    addr = ctypes.addressof(c)
    del c                       # no lasting export: the mmap can still be closed
    return addr


def atomic_add(addr: int, delta: int) -> int:
    """lock xadd on the 64-bit word at (addr), as guests do; the new value."""
    return int(_machine_code("atomic_add")(addr, delta)) & (2**64 - 1)


def cas32(addr: int, old: int, new: int) -> bool:
    """lock cmpxchg on the 32-bit word at (addr): (old) -> (new); whether it did."""
    return bool(_machine_code("cas32")(addr, old, new))


def _stamp() -> tuple[int, int]:
    """(perf_counter_ns, TSC) read together: the TSC read on both sides of the
    clock read, retried until no preemption fell between them."""
    import time
    for _ in range(100):
        a = rdtsc()
        t = time.perf_counter_ns()
        b = rdtsc()
        if b - a < 200_000:         # well under 100 us at any real TSC rate
            break
    return t, (a + b) // 2


def _measure() -> tuple[int, int]:
    """The TSC rate: the median of 5 samples of 10 ms.  A single sample
    on a busy 2-core machine once came out 15 % low (a preemption between
    the two clock reads), and every guest's clock ran 15 % fast."""
    import time
    rates = []
    for _ in range(5):
        t0, c0 = _stamp()
        time.sleep(0.01)
        t1, c1 = _stamp()
        rates.append((c1 - c0) * 1_000_000 // (t1 - t0))
    khz = sorted(rates)[2]
    return khz, int(_machine_code("cpuid_edx")(1)) & 0xFFFFFFFF


def machine() -> tuple[int, int]:
    """(TSC rate in kHz, CPUID.1:EDX for AT_HWCAP): measured once per
    machine boot, then read from a small cache file."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot_id = f.read().strip()
    except OSError:
        boot_id = "unknown"
    cache = os.path.join(os.path.expanduser("~"), ".cache", "unifork", f"cpu2-{boot_id}")
    try:
        with open(cache) as f:
            khz, hwcap = map(int, f.read().split())
            return khz, hwcap
    except (OSError, ValueError):
        pass
    khz, hwcap = _measure()
    try:
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        with open(cache + ".tmp", "w") as f:
            f.write(f"{khz} {hwcap}\n")
        os.replace(cache + ".tmp", cache)
    except OSError:
        pass
    return khz, hwcap
