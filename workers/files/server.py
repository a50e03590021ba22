"""The file service of a job's home host, for its processes on other hosts.

A cluster job's tree lives with its pid 1 (its home).  The home's
supervisor serves the file calls of the processes there itself; this
server serves those of the job's processes elsewhere, each host's
subtrees over one TCP connection (remote.py is the other end), on a
thread per connection, through the same Files (which holds its lock for
each call).

A connection starts with b"UFF1" and the client's 32-byte nonce, in
clear; the server answers its own.  Then each side sends sealed records
(workers/seal.py) under keys made from the cluster secret, the job's id
and both nonces, so that only a host of the cluster can ask, and a
recorded connection cannot be played again.  A record is u32 n, n bytes
of a JSON header, and the bytes it describes (PROTOCOL in remote.py).
"""
from __future__ import annotations

import base64
import json
import logging
import mmap
import os
import socket
import struct
import threading

from workers.errors import ExecError, TransferError
from workers.files import marshal
from workers.files.tree import size_of
from workers.seal import Sealed, recv_exact

TYPE_CHECKING = False    # (not typing's: it takes longer to import than QEMU to start)
if TYPE_CHECKING:
    from workers.files.calls import Files

MAGIC = b"UFF1"
PERSON = b"unifork-files"
MAX_RECORD = marshal.MAX_REMOTE_RW + (1 << 20)
MAX_RAM = 1 << 31
_I = struct.Struct("<I")
log = logging.getLogger(__name__)


def keys(sock: socket.socket | None, secret: bytes, job_id: str, mine: bytes, theirs: bytes,
         client: bool) -> tuple[Sealed, Sealed]:
    """The two directions of a connection: (to send, to receive)."""
    c, s = (mine, theirs) if client else (theirs, mine)
    base = job_id.encode() + c + s
    up, down = Sealed(sock, secret, base + b">", PERSON), Sealed(sock, secret, base + b"<", PERSON)
    return (up, down) if client else (down, up)


