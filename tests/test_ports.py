"""The ports a worker listens on stay in the ranges its firewall opens."""
import socket

import pytest

from workers import config
from workers.files.server import FileServer
from workers.ports import bind_in


@pytest.fixture
def files_ports(monkeypatch):
    monkeypatch.setenv("UNIFORK_FILES_PORTS", "43100-43103")
    config.reload()
    yield (43100, 43103)
    monkeypatch.delenv("UNIFORK_FILES_PORTS")
    config.reload()


def test_a_file_server_listens_on_a_port_of_its_range(files_ports):
    servers = [FileServer(None, b"k" * 32, "job", "127.0.0.1") for _ in range(4)]
    try:
        ports = {int(s.address.rsplit(":", 1)[1]) for s in servers}
        assert ports == set(range(43100, 43104))
        with pytest.raises(OSError, match="no free port in UNIFORK_FILES_PORTS=43100-43103"):
            FileServer(None, b"k" * 32, "job", "127.0.0.1")
    finally:
        for s in servers:
            s.close()


def test_without_a_range_any_free_port_is_taken():
    with bind_in(None, "UNIFORK_FORK_PORTS",
                 lambda port: socket.create_server(("127.0.0.1", port))) as s:
        assert s.getsockname()[1] > 0
