"""Programs found in a job's tree, for execve and for the job's first
process: the file a path names, checked as Linux's execve checks it, read,
and parsed; a "#!" script becomes its interpreter with the script's path
among its arguments, as Linux's binfmt_script does.

Each failure is the errno Linux gives (ENOENT, EACCES, ENOEXEC, ELOOP)
and a line that says why (ExecError).
"""
from __future__ import annotations

import errno
import os
import stat

from workers import abi
from workers.errors import BadProgram, ExecError
from workers.files.linux import AT_FDCWD
from workers.files.tree import Place, Tree
from workers.vm import elf

TYPE_CHECKING = False    # (not typing's: it takes longer to import than QEMU to start)
if TYPE_CHECKING:
    from workers.files.calls import Files

MAX_SCRIPTS = 4                 # Linux's nesting of #! interpreters
MAX_SIZE = 1 << 30
_parsed: dict[tuple, elf.Program] = {}     # (dev, ino, mtime, size, ram limit) -> Program


class Found:
    """A program to run: (prog), its path as the guest names it (exe), its
    host path (host), whether it is in the job's tree, the arguments (argv)
    it gets (a script's: its interpreter's), and (key) a name of its file
    as it is now, for the hosts that keep programs they were sent."""

    def __init__(self, prog: elf.Program, exe: bytes, host: str, argv: list[bytes],
                 in_tree: bool = True, key: str = "") -> None:
        self.prog, self.exe, self.host, self.argv = prog, exe, host, argv
        self.in_tree, self.key = in_tree, key


def find_host(host: str, argv: list[bytes], ram_limit: int) -> Found:
    """The program at (host) on the host, outside the tree: the one given
    to `unifork run` (which it may run again, as /proc/self/exe)."""
    try:
        fd = os.open(host, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            data = _read_all(fd, st.st_size)
        finally:
            os.close(fd)
    except OSError as err:
        raise ExecError(err.errno, f"{host}: {err.strerror}") from err
    exe = os.fsencode(host)
    return Found(_parse(exe, data, st, ram_limit), exe, host, argv, in_tree=False,
                 key=_key(st))


def find(tree: Tree, walk, path: bytes, argv: list[bytes], ram_limit: int) -> Found:
    """The program at (path) with arguments (argv); (walk)(path, first)
    resolves a path in the tree as the process sees it: the program's
    (first, for execveat's directory) or a #! interpreter's.

    :raise ExecError: it cannot be run.
    """
    for depth in range(MAX_SCRIPTS + 1):
        exe, host, data, st = _read(lambda q: walk(q, depth == 0), path)
        if not data.startswith(b"#!"):
            return Found(_parse(exe, data, st, ram_limit), exe, host, argv, key=_key(st))
        interp, arg = _shebang(exe, data)
        argv = [interp, *([arg] if arg else []), path, *argv[1:]]
        path = interp
    raise ExecError(errno.ELOOP, f"{path.decode(errors='replace')}: more than "
                    f"{MAX_SCRIPTS} levels of #! interpreters")


def _read(walk, path: bytes) -> tuple[bytes, str, bytes, os.stat_result]:
    shown = path.decode(errors="replace")
    try:
        place: Place = walk(path)
    except OSError as err:
        raise ExecError(err.errno, f"{shown}: {err.strerror}") from err
    try:
        st = place.st
        if place.special is not None or st is None:
            raise ExecError(errno.EACCES if place.special else errno.ENOENT,
                            f"{shown}: " + ("not a program" if place.special else
                                            "no such file in the job's tree"))
        if not stat.S_ISREG(st.st_mode):
            raise ExecError(errno.EACCES, f"{shown}: not a regular file")
        if not st.st_mode & 0o111:
            raise ExecError(errno.EACCES, f"{shown}: not executable (mode "
                            f"{stat.S_IMODE(st.st_mode):o})")
        if st.st_size > MAX_SIZE:
            raise ExecError(errno.E2BIG, f"{shown}: larger than {MAX_SIZE >> 20} MiB")
        fd = os.open(place.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                     dir_fd=place.dirfd)
        try:
            data = _read_all(fd, st.st_size)
        finally:
            os.close(fd)
        exe = b"/" + b"/".join(place.guest)
        host = os.path.join(place.vol.host, *map(os.fsdecode, place.guest[len(place.vol.guest):]))
        return exe, host, data, st
    finally:
        place.release()


def _key(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"


def _read_all(fd: int, size: int) -> bytes:
    chunks, left = [], size
    while left > 0:
        b = os.read(fd, left)
        if not b:
            break
        chunks.append(b)
        left -= len(b)
    return b"".join(chunks)


def _shebang(exe: bytes, data: bytes) -> tuple[bytes, bytes]:
    """The interpreter and its one optional argument of a #! line."""
    line = data[2:data.find(b"\n") if b"\n" in data[:256] else 256].strip(b" \t")
    if not line:
        raise ExecError(errno.ENOEXEC, f"{exe.decode(errors='replace')}: a #! line "
                        "without an interpreter")
    interp, _, arg = line.replace(b"\t", b" ").partition(b" ")
    return interp, arg.strip(b" ")


def parse_cached(key: str, exe: bytes, data: bytes, ram_limit: int) -> elf.Program:
    """(data) parsed, or the program parsed before under (key)."""
    prog = _parsed.get((key, ram_limit))
    if prog is None:
        prog = _parse_data(exe, data, ram_limit)
        _remember((key, ram_limit), prog)
    return prog


def _parse(exe: bytes, data: bytes, st: os.stat_result, ram_limit: int) -> elf.Program:
    key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size, ram_limit)
    prog = _parsed.get(key)
    if prog is not None:
        return prog
    prog = _parse_data(exe, data, ram_limit)
    _remember(key, prog)
    return prog


def _remember(key: tuple, prog: elf.Program) -> None:
    if len(_parsed) > 64:
        _parsed.clear()
    _parsed[key] = prog


def _parse_data(exe: bytes, data: bytes, ram_limit: int) -> elf.Program:
    try:
        return elf.parse(os.fsdecode(exe), data, abi.PIE_BASE, ram_limit)
    except BadProgram as err:
        dynamic = "dynamically linked" in str(err)
        raise ExecError(errno.ENOENT if dynamic else errno.ENOEXEC, str(err)) from err


def find_for(files: Files, pid: int, path: bytes, argv: list[bytes], dirh: int,
             ram_limit: int) -> Found:
    """What (pid)'s execveat(dirh, path, argv) runs, as the process sees
    the tree (its working directory; dirh a handle or AT_FDCWD; an empty
    path: the file of handle dirh itself).

    :raise ExecError: it cannot be run.
    """
    pf = files.proc(pid)
    if path == b"/proc/self/exe" and pf.exe is None:
        return find_host(pf.exe_host, argv, ram_limit)
    if not path:                        # execveat(fd, "", AT_EMPTY_PATH): fexecve
        try:
            d = files.open.get(pid, dirh)
        except OSError as err:
            raise ExecError(err.errno, "fexecve of a descriptor that is not open") from err
        if d.special is not None or d.vol is None:
            if d.path == (b"proc", b"self", b"exe") and pf.exe is None:
                return find_host(pf.exe_host, argv, ram_limit)
            raise ExecError(errno.EACCES, "fexecve of a file that is not a program")
        path, dirh = b"/" + b"/".join(d.path), AT_FDCWD
    return find(files.tree, lambda q, first: files.walk_path(
        pid, dirh if first else AT_FDCWD, q, True), path, argv, ram_limit)
