"""A real redis-server on 127.0.0.1 for tests, which they can stop and start again.

It keeps nothing on disk, so a restart comes back empty, as a Redis without
persistence does after a crash. Debian's redis-server package provides the
binary; `.ci/run` installs it. Without it the tests that need Redis are
skipped locally, and fail under CI (CI set), where a skip would hide them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

__all__ = ["RedisServer", "require_redis_server"]

STARTUP_TIMEOUT_S = 10.0


def require_redis_server() -> str:
    """Return the redis-server binary, or skip (fail under CI) when it is missing."""
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not installed (Debian: apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return binary


class RedisServer:
    """One redis-server process on a free loopback port; the port survives a restart."""

    def __init__(self, binary: str, *options: str) -> None:
        self.binary = binary
        self.options = list(options)  # more redis-server options, e.g. --requirepass
        self.port = _free_port()
        self._workdir = tempfile.TemporaryDirectory(prefix="redis-test-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        if self._process is not None:
            raise RuntimeError("redis-server is already running")
        self._process = subprocess.Popen(
            [
                self.binary,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--save", "",
                "--appendonly", "no",
                "--dir", self._workdir.name,
                "--protected-mode", "yes",
                *self.options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _answers_ping(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not start on 127.0.0.1:{self.port}")
            time.sleep(0.02)
        return self

    def kill(self) -> None:
        """Stop the server at once (SIGKILL), as a crash would; its data is gone."""
        if self._process is None:
            return
        self._process.kill()
        self._process.wait(timeout=10)
        self._process = None

    def pause(self) -> None:
        """Stop the server's process (SIGSTOP): connections stay open but no reply comes."""
        assert self._process is not None, "start() first"
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server go on (SIGCONT)."""
        assert self._process is not None, "start() first"
        self._process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.kill()
        self._workdir.cleanup()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(16).startswith((b"+PONG", b"-NOAUTH"))  # up, maybe locked
    except OSError:
        return False
