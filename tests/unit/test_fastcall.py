"""fastrpc._fastcall: the compiled ``Dispatcher.on_message`` against the pure-Python path.

The compiled entry answers the common shape itself and hands everything else to the
Python path, so the two must produce the same bytes for every message; these tests
check that (a fixed corpus plus hypothesis-generated requests), that the fast path is
really taken for the shape it claims, and that ``result_reply`` is ``orjson.dumps`` of
the reply dict byte for byte. Both paths also count every call the same way
(``counter_snapshot``: outcomes per method, dispatcher counters).
"""
from __future__ import annotations

import logging
import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastrpc import _fastcall
from fastrpc.dispatch import Dispatcher
from fastrpc.errors import RPCError
from fastrpc.isolation import Bulkhead
from fastrpc.service import SYNC, Context, Method, Registry
from fakes import FakeTransport, counter_snapshot


class Counting(Dispatcher):
    """Counts how often the compiled entry fell back to the Python path."""

    def __init__(self, *a, **kw):
        self.fallbacks = 0
        super().__init__(*a, **kw)

    def _call(self, *a):
        self.fallbacks += 1
        return super()._call(*a)

    def _batch(self, *a):
        self.fallbacks += 1
        return super()._batch(*a)


def registry() -> Registry:
    reg = Registry()
    reg.service("t", failure_threshold=3, cooldown=3600)

    def zero():
        return "0x10d4f"

    def one(x):
        return x

    def two(a, b=2):
        return [a, b]

    def three(a, b, c):
        return a + b + c

    def star(*args):
        return len(args)

    def typed(a: int) -> int:
        return a * 2

    def ctx(c: Context, x=None):
        return [c.cid, x]

    def boom():
        raise ValueError("secret detail")

    def app(code=-32050):
        raise RPCError(code, "app error", {"k": [1, 2]})

    def unserializable():
        return object()

    def none():
        return None

    for fn in (zero, one, two, three, star, typed, ctx, boom, app, unserializable, none):
        reg.add("t_" + fn.__name__, fn)
    return reg


def pair():
    """Two dispatchers with the same services and fresh state: compiled and Python."""
    a = Counting(FakeTransport(), registry=registry())
    b = Dispatcher(FakeTransport(), registry=registry())
    return a, b


METHODS = ["t_zero", "t_one", "t_two", "t_three", "t_star", "t_typed", "t_ctx", "t_boom",
           "t_app", "t_unserializable", "t_none", "t_nope", "rpc_modules"]

CORPUS = [
    b'{"jsonrpc":"2.0","id":67,"method":"t_zero","params":[]}',
    b'{"jsonrpc":"2.0","id":67,"method":"t_zero"}',
    b'{"jsonrpc":"2.0","method":"t_zero","params":[]}',
    b'{"jsonrpc":"2.0","id":"abc","method":"t_one","params":["hello \\"world\\" \\u00e9"]}',
    b'{"jsonrpc":"2.0","id":null,"method":"t_two","params":[1]}',
    b'{"jsonrpc":"2.0","id":1.5,"method":"t_two","params":[1,3]}',
    b'{"jsonrpc":"2.0","id":-9223372036854775808,"method":"t_three","params":[1,2,3]}',
    b'{"jsonrpc":"2.0","id":18446744073709551615,"method":"t_three","params":[1,2,3]}',
    b'{"jsonrpc":"2.0","id":1,"method":"t_three","params":[1,2]}',
    b'{"jsonrpc":"2.0","id":1,"method":"t_three","params":{"a":1,"b":2,"c":3}}',
    b'{"jsonrpc":"2.0","id":1,"method":"t_star","params":[1,2,3,4,5]}',
    b'{"jsonrpc":"2.0","id":1,"method":"t_typed","params":["x"]}',
    b'{"jsonrpc":"2.0","id":1,"method":"t_typed","params":[4]}',
    b'{"jsonrpc":"2.0","id":1,"method":"t_ctx","params":[5]}',
    b'{"jsonrpc":"2.0","id":1,"method":"t_app"}',
    b'{"jsonrpc":"2.0","id":1,"method":"t_app","params":[-32099]}',
    b'{"jsonrpc":"2.0","method":"t_app"}',
    b'{"jsonrpc":"2.0","id":1,"method":"t_unserializable"}',
    b'{"jsonrpc":"2.0","id":1,"method":"t_none"}',
    b'{"jsonrpc":"2.0","id":1,"method":"t_nope"}',
    b'{"jsonrpc":"2.0","id":true,"method":"t_zero"}',
    b'{"jsonrpc":"2.0","id":[1],"method":"t_zero"}',
    b'{"jsonrpc":"2.1","id":1,"method":"t_zero"}',
    b'{"jsonrpc":2.0,"id":1,"method":"t_zero"}',
    b'{"id":1,"method":"t_zero"}',
    b'{"jsonrpc":"2.0","id":1,"method":7}',
    b'{"jsonrpc":"2.0","id":1,"method":"t_zero","params":"x"}',
    b'{"jsonrpc":"2.0","id":1,"method":"t_zero","params":null}',
    b'[{"jsonrpc":"2.0","id":1,"method":"t_zero"},{"jsonrpc":"2.0","id":2,"method":"t_boom"}]',
    b'[]',
    b'7',
    b'"x"',
    b'{bad',
    b'',
    b'{"jsonrpc":"2.0","id":1,"method":"t_boom"}',
    b'{"jsonrpc":"2.0","id":2,"method":"t_boom"}',
    b'{"jsonrpc":"2.0","id":3,"method":"t_boom"}',
    b'{"jsonrpc":"2.0","id":4,"method":"t_zero"}',  # breaker open now: -32002 on both
    b'{"jsonrpc":"2.0","id":5,"method":"t_one","params":[1]}',
]

