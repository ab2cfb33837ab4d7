"""What the browser tests run: Debian's Chromium under Selenium, a fastrpc node on its own
event loop in a thread, and a static HTTP server for ``page.html``, all on 127.0.0.1.

Every wait here is bounded; every process and thread started here is stopped by its
owner's ``close()``/``stop()``, which the fixtures call in teardown whatever happened.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import http.server
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastrpc import Context, Limits, RPCError, Server

HERE = Path(__file__).resolve().parent
INSTALL = HERE / "install.sh"
PAGE = HERE / "page.html"
#: Debian's /usr/bin/chromium is a shell launcher that adds its own flags from
#: /etc/chromium.d; Selenium gets the binary itself so the flags below are all it runs with.
DEBIAN_CHROMIUM = Path("/usr/lib/chromium/chromium")
#: Seconds any single wait on the browser, the node or the page server may take.
WAIT = 20.0
#: An application error code of the test service (outside JSON-RPC's reserved range).
REFUSED = -32010


def find_binaries() -> dict[str, str]:
    """chromium and chromedriver, installed by ``install.sh`` when missing. Raises (never
    skips) when they cannot be installed: CI must not pass with the browser tests gone."""
    def which() -> dict[str, str | None]:
        return {b: shutil.which(b) for b in ("chromium", "chromedriver")}

    found = which()
    if None in found.values():
        r = subprocess.run(["bash", str(INSTALL)], capture_output=True, text=True, timeout=900)
        found = which()
        if r.returncode != 0 or None in found.values():
            raise RuntimeError(f"{INSTALL} could not install chromium/chromium-driver "
                               f"(exit {r.returncode}):\n{r.stdout}{r.stderr}")
    if DEBIAN_CHROMIUM.exists():
        found["chromium"] = str(DEBIAN_CHROMIUM)
    return found  # type: ignore[return-value]


def wait_until(get: Callable[[], Any], cond: Callable[[Any], bool], what: str) -> Any:
    """Poll ``get()`` until ``cond`` holds on its value (at most ``WAIT`` s); the value."""
    deadline = time.monotonic() + WAIT
    while True:
        v = get()
        if cond(v):
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT} s waiting for {what}; last value: {v}")
        time.sleep(0.05)


# --- the fastrpc node ----------------------------------------------------------------------

class Calc:
    """Exposed as calc_*: positional and named params, an application error, the Origin."""

    def add(self, a: int, b: int) -> int:
        return a + b

    def echo(self, value: Any) -> Any:
        return value

    def fail(self, why: str) -> None:
        raise RPCError(REFUSED, "refused", {"why": why})

    def origin(self, ctx: Context) -> str | None:
        """The Origin header the browser sent with its upgrade."""
        for name, value in ctx.headers or ():
            if name.lower() == "origin":
                return value
        return None


class RpcNode:
    """A JSON-RPC ``Server`` (namespace ``calc``, topic ``chain.newHeads``) on an event
    loop of its own in a daemon thread, so the test's thread is free to drive Selenium.
    Everything that touches the server runs on that loop (``on_loop``)."""

    def __init__(self, **server_kw: Any) -> None:
        self._server_kw = server_kw
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fastrpc-node", daemon=True)
        self.server: Server | None = None
        self.topic: Any = None
        self.port = 0

    def start(self) -> RpcNode:
        self._thread.start()
        self.port = self.on_loop(self._start)
        return self

    async def _start(self) -> int:
        # Small limits: start() raises RLIMIT_NOFILE to max_connections otherwise.
        srv = Server(limits=Limits(max_connections=16, max_connections_per_ip=16),
                     keep_headers=True, **self._server_kw)
        srv.register("calc", Calc())
        self.topic = srv.topic("chain", "newHeads")
        await srv.start("127.0.0.1", 0)
        self.server = srv
        return srv.port

    def on_loop(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn()`` (a coroutine function or a plain one) on the node's loop; its result."""
        async def run() -> Any:
            r = fn()
            return await r if asyncio.iscoroutine(r) else r

        fut = asyncio.run_coroutine_threadsafe(run(), self._loop)
        try:
            return fut.result(WAIT)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise AssertionError(f"the fastrpc node did not answer within {WAIT} s") from None

    def metrics(self) -> dict[str, Any]:
        return self.on_loop(lambda: self.server.metrics())  # type: ignore[union-attr]

    def subscribers(self) -> int:
        return self.on_loop(lambda: len(self.server.dispatcher.subscriptions.subscribers(self.topic)))  # type: ignore[union-attr]

    def publish(self, payload: Any) -> int:
        """Publish on ``chain.newHeads``; the subscribers written to. Returns once the
        frames are handed to the core, so anything the test sends afterwards follows them."""
        return self.on_loop(lambda: self.server.publish(self.topic, payload))  # type: ignore[union-attr]

    def stop(self) -> None:
        try:
            if self.server is not None:
                self.on_loop(self.server.stop)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(WAIT)
            if not self._thread.is_alive():
                self._loop.close()


