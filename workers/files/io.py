"""The FILE requests on descriptors: read and write (the host reads and
writes the program's buffers in place, in its RAM file), seek, stat,
directory listings, truncation, sync, status flags and locks."""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct

from workers.files import linux
from workers.files.descriptions import Description
from workers.files.linux import oserror
from workers.files.tree import SPECIALS
from workers.vm import guestmem

TYPE_CHECKING = False    # (not typing's: it takes longer to import than QEMU to start)
if TYPE_CHECKING:
    from workers.files.calls import Files
    from workers.vm.machine import VM

MAX_RW = 0x7FFFF000                 # Linux's most bytes in one read or write
F_OFD_GETLK, F_OFD_SETLK = 36, 37
FLOCK = struct.Struct("<hh4xqqi4x")  # struct flock: type, whence, start, len, pid
FIONREAD, TCGETS, TIOCGWINSZ = 0x541B, 0x5401, 0x5413


def _file(files: Files, pid: int, h: int) -> Description:
    d = files.open.get(pid, h)
    if d.is_dir:
        raise oserror(errno.EISDIR)
    return d


def sys_close(files: Files, pid: int, vm: VM, h: int, *_) -> int:
    d = files.open.get(pid, h)
    files.unlock(pid, d)            # POSIX: a close lets go of the process's locks
    files.open.release(pid, h)
    return 0


def sys_read(files: Files, pid: int, vm: VM, h: int, buf: int, n: int, *_) -> int:
    d = _file(files, pid, h)
    return os.readv(d.fd, [guestmem.span(vm, buf, min(n, MAX_RW))])


def sys_write(files: Files, pid: int, vm: VM, h: int, buf: int, n: int, *_) -> int:
    d = _file(files, pid, h)
    n = files.write_room(pid, min(n, MAX_RW))
    return files.wrote(os.write(d.fd, guestmem.span(vm, buf, n)))


def sys_pread64(files: Files, pid: int, vm: VM, h: int, buf: int, n: int, off: int,
                *_) -> int:
    d = _file(files, pid, h)
    if off < 0:
        raise oserror(errno.EINVAL)
    return os.preadv(d.fd, [guestmem.span(vm, buf, min(n, MAX_RW))], off)


def sys_pwrite64(files: Files, pid: int, vm: VM, h: int, buf: int, n: int, off: int,
                 *_) -> int:
    d = _file(files, pid, h)
    if off < 0:
        raise oserror(errno.EINVAL)
    n = files.write_room(pid, min(n, MAX_RW))
    return files.wrote(os.pwrite(d.fd, guestmem.span(vm, buf, n), off))


def sys_readv(files: Files, pid: int, vm: VM, h: int, iov: int, cnt: int, *_) -> int:
    bufs = guestmem.iovecs(vm, iov, cnt)
    return os.readv(_file(files, pid, h).fd, bufs) if bufs else 0


def sys_writev(files: Files, pid: int, vm: VM, h: int, iov: int, cnt: int, *_) -> int:
    bufs = _room(files, pid, guestmem.iovecs(vm, iov, cnt))
    return files.wrote(os.writev(_file(files, pid, h).fd, bufs)) if bufs else 0


def _room(files: Files, pid: int, bufs: list[memoryview]) -> list[memoryview]:
    """The buffers of a vectored write, cut to what the job may write."""
    left = files.write_room(pid, sum(len(b) for b in bufs))
    out = []
    for b in bufs:
        if left <= 0:
            break
        out.append(b[:left])
        left -= len(out[-1])
    return out


def sys_preadv(files: Files, pid: int, vm: VM, h: int, iov: int, cnt: int, off: int,
               *_) -> int:
    bufs = guestmem.iovecs(vm, iov, cnt)
    if off < 0:
        raise oserror(errno.EINVAL)
    return os.preadv(_file(files, pid, h).fd, bufs, off) if bufs else 0


def sys_pwritev(files: Files, pid: int, vm: VM, h: int, iov: int, cnt: int, off: int,
                *_) -> int:
    bufs = _room(files, pid, guestmem.iovecs(vm, iov, cnt))
    if off < 0:
        raise oserror(errno.EINVAL)
    return files.wrote(os.pwritev(_file(files, pid, h).fd, bufs, off)) if bufs else 0


