"""Client worker for ``benchmarks/soak.py``: holds its share of the connections and keeps
them busy with calls, subscriptions and churn, checking everything the server sends.

    python benchmarks/soak_client.py --port P --count C --first F --source 127.0.0.2 \\
        --calls-per-s 250 --churn 0.01 --subscribe-pct 25 ...

A ``memory_client.Worker`` (one ``select.epoll``, non-blocking sockets, its own
127.0.0.x source address, the upgrade checked) with JSON-RPC on top. Commands come as
lines on stdin; events go out as one JSON object per line on stdout:

* start: ``{"event": "ready"}``
* ``connect``: the ramp: open ``--count`` connections, at most ``--concurrency``
  handshakes at once; a subscriber (index % 100 < ``--subscribe-pct``) calls
  ``soak_subscribe("tick")`` as soon as it is open. ``{"event": "connected", ...}``
  once every connection is open or failed.
* ``steady``: calls and churn, until ``drain``:

  - **calls**: ``--calls-per-s`` of them, round robin over the open connections that
    have no call waiting (each connection sends a message every count ÷ rate seconds,
    well inside the server's ``idle_timeout``), alternately ``soak_echo(s)`` and
    ``soak_add(a, b)``. Every reply is checked: the id of a call waiting on that
    connection, exactly ``{"jsonrpc": "2.0", "id": .., "result": <expected>}``. No
    reply within ``--call-timeout``: an error.
  - **churn**: ``--churn`` of the connections per second (0.01: 1 %) are closed and at
    once reopened under the same index (a subscriber subscribes again), alternately
    a clean close (close frame 1000; the server's close frame must come back within
    ``--close-timeout``) and an abrupt reset (``SO_LINGER`` 0: RST, no close frame).
    Calls still waiting on a churned connection are *abandoned*, not errors.
  - **notifications**: each subscriber counts its ``soak_subscription`` notifications.
    Each carries the server's tick number, which must be one more than the one before
    (a gap or a repeat is an error); a subscriber that hears nothing for ``--stall``
    seconds is an error (once per subscription).

* ``drain``: no new call, churn or reconnect; the replies and handshakes in flight are
  awaited (bounded), then every connection is closed, alternately clean and reset, and
  ``{"event": "drained", ...}`` reports the totals before the process exits.

Every second, in every phase: ``{"event": "status", ...}`` with the running totals.
``errors`` (reason → count) holds everything that must not happen: a connection the
server closed or reset, a refused or failed (re)connect, a wrong, unexpected or
missing reply, a notification out of order, a clean close the server did not answer.
"""
from __future__ import annotations

import argparse
import random
import socket
import struct
import sys
import time
from typing import Any

import orjson

from _wsclient import client_frame
from memory_client import (CONNECTING, OPEN, OP_CLOSE, OP_TEXT, UPGRADING, Conn, Worker, parser,
                           raise_nofile)

CLOSING = 5  # our close frame sent, the server's awaited (memory_client's states are 0-4)
SUBSCRIBE = object()  # the expected "result" of a subscribe call: any subscription id
SCAN_S = 0.5  # how often the timeouts are checked, seconds
LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST
CLOSE_1000 = (1000).to_bytes(2, "big")


class SoakConn(Conn):
    __slots__ = ("calls", "next_id", "sub", "sub_call", "seq", "heard", "early", "stalled",
                 "notes")

    def __init__(self, sock: socket.socket, idx: int) -> None:
        super().__init__(sock, idx)
        self.calls: dict[int, tuple[Any, float]] = {}  # id -> (expected result, sent at)
        self.next_id = 1
        self.sub: str | None = None  # the subscription id, once the subscribe reply came
        self.sub_call = 0            # id of the subscribe call while it waits
        self.seq = 0                 # last tick number heard (0: none yet)
        self.heard = 0.0             # when the subscription last heard from the server
        self.early: list[tuple[Any, Any]] = []  # notifications before the subscribe reply
        self.stalled = False         # a stall was reported for this subscription
        self.notes = 0               # notifications heard on this connection