# Messages the compiled entry must answer without the Python path.
FAST = [
    b'{"jsonrpc":"2.0","id":67,"method":"t_zero","params":[]}',
    b'{"jsonrpc":"2.0","id":67,"method":"t_zero"}',
    b'{"jsonrpc":"2.0","method":"t_zero","params":[]}',
    b'{"jsonrpc":"2.0","id":"abc","method":"t_one","params":["x"]}',
    b'{"jsonrpc":"2.0","id":null,"method":"t_two","params":[1]}',
    b'{"jsonrpc":"2.0","id":1.5,"method":"t_three","params":[1,2,3]}',
    b'{"jsonrpc":"2.0","id":1,"method":"t_star","params":[1,2,3,4,5]}',
    b'{"jsonrpc":"2.0","id":1,"method":"t_typed","params":[4]}',
    b'{"jsonrpc":"2.0","id":1,"method":"t_three","params":{"a":1,"b":2,"c":3}}',
    b'{"jsonrpc":"2.0","id":1,"method":"t_app"}',
    b'{"jsonrpc":"2.0","id":1,"method":"t_boom"}',
]


def test_corpus_same_bytes(caplog):
    a, b = pair()
    with caplog.at_level(logging.CRITICAL, logger="fastrpc.dispatch"):
        for data in CORPUS:
            assert a.on_message(7, data) == b.on_message_py(7, data), data
            assert counter_snapshot(a) == counter_snapshot(b), data
    ma, mb = a.registry.lookup("t_boom"), b.registry.lookup("t_boom")
    assert (ma.bulkhead.state, ma.bulkhead.failure_count) == (mb.bulkhead.state, mb.bulkhead.failure_count)
    assert ma.bulkhead.state != 0  # the corpus drove the breaker open


@pytest.mark.parametrize("data", FAST)
def test_common_shape_stays_compiled(data, caplog):
    a, b = pair()
    with caplog.at_level(logging.CRITICAL, logger="fastrpc.dispatch"):
        assert a.on_message(7, data) == b.on_message_py(7, data)
    assert a.fallbacks == 0
    # counted once, by the compiled call, as the Python path counts it
    (name, stats), = counter_snapshot(a)[0].items()
    assert sum(stats[k] for k in ("success", "error", "failure", "timeout", "refused")) == 1
    assert counter_snapshot(a) == counter_snapshot(b)


@pytest.mark.parametrize("data", [
    b'{"jsonrpc":"2.0","id":1,"method":"t_nope"}',
    b'{"jsonrpc":"2.0","id":true,"method":"t_zero"}',
    b'{"jsonrpc":"2.0","id":1,"method":"t_zero","params":"x"}',
    b'{"jsonrpc":"2.0","id":1,"method":"rpc_modules"}',
    b'[{"jsonrpc":"2.0","id":1,"method":"t_zero"}]',
])
def test_everything_else_falls_back(data):
    a, b = pair()
    assert a.on_message(7, data) == b.on_message_py(7, data)
    assert a.fallbacks >= 1


