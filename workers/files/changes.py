"""The FILE requests that change the tree: mkdir, unlink and rmdir,
rename, link, symlink, chmod, utimensat, truncate; and statfs."""
from __future__ import annotations

import errno
import os
import stat

from workers.files import linux
from workers.files.linux import oserror, syscall
from workers.files.tree import Place
from workers.vm import guestmem

TYPE_CHECKING = False    # (not typing's: it takes longer to import than QEMU to start)
if TYPE_CHECKING:
    from workers.files.calls import Files
    from workers.vm.machine import VM

_SYS_RENAMEAT2, _SYS_UTIMENSAT = 316, 280


def _at(files: Files, pid: int, vm: VM, dirh: int, path_p: int, follow: bool = False) -> Place:
    """The place of a path argument, to use in a with block."""
    return files.walk(pid, vm, dirh, path_p, follow)


def _exists(place: Place) -> None:
    if place.st is None and place.special is None:
        raise oserror(errno.ENOENT)


def sys_mkdirat(files: Files, pid: int, vm: VM, dirh: int, path_p: int, mode: int, *_) -> int:
    with _at(files, pid, vm, dirh, path_p) as place:
        if place.st is not None or place.special is not None or place.name == b".":
            raise oserror(errno.EEXIST)
        place.check_writable()
        os.mkdir(place.name, mode, dir_fd=place.dirfd)
    return 0


def sys_unlinkat(files: Files, pid: int, vm: VM, dirh: int, path_p: int, flags: int,
                 *_) -> int:
    with _at(files, pid, vm, dirh, path_p) as place:
        _exists(place)
        if place.name == b".":          # a volume's root, or the tree's
            raise oserror(errno.EBUSY)
        place.check_writable()
        if flags & linux.AT_REMOVEDIR:
            os.rmdir(place.name, dir_fd=place.dirfd)
        else:
            os.unlink(place.name, dir_fd=place.dirfd)
    return 0


def _two(files: Files, pid: int, vm: VM, oh: int, op: int, nh: int, np_: int,
         follow_old: bool = False) -> tuple[Place, Place]:
    old = files.walk(pid, vm, oh, op, follow_old)
    try:
        new = files.walk(pid, vm, nh, np_, False)
    except BaseException:
        old.release()
        raise
    return old, new


def _same_volume(old: Place, new: Place) -> None:
    _exists(old)
    old.check_writable()
    new.check_writable()
    if old.vol is not new.vol:
        raise oserror(errno.EXDEV)
    if old.name == b"." or new.name == b".":
        raise oserror(errno.EBUSY)


def sys_renameat2(files: Files, pid: int, vm: VM, oh: int, op: int, nh: int, np_: int,
                  flags: int, *_) -> int:
    old, new = _two(files, pid, vm, oh, op, nh, np_)
    try:
        _same_volume(old, new)
        syscall(_SYS_RENAMEAT2, old.dirfd, old.name, new.dirfd, new.name, flags)
    finally:
        old.release()
        new.release()
    return 0


def sys_linkat(files: Files, pid: int, vm: VM, oh: int, op: int, nh: int, np_: int,
               flags: int, *_) -> int:
    old, new = _two(files, pid, vm, oh, op, nh, np_, bool(flags & linux.AT_SYMLINK_FOLLOW))
    try:
        _same_volume(old, new)
        if new.st is not None:
            raise oserror(errno.EEXIST)
        os.link(old.name, new.name, src_dir_fd=old.dirfd, dst_dir_fd=new.dirfd,
                follow_symlinks=False)
    finally:
        old.release()
        new.release()
    return 0


def sys_symlinkat(files: Files, pid: int, vm: VM, dirh: int, path_p: int, target_p: int,
                  *_) -> int:
    target = guestmem.read_str(vm, target_p, 4096)
    if not target:
        raise oserror(errno.ENOENT)
    with _at(files, pid, vm, dirh, path_p) as place:
        if place.st is not None or place.special is not None:
            raise oserror(errno.EEXIST)
        place.check_writable()
        os.symlink(target, place.name, dir_fd=place.dirfd)
    return 0


def _by_fd(place: Place) -> int:
    """An O_PATH descriptor of what (place) names, which is no symlink."""
    return os.open(place.name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=place.dirfd)


def sys_fchmodat(files: Files, pid: int, vm: VM, dirh: int, path_p: int, mode: int,
                 *_) -> int:
    with _at(files, pid, vm, dirh, path_p, True) as place:
        _exists(place)
        place.check_writable()
        fd = _by_fd(place)
        try:
            os.chmod(f"/proc/self/fd/{fd}", mode & 0o7777)
        finally:
            os.close(fd)
    return 0


def sys_fchownat(files: Files, pid: int, vm: VM, dirh: int, path_p: int, uid: int, gid: int,
                 flags: int, *_) -> int:
    with _at(files, pid, vm, dirh, path_p, not flags & linux.AT_SYMLINK_NOFOLLOW) as place:
        _exists(place)
        place.check_writable()
        os.chown(place.name, uid, gid, dir_fd=place.dirfd, follow_symlinks=False)
    return 0


def sys_utimensat(files: Files, pid: int, vm: VM, dirh: int, path_p: int, times: int,
                  flags: int, *_) -> int:
    ts = bytes(guestmem.span(vm, times, 32)) if times else None
    if not path_p:                      # futimens
        d = files.open.get(pid, dirh)
        return _utimens(d.fd, None, ts, 0)
    with _at(files, pid, vm, dirh, path_p, not flags & linux.AT_SYMLINK_NOFOLLOW) as place:
        _exists(place)
        place.check_writable()
        return _utimens(place.dirfd, place.name, ts, linux.AT_SYMLINK_NOFOLLOW)


def _utimens(fd: int, name: bytes | None, ts: bytes | None, flags: int) -> int:
    syscall(_SYS_UTIMENSAT, fd, name, ts, flags)
    return 0


def sys_truncate(files: Files, pid: int, vm: VM, dirh: int, path_p: int, length: int,
                 *_) -> int:
    if length < 0:
        raise oserror(errno.EINVAL)
    with _at(files, pid, vm, dirh, path_p, True) as place:
        _exists(place)
        if place.special is not None or stat.S_ISDIR(place.st.st_mode):
            raise oserror(errno.EISDIR)
        place.check_writable()
        fd = os.open(place.name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                     dir_fd=place.dirfd)
        try:
            os.ftruncate(fd, length)
        finally:
            os.close(fd)
    return 0


def sys_statfs(files: Files, pid: int, vm: VM, dirh: int, path_p: int, buf: int, *_) -> int:
    with _at(files, pid, vm, dirh, path_p, True) as place:
        _exists(place)
        if place.special is not None:
            raw = bytes(linux.STATFS.size)
        else:
            fd = _by_fd(place)
            try:
                raw = linux.pack_statfs(os.fstatvfs(fd))
            finally:
                os.close(fd)
    guestmem.span(vm, buf, len(raw))[:] = raw
    return 0


CALLS = {"mkdirat": sys_mkdirat, "unlinkat": sys_unlinkat, "renameat2": sys_renameat2,
         "linkat": sys_linkat, "symlinkat": sys_symlinkat, "fchmodat": sys_fchmodat,
         "utimensat": sys_utimensat, "fchownat": sys_fchownat, "truncate": sys_truncate, "statfs": sys_statfs}
