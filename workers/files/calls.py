"""The FILE requests of a job's processes (unifork_abi.h, "Files"): the
system calls on paths, here, and on descriptors (io.py), each with
Linux's semantics and error numbers.

Files is a job's file service on this host: its tree, the open file
descriptions, and each process's working directory and program.  call()
answers one request; every failure is an errno for the guest, never an
exception for the worker: a bad pointer is EFAULT, an error the host's
system call gave is passed on as it is (the host's errno numbers are
Linux's), and anything unexpected is EIO, said once.
"""
from __future__ import annotations

import errno
import os
import stat
import threading

from workers import abi
from workers.files import changes, io, linux, opens, programs
from workers.files.descriptions import Description, Descriptions
from workers.files.linux import oserror
from workers.files.tree import SPECIALS, Place, Tree
from workers.vm import guestmem

TYPE_CHECKING = False    # (not typing's: it takes longer to import than QEMU to start)
if TYPE_CHECKING:
    from typing import Callable

    from workers.vm.machine import VM

NR = {"read": 0, "write": 1, "close": 3, "fstat": 5, "lseek": 8, "ioctl": 16,
      "pread64": 17, "pwrite64": 18, "readv": 19, "writev": 20, "fcntl": 72, "flock": 73,
      "fsync": 74, "fdatasync": 75, "truncate": 76, "ftruncate": 77, "getcwd": 79,
      "chdir": 80, "fchdir": 81, "fchmod": 91, "fchown": 93, "statfs": 137, "fstatfs": 138,
      "getdents64": 217, "openat": 257, "mkdirat": 258, "fchownat": 260, "newfstatat": 262, "unlinkat": 263,
      "linkat": 265, "symlinkat": 266, "readlinkat": 267, "fchmodat": 268,
      "utimensat": 280, "preadv": 295, "pwritev": 296, "renameat2": 316, "statx": 332,
      "faccessat2": 439}


class ProcFiles:
    """A process's place in the tree: its working directory, and its
    program (exe: its guest path, None when it is not in the tree; the
    host's path of it, exe_host)."""

    __slots__ = ("cwd", "exe", "exe_host")

    def __init__(self, cwd: tuple[bytes, ...] = (), exe: bytes | None = None,
                 exe_host: str = "") -> None:
        self.cwd, self.exe, self.exe_host = cwd, exe, exe_host


