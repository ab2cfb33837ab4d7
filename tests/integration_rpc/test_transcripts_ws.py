"""Play every ``tests/transcripts/*.txt`` against a real server over WebSocket.

The same files ``tests/unit/test_transcripts.py`` feeds to a Dispatcher over a fake
transport, here sent by the ``websockets`` client to a started ``fastrpc.Server``
(``transcript_services.make_server``: the same services, namespaces and tiny limits),
on asyncio and on uvloop. Each file gets a fresh server and one connection.

For each ``-->`` line the runner sends the text as one text message and reads (bounded)
as many messages as there are ``<--`` lines. Then it waits until the server has read
the message (its ``messages_in`` counter) and no call the message started is still
running, and sends a *sentinel*: a call of a method that does not exist, with an id no
transcript uses. The server answers it at once (-32601 touches no bulkhead, breaker or
counter, so the transcript's own state is unchanged), and since every earlier reply
was queued first, any message arriving before the sentinel's answer is an extra one:
the exchange fails. That is how "no ``<--`` line means no message at all" is checked
without sleeping.
"""
from __future__ import annotations

import asyncio
import os

import orjson
import pytest
from helpers import wait_until
from rpcclient import ws_connect
from transcript_services import LIMITS, load_transcript, make_server, match_replies, substitute, transcript_files

FILES = transcript_files()
REPLY_WAIT = 3.0  # seconds one expected reply may take (the slowest is a 0.2 s timeout)
MAX_EXTRA = 50  # messages read while looking for the sentinel's answer

#: The transcripts' JSON-RPC limits, plus what a real server needs on a test machine:
#: a small table, no keepalive pings, short shutdown waits.
WS_LIMITS = LIMITS.replace(
    max_connections=16,
    max_connections_per_ip=16,
    idle_timeout=None,
    ping_interval=None,
    pong_timeout=None,
    close_timeout=1.0,
    drain_timeout=2.0,
)


def messages_in(srv) -> int:
    """Whole messages the server has read (this test has one connection)."""
    return int(srv.reactor.counters_dict()["messages_in"])


def test_every_transcript_is_played():
    assert len(FILES) >= 30


async def recv_json(ws, timeout: float) -> bytes:
    message = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(message, str), f"the server answered with a binary message: {message!r}"
    return message.encode()


@pytest.mark.parametrize("path", FILES, ids=[os.path.basename(p)[:-4] for p in FILES])
def test_transcript_over_websocket(run, rpc_server, path):
    exchanges = load_transcript(path)
    name = os.path.basename(path)

    async def body():
        srv = await rpc_server(make_server(WS_LIMITS))
        bindings: dict = {}
        async with ws_connect(srv.port) as ws:
            for n, ex in enumerate(exchanges):
                where = f"{name}:{ex.line}: {ex.request}"
                received = messages_in(srv) + 1
                await ws.send(substitute(ex.request, bindings).decode())
                got: list[bytes] = []
                try:
                    while len(got) < len(ex.replies):
                        got.append(await recv_json(ws, REPLY_WAIT))
                except (asyncio.TimeoutError, TimeoutError):
                    pass  # too few replies: match_replies below names the difference
                # The server has read the message and every call it started has
                # finished (so its reply, if any, is queued); then the sentinel shows
                # whether anything else was sent.
                await wait_until(
                    lambda: messages_in(srv) >= received and srv.dispatcher.in_flight == 0,
                    REPLY_WAIT,
                    f"{where}: the message to be read and its calls to finish",
                )
                sentinel = f"sentinel-{n}"
                await ws.send(orjson.dumps({"jsonrpc": "2.0", "id": sentinel, "method": "sentinel_absent"}).decode())
                for _ in range(MAX_EXTRA):
                    data = await recv_json(ws, REPLY_WAIT)
                    msg = orjson.loads(data)
                    if type(msg) is dict and msg.get("id") == sentinel:
                        assert msg["error"]["code"] == -32601, msg
                        break
                    got.append(data)
                else:
                    raise AssertionError(f"{where}: no answer to the sentinel among {MAX_EXTRA} messages")
                problem = match_replies(ex.replies, got, bindings)
                assert problem is None, f"{where}\n{problem}"
        # The client closed: the server forgot the connection and its subscriptions.
        await wait_until(lambda: len(srv.reactor) == 0, REPLY_WAIT, "the connection to end")
        assert srv.dispatcher.metrics()["subscriptions"] == 0
        assert len(srv.dispatcher.subscriptions) == 0

    run(body())