def sys_lseek(files: Files, pid: int, vm: VM, h: int, off: int, whence: int, *_) -> int:
    d = files.open.get(pid, h)
    if d.is_dir:                        # a directory's offset: entries handed out
        if whence != os.SEEK_SET or off < 0:
            raise oserror(errno.EINVAL)
        d.served = off
        if off == 0:
            d.listing = None            # rewinddir: read it afresh
        return off
    return os.lseek(d.fd, off, whence)


def stat_of(files: Files, pid: int, d: Description) -> bytes:
    if d.special is not None:
        return linux.dir_stat(0x100 + list(SPECIALS).index(d.path))
    return linux.pack_stat(os.fstat(d.fd))


def sys_fstat(files: Files, pid: int, vm: VM, h: int, stp: int, *_) -> int:
    guestmem.span(vm, stp, linux.STAT.size)[:] = stat_of(files, pid, files.open.get(pid, h))
    return 0


def sys_getdents64(files: Files, pid: int, vm: VM, h: int, buf: int, n: int, *_) -> int:
    d = files.open.get(pid, h)
    if not d.is_dir:
        raise oserror(errno.ENOTDIR)
    if d.listing is None:
        d.listing = _listing(files, d)
    out, at = bytearray(), d.served
    while at < len(d.listing):
        ino, dtype, name = d.listing[at]
        rec = linux.dirent(ino, at + 1, dtype, name)
        if len(out) + len(rec) > n:
            if not out:
                raise oserror(errno.EINVAL)
            break
        out += rec
        at += 1
    guestmem.span(vm, buf, len(out))[:] = out
    d.served = at
    return len(out)


def _listing(files: Files, d: Description) -> list[tuple[int, int, bytes]]:
    """The entries of directory (d): its own, then the volumes and the
    specials mounted in it (which hide entries of the same names)."""
    over = {k[-1]: k for k in (*files.tree.mounts, *SPECIALS)
            if len(k) == len(d.path) + 1 and k[:-1] == d.path}
    out = [(1, 4, b"."), (1, 4, b"..")]
    if d.fd >= 0:
        with os.scandir(d.fd) as it:
            for e in it:
                name = os.fsencode(e.name)
                if name not in over:
                    out.append((e.inode(), _dtype(e), name))
    for name, key in sorted(over.items()):
        sp = SPECIALS.get(key)
        dtype = 4 if sp is None or sp.kind == "dir" else 2 if sp.kind == "dev" else 10
        out.append((0x100 + (list(SPECIALS).index(key) if sp else 0), dtype, name))
    return out


def _dtype(e: os.DirEntry) -> int:
    if e.is_symlink():
        return 10
    if e.is_dir(follow_symlinks=False):
        return 4
    if e.is_file(follow_symlinks=False):
        return 8
    try:
        return linux.DT.get(stat.S_IFMT(e.stat(follow_symlinks=False).st_mode), 0)
    except OSError:
        return 0


def sys_ftruncate(files: Files, pid: int, vm: VM, h: int, length: int, *_) -> int:
    d = _file(files, pid, h)
    if length < 0:
        raise oserror(errno.EINVAL)
    os.ftruncate(d.fd, length)
    return 0


def sys_fsync(files: Files, pid: int, vm: VM, h: int, *_) -> int:
    d = files.open.get(pid, h)
    if d.fd >= 0:
        os.fsync(d.fd)
    return 0


def sys_fcntl(files: Files, pid: int, vm: VM, h: int, cmd: int, arg: int, *_) -> int:
    d = files.open.get(pid, h)
    if cmd == fcntl.F_GETFL:
        return d.flags
    if cmd == fcntl.F_SETFL:
        d.flags = (d.flags & ~linux.SETFL_MASK) | (arg & linux.SETFL_MASK)
        if d.fd >= 0 and not d.flags & linux.O_PATH:    # O_APPEND is the host's to apply
            host = fcntl.fcntl(d.fd, fcntl.F_GETFL)
            fcntl.fcntl(d.fd, fcntl.F_SETFL, (host & ~os.O_APPEND) | (arg & os.O_APPEND))
        return 0
    if cmd in (fcntl.F_SETLK, fcntl.F_GETLK):
        return _record_lock(files, pid, vm, d, cmd, arg)
    raise oserror(errno.EINVAL)