def test_open_breaker_falls_back(caplog):
    a, _ = pair()
    with caplog.at_level(logging.CRITICAL, logger="fastrpc.dispatch"):
        for i in range(3):
            a.on_message(7, b'{"jsonrpc":"2.0","id":1,"method":"t_boom"}')
    a.fallbacks = 0
    reply = orjson.loads(a.on_message(7, b'{"jsonrpc":"2.0","id":9,"method":"t_zero"}'))
    assert reply["error"]["code"] == -32002 and reply["id"] == 9
    assert a.fallbacks == 1


def test_failure_is_logged_and_counted(caplog):
    a, _ = pair()
    with caplog.at_level(logging.ERROR, logger="fastrpc.dispatch"):
        reply = orjson.loads(a.on_message(7, b'{"jsonrpc":"2.0","id":1,"method":"t_boom"}'))
    assert reply == {"jsonrpc": "2.0", "id": 1, "error": {"code": -32603, "message": "Internal error"}}
    assert "secret detail" in caplog.text and "secret detail" not in str(reply)
    assert a.registry.lookup("t_boom").bulkhead.failures == 1
    a.on_message(7, b'{"jsonrpc":"2.0","id":1,"method":"t_zero"}')  # same namespace succeeds
    assert a.registry.lookup("t_boom").bulkhead.failures == 0


def test_compiled_bases():
    # The fast path reads these as C fields; the Python classes must sit on them.
    assert issubclass(Method, _fastcall.MethodCore)
    assert issubclass(Bulkhead, _fastcall.BreakerCore)
    m = registry().lookup("t_zero")
    assert m.kind == SYNC and _fastcall.SYNC == SYNC
    assert (m.lo, m.hi) == (0, 0)
    with pytest.raises(TypeError):
        m.bulkhead = object()  # only a Bulkhead can be a method's bulkhead


# --- generated requests ----------------------------------------------------------------

json_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
)
json_value = st.recursive(json_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=4)), max_leaves=8)
ids = st.one_of(st.just("absent"), json_value)
params = st.one_of(st.just("absent"), st.lists(json_value, max_size=4),
                   st.dictionaries(st.sampled_from(["a", "b", "c", "x", "code", "z"]), json_value, max_size=3),
                   json_scalar)
requests = st.builds(
    lambda version, rid, method, p, extra: {
        **({"jsonrpc": version} if version != "absent" else {}),
        **({"id": rid} if rid != "absent" else {}),
        "method": method,
        **({"params": p} if p != "absent" else {}),
        **extra,
    },
    st.sampled_from(["2.0", "2.0", "2.0", "1.0", 2, "absent"]),
    ids, st.one_of(st.sampled_from(METHODS), st.integers(-100, 100)), params,
    st.dictionaries(st.sampled_from(["x", "result"]), json_scalar, max_size=1),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(requests, st.lists(requests, max_size=3)), min_size=1, max_size=6))
def test_generated_same_bytes(messages):
    a, b = pair()
    logging.getLogger("fastrpc.dispatch").disabled = True
    try:
        for msg in messages:
            data = orjson.dumps(msg)
            assert a.on_message(7, data) == b.on_message_py(7, data), data
        assert counter_snapshot(a) == counter_snapshot(b), messages
    finally:
        logging.getLogger("fastrpc.dispatch").disabled = False


reply_ids = st.one_of(st.none(), st.integers(), st.text(), st.floats(), st.booleans(),
                      st.just(-0.0), st.just(math.inf))
reply_values = st.one_of(json_value, st.just(object()), st.integers(min_value=2**64),
                         st.dictionaries(st.integers(), st.integers(), min_size=1, max_size=1))


def _outcome(fn, *args):
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - the exception type is what is compared
        return type(e)


@settings(max_examples=2000, deadline=None)
@given(reply_ids, reply_values)
def test_result_reply_is_orjson_of_the_dict(rid, value):
    expected = _outcome(orjson.dumps, {"jsonrpc": "2.0", "id": rid, "result": value})
    assert _outcome(_fastcall.result_reply, rid, value) == expected


@pytest.mark.parametrize("rid", [0, 1, -1, 9, 10, -10, 2**63 - 1, -(2**63), 2**63, 2**64 - 1, 2**64])
def test_result_reply_int_edges(rid):
    assert _outcome(_fastcall.result_reply, rid, "x") == _outcome(
        orjson.dumps, {"jsonrpc": "2.0", "id": rid, "result": "x"})


# --- the canonical-layout recogniser (FastCall.scan) -------------------------------------

