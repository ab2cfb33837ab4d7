"""One client process of ``benchmarks/client_load.py``: a JSON-RPC client library under load.

    python benchmarks/client_worker.py --client fastrpc|websockets|web3 --url ws://127.0.0.1:P
        --conns 1 --depth 32 [--loop asyncio|uvloop]

Started by ``client_load.py``, not by hand (``--selftest SECONDS`` runs one short window
on its own and prints the result, for a quick check). Lifecycle, one line each way on
stdio, as ``loadgen.py``:

1. open ``--conns`` connections with the client library, print ``ready``;
2. read ``T_START T_END T_STOP`` (``time.monotonic_ns()`` values) and start
   ``--conns`` × ``--depth`` callers at once (each one a coroutine making one call
   after another on its connection, so ``--depth`` calls are in flight on each); the
   time before ``T_START`` is the warm-up;
3. at ``T_START`` and ``T_END`` (loop callbacks) read this process's own CPU time:
   ``utime`` + ``stime`` from ``/proc/self/stat`` (all threads; the figure
   ``client_load.py`` reports) and ``CLOCK_PROCESS_CPUTIME_ID`` (exact, a cross-check),
   and the count of calls answered so far; at ``T_END`` every caller stops after the
   call it has in flight;
4. wait for those (until ``T_STOP``: a call still unanswered then is an error), close
   every connection, print one JSON line.

**Every reply is checked.** The calls cycle through a ring of requests (by index
``i``: ``eth_blockNumber()`` when ``i % 3 == 0``, ``echo("hello world <i>")`` when 1,
``add(i, 1000)`` when 2, the same mix as ``loadgen.py``), and each result must equal
the expected value (type included). A wrong result is counted as an error and the
caller goes on; an exception (an error reply, a timeout, a lost connection) is
counted and ends that caller. ``client_load.py`` treats a run with any error as
invalid.

``--probe`` only checks that the client's library imports (``client_load.py`` skips a
client whose library is missing, with a note).

The clients (``ADAPTERS``), each used the way its documentation shows:

* ``fastrpc``: ``fastrpc.connect(url)`` (``fastrpc.client.connect`` while the package
  does not export it), ``await c.call(method, *params)``.
* ``websockets``: JSON-RPC written by hand the way a careful user would: one
  connection (``websockets.asyncio.client.connect``), orjson, a dict of futures by
  id, one reader task resolving them; requests sent as text frames from orjson's
  bytes (``send(data, text=True)``), replies read without UTF-8 decoding
  (``recv(decode=False)``).
* ``web3``: web3.py's ``AsyncWeb3(WebSocketProvider(url))``, calls through
  ``await w3.provider.make_request(method, params)``: the provider's JSON-RPC call
  without web3's method-specific formatters, so every client makes the same call and
  gets the same raw result to check (``make_request`` returns the reply object; the
  error member, if any, is raised here).
* ``web3-eth`` (not in the default list): ``await w3.eth.block_number``, web3's usual
  API with its middleware and result formatters; every call is ``eth_blockNumber``
  (checked as the int 0x10d4f), so it is not the same request mix.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import time
from typing import Any, Awaitable, Callable

RING = 768  # distinct requests in the ring the callers share (each starts elsewhere)
MAX_ERROR_SAMPLES = 5
CLK_TCK = os.sysconf("SC_CLK_TCK")

Call = Callable[[str, tuple], Awaitable[Any]]


def request_for(i: int) -> tuple[str, tuple, Any]:
    """Method, positional params and the expected result of request ``i`` (as loadgen.py)."""
    kind = i % 3
    if kind == 0:
        return "eth_blockNumber", (), "0x10d4f"
    if kind == 1:
        x = f"hello world {i}"
        return "echo", (x,), x
    return "add", (i, 1000), i + 1000


def self_cpu_s() -> tuple[float, float]:
    """utime and stime of this process (every thread), in seconds."""
    with open("/proc/self/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2:].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


class RemoteError(Exception):
    """An error member in a reply (the hand-written and web3 adapters raise it)."""


# -- the clients ---------------------------------------------------------------------------


class Adapter:
    """How one client library opens a connection, calls, and closes."""

    name = ""

    async def open(self, url: str) -> Any:
        raise NotImplementedError

    def caller(self, conn: Any) -> Call:
        """``await call(method, params)``: the result, or an exception."""
        raise NotImplementedError

    async def close(self, conn: Any) -> None:
        raise NotImplementedError


def fastrpc_connect() -> Callable[..., Any]:
    """``fastrpc.connect``, or ``fastrpc.client.connect`` while the package does not
    export it; ImportError when this fastrpc has no client."""
    import importlib.util

    import fastrpc

    home = os.path.dirname(os.path.abspath(fastrpc.__file__))
    # Look before importing: an editable install's import finder can resolve
    # ``fastrpc.client`` in another tree than the package itself, and such a mixture
    # must never be measured (nor half-imported).
    spec = importlib.util.find_spec("fastrpc.client")
    where = os.path.dirname(os.path.abspath(spec.origin)) if spec and spec.origin else None
    if where is None:
        raise ImportError(f"no fastrpc.client in the fastrpc package at {home}")
    if where != home:
        raise ImportError(f"fastrpc.client resolves to {where}, outside the fastrpc package "
                          f"at {home} (an editable install of another tree?)")
    import fastrpc.client as client_mod  # noqa: PLC0415

    fn = getattr(fastrpc, "connect", None)
    return fn if fn is not None else client_mod.connect


class FastrpcAdapter(Adapter):
    name = "fastrpc"

    def __init__(self) -> None:
        self.connect = fastrpc_connect()

    async def open(self, url: str) -> Any:
        return await self.connect(url)

    def caller(self, conn: Any) -> Call:
        call = conn.call

        def c(method: str, params: tuple) -> Awaitable[Any]:
            return call(method, *params)

        return c

    async def close(self, conn: Any) -> None:
        await conn.close()


class HandWritten:
    """JSON-RPC over a ``websockets`` connection, as a careful user writes it."""

    def __init__(self, ws: Any) -> None:
        import orjson

        self.ws = ws
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.ids = itertools.count(1)
        self.dumps, self.loads = orjson.dumps, orjson.loads
        self.reader = asyncio.get_running_loop().create_task(self.read())

    async def read(self) -> None:
        recv, loads, pending = self.ws.recv, self.loads, self.pending
        try:
            while True:
                msg = loads(await recv(decode=False))
                fut = pending.pop(msg.get("id"), None)
                if fut is None or fut.done():
                    continue  # a reply to nothing we wait for
                err = msg.get("error")
                if err is not None:
                    fut.set_exception(RemoteError(err))
                elif "result" not in msg:
                    fut.set_exception(RemoteError(f"reply without result: {msg!r:.200}"))
                else:
                    fut.set_result(msg["result"])
        except Exception as e:  # the connection ended: fail every call still waiting
            for fut in pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError(f"reader ended: {e!r}"))
            pending.clear()

    async def call(self, method: str, params: tuple) -> Any:
        rid = next(self.ids)
        fut = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        await self.ws.send(self.dumps({"jsonrpc": "2.0", "id": rid, "method": method,
                                       "params": params}), text=True)
        return await fut


class WebsocketsAdapter(Adapter):
    name = "websockets"

    def __init__(self) -> None:
        from websockets.asyncio.client import connect

        self.connect = connect

    async def open(self, url: str) -> Any:
        # compression=None: no permessage-deflate offer (fastrpc never negotiates it
        # anyway); everything else is websockets' default (keepalive pings included).
        return HandWritten(await self.connect(url, compression=None))

    def caller(self, conn: Any) -> Call:
        return conn.call

    async def close(self, conn: HandWritten) -> None:
        await conn.ws.close()
        conn.reader.cancel()
        try:
            await conn.reader
        except asyncio.CancelledError:
            pass


class Web3Adapter(Adapter):
    name = "web3"

    def __init__(self) -> None:
        from web3 import AsyncWeb3, WebSocketProvider

        self.AsyncWeb3, self.Provider = AsyncWeb3, WebSocketProvider

    async def open(self, url: str) -> Any:
        w3 = self.AsyncWeb3(self.Provider(url))
        await w3.provider.connect()  # what ``async with AsyncWeb3(...)`` does on entry
        return w3

    def caller(self, conn: Any) -> Call:
        make_request = conn.provider.make_request

        async def c(method: str, params: tuple) -> Any:
            reply = await make_request(method, list(params))
            if "error" in reply:
                raise RemoteError(reply["error"])
            return reply["result"]

        return c

    async def close(self, conn: Any) -> None:
        await conn.provider.disconnect()


class Web3EthAdapter(Web3Adapter):
    """``await w3.eth.block_number``: web3's everyday API (middleware, formatters)."""

    name = "web3-eth"
    only_block_number = True

    def caller(self, conn: Any) -> Call:
        eth = conn.eth

        async def c(method: str, params: tuple) -> Any:
            return hex(await eth.block_number)  # the formatter made an int of "0x10d4f"

        return c


