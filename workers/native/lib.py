"""The native half of the host (libufnet.so, built by `make setup` from
the C here): its loading, and the type of every function Python calls,
as ufnet.h declares them (tests/test_native.py checks the two agree).

The C: the pipe bridge's channels (channel.c), its data path between the
rings and the channels (relay.c), and the fast doorbell's vhost-user
backend (bell.c).
"""
from __future__ import annotations

import ctypes
import os

FILTER = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_uint64)
LIBRARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "libufnet.so")


def native() -> ctypes.CDLL:
    """libufnet.so (built by `make setup`), its functions typed."""
    global _lib
    if _lib is not None:
        return _lib
    try:
        lib = ctypes.CDLL(LIBRARY, use_errno=True)
    except OSError as err:
        raise OSError(f"the pipe bridge's native half: {err} (`make setup` builds it)") \
            from None
    p, i, u64, d, s, b = (ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64, ctypes.c_double,
                          ctypes.c_size_t, ctypes.c_char_p)
    for name, res, args in (
            ("uf_ep_new", p, [b, i, d, b, i]), ("uf_ep_free", None, [p]),
            ("uf_chan_new", p, [p, b, b, b, b, i]), ("uf_chan_free", None, [p]),
            ("uf_ep_drop", None, [p, p]), ("uf_ep_receive", i, [p, d]),
            ("uf_ep_flush", None, [p, d]),
            ("uf_ep_lingering", i, [p]), ("uf_ep_news", i, [p, b, i]),
            ("uf_ep_count", i, [p]), ("uf_ep_fileno", i, [p]),
            ("uf_ep_stats", p, [p]), ("uf_ep_address", i, [p, b]),
            ("uf_ep_set_filter", None, [p, FILTER]),
            ("uf_chan_send", i, [p, b, s]), ("uf_chan_consume", None, [p, s]),
            ("uf_chan_idle", i, [p]), ("uf_chan_room", s, [p]),
            ("uf_chan_state", i, [p]), ("uf_chan_want_ack", None, [p]),
            ("uf_chan_kill", None, [p]),
            ("uf_chan_inbuf", p, [p, ctypes.POINTER(s)]), ("uf_chan_peer", i, [p, b]),
            ("uf_chan_on_data", None, [p, p, u64, b, s]),
            ("uf_relay_new", p, [p, p]), ("uf_relay_free", None, [p]),
            ("uf_relay_lock", None, [p]), ("uf_relay_unlock", None, [p, i]),
            ("uf_relay_efd", i, [p]), ("uf_relay_route", None, [p, i, p]),
            ("uf_relay_forward", i, [p, i]), ("uf_relay_want_idle", None, [p, p]),
            ("uf_relay_deliver", None, [p, p, i]),
            ("uf_relay_vms", i, [p, i, ctypes.POINTER(i), ctypes.POINTER(u64),
                                    ctypes.POINTER(u64), ctypes.POINTER(ctypes.c_int64), u64,
                                    u64]),
            ("uf_relay_stats", p, [p]),
            ("uf_bells_new", p, []), ("uf_bells_free", None, [p]), ("uf_bells_stats", p, [p]),
            ("uf_bell_new", p, [p, i]), ("uf_bell_free", None, [p, p]),
            ("uf_bell_fd", i, [p]), ("uf_bell_take", i, [p])):
        f = getattr(lib, name)
        f.restype, f.argtypes = res, args
    _lib = lib
    return lib


_lib: ctypes.CDLL | None = None
