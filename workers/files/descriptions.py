"""The open file descriptions of a job's processes, kept on the host so
that every descriptor that shares one, in one process or across a fork,
shares its offset and status flags, as POSIX says.

A guest knows a description by its handle.  Each process holds a set of
handles (each its guest refers to by one struct file); the description
closes when no process holds it.  A fork gives the child all of its
parent's; the end of a process drops all of its own.
"""
from __future__ import annotations

import os

from workers.files.tree import Special, Volume


class Description:
    """One open: the host descriptor (fd; -1 for a directory of specials),
    where it is in the guest's tree (path), its volume, the guest's status
    flags, and a directory's listing as getdents64 hands it out."""

    __slots__ = ("fd", "path", "vol", "flags", "special", "is_dir", "refs", "listing",
                 "served")

    def __init__(self, fd: int, path: tuple[bytes, ...], vol: Volume | None, flags: int,
                 special: Special | None = None, is_dir: bool = False) -> None:
        self.fd, self.path, self.vol, self.flags = fd, path, vol, flags
        self.special, self.is_dir = special, is_dir
        self.refs = 0
        self.listing: list | None = None    # [(ino, d_type, name)], at the first getdents64
        self.served = 0                     # entries handed out (the directory's offset)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Descriptions:
    """A job's open file descriptions by handle, and what each process
    holds (pid -> handles)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit                  # open descriptions in the job at once
        self.by_handle: dict[int, Description] = {}
        self.held: dict[int, set[int]] = {}
        self._next = 0

    def add(self, pid: int, d: Description) -> int:
        """(d) held by (pid): its new handle.

        :raise OSError: EMFILE when the job has (limit) open already.
        """
        if len(self.by_handle) >= self.limit:
            d.close()
            raise OSError(24, "Too many open files")
        h, self._next = self._next, self._next + 1
        self.by_handle[h] = d
        d.refs = 1
        self.held.setdefault(pid, set()).add(h)
        return h

    def get(self, pid: int, h: int) -> Description:
        """The description (pid) holds as (h).

        :raise OSError: EBADF if it holds no such handle.
        """
        if h not in self.held.get(pid, ()):
            raise OSError(9, "Bad file descriptor")
        return self.by_handle[h]

    def release(self, pid: int, h: int) -> None:
        held = self.held.get(pid, set())
        if h not in held:
            raise OSError(9, "Bad file descriptor")
        held.discard(h)
        self._unref(h)

    def _unref(self, h: int) -> None:
        d = self.by_handle[h]
        d.refs -= 1
        if d.refs <= 0:
            del self.by_handle[h]
            d.close()

    def fork(self, parent: int, child: int) -> None:
        """(child) holds what (parent) holds."""
        handles = set(self.held.get(parent, ()))
        for h in handles:
            self.by_handle[h].refs += 1
        self.held[child] = handles

    def drop(self, pid: int) -> None:
        """(pid) has ended: it holds nothing now."""
        for h in self.held.pop(pid, set()):
            self._unref(h)

    def close(self) -> None:
        for d in self.by_handle.values():
            d.close()
        self.by_handle.clear()
        self.held.clear()