CANONICAL = [
    b'{"jsonrpc":"2.0","id":0,"method":"t_zero","params":[]}',
    b'{"jsonrpc":"2.0","id":-5,"method":"t_zero","params":[]}',
    b'{"jsonrpc":"2.0","id":123456789012345678,"method":"t_zero","params":[]}',
    b'{"jsonrpc":"2.0","id":-123456789012345678,"method":"t_zero","params":[]}',
    b'{"jsonrpc":"2.0","id":"abc-1 ~!","method":"t_zero","params":[]}',
    b'{"jsonrpc":"2.0","id":"","method":"t_zero","params":[]}',
    b'{"jsonrpc":"2.0","id":null,"method":"t_zero","params":[]}',
    b'{"jsonrpc":"2.0","id":7,"method":"t_zero"}',
    b'{"jsonrpc":"2.0","method":"t_zero","params":[]}',
    b'{"jsonrpc":"2.0","method":"t_zero"}',
    b'{"jsonrpc":"2.0","id":7,"method":"t_one","params":["h\\u00e9llo \\"q\\""]}',
    b'{"jsonrpc":"2.0","id":7,"method":"t_three","params":[1,2.5,3]}',
    b'{"jsonrpc":"2.0","id":7,"method":"t_two","params":[ 1 , {"a":[1]} ]}',
    b'{"jsonrpc":"2.0","id":7,"method":"t_star","params":[1,2,3,4,5,6]}',
    b'{"jsonrpc":"2.0","id":7,"method":"t_typed","params":["x"]}',
    b'{"jsonrpc":"2.0","id":7,"method":"t_nope","params":[]}',
    b'{"jsonrpc":"2.0","id":7,"method":"t_boom","params":[]}',
]

NOT_CANONICAL = [
    b'{"jsonrpc":"2.0","id":1234567890123456789,"method":"t_zero","params":[]}',  # 19 digits
    b'{"jsonrpc":"2.0","id":99999999999999999999999,"method":"t_zero","params":[]}',
    b'{"jsonrpc":"2.0","id":-0,"method":"t_zero","params":[]}',
    b'{"jsonrpc":"2.0","id":01,"method":"t_zero","params":[]}',
    b'{"jsonrpc":"2.0","id":-,"method":"t_zero","params":[]}',
    b'{"jsonrpc":"2.0","id":1.5,"method":"t_zero","params":[]}',
    b'{"jsonrpc":"2.0","id":1e3,"method":"t_zero","params":[]}',
    b'{"jsonrpc":"2.0","id":"a\\nb","method":"t_zero","params":[]}',
    b'{"jsonrpc":"2.0","id":"\xc3\xa9","method":"t_zero","params":[]}',
    b'{"jsonrpc":"2.0","id":nul,"method":"t_zero","params":[]}',
    b'{"jsonrpc":"2.0","id":true,"method":"t_zero","params":[]}',
    b'{"jsonrpc":"2.0","id":7,"method":"t_z\\u0065ro","params":[]}',
    b'{"jsonrpc":"2.0","id":7,"method":"","params":[]}',
    b'{"jsonrpc":"2.0","id":7,"method":"t_zero","params":[] }',
    b'{"jsonrpc":"2.0","id":7,"method":"t_zero","params":[]} ',
    b' {"jsonrpc":"2.0","id":7,"method":"t_zero","params":[]}',
    b'{"jsonrpc": "2.0","id":7,"method":"t_zero","params":[]}',
    b'{"id":7,"jsonrpc":"2.0","method":"t_zero","params":[]}',
    b'{"jsonrpc":"2.0","id":7,"method":"t_zero","params":[],"id":8}',
    b'{"jsonrpc":"2.0","id":7,"method":"t_zero","params":[1],"method":"t_boom"}',
    b'{"jsonrpc":"2.0","id":7,"method":"t_one","params":[1]}}',
    b'{"jsonrpc":"2.0","id":7,"method":"t_one","params":[1],"x":[2]}',
    b'{"jsonrpc":"2.0","id":7,"method":"t_one","params":{"x":1}}',
    b'{"jsonrpc":"2.0","id":7,"method":"t_one","params":null}',
    b'{"jsonrpc":"2.0","id":7,"method":"t_one","params":"[1]"}',
    b'{"jsonrpc":"2.0","id":7,"method":"t_one","params":[1}',
    b'{"jsonrpc":"2.0","id":7,"method":"t_one","params":[\xff]}',
    b'{"jsonrpc":"2.0","id":7,"method":"t_one"',
    b'{"jsonrpc":"2.0","id":7,"method":"t_one}',
    b'{"jsonrpc":"2.0","id":7,"method":"t_one"}}',
    b'{"jsonrpc":"2.0","id":7,"method":"t_one","params"}',
    b'{"jsonrpc":"2.0","id":7}',
    b'{"jsonrpc":"2.0","id":7,"method":"' + b"m" * 200 + b'","params":[]}',
    b'{"jsonrpc":"2.0","id":"' + b"i" * 200 + b'","method":"t_zero","params":[]}',
]


