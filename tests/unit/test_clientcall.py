"""fastrpc._clientcall: the client's compiled call path against the general Python path.

The compiled reply path settles only the common reply layout and hands everything else
to ``Client._on_message``, so for every reply the two must give the same outcome (the
future's result or exception, the counters, what stays pending); these tests check that
for a fixed corpus and hypothesis-generated and -mutated replies, with calls that have
an asyncio future and with calls awaited by a task (each call its own future), that the
fast path is really taken for the layout it claims, that its own decoding of common
results is ``orjson.loads`` and its own encoding of simple params ``orjson.dumps``, that
``request_bytes`` is ``orjson.dumps`` of the request dict byte for byte, and the
deadline check's granularity. Then the call as its own future, on asyncio and uvloop:
results, errors and cancellation through tasks (C Tasks, a Task subclass, asyncio's
Python Task), ``wait_for``/``gather``/``shield``, contexts, done callbacks, and the one
loop callback per turn that wakes the tasks (their requests held until all ran).
No sockets.
"""
from __future__ import annotations

import asyncio
import contextvars
import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastrpc import _clientcall, client as client_mod
from fastrpc.client import Client
from fastrpc.errors import CallTimeout, ConnectionLost, RPCError

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


def both_paths_own(data: bytes) -> tuple[bool, tuple, tuple]:
    """``both_paths`` with the calls made by ``Client.call`` (each one its own future,
    awaited by a task; the hooked id 7 keeps a future, as a subscribe call has)."""
    async def one(fast: bool) -> tuple[bool, tuple]:
        loop = asyncio.get_running_loop()
        c = open_client(loop)
        tasks = {}
        for rid in PENDING:
            if rid == 7:
                c._pending[rid] = _clientcall.Call(loop.create_future(), f"m{rid}", None,
                                                   lambda v: ("hooked", v))
                continue
            c._ids = rid - 1
            tasks[rid] = asyncio.ensure_future(c.call(f"m{rid}"))
            await turn()  # the task sends its request, with id rid
        c._ids = max(PENDING) + 5
        took = fast and c._fast_reply(data)
        if not took:
            c._on_message(data)
        await turn(2)
        settled = []
        for rid, t in sorted(tasks.items()):
            if not t.done():
                settled.append((rid, "waiting"))
                t.cancel()
            elif t.exception() is not None:
                e = t.exception()
                settled.append((rid, type(e).__name__, str(e), getattr(e, "code", None), getattr(e, "data", None)))
            else:
                settled.append((rid, "result", repr(t.result()), type(t.result()).__name__))
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        c._cancel_deadlines()
        return took, (tuple(settled), tuple(sorted(c.counters.items())))

    took, b = asyncio.run(one(True))
    _, a = asyncio.run(one(False))
    return took, a, b


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
    _, a, b = both_paths_own(data)
    assert a == b


@pytest.mark.parametrize("data", CORPUS[:4])
def test_fast_path_taken_for_the_common_layout(data):
    took, a, b = both_paths(data)
    assert took and a == b
    took, a, b = both_paths_own(data)
    assert took and a == b


@given(rid=st.sampled_from(PENDING + (3, 12, 0)), value=json_values)
@settings(max_examples=300, deadline=None)
def test_generated_replies(rid, value):
    data = b'{"jsonrpc":"2.0","id":%d,"result":%s}' % (rid, orjson.dumps(value))
    took, a, b = both_paths(data)
    assert a == b
    assert took == (rid in PENDING and rid != 7)
    took, a, b = both_paths_own(data)
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
    _, a, b = both_paths_own(bytes(data))
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


# --- scalar results and simple params, without orjson -------------------------------

SCALAR_TEXTS = [
    b'"0x10d4f"', b'""', b'"hello world 7"', b'"~ !#$%&()*+,-./:;<=>?@[]^_`{|}"', b'"\x7f"',
    b'"a\\"b"', b'"a\\\\b"', b'"\\u00e9"', b'"\xc3\xa9"', b'"a\x01"', b'"a\tb"', b'"\xff"',
    b'"', b'"a', b'a"', b'"a"b"', b'"a" ',
    b'0', b'-0', b'7', b'-7', b'00', b'-', b'--1', b'01', b'1.5', b'1e5', b'1 ', b' 1',
    b'123456789012345678', b'-123456789012345678', b'1234567890123456789',
    b'9223372036854775807', b'18446744073709551615', b'18446744073709551616',
    b'true', b'false', b'null', b'tru', b'nul', b'True', b'truee', b'[]', b'{}', b'', b' ',
]


