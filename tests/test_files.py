"""A job's files: one tree for all its processes, given with --volume;
the file system calls on it with Linux's semantics; open file
descriptions shared across fork; execve of the tree's programs; and no
path that leaves the tree.  Each program runs natively in a chroot of the
same tree too, and both its output and the files it leaves must agree."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import status, unifork

BUSYBOX = shutil.which("busybox")
BASH = shutil.which("bash-static")
APPLETS = ("sh", "echo", "cat", "ls", "wc", "tr", "sort", "uniq", "head", "find", "xargs",
           "grep", "tar", "gzip", "mkdir", "rm", "sleep", "cmp", "true", "false")
pytestmark = pytest.mark.skipif(BUSYBOX is None or os.geteuid() != 0,
                                reason="needs busybox-static (make setup installs it) and "
                                "root (the native runs are in a chroot)")


def make_tree(root: Path, programs: dict[str, Path] = {}, shell: str | None = None) -> Path:
    """A small root: /bin with BusyBox's applets (and /bin/sh from
    (shell) if given), (programs) at their paths, an empty /work, and the
    /dev, /proc and /tmp a native chroot needs."""
    for d in ("bin", "work", "tmp", "dev", "proc"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for a in APPLETS:
        (root / "bin" / a).symlink_to("busybox")
    if shell:
        (root / "bin" / "sh").unlink()
        shutil.copy2(shell, root / "bin" / "sh")
    for at, src in programs.items():
        shutil.copy2(src, root / at.lstrip("/"))
    return root


def native_devices(root: Path) -> None:
    for name, minor in (("null", 3), ("zero", 5), ("random", 8), ("urandom", 9)):
        os.mknod(root / "dev" / name, stat.S_IFCHR | 0o666, os.makedev(1, minor))


def snapshot(root: Path, skip: tuple[str, ...] = ()) -> dict:
    """What a tree holds, to compare: each path's kind, mode, and content
    or target."""
    out = {}
    for dirpath, dirs, names in os.walk(root):
        for name in dirs + names:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if rel in skip:
                continue
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), p.read_bytes())
    return out


def both(tmp_path: Path, cmd: list[str], build, skip: tuple[str, ...] = (),
         timeout: float = 180):
    """Run (cmd) natively chrooted in one tree and under unifork in
    another, both made by (build)(root); their results and /work's."""
    nat, uni = build(tmp_path / "native"), build(tmp_path / "unifork")
    native_devices(nat)
    env = {"PATH": "/bin"}
    want = subprocess.run(cmd, capture_output=True, env=env, timeout=timeout,
                          preexec_fn=lambda: (os.chroot(nat), os.chdir("/")))
    got = unifork("run", "--volume", f"{uni}:/", "--workdir", "/work", "--env", "PATH=/bin",
                  *cmd, timeout=timeout)
    return want, got, snapshot(nat / "work", skip), snapshot(uni / "work", skip)


@pytest.mark.parametrize("libc", ["musl", "glibc"])
@pytest.mark.parametrize("part", ["basics", "tree", "sharing", "escapes", "more"])
def test_file_calls_match_a_native_run_in_a_chroot(tmp_path, program, libc, part):
    exe = program("files", libc)
    want, got, nat, uni = both(tmp_path, ["/files", part],
                               lambda root: make_tree(root, {"/files": exe}),
                               skip=("log",))     # (whose lines interleave as they may)
    assert got.stdout.decode() == want.stdout.decode(), got.stderr.decode()
    assert status(got) == status(want) == 0
    assert uni == nat
    assert b"unsupported system call" not in got.stderr, got.stderr.decode()


def test_nothing_outside_the_tree_is_created_or_read(tmp_path, program):
    probe = Path("/tmp/unifork-escape-probe")
    probe.unlink(missing_ok=True)
    root = make_tree(tmp_path / "t", {"/files": program("files", "musl")})
    got = unifork("run", "--volume", f"{root}:/", "/files", "escapes")
    assert status(got) == 0, got.stderr.decode()
    assert not probe.exists()
    assert (root / "tmp" / "unifork-escape-probe").exists() is False     # (it unlinks it)
    assert b"dotdot: -1 ENOENT" in got.stdout
    assert b"create via it: 3" in got.stdout or b"create via it: " in got.stdout


@pytest.mark.parametrize("libc", ["musl", "glibc"])
@pytest.mark.parametrize("how", ["", "static", "script", "path", "fexecve", "fork"])
def test_execve_runs_the_trees_programs_as_linux_does(tmp_path, program, libc, how):
    def build(root: Path) -> Path:
        make_tree(root, {"/execs": program("execs", libc), "/dynamic": "/bin/true"})
        (root / "noexec").write_bytes(b"#!/bin/sh\necho no\n")
        (root / "garbage").write_bytes(b"\x7fELF garbage")
        (root / "garbage").chmod(0o755)
        (root / "script.sh").write_text('#!/bin/sh -e\necho "script: $0 $*"\n')
        (root / "script.sh").chmod(0o755)
        return root
    want, got, _, _ = both(tmp_path, ["/execs", *([how] if how else [])], build)
    assert got.stdout.decode() == want.stdout.decode(), got.stderr.decode()
    assert status(got) == status(want)


def test_a_failed_execve_says_why_on_stderr(tmp_path, program):
    root = make_tree(tmp_path / "t", {"/execs": program("execs", "musl")})
    (root / "noexec").write_bytes(b"#!/bin/sh\n")
    got = unifork("run", "--volume", f"{root}:/", "/execs")
    err = got.stderr.decode()
    assert "execve: /missing: no such file in the job's tree" in err
    assert "execve: /noexec: not executable" in err


