"""A cluster job's files as they travel (broker/inputs.py): an archive
opens below its directory only, with tarfile's data filter or, on a
Python without it (Debian 12's 3.11.2), with the same checks of our own."""
from __future__ import annotations

import io
import tarfile

import pytest

from broker import inputs
from workers.errors import UsageError


def _archive(*members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, kind, extra in members:
            info = tarfile.TarInfo(name)
            if kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, extra
            elif kind == "dev":
                info.type = tarfile.CHRTYPE
            else:
                info.size = len(extra)
            t.addfile(info, io.BytesIO(extra) if kind == "file" else None)
    return buf.getvalue()


HOSTILE = {"dotdot": [("../x", "file", b"a")], "absolute link": [("l", "sym", "/etc/passwd")],
           "climbing link": [("l", "sym", "../../x")], "device": [("d", "dev", None)]}


@pytest.fixture(params=["data filter", "our checks"])
def flavour(request, monkeypatch):
    if request.param == "our checks":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    return request.param


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_an_archive_cannot_put_anything_outside_its_tree(tmp_path, flavour, name):
    dest = tmp_path / "tree"
    dest.mkdir()
    with pytest.raises(UsageError):
        inputs.extract(_archive(*HOSTILE[name]), str(dest))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]


def test_files_and_links_inside_open_as_they_were(tmp_path, flavour):
    got = inputs.extract(_archive(("ok/f", "file", b"fine"), ("ok/l", "sym", "f")), str(tmp_path))
    assert got == ["ok/f", "ok/l"]
    assert (tmp_path / "ok" / "l").read_bytes() == b"fine"


def test_outputs_are_the_matching_regular_files_and_no_more_than_the_limit(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.txt").write_text("a")
    (tmp_path / "out" / "b.log").write_text("bb")
    (tmp_path / "out" / "link.txt").symlink_to("/etc/passwd")
    archive, found = inputs.collect(str(tmp_path), ["out/*.txt"], 100)
    assert found == {"/out/a.txt": b"a"}
    assert inputs.read_files(archive) == found
    with pytest.raises(UsageError, match="more than the 2 bytes"):
        inputs.collect(str(tmp_path), ["out/*"], 2)
