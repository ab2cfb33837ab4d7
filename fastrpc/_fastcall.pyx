# cython: freethreading_compatible=False
"""The compiled half of ``fastrpc.dispatch``: one whole message in, reply bytes out, for
the shape nearly every request has.

``FastCall(dispatcher).on_message(cid, data)`` is ``Dispatcher.on_message``. It decodes the message
and, when it is a single Request object for a synchronous method whose namespace's
breaker is closed, runs the call and encodes the reply itself: no Python frame of
fastrpc's on the way. Everything else (batches, invalid requests, unknown methods,
async, threaded and subscription methods, params that need binding or type checks, an
open breaker) goes to the dispatcher's Python code with the decoded message, so each
rule of the specification is written once, in ``dispatch.py``; tests run every
transcript through both paths and require the same bytes.

Why compiled: at 32 requests in flight the interpreter's own work (attribute and dict
lookups, type tests, the frame) cost about as much as decoding and encoding the JSON.
No JSON lives in ``_core`` (it owns bytes only); this module owns the one hot call.
"""
cimport cython
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject
from cpython.list cimport PyList_GET_SIZE
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow
from libc.string cimport memcpy

import orjson

from .errors import RPCError
from .jsonrpc import NO_ID, NO_PARAMS, PARSE_ERROR_REPLY, NOT_AN_OBJECT_REPLY, error

cdef object _loads = orjson.loads
cdef object _dumps = orjson.dumps
cdef object _DecodeError = orjson.JSONDecodeError
cdef object _RPCError = RPCError
cdef object _NO_ID = NO_ID
cdef object _NO_PARAMS = NO_PARAMS
cdef object _PARSE_ERROR_REPLY = PARSE_ERROR_REPLY
cdef object _NOT_AN_OBJECT_REPLY = NOT_AN_OBJECT_REPLY
cdef object _error = error
cdef enum:
    # service.SYNC; not imported, as service imports this module.
    SYNC_KIND = 0

#: ``service.SYNC`` as this module sees it (a unit test checks that they agree).
SYNC = SYNC_KIND


cdef const char* HEAD = b'{"jsonrpc":"2.0","id":'
cdef const char* MID = b',"result":'
DEF HEAD_LEN = 22
DEF MID_LEN = 10


cdef Py_ssize_t format_int(char* out, long long v) noexcept:
    """Decimal digits of v into out (at least 20 bytes); returns the length."""
    cdef char tmp[20]
    cdef Py_ssize_t n = 0, i
    cdef unsigned long long u = <unsigned long long>(-(v + 1)) + 1 if v < 0 else <unsigned long long>v
    while True:
        tmp[n] = <char>(48 + u % 10)
        n += 1
        u //= 10
        if u == 0:
            break
    i = 0
    if v < 0:
        out[0] = 45  # '-'
        i = 1
    while n:
        n -= 1
        out[i] = tmp[n]
        i += 1
    return i


cpdef bytes result_reply(object rid, object value):
    """``orjson.dumps({"jsonrpc": "2.0", "id": rid, "result": value})``, byte for byte,
    without building the dict: the result is encoded once and framed by constant
    bytes; an int id is written here, any other id is encoded by orjson."""
    cdef bytes res = _dumps(value)
    cdef bytes rid_json = None
    cdef char digits[24]
    cdef Py_ssize_t idn = 0, rn = PyBytes_GET_SIZE(res)
    cdef const char* idp = NULL
    cdef int overflow = 0
    cdef long long v
    if type(rid) is int:
        v = PyLong_AsLongLongAndOverflow(rid, &overflow)
        if overflow:
            rid_json = _dumps(rid)
        else:
            idn = format_int(digits, v)
            idp = digits
    elif rid is None:
        idp = b"null"
        idn = 4
    else:
        rid_json = _dumps(rid)
    if rid_json is not None:
        idp = PyBytes_AS_STRING(rid_json)
        idn = PyBytes_GET_SIZE(rid_json)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, HEAD_LEN + idn + MID_LEN + rn + 1)
    cdef char* o = PyBytes_AS_STRING(out)
    memcpy(o, HEAD, HEAD_LEN)
    o += HEAD_LEN
    memcpy(o, idp, idn)
    o += idn
    memcpy(o, MID, MID_LEN)
    o += MID_LEN
    memcpy(o, PyBytes_AS_STRING(res), rn)
    o[rn] = 125  # '}'
    return out


