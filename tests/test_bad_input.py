"""A program that cannot run gets a one-line error naming the problem and
exit status 2, before any VM starts."""
from __future__ import annotations

import subprocess

import pytest

from conftest import qemu_pids, unifork


def one_line_error(p) -> str:
    assert p.returncode == 2
    assert p.stdout == b""
    lines = p.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def patched(src, tmp_path, offset: int, value: bytes):
    data = bytearray(src.read_bytes())
    data[offset:offset + len(value)] = value
    out = tmp_path / "patched"
    out.write_bytes(bytes(data))
    out.chmod(0o755)
    return out


def test_a_text_file_is_not_an_elf(tmp_path):
    f = tmp_path / "script.sh"
    f.write_text("#!/bin/sh\necho hi\n")
    assert "not an ELF file" in one_line_error(unifork("run", f))


def test_a_missing_file_is_named(tmp_path):
    assert "No such file or directory" in one_line_error(unifork("run", tmp_path / "nope"))


def test_a_32_bit_elf_is_refused(example, tmp_path):
    prog = patched(example("hello", "musl"), tmp_path, 4, b"\x01")     # EI_CLASS
    assert "not x86-64 (a 32-bit ELF)" in one_line_error(unifork("run", prog))


def test_an_elf_for_another_machine_is_refused(example, tmp_path):
    prog = patched(example("hello", "musl"), tmp_path, 18, b"\xb7\x00")   # EM_AARCH64
    assert "not x86-64 (ELF machine 183)" in one_line_error(unifork("run", prog))


def test_a_dynamically_linked_program_is_refused(tmp_path):
    src = tmp_path / "dyn.c"
    src.write_text("int main(void) { return 0; }\n")
    subprocess.run(["gcc", "-o", tmp_path / "dyn", src], check=True)
    err = one_line_error(unifork("run", tmp_path / "dyn"))
    assert "dynamically linked" in err and "-static" in err


def test_a_truncated_elf_is_refused(example, tmp_path):
    data = example("hello", "glibc").read_bytes()
    (tmp_path / "cut").write_bytes(data[:len(data) // 3])
    assert "truncated" in one_line_error(unifork("run", tmp_path / "cut"))


def test_a_program_too_big_for_mem_is_refused_before_boot(tmp_path):
    src = tmp_path / "big.c"
    src.write_text("static char big[100 << 20];\n"
                   "int main(void) { big[5] = 1; return big[5] - 1; }\n")
    subprocess.run(["musl-gcc", "-static", "-o", tmp_path / "big", src], check=True)
    before = qemu_pids()
    err = one_line_error(unifork("run", "--mem", "64", tmp_path / "big"))
    assert "needs more memory than --mem allows" in err
    assert qemu_pids() == before
    assert unifork("run", "--mem", "256", tmp_path / "big").returncode == 0


@pytest.mark.parametrize("mem", ["7", "33", "999999", "lots"])
def test_bad_mem_values_are_refused(example, mem):
    p = unifork("run", "--mem", mem, example("hello", "musl"))
    assert p.returncode == 2
    assert b"--mem" in p.stderr


def test_unknown_options_get_a_usage_error(example):
    p = unifork("run", "--frobnicate", example("hello", "musl"))
    assert p.returncode == 2
    assert b"unrecognized arguments" in p.stderr or b"usage" in p.stderr
