"""Reading and validating the ELF of a statically linked x86-64 program.

Only headers are parsed here; the segments are copied by layout.py.  Every
reason a program cannot run is a BadProgram with a one-line message.
"""
from __future__ import annotations

import struct

from workers.errors import BadProgram

ET_EXEC, ET_DYN = 2, 3
EM_X86_64 = 62
PT_LOAD, PT_INTERP, PT_PHDR = 1, 3, 6
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")


class Segment:
    """A PT_LOAD segment: (filesz) bytes at (offset) in the file go to
    (vaddr); the rest up to (memsz) is zero."""

    __slots__ = ("offset", "vaddr", "filesz", "memsz")

    def __init__(self, offset: int, vaddr: int, filesz: int, memsz: int) -> None:
        self.offset, self.vaddr, self.filesz, self.memsz = offset, vaddr, filesz, memsz


class Program:
    """A validated program: where its pieces go in guest memory."""

    def __init__(self, path: str, data: bytes, pie: bool, bias: int, entry: int,
                 phdr: int, phnum: int, segments: tuple[Segment, ...]) -> None:
        self.path, self.data, self.pie = path, data, pie
        self.bias = bias            # added to every vaddr (0 for ET_EXEC)
        self.entry = entry          # runtime entry point
        self.phdr = phdr            # runtime address of the program headers
        self.phnum = phnum
        self.segments = segments

    @property
    def end(self) -> int:
        """The first address past the highest segment (runtime)."""
        return max(s.vaddr + s.memsz for s in self.segments) + self.bias

    @property
    def start(self) -> int:
        return min(s.vaddr for s in self.segments) + self.bias


def parse(path: str, data: bytes, load_base: int, ram_limit: int) -> Program:
    """Validate (data), the contents of (path), and place it at (load_base)
    if it is position independent.

    :raise BadProgram: when it is not a static x86-64 Linux program, or does
        not fit below (ram_limit).
    """
    e_type, entry, phoff, phnum = _header(path, data)
    loads, phdr_vaddr = _segments(path, data, phoff, phnum)
    if e_type == ET_DYN and entry == 0:
        raise BadProgram(f"{path}: a shared library, not a program")

    pie = e_type == ET_DYN
    low = min(s.vaddr for s in loads) & ~0xFFF
    bias = load_base - low if pie else 0
    if phdr_vaddr is None:
        for s in loads:
            if s.offset <= phoff < s.offset + s.filesz:
                phdr_vaddr = s.vaddr + phoff - s.offset
                break
        else:
            raise BadProgram(f"{path}: program headers are not in a loaded segment")
    prog = Program(path, data, pie, bias, entry + bias, phdr_vaddr + bias, phnum,
                   tuple(loads))
    if prog.start < load_base:
        raise BadProgram(f"{path}: loads at {prog.start:#x}, below the lowest "
                         f"program address {load_base:#x}")
    if prog.end > ram_limit:
        need = (prog.end + (1 << 20) - 1) >> 20
        raise BadProgram(f"{path}: needs more memory than --mem allows "
                         f"(segments end at {need} MiB, {ram_limit >> 20} MiB usable)")
    return prog


def _header(path: str, data: bytes) -> tuple[int, int, int, int]:
    """The ELF header's type, entry, program headers' offset and count, checked."""
    if len(data) < _EHDR.size or data[:4] != b"\x7fELF":
        raise BadProgram(f"{path}: not an ELF file")
    ident, e_type, machine, _, entry, phoff, _, _, _, phentsize, phnum, _, _, _ = \
        _EHDR.unpack_from(data)
    if ident[4] != 2:
        raise BadProgram(f"{path}: not x86-64 (a 32-bit ELF)")
    if ident[5] != 1:
        raise BadProgram(f"{path}: not x86-64 (big-endian ELF)")
    if machine != EM_X86_64:
        raise BadProgram(f"{path}: not x86-64 (ELF machine {machine})")
    if e_type not in (ET_EXEC, ET_DYN):
        raise BadProgram(f"{path}: not an executable (ELF type {e_type})")
    if phentsize != _PHDR.size or phoff + phnum * phentsize > len(data) or phnum == 0:
        raise BadProgram(f"{path}: truncated or corrupt program headers")
    return e_type, entry, phoff, phnum


def _segments(path: str, data: bytes, phoff: int, phnum: int) -> tuple[list[Segment], int | None]:
    """The loadable segments, and where the program headers are if one says."""
    loads, phdr_vaddr = [], None
    for i in range(phnum):
        p_type, _, off, vaddr, _, filesz, memsz, _ = \
            _PHDR.unpack_from(data, phoff + i * _PHDR.size)
        if p_type == PT_INTERP:
            end = data.find(b"\0", off)
            interp = data[off:end].decode(errors="replace")
            raise BadProgram(f"{path}: dynamically linked (interpreter {interp}); "
                             "link it with -static")
        if p_type == PT_PHDR:
            phdr_vaddr = vaddr
        if p_type == PT_LOAD and memsz:
            if off + filesz > len(data) or filesz > memsz:
                raise BadProgram(f"{path}: truncated ELF (segment {i} past end of file)")
            loads.append(Segment(off, vaddr, filesz, memsz))
    if not loads:
        raise BadProgram(f"{path}: no loadable segments")
    return loads, phdr_vaddr