ADAPTERS: dict[str, type[Adapter]] = {a.name: a for a in (
    FastrpcAdapter, WebsocketsAdapter, Web3Adapter, Web3EthAdapter)}


# -- the run -------------------------------------------------------------------------------


class Run:
    def __init__(self, adapter: Adapter, conns: int, depth: int) -> None:
        self.adapter, self.conns_n, self.depth = adapter, conns, depth
        self.ring = [request_for(i) for i in range(RING)]
        if getattr(adapter, "only_block_number", False):
            self.ring = [request_for(0)] * RING
        self.conns: list[Any] = []
        self.done = 0          # calls answered correctly (any time)
        self.errors = 0
        self.error_samples: list[str] = []
        self.stop = False
        self.marks: dict[str, dict[str, float]] = {}

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(what[:300])

    def mark(self, name: str) -> None:
        user, sys_ = self_cpu_s()
        self.marks[name] = {"t": time.monotonic(), "done": self.done, "user_s": user,
                            "sys_s": sys_, "exact_s": time.process_time()}
        if name == "end":
            self.stop = True

    async def caller(self, call: Call, start: int) -> None:
        ring, n = self.ring, len(self.ring)
        i = start
        while not self.stop:
            method, params, want = ring[i]
            try:
                got = await call(method, params)
            except Exception as e:
                self.error(f"{method}{params!r}: {type(e).__name__}: {e}")
                return
            if got == want and type(got) is type(want):
                self.done += 1
            else:
                self.error(f"wrong result for {method}{params!r}: {got!r:.100} "
                           f"(expected {want!r})")
            i += 1
            if i == n:
                i = 0

    async def open(self, url: str) -> None:
        for _ in range(self.conns_n):
            self.conns.append(await self.adapter.open(url))

    async def run(self, t_start: int, t_end: int, t_stop: int) -> None:
        loop = asyncio.get_running_loop()
        now = time.monotonic_ns()
        loop.call_later(max(0.0, (t_start - now) / 1e9), self.mark, "start")
        loop.call_later(max(0.0, (t_end - now) / 1e9), self.mark, "end")
        tasks = []
        stride = RING // (self.conns_n * self.depth) or 1
        for c, conn in enumerate(self.conns):
            call = self.adapter.caller(conn)
            for d in range(self.depth):
                k = c * self.depth + d
                tasks.append(loop.create_task(self.caller(call, (k * stride) % RING)))
        left = (t_stop - time.monotonic_ns()) / 1e9
        _, pending = await asyncio.wait(tasks, timeout=max(0.1, left))
        if pending:
            self.error(f"{len(pending)} callers still waiting for a reply when the run "
                       "stopped")
            for t in pending:
                t.cancel()
            await asyncio.wait(pending, timeout=2)
        if "end" not in self.marks:
            self.error("the run ended before T_END (every caller failed)")

    async def close(self) -> None:
        for conn in self.conns:
            try:
                await asyncio.wait_for(self.adapter.close(conn), 5)
            except Exception as e:  # noqa: BLE001 - reported, not raised
                self.error(f"close: {type(e).__name__}: {e}")

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {"errors": self.errors, "error_samples": self.error_samples,
                               "total_answered": self.done}
        s, e = self.marks.get("start"), self.marks.get("end")
        if s and e:
            out.update({
                "window_s": e["t"] - s["t"],
                "answered": int(e["done"] - s["done"]),
                "client_user_s": e["user_s"] - s["user_s"],
                "client_sys_s": e["sys_s"] - s["sys_s"],
                "client_exact_s": e["exact_s"] - s["exact_s"],
            })
        return out