def orjson_or_error(data: bytes):
    try:
        v = orjson.loads(data)
    except orjson.JSONDecodeError:
        return ("error",)
    return ("value", type(v), v)


@pytest.mark.parametrize("data", SCALAR_TEXTS)
def test_scalar_json_is_orjson_where_it_decodes(data):
    took, value = _clientcall._scalar_json(data)
    if took:
        assert orjson_or_error(data) == ("value", type(value), value)


def test_scalar_json_takes_the_common_results():
    for data in (b'"0x10d4f"', b'""', b'"hello world 7"', b'0', b'-7', b'123456789012345678',
                 b'true', b'false', b'null'):
        took, value = _clientcall._scalar_json(data)
        assert took and value == orjson.loads(data) and type(value) is type(orjson.loads(data))
    for data in (b'"a\\"b"', b'"\xc3\xa9"', b'1.5', b'1234567890123456789', b'[]', b'01'):
        assert _clientcall._scalar_json(data) == (False, None)


@given(value=json_values)
@settings(max_examples=400, deadline=None)
def test_scalar_json_generated(value):
    data = orjson.dumps(value)
    took, got = _clientcall._scalar_json(data)
    if took:
        assert type(got) is type(value) and got == value


@given(data=st.binary(max_size=24))
@settings(max_examples=400, deadline=None)
def test_scalar_json_random_bytes(data):
    took, got = _clientcall._scalar_json(data)
    if took:
        assert orjson_or_error(data) == ("value", type(got), got)


class Sub(str):
    pass


class IntSub(int):
    pass


SIMPLE_PARAMS = [
    (), ("0xabc", "latest"), ["a", 1, True, False, None], (0, -1, 2**63 - 1, -(2**63)),
    (2**63,), (-(2**63) - 1,), (2**64,), ("é",), ('a"b',), ("a\\b",), ("a\x00",), ("\x1f",),
    ("\x7f",), ("",), (Sub("x"),), (IntSub(3),), (1.5,), ([1],), ({"a": 1},),
    tuple(range(16)), tuple(range(17)), ["x"] * 16, ["x"] * 17,
]


def encoded(f, *args):
    """What ``f(*args)`` returns, or the type of the exception it raises."""
    try:
        return f(*args)
    except Exception as e:  # noqa: BLE001 - compared, not hidden
        return type(e)


@pytest.mark.parametrize("params", SIMPLE_PARAMS, ids=repr)
def test_request_bytes_simple_params_are_orjson(params):
    want = encoded(orjson.dumps, {"jsonrpc": "2.0", "id": 5, "method": "m", "params": list(params)})
    assert encoded(_clientcall.request_bytes, 5, "m", params) == want
    assert encoded(_clientcall.request_bytes, 5, "m", list(params)) == want


@given(params=st.lists(st.none() | st.booleans() | st.integers(-(2**64), 2**64)
                       | st.text(alphabet=st.characters(max_codepoint=0x80), max_size=8), max_size=18))
@settings(max_examples=400, deadline=None)
def test_request_bytes_generated_simple_params(params):
    want = encoded(orjson.dumps, {"jsonrpc": "2.0", "id": 9, "method": "m", "params": params})
    assert encoded(_clientcall.request_bytes, 9, "m", tuple(params)) == want


# --- the call as its own future --------------------------------------------------------

LOOPS = ["asyncio", "uvloop"]


def run_on(loop_name: str, main):
    if loop_name == "uvloop":
        import uvloop

        return uvloop.run(main())
    return asyncio.run(main())


def open_client(loop: asyncio.AbstractEventLoop) -> Client:
    """A Client in the open state whose requests go to a FakeSend (no socket)."""
    c = Client("ws://127.0.0.1:9/", call_timeout=30)
    c._loop, c._new_future = loop, loop.create_future
    c._state, c._send, c._cid = client_mod._OPEN, FakeSend(), 1
    return c


def result_reply(rid: int, value) -> bytes:
    return b'{"jsonrpc":"2.0","id":%d,"result":%s}' % (rid, orjson.dumps(value))


