"""The job's tree on the host (workers/files/tree.py, descriptions.py):
every path a guest can write resolves inside the tree, volumes mount
where they are told, and open file descriptions close when the last
process holding them does."""
from __future__ import annotations

import errno
import os

import pytest

from workers.errors import UsageError
from workers.files.descriptions import Description, Descriptions
from workers.files.tree import Tree, Volume, open_beneath, parse_volume


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "f").write_text("root's f\n")
    (root / "a" / "up").symlink_to("../../../../..")
    (root / "a" / "abs").symlink_to("/f")
    (root / "loop").symlink_to("loop")
    (root / "tmp").mkdir()
    data = tmp_path / "data"
    data.mkdir()
    (data / "g").write_text("data's g\n")
    (tmp_path / "outside").write_text("secret\n")
    t = Tree([Volume(str(root), ()), Volume(str(data), (b"mnt", b"data"), ro=True)])
    yield t
    t.close()


def _walk(tree, path: bytes, start=(), follow=True):
    place = tree.walk(start, path, follow, {"cwd": b"/"})
    place.release()
    return place


def test_dotdot_stops_at_the_root_of_the_tree(tree):
    p = _walk(tree, b"../../../../f")
    assert (p.path, p.name, p.st is not None) == ((), b"f", True)
    assert _walk(tree, b"/..").guest == ()


def test_symlinks_resolve_inside_the_tree_absolute_or_climbing(tree):
    assert _walk(tree, b"/a/abs").guest == (b"f",)
    assert _walk(tree, b"/a/up/outside").st is None        # the root's, which has none
    assert _walk(tree, b"/a/up/f").guest == (b"f",)


def test_a_symlink_loop_is_eloop_and_a_file_in_the_middle_enotdir(tree):
    with pytest.raises(OSError) as e:
        _walk(tree, b"/loop")
    assert e.value.errno == errno.ELOOP
    with pytest.raises(OSError) as e:
        _walk(tree, b"/f/x")
    assert e.value.errno == errno.ENOTDIR
    assert _walk(tree, b"/loop", follow=False).name == b"loop"


def test_a_volume_mounts_at_its_directory_and_dotdot_leaves_it_by_the_tree(tree):
    p = _walk(tree, b"/mnt/data/g")
    assert p.vol.guest == (b"mnt", b"data") and p.st is not None
    assert _walk(tree, b"/mnt/data/../../f").guest == (b"f",)
    with pytest.raises(OSError) as e:
        p.check_writable()
    assert e.value.errno == errno.EROFS


def test_specials_are_provided_whatever_the_tree_holds(tree):
    assert _walk(tree, b"/dev/null").special.device == "null"
    assert _walk(tree, b"/proc/self/root/f").guest == (b"f",)
    p = _walk(tree, b"/proc/self/nothing")
    assert p.st is None and p.special is None


def test_the_host_step_never_follows_a_symlink(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    fd = os.open(tmp_path, os.O_PATH)
    try:
        os.close(open_beneath(fd, b"real"))
        for rel in (b"link", b"../" + os.fsencode(tmp_path.name)):
            with pytest.raises(OSError):
                os.close(open_beneath(fd, rel))
    finally:
        os.close(fd)


def test_a_tree_without_volumes_is_scratch_and_goes_away(tmp_path):
    t = Tree([])
    roots = [v.host for v in t.volumes]
    assert len(roots) == 2 and all(os.path.isdir(r) for r in roots)   # / and /tmp
    t.close()
    assert not any(os.path.exists(r) for r in roots)


@pytest.mark.parametrize("spec", ["x", "/nonexistent:/", ".:rel", ".:/a:rw"])
def test_bad_volume_specs_say_what_is_wrong(spec):
    with pytest.raises(UsageError) as e:
        parse_volume(spec)
    assert spec in str(e.value)


def test_a_description_closes_when_its_last_holder_ends(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY)
    table = Descriptions(limit=4)
    h = table.add(1, Description(fd, (), None, 0))
    table.fork(1, 2)
    table.drop(1)
    os.fstat(fd)                        # still open: pid 2 holds it
    assert table.get(2, h).fd == fd
    with pytest.raises(OSError):
        table.get(1, h)
    table.release(2, h)
    with pytest.raises(OSError):
        os.fstat(fd)


def test_the_jobs_open_descriptions_are_limited(tmp_path):
    table = Descriptions(limit=2)
    for _ in range(2):
        table.add(1, Description(os.open(tmp_path, os.O_RDONLY), (), None, 0))
    with pytest.raises(OSError) as e:
        table.add(1, Description(os.open(tmp_path, os.O_RDONLY), (), None, 0))
    assert e.value.errno == errno.EMFILE
    table.close()
