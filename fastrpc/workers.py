"""Several server processes on one port: ``fastrpc serve module:app --workers N``.

The supervisor (this module's :class:`Supervisor`) starts N worker processes, each a
fresh interpreter (``python -m fastrpc worker ...``) that imports the app itself and
builds its server after it started: no epoll descriptor, buffer pool, mask-key buffer
or event loop is shared between workers. Every worker listens on the same port with
``SO_REUSEPORT``; the kernel spreads new connections over them (by a hash of the
connection's addresses), so each connection lives in one worker for its whole life.

* **Limits are per worker.** ``Limits(max_connections=10_000)`` with ``--workers 4``
  admits up to 40,000 connections on the port; the memory ceiling, per-IP cap and
  every other limit likewise apply to each worker separately (a per-IP cap of 256 is
  256 per worker, and the kernel may send one address's connections to any worker).
* **Stopping.** SIGINT (Ctrl-C) or SIGTERM to the supervisor: every worker starts
  draining (``/health`` and new upgrades answer 503), finishes requests in flight,
  closes its connections with 1001 (``Server.stop()``), and exits; workers still
  running after ``stop_timeout`` are killed. The supervisor exits 0 once all have.
* **Metrics.** ``/metrics`` on the port answers for every worker: the supervisor points
  ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory (yours if set, emptied of its
  ``*.db`` files first; else a temporary one it removes at exit), each worker writes its
  figures there (``fastrpc.metrics.Mirror``), and a worker that exits is marked dead so
  its gauges stop counting (its counters keep adding up). Needs ``prometheus_client``.
* **Restarts.** A worker that exits on its own (crash, kill) is started again after a
  backoff (0.1 s doubling to 5 s; reset after a worker stayed up 10 s). A worker that
  cannot start at all (import error, port taken) five times in a row without ever
  listening stops the supervisor with exit status 1 rather than loop forever.

The app is ``module:attribute``: a :class:`~fastrpc.Server`, or a callable returning
one (called once per worker, after the worker started). With ``--workers 1`` no
supervisor runs: the server runs in the ``fastrpc serve`` process itself.
"""
from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import socket
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from .metrics import MULTIPROC_ENV
from .metrics import available as metrics_available
from .server import Server

log = logging.getLogger("fastrpc.workers")

#: Backoff between restarts of a worker that exited: doubles from MIN to MAX.
RESTART_MIN_S = 0.1
RESTART_MAX_S = 5.0
#: A worker up this long resets its backoff.
HEALTHY_AFTER_S = 10.0
#: Consecutive starts that never reached "listening" before the supervisor gives up.
MAX_FAILED_STARTS = 5
READY = "fastrpc worker listening"


def load_app(spec: str) -> Server:
    """``module:attribute`` → a Server (calling the attribute if it is a factory)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"app must be 'module:attribute', not {spec!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, Server) and callable(obj):
        obj = obj()
    if not isinstance(obj, Server):
        raise TypeError(f"{spec} is {type(obj).__name__}, not a fastrpc.Server or a factory of one")
    return obj


def run_loop(main: Any, loop: str) -> None:
    """Run coroutine function ``main`` on ``loop``: auto (uvloop if installed), asyncio, uvloop."""
    if loop == "auto":
        try:
            import uvloop  # noqa: F401

            loop = "uvloop"
        except ImportError:
            loop = "asyncio"
    if loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def die_with_parent() -> None:
    """A worker must not outlive its supervisor (killed with SIGKILL, it cannot stop
    them): ask Linux to send SIGTERM when the parent dies; elsewhere the worker's
    watchdog (below) notices the new parent id."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


async def _watch_parent(parent: int, stop: asyncio.Event) -> None:
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    stop.set()


