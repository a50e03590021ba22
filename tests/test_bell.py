"""The fast doorbell (guest/kernel/bell.c, workers/native/bell.c, bell.py):
a VM of a job across hosts has a vhost-user-blk device; a guest that waits
on a bridged ring sets it up, and from then on its doorbells are writes to
the device's notify register that KVM turns into a signal on the bell's
eventfd, not bytes on COM2.  A real VM under KVM runs `cat`."""
from __future__ import annotations

import os
import select
import time

import pytest

from workers import abi, config
from workers.vm import elf
from workers.vm.bell import bells
from workers.vm.layout import Layout
from workers.vm.qemu import kvm_usable
from workers.vm.rings import SharedRegion
from workers.vm.machine import VM

pytestmark = pytest.mark.skipif(
    not kvm_usable(), reason="the fast doorbell needs KVM's ioeventfd; under TCG (no "
    "/dev/kvm here) the guest keeps COM2")
MIB = 32


def readable(fd: int, seconds: float = 20.0) -> bool:
    return bool(select.select([fd], [], [], seconds)[0])


def com2_bytes(vm: VM) -> int:
    """The doorbell bytes the guest wrote to COM2 since the last call."""
    n = 0
    try:
        while chunk := vm.bell.recv(4096):
            n += len(chunk)
    except BlockingIOError:
        pass
    return n


@pytest.fixture
def cat(example):
    """pid 1 is cat with a bridged stdin (hunger told: the guest rings when
    it finds stdin empty), and a fast doorbell."""
    shm = SharedRegion()
    rings = [shm.new_ring() for _ in range(3)]
    rings[0][1].bridged = abi.BRIDGED | abi.BRIDGED_TELL
    path = str(example("cat", "musl"))
    with open(path, "rb") as f:
        prog = elf.parse(path, f.read(), abi.PIE_BASE, Layout(MIB << 20).mmap_top)
    vm = VM(MIB, shm, fast_bell=True)
    vm.load(prog, [b"cat"], [], path.encode(), pid=1, ppid=0,
            stdio=tuple(i for i, _ in rings))
    vm.start()
    yield vm, [r for _, r in rings]
    vm.close()
    shm.close()


def feed(vm: VM, stdin, data: bytes, close: bool = False) -> None:
    stdin.write(data)
    if close:
        stdin.close_write()
    vm.wake()                   # (if it sleeps on stdin)


def test_a_guest_hungry_on_a_bridged_ring_rings_the_fast_doorbell_not_com2(cat):
    vm, (stdin, stdout, _) = cat
    assert vm.fast is not None
    assert readable(vm.fast.fd), "the fast doorbell never rang"
    assert vm.fast.take()
    assert bells().stats()["kicks"] >= 1
    com2_bytes(vm)
    feed(vm, stdin, b"a")       # cat copies it, finds stdin empty again and rings
    assert readable(vm.fast.fd), "the fast doorbell did not ring again"
    assert vm.fast.take()
    assert com2_bytes(vm) == 0, "a doorbell still went through COM2"
    feed(vm, stdin, b"bc\n", close=True)
    deadline = time.monotonic() + 20
    while vm.poll() is None and time.monotonic() < deadline:
        vm.wake()
        time.sleep(0.01)
    assert vm.poll() == 0 or abi.CTL.get(vm.mem, abi.CTL_ADDR, "state") == abi.State.EXITED
    assert stdout.read()[0] == b"abc\n"


def test_only_a_vm_asked_for_it_has_a_fast_doorbell_and_the_knob_turns_it_off(monkeypatch):
    shm = SharedRegion()
    try:
        for kwargs, knob, has in (({}, "1", False), ({"fast_bell": True}, "1", True),
                                  ({"fast_bell": True}, "0", False)):
            monkeypatch.setattr(config, "_current",
                                config.load({**os.environ, "UNIFORK_FAST_BELL": knob}))
            vm = VM(MIB, shm, **kwargs)
            assert (vm.fast is not None) == has, (kwargs, knob)
            vm.close()
    finally:
        shm.close()


def test_qemu_gets_the_device_only_with_a_vhost_user_socket():
    from workers.vm.qemu import VMSpec
    base = ("kernel.elf", MIB, 66, 3, 4, 5, 6)
    assert "vhost-user-blk" not in " ".join(VMSpec(*base, kvm=True).argv())
    argv = " ".join(VMSpec(*base, kvm=True, fast_bell_fd=7).argv())
    assert "socket,id=fastbell,fd=7" in argv and "vhost-user-blk,chardev=fastbell" in argv


def test_a_forked_process_starts_a_backend_of_its_own():
    parent = bells()
    pid = os.fork()
    if pid == 0:                        # (no pytest here: the exit status says it)
        ok = False
        try:
            ok = bells() is not parent and bells().stats()["messages"] == 0
        finally:
            os._exit(0 if ok else 1)
    assert os.waitpid(pid, 0)[1] == 0
    assert bells() is parent


def test_a_qemu_gone_with_an_answer_unread_costs_the_process_no_descriptor():
    """QEMU killed with our last answer unread: the backend's next read
    fails (ECONNRESET).  It must not take the failed read's unset control
    data for descriptors sent to it, and close them: they are anybody's by
    now, here a file that took the number of one it had received."""
    import socket
    import struct
    head = struct.Struct("<III")
    ours, qemu = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    bell = bells().open(ours.detach())
    try:
        sent = os.eventfd(0)
        qemu.sendmsg([head.pack(13, 1, 8) + struct.pack("<Q", 0)],       # SET_VRING_CALL
                     [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", sent))])
        os.close(sent)
        qemu.sendall(head.pack(1, 1, 0))                                # GET_FEATURES
        assert readable(qemu.fileno(), 5)
        assert head.unpack(qemu.recv(12))[0] == 1 and len(qemu.recv(8)) == 8
        # the backend closed its copy of the eventfd: a file of ours takes the number
        files = [os.open(os.devnull, os.O_RDONLY) for _ in range(8)]
        qemu.sendall(head.pack(1, 1, 0))
        assert readable(qemu.fileno(), 5)
        qemu.close()                                    # the answer unread
        time.sleep(0.2)
        for fd in files:
            os.fstat(fd)                                # EBADF if it was closed
            os.close(fd)
        assert bells().stats()["refused"] + bells().stats()["hangups"] >= 1
    finally:
        bell.close()
