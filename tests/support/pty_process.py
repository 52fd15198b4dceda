"""A command run in a pseudo-terminal, as a user runs it: what it draws is read back."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Callable


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class PtyProcess:
    def __init__(self, argv: list[str], env: dict[str, str], rows: int = 40,
                 columns: int = 160) -> None:
        main_fd, child_fd = pty.openpty()
        fcntl.ioctl(child_fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        # Ctrl-C as a user's terminal delivers it, however the suite was started: a shell
        # that runs it in the background without job control (`nohup ... &`) leaves SIGINT
        # ignored, inherited, and Python then never turns it into KeyboardInterrupt.
        self.proc = subprocess.Popen(argv, stdin=child_fd, stdout=child_fd, stderr=child_fd,
                                     env={**env, "TERM": "xterm-256color"},
                                     start_new_session=True, preexec_fn=_default_sigint)
        os.close(child_fd)
        self._fd = main_fd
        self.output = bytearray()

    def read(self, timeout_s: float) -> None:
        """Append what the command drew within ``timeout_s`` to ``output``."""
        if self._fd < 0:
            return
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self._fd], [], [], left)
            if not ready:
                return
            try:
                chunk = os.read(self._fd, 65536)
            except OSError:  # (EIO: the command exited and closed the terminal)
                return
            if not chunk:
                return
            self.output += chunk

    def wait_for(self, done: Callable[[bytes], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if done(bytes(self.output)):
                return True
            if self.proc.poll() is not None:
                self.read(0.2)
                return done(bytes(self.output))
            self.read(0.2)
        return done(bytes(self.output))

    def interrupt(self, timeout_s: float = 10.0) -> int:
        """Ctrl-C, as from the keyboard; the exit code. The terminal is read meanwhile: a
        command blocked writing to a full one (a table redrawn while nobody read) would never
        get to exit."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        deadline = time.monotonic() + timeout_s
        try:
            while self.proc.poll() is None and time.monotonic() < deadline:
                self.read(0.1)
            code = self.proc.wait(max(0.0, deadline - time.monotonic()))
        finally:
            self.close()
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if self._fd >= 0:
            self.read(0.1)
            os.close(self._fd)
            self._fd = -1