class Files:
    """The file service of one job on this host; (say)(pid, msg) prints
    a line about a process (once for each message), set when the job's
    stderr is there (until then, our own)."""

    def __init__(self, tree: Tree, say: Callable[[int, str], None] | None = None,
                 max_open: int = 4096,
                 max_write: int = 0) -> None:
        self.tree = tree
        self.tell, self._said = say or _to_stderr, set()
        self.open = Descriptions(max_open)
        self.procs: dict[int, ProcFiles] = {}
        self.max_write = max_write      # bytes the job may write (0: no limit)
        self.written = 0
        # Held by each call: processes on other hosts are served on the
        # file server's threads (server.py), those here on the supervisor's.
        self.lock = threading.Lock()
        # (pid, dev, ino) -> a descriptor of that file for (pid)'s record locks
        self.lock_fds: dict[tuple[int, int, int], int] = {}

    def lock_fd(self, pid: int, d: Description, make: bool = True) -> int | None:
        """The descriptor that holds (pid)'s record locks on (d)'s file."""
        st = os.fstat(d.fd)
        key = (pid, st.st_dev, st.st_ino)
        fd = self.lock_fds.get(key)
        if fd is None and make:
            fd = self.lock_fds[key] = os.open(f"/proc/self/fd/{d.fd}",
                                              (d.flags & os.O_ACCMODE) | os.O_CLOEXEC)
        return fd

    def lock_owner(self, pid: int, d: Description) -> int:
        """Who holds a lock on (d)'s file, if one process (else -1)."""
        st = os.fstat(d.fd)
        others = {p for p, dev, ino in self.lock_fds if (dev, ino) == (st.st_dev, st.st_ino)
                  and p != pid}
        return others.pop() if len(others) == 1 else -1

    def unlock(self, pid: int, d: Description) -> None:
        """(pid) closed (d): its record locks on the file go."""
        if d.fd >= 0 and self.lock_fds:
            st = os.fstat(d.fd)
            fd = self.lock_fds.pop((pid, st.st_dev, st.st_ino), None)
            if fd is not None:
                os.close(fd)

    def say(self, pid: int, msg: str) -> None:
        """A line about (pid) on the job's stderr, once for each message."""
        if msg not in self._said:
            self._said.add(msg)
            self.tell(pid, msg)

    def hold(self, pid: int, d: Description) -> int:
        """(pid) holds the new open (d): its handle.

        :raise OSError: EMFILE past the job's limit (d is closed).
        """
        try:
            return self.open.add(pid, d)
        except OSError:
            self.say(pid, f"the job holds its {self.open.limit} open files "
                     "(UNIFORK_FILES_MAX_OPEN): EMFILE")
            raise

    def write_room(self, pid: int, n: int) -> int:
        """How many of (n) bytes (pid) may write now, counted as written.

        :raise OSError: EDQUOT when the job has written all it may.
        """
        if not self.max_write:
            return n
        room = self.max_write - self.written
        if room <= 0 and n > 0:
            self.say(pid, f"the job has written its {self.max_write} bytes "
                     "(UNIFORK_FILES_MAX_WRITE): EDQUOT")
            raise oserror(errno.EDQUOT)
        return min(n, room)

    def wrote(self, n: int) -> int:
        self.written += max(n, 0)
        return n

    def close(self) -> None:
        for fd in self.lock_fds.values():
            os.close(fd)
        self.lock_fds.clear()
        self.open.close()
        self.tree.close()

    # -- processes -------------------------------------------------------------
    def start(self, pid: int, cwd: bytes, exe: bytes | None, exe_host: str) -> None:
        self.procs[pid] = ProcFiles(_components(cwd), exe, exe_host)

    def fork(self, parent: int, child: int, here: bool = False) -> None:
        """(child) holds what (parent) holds, and starts where it is; told
        by the parent's host before the child can run ((here): on this
        host, which matters to RemoteFiles only)."""
        with self.lock:
            self.open.fork(parent, child)
            pf = self.procs.get(parent, ProcFiles())
            self.procs[child] = ProcFiles(pf.cwd, pf.exe, pf.exe_host)

    def end(self, pid: int) -> None:
        with self.lock:
            self.open.drop(pid)
            self.procs.pop(pid, None)
            for key in [k for k in self.lock_fds if k[0] == pid]:
                os.close(self.lock_fds.pop(key))

    def find_program(self, pid: int, path: bytes, argv: list[bytes], dirh: int, limit: int):
        """What (pid)'s execve of (path) runs (programs.find_for)."""
        with self.lock:
            return programs.find_for(self, pid, path, argv, dirh, limit)

    def exec_done(self, pid: int, found) -> None:
        """(pid) runs (found) now: /proc/self/exe names it."""
        with self.lock:
            pf = self.proc(pid)
            pf.exe, pf.exe_host = (found.exe if found.in_tree else None), found.host

    def proc(self, pid: int) -> ProcFiles:
        return self.procs.setdefault(pid, ProcFiles())

    # -- requests --------------------------------------------------------------
    def call(self, pid: int, vm: VM, nr: int) -> tuple[int, int]:
        """Answer (pid)'s FILE request for system call (nr): (ret, val0)."""
        return self.call_with(pid, vm, nr, abi.CTL.get(vm.mem, abi.CTL_ADDR, "sysarg"))

    def call_with(self, pid: int, vm, nr: int, args) -> tuple[int, int]:
        """call(), with the arguments given (vm: the guest's memory, or a
        copy of what the call needs of it, server.py)."""
        fn = _TABLE.get(nr)
        if fn is None:
            self.say(pid, f"file system call {nr} is not served: ENOSYS")
            return -errno.ENOSYS, 0
        try:
            with self.lock:
                r = fn(self, pid, vm, *args)
        except OSError as err:
            return -(err.errno or errno.EIO), 0
        except ValueError:
            return -errno.EFAULT, 0
        except OverflowError:
            return -errno.ENAMETOOLONG, 0
        except Exception as err:        # noqa: BLE001 - a guest must never break the worker
            self.say(pid, f"file system call {nr} failed on the host: {err!r}: EIO")
            return -errno.EIO, 0
        return r if isinstance(r, tuple) else (r, 0)

    # -- walks -----------------------------------------------------------------
    def walk(self, pid: int, vm: VM, dirh: int, path_p: int, follow: bool) -> Place:
        """The place of the path at (path_p), relative to handle (dirh)."""
        path = guestmem.read_str(vm, path_p, 4096)
        return self.walk_path(pid, dirh, path, follow)

    def walk_path(self, pid: int, dirh: int, path: bytes, follow: bool) -> Place:
        pf = self.proc(pid)
        if path.startswith(b"/"):
            start: tuple[bytes, ...] = ()
        elif dirh == linux.AT_FDCWD:
            start = pf.cwd
        else:
            d = self.open.get(pid, dirh)
            if not d.is_dir:
                raise oserror(errno.ENOTDIR)
            start = d.path
        links = {"cwd": b"/" + b"/".join(pf.cwd)}
        if pf.exe is not None:
            links["exe"] = pf.exe
        return self.tree.walk(start, path, follow, links)

    def special_stat(self, pid: int, place: Place) -> bytes:
        sp = place.special
        ino = 0x100 + list(SPECIALS).index(place.guest) if place.guest in SPECIALS else 0x100
        if sp.kind == "dir":
            return linux.dir_stat(ino)
        if sp.kind == "dev":
            return linux.device_stat(sp.rdev, ino)
        if sp.target == "exe":          # the program outside the tree: the file itself
            return linux.pack_stat(os.stat(self.proc(pid).exe_host))
        return linux.link_stat(ino, len(self.link_target(pid, place)))

    def link_target(self, pid: int, place: Place) -> bytes:
        pf, sp = self.proc(pid), place.special
        if sp.target == "exe":
            return pf.exe if pf.exe is not None else os.fsencode(pf.exe_host)
        if sp.target == "cwd":
            return b"/" + b"/".join(pf.cwd)
        return os.fsencode(sp.target)


