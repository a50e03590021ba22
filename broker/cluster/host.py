"""This KVM host as the cluster sees it, from inside one of its workers.

Its name and incarnation (broker/cluster/agent.py registers them), the
address other hosts reach it at, its slots (VMs that run a process,
counted in Redis) and its cache of program images, kept by content hash.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile

from broker import keys, placement, state

from workers import config
from workers.errors import BadProgram

IMAGE_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "unifork", "images")


def host_name() -> str:
    return config.get().host_name or os.uname().nodename


def host_incarnation() -> str:
    """This worker's incarnation (state.register_host), "" outside one."""
    return config.get().incarnation


class RedisSlots:
    """This host's slots as the cluster sees them (the host's hash in Redis)."""

    def __init__(self, r, host: str) -> None:
        self.r, self.host = r, host
        self.limit = int(r.hget(keys.host(host), "slots") or 0)

    def take(self) -> bool:
        return placement.take_slot(self.r, self.host)

    def give(self) -> None:
        placement.give_slot(self.r, self.host)


def cached_image(r, sha: str) -> str:
    """The path of image (sha) on this host, fetched from Redis once."""
    path = os.path.join(IMAGE_CACHE, sha)
    if os.path.exists(path):
        return path
    data = state.get_image(r, sha)
    if data is None or hashlib.sha256(data).hexdigest() != sha:
        raise BadProgram(f"image {sha} is not in Redis")
    os.makedirs(IMAGE_CACHE, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=IMAGE_CACHE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    return path


def address(r, host: str) -> str:
    """Where other hosts reach (host): what its worker advertised."""
    return (r.hget(keys.host(host), "address") or b"127.0.0.1").decode()


@dataclasses.dataclass
class Here:
    """This host, for a task: a Redis client (of (url)), its name,
    incarnation and address, and its slots."""

    url: str
    r: object
    host: str
    incarnation: str
    address: str
    slots: RedisSlots

    @classmethod
    def connect(cls, url: str) -> Here:
        r = state.connect(url)
        name = host_name()
        return cls(url, r, name, host_incarnation(), address(r, name), RedisSlots(r, name))

    def image_path(self, sha: str) -> str:
        return cached_image(self.r, sha)
