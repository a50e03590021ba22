"""A fork on the wire (workers/fork/wire.py), over a socketpair: the RAM
extents land where they were (what lies below the line the receiver keeps
aside comes back aside, whole records), the header comes through; a stream
under another secret, or another fork's nonce, or altered, or cut, or with
RAM outside the VM, is refused before anything runs; RAM is not in clear on
the wire."""
from __future__ import annotations

import mmap
import os
import socket
import threading

import pytest

from workers.fork import clone as fork, wire as transfer

SECRET, NONCE = b"s" * 32, b"n" * 16
SIZE = 8 << 20
ASIDE = 2 << 20          # what lies below goes aside (the receiver's parked kernel)


def parent_ram() -> tuple[int, mmap.mmap]:
    fd = os.memfd_create("test-ram")
    os.ftruncate(fd, SIZE)
    ram = mmap.mmap(fd, SIZE)
    ram[4096:4096 + 11] = b"hello child"
    ram[(2 << 20) - 8192:(2 << 20) + 4096] = os.urandom(12288)       # across the line
    ram[3 << 20:(3 << 20) + (1 << 20) + 5] = os.urandom((1 << 20) + 5)  # > one record
    return fd, ram


def sent_stream(header: dict | None = None, extents=None) -> tuple[bytes, mmap.mmap]:
    """What send_fork writes, as bytes."""
    fd, ram = parent_ram()
    a, b = socket.socketpair()
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: b.recv(1 << 20), b"")))
    reader.start()
    sealed = transfer.seal_ram(SECRET, NONCE, memoryview(ram),
                               extents if extents is not None else fork.data_extents(fd, SIZE))
    transfer.send_fork(a, SECRET, NONCE, header or {"pid": 7}, sealed)
    a.close()
    reader.join()
    b.close()
    os.close(fd)
    return b"".join(chunks), ram


def receive(stream: bytes, secret: bytes = SECRET, nonce: bytes = NONCE):
    a, b = socket.socketpair()
    child = mmap.mmap(-1, SIZE)

    def write() -> None:
        try:
            a.sendall(stream)
        except OSError:
            pass                # the receiver gave up first
        a.close()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        return transfer.receive_fork(b, secret, nonce, memoryview(child), ASIDE), child
    finally:
        b.close()
        writer.join()


def test_the_child_gets_the_parents_ram_and_header_and_the_low_part_aside():
    stream, ram = sent_stream()
    got, child = receive(stream)
    assert got.header == {"pid": 7}
    assert got.extents == [(4096, 4096), ((2 << 20) - 8192, 12288),
                           (3 << 20, (1 << 20) + 4096)]
    assert all(off < ASIDE for off, _ in got.aside)
    assert child[:ASIDE] == bytes(ASIDE)        # nothing below the line in place
    for off, data in got.aside:
        child[off:off + len(data)] = data
    assert child[:] == ram[:]


def test_ram_does_not_cross_the_wire_in_clear():
    stream, _ = sent_stream()
    assert b"hello child" not in stream


@pytest.mark.parametrize("secret, nonce", [(b"x" * 32, NONCE), (SECRET, b"m" * 16)],
                         ids=["another secret", "another fork's nonce"])
def test_a_stream_that_does_not_open_is_refused(secret, nonce):
    stream, _ = sent_stream()
    with pytest.raises(transfer.TransferError, match="does not open"):
        receive(stream, secret, nonce)


def test_an_altered_or_cut_stream_is_refused():
    stream, _ = sent_stream()
    altered = bytearray(stream)
    altered[len(stream) // 2] ^= 1
    with pytest.raises(transfer.TransferError):
        receive(bytes(altered))
    with pytest.raises(transfer.TransferError):
        receive(stream[:len(stream) - 100])


@pytest.mark.parametrize("extents", [[(SIZE - 4096, 8192)], [(4096, 4096), (0, 4096)],
                                     [(100, 4096)]],
                         ids=["past the end", "out of order", "not page aligned"])
def test_ram_outside_the_vm_or_out_of_order_is_refused(extents):
    fd, ram = parent_ram()
    big = mmap.mmap(-1, SIZE + 8192)        # the sender may have more than we
    big[:SIZE] = ram[:]
    a, b = socket.socketpair()
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: b.recv(1 << 20), b"")))
    reader.start()
    transfer.send_fork(a, SECRET, NONCE, {"pid": 7},
                       transfer.seal_ram(SECRET, NONCE, memoryview(big), extents))
    a.close()
    reader.join()
    with pytest.raises(transfer.TransferError, match="out of order or outside"):
        receive(b"".join(chunks))


def test_the_reply_is_sealed_too():
    a, b = socket.socketpair()
    transfer.send_reply(a, SECRET, NONCE, {"ok": True})
    assert transfer.receive_reply(b, SECRET, NONCE) == {"ok": True}
    transfer.send_reply(a, SECRET, b"m" * 16, {"ok": True})
    with pytest.raises(transfer.TransferError):
        transfer.receive_reply(b, SECRET, NONCE)