# --- the page ------------------------------------------------------------------------------

class _PageHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        if self.path.split("?", 1)[0] != "/page.html":
            self.send_error(404)
            return
        body = PAGE.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # the tests assert on what the page reports, not on an access log


class PageServer:
    """``page.html`` over plain HTTP from 127.0.0.1 (the stdlib server, one thread)."""

    def __init__(self) -> None:
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PageHandler)
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self.origin = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="page-server", daemon=True)
        self._thread.start()

    def url(self, ws_url: str, mode: str, **params: Any) -> str:
        from urllib.parse import urlencode

        return f"{self.origin}/page.html?" + urlencode({"ws": ws_url, "mode": mode, **params})

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(WAIT)


# --- the browser ---------------------------------------------------------------------------

class Browser:
    """Headless Chromium through chromedriver, with a profile of its own under ``home``
    (also its HOME, so nothing is read from or written to the user's). ``quit()`` ends
    both processes, also after a failed test."""

    FLAGS = (
        "--headless=new",
        "--no-sandbox",             # containers run as root, where the sandbox cannot start
        "--disable-gpu",
        "--disable-dev-shm-usage",  # a container's /dev/shm is often too small
        "--no-first-run",
        "--disable-background-networking",
        "--disable-extensions",
    )

    def __init__(self, binaries: dict[str, str], home: Path, extra_flags: tuple[str, ...] = ()) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        profile = home / "profile"
        profile.mkdir(parents=True, exist_ok=True)
        opts = webdriver.ChromeOptions()
        opts.binary_location = binaries["chromium"]
        for flag in (*self.FLAGS, f"--user-data-dir={profile}", *extra_flags):
            opts.add_argument(flag)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, for get_log
        # Given both paths, Selenium Manager never runs (it would try to download a browser).
        env = dict(os.environ, HOME=str(home))
        self._service = Service(binaries["chromedriver"], log_output=str(home / "chromedriver.log"), env=env)
        self.driver = webdriver.Chrome(options=opts, service=self._service)
        self.driver.set_page_load_timeout(WAIT)
        self.driver.set_script_timeout(WAIT)

    def open(self, url: str) -> None:
        self.driver.get(url)

    def state(self) -> dict[str, Any]:
        """``window.out`` of the page, as JSON (numbers stay ints)."""
        raw = self.driver.execute_script("return window.out ? JSON.stringify(window.out) : null")
        return json.loads(raw) if raw else {}

    def wait(self, what: str, cond: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Poll the page's state until ``cond(state)`` holds or the page reports a failure
        (at most ``WAIT`` s); the state."""
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        seen: dict[str, Any] = {}

        def ready(_driver: Any) -> bool:
            seen.clear()
            seen.update(self.state())
            return bool(seen.get("failure")) or cond(seen)

        try:
            WebDriverWait(self.driver, WAIT, poll_frequency=0.05).until(ready)
        except TimeoutException:
            raise AssertionError(f"the page did not reach {what!r} within {WAIT} s; its state: {seen}") from None
        assert not seen.get("failure"), f"the page failed before {what!r}: {seen['failure']}\nstate: {seen}"
        return dict(seen)

    def console(self) -> list[str]:
        """The console messages since the last call (Chromium's own error lines included)."""
        return [e["message"] for e in self.driver.get_log("browser")]

    def quit(self) -> None:
        try:
            self.driver.quit()
        finally:
            proc = getattr(self._service, "process", None)
            if proc is not None and proc.poll() is None:  # quit() failed half way
                proc.kill()
                proc.wait(WAIT)
