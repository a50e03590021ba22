"""A UDP relay for the pipe bridge's tests: what a bad network does.

Bridges started with UNIFORK_TEST_BRIDGE_RELAY=IP:PORT send each datagram
here as (destination address, datagram); the relay forwards it as (source
address, datagram) after doing to it, at random, what it was told:

    delay=S      hold each datagram up to S seconds (so they arrive reordered)
    dup=P        send a datagram twice, with probability P
    drop=P       lose it
    forge=P      also send a copy with one byte flipped (its MAC fails)
    replay=P     send it again a second later (a replay: already received)
    dup_every=N, forge_every=N   ... and also every Nth datagram, for sure

    python tests/relay.py IP PORT delay=0.005 dup=0.05 forge=0.01 replay=0.01
"""
from __future__ import annotations

import heapq
import random
import select
import socket
import struct
import sys
import time

ADDR = struct.Struct("!4sH")


def main() -> None:
    ip, port, *opts = sys.argv[1:]
    o = {k: float(v) for k, v in (x.split("=") for x in opts)}
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    sock.bind((ip, int(port)))
    later: list[tuple[float, int, bytes, tuple]] = []
    n = count = 0

    def every(opt: str) -> bool:
        return bool(o.get(opt)) and count % int(o[opt]) == 0

    def at(t: float, data: bytes, dst: tuple) -> None:
        nonlocal n
        n += 1
        heapq.heappush(later, (t, n, data, dst))

    while True:
        wait = max(0.0, later[0][0] - time.monotonic()) if later else None
        if select.select([sock], [], [], wait)[0]:
            data, src = sock.recvfrom(65536)
            dip, dport = ADDR.unpack_from(data)
            dst = (socket.inet_ntoa(dip), dport)
            out = ADDR.pack(socket.inet_aton(src[0]), src[1]) + data[ADDR.size:]
            now = time.monotonic()
            if random.random() < o.get("drop", 0):
                continue
            at(now + random.random() * o.get("delay", 0), out, dst)
            count += 1
            if random.random() < o.get("dup", 0) or every("dup_every"):
                at(now + random.random() * o.get("delay", 0), out, dst)
            if random.random() < o.get("forge", 0) or every("forge_every"):
                bad = bytearray(out)
                bad[random.randrange(ADDR.size, len(bad))] ^= 0x40
                at(now, bytes(bad), dst)
            if random.random() < o.get("replay", 0):
                at(now + 1.0, out, dst)
        now = time.monotonic()
        while later and later[0][0] <= now:
            _, _, data, dst = heapq.heappop(later)
            try:
                sock.sendto(data, dst)
            except OSError:
                pass


if __name__ == "__main__":
    main()
