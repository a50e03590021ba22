"""A job's file tree: the volumes it was given, mounted at their guest
directories, plus what unifork provides itself (/dev, /proc/self, /tmp);
and the walk that resolves a guest's path in it.

A path never leaves the tree.  The walk goes one component at a time
from the tree's root, as Linux's does from a chroot's: ".." stops at the
root, a symlink's target is read and walked in turn (an absolute one from
the root of the tree, not of the host), and each step on the host is an
openat2() confined to its volume with RESOLVE_BENEATH and
RESOLVE_NO_SYMLINKS, so that a symlink swapped in by someone else on the
host meanwhile is refused rather than followed.  What the walk returns
names the last component by its directory's descriptor and its name, so
that the call then acts on it with an *at() system call that does not
follow it either.
"""
from __future__ import annotations

import errno
import os
import stat

from workers.errors import ConfigError, UsageError
from workers.files.linux import oserror, syscall

MAX_LINKS = 40                  # Linux's limit of symlinks in one walk
NAME_MAX, PATH_MAX = 255, 4096
DEVICES = {b"null": (0x103, "null"), b"zero": (0x105, "zero"),
           b"random": (0x108, "random"), b"urandom": (0x109, "random")}


class Volume:
    """A host directory mounted at (guest), a tuple of components;
    (scratch) if made for the job, and removed after it."""

    def __init__(self, host: str, guest: tuple[bytes, ...], ro: bool = False,
                 scratch: bool = False) -> None:
        self.host, self.guest, self.ro, self.scratch = host, guest, ro, scratch
        self.fd = -1                # the host directory, O_PATH

    def open(self) -> None:
        try:
            self.fd = os.open(self.host, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as err:
            raise UsageError(f"--volume {self.host}: {err.strerror}") from err

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.scratch:
            try:
                os.rmdir(self.host)     # as most jobs leave it: empty (shutil is slow to import)
            except OSError:
                import shutil
                shutil.rmtree(self.host, ignore_errors=True)


def scratch_dir(what: str) -> str:
    """A new private directory for a job's scratch tree or /tmp."""
    base = os.environ.get("TMPDIR", "/tmp")
    for _ in range(8):
        path = os.path.join(base, f"unifork-{what}-{os.urandom(6).hex()}")
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue
    raise ConfigError(f"cannot make a scratch directory in {base}")


def parse_volume(spec: str) -> Volume:
    """HOST_DIR:GUEST_DIR[:ro], as given to --volume."""
    parts = spec.split(":")
    ro = len(parts) == 3 and parts[2] == "ro"
    if len(parts) not in (2, 3) or (len(parts) == 3 and not ro) or not parts[0]:
        raise UsageError(f"--volume {spec}: expected HOST_DIR:GUEST_DIR[:ro]")
    guest = parts[1]
    if not guest.startswith("/"):
        raise UsageError(f"--volume {spec}: GUEST_DIR must be absolute")
    if not os.path.isdir(parts[0]):
        raise UsageError(f"--volume {spec}: {parts[0]} is not a directory")
    return Volume(os.path.abspath(parts[0]), components(os.fsencode(guest)), ro)


def size_of(path: str) -> int:
    """The bytes of the file at (path), or of all below the directory,
    symlinks not followed."""
    if not os.path.isdir(path) or os.path.islink(path):
        return os.lstat(path).st_size
    return sum(os.lstat(os.path.join(d, n)).st_size for d, _, names in os.walk(path)
               for n in names)


def components(path: bytes) -> tuple[bytes, ...]:
    """The names of an absolute path, without "." and with ".." applied."""
    out: list[bytes] = []
    for c in path.split(b"/"):
        if c == b"..":
            if out:
                out.pop()
        elif c and c != b".":
            out.append(c)
    return tuple(out)


class Special:
    """A node unifork provides: a directory of specials (kind "dir"), a
    device served by the guest ("dev": null, zero or random, its rdev), or
    a symlink ("link") to a fixed path or to what depends on the process
    (target "exe", "cwd")."""

    __slots__ = ("kind", "device", "rdev", "target")

    def __init__(self, kind: str, device: str = "", rdev: int = 0, target: str = "") -> None:
        self.kind, self.device, self.rdev, self.target = kind, device, rdev, target


MOUNT_PARENT = Special("dir")   # a directory that only leads to a volume

SPECIALS: dict[tuple[bytes, ...], Special] = {
    (b"dev",): Special("dir"),
    **{(b"dev", name): Special("dev", dev, rdev) for name, (rdev, dev) in DEVICES.items()},
    (b"dev", b"fd"): Special("link", target="/proc/self/fd"),
    (b"proc",): Special("dir"),
    (b"proc", b"self"): Special("dir"),
    (b"proc", b"self", b"exe"): Special("link", target="exe"),
    (b"proc", b"self", b"cwd"): Special("link", target="cwd"),
    (b"proc", b"self", b"root"): Special("link", target="/"),
    (b"proc", b"self", b"fd"): Special("dir"),
}


class Place:
    """Where a walk ended: the last component (name) in directory (path)
    (both guest names).  On the host: the volume and an O_PATH descriptor
    of that directory (dirfd; -1 in a directory of specials), or the
    special node itself; (st) is the lstat of what is there (None: nothing
    is).  (own_fd): dirfd is the walk's, closed by release(); (must_dir):
    the path ended with "/"."""

    __slots__ = ("path", "name", "vol", "dirfd", "st", "special", "own_fd", "must_dir")

    def __init__(self, path: tuple[bytes, ...], name: bytes, vol: Volume | None, dirfd: int,
                 st: os.stat_result | None = None, special: Special | None = None,
                 own_fd: bool = False, must_dir: bool = False) -> None:
        self.path, self.name, self.vol, self.dirfd = path, name, vol, dirfd
        self.st, self.special, self.own_fd, self.must_dir = st, special, own_fd, must_dir

    @property
    def guest(self) -> tuple[bytes, ...]:
        return self.path + (self.name,) if self.name != b"." else self.path

    def check_writable(self) -> None:
        """Refuse to change anything in a read-only volume or among specials."""
        if self.special is not None or self.vol is None:
            raise oserror(errno.EACCES)
        if self.vol.ro:
            raise oserror(errno.EROFS)

    def __enter__(self) -> "Place":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        if self.own_fd:
            os.close(self.dirfd)
            self.own_fd = False


class Tree:
    """The file tree of one job: (volumes), one of them at "/" (a fresh
    scratch directory unless given), and /tmp a scratch directory unless
    a volume or the root provides one."""

    def __init__(self, volumes: list[Volume]) -> None:
        self.volumes = list(volumes)
        seen = set()
        for v in self.volumes:
            if v.guest in seen:
                raise UsageError(f"two volumes at /{b'/'.join(v.guest).decode()}")
            seen.add(v.guest)
        if () not in seen:
            self.volumes.append(Volume(scratch_dir("tree"), (), scratch=True))
        for v in self.volumes:
            v.open()
        self.mounts = {v.guest: v for v in self.volumes}
        # directories on the way to a mount point, there even if no volume has them
        self.mount_parents = {m[:i] for m in self.mounts for i in range(1, len(m))}
        root = self.mounts[()]
        if (b"tmp",) not in self.mounts and not _is_dir(root.fd, b"tmp"):
            tmp = Volume(scratch_dir("tmp"), (b"tmp",), scratch=True)
            tmp.open()
            self.volumes.append(tmp)
            self.mounts[tmp.guest] = tmp

    def close(self) -> None:
        for v in self.volumes:
            v.close()

    def host_path(self, guest: tuple[bytes, ...]) -> str | None:
        """The host path of a guest path without symlinks (for messages
        and for finding the program), or None if not in a volume."""
        vol, rest = self._volume_of(guest)
        if vol is None:
            return None
        return os.path.join(vol.host, *map(os.fsdecode, rest))

    def _volume_of(self, guest: tuple[bytes, ...]):
        for i in range(len(guest), -1, -1):
            vol = self.mounts.get(guest[:i])
            if vol is not None:
                return vol, guest[i:]
        return None, guest

    # -- the walk --------------------------------------------------------------
    def walk(self, start: tuple[bytes, ...], path: bytes, follow: bool,
             links: dict[str, bytes]) -> Place:
        """Resolve (path) from directory (start) (when relative); the last
        component is followed if it is a symlink and (follow).  (links)
        gives the targets of the per-process links ("exe", "cwd").

        :raise OSError: ENOENT, ENOTDIR, ELOOP, ENAMETOOLONG as Linux would.
        """
        if not path:
            raise oserror(errno.ENOENT)
        if len(path) >= PATH_MAX:
            raise oserror(errno.ENAMETOOLONG)
        must_dir = path.endswith(b"/")
        todo = [c for c in path.split(b"/") if c and c != b"."][::-1]    # a stack
        pos = [] if path.startswith(b"/") else list(start)
        hops = 0
        cur = self._cursor(pos)
        try:
            while todo:
                name = todo.pop()
                if len(name) > NAME_MAX:
                    raise oserror(errno.ENAMETOOLONG)
                if name == b"..":
                    if pos:
                        pos.pop()
                        cur.move(self, pos)
                    continue
                last = not todo
                here = cur.lookup(self, pos, name)
                target = self._link_target(here, cur, name, links)
                if target is not None and (not last or follow or must_dir):
                    hops += 1
                    if hops > MAX_LINKS:
                        raise oserror(errno.ELOOP)
                    todo.extend([c for c in target.split(b"/") if c and c != b"."][::-1])
                    if target.startswith(b"/"):
                        pos = []
                        cur.move(self, pos)
                    continue
                if last:
                    return cur.place(self, pos, name, here, must_dir)
                if here is None:
                    raise oserror(errno.ENOENT)
                if not _is_dir_node(here):
                    raise oserror(errno.ENOTDIR)
                pos.append(name)
                cur.enter(self, pos, name, here)
            # the path ended at a directory (it was "/", or ended in ".."):
            # the place is that directory itself
            return cur.place_self(self, pos, must_dir)
        finally:
            cur.close()

    def _cursor(self, pos: list[bytes]) -> "_Cursor":
        c = _Cursor()
        c.move(self, pos)
        return c

    @staticmethod
    def _link_target(here, cur: "_Cursor", name: bytes, links: dict[str, bytes]) -> bytes | None:
        if isinstance(here, Special):
            if here.kind != "link":
                return None
            if here.target in ("exe", "cwd"):   # (exe: None when not in the tree)
                return links.get(here.target)
            return os.fsencode(here.target)
        if here is not None and stat.S_ISLNK(here.st_mode):
            return os.readlink(name, dir_fd=cur.fd)
        return None


def _is_dir_node(here) -> bool:
    if isinstance(here, Special):
        return here.kind == "dir"
    return stat.S_ISDIR(here.st_mode)


def _is_dir(dirfd: int, name: bytes) -> bool:
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_mode)
    except OSError:
        return False