def _to_stderr(pid: int, msg: str) -> None:
    import sys
    print(f"unifork: pid {pid}: {msg}", file=sys.stderr)


def _components(path: bytes) -> tuple[bytes, ...]:
    return tuple(c for c in path.split(b"/") if c and c != b".")


# -- stat, access, links ---------------------------------------------------------
def sys_newfstatat(files: Files, pid: int, vm: VM, dirh: int, path_p: int, stp: int,
                   flags: int, *_) -> int:
    guestmem.span(vm, stp, linux.STAT.size)[:] = _stat_at(files, pid, vm, dirh, path_p, flags)
    return 0


def _stat_at(files: Files, pid: int, vm: VM, dirh: int, path_p: int, flags: int) -> bytes:
    if flags & linux.AT_EMPTY_PATH and guestmem.read_str(vm, path_p, 4096) == b"":
        return io.stat_of(files, pid, files.open.get(pid, dirh))
    place = files.walk(pid, vm, dirh, path_p, not flags & linux.AT_SYMLINK_NOFOLLOW)
    try:
        if place.special is not None:
            return files.special_stat(pid, place)
        if place.st is None:
            raise oserror(errno.ENOENT)
        if place.must_dir and not stat.S_ISDIR(place.st.st_mode):
            raise oserror(errno.ENOTDIR)
        return linux.pack_stat(place.st)
    finally:
        place.release()


def sys_statx(files: Files, pid: int, vm: VM, dirh: int, path_p: int, flags: int,
              mask: int, stxp: int, *_) -> int:
    raw = _stat_at(files, pid, vm, dirh, path_p, flags)
    guestmem.span(vm, stxp, linux.STATX.size)[:] = linux.pack_statx(raw)
    return 0


def sys_faccessat2(files: Files, pid: int, vm: VM, dirh: int, path_p: int, mode: int,
                   flags: int, *_) -> int:
    place = files.walk(pid, vm, dirh, path_p, not flags & linux.AT_SYMLINK_NOFOLLOW)
    try:
        if place.special is not None:
            return -errno.EACCES if mode & os.X_OK and place.special.kind == "dev" else 0
        if place.st is None:
            raise oserror(errno.ENOENT)
        if mode & os.W_OK and place.vol.ro:
            raise oserror(errno.EROFS)
        ok = os.access(place.name, mode, dir_fd=place.dirfd, follow_symlinks=False,
                       effective_ids=bool(flags & linux.AT_EACCESS))
        return 0 if ok else -errno.EACCES
    finally:
        place.release()


def sys_readlinkat(files: Files, pid: int, vm: VM, dirh: int, path_p: int, buf: int,
                   n: int, *_) -> int:
    if not path_p:                      # /proc/self/fd/N of a file here: its path
        target = b"/" + b"/".join(files.open.get(pid, dirh).path)
        guestmem.span(vm, buf, min(n, len(target)))[:] = target[:n]
        return min(n, len(target))
    place = files.walk(pid, vm, dirh, path_p, False)
    try:
        if place.special is not None:
            if place.special.kind != "link":
                raise oserror(errno.EINVAL)
            target = files.link_target(pid, place)
        elif place.st is None:
            raise oserror(errno.ENOENT)
        elif not stat.S_ISLNK(place.st.st_mode):
            raise oserror(errno.EINVAL)
        else:
            target = os.readlink(place.name, dir_fd=place.dirfd)
    finally:
        place.release()
    out = target[:n]
    guestmem.span(vm, buf, len(out))[:] = out
    return len(out)


def sys_getcwd(files: Files, pid: int, vm: VM, _h: int, buf: int, n: int, *_) -> int:
    cwd = b"/" + b"/".join(files.proc(pid).cwd) + b"\0"
    if n < len(cwd):
        raise oserror(errno.ERANGE)
    guestmem.span(vm, buf, len(cwd))[:] = cwd
    return len(cwd)


def sys_chdir(files: Files, pid: int, vm: VM, dirh: int, path_p: int, *_) -> int:
    place = files.walk(pid, vm, dirh, path_p, True)
    try:
        is_dir = (place.special.kind == "dir" if place.special is not None
                  else place.st is not None and stat.S_ISDIR(place.st.st_mode))
        if place.st is None and place.special is None:
            raise oserror(errno.ENOENT)
        if not is_dir:
            raise oserror(errno.ENOTDIR)
        files.proc(pid).cwd = place.guest
        return 0
    finally:
        place.release()


_TABLE: dict[int, Callable] = {
    NR["openat"]: opens.sys_openat, NR["newfstatat"]: sys_newfstatat, NR["statx"]: sys_statx,
    NR["faccessat2"]: sys_faccessat2, NR["readlinkat"]: sys_readlinkat,
    NR["getcwd"]: sys_getcwd, NR["chdir"]: sys_chdir,
    **{NR[name]: fn for name, fn in changes.CALLS.items()},
    **{NR[name]: fn for name, fn in io.CALLS.items()},
}
