"""A subprocess for tests: its output lines collected by a thread, matched with bounded
waits, commands written to its stdin (``stdin=True``), and the process stopped for sure
(SIGTERM, then SIGKILL) at teardown."""
from __future__ import annotations

import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Proc:
    """A subprocess whose output lines are collected by a thread (stdout and stderr)."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT,
                 stdin: bool = False) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True,
                                     stdin=subprocess.PIPE if stdin else subprocess.DEVNULL)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.pump = threading.Thread(target=self._pump, daemon=True)
        self.pump.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.argv[0]}: no line matching {pattern!r}; seen: {self.seen}")
            try:
                line = self.lines.get(timeout=min(left, 0.2))
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty() and not self.pump.is_alive():
                    raise AssertionError(f"{self.argv[0]} exited {self.proc.returncode}; seen: {self.seen}")
                continue
            self.seen.append(line)
            m = re.search(pattern, line)
            if m:
                return m

    def send(self, line: str) -> None:
        """Write one command line to the process (made with ``stdin=True``)."""
        assert self.proc.stdin is not None, "made without stdin=True"
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def output(self) -> str:
        while not self.lines.empty():
            self.seen.append(self.lines.get_nowait())
        return "\n".join(self.seen)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def close(self) -> None:
        self.kill(signal.SIGTERM)
        self.pump.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