def probe(name: str) -> dict[str, Any]:
    """Whether ``name``'s library imports here, and from where (for the report)."""
    try:
        ADAPTERS[name]()
    except ImportError as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    if name == "fastrpc":
        import fastrpc

        return {"ok": True, "module": os.path.dirname(os.path.abspath(fastrpc.__file__))}
    mod = sys.modules["web3" if name.startswith("web3") else "websockets"]
    return {"ok": True, "module": os.path.dirname(os.path.abspath(mod.__file__))}


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    run = Run(ADAPTERS[args.client](), args.conns, args.depth)
    await run.open(args.url)
    if args.selftest:
        now = time.monotonic_ns()
        line = [now + 200_000_000, now + int((0.2 + args.selftest) * 1e9),
                now + int((2.2 + args.selftest) * 1e9)]
    else:
        print("ready", flush=True)
        line = [int(v) for v in sys.stdin.readline().split()]
        if len(line) != 3:
            raise SystemExit("expected T_START T_END T_STOP on stdin")
    await run.run(*line)
    await run.close()
    res = run.result()
    res.update({"client": args.client, "loop": args.loop, "conns": args.conns,
                "depth": args.depth})
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--client", choices=sorted(ADAPTERS), required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--conns", type=int, default=1)
    p.add_argument("--depth", type=int, default=1, help="calls in flight per connection")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    p.add_argument("--selftest", type=float, default=0.0, metavar="SECONDS",
                   help="run one window of this length on its own and print the result")
    p.add_argument("--probe", action="store_true",
                   help="only check that the client library imports; print what was found")
    args = p.parse_args(argv)
    if args.probe:
        print(json.dumps(probe(args.client)), flush=True)
        return 0
    if args.loop == "uvloop":
        import uvloop

        res = uvloop.run(amain(args))
    else:
        res = asyncio.run(amain(args))
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
