"""The files of a subtree on another host than its job's home: every file
call, fork, end and exec of its processes is asked of the home's file
server (server.py) over one sealed connection, made at the first need.

    PROTOCOL (client -> server, each answered in turn)
    hello      {ram}                                  -> {ok}
    call       {pid, nr, args, reads, writes} + bytes -> {ret, val, writes} + bytes
    fork       {parent, child}                        -> {ok}
    end        {pid}                                  -> {ok}
    exec       {pid, path, argv, dirh, limit, have}   -> {exe, host, in_tree, key, argv}
                                                         + the program, unless in have
                                                         | {code, why}
    exec_done  {pid, exe, host}                       -> {ok}
    fetch      {paths}                                -> {ok} + a tar archive of them
                                                         | {error}

(bytes: the regions of guest memory the call reads, then those it wrote,
in the order the header lists them; paths and argv in base64.)  If the
home cannot be reached, file calls fail with EIO and the job's stderr
says why, once.
"""
from __future__ import annotations

import base64
import errno
import os
import socket
import threading

from workers import abi
from workers.errors import ExecError, TransferError
from workers.files import marshal, programs, server
from workers.seal import recv_exact
from workers.vm import guestmem

TYPE_CHECKING = False    # (not typing's: it takes longer to import than QEMU to start)
if TYPE_CHECKING:
    from typing import Callable

    from workers.vm.machine import VM

CACHED = 8                      # programs kept here, by key
UNREAD = 64                     # notices sent before their answers are read


