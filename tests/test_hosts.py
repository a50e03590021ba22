"""Three worker hosts, each in its own network namespace with its own
address, and Redis on the bridge between them: workers register with the
address they advertise, and jobs land on whichever host has a free slot."""
from __future__ import annotations

import shutil
import time

import pytest

from conftest import UNIFORK
from netns import Hosts

SLOTS = {"hostA": 2, "hostB": 2, "hostC": 3}
pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None or
                                shutil.which("ip") is None,
                                reason="needs redis-server and iproute2 (make setup installs them)")


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    d = tmp_path_factory.mktemp("hosts")
    with Hosts(list(SLOTS)) as net:
        url = f"redis://{net.addr['hub']}:6379/0"
        net.start("hub", "redis-server", "--bind", net.addr["hub"], "--port", "6379",
                  "--save", "", "--appendonly", "no", "--dir", d, "--protected-mode", "no",
                  stdout=open(d / "redis.log", "wb"))
        deadline = time.monotonic() + 10
        while net.run("hub", "redis-cli", "-h", net.addr["hub"], "ping").stdout != b"PONG\n":
            assert time.monotonic() < deadline, "redis did not start"
            time.sleep(0.05)
        for host, slots in SLOTS.items():
            net.start(host, UNIFORK, "worker", "--host-name", host, "--slots", slots,
                      "--advertise", net.addr[host], "--redis", url,
                      stdout=open(d / f"{host}.out", "wb"), stderr=open(d / f"{host}.log", "wb"))
        net.url = url
        deadline = time.monotonic() + 30
        while hosts(net).count(" ago") < len(SLOTS):
            assert time.monotonic() < deadline, hosts(net)
            time.sleep(0.2)
        time.sleep(2)                   # Celery consumers attach to the queues
        yield net


def cli(net, *args, timeout: float = 120):
    return net.run("hub", UNIFORK, *args, "--redis", net.url, timeout=timeout) \
        if args[0] in ("hosts", "ps", "logs", "cancel", "drain") else \
        net.run("hub", UNIFORK, args[0], "--redis", net.url, *args[1:], timeout=timeout)


def hosts(net) -> str:
    return cli(net, "hosts").stdout.decode()


def test_each_host_registers_with_its_own_address_and_slots(net):
    rows = {line.split()[0]: line.split() for line in hosts(net).splitlines()[1:]}
    for host, slots in SLOTS.items():
        assert rows[host][1] == net.addr[host]
        assert rows[host][3] == str(slots)        # all free


def test_jobs_land_on_whichever_host_has_a_free_slot(net, program):
    """7 jobs that each hold a slot for a while fill 2 + 2 + 3 slots."""
    ids = [cli(net, "submit", program("waiter", "musl"), "sleep", 2500).stdout.decode().strip()
           for _ in range(sum(SLOTS.values()))]
    placed: dict[str, int] = {}
    for job_id in ids:
        deadline = time.monotonic() + 120
        while b"finished" not in cli(net, "ps", job_id).stdout:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        host = cli(net, "ps", job_id).stdout.decode().splitlines()[2].split()[2]
        placed[host] = placed.get(host, 0) + 1
        assert cli(net, "logs", job_id).stdout == b"ready\nslept\n"
    assert set(placed) == set(SLOTS), placed
    assert all(placed[h] <= SLOTS[h] for h in SLOTS), placed
