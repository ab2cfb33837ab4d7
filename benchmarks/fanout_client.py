"""Subscriber worker for ``benchmarks/fanout.py``: many WebSocket subscribers in one process.

    python benchmarks/fanout_client.py --port P --count C --source 127.0.0.2 ...

``memory_client.py``'s worker (one ``select.epoll``, non-blocking sockets, its own
127.0.0.x source address, the upgrade checked) with its touch phase turned into a
subscribe phase, and no extension offered. Commands on stdin, JSON lines on stdout:

* ``connect``: as in ``memory_client.py`` (``{"event": "connected", ...}``).
* ``subscribe``: ``eth_subscribe("newHeads")`` on every open connection (at most
  ``--concurrency`` in flight); a reply must be ``{"jsonrpc": "2.0", "id": <ours>,
  "result": <string id>}``. Then ``{"event": "subscribed", "ok": .., "failed": ..}``.
* From then on every text message on a subscribed connection must be the next
  notification in order: notification ``seq`` (0, 1, 2, ... per connection) is
  ``{"jsonrpc": "2.0", "method": "eth_subscription", "params": {"subscription": <its id>,
  "result": _fanout.head(seq)}}``, nothing more or less (the JSON is decoded and compared
  member by member, types included). Bytes equal to a notification already checked for
  the same id and seq are accepted without decoding again: a correct server sends the
  same frame to every subscriber. Once every subscribed connection has received seq:
  ``{"event": "received", "seq": seq, "ok": .., "bad": ..}``.
* ``status``: ``{"event": "status", "open": .., "dropped": .., "subscribed": ..,
  "delivered": .., "bad": .., "errors": {reason: count}}``.
* ``close``: close frames (1000), every socket closed, ``{"event": "closed"}``, exit.
"""
from __future__ import annotations

import socket
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(1, str(Path(__file__).resolve().parent / "peers"))

import memory_client as mc  # noqa: E402
from _fanout import NOTIFY, head, subscribe_request  # noqa: E402

_ENVELOPE = {"jsonrpc", "method", "params"}
_PARAMS = {"subscription", "result"}
_REPLY = {"jsonrpc", "id", "result"}
_NONE: dict[str, bytes] = {}


class Subscriber(mc.Conn):
    __slots__ = ("sub", "next")

    def __init__(self, sock: socket.socket, idx: int) -> None:
        super().__init__(sock, idx)
        self.sub: str | None = None  # its subscription id, once subscribed
        self.next = 0                # the seq its next notification must carry


class FanoutWorker(mc.Worker):
    OFFER = b""  # no permessage-deflate: every server sends its frames uncompressed
    EVENTS = {"connect": "connected", "touch": "subscribed"}
    conn_class = Subscriber

    def __init__(self, args: Any) -> None:
        super().__init__(args)
        self.subscribed = 0
        self.delivered = 0
        self.bad = 0
        self.by_seq: dict[int, list[int]] = {}  # seq -> [ok, bad] so far
        self.checked: dict[int, dict[str, bytes]] = {}  # seq -> id -> bytes found right
        self.expected: dict[int, Any] = {}  # seq -> head(seq)
        self.notify_errors: Counter[str] = Counter()

    # -- subscribing (the touch phase of memory_client) ----------------------------------
    def touch_message(self, c: mc.Conn) -> bytes:
        return subscribe_request(c.idx)

    def check_touch_reply(self, c: mc.Conn, opcode: int, payload: bytes) -> str:
        assert isinstance(c, Subscriber)
        try:
            reply = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return "subscribe reply is not JSON"
        if (opcode != mc.OP_TEXT or type(reply) is not dict or set(reply) != _REPLY
                or reply["jsonrpc"] != "2.0" or reply["id"] != c.idx
                or type(reply["id"]) is not int or type(reply["result"]) is not str):
            return "subscribe reply is not a result with a string id"
        c.sub = reply["result"]
        self.subscribed += 1
        return ""

    # -- notifications ----------------------------------------------------------------------
    def on_message(self, c: mc.Conn, opcode: int, payload: bytes) -> None:
        if c.state != mc.OPEN or not isinstance(c, Subscriber) or c.sub is None:
            super().on_message(c, opcode, payload)
            return
        seq = c.next
        c.next = seq + 1
        if opcode == mc.OP_TEXT and self.checked.get(seq, _NONE).get(c.sub) == payload:
            why = ""
        else:
            why = self.check_notification(c.sub, seq, opcode, payload)
            if not why:
                self.checked.setdefault(seq, {})[c.sub] = payload
        counts = self.by_seq.get(seq)
        if counts is None:
            counts = self.by_seq[seq] = [0, 0]
        if why:
            self.bad += 1
            counts[1] += 1
            self.notify_errors[why] += 1
        else:
            self.delivered += 1
            counts[0] += 1
        if counts[0] + counts[1] == self.subscribed:
            self.emit(event="received", seq=seq, ok=counts[0], bad=counts[1])
            del self.by_seq[seq]
            self.checked.pop(seq, None)  # every subscriber has it: no one will compare again

    def check_notification(self, sub: str, seq: int, opcode: int, payload: bytes) -> str:
        """Why ``payload`` is not notification ``seq`` of subscription ``sub`` ("" if it is)."""
        if opcode != mc.OP_TEXT:
            return "not a text message"
        try:
            msg = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return "not JSON"
        if (type(msg) is not dict or set(msg) != _ENVELOPE or msg["jsonrpc"] != "2.0"
                or msg["method"] != NOTIFY or type(msg["params"]) is not dict
                or set(msg["params"]) != _PARAMS):
            return "not an eth_subscription notification"
        params = msg["params"]
        if params["subscription"] != sub:
            return "another subscription's id"
        want = self.expected.get(seq)
        if want is None:
            want = self.expected[seq] = head(seq)
            if len(self.expected) > 64:
                self.expected.pop(next(iter(self.expected)))
        got = params["result"]
        if got == want:
            return ""
        number = got.get("number") if type(got) is dict else None
        if type(number) is str and number.startswith("0x") and number != want["number"]:
            return "out of order (a notification missing or repeated)"
        return "payload differs"

    def command(self, line: str) -> None:
        if line == "subscribe":
            self.start_touch()
        elif line == "touch":
            self.emit(event="error", reason="unknown command 'touch'")
        elif line == "status":
            errors = self.errors + self.notify_errors
            self.emit(event="status", open=len(self.conns), dropped=self.dropped,
                      subscribed=self.subscribed, delivered=self.delivered, bad=self.bad,
                      errors=dict(errors.most_common(5)))
        else:
            super().command(line)


def main(argv: list[str] | None = None) -> int:
    args = mc.parser(__doc__.split("\n\n")[0]).parse_args(argv)
    mc.raise_nofile()
    FanoutWorker(args).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
