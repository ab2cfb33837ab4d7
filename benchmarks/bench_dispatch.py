"""JSON-RPC layer benchmarks (issue 4 §6): ``Dispatcher.on_message`` without the network.

Groups (``benchmark.group``), each checked once for the right reply before timing:

* ``rpc-small-call``: ``eth_blockNumber`` with ``"params":[]`` (66 bytes in).
* ``rpc-call-with-args``: ``eth_getBalance(address: str, block: str)``: two
  type-checked positional arguments.
* ``rpc-batch-10``: ten small calls in one batch.
* ``rpc-notification``: the small call without an id (runs, answers nothing).

Entries in each group:

* ``fastrpc``: ``Dispatcher.on_message(cid, data)`` with a FakeTransport-like stub.
* ``floor-orjson``: the JSON work of a straightforward orjson dispatcher, ``orjson.loads``
  of the whole request plus ``orjson.dumps`` of the reply dict (for a batch: ten
  replies and the join), with no validation, lookup or call. fastrpc goes below it for
  a single call in the usual layout: ``fastrpc._fastcall`` recognises that layout
  without decoding a dict and frames one ``dumps`` of the result; batches and other
  layouts pay the full decode, so there ``fastrpc / floor`` is the price of
  validation, lookup, binding, isolation bookkeeping and the call itself.
* ``naive-stdlib``: the textbook dispatcher, ``json.loads`` → dict lookup → call →
  ``json.dumps``, with the same validation but no isolation, no type checks: what a
  small hand-written server does. For context, not a peer library (none is a test
  dependency yet).

Run: ``python -m pytest benchmarks/bench_dispatch.py`` (``--benchmark-only`` optional).
"""
from __future__ import annotations

import json
from typing import Any, Callable

import orjson
import pytest

from fastrpc.dispatch import Dispatcher
from fastrpc.service import Registry

ADDRESS = "0x" + "ab" * 20

SMALL = b'{"jsonrpc":"2.0","id":67,"method":"eth_blockNumber","params":[]}'
ARGS = orjson.dumps(
    {"jsonrpc": "2.0", "id": 1, "method": "eth_getBalance", "params": [ADDRESS, "latest"]}
)
BATCH10 = orjson.dumps(
    [{"jsonrpc": "2.0", "id": i, "method": "eth_blockNumber", "params": []} for i in range(10)]
)
NOTIFICATION = b'{"jsonrpc":"2.0","method":"eth_blockNumber","params":[]}'


class StubTransport:
    def send(self, cid: int, data: bytes) -> bool:
        return True

    def send_many(self, cids: list[int], data: bytes, max_queued: int) -> list[int]:
        return []

    def begin(self, cid: int) -> None:
        pass

    def end(self, cid: int) -> None:
        pass

    def close(self, cid: int, code: int, reason: str) -> None:
        pass

    def peer(self, cid: int) -> tuple[str, int]:
        return ("127.0.0.1", 1)

    def headers(self, cid: int) -> None:
        return None


def block_number() -> str:
    return "0x12a05f2"


def get_balance(address: str, block: str = "latest") -> str:
    return "0x0234c8a3397aab58"


def make_fastrpc() -> Callable[[bytes], Any]:
    reg = Registry()
    reg.add("eth_blockNumber", block_number)
    reg.add("eth_getBalance", get_balance)
    d = Dispatcher(StubTransport(), registry=reg)
    on_message = d.on_message
    return lambda data: on_message(1, data)


def make_floor() -> Callable[[bytes], Any]:
    loads, dumps = orjson.loads, orjson.dumps

    def floor(data: bytes) -> Any:
        msg = loads(data)
        if type(msg) is list:
            return b"[" + b",".join(dumps({"jsonrpc": "2.0", "id": m["id"], "result": "0x12a05f2"}) for m in msg) + b"]"
        if "id" not in msg:
            return None
        return dumps({"jsonrpc": "2.0", "id": msg["id"], "result": "0x12a05f2"})

    return floor


def make_naive() -> Callable[[bytes], Any]:
    methods: dict[str, Callable[..., Any]] = {"eth_blockNumber": block_number, "eth_getBalance": get_balance}

    def one(msg: Any) -> Any:
        if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0" or not isinstance(msg.get("method"), str):
            return {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Invalid Request"}}
        fn = methods.get(msg["method"])
        rid = msg.get("id")
        if fn is None:
            reply: Any = {"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "Method not found"}}
        else:
            try:
                params = msg.get("params", [])
                result = fn(*params) if isinstance(params, list) else fn(**params)
                reply = {"jsonrpc": "2.0", "id": rid, "result": result}
            except Exception:
                reply = {"jsonrpc": "2.0", "id": rid, "error": {"code": -32603, "message": "Internal error"}}
        return None if "id" not in msg else reply

    def naive(data: bytes) -> Any:
        try:
            msg = json.loads(data)
        except ValueError:
            return json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error"}})
        if isinstance(msg, list):
            out = [r for r in map(one, msg) if r is not None]
            return json.dumps(out, separators=(",", ":")).encode() if out else None
        r = one(msg)
        return None if r is None else json.dumps(r, separators=(",", ":")).encode()

    return naive


IMPLEMENTATIONS = {"fastrpc": make_fastrpc, "floor-orjson": make_floor, "naive-stdlib": make_naive}

CASES = {
    "rpc-small-call": (SMALL, {"jsonrpc": "2.0", "id": 67, "result": "0x12a05f2"}),
    "rpc-call-with-args": (ARGS, {"jsonrpc": "2.0", "id": 1, "result": "0x0234c8a3397aab58"}),
    "rpc-batch-10": (BATCH10, [{"jsonrpc": "2.0", "id": i, "result": "0x12a05f2"} for i in range(10)]),
    "rpc-notification": (NOTIFICATION, None),
}


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("case", list(CASES))
def test_on_message(benchmark: Any, case: str, impl: str) -> None:
    data, expected = CASES[case]
    if impl == "floor-orjson" and case == "rpc-call-with-args":
        expected = {"jsonrpc": "2.0", "id": 1, "result": "0x12a05f2"}  # the floor calls nothing
    handle = IMPLEMENTATIONS[impl]()
    reply = handle(data)
    assert (None if reply is None else orjson.loads(reply)) == expected
    benchmark.group = case
    benchmark.name = impl
    benchmark(handle, data)
