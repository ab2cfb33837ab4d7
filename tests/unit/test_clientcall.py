"""fastrpc._clientcall: the client's compiled call path against the general Python path.

The compiled reply path settles only the common reply layout and hands everything else
to ``Client._on_message``, so for every reply the two must give the same outcome (the
future's result or exception, the counters, what stays pending); these tests check that
for a fixed corpus and hypothesis-generated and -mutated replies, that the fast path is
really taken for the layout it claims, that ``request_bytes`` is ``orjson.dumps`` of the
request dict byte for byte, and the deadline check's granularity. No sockets.
"""
from __future__ import annotations

import asyncio
import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastrpc import _clientcall, client as client_mod
from fastrpc.client import Client
from fastrpc.errors import CallTimeout

PENDING = (1, 2, 7, 10**17 + 3)  # ids waiting in every scenario (one with a hook: 7)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def test_constants_agree():
    assert _clientcall.STATE_OPEN == client_mod._OPEN
    assert Client.call is _clientcall.ClientCore.call


def make_client(loop: asyncio.AbstractEventLoop) -> Client:
    c = Client("ws://127.0.0.1:9/")
    c._loop = loop
    c._new_future = loop.create_future
    c._ids = max(PENDING) + 5
    for rid in PENDING:
        hook = (lambda v: ("hooked", v)) if rid == 7 else None
        c._pending[rid] = _clientcall.Call(loop.create_future(), f"m{rid}", None, hook)
    return c


def outcome(c: Client) -> tuple:
    futs = []
    for rid in PENDING:
        call = c._pending.get(rid)
        futs.append(("pending", rid) if call is not None else None)
    return tuple(futs), tuple(sorted(c.counters.items()))


def settled(calls: dict[int, _clientcall.Call]) -> list:
    out = []
    for rid, call in sorted(calls.items()):
        f = call.fut
        if not f.done():
            out.append((rid, "waiting"))
        elif f.exception() is not None:
            e = f.exception()
            out.append((rid, type(e).__name__, str(e), getattr(e, "code", None), getattr(e, "data", None)))
        else:
            out.append((rid, "result", repr(f.result()), type(f.result()).__name__))
    return out


def both_paths(data: bytes) -> tuple[bool, tuple, tuple]:
    """(fast path taken, outcome of the general path, outcome of fast-then-general)."""
    loop = asyncio.new_event_loop()
    try:
        full, fast = make_client(loop), make_client(loop)
        full_calls, fast_calls = dict(full._pending), dict(fast._pending)
        full._on_message(data)
        took = fast._fast_reply(data)
        if not took:
            fast._on_message(data)
        a = (outcome(full), settled(full_calls))
        b = (outcome(fast), settled(fast_calls))
        return took, a, b
    finally:
        loop.close()


CORPUS = [
    b'{"jsonrpc":"2.0","id":1,"result":"0x10d4f"}',
    b'{"jsonrpc":"2.0","id":2,"result":null}',
    b'{"jsonrpc":"2.0","id":2,"result":[1,{"a":2}]}',
    b'{"jsonrpc":"2.0","id":100000000000000003,"result":1}',
    b'{"jsonrpc":"2.0","id":7,"result":"sub"}',           # a hook: general path
    b'{"jsonrpc":"2.0","id":3,"result":1}',               # late (3 <= _ids)
    b'{"jsonrpc":"2.0","id":99999999,"result":1}',        # unknown id
    b'{"jsonrpc":"2.0","id":01,"result":1}',              # invalid JSON
    b'{"jsonrpc":"2.0","id":-1,"result":1}',
    b'{"jsonrpc":"2.0","id":1.0,"result":1}',
    b'{"jsonrpc":"2.0","id":1,"result":1,"id":2}',        # duplicate key
    b'{"jsonrpc":"2.0","id":1,"result":1,"error":{"code":1,"message":"x"}}',
    b'{"jsonrpc":"2.0","id":1,"result":}',
    b'{"jsonrpc":"2.0","id":1,"result":1}}',
    b'{"jsonrpc":"2.0","id":1,"result":1 }',
    b'{"jsonrpc":"2.0","id":1,"result": "a"}',
    b'{"jsonrpc":"2.0","id":1,"result":"\xff"}',          # invalid UTF-8
    b'{"jsonrpc":"2.0","id":1,"result":"a}',
    b'{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"boom","data":[1]}}',
    b'{"jsonrpc":"2.0","id":1,"error":{"code":"x","message":"boom"}}',
    b'{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse"}}',
    b'{"id":1,"jsonrpc":"2.0","result":5}',
    b'{"jsonrpc": "2.0", "id": 1, "result": 5}',
    b'{"jsonrpc":"2.0","id":1}',
    b'{"jsonrpc":"2.0","method":"x_subscription","params":{"subscription":"s","result":1}}',
    b'[{"jsonrpc":"2.0","id":1,"result":1},{"jsonrpc":"2.0","id":2,"result":2}]',
    b'{"jsonrpc":"2.0","id":1,"result":1}\n',
    b'{"jsonrpc":"2.0","id":1000000000000000000,"result":1}',  # 19 digits
    b'',
    b'}',
]


