"""Sealed records over a stream socket: what hosts send each other (a
fork's RAM, a file call) under a key only the cluster's hosts can make.

Each record is u32 n and n bytes: the data sealed with AES-256-GCM and its
16-byte tag.  Record i of a stream is sealed under nonce i, with a key made
from the cluster secret and the stream's own (context: nonces chosen for
this stream, and its direction), so that a record altered, cut, reordered
or replayed from another stream does not open.
"""
from __future__ import annotations

import hashlib
import socket
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from workers.errors import TransferError

TAG_SIZE = 16
_I = struct.Struct("<I")


class Sealed:
    """One direction of a stream: records sealed under nonces (first),
    (first)+1... (the order is part of what is authenticated), keyed by
    the cluster (secret), the stream's (context) and its purpose (person,
    at most 16 bytes)."""

    def __init__(self, sock: socket.socket | None, secret: bytes, context: bytes,
                 person: bytes, first: int = 0) -> None:
        key = hashlib.blake2b(context, key=secret[:64], digest_size=32, person=person).digest()
        self.sock, self.aead, self.n = sock, AESGCM(key), first

    def _nonce(self) -> bytes:
        self.n += 1
        return (self.n - 1).to_bytes(12, "little")

    def seal(self, data) -> bytearray:
        """The next record, (data) sealed."""
        record = bytearray(4 + len(data) + TAG_SIZE)
        _I.pack_into(record, 0, len(data) + TAG_SIZE)
        self.aead.encrypt_into(self._nonce(), data, None, memoryview(record)[4:])
        return record

    def send(self, data) -> None:
        self.sock.sendall(self.seal(data))

    def _record(self, limit: int) -> bytearray:
        n = _I.unpack(recv_exact(self.sock, 4))[0]
        if not TAG_SIZE <= n <= limit + TAG_SIZE:
            raise TransferError(f"a record of {n} bytes from another host")
        buf = bytearray(n)
        _recv_into(self.sock, memoryview(buf))
        return buf

    def take(self, limit: int) -> bytes:
        """The next record, opened; at most (limit) bytes."""
        record = self._record(limit)
        try:
            return self.aead.decrypt(self._nonce(), record, None)
        except InvalidTag:
            raise _forged() from None

    def take_into(self, view: memoryview) -> None:
        """The next record, opened straight into (view), which it fills."""
        record = self._record(len(view))
        if len(record) - TAG_SIZE != len(view):
            raise TransferError("a record of the wrong length from another host")
        try:
            self.aead.decrypt_into(self._nonce(), record, None, view)
        except InvalidTag:
            raise _forged() from None


def _forged() -> TransferError:
    return TransferError("a stream from another host does not open: not sent with this "
                         "cluster's secret, altered, or replayed")


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    _recv_into(sock, memoryview(buf))
    return bytes(buf)


def _recv_into(sock: socket.socket, view: memoryview) -> None:
    while view:
        got = sock.recv_into(view)
        if got == 0:
            raise TransferError("the other host closed the connection")
        view = view[got:]