class SoakWorker(Worker):
    conn_class = SoakConn
    poll_s = 0.01  # calls and churn are paced from tick(): 100 turns a second at least

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.slots: list[SoakConn | None] = [None] * args.count  # index - first -> open conn
        self.rr = 0  # round-robin position in slots for the next call
        self.rng = random.Random(args.seed)
        self.call_budget = 0.0
        self.churn_budget = 0.0
        self.last_tick = time.monotonic()
        self.next_scan = 0.0
        self.next_status = 0.0
        self.drain_t0 = 0.0
        self.closing_all = False
        self.n: dict[str, int] = dict.fromkeys((
            "opened", "churned_clean", "churned_reset", "closed_clean", "closed_reset",
            "calls_sent", "calls_ok", "calls_abandoned", "subscribed", "notifications",
            "notifications_missed", "subscriptions_ended", "notifications_ended"), 0)
        self.kind = 0  # alternates the way a connection is closed: even clean, odd reset

    # -- what the server sends --------------------------------------------------------
    def opened(self, c: Conn) -> None:
        assert isinstance(c, SoakConn)
        self.n["opened"] += 1
        self.slots[c.idx - self.a.first] = c
        if c.idx % 100 < self.a.subscribe_pct:
            c.sub_call = self.call(c, "soak_subscribe", ["tick"], SUBSCRIBE)

    def on_message(self, c: Conn, opcode: int, payload: bytes) -> None:
        assert isinstance(c, SoakConn)
        if opcode != OP_TEXT:
            self.errors[f"opcode {opcode} message"] += 1
            return
        try:
            msg = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.errors["a message that is not JSON"] += 1
            return
        if not isinstance(msg, dict):
            self.errors["a message that is not an object"] += 1
        elif "method" in msg:
            self.on_notification(c, msg)
        else:
            self.on_reply(c, msg)

    def on_reply(self, c: SoakConn, msg: dict[str, Any]) -> None:
        cid = msg.get("id")
        call = c.calls.pop(cid, None) if isinstance(cid, int) else None
        if call is None:
            self.errors["a reply to no call waiting"] += 1
            return
        expected = call[0]
        if expected is SUBSCRIBE:
            sid = msg.get("result")
            if msg.keys() != {"jsonrpc", "id", "result"} or msg["jsonrpc"] != "2.0" \
                    or not isinstance(sid, str) or not sid.startswith("0x"):
                self.errors["a wrong subscribe reply"] += 1
                return
            c.sub, c.sub_call, c.heard = sid, 0, time.monotonic()
            self.n["subscribed"] += 1
            early, c.early = c.early, []
            for got_sid, seq in early:
                self.on_tick(c, got_sid, seq)
        elif msg == {"jsonrpc": "2.0", "id": cid, "result": expected}:
            self.n["calls_ok"] += 1
        else:
            self.errors["a wrong reply"] += 1

    def on_notification(self, c: SoakConn, msg: dict[str, Any]) -> None:
        params = msg.get("params")
        if msg.get("method") != "soak_subscription" or msg.get("jsonrpc") != "2.0" \
                or "id" in msg or not isinstance(params, dict) \
                or params.keys() != {"subscription", "result"}:
            self.errors["an unexpected notification"] += 1
            return
        if c.sub is None:
            if c.sub_call:  # the reply is still on its way: checked once it is here
                c.early.append((params["subscription"], params["result"]))
            else:
                self.errors["a notification without a subscription"] += 1
            return
        self.on_tick(c, params["subscription"], params["result"])

    def on_tick(self, c: SoakConn, sid: Any, seq: Any) -> None:
        if sid != c.sub:
            self.errors["a notification for another subscription"] += 1
            return
        if not isinstance(seq, int) or isinstance(seq, bool):
            self.errors["a notification whose tick is not an integer"] += 1
            return
        if c.seq and seq != c.seq + 1:
            if seq > c.seq + 1:
                self.errors["notifications missed (a gap in the ticks)"] += 1
                self.n["notifications_missed"] += seq - c.seq - 1
            else:
                self.errors["a notification repeated or out of order"] += 1
        c.seq = max(c.seq, seq)
        c.heard = time.monotonic()
        c.notes += 1
        self.n["notifications"] += 1

    def on_close_frame(self, c: Conn, code: int) -> None:
        if c.state == CLOSING:  # the answer to our close: a clean close completed
            if code != 1000:
                self.errors[f"clean close answered with {code}"] += 1
            self.n["closed_clean"] += 1
            self.abandon(c)
            self.finish(c)
        else:
            self.lost(c, f"closed by the server ({code})")

    def lost(self, c: Conn, reason: str) -> None:
        if c.state in (CONNECTING, UPGRADING):
            super().lost(c, reason)  # a failed (re)connect: counted by fail()
            return
        where = " while closing" if c.state == CLOSING else ""
        self.errors[reason + where] += 1
        assert isinstance(c, SoakConn)
        if c.calls:
            self.errors["calls lost with their connection"] += len(c.calls)
            c.calls.clear()
        self.finish(c)

    # -- what this client sends -----------------------------------------------------------
    def call(self, c: SoakConn, method: str, params: list[Any], expected: Any) -> int:
        cid = c.next_id
        c.next_id += 1
        c.calls[cid] = (expected, time.monotonic())
        self.n["calls_sent"] += expected is not SUBSCRIBE
        self.send(c, client_frame(OP_TEXT, orjson.dumps(
            {"jsonrpc": "2.0", "id": cid, "method": method, "params": params})))
        return cid

    def next_call(self) -> bool:
        """One call on the next connection, round robin, that is open with nothing
        waiting; False when there is none."""
        slots, n = self.slots, len(self.slots)
        for _ in range(n):
            c = slots[self.rr]
            self.rr = (self.rr + 1) % n
            if c is not None and c.state == OPEN and not c.calls:
                i = c.next_id
                if i % 2:
                    s = f"{self.a.source}-{c.idx}-{i}"
                    self.call(c, "soak_echo", [s], s)
                else:
                    self.call(c, "soak_add", [c.idx, i], c.idx + i)
                return True
        return False

    def close_conn(self, c: SoakConn, reset: bool, now: float) -> None:
        """Close ``c`` cleanly (close frame, the server's awaited) or with a reset."""
        slot = c.idx - self.a.first
        if self.slots[slot] is c:
            self.slots[slot] = None
        if reset:
            self.abandon(c)
            try:
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            except OSError:
                pass
            self.n["closed_reset"] += 1
            self.finish(c)
        else:  # replies to calls already sent may come before the server's close frame
            c.state, c.t0 = CLOSING, now
            self.send(c, client_frame(OP_CLOSE, CLOSE_1000))

    def abandon(self, c: SoakConn) -> None:
        """Calls still waiting on a connection this client closes: the churn's doing,
        not errors."""
        if c.calls:
            self.n["calls_abandoned"] += sum(e is not SUBSCRIBE for e, _ in c.calls.values())
            c.calls.clear()

    def finish(self, c: Conn) -> None:
        """``c`` is gone: its subscription's count goes into the totals."""
        assert isinstance(c, SoakConn)
        slot = c.idx - self.a.first
        if self.slots[slot] is c:
            self.slots[slot] = None
        if c.sub is not None:
            self.n["subscriptions_ended"] += 1
            self.n["notifications_ended"] += c.notes
            c.sub = None
        self.drop(c)

    def churn(self, now: float) -> None:
        """Close one open connection picked at random and queue its index to reopen."""
        for _ in range(8):  # a few tries: the slot picked may be reconnecting
            c = self.slots[self.rng.randrange(len(self.slots))]
            if c is not None and c.state == OPEN:
                break
        else:
            return
        reset = bool(self.kind % 2)
        self.kind += 1
        self.n["churned_reset" if reset else "churned_clean"] += 1
        self.todo.append(c.idx)  # type: ignore[arg-type]
        self.close_conn(c, reset, now)

    # -- phases ---------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        dt, self.last_tick = now - self.last_tick, now
        if self.phase in ("connect", "touch"):
            super().tick(now)
        elif self.phase == "steady":
            self.fill_connect()
            # The budgets carry at most a second's worth over a stall of this process.
            self.call_budget = min(self.call_budget + self.a.calls_per_s * dt,
                                   max(1.0, self.a.calls_per_s))
            while self.call_budget >= 1 and self.next_call():
                self.call_budget -= 1
            per_s = self.a.churn * len(self.slots)
            self.churn_budget = min(self.churn_budget + per_s * dt, max(1.0, per_s))
            while self.churn_budget >= 1:
                self.churn_budget -= 1
                self.churn(now)
            self.check_timeouts(now)
        elif self.phase == "drain":
            self.drain_step(now)
        else:  # between the phases: subscribe replies may still be on their way
            self.check_timeouts(now)
        if now >= self.next_status:
            self.next_status = now + 1.0
            self.emit(event="status", **self.totals())

    def check_timeouts(self, now: float) -> None:
        if self.phase in ("connect", "touch"):
            super().check_timeouts(now)
        if now < self.next_scan:
            return
        self.next_scan = now + SCAN_S
        for c in list(self.conns.values()):
            assert isinstance(c, SoakConn)
            if c.state in (CONNECTING, UPGRADING):
                if self.phase not in ("connect", "touch") and now - c.t0 > self.a.phase_timeout:
                    self.fail(c, f"no 101 within {self.a.phase_timeout:g} s")
                continue
            if c.state == CLOSING and now - c.t0 > self.a.close_timeout:
                self.errors[f"no close frame back within {self.a.close_timeout:g} s"] += 1
                self.finish(c)
                continue
            if c.calls:
                late = [i for i, (_, t) in c.calls.items() if now - t > self.a.call_timeout]
                for i in late:
                    del c.calls[i]
                    if i == c.sub_call:
                        c.sub_call = 0
                if late:
                    self.errors[f"no reply within {self.a.call_timeout:g} s"] += len(late)
            if c.sub is not None and not c.stalled and now - c.heard > self.a.stall:
                c.stalled = True
                self.errors[f"a subscriber heard nothing for {self.a.stall:g} s"] += 1

    def check_phase_done(self) -> None:
        if self.phase in ("connect", "touch"):
            super().check_phase_done()

    def drain_step(self, now: float) -> None:
        """Wait for the handshakes and replies in flight (bounded), then close every
        connection and wait for the clean closes to be answered (bounded)."""
        waiting = any(c.calls for c in self.conns.values())  # type: ignore[attr-defined]
        if not self.closing_all:
            if (self.in_flight or waiting) and now - self.drain_t0 < self.a.call_timeout:
                self.check_timeouts(now)
                return
            self.check_timeouts(now)
            self.closing_all = True
            for c in list(self.conns.values()):
                assert isinstance(c, SoakConn)
                if c.state in (CONNECTING, UPGRADING):
                    self.fail(c, "still connecting at the drain")
                elif c.state == OPEN:
                    self.close_conn(c, bool(self.kind % 2), now)
                    self.kind += 1
            return
        self.check_timeouts(now)  # a clean close not answered in time is an error
        if not self.conns:
            self.emit(event="drained", **self.totals())
            self.quit = True

    def totals(self) -> dict[str, Any]:
        states = [c.state for c in self.conns.values()]
        live_subs = [c for c in self.conns.values() if c.sub is not None]  # type: ignore[attr-defined]
        return {
            "phase": self.phase, "open": states.count(OPEN), "closing": states.count(CLOSING),
            "connecting": self.in_flight, "calls_waiting": sum(
                len(c.calls) for c in self.conns.values()),  # type: ignore[attr-defined]
            **self.n,
            # ended subscriptions and the live ones: notifications per subscriber
            "subscriptions": self.n["subscriptions_ended"] + len(live_subs),
            "pings": self.pings, "failed": self.failed,
            "errors": dict(self.errors),
        }

    def command(self, line: str) -> None:
        if line == "steady":
            self.phase, self.phase_t0 = "steady", time.monotonic()
        elif line == "drain":
            self.phase, self.drain_t0 = "drain", time.monotonic()
            self.todo.clear()
        else:
            super().command(line)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n\n")[0])  # --phase-timeout: the ramp, and each (re)connect
    p.add_argument("--calls-per-s", type=float, default=100.0, help="this worker's call rate")
    p.add_argument("--churn", type=float, default=0.01,
                   help="share of the connections closed and reopened per second")
    p.add_argument("--subscribe-pct", type=int, default=25,
                   help="percent of the connections that subscribe")
    p.add_argument("--call-timeout", type=float, default=10.0)
    p.add_argument("--close-timeout", type=float, default=5.0)
    p.add_argument("--stall", type=float, default=10.0,
                   help="seconds a subscriber may hear nothing")
    p.add_argument("--seed", type=int, default=0, help="seeds which connections churn")
    p.set_defaults(lifetime=3600.0)
    args = p.parse_args(argv)
    raise_nofile()
    SoakWorker(args).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