async def turn(n: int = 1) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_result_reaches_the_task_on_a_later_turn(loop_name):
    async def main():
        loop = asyncio.get_running_loop()
        c = open_client(loop)
        t = asyncio.ensure_future(c.call("m", "x"))
        await turn()
        assert c._send.sent == [b'{"jsonrpc":"2.0","id":1,"method":"m","params":["x"]}']
        call = c._pending[1]
        assert call.own and call.fut is None and not call.done() and asyncio.isfuture(call)
        assert call.get_loop() is loop
        with pytest.raises(asyncio.InvalidStateError):
            call.result()
        assert c._fast_reply(result_reply(1, [1, {"a": None}]))
        assert call.done() and not t.done()  # never woken from inside the reply's handling
        assert await t == [1, {"a": None}]
        assert call.result() == [1, {"a": None}] and call.exception() is None
        assert c.in_flight == 0 and c.stats()["replies"] == 1 and c.stats()["calls"] == 1
        c._cancel_deadlines()
    run_on(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_errors_reach_the_task(loop_name):
    async def main():
        loop = asyncio.get_running_loop()
        c = open_client(loop)
        t1 = asyncio.ensure_future(c.call("m"))
        t2 = asyncio.ensure_future(c.call("m", timeout=0.01))
        t3 = asyncio.ensure_future(c.call("m"))
        await turn()
        c._on_message(b'{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"boom","data":[1]}}')
        with pytest.raises(RPCError) as e:
            await t1
        assert (e.value.code, e.value.message, e.value.data) == (-32000, "boom", [1])
        with pytest.raises(CallTimeout):
            await t2
        c._on_closed(1001)
        with pytest.raises(ConnectionLost) as lost:
            await t3
        assert lost.value.code == 1001
    run_on(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_tasks_wake_in_the_order_their_replies_came(loop_name):
    async def main():
        loop = asyncio.get_running_loop()
        c = open_client(loop)
        order = []

        async def one(i):
            order.append((i, await c.call("m", i)))

        tasks = [asyncio.ensure_future(one(i)) for i in range(5)]
        await turn()
        ready = getattr(loop, "_ready", None)  # asyncio's queue of callbacks (not uvloop's)
        before = None if ready is None else len(ready)
        for rid in (3, 1, 5, 2, 4):
            assert c._fast_reply(result_reply(rid, rid * 10))
        if ready is not None:
            assert len(ready) == before + 1  # one loop callback wakes all five
        await asyncio.gather(*tasks)
        assert order == [(2, 30), (0, 10), (4, 50), (1, 20), (3, 40)]
        c._cancel_deadlines()
    run_on(loop_name, main)


class FakeReactor:
    def __init__(self, log: list):
        self.log = log

    def hold_sends(self) -> bool:
        self.log.append("hold")
        return True

    def release_sends(self) -> None:
        self.log.append("release")


@pytest.mark.parametrize("loop_name", LOOPS)
def test_requests_of_the_tasks_woken_together_are_held_until_all_ran(loop_name):
    async def main():
        loop = asyncio.get_running_loop()
        log: list = []
        c = open_client(loop)
        c._wakeups = _clientcall.Wakeups(loop, FakeReactor(log))
        c._send = lambda cid, data: log.append(orjson.loads(data)["id"]) or True

        async def two():
            await c.call("m")
            await c.call("m")

        tasks = [asyncio.ensure_future(two()) for _ in range(3)]
        await turn()
        assert log == [1, 2, 3]
        for rid in (1, 2, 3):
            c._fast_reply(result_reply(rid, None))
        await turn()
        assert log == [1, 2, 3, "hold", 4, 5, 6, "release"]
        for rid in (4, 5, 6):
            c._fast_reply(result_reply(rid, None))
        await asyncio.gather(*tasks)
        c._cancel_deadlines()
    run_on(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_cancelled_while_waiting(loop_name):
    async def main():
        loop = asyncio.get_running_loop()
        c = open_client(loop)
        t = asyncio.ensure_future(c.call("m"))
        await turn()
        call = c._pending[1]
        t.cancel("changed my mind")
        assert call.cancelled() and call.done()
        with pytest.raises(asyncio.CancelledError):
            call.result()
        with pytest.raises(asyncio.CancelledError):
            await t
        assert t.cancelled() and c.in_flight == 0
        c._on_message(result_reply(1, "late"))
        assert c.stats()["late_replies"] == 1
        assert not call.cancel()  # done already

        # Cancelled after its reply came but before its task ran again: cancelled
        # (asyncio's rule for a task whose future is done), the reply is spent.
        t = asyncio.ensure_future(c.call("m"))
        await turn()
        assert c._fast_reply(result_reply(2, "r"))
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        assert c.in_flight == 0
        c._cancel_deadlines()
    run_on(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_wait_for_gather_and_shield(loop_name):
    async def main():
        loop = asyncio.get_running_loop()
        c = open_client(loop)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(c.call("m"), 0.01)
        assert c.in_flight == 0  # wait_for cancelled the call: its id is forgotten
        g = asyncio.gather(c.call("a"), c.call("b"), c.call("c"), return_exceptions=True)
        await turn(2)
        c._fast_reply(result_reply(4, "c"))
        c._on_message(b'{"jsonrpc":"2.0","id":2,"error":{"code":1,"message":"no"}}')
        c._fast_reply(result_reply(3, "b"))
        r = await g
        assert isinstance(r[0], RPCError) and r[1:] == ["b", "c"]
        inner = asyncio.ensure_future(c.call("s"))
        outer = asyncio.ensure_future(asyncio.shield(inner))
        await turn(2)
        outer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outer
        c._fast_reply(result_reply(5, "shielded"))
        assert await inner == "shielded"
        c._cancel_deadlines()
    run_on(loop_name, main)


VAR: contextvars.ContextVar = contextvars.ContextVar("VAR", default="unset")


@pytest.mark.parametrize("loop_name", LOOPS)
def test_the_task_resumes_in_its_own_context(loop_name):
    async def main():
        loop = asyncio.get_running_loop()
        c = open_client(loop)

        async def one(name):
            VAR.set(name)
            await c.call("m")
            return VAR.get()

        a, b = asyncio.ensure_future(one("a")), asyncio.ensure_future(one("b"))
        await turn()
        c._fast_reply(result_reply(2, None))
        c._fast_reply(result_reply(1, None))
        assert await asyncio.gather(a, b) == ["a", "b"]
        assert VAR.get() == "unset"
        c._cancel_deadlines()
    run_on(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_done_callbacks(loop_name):
    async def main():
        loop = asyncio.get_running_loop()
        errors = []
        loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
        c = open_client(loop)
        t = asyncio.ensure_future(c.call("m"))
        await turn()
        call = c._pending[1]
        seen = []

        def first(f):
            seen.append(("first", f is call, VAR.get()))

        def bad(f):
            raise ValueError("callback failed")

        ctx = contextvars.copy_context()
        ctx.run(VAR.set, "in ctx")
        call.add_done_callback(first, context=ctx)
        call.add_done_callback(bad)
        call.add_done_callback(seen.append)
        call.add_done_callback(seen.append)
        assert call.remove_done_callback(seen.append) == 2
        call.add_done_callback(lambda f: seen.append(("last", f.result())))
        assert "pending" in repr(call) and "'m'" in repr(call)
        c._fast_reply(result_reply(1, 7))
        assert seen == []
        assert await t == 7
        await turn()
        assert seen == [("first", True, "in ctx"), ("last", 7)]
        assert len(errors) == 1 and isinstance(errors[0]["exception"], ValueError)
        call.add_done_callback(lambda f: seen.append("after"))  # done: runs on a later turn
        assert seen[-1] != "after"
        await turn()
        assert seen[-1] == "after" and "finished" in repr(call)
        c._cancel_deadlines()
    run_on(loop_name, main)


class MyTask(asyncio.Task):
    pass


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("task_kind", ["subclass", "python"])
def test_other_task_implementations(loop_name, task_kind):
    """The protocol a Task uses with a future-like object is all a call relies on: a
    Task subclass (a task factory) and asyncio's pure-Python Task get the same
    outcomes (they go through ``result()`` where a C Task is resumed directly)."""
    import asyncio.tasks

    def factory(loop, coro, **kw):
        return (MyTask if task_kind == "subclass" else asyncio.tasks._PyTask)(coro, loop=loop, **kw)

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_task_factory(factory)
        c = open_client(loop)
        ok, err, cancelled = (loop.create_task(c.call("m")) for _ in range(3))
        assert type(ok) is not asyncio.Task
        await turn()
        c._fast_reply(result_reply(1, "fine"))
        c._on_message(b'{"jsonrpc":"2.0","id":2,"error":{"code":3,"message":"bad"}}')
        cancelled.cancel()
        assert await ok == "fine"
        with pytest.raises(RPCError):
            await err
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert c.in_flight == 0
        c._cancel_deadlines()
    run_on(loop_name, main)


def test_a_call_with_a_future_is_awaited_through_it():
    loop = asyncio.new_event_loop()
    try:
        call = _clientcall.Call(loop.create_future(), "m")
        assert not call.own
        with pytest.raises(TypeError):
            call.__await__()
    finally:
        loop.close()
