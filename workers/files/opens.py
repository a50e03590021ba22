"""The FILE request that opens: openat (open and creat come as it), of a
file or directory of the tree, of a device or directory unifork provides,
or of /proc/self/fd/N again (a description of its own)."""
from __future__ import annotations

import errno
import os
import stat

from workers import abi
from workers.files import linux
from workers.files.descriptions import Description
from workers.files.linux import oserror
from workers.files.tree import Place

TYPE_CHECKING = False    # (not typing's: it takes longer to import than QEMU to start)
if TYPE_CHECKING:
    from workers.files.calls import Files
    from workers.vm.machine import VM

NODES = {"null": abi.Node.NULL, "zero": abi.Node.ZERO, "random": abi.Node.RANDOM}


def sys_openat(files: Files, pid: int, vm: VM, dirh: int, path_p: int, flags: int,
               mode: int, *_) -> tuple[int, int]:
    follow = not flags & os.O_NOFOLLOW and not (flags & os.O_CREAT and flags & os.O_EXCL)
    if flags & linux.O_TMPFILE == linux.O_TMPFILE:
        return -errno.EOPNOTSUPP, 0
    if not path_p:                      # /proc/self/fd/N of a file here: opened afresh
        return _reopen(files, pid, files.open.get(pid, dirh), flags)
    place = files.walk(pid, vm, dirh, path_p, follow)
    try:
        if place.special is not None:
            return _open_special(files, pid, place, flags)
        return _open_host(files, pid, place, flags, mode)
    finally:
        place.release()


def _reopen(files: Files, pid: int, d: Description, flags: int) -> tuple[int, int]:
    if d.fd < 0 or d.flags & linux.O_PATH:
        raise oserror(errno.ENXIO if d.fd >= 0 else errno.EISDIR)
    if d.is_dir and flags & os.O_ACCMODE != os.O_RDONLY:
        raise oserror(errno.EISDIR)
    if flags & os.O_ACCMODE != os.O_RDONLY and d.vol is not None and d.vol.ro:
        raise oserror(errno.EROFS)
    host = (flags & (os.O_ACCMODE | os.O_APPEND | os.O_TRUNC | os.O_DIRECTORY)) | os.O_CLOEXEC
    fd = os.open(f"/proc/self/fd/{d.fd}", host)
    keep = flags & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_NOCTTY | os.O_NOFOLLOW)
    new = Description(fd, d.path, d.vol, keep | os.O_LARGEFILE, d.special, d.is_dir)
    return files.hold(pid, new), abi.Node.HOST


def _open_special(files: Files, pid: int, place: Place, flags: int) -> tuple[int, int]:
    sp = place.special
    if flags & os.O_CREAT and flags & os.O_EXCL:
        raise oserror(errno.EEXIST)
    if sp.kind == "dev":
        return 0, NODES[sp.device]
    writing = flags & os.O_ACCMODE != os.O_RDONLY
    if sp.kind == "dir":
        if writing:
            raise oserror(errno.EISDIR)
        d = Description(-1, place.guest, None, flags & ~os.O_CREAT, sp, is_dir=True)
        return files.hold(pid, d), abi.Node.HOST
    if sp.target != "exe" or flags & os.O_NOFOLLOW:
        raise oserror(errno.ELOOP)
    if writing:
        raise oserror(errno.ETXTBSY)
    fd = os.open(files.proc(pid).exe_host, os.O_RDONLY | os.O_CLOEXEC)
    return files.hold(pid, Description(fd, place.guest, None, flags)), abi.Node.HOST


def _open_host(files: Files, pid: int, place: Place, flags: int, mode: int) -> tuple[int, int]:
    st = place.st
    writing = flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC
    if st is None:
        if not flags & os.O_CREAT:
            raise oserror(errno.ENOENT)
        if place.must_dir:
            raise oserror(errno.EISDIR)
        place.check_writable()
    else:
        if flags & os.O_CREAT and flags & os.O_EXCL:
            raise oserror(errno.EEXIST)
        _check_existing(files, pid, place, st, flags, writing)
    host_flags = ((flags & linux.OPEN_PASSED) | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
                  | os.O_NONBLOCK)
    fd = os.open(place.name, host_flags, mode, dir_fd=place.dirfd)
    try:
        fst = os.fstat(fd)
        if not (stat.S_ISREG(fst.st_mode) or stat.S_ISDIR(fst.st_mode)):
            raise oserror(errno.EACCES)       # swapped for a device meanwhile
        if not flags & os.O_NONBLOCK and not flags & linux.O_PATH:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    keep = flags & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_NOCTTY | os.O_NOFOLLOW)
    d = Description(fd, place.guest, place.vol, keep | os.O_LARGEFILE,
                    is_dir=stat.S_ISDIR(fst.st_mode))
    return files.hold(pid, d), abi.Node.HOST


def _check_existing(files: Files, pid: int, place: Place, st, flags: int, writing) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise oserror(errno.ELOOP)
    if stat.S_ISDIR(st.st_mode):
        if writing or flags & os.O_CREAT:
            raise oserror(errno.EISDIR)
    elif flags & os.O_DIRECTORY or place.must_dir:
        raise oserror(errno.ENOTDIR)
    elif not stat.S_ISREG(st.st_mode):
        files.say(pid, f"open({b'/'.join(place.guest).decode(errors='replace')}): a "
                  "device, FIFO or socket of the host is never opened through the tree: EACCES")
        raise oserror(errno.EACCES)
    if writing:
        place.check_writable()
