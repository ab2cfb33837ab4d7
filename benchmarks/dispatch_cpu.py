"""CPU time of ``Dispatcher.on_message`` per message, on a shared machine.

    python benchmarks/dispatch_cpu.py                   # this tree
    PYTHONPATH=/path/to/other/tree python benchmarks/dispatch_cpu.py

The same four messages as ``bench_dispatch.py`` (the small call, a call with two
type-checked string arguments, the small call as a notification, a batch of ten small
calls), each run ``--rounds`` times ``--n`` messages in a row; the figure is the
smallest round's thread CPU time per message (``time.thread_time_ns``). CPU time and
not wall time: with other processes on the cores, wall time counts the time this one
was not running; the minimum over rounds removes most of what is left (cache and
frequency effects of the neighbours). Made to compare two trees run alternately (the
request counters of issue 11: before and after), not to compare with other libraries.
Prints the tree ``fastrpc`` was imported from, so a run says what it measured.
"""
from __future__ import annotations

import argparse
import os
import time

import orjson

import fastrpc
from fastrpc.dispatch import Dispatcher
from fastrpc.service import Registry


class _Transport:
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


def get_balance(address: str, block: str) -> str:
    return "0x0"


MESSAGES = {
    "small": b'{"jsonrpc":"2.0","id":67,"method":"eth_blockNumber","params":[]}',
    "args": orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_getBalance",
                          "params": ["0x" + "ab" * 20, "latest"]}),
    "notification": b'{"jsonrpc":"2.0","method":"eth_blockNumber","params":[]}',
    "batch10": orjson.dumps([{"jsonrpc": "2.0", "id": i, "method": "eth_blockNumber", "params": []}
                             for i in range(10)]),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--n", type=int, default=200_000, help="messages per round (a tenth for the batch)")
    args = ap.parse_args()
    reg = Registry()
    reg.add("eth_blockNumber", lambda: "0x10d4f")
    reg.add("eth_getBalance", get_balance)
    on_message = Dispatcher(_Transport(), registry=reg).on_message
    out = []
    for name, data in MESSAGES.items():
        expected = on_message(1, data)
        assert name == "notification" or (expected and b'"error"' not in expected), (name, expected)
        n = args.n // 10 if name == "batch10" else args.n
        best = float("inf")
        for _ in range(args.rounds):
            t = time.thread_time_ns()
            for _ in range(n):
                on_message(1, data)
            best = min(best, (time.thread_time_ns() - t) / n)
        out.append(f"{name} {best:,.0f} ns")
    tree = os.path.dirname(os.path.dirname(os.path.abspath(fastrpc.__file__)))
    print(f"{tree}: " + ", ".join(out))


if __name__ == "__main__":
    main()