@pytest.mark.parametrize("data", CANONICAL + NOT_CANONICAL)
def test_layouts_same_bytes(data, caplog):
    a, b = pair()
    with caplog.at_level(logging.CRITICAL, logger="fastrpc.dispatch"):
        assert a.on_message(7, data) == b.on_message_py(7, data)
        # bytearray and memoryview skip the recogniser: same answer again
        assert a.on_message(7, bytearray(data)) == b.on_message_py(7, bytearray(data))


@pytest.mark.parametrize("data", [d for d in CANONICAL if b"t_nope" not in d and b"t_typed" not in d])
def test_canonical_layouts_stay_compiled(data, caplog):
    a, _ = pair()
    with caplog.at_level(logging.CRITICAL, logger="fastrpc.dispatch"):
        a.on_message(7, data)
    assert a.fallbacks == 0


@settings(max_examples=3000, deadline=None)
@given(st.sampled_from(CANONICAL), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255),
                                                      st.sampled_from(["replace", "insert", "delete"])),
                                            min_size=1, max_size=3))
def test_mutated_layouts_same_bytes(template, edits):
    """Byte-level damage to the recognised layout: both paths still agree exactly."""
    data = bytearray(template)
    for pos, byte, op in edits:
        pos %= len(data) + (op == "insert")
        if op == "replace" and pos < len(data):
            data[pos] = byte
        elif op == "insert":
            data.insert(pos, byte)
        elif op == "delete" and len(data) > 1 and pos < len(data):
            del data[pos]
    a, b = pair()
    logging.getLogger("fastrpc.dispatch").disabled = True
    try:
        assert a.on_message(7, bytes(data)) == b.on_message_py(7, bytes(data)), bytes(data)
        assert counter_snapshot(a) == counter_snapshot(b), bytes(data)
    finally:
        logging.getLogger("fastrpc.dispatch").disabled = False


def test_batch_entries_stay_compiled(caplog):
    """A batch is assembled by the Python path, but each common entry runs compiled:
    only _batch itself is counted, never _call."""
    a, b = pair()
    data = (b'[{"jsonrpc":"2.0","id":1,"method":"t_zero"},{"jsonrpc":"2.0","method":"t_one","params":[1]},'
            b'{"jsonrpc":"2.0","id":"x","method":"t_three","params":[1,2,3]},'
            b'{"jsonrpc":"2.0","id":2,"method":"t_boom"}]')
    with caplog.at_level(logging.CRITICAL, logger="fastrpc.dispatch"):
        assert a.on_message(7, data) == b.on_message_py(7, data)
    assert a.fallbacks == 1  # _batch
    mixed = b'[{"jsonrpc":"2.0","id":1,"method":"t_zero"},{"jsonrpc":"2.0","id":2,"method":"t_nope"},5]'
    a.fallbacks = 0
    assert a.on_message(7, mixed) == b.on_message_py(7, mixed)
    assert a.fallbacks == 2  # _batch, and _call for the unknown method (5 is answered by _batch)


def test_type_checked_params_skip_binding():
    """A handler with simple annotations is called straight from the array once its
    type tests pass; a failing test goes to invoke (the binder), which answers -32602."""
    a, b = pair()
    m = a.registry.lookup("t_typed")
    assert (m.lo, m.hi) == (1, 1) and m.checks
    seen = []
    real = m.invoke

    def spy(params, transport, cid):
        seen.append(params)
        return real(params, transport, cid)

    m.invoke = spy
    ok = b'{"jsonrpc":"2.0","id":1,"method":"t_typed","params":[21]}'
    assert orjson.loads(a.on_message(7, ok))["result"] == 42 and seen == []
    bad = b'{"jsonrpc":"2.0","id":1,"method":"t_typed","params":["21"]}'
    assert a.on_message(7, bad) == b.on_message_py(7, bad)
    assert orjson.loads(a.on_message(7, bad))["error"]["code"] == -32602 and seen == [["21"]] * 2