SCRIPT = r"""
set -e
cd /work
mkdir -p out
for f in in/*.txt; do echo "$f: $(wc -l < "$f")"; done > out/counts
cat in/*.txt | tr 'A-Z' 'a-z' | tr -cs 'a-z' '\n' | sort | uniq -c | sort -rn | head -5 > out/top
find in -name '*.txt' | sort | xargs grep -l fox > out/fox
tar cf - in | gzip > out/in.tar.gz
mkdir -p out/back && cd out/back && gzip -dc ../in.tar.gz | tar xf - && cd /work
cmp in/a.txt out/back/in/a.txt && echo same >> out/counts
cat > out/here <<EOF
a here-document: $(echo substituted) and $((6 * 7))
EOF
for i in 1 2 3; do (echo "job $i" > out/job$i; sleep 0.1) & done
wait
echo appended >> out/counts
cat out/counts out/top out/fox out/here out/job*
"""


def _inputs(root: Path) -> None:
    d = root / "work" / "in"
    d.mkdir(parents=True)
    (d / "a.txt").write_text("The quick brown fox\njumps over the lazy dog\n" * 20)
    (d / "b.txt").write_text("a dog a cat\n" * 7)
    (d / "c.txt").write_text("fox fox fox\nno more\n")


@pytest.mark.skipif(BASH is None, reason="bash-static is not installed (make setup installs it)")
def test_bash_and_busybox_run_a_script_over_input_files_as_natively(tmp_path):
    def build(root: Path) -> Path:
        make_tree(root, shell=BASH)
        _inputs(root)
        return root
    want, got, nat, uni = both(tmp_path, ["/bin/sh", "-c", SCRIPT], build,
                               skip=("out/in.tar.gz",))
    assert got.stdout.decode() == want.stdout.decode(), got.stderr.decode()
    assert status(got) == status(want) == 0
    assert uni == nat


def test_a_read_only_volume_refuses_writes_and_keeps_its_files(tmp_path):
    root = make_tree(tmp_path / "t")
    data = tmp_path / "data"
    data.mkdir()
    (data / "keep").write_text("kept\n")
    got = unifork("run", "--volume", f"{root}:/", "--volume", f"{data}:/data:ro",
                  "/bin/sh", "-c", "cat /data/keep; echo x > /data/new; echo x >> /data/keep;"
                  " rm /data/keep; ls /data")
    assert got.stdout == b"kept\nkeep\n"
    assert got.stderr.count(b"Read-only file system") == 3, got.stderr.decode()
    assert sorted(os.listdir(data)) == ["keep"] and (data / "keep").read_text() == "kept\n"


def test_the_jobs_limits_give_emfile_and_edquot_and_keep_what_was_written(tmp_path, program):
    """(and a writable MAP_SHARED mapping, which cannot follow the file, is
    refused with a line that says so)"""
    root = make_tree(tmp_path / "t", {"/files": program("files", "musl")})
    got = unifork("run", "--volume", f"{root}:/", "/files", "limits",
                  env={"UNIFORK_FILES_MAX_OPEN": "20", "UNIFORK_FILES_MAX_WRITE": "1000"})
    assert got.stdout == (b"opened 20, then EMFILE\nwrote 1000, then EDQUOT\nthe file holds 1000\n"
                          b"a writable shared mapping: ENODEV\n")
    assert b"a writable MAP_SHARED mapping of a file is not supported" in got.stderr
    assert (root / "work" / "big").read_bytes() == b"q" * 1000
    err = got.stderr.decode()
    assert err.count("UNIFORK_FILES_MAX_OPEN") == 1 and err.count("UNIFORK_FILES_MAX_WRITE") == 1


@pytest.mark.parametrize("libc", ["musl", "glibc"])
def test_proc_self_fd_opens_the_file_afresh_and_names_it(tmp_path, program, libc):
    root = make_tree(tmp_path / "t", {"/files": program("files", libc)})
    got = unifork("run", "--volume", f"{root}:/", "/files", "fdnames")
    assert got.stdout == (b"reopened: a new descriptor, reads a from its own offset; the first "
                          b"is at 6\nreadlink: /work/n\na pipe reopened carries x\n"
                          b"stdin is a pipe\n"), got.stderr.decode()


def test_without_volumes_a_job_has_a_fresh_tree_and_tmp_that_are_removed_after(tmp_path):
    before = {p for p in os.listdir("/tmp") if p.startswith("unifork-")}
    got = unifork("run", BUSYBOX, "sh", "-c",
                  "echo scratch > /tmp/f; busybox cat /tmp/f; busybox ls /; cd /tmp; busybox pwd")
    assert got.stdout == b"scratch\ndev\nproc\ntmp\n/tmp\n", got.stderr.decode()
    assert {p for p in os.listdir("/tmp") if p.startswith("unifork-")} == before


def test_bad_volumes_and_workdirs_are_refused_with_one_line(tmp_path):
    for args, msg in ((["--volume", "nowhere"], "expected HOST_DIR:GUEST_DIR"),
                      (["--volume", f"{tmp_path}/missing:/"], "is not a directory"),
                      (["--volume", f"{tmp_path}:data"], "must be absolute"),
                      (["--workdir", "/not/there"], "--workdir /not/there: No such file")):
        got = unifork("run", *args, BUSYBOX, "true")
        assert status(got) == 2 and msg in got.stderr.decode(), (args, got.stderr)
        assert got.stderr.count(b"\n") == 1
