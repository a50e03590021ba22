"""A cluster job's files as they travel: its inputs into its tree, its
outputs back, each a tar archive kept in Redis by content hash, as
programs are (so a job run again after its host was lost starts from the
same inputs).

Archives are made and opened here only: an archive is opened with
tarfile's "data" filter (no absolute paths, no "..", no links out, no
devices), so that one made by anyone can only add files below the
directory it is opened in.
"""
from __future__ import annotations

import glob
import io
import os
import tarfile

from workers.errors import UsageError
from workers.files.tree import size_of


def parse_input(spec: str) -> tuple[str, str]:
    """HOST_PATH[:GUEST_PATH] of --input: (host path, guest path); the
    guest path defaults to /BASENAME."""
    host, sep, guest = spec.partition(":")
    if not host:
        raise UsageError(f"--input {spec}: expected HOST_PATH[:GUEST_PATH]")
    if not os.path.exists(host):
        raise UsageError(f"--input {spec}: {host} does not exist")
    guest = guest if sep else "/" + os.path.basename(os.path.abspath(host))
    if not guest.startswith("/"):
        raise UsageError(f"--input {spec}: GUEST_PATH must be absolute")
    return host, guest


def in_inputs(program: str, specs: list[str], workdir: str = "/") -> bool:
    """Whether the tree the --input (specs) make has (program), a guest
    path (relative: to workdir): then it runs from there, as `docker run`
    finds its program."""
    path = os.path.normpath(os.path.join(workdir, program))
    for spec in specs:
        host, guest = parse_input(spec)
        guest = os.path.normpath(guest)
        rest = os.path.relpath(path, guest) if guest != "/" else path.lstrip("/")
        if rest != ".." and not rest.startswith("../") and \
                os.path.lexists(os.path.join(host, rest) if rest != "." else host):
            return True
    return False


def pack_inputs(specs: list[str], limit: int) -> bytes:
    """The archive of the --input (specs); at most (limit) bytes of files.

    :raise UsageError: a bad spec, or more than (limit) bytes.
    """
    pairs = [parse_input(s) for s in specs]
    total = sum(size_of(host) for host, _ in pairs)
    if total > limit:
        raise UsageError(f"--input: {total} bytes of files, more than the "
                         f"{limit} UNIFORK_INPUT_MAX allows")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for host, guest in pairs:
            tar.add(host, arcname=guest.strip("/") or ".")
    return buf.getvalue()


def pack_files(files: dict[str, bytes]) -> bytes:
    """The archive of (files), guest path -> content (plain Celery's run_job)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path.strip("/"))
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def extract(data: bytes, dest: str, only: list[str] | None = None) -> list[str]:
    """Open archive (data) into directory (dest), all of it or the members
    at or below (only); the members opened.

    :raise UsageError: not an archive, or a member that would leave (dest).
    """
    wanted = [p.strip("/") for p in only] if only else None
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            members = [m for m in tar.getmembers() if wanted is None or any(
                m.name == w or m.name.startswith(w + "/") or not w for w in wanted)]
            if hasattr(tarfile, "data_filter"):     # Python 3.11.4 and later
                tar.extractall(dest, members=members, filter="data")
            else:
                tar.extractall(dest, members=[_checked(m, dest) for m in members])
    except (tarfile.TarError, OSError) as err:
        raise UsageError(f"a job's files do not open: {err}") from err
    return [m.name for m in members]


def _checked(m: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """What the "data" filter checks, for a Python without it (Debian 12's
    3.11.2): a member stays below (dest), and is a file, a directory or a
    link that stays there too."""
    root = os.path.realpath(dest)

    def inside(path: str) -> bool:
        return os.path.realpath(path) == root or \
            os.path.realpath(path).startswith(root + os.sep)
    target = os.path.join(dest, m.name)
    if os.path.isabs(m.name) or not inside(target):
        raise tarfile.TarError(f"{m.name}: outside the tree")
    if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
        raise tarfile.TarError(f"{m.name}: not a file, directory or link")
    if m.issym() and (os.path.isabs(m.linkname) or
                      not inside(os.path.join(os.path.dirname(target), m.linkname))):
        raise tarfile.TarError(f"{m.name}: a link out of the tree")
    if m.islnk() and not inside(os.path.join(dest, m.linkname)):
        raise tarfile.TarError(f"{m.name}: a link out of the tree")
    m.mode &= 0o755
    return m


def read_files(data: bytes) -> dict[str, bytes]:
    """The regular files of archive (data), guest path -> content."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        for m in tar.getmembers():
            f = tar.extractfile(m) if m.isfile() else None
            if f is not None:
                out["/" + m.name.lstrip("/")] = f.read()
    return out


def collect(root: str, patterns: list[str], limit: int,
            hidden: bool = False) -> tuple[bytes, dict[str, bytes]]:
    """The regular files of tree (root) that match (patterns) (globs of
    guest paths, ** too; names starting with a dot only if (hidden)), as an
    archive and as path -> content; symlinks are not followed.

    :raise UsageError: more than (limit) bytes of them.
    """
    found: dict[str, bytes] = {}
    total = 0
    for pattern in patterns:
        for rel in glob.glob(pattern.lstrip("/"), root_dir=root, recursive=True,
                             include_hidden=hidden):
            path = os.path.join(root, rel)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            if os.path.realpath(path).startswith(os.path.realpath(root) + os.sep):
                total += os.path.getsize(path)
                if total > limit:
                    raise UsageError(f"the job's outputs are more than the {limit} bytes "
                                     "UNIFORK_INPUT_MAX allows")
                with open(path, "rb") as f:
                    found["/" + rel] = f.read()
    return (pack_files(found) if found else b""), found