class RemoteFiles:
    """The file service of a subtree: (where)() is the home's file server
    (HOST:PORT, or None if the job has none); (say)(pid, msg) a line on
    the job's stderr; (ram) the size of the job's VMs."""

    def __init__(self, where: Callable[[], str | None], secret: bytes, job_id: str,
                 say: Callable[[int, str], None], ram: int) -> None:
        self.where, self.secret, self.job_id, self._say = where, secret, job_id, say
        self.ram = ram
        self._sock: socket.socket | None = None
        self._send = self._take = None
        self._lock = threading.Lock()
        self._unread = 0            # answers to notices (tell) not read yet
        self._said: set[str] = set()
        self._programs: dict[str, bytes] = {}      # key -> the program's bytes

    def say(self, pid: int, msg: str) -> None:
        if msg not in self._said:
            self._said.add(msg)
            self._say(pid, msg)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # -- the connection ----------------------------------------------------------
    def _connect(self) -> None:
        addr = self.where()
        if not addr:
            raise TransferError("the job's home has no file server")
        host, _, port = addr.rpartition(":")
        sock = socket.create_connection((host, int(port)), timeout=30)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            mine = os.urandom(32)
            sock.sendall(server.MAGIC + mine)
            theirs = recv_exact(sock, 32)
            self._send, self._take = server.keys(sock, self.secret, self.job_id, mine, theirs,
                                                 client=True)
            self._send.send(server.pack({"op": "hello", "ram": self.ram}))
            server.unpack(self._take.take(server.MAX_RECORD))
            self._sock = sock
        except BaseException:
            sock.close()
            self._sock = None
            raise

    def _ask(self, header: dict, body: bytes = b"") -> tuple[dict, memoryview]:
        with self._lock:
            self._put(header, body)
            self._drain()                       # the notices' answers come first
            return server.unpack(self._take.take(server.MAX_RECORD))

    def _tell(self, header: dict) -> None:
        """Send (header) without waiting for its answer (read with the next
        ask's): the home serves a connection in order, so whatever this
        subtree asks next finds it done."""
        with self._lock:
            self._put(header, b"")
            self._unread += 1
            if self._unread >= UNREAD:  # (or the answers would fill the socket)
                self._drain()

    def _drain(self) -> None:
        for _ in range(self._unread):
            self._take.take(server.MAX_RECORD)
        self._unread = 0

    def _put(self, header: dict, body: bytes) -> None:
        if self._sock is None:
            self._connect()
            self._unread = 0
        self._send.send(server.pack(header, body))

    def _out_of_reach(self, pid: int, err: Exception) -> int:
        self.close()
        self.say(pid, f"the job's files are out of reach (on its home host): {err}: EIO")
        return -errno.EIO

    # -- what the Job asks -------------------------------------------------------
    def call(self, pid: int, vm: VM, nr: int) -> tuple[int, int]:
        args = list(abi.CTL.get(vm.mem, abi.CTL_ADDR, "sysarg"))
        try:
            reads, writes = marshal.regions(vm, nr, args)
        except ValueError:
            return -errno.EFAULT, 0
        except OverflowError:
            return -errno.EINVAL, 0
        header = {"op": "call", "pid": pid, "nr": nr, "args": args,
                  "reads": [(a, len(b)) for a, b in reads], "writes": writes}
        try:
            reply, data = self._ask(header, b"".join(b for _, b in reads))
            self._apply(vm, writes, reply.get("writes", ()), data)
        except (OSError, TransferError, ValueError, KeyError) as err:
            return self._out_of_reach(pid, err), 0
        return int(reply["ret"]), int(reply["val"])

    @staticmethod
    def _apply(vm: VM, declared: list, written, data: memoryview) -> None:
        """Put what the call wrote into the guest's memory: only inside
        the regions the call was asked to write."""
        at = 0
        for addr, n in written:
            if not any(a <= addr and addr + n <= a + m for a, m, _ in declared):
                raise TransferError("the home wrote outside the call's buffers")
            guestmem.span(vm, addr, n)[:] = data[at:at + n]
            at += n

    def fork(self, parent: int, child: int, here: bool = False) -> None:
        """(child) holds what (parent) holds.  A child (here), in this
        subtree, asks on this connection, after the notice: no need to wait
        (the fork path); one elsewhere asks on its own, so we wait."""
        try:
            if here:
                self._tell({"op": "fork", "parent": parent, "child": child})
            else:
                self._ask({"op": "fork", "parent": parent, "child": child})
        except (OSError, TransferError) as err:
            self._out_of_reach(parent, err)

    def end(self, pid: int) -> None:
        """(pid) has ended here.  With no connection yet, nothing of this
        subtree was told to the home: its root's hold was the parent's
        host's to make, and that host tells the home of its end too
        (remote.remote_ended), so a child that used no files costs its end
        no connection."""
        if self._sock is None:
            return
        try:
            self._tell({"op": "end", "pid": pid})
        except (OSError, TransferError) as err:
            self._out_of_reach(pid, err)

    def find_program(self, pid: int, path: bytes, argv: list[bytes], dirh: int,
                     limit: int) -> programs.Found:
        b64 = lambda b: base64.b64encode(b).decode()       # noqa: E731
        try:
            reply, data = self._ask({"op": "exec", "pid": pid, "path": b64(path),
                                     "argv": [b64(a) for a in argv], "dirh": dirh,
                                     "limit": limit, "have": list(self._programs)})
        except (OSError, TransferError) as err:
            self._out_of_reach(pid, err)
            raise ExecError(errno.EIO, "the job's files are out of reach") from err
        if "code" in reply:
            raise ExecError(int(reply["code"]), str(reply["why"]))
        key, exe = str(reply["key"]), base64.b64decode(reply["exe"])
        image = bytes(data) or self._programs.get(key)
        if image is None:
            raise ExecError(errno.EIO, "the home did not send the program")
        if len(self._programs) >= CACHED:
            self._programs.pop(next(iter(self._programs)))
        self._programs[key] = image
        prog = programs.parse_cached(key, exe, image, limit)
        return programs.Found(prog, exe, str(reply["host"]),
                              [base64.b64decode(a) for a in reply["argv"]],
                              in_tree=bool(reply["in_tree"]), key=key)

    def exec_done(self, pid: int, found: programs.Found) -> None:
        exe = base64.b64encode(found.exe).decode() if found.in_tree else None
        try:
            self._ask({"op": "exec_done", "pid": pid, "exe": exe, "host": found.host})
        except (OSError, TransferError) as err:
            self._out_of_reach(pid, err)


def fetch(address: str, secret: bytes, job_id: str, paths: list[str]) -> bytes:
    """The files at (paths) of a running job's tree, from its file server
    at (address), as a tar archive (`unifork fetch`).

    :raise TransferError: the server cannot be reached, or refuses.
    """
    rf = RemoteFiles(lambda: address, secret, job_id, lambda pid, msg: None, 1 << 20)
    try:
        reply, data = rf._ask({"op": "fetch", "paths": paths})
    except OSError as err:
        raise TransferError(f"the job's files cannot be reached at {address}: {err}") from err
    finally:
        rf.close()
    if "error" in reply:
        raise TransferError(str(reply["error"]))
    return bytes(data)
