"""Ports a worker listens on: any free one, or one of a range that the
host's firewall opens (UNIFORK_FORK_PORTS, UNIFORK_BRIDGE_PORTS,
UNIFORK_FILES_PORTS)."""
from __future__ import annotations

import random

TYPE_CHECKING = False    # (not typing's: it takes longer to import than QEMU to start)
if TYPE_CHECKING:
    from typing import Callable, TypeVar
    T = TypeVar("T")


def bind_in(span: tuple[int, int] | None, what: str, make: Callable[[int], T]) -> T:
    """make(port) on a port of (span), tried in random order, or on port 0
    (any) without one; make raises OSError when its port is taken.

    :raise OSError: every port of (span) is taken; (what) names the knob.
    """
    if span is None:
        return make(0)
    ports = list(range(span[0], span[1] + 1))
    random.shuffle(ports)
    for port in ports:
        try:
            return make(port)
        except OSError:
            continue
    raise OSError(f"no free port in {what}={span[0]}-{span[1]}")