def pack(header: dict, body: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return _I.pack(len(head)) + head + body


def unpack(record: bytes) -> tuple[dict, memoryview]:
    n = _I.unpack_from(record)[0]
    if n > len(record) - 4:
        raise TransferError("a file call record with a header past its end")
    try:
        header = json.loads(bytes(record[4:4 + n]))
    except ValueError as err:
        raise TransferError("a file call record whose header is not JSON") from err
    if not isinstance(header, dict):
        raise TransferError("a file call record whose header is not an object")
    return header, memoryview(record)[4 + n:]


class _Memory:
    """A sparse copy of a guest's memory: what a call reads of it is put
    in, what it writes is taken out (guestmem reads .mem and .layout)."""

    def __init__(self, ram_size: int) -> None:
        self.mem = mmap.mmap(-1, ram_size)
        self.layout = self
        self.ram_size = ram_size

    def close(self) -> None:
        self.mem.close()


class FileServer:
    """Serves (files) to the job's other hosts on (address) (its host's
    advertised address; a port of UNIFORK_FILES_PORTS, or any), as long as
    the job runs here."""

    def __init__(self, files: Files, secret: bytes, job_id: str, address: str) -> None:
        from workers import config
        from workers.ports import bind_in
        self.files, self.secret, self.job_id = files, secret, job_id
        self.sock = bind_in(config.get().files_ports, "UNIFORK_FILES_PORTS",
                            lambda port: socket.create_server((address, port)))
        self.address = f"{address}:{self.sock.getsockname()[1]}"
        self._conns: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, name="files", daemon=True).start()

    def close(self) -> None:
        self._closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for c in list(self._conns):
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), name="files-conn",
                             daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        memory = None
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if recv_exact(conn, 4) != MAGIC:
                raise TransferError("not a unifork file connection")
            theirs, mine = recv_exact(conn, 32), os.urandom(32)
            conn.sendall(mine)
            send, take = keys(conn, self.secret, self.job_id, mine, theirs, client=False)
            while True:
                header, body = unpack(take.take(MAX_RECORD))
                if header.get("op") == "hello":
                    ram = int(header.get("ram", 0))
                    if not 0 < ram <= MAX_RAM:
                        raise TransferError(f"a guest memory of {ram} bytes")
                    memory = memory or _Memory(ram)
                    send.send(pack({"ok": 1}))
                    continue
                send.send(self._answer(header, body, memory))
        except (TransferError, OSError, ValueError, KeyError, TypeError) as err:
            if not self._closed:        # (a subtree that ends closes its connection)
                log.info("a file connection from another host ended: %s", err)
        finally:
            self._conns.discard(conn)
            conn.close()
            if memory is not None:
                memory.close()

    def _answer(self, h: dict, body: memoryview, memory: _Memory | None) -> bytes:
        op, files = h["op"], self.files
        if op == "call":
            if memory is None:
                raise TransferError("a file call before hello")
            return self._call(h, body, memory)
        if op == "fork":
            files.fork(int(h["parent"]), int(h["child"]))
        elif op == "end":
            files.end(int(h["pid"]))
        elif op == "exec":
            return self._exec(h)
        elif op == "fetch":
            return self._fetch(h)
        elif op == "exec_done":
            exe = base64.b64decode(h["exe"]) if h.get("exe") is not None else None
            files.exec_done(int(h["pid"]), _Done(exe, str(h["host"])))
        else:
            raise TransferError(f"an unknown file operation {op!r}")
        return pack({"ok": 1})

    def _call(self, h: dict, body: memoryview, memory: _Memory) -> bytes:
        mem, at = memory.mem, 0
        for addr, n in h["reads"]:
            if not 0 <= addr <= addr + n <= memory.ram_size or at + n > len(body):
                raise TransferError("a file call's data outside the guest's memory")
            mem[addr:addr + n] = body[at:at + n]
            at += n
        ret, val = self.files.call_with(int(h["pid"]), memory, int(h["nr"]),
                                        [int(a) for a in h["args"]])
        out = []
        for addr, n in marshal.cut([tuple(w) for w in h["writes"]], ret):
            if not 0 <= addr <= addr + n <= memory.ram_size:
                raise TransferError("a file call's result outside the guest's memory")
            out.append((addr, n))
        data = b"".join(mem[a:a + n] for a, n in out)
        if len(data) >= 1 << 16:
            for addr, n in out:         # give back the pages of big buffers
                start, end = addr & ~0xFFF, (addr + n) & ~0xFFF
                if end > start:
                    mem.madvise(mmap.MADV_DONTNEED, start, end - start)
        return pack({"ret": ret, "val": val, "writes": out}, data)

    def _exec(self, h: dict) -> bytes:
        argv = [base64.b64decode(a) for a in h["argv"]]
        try:
            found = self.files.find_program(int(h["pid"]), base64.b64decode(h["path"]), argv,
                                            int(h["dirh"]), int(h["limit"]))
        except ExecError as err:
            return pack({"code": err.code, "why": err.why})
        key = found.key
        data = b"" if key in h.get("have", ()) else found.prog.data
        return pack({"exe": base64.b64encode(found.exe).decode(), "host": found.host,
                     "in_tree": found.in_tree, "key": key,
                     "argv": [base64.b64encode(a).decode() for a in found.argv]}, data)


    def _fetch(self, h: dict) -> bytes:
        """The files at (paths) in the tree (directories with what they
        hold), as a tar archive: `unifork fetch` of a running job."""
        import io
        import tarfile
        from workers import config
        from workers.files.linux import AT_FDCWD
        buf, total, limit = io.BytesIO(), 0, config.get().input_max
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for path in h.get("paths") or ["/"]:
                with self.files.lock:
                    try:
                        place = self.files.walk_path(1, AT_FDCWD, os.fsencode(path), True)
                    except OSError as err:
                        return pack({"error": f"{path}: {err.strerror}"})
                    place.release()
                    host = self.files.tree.host_path(place.guest)
                if place.special is not None or host is None or not os.path.lexists(host):
                    return pack({"error": f"{path}: no such file in the job's tree"})
                total += size_of(host)
                if total > limit:
                    return pack({"error": f"more than the {limit} bytes UNIFORK_INPUT_MAX "
                                          "allows"})
                tar.add(host, arcname=b"/".join(place.guest).decode(errors="replace") or ".")
        return pack({"ok": 1}, buf.getvalue())


class _Done:
    """What exec_done needs of a Found."""

    def __init__(self, exe: bytes | None, host: str) -> None:
        self.exe, self.host, self.in_tree = exe, host, exe is not None
