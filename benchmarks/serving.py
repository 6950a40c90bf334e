"""What the benchmark scripts that start a real ``local-ai serve`` share: the command and a free loopback port."""

from __future__ import annotations

import socket
import sys

#: ``local-ai`` run by this interpreter (works without the console script on PATH).
CLI = [sys.executable, "-c", "from localai_sd.cli.app import main; main()"]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
