"""The wire format of a fork across hosts: the parent's host sends the
RAM its parent holds straight to the child's host over TCP, sealed with
AES-256-GCM, while the parent waits for its fork to be answered.

One connection per fork; the child's host listens (its address is in the
fork's placement, or in the offer the parent's host took) and the
parent's host connects; to an offer, it sends the fork's nonce first, in
the clear (OFFER_NONCE bytes).  Each direction is a
series of records, u32 n and n bytes sealed (ciphertext and a 16-byte tag);
record i is sealed under nonce i with a key made from the cluster secret
and the fork's nonce, one key per direction.  The nonce is fresh for each
fork, made by the parent's host and sent with the fork's task (a ticket is
claimed once), so that the parent's host seals its RAM while the task
travels (seal_ram) and sends it as soon as it is placed.  In the clear, the
records are:

    parent → child   b"UFK3", u32 n, n bytes of JSON header (pid, ppid,
                        ram_size, the guest kernel, clocks, pipes, devices;
                        sent to an offer, the fork's task too)
                     per extent of RAM: (u64 offset, u64 length), then its
                        bytes, one record per MiB; then (0, 0)
    child → parent   JSON: {"ok": true} or {"error": why}

The child's VM is a parked one on the receiving host (clone.py, arrival.py): what goes
below UF_USER_BASE, where its parked kernel runs, is held aside until every
record has opened, and the rest, which it does not touch, is decrypted
straight into its RAM file; it is let go only when everything has opened.
A stream made without the cluster secret, altered, cut, reordered or
replayed (the fork's nonce, hence its keys, is new for every fork) never
runs anything, nor do its bytes cross the network in clear.  Sealing costs
~0.13 ms a MiB each side here.
"""
from __future__ import annotations

import json
import socket
import struct

from workers.errors import TransferError
from workers.seal import Sealed

MAGIC = b"UFK3"
OFFER_NONCE = 16
MAX_HEADER = 1 << 16
CHUNK = 1 << 20
PERSON = b"unifork-fork"
_I, _QQ = struct.Struct("<I"), struct.Struct("<QQ")


def _Sealed(sock, secret: bytes, nonce: bytes, direction: bytes, first: int = 0) -> Sealed:
    return Sealed(sock, secret, nonce + direction, PERSON, first)


def seal_ram(secret: bytes, nonce: bytes, ram: memoryview, extents) -> list[bytearray]:
    """The records of a fork stream after its header: the (extents) of
    (ram), sealed, ready for send_fork."""
    out = _Sealed(None, secret, nonce, b">", first=1)   # record 0 is the header
    records = []
    for off, length in extents:
        records.append(out.seal(_QQ.pack(off, length)))
        for at in range(off, off + length, CHUNK):
            records.append(out.seal(ram[at:min(at + CHUNK, off + length)]))
    records.append(out.seal(_QQ.pack(0, 0)))
    return records


def send_fork(sock: socket.socket, secret: bytes, nonce: bytes, header: dict,
              ram_records: list[bytearray]) -> None:
    """Send one fork: (header), sealed now, then the records seal_ram made."""
    head = json.dumps(header).encode()
    _Sealed(sock, secret, nonce, b">").send(MAGIC + _I.pack(len(head)) + head)
    for record in ram_records:
        sock.sendall(record)


class Received:
    """A fork stream, opened: its header, the extents of RAM it held, and
    those below (aside) kept here, (offset, bytes), not yet in RAM; its
    (records) to read the RAM from."""

    def __init__(self, header: dict, records: Sealed) -> None:
        self.header, self.records = header, records
        self.extents: list[tuple[int, int]] = []
        self.aside: list[tuple[int, bytearray]] = []


def receive_fork(sock: socket.socket, secret: bytes, nonce: bytes,
                 ram: memoryview, aside: int) -> Received:
    """Receive one fork: RAM at offsets from (aside) on goes straight into
    (ram), the child's mapping; what is below is kept in the result.

    :raise TransferError: a malformed stream, or one that does not open.
    """
    got = open_fork(sock, secret, nonce)
    receive_ram(got, ram, aside)
    return got


def open_fork(sock: socket.socket, secret: bytes, nonce: bytes) -> Received:
    """Open the header of a fork stream (what follows is its RAM).

    :raise TransferError: not a fork stream, or one that does not open.
    """
    got = _Sealed(sock, secret, nonce, b">")
    first = got.take(8 + MAX_HEADER)
    if first[:4] != MAGIC:
        raise TransferError("not a unifork fork stream")
    n = _I.unpack_from(first, 4)[0]
    if n != len(first) - 8:
        raise TransferError("a fork header of the wrong length")
    try:
        header = json.loads(first[8:])
    except ValueError as err:
        raise TransferError("fork header is not JSON") from err
    if not isinstance(header, dict):
        raise TransferError("fork header is not a JSON object")
    return Received(header, got)


def receive_ram(got: Received, ram: memoryview, aside: int) -> None:
    """The RAM of (got): from (aside) on straight into (ram), the rest
    kept in got.aside.

    :raise TransferError: a malformed extent, or records that do not open.
    """
    size, last, records = len(ram), 0, got.records
    while True:
        extent = records.take(_QQ.size)
        if len(extent) != _QQ.size:
            raise TransferError("a malformed RAM extent")
        off, length = _QQ.unpack(extent)
        if length == 0:
            return
        if off % 4096 or length % 4096 or off < last or off + length > size:
            raise TransferError(f"RAM extent {off:#x}+{length:#x} is out of order or "
                                f"outside the VM's {size >> 20} MiB")
        last = off + length
        got.extents.append((off, length))
        for at in range(off, off + length, CHUNK):
            end = min(at + CHUNK, off + length)
            if at < aside:      # a record is opened whole: all of it aside
                buf = bytearray(end - at)
                records.take_into(memoryview(buf))
                got.aside.append((at, buf))
            else:
                records.take_into(ram[at:end])


def send_reply(sock: socket.socket, secret: bytes, nonce: bytes, reply: dict) -> None:
    _Sealed(sock, secret, nonce, b"<").send(json.dumps(reply).encode())


def receive_reply(sock: socket.socket, secret: bytes, nonce: bytes) -> dict:
    return json.loads(_Sealed(sock, secret, nonce, b"<").take(MAX_HEADER))