cdef class BreakerCore:
    """Base of ``isolation.Bulkhead``: the two breaker fields the hot path tests, kept
    as C ints so reading them costs no attribute lookup. CLOSED is 0."""

    cdef public int state      # CLOSED (0), OPEN or HALF_OPEN: see fastrpc.isolation
    cdef public int failures   # consecutive failures counted while closed


cdef class MethodCore:
    """Base of ``service.Method``: the fields FastCall reads, as C struct members.

    ``lo..hi``: array lengths that may go straight to ``fn(*params)`` (no binding, no
    type checks); an empty range (lo > hi) when none may."""

    cdef public object fn
    cdef public int kind
    cdef public Py_ssize_t lo, hi
    cdef public BreakerCore bulkhead
    cdef public object invoke


@cython.final
cdef class FastCall:
    """``Dispatcher.on_message`` (see the module docstring). Holds the dispatcher's
    method table (the same dict: later registrations are seen) and its slow paths."""

    cdef dict table
    cdef object call         # Dispatcher._call(cid, msg, None, 0): any single request
    cdef object batch        # Dispatcher._batch(cid, msg)
    cdef object failed       # Dispatcher._failed(m, rid): log, count, -32603
    cdef object transport

    def __init__(self, dispatcher):
        self.table = dispatcher._table
        self.call = dispatcher._call
        self.batch = dispatcher._batch
        self.failed = dispatcher._failed
        self.transport = dispatcher._transport

    def on_message(self, cid, data):
        """Dispatcher.on_message: reply bytes to write now, or None."""
        cdef object msg, rid, method, params, value, reply
        cdef MethodCore m
        cdef BreakerCore bh
        cdef PyObject* p
        cdef Py_ssize_t n
        try:
            msg = _loads(data)
        except _DecodeError:
            return _PARSE_ERROR_REPLY
        if type(msg) is not dict:
            if type(msg) is list:
                return self.batch(cid, msg)
            return _NOT_AN_OBJECT_REPLY
        # Anything unusual below goes to the Python path, which answers it exactly.
        p = PyDict_GetItem(msg, "jsonrpc")
        if p == NULL or type(<object>p) is not str or <str>p != "2.0":
            return self.call(cid, msg, None, 0)
        p = PyDict_GetItem(msg, "method")
        if p == NULL or type(<object>p) is not str:
            return self.call(cid, msg, None, 0)
        method = <object>p
        p = PyDict_GetItem(msg, "id")
        if p == NULL:
            rid = _NO_ID
        else:
            rid = <object>p
            if not (type(rid) is int or type(rid) is str or rid is None or type(rid) is float):
                return self.call(cid, msg, None, 0)
        p = PyDict_GetItem(self.table, method)
        if p == NULL:
            return self.call(cid, msg, None, 0)
        if not isinstance(<object>p, MethodCore):
            return self.call(cid, msg, None, 0)
        m = <MethodCore>p
        if m.kind != SYNC_KIND:
            return self.call(cid, msg, None, 0)
        bh = m.bulkhead
        if bh is None or bh.state:
            return self.call(cid, msg, None, 0)
        p = PyDict_GetItem(msg, "params")
        try:
            if p == NULL:
                params = _NO_PARAMS
                value = m.fn() if m.lo == 0 else m.invoke(params, self.transport, cid)
            else:
                params = <object>p
                if type(params) is list:
                    n = PyList_GET_SIZE(params)
                    if not (m.lo <= n <= m.hi):
                        value = m.invoke(params, self.transport, cid)
                    elif n == 0:
                        value = m.fn()
                    elif n == 1:
                        value = m.fn((<list>params)[0])
                    elif n == 2:
                        value = m.fn((<list>params)[0], (<list>params)[1])
                    else:
                        value = m.fn(*params)
                elif type(params) is dict:
                    value = m.invoke(params, self.transport, cid)
                else:
                    return self.call(cid, msg, None, 0)
            reply = None if rid is _NO_ID else result_reply(rid, value)
        except _RPCError as e:
            reply = None if rid is _NO_ID else _error(rid, e.code, e.message, e.data)
        except Exception:
            return self.failed(m, rid)
        if bh.failures:
            bh.success()
        return reply
