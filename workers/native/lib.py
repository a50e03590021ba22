"""The Python twin of ufnet.h, the interface of libufnet.so (the host's
native half, built by `make setup` from the C here): its loading, the type
of every function Python calls, and the constants both sides read.
tests/test_native.py checks each against the header.

The C: the pipe bridge's channels (channel.c), its data path between the
rings and the channels (relay.c), and the fast doorbell's vhost-user
backend (bell.c).
"""
from __future__ import annotations

import ctypes
import os
import struct

LIBRARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "libufnet.so")

# The pipe bridge's frames: kind, length (little-endian), then the bytes.
FRAME = struct.Struct("<cI")                # UF_FRAME_HEAD bytes
FRAME_DATA, FRAME_STATE = b"U", b"S"
BEYOND_WRITERS, BEYOND_READERS, BEYOND_HUNGRY, BEYOND_KEEPS = 1, 2, 4, 8


class ChanState:
    """uf_chan_state()'s flags (UF_CHAN_*)."""

    DEAD = 1
    HAS_PEER = 2
    ACK_DUE = 4
    GONE = 8
    CLOSING = 16
    ACK_AT = 32


# The counters of uf_ep_stats(), uf_relay_stats(), uf_bells_stats(), in order.
EP_STATS = ("forged", "stale", "duplicate", "timeouts", "recoveries", "retransmits",
            "sent", "received", "acks")
RELAY_STATS = ("turns", "supervisor", "forwarded", "delivered", "for_frames", "for_death",
               "for_doorbell")
BELLS_STATS = ("messages", "kicks", "hangups", "refused")

FILTER = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_uint64)
_p, _i, _u64, _d, _s, _b = (ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64, ctypes.c_double,
                            ctypes.c_size_t, ctypes.c_char_p)
_P = ctypes.POINTER
# name: (result, arguments), as ufnet.h declares them
PROTOTYPES: dict[str, tuple] = {
    "uf_ep_new": (_p, [_b, _i, _d, _b, _i]), "uf_ep_free": (None, [_p]),
    "uf_ep_fileno": (_i, [_p]), "uf_ep_address": (_i, [_p, _b]),
    "uf_ep_receive": (_i, [_p, _d]), "uf_ep_flush": (None, [_p, _d]),
    "uf_ep_news": (_i, [_p, _b, _i]), "uf_ep_count": (_i, [_p]),
    "uf_ep_lingering": (_i, [_p]), "uf_ep_stats": (_p, [_p]),
    "uf_ep_set_filter": (None, [_p, FILTER]),
    "uf_chan_new": (_p, [_p, _b, _b, _b, _b, _i]), "uf_ep_drop": (None, [_p, _p]),
    "uf_chan_free": (None, [_p]), "uf_chan_send": (_i, [_p, _b, _s]),
    "uf_chan_room": (_s, [_p]), "uf_chan_inbuf": (_p, [_p, _P(_s)]),
    "uf_chan_consume": (None, [_p, _s]), "uf_chan_idle": (_i, [_p]),
    "uf_chan_state": (_i, [_p]), "uf_chan_peer": (_i, [_p, _b]),
    "uf_chan_kill": (None, [_p]), "uf_chan_want_ack": (None, [_p]),
    "uf_chan_on_data": (None, [_p, _p, _u64, _b, _s]),
    "uf_relay_new": (_p, [_p, _p]), "uf_relay_free": (None, [_p]),
    "uf_relay_lock": (None, [_p]), "uf_relay_unlock": (None, [_p, _i]),
    "uf_relay_efd": (_i, [_p]), "uf_relay_route": (None, [_p, _i, _p]),
    "uf_relay_deliver": (None, [_p, _p, _i]), "uf_relay_forward": (_i, [_p, _i]),
    "uf_relay_want_idle": (None, [_p, _p]),
    "uf_relay_vms": (_i, [_p, _i, _P(_i), _P(_u64), _P(_u64), _P(ctypes.c_int64), _u64, _u64]),
    "uf_relay_stats": (_p, [_p]), "uf_sleeper_ready": (_i, [_p, _p]),
    "uf_bells_new": (_p, []), "uf_bells_free": (None, [_p]), "uf_bells_stats": (_p, [_p]),
    "uf_bell_new": (_p, [_p, _i]), "uf_bell_free": (None, [_p, _p]),
    "uf_bell_fd": (_i, [_p]), "uf_bell_take": (_i, [_p]),
}


def native() -> ctypes.CDLL:
    """libufnet.so (built by `make setup`), its functions typed."""
    global _lib
    if _lib is not None:
        return _lib
    try:
        lib = ctypes.CDLL(LIBRARY, use_errno=True)
    except OSError as err:
        raise OSError(f"the host's native half: {err} (`make setup` builds it)") from None
    for name, (res, args) in PROTOTYPES.items():
        f = getattr(lib, name)
        f.restype, f.argtypes = res, args
    _lib = lib
    return lib


def counters(names: tuple[str, ...], address: int) -> dict[str, int]:
    """The counters at (address) (a uint64_t array of the library's), by name."""
    return dict(zip(names, (ctypes.c_uint64 * len(names)).from_address(address)))


_lib: ctypes.CDLL | None = None
