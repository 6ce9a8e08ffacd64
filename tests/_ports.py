"""A free TCP port on localhost, for the rendezvous of tests that start several processes."""
from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing listens on now (the OS picks it); another process may take it later, rarely."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
