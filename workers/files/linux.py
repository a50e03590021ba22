"""What Linux's file system calls write into a program's memory, packed
as x86-64 Linux lays it out, and the flags they take."""
from __future__ import annotations

import os
import stat
import struct

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW, AT_REMOVEDIR, AT_EACCESS = 0x100, 0x200, 0x200
AT_SYMLINK_FOLLOW, AT_EMPTY_PATH = 0x400, 0x1000
O_PATH, O_TMPFILE = 0o10000000, 0o20200000
# The flags of an open that the host's open is given as they are.
OPEN_PASSED = (os.O_ACCMODE | os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_APPEND | os.O_NONBLOCK
               | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_DSYNC | os.O_SYNC | O_PATH)
# The status flags F_GETFL reports and F_SETFL may change (Linux's).
SETFL_MASK = os.O_APPEND | os.O_NONBLOCK | os.O_DIRECT | os.O_NOATIME | 0o20000  # O_ASYNC
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2

# struct stat: dev, ino, nlink, mode, uid, gid, (pad), rdev, size,
# blksize, blocks, atime, mtime, ctime (sec, nsec each), 3 reserved
STAT = struct.Struct("<QQQIII4xQqqq6q24x")
DIRENT = struct.Struct("<QqHB")     # d_ino, d_off, d_reclen, d_type; then the name
STATFS = struct.Struct("<15q")      # struct statfs: 120 bytes
DT = {stat.S_IFDIR: 4, stat.S_IFREG: 8, stat.S_IFLNK: 10, stat.S_IFCHR: 2,
      stat.S_IFIFO: 1, stat.S_IFSOCK: 12, stat.S_IFBLK: 6}


def oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


_libc = None


def syscall(nr: int, *args) -> int:
    """A system call Python's os module lacks (openat2, renameat2,
    utimensat with UTIME_OMIT); ctypes is loaded at the first.

    :raise OSError: it failed.
    """
    global _libc
    import ctypes
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    r = _libc.syscall(nr, *args)
    if r < 0:
        raise oserror(ctypes.get_errno())
    return r


def pack_stat(st: os.stat_result) -> bytes:
    return STAT.pack(st.st_dev, st.st_ino, st.st_nlink, st.st_mode, st.st_uid, st.st_gid,
                     st.st_rdev, st.st_size, st.st_blksize, st.st_blocks,
                     *_ts(st.st_atime_ns), *_ts(st.st_mtime_ns), *_ts(st.st_ctime_ns))


def device_stat(rdev: int, ino: int) -> bytes:
    """What stat says of a device unifork provides (crw-rw-rw-, as Linux's)."""
    return STAT.pack(0x6, ino, 1, stat.S_IFCHR | 0o666, 0, 0, rdev, 0, 4096, 0, *(0,) * 6)


def dir_stat(ino: int) -> bytes:
    """A directory of specials (/dev, /proc/self): dr-xr-xr-x."""
    return STAT.pack(0x5, ino, 2, stat.S_IFDIR | 0o555, 0, 0, 0, 0, 4096, 0, *(0,) * 6)


def link_stat(ino: int, size: int) -> bytes:
    return STAT.pack(0x5, ino, 1, stat.S_IFLNK | 0o777, 0, 0, 0, size, 4096, 0, *(0,) * 6)


def _ts(ns: int) -> tuple[int, int]:
    return ns // 1_000_000_000, ns % 1_000_000_000


# struct statx: mask, blksize, attributes, nlink, uid, gid, mode, (pad),
# ino, size, blocks, attributes_mask, atime, btime, ctime, mtime
# (sec, nsec, pad each), rdev major/minor, dev major/minor; 256 bytes
STATX = struct.Struct("<IIQIIIH2xQQQQ" + "qI4x" * 4 + "IIII112x")
STATX_BASIC = 0x7FF


def pack_statx(raw: bytes) -> bytes:
    """A struct statx from a packed struct stat (what both know)."""
    (dev, ino, nlink, mode, uid, gid, rdev, size, blksize, blocks,
     a_s, a_n, m_s, m_n, c_s, c_n) = STAT.unpack(raw)
    return STATX.pack(STATX_BASIC, blksize, 0, nlink, uid, gid, mode, ino, size, blocks, 0,
                      a_s, a_n, 0, 0, c_s, c_n, m_s, m_n,
                      os.major(rdev), os.minor(rdev), os.major(dev), os.minor(dev))


def pack_statfs(st: os.statvfs_result) -> bytes:
    return STATFS.pack(0x01021994, st.f_bsize, st.f_blocks, st.f_bfree, st.f_bavail,
                       st.f_files, st.f_ffree, 0, st.f_namemax, st.f_frsize, st.f_flag,
                       0, 0, 0, 0)


def dirent(ino: int, off: int, dtype: int, name: bytes) -> bytes:
    """One struct linux_dirent64, padded to 8 bytes."""
    size = (DIRENT.size + len(name) + 1 + 7) & ~7
    return DIRENT.pack(ino, off, size, dtype) + name + b"\0" * (size - DIRENT.size - len(name))