async def serve_until_signal(app: str | Server, host: str, port: int, *, reuse_port: bool = False,
                             worker: int | None = None, parent: int | None = None) -> None:
    """Build (after start-up: after any fork), listen, print the ready line, and stop
    gracefully on SIGINT/SIGTERM: drain first, so a load balancer sees 503 while the
    requests in flight finish."""
    server = load_app(app) if isinstance(app, str) else app
    await server.start(host, port, reuse_port=reuse_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    watchdog = loop.create_task(_watch_parent(parent, stop)) if parent is not None else None
    who = f" (worker {worker}, pid {os.getpid()})" if worker is not None else ""
    print(f"{READY} on {host}:{server.port}{who}", flush=True)
    await stop.wait()
    if watchdog is not None:
        watchdog.cancel()
    server.begin_drain()
    await server.stop()


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    listening: bool = False
    failed_starts: int = 0
    backoff: float = RESTART_MIN_S
    restart_at: float = 0.0
    restarts: int = 0


@dataclass
class Supervisor:
    """Runs ``workers`` processes serving ``app`` on ``host:port`` (see the module doc)."""

    app: str
    host: str = "127.0.0.1"
    port: int = 8546
    workers: int = 2
    loop: str = "auto"
    stop_timeout: float = 30.0
    _pool: list[_Worker] = field(default_factory=list)
    _holder: socket.socket | None = None
    _stopping: bool = False
    _metrics_dir: str | None = None  # the directory this supervisor made (removed at exit)

    def _command(self, w: _Worker) -> list[str]:
        return [sys.executable, "-m", "fastrpc", "worker", self.app, "--host", self.host,
                "--port", str(self.port), "--loop", self.loop, "--index", str(w.index),
                "--parent", str(os.getpid())]

    def _reserve_port(self) -> None:
        """Pick the port once (port 0) and hold it bound, not listening, so every worker
        binds the same one and nothing else takes it between restarts."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((self.host, self.port))
        self.port = s.getsockname()[1]
        self._holder = s

    def _prepare_metrics(self) -> None:
        """Give the workers one multi-process metrics directory (see the module doc)."""
        if not metrics_available():
            return
        path = os.environ.get(MULTIPROC_ENV)
        if path:
            os.makedirs(path, exist_ok=True)
            for name in os.listdir(path):  # a previous run's files would add up with ours
                if name.endswith(".db"):
                    os.unlink(os.path.join(path, name))
        else:
            path = self._metrics_dir = tempfile.mkdtemp(prefix="fastrpc-metrics-")
            os.environ[MULTIPROC_ENV] = path  # inherited by every worker started from now on

    def _worker_gone(self, pid: int) -> None:
        if os.environ.get(MULTIPROC_ENV) and metrics_available():
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid)

    def _start(self, w: _Worker) -> None:
        w.proc = subprocess.Popen(self._command(w), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                  start_new_session=True)  # Ctrl-C reaches the supervisor only
        w.started = time.monotonic()
        w.listening = False
        os.set_blocking(w.proc.stdout.fileno(), False)  # type: ignore[union-attr]

    def _poll_output(self, w: _Worker) -> None:
        if w.proc is None or w.proc.stdout is None:
            return
        try:
            data = w.proc.stdout.read()
        except (BlockingIOError, ValueError):
            return
        if not data:
            return
        text = data.decode(errors="replace")
        if READY in text and not w.listening:
            w.listening = True
            w.failed_starts = 0
        sys.stdout.write(text)
        sys.stdout.flush()

    def run(self) -> int:
        """Start every worker and supervise them until a signal; returns the exit status."""
        self._reserve_port()
        self._prepare_metrics()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        self._pool = [_Worker(i) for i in range(self.workers)]
        for w in self._pool:
            self._start(w)
        print(f"fastrpc supervisor (pid {os.getpid()}) serving {self.app} on "
              f"{self.host}:{self.port} with {self.workers} workers", flush=True)
        status = 0
        while not self._stopping:
            now = time.monotonic()
            for w in self._pool:
                self._poll_output(w)
                if w.proc is None:
                    if now >= w.restart_at:
                        w.restarts += 1
                        self._start(w)
                    continue
                code = w.proc.poll()
                if code is None:
                    if w.listening and now - w.started > HEALTHY_AFTER_S:
                        w.backoff = RESTART_MIN_S
                    continue
                self._poll_output(w)
                w.failed_starts = 0 if w.listening else w.failed_starts + 1
                log.warning("worker %d (pid %d) exited with %s; restarting in %.1f s",
                            w.index, w.proc.pid, code, w.backoff)
                print(f"worker {w.index} (pid {w.proc.pid}) exited with {code}", flush=True)
                self._worker_gone(w.proc.pid)
                w.proc = None
                if w.failed_starts >= MAX_FAILED_STARTS:
                    print(f"worker {w.index} failed to start {MAX_FAILED_STARTS} times: giving up",
                          file=sys.stderr, flush=True)
                    self._stopping = True
                    status = 1
                    break
                w.restart_at = now + w.backoff
                w.backoff = min(w.backoff * 2, RESTART_MAX_S)
            time.sleep(0.05)
        self._stop_all()
        return status

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stopping = True

    def _stop_all(self) -> None:
        running = [w for w in self._pool if w.proc is not None and w.proc.poll() is None]
        for w in running:
            w.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + self.stop_timeout
        for w in running:
            assert w.proc is not None
            try:
                w.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
            self._poll_output(w)
        if self._holder is not None:
            self._holder.close()
        if self._metrics_dir is not None:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
            if os.environ.get(MULTIPROC_ENV) == self._metrics_dir:
                del os.environ[MULTIPROC_ENV]
            self._metrics_dir = None
        print("fastrpc supervisor stopped", flush=True)

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._pool if w.proc is not None]