def _record_lock(files: Files, pid: int, vm: VM, d: Description, cmd: int, arg: int) -> int:
    """A POSIX record lock.  Each process's locks on a file are open file
    description locks on a descriptor of the file that only it uses
    (Files.lock_fd): so they conflict between processes and not within
    one, a child does not inherit them, and they go when the process
    closes the file or ends, as POSIX says of record locks."""
    if d.fd < 0 or d.is_dir:
        raise oserror(errno.EBADF if d.fd < 0 else errno.EINVAL)
    raw = guestmem.span(vm, arg, FLOCK.size)
    ltype, whence, start, length, _ = FLOCK.unpack(raw)
    req = FLOCK.pack(ltype, whence, start, length, 0)
    if cmd == fcntl.F_SETLK:
        fcntl.fcntl(files.lock_fd(pid, d), F_OFD_SETLK, req)
        return 0
    mine = files.lock_fd(pid, d, make=False)
    got = fcntl.fcntl(mine if mine is not None else d.fd, F_OFD_GETLK, req)
    ltype, whence, start, length, _ = FLOCK.unpack(got)
    owner = files.lock_owner(pid, d) if ltype != fcntl.F_UNLCK else 0
    raw[:] = FLOCK.pack(ltype, whence, start, length, owner)
    return 0


def sys_flock(files: Files, pid: int, vm: VM, h: int, op: int, *_) -> int:
    d = files.open.get(pid, h)
    if d.fd < 0:
        raise oserror(errno.EINVAL)
    fcntl.flock(d.fd, op)
    return 0


def sys_ioctl(files: Files, pid: int, vm: VM, h: int, req: int, arg: int, *_) -> int:
    d = files.open.get(pid, h)
    if req == FIONREAD and not d.is_dir:
        left = max(0, os.fstat(d.fd).st_size - os.lseek(d.fd, 0, os.SEEK_CUR))
        guestmem.span(vm, arg, 4)[:] = struct.pack("<i", min(left, 0x7FFFFFFF))
        return 0
    raise oserror(errno.ENOTTY)


def sys_fchmod(files: Files, pid: int, vm: VM, h: int, mode: int, *_) -> int:
    d = files.open.get(pid, h)
    if d.vol is None:
        raise oserror(errno.EPERM)
    if d.vol.ro:
        raise oserror(errno.EROFS)
    os.chmod(f"/proc/self/fd/{d.fd}", mode & 0o7777)
    return 0


def sys_fchown(files: Files, pid: int, vm: VM, h: int, uid: int, gid: int, *_) -> int:
    d = files.open.get(pid, h)
    if d.vol is None:
        raise oserror(errno.EPERM)
    if d.vol.ro:
        raise oserror(errno.EROFS)
    os.chown(f"/proc/self/fd/{d.fd}", uid, gid)
    return 0


def sys_fchdir(files: Files, pid: int, vm: VM, h: int, *_) -> int:
    d = files.open.get(pid, h)
    if not d.is_dir:
        raise oserror(errno.ENOTDIR)
    files.proc(pid).cwd = d.path
    return 0


def sys_fstatfs(files: Files, pid: int, vm: VM, h: int, buf: int, *_) -> int:
    d = files.open.get(pid, h)
    raw = linux.pack_statfs(os.fstatvfs(d.fd)) if d.fd >= 0 else bytes(linux.STATFS.size)
    guestmem.span(vm, buf, len(raw))[:] = raw
    return 0


CALLS = {"close": sys_close, "read": sys_read, "write": sys_write, "pread64": sys_pread64,
         "pwrite64": sys_pwrite64, "readv": sys_readv, "writev": sys_writev,
         "preadv": sys_preadv, "pwritev": sys_pwritev, "lseek": sys_lseek,
         "fstat": sys_fstat, "getdents64": sys_getdents64, "ftruncate": sys_ftruncate,
         "fsync": sys_fsync, "fdatasync": sys_fsync, "fcntl": sys_fcntl, "flock": sys_flock,
         "ioctl": sys_ioctl, "fchmod": sys_fchmod, "fchown": sys_fchown, "fchdir": sys_fchdir,
         "fstatfs": sys_fstatfs}
