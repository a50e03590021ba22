"""The VMs a worker process keeps for forks from other hosts: its spare,
and a job's VM kept for a few seconds after its process there ended
(workers/fork/arrival.py).  Real QEMU VMs; no cluster."""
from __future__ import annotations

import time

import pytest

from workers import abi
from workers.fork import arrival
from workers.fork.arrival import Arrival


@pytest.fixture
def parked():
    """A VM booted with no program, parked, and its region."""
    a = Arrival(64)
    deadline = time.monotonic() + 30
    while not a.vm.parked:
        assert a.vm.poll() is None and time.monotonic() < deadline, a.vm.qemu_stderr()
        time.sleep(0.01)
    vm, shm, a.vm, a.shm = a.vm, a.shm, None, None
    a.close()
    yield vm, shm
    kept = [arrival._kept.pop(job)[1] for job in list(arrival._kept)]
    with arrival._lock:
        spare, arrival._spare = arrival._spare, None
    for a in kept + [spare]:
        if a is not None:
            if a.vm is vm:
                vm = shm = None             # closed with it
            a.close()
    if vm is not None and vm.poll() is None:
        vm.close()
    if shm is not None and not shm.map.closed:
        shm.close()


def test_a_vm_kept_for_a_job_goes_to_that_jobs_next_fork_only(parked):
    vm, shm = parked
    arrival.keep("job-1", vm, shm, 64, "")
    assert arrival.kept_job() == "job-1"
    other = arrival.vessel(64, "job-2")
    try:
        assert other.vm is not vm                   # a VM of its own
        assert arrival.kept_job() == "job-1"
    finally:
        other.close()
    mine = arrival.vessel(64, "job-1")
    try:
        assert mine.vm is vm and mine.shm is shm and mine.job == "job-1"
        assert arrival.kept_job() == ""
    finally:
        mine.close()


def test_a_kept_vm_given_back_stays_its_jobs(parked):
    vm, shm = parked
    arrival.keep("job-1", vm, shm, 64, "")
    a = arrival.arrival(64, "127.0.0.1", b"n" * 16, "job-1")
    assert a.vm is vm
    arrival.give_back(a)                # the fork went elsewhere
    assert arrival._spare is None and arrival.kept_job() == "job-1"


def test_the_region_of_a_kept_vm_is_scrubbed(parked):
    vm, shm = parked
    off = abi.shm_ring_off(5)
    shm.map[off:off + 64] = (b"secret of the last process here " * 2)[:64]
    abi.SHM.put(shm.map, 0, used=1 << 5)
    arrival.keep("job-1", vm, shm, 64, "")
    assert shm.map[off:off + 64] == bytes(64)
    assert abi.SHM.get(shm.map, 0, "used") == 0
    assert abi.SHM.get(shm.map, 0, "magic") == abi.SHM_MAGIC


def test_a_kept_vm_is_let_go_after_a_while(parked, monkeypatch):
    vm, shm = parked
    monkeypatch.setattr(arrival, "KEEP_FOR", 0.1)
    arrival.keep("job-1", vm, shm, 64, "")
    time.sleep(0.2)
    arrival.expire()
    assert arrival.kept_job() == "" and vm.poll() is not None


def test_a_job_keeps_one_vm_per_process(parked):
    vm, shm = parked
    arrival.keep("job-1", vm, shm, 64, "")
    second = Arrival(64)
    arrival.keep("job-1", second.vm, second.shm, 64, "")    # one kept already: let go
    assert second.vm.poll() is not None
    assert arrival._kept["job-1"][1].vm is vm