@pytest.mark.parametrize("data", CORPUS)
def test_corpus_same_outcome(data):
    _, a, b = both_paths(data)
    assert a == b


@pytest.mark.parametrize("data", CORPUS[:4])
def test_fast_path_taken_for_the_common_layout(data):
    took, a, b = both_paths(data)
    assert took and a == b


@given(rid=st.sampled_from(PENDING + (3, 12, 0)), value=json_values)
@settings(max_examples=300, deadline=None)
def test_generated_replies(rid, value):
    data = b'{"jsonrpc":"2.0","id":%d,"result":%s}' % (rid, orjson.dumps(value))
    took, a, b = both_paths(data)
    assert a == b
    assert took == (rid in PENDING and rid != 7)


@given(value=json_values, pos=st.integers(0, 200), byte=st.integers(0, 255),
       how=st.sampled_from(["replace", "insert", "delete"]))
@settings(max_examples=500, deadline=None)
def test_mutated_replies(value, pos, byte, how):
    data = bytearray(b'{"jsonrpc":"2.0","id":2,"result":%s}' % orjson.dumps(value))
    pos %= len(data) + (how == "insert")
    if how == "replace" and pos < len(data):
        data[pos] = byte
    elif how == "insert":
        data.insert(pos, byte)
    elif pos < len(data):
        del data[pos]
    _, a, b = both_paths(bytes(data))
    assert a == b


# --- requests ----------------------------------------------------------------------


@given(rid=st.integers(0, 2**63 - 1), method=st.text(max_size=30),
       params=st.lists(json_values, max_size=4) | st.dictionaries(st.text(max_size=8), json_values, max_size=3))
@settings(max_examples=400, deadline=None)
def test_request_bytes_is_orjson_of_the_dict(rid, method, params):
    want = orjson.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
    assert _clientcall.request_bytes(rid, method, params) == want
    if type(params) is list:
        assert _clientcall.request_bytes(rid, method, tuple(params)) == want


def test_request_bytes_edges():
    assert _clientcall.request_bytes(0, "a", ()) == b'{"jsonrpc":"2.0","id":0,"method":"a","params":[]}'
    assert _clientcall.request_bytes(1, "é\"\n", [1]) == orjson.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "é\"\n", "params": [1]})
    with pytest.raises(TypeError):
        _clientcall.request_bytes(1, "a", [object()])
    with pytest.raises(TypeError):
        _clientcall.request_bytes(1, "a", [2**64])


def test_norm_params():
    assert _clientcall.norm_params((1, 2), None) == [1, 2]
    assert _clientcall.norm_params((), {"a": 1}) == {"a": 1}
    assert _clientcall.norm_params((), (1,)) == [1]
    with pytest.raises(TypeError):
        _clientcall.norm_params((1,), [1])
    with pytest.raises(TypeError):
        _clientcall.norm_params((), "ab")


# --- deadlines ----------------------------------------------------------------------


class FakeSend:
    def __init__(self):
        self.sent: list[bytes] = []

    def __call__(self, cid, data):
        self.sent.append(data)
        return True


@pytest.mark.parametrize("timeout", [0.02, 0.3, 1.5])
def test_deadline_granularity(timeout):
    """A call expires after its timeout and within min(10 % of it, 100 ms) past it."""
    async def main():
        loop = asyncio.get_running_loop()
        c = Client("ws://127.0.0.1:9/", call_timeout=60)
        c._loop, c._new_future = loop, loop.create_future
        c._state, c._send, c._cid = client_mod._OPEN, FakeSend(), 1
        t0 = _clientcall.now()
        slow = asyncio.ensure_future(c.call("a", timeout=timeout))
        long = asyncio.ensure_future(c.call("b"))  # default 60 s: must not delay "a"
        await asyncio.sleep(0)
        with pytest.raises(CallTimeout):
            await slow
        took = _clientcall.now() - t0
        assert timeout <= took <= timeout + min(0.1 * timeout, 0.1) + 0.015
        assert c.in_flight == 1 and c.counters["timeouts"] == 1
        long.cancel()
        with pytest.raises(asyncio.CancelledError):
            await long
        assert c.in_flight == 0
        c._cancel_deadlines()
    asyncio.run(main())


def test_shorter_call_after_longer_rearms():
    async def main():
        loop = asyncio.get_running_loop()
        c = Client("ws://127.0.0.1:9/")
        c._loop, c._new_future = loop, loop.create_future
        c._state, c._send, c._cid = client_mod._OPEN, FakeSend(), 1
        long = asyncio.ensure_future(c.call("b", timeout=30))
        await asyncio.sleep(0)
        t0 = _clientcall.now()
        with pytest.raises(CallTimeout, match="no reply within 0.05 s"):
            await c.call("a", timeout=0.05)
        assert _clientcall.now() - t0 < 0.05 + 0.005 + 0.015
        forever = asyncio.ensure_future(c.call("c", timeout=math.inf))
        await asyncio.sleep(0.01)
        assert c.in_flight == 2
        long.cancel()
        forever.cancel()
        await asyncio.gather(long, forever, return_exceptions=True)
        c._cancel_deadlines()
    asyncio.run(main())
