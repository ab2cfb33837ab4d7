"""What the fan-out benchmark's servers (``fanout_<name>.py``) and its subscribers
(``benchmarks/fanout_client.py``) share: the notification, the subscribe call, and
the servers' control channel.

* **The payload** of publish ``seq`` is :func:`head`: a ``newHeads`` block header of
  ~500 bytes of JSON (hashes, miner, gas, base fee; ~620 bytes with the
  ``eth_subscription`` envelope), the same for every server and derived from ``seq``
  alone, so a subscriber can check each one.
* **Subscribing**: ``eth_subscribe("newHeads")`` answers one subscription id shared by
  every subscriber, as fastrpc's channel ids are (a channel is a topic and its params),
  so each server can send the very same frame to all of them; ``eth_unsubscribe(id)``
  ends it. Anything else goes to the peers' common dispatcher (``_rpc.handle``).
* **Control**: a server reads commands on stdin, one per line: ``publish SEQ`` sends
  :func:`head` (SEQ) to every subscriber, then prints ``published SEQ COUNT`` (COUNT:
  the subscribers written to); ``count`` prints ``subscribers COUNT``. Nothing else is
  accepted. A subscriber never talks to the control channel; the benchmark's parent
  process does.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from typing import Any, Callable

import orjson

__all__ = ["NAMESPACE", "TOPIC", "NOTIFY", "head", "notification", "server_frame",
           "subscribe_request", "subscribe_reply", "control"]

NAMESPACE = "eth"
TOPIC = "newHeads"
SUBSCRIBE = NAMESPACE + "_subscribe"
UNSUBSCRIBE = NAMESPACE + "_unsubscribe"
NOTIFY = NAMESPACE + "_subscription"

_BASE_BLOCK = 19_000_000
_BASE_TIME = 1_700_000_000


def _hash(seq: int, what: bytes) -> str:
    return "0x" + hashlib.sha256(b"%d:%s" % (seq, what)).hexdigest()


def head(seq: int) -> dict[str, Any]:
    """The block header published as notification ``seq`` (~500 bytes of JSON)."""
    number = _BASE_BLOCK + seq
    return {
        "number": hex(number),
        "hash": _hash(seq, b"hash"),
        "parentHash": _hash(seq - 1, b"hash"),
        "miner": "0x" + hashlib.sha256(b"%d:miner" % (seq % 7)).hexdigest()[:40],
        "stateRoot": _hash(seq, b"state"),
        "transactionsRoot": _hash(seq, b"txs"),
        "gasLimit": hex(30_000_000),
        "gasUsed": hex(12_000_000 + (seq * 7919) % 18_000_000),
        "timestamp": hex(_BASE_TIME + 12 * seq),
        "baseFeePerGas": hex(7_000_000_000 + (seq * 104_729) % 3_000_000_000),
    }


def notification(sub_id: str, seq: int) -> bytes:
    """The whole JSON-RPC notification of publish ``seq``, as the peers send it."""
    return orjson.dumps({"jsonrpc": "2.0", "method": NOTIFY,
                         "params": {"subscription": sub_id, "result": head(seq)}})


def server_frame(payload: bytes) -> bytes:
    """One final, unmasked text frame (server role, RFC 6455 §5.2)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload


def subscribe_request(rid: int) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": rid, "method": SUBSCRIBE, "params": [TOPIC]})


def subscribe_reply(message: bytes | bytearray | memoryview, sub_id: str
                    ) -> tuple[bytes | None, int]:
    """A peer's answer to one message: (reply, +1 subscribed / -1 unsubscribed / 0).

    ``eth_subscribe("newHeads")`` and ``eth_unsubscribe(sub_id)`` are answered here;
    every other message by ``_rpc.handle`` (the peers' common dispatcher)."""
    import _rpc  # the peers' directory is on sys.path when a peer server runs

    try:
        req = orjson.loads(message)
    except orjson.JSONDecodeError:
        return _rpc.handle(message), 0
    if type(req) is dict and req.get("jsonrpc") == "2.0" and "id" in req:
        method, params = req.get("method"), req.get("params")
        if method == SUBSCRIBE and params == [TOPIC]:
            return _reply(req["id"], sub_id), 1
        if method == UNSUBSCRIBE and params == [sub_id]:
            return _reply(req["id"], True), -1
    return _rpc.handle(message), 0


def _reply(rid: Any, result: Any) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": rid, "result": result})


def control(publish: Callable[[int], int], count: Callable[[], int]) -> Callable[[], None]:
    """Serve the control commands read from stdin on the running loop; returns the
    function that stops reading. ``publish(seq)`` sends notification ``seq`` and returns
    the subscribers written to; ``count()`` is the number of subscribers."""
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    os.set_blocking(fd, False)
    buf = bytearray()

    def answer(line: bytes) -> bytes:
        words = line.split()
        if len(words) == 2 and words[0] == b"publish" and words[1].isdigit():
            seq = int(words[1])
            return b"published %d %d\n" % (seq, publish(seq))
        if words == [b"count"]:
            return b"subscribers %d\n" % count()
        return b"error unknown command %r\n" % bytes(line[:60])

    def readable() -> None:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            return
        if not chunk:  # the parent went away: stop reading, the signal handler stops us
            loop.remove_reader(fd)
            return
        buf.extend(chunk)
        while (end := buf.find(b"\n")) >= 0:
            line = bytes(buf[:end])
            del buf[:end + 1]
            sys.stdout.buffer.write(answer(line))
        sys.stdout.buffer.flush()

    loop.add_reader(fd, readable)
    return lambda: loop.remove_reader(fd)
