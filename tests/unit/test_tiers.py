"""The test tiers are guarded: a test without an integration/e2e/faults marker may not open a network connection."""

from __future__ import annotations

import socket
import threading

import pytest

from tests.conftest import NetworkInUnitTestError

pytestmark = pytest.mark.unit


def _listener() -> tuple[socket.socket, int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))  # binding is not a connection: only connecting is refused
    server.listen(1)
    return server, int(server.getsockname()[1])


def test_a_unit_test_cannot_connect_over_tcp_even_to_loopback() -> None:
    server, port = _listener()
    with server, pytest.raises(NetworkInUnitTestError, match=r"test_tiers.py.*without an integration"):
        socket.create_connection(("127.0.0.1", port), timeout=2)


def test_connect_ex_is_refused_too() -> None:
    server, port = _listener()
    with server, socket.socket() as client, pytest.raises(NetworkInUnitTestError):
        client.connect_ex(("127.0.0.1", port))


def test_unix_domain_sockets_are_not_a_network() -> None:
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        left.sendall(b"x")
        assert right.recv(1) == b"x"


@pytest.mark.integration
def test_an_integration_test_may_connect() -> None:
    server, port = _listener()
    accepted: list[socket.socket] = []
    thread = threading.Thread(target=lambda: accepted.append(server.accept()[0]))
    thread.start()
    with server, socket.create_connection(("127.0.0.1", port), timeout=5):
        thread.join(timeout=5)
    assert accepted, "the integration-marked test reached its own listener"
    accepted[0].close()
