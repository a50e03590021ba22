"""A fork on the wire (workers/transfer.py), over a socketpair: the RAM
extents land where they were, the header and device state come through;
a stream under another secret, or another fork's nonce, or altered, or
cut, is refused before anything runs; RAM is not in clear on the wire."""
from __future__ import annotations

import mmap
import os
import socket
import threading

import pytest

from workers import transfer

SECRET, NONCE = b"s" * 32, b"n" * 16
SIZE = 8 << 20


def parent_ram() -> tuple[int, mmap.mmap]:
    fd = os.memfd_create("test-ram")
    os.ftruncate(fd, SIZE)
    ram = mmap.mmap(fd, SIZE)
    ram[4096:4096 + 11] = b"hello child"
    ram[3 << 20:(3 << 20) + (1 << 20) + 5] = os.urandom((1 << 20) + 5)  # > one record
    return fd, ram


def sent_stream(device_state: bytes = b"device state") -> tuple[bytes, mmap.mmap]:
    """What send_fork writes, as bytes."""
    fd, ram = parent_ram()
    a, b = socket.socketpair()
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: b.recv(1 << 20), b"")))
    reader.start()
    transfer.send_fork(a, SECRET, NONCE, {"pid": 7}, fd, memoryview(ram), SIZE, device_state)
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
        return transfer.receive_fork(b, secret, nonce, memoryview(child)) + (child,)
    finally:
        b.close()
        writer.join()


def test_the_child_gets_the_parents_ram_header_and_device_state():
    stream, ram = sent_stream()
    header, device_state, child = receive(stream)
    assert header == {"pid": 7} and device_state == b"device state"
    assert child[:] == ram[:]


def test_ram_does_not_cross_the_wire_in_clear():
    stream, _ = sent_stream()
    assert b"hello child" not in stream and b"device state" not in stream


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


def test_the_reply_is_sealed_too():
    a, b = socket.socketpair()
    transfer.send_reply(a, SECRET, NONCE, {"ok": True})
    assert transfer.receive_reply(b, SECRET, NONCE) == {"ok": True}
    transfer.send_reply(a, SECRET, b"m" * 16, {"ok": True})
    with pytest.raises(transfer.TransferError):
        transfer.receive_reply(b, SECRET, NONCE)