class _Cursor:
    """The directory a walk is in: its volume and O_PATH descriptor, or
    a directory of specials (fd -1)."""

    def __init__(self) -> None:
        self.vol: Volume | None = None
        self.fd = -1
        self.owned = False

    def close(self) -> None:
        if self.owned:
            os.close(self.fd)
        self.fd, self.owned = -1, False

    def _set(self, vol: Volume | None, fd: int, owned: bool) -> None:
        self.close()
        self.vol, self.fd, self.owned = vol, fd, owned

    def move(self, tree: Tree, pos: list[bytes]) -> None:
        """To the directory at (pos), a path known to have no symlinks."""
        key = tuple(pos)
        if key in SPECIALS:
            return self._set(None, -1, False)
        vol, rest = tree._volume_of(key)
        if not rest:
            return self._set(vol, vol.fd, False)
        try:
            self._set(vol, open_beneath(vol.fd, b"/".join(rest)), True)
        except FileNotFoundError:
            if key not in tree.mount_parents:
                raise
            self._set(None, -1, False)

    def enter(self, tree: Tree, pos: list[bytes], name: bytes, here) -> None:
        key = tuple(pos)
        if key in tree.mounts:
            return self._set(tree.mounts[key], tree.mounts[key].fd, False)
        if isinstance(here, Special):
            return self._set(None, -1, False)
        fd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=self.fd)
        self._set(self.vol, fd, True)

    def lookup(self, tree: Tree, pos: list[bytes], name: bytes):
        """What is at (pos)/(name): a Special, an lstat result, or None."""
        key = (*pos, name)
        sp = SPECIALS.get(key)
        if sp is not None:
            return sp
        if key in tree.mounts:
            return os.stat(tree.mounts[key].fd)
        st = None
        if self.fd >= 0:                # (else in a directory of specials)
            try:
                st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
            except FileNotFoundError:
                pass
        if st is None and key in tree.mount_parents:
            return MOUNT_PARENT
        return st

    def place(self, tree: Tree, pos: list[bytes], name: bytes, here, must_dir: bool) -> Place:
        if isinstance(here, Special):
            return Place(tuple(pos), name, None, -1, None, here, must_dir=must_dir)
        key = (*pos, name)
        if key in tree.mounts:          # a volume's root: named "." in itself
            vol = tree.mounts[key]
            return Place(key, b".", vol, vol.fd, here, must_dir=must_dir)
        p = Place(tuple(pos), name, self.vol, self.fd, here, must_dir=must_dir,
                  own_fd=self.owned)
        self.owned = False              # the place has it now
        return p

    def place_self(self, tree: Tree, pos: list[bytes], must_dir: bool) -> Place:
        """The directory at (pos) itself, named "." in itself."""
        key = tuple(pos)
        if key in SPECIALS:
            return Place(key[:-1], key[-1], None, -1, None, SPECIALS[key], must_dir=must_dir)
        p = Place(key, b".", self.vol, self.fd, os.stat(self.fd), must_dir=must_dir,
                  own_fd=self.owned)
        self.owned = False
        return p


# -- openat2 -------------------------------------------------------------------
_RESOLVE_NO_MAGICLINKS, _RESOLVE_NO_SYMLINKS, _RESOLVE_BENEATH = 0x02, 0x04, 0x08
_SYS_OPENAT2 = 437


def open_beneath(dirfd: int, rel: bytes) -> int:
    """An O_PATH descriptor of directory (rel) under (dirfd), through no
    symlink and never above (dirfd): a directory the walk found without
    symlinks, which someone on the host may have changed since."""
    import struct
    how = struct.pack("<QQQ", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, 0,   # open_how
                      _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
    try:
        return syscall(_SYS_OPENAT2, dirfd, rel, how, len(how))
    except OSError as err:
        raise oserror(errno.ENOENT if err.errno == errno.ELOOP else err.errno) from None
