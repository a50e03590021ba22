"""The wire format of a fork across hosts: the parent's host sends its
touched RAM and device state straight to the child's host over TCP.

One connection per fork; the child's host listens (its address and a fresh
nonce are in the fork's placement) and the parent's host connects:

    parent → child   b"UFK1"
                     u32 n, n bytes of JSON header (ticket, pid, ppid, ram_size, clocks)
                     extents of RAM: (u64 offset, u64 length, length bytes)..., (0, 0)
                     u64 n, n bytes of QEMU device state (a migration stream
                        made with x-ignore-shared: it holds no RAM)
                     32 bytes HMAC-SHA256(secret, nonce || everything above)
    child → parent   u32 n, n bytes of JSON ({"ok": true} or {"error": why})
                     32 bytes HMAC-SHA256(secret, nonce || b"reply" || JSON)

The receiver writes RAM into the child's (not yet running) RAM file as it
arrives, checks the MAC, and only then feeds the device state to QEMU and
lets the child run: a connection without the cluster secret, or a replayed
one (the nonce is new for every fork), never runs anything.
"""
from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
import socket
import struct

MAGIC = b"UFK1"
MAC_SIZE = 32
MAX_HEADER = 1 << 16
MAX_DEVICE_STATE = 64 << 20
CHUNK = 1 << 20
_Q, _I, _QQ = struct.Struct("<Q"), struct.Struct("<I"), struct.Struct("<QQ")


class TransferError(Exception):
    """The other side broke the protocol, failed, or could not prove the secret."""


def extents(fd: int, size: int):
    """The (offset, length) extents of memfd (fd) that hold data."""
    off = 0
    while off < size:
        try:
            data = os.lseek(fd, off, os.SEEK_DATA)
        except OSError as err:
            if err.errno == errno.ENXIO:
                return
            raise
        if data >= size:
            return
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), size)
        yield data, hole - data
        off = hole


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    _recv_into(sock, memoryview(buf))
    return bytes(buf)


def _recv_into(sock: socket.socket, view: memoryview) -> None:
    while view:
        got = sock.recv_into(view)
        if got == 0:
            raise TransferError("the connection closed in the middle of a fork")
        view = view[got:]


def send_fork(sock: socket.socket, secret: bytes, nonce: bytes, header: dict,
              ram_fd: int, ram: memoryview, ram_size: int, device_state: bytes) -> int:
    """Send one fork; returns the bytes of RAM sent."""
    mac = hmac.new(secret, nonce, hashlib.sha256)

    def out(b) -> None:
        mac.update(b)
        sock.sendall(b)

    head = json.dumps(header).encode()
    out(MAGIC + _I.pack(len(head)) + head)
    sent = 0
    for off, length in extents(ram_fd, ram_size):
        out(_QQ.pack(off, length))
        for at in range(off, off + length, CHUNK):
            out(ram[at:min(at + CHUNK, off + length)])
        sent += length
    out(_QQ.pack(0, 0))
    out(_Q.pack(len(device_state)) + device_state)
    sock.sendall(mac.digest())
    return sent


def receive_fork(sock: socket.socket, secret: bytes, nonce: bytes,
                 ram: memoryview) -> tuple[dict, bytes]:
    """Receive one fork: RAM goes into (ram), the child's mapping (zero
    beforehand).  Returns the header and the device state, once the MAC
    has proven the sender holds the secret.

    :raise TransferError: a malformed stream or a bad MAC.
    """
    mac = hmac.new(secret, nonce, hashlib.sha256)

    def take(n: int) -> bytes:
        b = _recv_exact(sock, n)
        mac.update(b)
        return b

    if take(4) != MAGIC:
        raise TransferError("not a unifork fork stream")
    n = _I.unpack(take(4))[0]
    if n > MAX_HEADER:
        raise TransferError(f"fork header of {n} bytes")
    try:
        header = json.loads(take(n))
    except ValueError as err:
        raise TransferError("fork header is not JSON") from err
    if not isinstance(header, dict):
        raise TransferError("fork header is not a JSON object")
    size = len(ram)
    while True:
        off, length = _QQ.unpack(take(16))
        if length == 0:
            break
        if off % 4096 or off + length > size:
            raise TransferError(f"RAM extent {off:#x}+{length:#x} is outside the VM's "
                                f"{size >> 20} MiB")
        view = ram[off:off + length]
        _recv_into(sock, view)
        mac.update(view)
    n = _Q.unpack(take(8))[0]
    if n > MAX_DEVICE_STATE:
        raise TransferError(f"device state of {n} bytes")
    device_state = take(n)
    if not hmac.compare_digest(_recv_exact(sock, MAC_SIZE), mac.digest()):
        raise TransferError("the fork stream's MAC is wrong: not sent with this "
                            "cluster's secret, or replayed")
    return header, device_state


def send_reply(sock: socket.socket, secret: bytes, nonce: bytes, reply: dict) -> None:
    body = json.dumps(reply).encode()
    sock.sendall(_I.pack(len(body)) + body +
                 hmac.new(secret, nonce + b"reply" + body, hashlib.sha256).digest())


def receive_reply(sock: socket.socket, secret: bytes, nonce: bytes) -> dict:
    n = _I.unpack(_recv_exact(sock, 4))[0]
    if n > MAX_HEADER:
        raise TransferError(f"fork reply of {n} bytes")
    body = _recv_exact(sock, n)
    want = hmac.new(secret, nonce + b"reply" + body, hashlib.sha256).digest()
    if not hmac.compare_digest(_recv_exact(sock, MAC_SIZE), want):
        raise TransferError("the fork reply's MAC is wrong")
    return json.loads(body)
